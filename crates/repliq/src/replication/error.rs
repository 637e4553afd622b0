//! Errors of the replication layer.

use crate::replication::protocol::ProtocolError;
use crate::store::StoreError;

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The peer sent a malformed or hostile frame.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The local queue failed.
    #[error("queue: {0}")]
    Store(#[from] StoreError),
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer was silent for longer than the timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The peer refused the session, or sent something out of order.
    #[error("refused: {0}")]
    Refused(String),
    /// The primary refused the protocol version this session offered (error
    /// code 1): an older primary; the follower loop retries with version 2.
    #[error("refused: the primary does not speak protocol version {offered}: {message}")]
    Version {
        /// The version offered in the `Hello`.
        offered: u16,
        /// The primary's reason.
        message: String,
    },
    /// The connection closed.
    #[error("connection closed by peer")]
    Closed,
}
