//! `RepliqQueue<T>`: the founding API over the storage layer.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{Consumer, Store, StoreOptions, Tailer};
use crate::{PersistentQueue, Queue, QueueError, ReplicatedQueue, ReplicationMode};

/// Replication settings given to [`RepliqQueue::with_replication`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// The primary node's name or address.
    pub primary: String,
    /// The secondaries' names or addresses.
    pub secondaries: Vec<String>,
    /// The mode.
    pub mode: ReplicationMode,
}

/// A persistent, typed queue in a directory, shared by any number of processes.
///
/// Items are encoded with postcard. `enqueue` appends; `dequeue` takes the
/// next item for the default consumer group, so each item goes to exactly one
/// `dequeue` call across all processes.
///
/// ```
/// use repliq::RepliqQueue;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), repliq::QueueError> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("orders");
/// # let path = path.to_str().unwrap();
/// let queue = RepliqQueue::<(u32, String)>::new(path, 1000)?;
/// queue.enqueue((1, "one".to_string())).await?;
/// assert_eq!(queue.dequeue().await?, Some((1, "one".to_string())));
/// assert_eq!(queue.dequeue().await?, None);
/// # Ok(()) }
/// ```
pub struct RepliqQueue<T: Send + Sync> {
    store: Store,
    consumer: Mutex<Consumer>,
    replication: Option<ReplicationSettings>,
    _item: PhantomData<fn() -> T>,
}

impl<T: Send + Sync> std::fmt::Debug for RepliqQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepliqQueue")
            .field("dir", &self.store.dir())
            .field("replication", &self.replication)
            .finish()
    }
}

thread_local! {
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<T: Send + Sync> RepliqQueue<T> {
    /// Wraps an opened store.
    pub fn from_store(store: Store) -> Self {
        RepliqQueue {
            consumer: Mutex::new(store.consumer()),
            store,
            replication: None,
            _item: PhantomData,
        }
    }

    /// Opens or creates a queue with full control over its configuration.
    pub fn with_options(path: &str, opts: &StoreOptions) -> Result<Self, QueueError> {
        Ok(Self::from_store(Store::open(path, opts)?))
    }

    /// The underlying store, for tailers, groups, statistics.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replication settings, if configured.
    pub fn replication(&self) -> Option<&ReplicationSettings> {
        self.replication.as_ref()
    }

    /// An unnamed tailer from the oldest retained record.
    pub fn tailer(&self) -> Tailer {
        self.store.tailer()
    }

    /// Appends raw bytes (for callers with their own encoding); returns the id.
    pub fn enqueue_bytes(&self, payload: &[u8]) -> Result<u64, QueueError> {
        Ok(self.store.append(payload)?)
    }

    /// Takes the next message of the default group as raw bytes.
    pub fn dequeue_bytes(&self) -> Result<Option<Vec<u8>>, QueueError> {
        self.dequeue_with(|p| p.to_vec())
    }

    /// Takes the next message and lends its bytes to `f`, without copying.
    pub fn dequeue_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, QueueError> {
        let mut c = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        Ok(c.dequeue_with(|r| f(r.payload))?)
    }

    fn has_next(&self) -> bool {
        self.consumer.lock().map(|c| c.has_next()).unwrap_or(true)
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync> RepliqQueue<T> {
    /// Creates a queue at `path` with `capacity`, or opens it if it exists
    /// with the same capacity.
    pub fn new(path: &str, capacity: usize) -> Result<Self, QueueError> {
        if capacity == 0 {
            return Err(QueueError::InvalidConfig(
                "capacity must be at least 1".into(),
            ));
        }
        Self::with_options(path, &StoreOptions::create().capacity(capacity as u64))
    }

    /// Opens an existing queue.
    pub fn open(path: &str) -> Result<Self, QueueError> {
        Self::with_options(path, &StoreOptions::open())
    }

    /// Appends `item`, returning its message id.
    pub fn enqueue_id(&self, item: &T) -> Result<u64, QueueError> {
        ENCODE_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            buf.clear();
            let mut v = std::mem::take(&mut *buf);
            v = postcard::to_extend(item, v)
                .map_err(|e| QueueError::Serialization(e.to_string()))?;
            let r = self.store.append(&v);
            *buf = v;
            Ok(r?)
        })
    }

    /// Appends `item`.
    pub async fn enqueue(&self, item: T) -> Result<(), QueueError> {
        self.enqueue_id(&item).map(|_| ())
    }

    /// Takes the next item; `Ok(None)` if the queue is empty right now.
    ///
    /// An item that does not decode as `T` is consumed and reported as
    /// [`QueueError::Deserialization`] with its id.
    pub async fn dequeue(&self) -> Result<Option<T>, QueueError> {
        self.try_dequeue()
    }

    /// The synchronous form of [`RepliqQueue::dequeue`].
    pub fn try_dequeue(&self) -> Result<Option<T>, QueueError> {
        let mut c = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        match c.dequeue_with(|r| (r.id, postcard::from_bytes::<T>(r.payload)))? {
            None => Ok(None),
            Some((_, Ok(v))) => Ok(Some(v)),
            Some((id, Err(e))) => Err(QueueError::Deserialization(format!("message id {id}: {e}"))),
        }
    }

    /// Waits (without a busy thread) until an item is available and takes it.
    pub async fn dequeue_wait(&self) -> Result<T, QueueError> {
        loop {
            if let Some(v) = self.try_dequeue()? {
                return Ok(v);
            }
            self.store.ready_async(|| self.has_next()).await;
        }
    }
}

#[async_trait]
impl<T: Serialize + DeserializeOwned + Send + Sync> Queue<T> for RepliqQueue<T> {
    async fn enqueue(&self, item: T) -> Result<(), QueueError> {
        RepliqQueue::enqueue(self, item).await
    }
    async fn dequeue(&self) -> Result<Option<T>, QueueError> {
        RepliqQueue::dequeue(self).await
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync> PersistentQueue<T> for RepliqQueue<T> {
    fn new(path: &str, capacity: usize) -> Result<Self, QueueError> {
        RepliqQueue::new(path, capacity)
    }
    fn open(path: &str) -> Result<Self, QueueError> {
        RepliqQueue::open(path)
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync> ReplicatedQueue<T> for RepliqQueue<T> {
    /// Validates and records the replication settings.
    ///
    /// Node names must be non-empty, without whitespace, and distinct; the
    /// primary must not be listed among the secondaries.
    fn with_replication(
        &mut self,
        primary_node: &str,
        secondary_nodes: Vec<&str>,
        replication_mode: ReplicationMode,
    ) -> Result<(), QueueError> {
        let check = |n: &str| {
            if n.is_empty() || n.chars().any(char::is_whitespace) || n.len() > 253 {
                Err(QueueError::InvalidConfig(format!(
                    "invalid node name {n:?}: must be 1 to 253 characters without whitespace"
                )))
            } else {
                Ok(())
            }
        };
        check(primary_node)?;
        let mut seen = std::collections::HashSet::new();
        for s in &secondary_nodes {
            check(s)?;
            if *s == primary_node {
                return Err(QueueError::InvalidConfig(format!(
                    "node {s:?} is both primary and secondary"
                )));
            }
            if !seen.insert(*s) {
                return Err(QueueError::InvalidConfig(format!(
                    "secondary {s:?} is listed twice"
                )));
            }
        }
        self.replication = Some(ReplicationSettings {
            primary: primary_node.into(),
            secondaries: secondary_nodes.into_iter().map(String::from).collect(),
            mode: replication_mode,
        });
        Ok(())
    }
}
