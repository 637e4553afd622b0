//! The founding document's traits and replication mode.

use async_trait::async_trait;

use crate::QueueError;

/// A generic queue.
#[async_trait]
pub trait Queue<T: Send + Sync> {
    /// Appends `item`.
    async fn enqueue(&self, item: T) -> Result<(), QueueError>;
    /// Takes the next item; `Ok(None)` if the queue is empty right now.
    async fn dequeue(&self) -> Result<Option<T>, QueueError>;
}

/// A queue persisted at a path.
#[async_trait]
pub trait PersistentQueue<T: Send + Sync>: Queue<T> {
    /// Creates a queue at `path` holding at most `capacity` undequeued items,
    /// or opens it if it exists with the same capacity.
    fn new(path: &str, capacity: usize) -> Result<Self, QueueError>
    where
        Self: Sized;

    /// Opens an existing queue.
    fn open(path: &str) -> Result<Self, QueueError>
    where
        Self: Sized;
}

/// A persistent queue replicated to other nodes.
#[async_trait]
pub trait ReplicatedQueue<T: Send + Sync>: PersistentQueue<T> {
    /// Configures replication: the primary node, the secondaries, and the mode.
    fn with_replication(
        &mut self,
        primary_node: &str,
        secondary_nodes: Vec<&str>,
        replication_mode: ReplicationMode,
    ) -> Result<(), QueueError>;
}

/// When `enqueue` returns relative to replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// `enqueue` returns once the record is durable on the required secondaries.
    Synchronous,
    /// `enqueue` returns after the local append; secondaries follow.
    Asynchronous,
}
