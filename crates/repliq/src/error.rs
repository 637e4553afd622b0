//! The founding API's error type.

use std::io;

use thiserror::Error;

use crate::store::StoreError;

/// Errors of the queue API, exactly as in the founding document.
///
/// Storage errors are mapped onto these variants; the original
/// [`StoreError`] stays reachable for `Io` through
/// [`io::Error::get_ref`], so a caller can recover, say, the id of a corrupt
/// record:
///
/// ```
/// use repliq::{store::StoreError, QueueError};
/// let e: QueueError = StoreError::Corrupt { id: 64, reason: "payload CRC32C mismatch".into() }.into();
/// let QueueError::Io(io) = &e else { panic!() };
/// let inner = io.get_ref().and_then(|i| i.downcast_ref::<StoreError>());
/// assert_eq!(inner.and_then(StoreError::corrupt_id), Some(64));
/// ```
#[derive(Error, Debug)]
pub enum QueueError {
    /// A file-system or OS error, or a corrupt file (`ErrorKind::InvalidData`).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// Replication failed or the queue is a read-only replica.
    #[error("Replication error: {0}")]
    Replication(String),

    /// The default group holds `capacity` undequeued messages.
    #[error("Queue is full")]
    Full,

    /// The queue is empty (the `dequeue` methods return `Ok(None)` instead).
    #[error("Queue is empty")]
    Empty,

    /// A configuration value is invalid or conflicts with the existing queue.
    #[error("Invalid configuration: {0}")]
    InvalidConfig(String),

    /// An item could not be encoded, or is larger than the maximum message size.
    #[error("Serialization error: {0}")]
    Serialization(String),

    /// A dequeued payload could not be decoded as `T`.
    #[error("Deserialization error: {0}")]
    Deserialization(String),

    /// Anything else.
    #[error("Unexpected error: {0}")]
    Other(String),
}

impl From<StoreError> for QueueError {
    fn from(e: StoreError) -> QueueError {
        use io::ErrorKind as K;
        let kind = match &e {
            StoreError::Full { .. } => return QueueError::Full,
            StoreError::ConfigMismatch { .. } | StoreError::InvalidConfig(_) => {
                return QueueError::InvalidConfig(e.to_string())
            }
            StoreError::TooLarge { .. } => return QueueError::Serialization(e.to_string()),
            StoreError::ReadOnly(_) | StoreError::StaleEpoch { .. } => {
                return QueueError::Replication(e.to_string())
            }
            StoreError::NoSlot { .. } => return QueueError::Other(e.to_string()),
            StoreError::Io { source, .. } => source.kind(),
            StoreError::NotADirectory(_) => K::NotADirectory,
            StoreError::NotFound(_) => K::NotFound,
            StoreError::NotWritable { .. } => K::PermissionDenied,
            StoreError::BadMagic { .. }
            | StoreError::BadVersion { .. }
            | StoreError::Corrupt { .. } => K::InvalidData,
            StoreError::NotRetained { .. }
            | StoreError::InvalidId { .. }
            | StoreError::InvalidBatch(_) => K::InvalidInput,
        };
        QueueError::Io(io::Error::new(kind, e))
    }
}
