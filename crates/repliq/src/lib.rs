//! repliq: a persistent, replicated message queue on memory-mapped files.
//!
//! A queue is a directory. Processes on one host exchange messages through
//! it at memory speed, and every message is persisted as it is written.
//!
//! * [`RepliqQueue`] is the founding typed API ([`Queue`], [`PersistentQueue`],
//!   [`ReplicatedQueue`]), encoding items with postcard.
//! * [`replication`] holds the wire protocol between a primary and its
//!   secondaries.
//! * [`store`] is the storage layer beneath it: appends, tailers, consumer
//!   groups, zero-copy reads, waiting, recovery and retention.
//!
//! ```
//! use repliq::{QueueError, RepliqQueue};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), QueueError> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("q");
//! let queue = RepliqQueue::<String>::new(path.to_str().unwrap(), 1024)?;
//! queue.enqueue("Hello, repliq!".to_string()).await?;
//! assert_eq!(queue.dequeue().await?.as_deref(), Some("Hello, repliq!"));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod api;
mod error;
mod queue;
pub mod replication;
pub mod store;

pub use api::{PersistentQueue, Queue, ReplicatedQueue, ReplicationMode};
pub use error::QueueError;
pub use queue::{ReplicationSettings, RepliqQueue};
