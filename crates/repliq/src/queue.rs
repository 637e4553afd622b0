//! `RepliqQueue<T>`: the founding API over the storage layer.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::replication::inprocess::{self, Engine, ReplicationStatus, Role};
use crate::replication::{sync, ReplicationError};
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
    /// Acknowledgements a synchronous `enqueue` waits for.
    pub min_acks: usize,
}

/// How long a synchronous `enqueue` waits for acknowledgements by default.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// A queue id derived from the queue's name (its directory's file name), so
/// that queues created independently on each node with
/// [`RepliqQueue::new`] under the same name can replicate to each other.
fn name_queue_id(path: &str) -> u64 {
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"repliq-queue:".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
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
    engine: Option<Engine>,
    node_name: Option<String>,
    sync_timeout: Duration,
    min_acks: Option<usize>,
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
            engine: None,
            node_name: None,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            min_acks: None,
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

    /// Sets this process's node name for role selection in
    /// [`ReplicatedQueue::with_replication`], instead of `NODE_NAME` or the
    /// host name (useful to run several nodes in one process).
    pub fn with_node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_string());
        self
    }

    /// Sets how long a synchronous `enqueue` waits for acknowledgements
    /// (default [`DEFAULT_SYNC_TIMEOUT`]).
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// [`RepliqQueue::with_sync_timeout`] on a configured queue.
    pub fn set_sync_timeout(&mut self, timeout: Duration) {
        self.sync_timeout = timeout;
    }

    /// Sets how many secondaries must acknowledge a record before a
    /// synchronous `enqueue` returns (default: all of them).
    pub fn with_min_acks(mut self, n: usize) -> Self {
        self.min_acks = Some(n);
        self
    }

    /// This node's role, once replication is configured.
    pub fn role(&self) -> Option<Role> {
        self.engine.as_ref().map(Engine::role)
    }

    /// The state of in-process replication (role, listening address,
    /// reachability and acknowledged positions of the secondaries), once
    /// replication is configured.
    pub fn replication_status(&self) -> Option<ReplicationStatus> {
        self.engine.as_ref().map(Engine::status)
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
        Self::with_options(
            path,
            &StoreOptions::create()
                .capacity(capacity as u64)
                .queue_id(name_queue_id(path)),
        )
    }

    /// Opens an existing queue.
    pub fn open(path: &str) -> Result<Self, QueueError> {
        Self::with_options(path, &StoreOptions::open())
    }

    /// Appends `item`, returning its message id, without waiting for
    /// replication (even in synchronous mode).
    pub fn enqueue_id(&self, item: &T) -> Result<u64, QueueError> {
        self.append_item(item).map(|(id, _)| id)
    }

    fn append_item(&self, item: &T) -> Result<(u64, usize), QueueError> {
        ENCODE_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            buf.clear();
            let mut v = std::mem::take(&mut *buf);
            v = postcard::to_extend(item, v)
                .map_err(|e| QueueError::Serialization(e.to_string()))?;
            let len = v.len();
            let r = self.store.append(&v);
            *buf = v;
            Ok((r?, len))
        })
    }

    /// Appends `item`.
    ///
    /// In [`ReplicationMode::Synchronous`] mode this returns once the
    /// required secondaries acknowledged the record, or fails with
    /// [`QueueError::Replication`] after the sync timeout; the record then
    /// stays in the log and is still replicated later. A queue that a
    /// `repliq daemon` replicates synchronously (its `replication.mode:
    /// sync`) gives the same guarantee without `with_replication`: the
    /// leading daemon publishes the acknowledgements it needs in the control
    /// file ([`Store::set_sync_acks`](crate::store::Store::set_sync_acks)).
    pub async fn enqueue(&self, item: T) -> Result<(), QueueError> {
        let (id, len) = self.append_item(&item)?;
        self.wait_for_acks(id, len).await
    }

    /// Appends every item of `items` as one batch: one claim at the log's
    /// tail for all of them (see
    /// [`Store::append_many_with`](crate::store::Store::append_many_with)),
    /// in order, each its own record with its own id, returned in order.
    ///
    /// All or nothing for the checks: an empty batch, an item that does not
    /// encode or is over the maximum message size, a replica, or a batch the
    /// capacity cannot take whole ([`QueueError::Full`]) fails before
    /// anything is written. In [`ReplicationMode::Synchronous`] mode it
    /// returns once the required secondaries acknowledged the batch's last
    /// record (and so every record before it), as [`RepliqQueue::enqueue`]
    /// does for one.
    ///
    /// ```
    /// use repliq::RepliqQueue;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), repliq::QueueError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("orders");
    /// # let path = path.to_str().unwrap();
    /// let queue = RepliqQueue::<u32>::new(path, 1000)?;
    /// let ids = queue.enqueue_batch(&[1, 2, 3]).await?;
    /// assert_eq!(ids.len(), 3);
    /// assert!(ids.windows(2).all(|w| w[0] < w[1]));
    /// assert_eq!(queue.dequeue().await?, Some(1));
    /// assert_eq!(queue.dequeue().await?, Some(2));
    /// assert_eq!(queue.dequeue().await?, Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_batch(&self, items: &[T]) -> Result<Vec<u64>, QueueError> {
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(items.len());
        for item in items {
            buf = postcard::to_extend(item, buf)
                .map_err(|e| QueueError::Serialization(e.to_string()))?;
            ends.push(buf.len());
        }
        let lens: Vec<usize> = ends
            .iter()
            .scan(0, |start, &end| {
                let len = end - *start;
                *start = end;
                Some(len)
            })
            .collect();
        let ids = self.store.append_many_with(&lens, |i, dst| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            dst.copy_from_slice(&buf[start..ends[i]]);
        })?;
        if let (Some(&id), Some(&len)) = (ids.last(), lens.last()) {
            self.wait_for_acks(id, len).await?;
        }
        Ok(ids)
    }

    async fn wait_for_acks(&self, id: u64, len: usize) -> Result<(), QueueError> {
        // Whose guarantee: this process's own replication, or else the one
        // the daemon replicating the queue published in the control file.
        let whose = match &self.replication {
            Some(r) if r.mode != ReplicationMode::Synchronous || r.min_acks == 0 => return Ok(()),
            Some(r) => format!("{} of {} secondaries", r.min_acks, r.secondaries.len()),
            None => match self.store.sync_acks() {
                0 => return Ok(()),
                n => format!(
                    "{n} replica(s) besides the leader (the queue is replicated synchronously by its daemon)"
                ),
            },
        };
        let end = sync::record_end(&self.store, id, len);
        let started = std::time::Instant::now();
        let waited = sync::wait_replicated(&self.store, end, self.sync_timeout).await;
        // Timeouts are recorded too: they are the tail operators look for.
        self.store.record_sync_wait(started.elapsed());
        match waited {
            Ok(()) => Ok(()),
            Err(ReplicationError::Timeout(_)) => Err(QueueError::Replication(format!(
                "not acknowledged by {whose} within {:?}; the record (id {id}) stays in the log",
                self.sync_timeout
            ))),
            Err(e) => Err(QueueError::Replication(e.to_string())),
        }
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
    /// Validates the replication settings and starts replication in this
    /// process.
    ///
    /// Node names must be non-empty, without whitespace, and distinct; the
    /// primary must not be listed among the secondaries. Nodes are `host` or
    /// `host:port` (default port 31337). This process's node name
    /// ([`RepliqQueue::with_node_name`], else `NODE_NAME`, else the host
    /// name) selects its role: the primary serves the queue on its port; a
    /// secondary makes the queue read-only and follows the primary; a node
    /// matching no name acts as the primary and reports the secondaries'
    /// reachability in the logs and [`RepliqQueue::replication_status`].
    /// Calling it again replaces the previous configuration.
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
        let min_acks = self.min_acks.unwrap_or(secondary_nodes.len());
        if min_acks > secondary_nodes.len() {
            return Err(QueueError::InvalidConfig(format!(
                "min_acks {min_acks} exceeds the {} secondaries",
                secondary_nodes.len()
            )));
        }
        // Stop the previous configuration's tasks first.
        self.engine = None;
        self.replication = None;
        self.store.set_read_only(false);
        let secondaries: Vec<String> = secondary_nodes.into_iter().map(String::from).collect();
        let queue = self
            .store
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "queue".into());
        let cfg = inprocess::EngineConfig {
            node: self
                .node_name
                .clone()
                .unwrap_or_else(inprocess::own_node_name),
            primary: primary_node.into(),
            secondaries: secondaries.clone(),
            min_acks,
            queue,
            dir: self.store.dir().to_path_buf(),
        };
        let engine = Engine::start(&self.store, cfg)
            .map_err(|e| QueueError::Replication(format!("cannot start replication: {e}")))?;
        self.engine = Some(engine);
        self.replication = Some(ReplicationSettings {
            primary: primary_node.into(),
            secondaries,
            mode: replication_mode,
            min_acks,
        });
        Ok(())
    }
}
