//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

use crate::store::layout::FORMAT_VERSION;

/// Everything that can go wrong in the storage layer.
///
/// Each variant names the file or the message id it concerns, so a one-line
/// rendering is enough for an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The queue path exists but is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// No queue exists at the path and creation was not requested.
    #[error("{0}: no queue here (no control file)")]
    NotFound(PathBuf),
    /// The directory cannot be written.
    #[error("{path}: directory is not writable: {source}")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file carries a magic number that is not repliq's.
    #[error("{path}: not a repliq {kind} file (magic {found:#018x})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// "control" or "segment".
        kind: &'static str,
        /// The magic found.
        found: u64,
    },
    /// A file has a format version this build does not read.
    #[error("{path}: format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The existing queue was created with a different configuration.
    #[error("{path}: existing queue has {field} = {existing}, but {requested} was requested")]
    ConfigMismatch {
        /// The queue directory.
        path: PathBuf,
        /// The configuration field.
        field: &'static str,
        /// The stored value.
        existing: String,
        /// The requested value.
        requested: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A message is larger than the store accepts: what one segment holds,
    /// and at most what one replication frame carries
    /// ([`MAX_RECORD_PAYLOAD`](crate::store::layout::MAX_RECORD_PAYLOAD)).
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The message length.
        len: u64,
        /// The largest accepted length.
        max: u64,
    },
    /// A record or an epoch older than the epoch the log already holds: it
    /// comes from a leader that was replaced (fencing).
    #[error(
        "record {id}: epoch {epoch} is older than the log's epoch {current} (a replaced leader)"
    )]
    StaleEpoch {
        /// The record's id (position).
        id: u64,
        /// Its epoch.
        epoch: u32,
        /// The newest epoch this log holds.
        current: u32,
    },
    /// The default group has `capacity` messages not yet dequeued.
    #[error("queue is full: capacity of {capacity} messages reached")]
    Full {
        /// The configured capacity.
        capacity: u64,
    },
    /// A record failed its checks. It is never returned to a reader.
    #[error("corrupt record at id {id}: {reason}")]
    Corrupt {
        /// The record's id (position).
        id: u64,
        /// What failed.
        reason: String,
    },
    /// The position was deleted by retention.
    #[error("id {id} is no longer retained; the oldest retained id is {first}")]
    NotRetained {
        /// The requested id.
        id: u64,
        /// The first id still on disk.
        first: u64,
    },
    /// The id does not designate a record of this queue.
    #[error("id {id} is not the id of a record in this queue: {reason}")]
    InvalidId {
        /// The requested id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// All slots of a kind are in use.
    #[error("no free {kind} slot for {name:?} (all {max} are in use)")]
    NoSlot {
        /// "consumer group" or "named tailer".
        kind: &'static str,
        /// The name requested.
        name: String,
        /// The number of slots.
        max: usize,
    },
    /// A batch append was refused before anything was written: it is empty,
    /// or holds more messages than the queue's capacity.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The queue is a replica and only the replication layer may append.
    #[error("queue is read-only: {0}")]
    ReadOnly(String),
}

impl StoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// The id of the corrupt record, if this is a corruption error.
    pub fn corrupt_id(&self) -> Option<u64> {
        match self {
            StoreError::Corrupt { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Result type of the storage layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
