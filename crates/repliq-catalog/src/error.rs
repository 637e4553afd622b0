//! Error types.

use std::io;
use std::path::PathBuf;

/// An error from the durable storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file's content is corrupt (not a torn tail).
    #[error("corrupt {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record is larger than the log accepts.
    #[error("record of {0} bytes is too big")]
    RecordTooBig(usize),
    /// Encoding a record failed.
    #[error("encode: {0}")]
    Encode(#[from] postcard::Error),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    }
}

/// An error from the wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// I/O on the connection failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer did not send the catalog magic.
    #[error("bad magic {0:?}")]
    BadMagic([u8; 4]),
    /// The peer speaks an unsupported version.
    #[error("unsupported version {0}")]
    BadVersion(u16),
    /// A frame is larger than the cap.
    #[error("frame of {0} bytes exceeds the cap")]
    FrameTooBig(u64),
    /// A frame did not decode.
    #[error("decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The operation timed out.
    #[error("timed out")]
    Timeout,
    /// The peer is another Raft node than the one addressed.
    #[error("the peer is Raft node {0}, not the one addressed")]
    WrongNode(u64),
    /// The peer answered with an unexpected message.
    #[error("unexpected reply")]
    Unexpected,
    /// The peer's authenticated identity (its TLS certificate) does not
    /// match the member it claims to be.
    #[error("identity refused: {0}")]
    Identity(String),
}

/// An error from the [`Catalog`](crate::Catalog).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The network failed.
    #[error("network: {0}")]
    Wire(#[from] WireError),
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// No leader could be reached before the deadline.
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    /// Invalid configuration.
    #[error("config: {0}")]
    Config(String),
}
