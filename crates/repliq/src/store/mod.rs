//! The storage layer: a queue directory of memory-mapped, preallocated segments
//! shared by any number of processes.
//!
//! This layer knows nothing of async runtimes, networks or serde. Its entry
//! point is [`Store`]; readers are [`Tailer`] (broadcast) and [`Consumer`]
//! (competing, one cursor per group).
//!
//! ```
//! use repliq::store::{Store, StoreOptions};
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("q"), &StoreOptions::create().segment_size(1 << 16))?;
//! let id = store.append(b"hello")?;
//! let mut tailer = store.tailer();
//! let rec = tailer.next()?.expect("one record");
//! assert_eq!((rec.id, &rec.payload[..]), (id, &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where things are
//!
//! One concept per file. This file holds [`Store`] and its shared state
//! (`Inner`), [`Store::open`] and the simple accessors. The rest of `Store`'s
//! methods live with their concept:
//!
//! | file | concept |
//! |---|---|
//! | `options.rs` | [`StoreOptions`] and the checks of an existing queue's configuration |
//! | `dir_lock.rs` | the directory lock (creation and slot allocation) |
//! | `append.rs` | the append path, the committed position, group commit (`sync_through`), msync, the `batch` flusher |
//! | `batch.rs` | batch appends: many records for one claim ([`Store::append_batch`], [`Store::append_many_with`]) |
//! | `segments.rs` | the per-process segment cache, segment creation (`ensure_segment`), the prefetch thread |
//! | `slots.rs` | tailers and consumers, named cursor slot allocation |
//! | `read.rs` | what every reader shares: `peek`, stalled-writer handling, readiness and waiting |
//! | `retention.rs` | deleting segments every cursor has passed ([`Store::retain`]) |
//! | `stats.rs` | [`Stats`] |
//!
//! The on-disk constants are all in [`layout`]; the lock-free frame
//! algorithm is in [`frame_ops`] (with its loom models).

mod append;
mod background;
mod batch;
pub mod consumer;
pub mod control;
mod dir_lock;
pub mod epochs;
pub mod error;
pub mod frame;
pub mod frame_ops;
pub mod latency;
pub mod layout;
mod options;
#[cfg(test)]
mod power_loss;
mod read;
pub mod recovery;
pub mod replica;
mod retention;
pub mod role;
pub mod scan;
pub mod segment;
mod segments;
mod slots;
mod stats;
pub mod tailer;
#[cfg(test)]
mod test_hooks;
#[cfg(test)]
mod tests;
pub mod truncate;
pub mod wait;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use consumer::Consumer;
pub use control::{Durability, QueueConfig};
pub use error::{Result, StoreError};
pub use latency::LatencyStat;
pub use options::StoreOptions;
pub use read::ReadyFuture;
pub(crate) use read::{Peek, Stall};
pub use recovery::RecoveryReport;
pub use replica::PeerLink;
pub use role::{monotonic_now_ns, Role};
pub use scan::{FrameInfo, FrameKind, Scan};
pub use slots::GroupState;
pub use stats::{CursorStat, Stats};
pub use tailer::{OwnedRecord, Record, Tailer};
pub use wait::IdleStrategy;

use append::start_flusher;
use control::Control;
use dir_lock::DirLock;
use frame_ops::Geometry;
use layout::*;
use options::check_matches;
use segment::Segment;
use segments::Prefetch;

/// A handle on one queue directory. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The shared `flock` marking this process as a user of the queue. Only
    /// application handles carry it; dropping the last of them stops this
    /// process's background work on the queue, then releases the queue
    /// (see [`background`]).
    _lock: Option<Arc<background::AppHandle>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    ctl: Arc<Control>,
    cfg: QueueConfig,
    geo: Geometry,
    queue_id: u64,
    pid: u32,
    segments: Mutex<segments::SegmentCache>,
    head: ArcSwap<Segment>,
    notifier: OnceLock<wait::AsyncNotifier>,
    recovery: RecoveryReport,
    read_only: std::sync::atomic::AtomicBool,
    /// Background preparation of the next segment, started by the first append.
    prefetch: OnceLock<Mutex<std::sync::mpsc::Sender<Prefetch>>>,
    /// The next segment, created and mapped ahead of the writers.
    prepared: Mutex<Option<Arc<Segment>>>,
    /// Retired segments queued for unmapping; bounded so mappings stay few.
    retiring: std::sync::atomic::AtomicUsize,
    /// Whether this process has an msync of the log in flight (see `sync_through`).
    flushing: Mutex<bool>,
    /// Signalled when one of them finishes.
    flushed_cv: std::sync::Condvar,
    /// Stops the background threads when the last application handle goes.
    bg: Arc<background::Background>,
    /// The truncation count this process's mappings reflect.
    truncations_seen: AtomicU64,
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl Store {
    /// Opens (and with [`StoreOptions::create`], creates) the queue at `dir`.
    ///
    /// If this process is the only one with the queue open, the tail is
    /// checked and repaired first; see [`Store::recovery_report`].
    pub fn open(dir: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => return Err(StoreError::NotADirectory(dir)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !opts.create {
                    return Err(StoreError::NotFound(dir));
                }
                std::fs::create_dir_all(&dir).map_err(|e| match e.kind() {
                    std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem => StoreError::NotWritable {
                        path: dir.clone(),
                        source: e,
                    },
                    _ => StoreError::io(&dir, e),
                })?;
            }
            Err(e) => return Err(StoreError::io(&dir, e)),
        }
        let ctl_path = dir.join(CONTROL_FILE);
        if !opts.create && !ctl_path.exists() {
            return Err(StoreError::NotFound(dir));
        }
        let lock = DirLock::take(&dir)?;
        if !ctl_path.exists() {
            let defaults = QueueConfig::default();
            let cfg = QueueConfig {
                capacity: opts.capacity.unwrap_or(defaults.capacity),
                segment_size: opts.segment_size.unwrap_or(defaults.segment_size),
                durability: opts.durability.unwrap_or(defaults.durability),
                recovery_timeout_ms: opts
                    .recovery_timeout_ms
                    .unwrap_or(defaults.recovery_timeout_ms),
            };
            cfg.validate()?;
            let id = opts.queue_id.unwrap_or_else(random_id);
            segment::create_segment(
                &dir,
                0,
                Geometry::new(cfg.segment_size),
                id,
                cfg.durability != Durability::None,
            )?;
            Control::create(&ctl_path, &cfg, id)?;
        }
        let ctl = Control::open(&ctl_path)?;
        let cfg = ctl.config()?;
        check_matches(&dir, &cfg, opts)?;
        // A shared flock marks this process as a user of the queue; an
        // exclusive one, if it can be had, proves no other process is.
        let lock_file = File::open(&ctl_path).map_err(|e| StoreError::io(&ctl_path, e))?;
        let exclusive = rustix::fs::flock(
            &lock_file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_ok();
        let geo = Geometry::new(cfg.segment_size);
        let queue_id = ctl.queue_id();
        let ctl = Arc::new(ctl);
        let ctl_truncations = ctl.truncations().load(SeqCst);
        let tail = ctl.tail().load(Acquire);
        let head_index = geo.segment_of(tail);
        if ctl.high_segment().load(Acquire) < head_index
            || !segment::segment_path(&dir, head_index).exists()
        {
            segment::create_segment(
                &dir,
                head_index,
                geo,
                queue_id,
                cfg.durability != Durability::None,
            )?;
            ctl.high_segment().fetch_max(head_index, AcqRel);
        }
        let head = Segment::open(&dir, head_index, geo, queue_id)?
            .ok_or_else(|| StoreError::NotFound(segment::segment_path(&dir, head_index)))?;
        let head = Arc::new(head);
        let segments = segments::SegmentCache::with(&head);
        let mut inner = Inner {
            dir: dir.clone(),
            ctl,
            cfg,
            geo,
            queue_id,
            pid: std::process::id(),
            segments: Mutex::new(segments),
            head: ArcSwap::new(head),
            notifier: OnceLock::new(),
            recovery: RecoveryReport::default(),
            read_only: Default::default(),
            prefetch: OnceLock::new(),
            prepared: Mutex::new(None),
            retiring: Default::default(),
            flushing: Mutex::new(false),
            flushed_cv: std::sync::Condvar::new(),
            bg: Default::default(),
            truncations_seen: AtomicU64::new(ctl_truncations),
        };
        if exclusive && !opts.skip_recovery {
            if inner.ctl.truncations().load(Acquire) % 2 == 1 {
                // A truncation was interrupted: finish it before recovery
                // walks the log, or the walk would find the cut frames.
                let tmp = Store {
                    inner: Arc::new(inner),
                    _lock: None,
                };
                truncate::finish_pending(&tmp)?;
                inner = Arc::try_unwrap(tmp.inner).map_err(|_| StoreError::Corrupt {
                    id: 0,
                    reason: "queue state shared during recovery".into(),
                })?;
            }
            inner.recovery = recovery::recover(&inner)?;
            // Recovery may have moved the tail back into an earlier segment.
            let idx = geo.segment_of(inner.ctl.tail().load(Acquire));
            if idx != head_index {
                let seg = Segment::open(&dir, idx, geo, queue_id)?
                    .ok_or_else(|| StoreError::NotFound(segment::segment_path(&dir, idx)))?;
                inner.head.store(Arc::new(seg));
            }
        }
        rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| StoreError::io(&ctl_path, e.into()))?;
        drop(lock);
        recovery::mark_live(&inner.ctl);
        let app = background::AppHandle::new(lock_file, inner.bg.clone(), inner.ctl.clone());
        let store = Store {
            inner: Arc::new(inner),
            _lock: Some(Arc::new(app)),
        };
        if cfg.durability == Durability::Batch {
            start_flusher(
                &store,
                opts.flush_interval.unwrap_or(Duration::from_millis(10)),
            );
        }
        Ok(store)
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The random id stamped into this queue's files (shared by its replicas).
    pub fn queue_id(&self) -> u64 {
        self.inner.queue_id
    }

    /// The queue's configuration.
    pub fn config(&self) -> QueueConfig {
        self.inner.cfg
    }

    /// Position/segment geometry.
    pub fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    /// What recovery found on open (empty if another process had the queue open).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Largest payload accepted by `append`.
    pub fn max_payload(&self) -> u64 {
        self.inner.geo.max_payload()
    }

    /// The write position: the id the next frame will get if nothing races it.
    pub fn tail_position(&self) -> u64 {
        self.inner.ctl.tail().load(Acquire)
    }

    /// The id of the first record still on disk (the start of the oldest segment).
    pub fn first_position(&self) -> u64 {
        self.inner
            .geo
            .first_position(self.inner.ctl.low_segment().load(Acquire))
    }

    /// Messages the default group has not yet dequeued (including writes in flight).
    pub fn depth(&self) -> u64 {
        let r = self.inner.ctl.reserved().load(Acquire);
        r.saturating_sub(self.default_group().count().load(Acquire))
    }

    /// Current epoch stamped into new records.
    pub fn epoch(&self) -> u32 {
        self.inner.ctl.epoch().load(Acquire)
    }

    /// Sets the epoch for new records (the replication layer's job).
    pub fn set_epoch(&self, epoch: u32) {
        self.inner.ctl.epoch().store(epoch, Release);
    }

    /// Marks this handle read-only: `append` fails with [`StoreError::ReadOnly`].
    /// Other handles and processes are not affected; see [`Store::set_role`].
    pub fn set_read_only(&self, ro: bool) {
        self.inner.read_only.store(ro, Release);
    }

    /// Writes the queue's replication role into its control file, for every
    /// process that maps it: while it is [`Role::Secondary`], `append` fails
    /// with [`StoreError::ReadOnly`] everywhere. The replication layer sets
    /// it; see [`role`](crate::store::role).
    pub fn set_role(&self, role: Role) {
        self.inner.ctl.role().store(role.code(), SeqCst);
    }

    /// The queue's replication role, as its control file says.
    pub fn role(&self) -> Role {
        Role::from_code(self.inner.ctl.role().load(Acquire))
    }

    /// Sets the leader's lease deadline in the control file, in
    /// `CLOCK_MONOTONIC` nanoseconds (0: no lease). While the role is
    /// [`Role::Primary`] and the deadline has passed, appends in every
    /// process wait as for [`Role::Changing`]: the lease holds even while the
    /// daemon that renews it is stopped. See
    /// [`CTL_LEASE_UNTIL_OFF`](layout::CTL_LEASE_UNTIL_OFF).
    ///
    /// ```
    /// use repliq::store::{Role, Store, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// store.set_role(Role::Primary);
    /// store.set_lease_until(repliq::store::monotonic_now_ns() + 60_000_000_000);
    /// assert!(store.takes_appends());
    /// store.append(b"x")?;
    /// store.set_lease_until(1); // long past
    /// assert!(!store.takes_appends());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_lease_until(&self, monotonic_ns: u64) {
        self.inner.ctl.lease_until().store(monotonic_ns, Release);
    }

    /// Sets how many secondary acknowledgements a synchronous `enqueue` of
    /// the founding API waits for on this queue (0: none). Written by the
    /// daemon that leads a replicated queue; an application that opens the
    /// queue without `with_replication` then gets the daemon's guarantee:
    /// `enqueue` returns once the replicated watermark covers the record, or
    /// fails after its timeout. See
    /// [`CTL_SYNC_ACKS_OFF`](layout::CTL_SYNC_ACKS_OFF).
    ///
    /// ```
    /// use repliq::store::{Store, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// assert_eq!(store.sync_acks(), 0);
    /// store.set_sync_acks(1);
    /// assert_eq!(store.sync_acks(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_sync_acks(&self, acks: u32) {
        self.inner.ctl.sync_acks().store(acks, Release);
    }

    /// The secondary acknowledgements a daemon-replicated synchronous
    /// enqueue waits for (0: none); see [`Store::set_sync_acks`].
    pub fn sync_acks(&self) -> u32 {
        self.inner.ctl.sync_acks().load(Acquire)
    }

    /// Records which node leads this queue (a hint for error messages:
    /// a refused append on a replica names it). Written by the cluster
    /// daemon whenever the catalog's leader changes.
    ///
    /// ```
    /// use repliq::store::{Role, Store, StoreError, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// store.set_leader_hint("node-b", 3)?;
    /// store.set_role(Role::Secondary);
    /// match store.append(b"x") {
    ///     Err(StoreError::ReadOnly(m)) => assert!(m.contains("the leader is node-b (epoch 3)")),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_leader_hint(&self, leader: &str, epoch: u32) -> Result<()> {
        role::write_leader_hint(&self.inner.dir, leader, epoch)
            .map_err(|e| StoreError::io(self.inner.dir.join(layout::LEADER_FILE), e))
    }

    /// The leader hint, `(leader, epoch)`, if the daemon wrote one.
    pub fn leader_hint(&self) -> Option<(String, u32)> {
        role::read_leader_hint(&self.inner.dir)
    }

    /// The role appends meet now: [`Role::Changing`] for a primary whose
    /// lease deadline has passed, else the role word.
    #[inline]
    pub(crate) fn role_now(&self) -> Role {
        let ctl = &self.inner.ctl;
        let role = Role::from_code(ctl.role().load(Acquire));
        if role == Role::Primary {
            let until = ctl.lease_until().load(Acquire);
            if until != 0 && read::coarse_now().as_nanos() as u64 >= until {
                return Role::Changing;
            }
        }
        role
    }

    /// Whether an append here would be taken now: the role accepts appends
    /// and, for a primary with a lease, the lease has not run out.
    pub fn takes_appends(&self) -> bool {
        self.role_now().accepts_appends()
    }

    /// Low-level access to the control file's shared words, for the store
    /// and the replication layer. Outside the crate, use the typed read-only
    /// accessors ([`Store::committed_mark`], [`Store::replicated_position`],
    /// ...) and [`Store::stats`].
    pub(crate) fn control(&self) -> &Control {
        &self.inner.ctl
    }
}
