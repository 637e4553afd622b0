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

pub mod consumer;
pub mod control;
pub mod error;
pub mod frame;
pub mod frame_ops;
pub mod latency;
pub mod layout;
pub mod recovery;
pub mod replica;
pub mod scan;
pub mod segment;
pub mod tailer;
pub mod wait;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use consumer::Consumer;
pub use control::{Durability, QueueConfig};
pub use error::{Result, StoreError};
pub use latency::LatencyStat;
pub use recovery::RecoveryReport;
pub use replica::PeerLink;
pub use scan::{FrameInfo, FrameKind, Scan};
pub use tailer::{OwnedRecord, Record, Tailer};
pub use wait::IdleStrategy;

use control::Control;
use frame_ops::{ClaimStep, FrameView, Geometry};
use layout::*;
use segment::Segment;

/// Name of the lock file serialising creation and slot allocation.
const DIR_LOCK_FILE: &str = "control.lock";

/// Options for [`Store::open`]: whether to create, and the configuration to
/// create with or to check against.
///
/// A field left unset takes the default at creation and accepts whatever an
/// existing queue holds; a field that is set must match an existing queue.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    create: bool,
    capacity: Option<u64>,
    segment_size: Option<u64>,
    durability: Option<Durability>,
    recovery_timeout_ms: Option<u32>,
    flush_interval: Option<Duration>,
    skip_recovery: bool,
    queue_id: Option<u64>,
}

impl StoreOptions {
    /// Open an existing queue only.
    pub fn open() -> StoreOptions {
        StoreOptions::default()
    }
    /// Create the queue if it does not exist.
    pub fn create() -> StoreOptions {
        StoreOptions {
            create: true,
            ..Default::default()
        }
    }
    /// Capacity in messages.
    pub fn capacity(mut self, n: u64) -> Self {
        self.capacity = Some(n);
        self
    }
    /// Segment size in bytes (a power of two).
    pub fn segment_size(mut self, n: u64) -> Self {
        self.segment_size = Some(n);
        self
    }
    /// Durability mode.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = Some(d);
        self
    }
    /// Time after which a stuck writer of a live process is given up on.
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.recovery_timeout_ms = Some(d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        self
    }
    /// Never run recovery on open, even with exclusive access: for tools that
    /// must show the files exactly as they are (`repliq dump`, `verify`).
    pub fn skip_recovery(mut self) -> Self {
        self.skip_recovery = true;
        self
    }
    /// The queue id to create with, instead of a random one: a replica takes
    /// its primary's, so that their segment files are byte-identical.
    pub fn queue_id(mut self, id: u64) -> Self {
        self.queue_id = Some(id);
        self
    }
    /// Interval of the background flusher in `batch` durability (default 10 ms).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = Some(d);
        self
    }
}

/// A handle on one queue directory. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The shared `flock` marking this process as a user of the queue. Only
    /// application handles carry it, so that dropping the last of them
    /// releases the queue at once, even while a background thread of this
    /// handle is still finishing a flush.
    _lock: Option<Arc<File>>,
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
    segments: Mutex<HashMap<u64, Weak<Segment>>>,
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
}

/// Work for the prefetch thread.
enum Prefetch {
    /// Writers entered segment `0`: create and map the one after it.
    Entered(u64),
    /// A segment writers left: unmap it here, off the append path.
    Retire(Arc<Segment>),
}

/// Holds the directory lock (an exclusive `flock` on [`DIR_LOCK_FILE`]).
struct DirLock(File);

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock> {
        let p = dir.join(DIR_LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::NotWritable {
                        path: dir.into(),
                        source: e,
                    }
                }
                _ => StoreError::io(&p, e),
            })?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| StoreError::io(&p, e.into()))?;
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
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
        let tail = ctl.tail().load(Acquire);
        let head_index = geo.segment_of(tail);
        if ctl.high_segment().load(Acquire) < head_index
            || !segment::segment_path(&dir, head_index).exists()
        {
            segment::create_segment(&dir, head_index, geo, queue_id, false)?;
            ctl.high_segment().fetch_max(head_index, AcqRel);
        }
        let head = Segment::open(&dir, head_index, geo, queue_id)?
            .ok_or_else(|| StoreError::NotFound(segment::segment_path(&dir, head_index)))?;
        let head = Arc::new(head);
        let mut segments = HashMap::new();
        segments.insert(head_index, Arc::downgrade(&head));
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
        };
        if exclusive && !opts.skip_recovery {
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
        let store = Store {
            inner: Arc::new(inner),
            _lock: Some(Arc::new(lock_file)),
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
    pub fn set_read_only(&self, ro: bool) {
        self.inner.read_only.store(ro, Release);
    }

    /// Low-level access to the control file, for diagnostics and replication.
    pub fn control(&self) -> &Control {
        &self.inner.ctl
    }

    /// Counters and cursors, read atomically one by one.
    pub fn stats(&self) -> Stats {
        let ctl = &self.inner.ctl;
        let mut groups = Vec::new();
        for i in 0..GROUP_SLOTS {
            let s = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, i);
            if s.state().load(Acquire) == SLOT_ACTIVE {
                groups.push(CursorStat {
                    name: s.name(),
                    position: s.position().load(Acquire),
                    count: s.count().load(Acquire),
                });
            }
        }
        let mut tailers = Vec::new();
        for i in 0..TAILER_SLOTS {
            let s = ctl.slot(CTL_TAILERS_OFF, TAILER_SLOT_LEN, i);
            if s.state().load(Acquire) == SLOT_ACTIVE {
                tailers.push(CursorStat {
                    name: s.name(),
                    position: s.position().load(Acquire),
                    count: 0,
                });
            }
        }
        Stats {
            tail: ctl.tail().load(Acquire),
            committed: self.committed_position(),
            reserved: ctl.reserved().load(Acquire),
            depth: self.depth(),
            capacity: self.inner.cfg.capacity,
            epoch: ctl.epoch().load(Acquire),
            replicated: ctl.replicated().load(Acquire),
            low_segment: ctl.low_segment().load(Acquire),
            unblocked: ctl.unblocked().load(Acquire),
            recoveries: ctl.recoveries().load(Acquire),
            flushed: ctl.flushed().load(Acquire),
            full_rejections: ctl.u64_at(CTL_FULL_REJECTIONS_OFF).load(Acquire),
            enqueue_latency: latency::read(ctl, CTL_ENQUEUE_LATENCY_OFF),
            sync_wait: latency::read(ctl, CTL_SYNC_WAIT_OFF),
            groups,
            tailers,
        }
    }

    // ------------------------------------------------------------------
    // Appending
    // ------------------------------------------------------------------

    /// Appends one message and returns its id.
    ///
    /// Lock-free: claims space with a CAS on the shared tail, copies, then
    /// publishes with a release CAS. Fails with [`StoreError::Full`] when the
    /// default group holds `capacity` undequeued messages; nothing is dropped.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_with(payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Appends a message of `len` bytes written in place by `fill` (zero copy).
    ///
    /// `fill` receives the claimed bytes inside the mapped segment; it should
    /// write all of them and must not panic.
    pub fn append_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        self.append_frame(len, 0, fill)
    }

    fn append_frame(&self, len: usize, flags: u16, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        let started = latency::sample_this_append().then(Instant::now);
        let inner = &*self.inner;
        if inner.read_only.load(Relaxed) {
            return Err(StoreError::ReadOnly(format!(
                "{} is a replica; append on the primary",
                inner.dir.display()
            )));
        }
        let max = inner.geo.max_payload();
        if len as u64 > max {
            return Err(StoreError::TooLarge {
                len: len as u64,
                max,
            });
        }
        if inner.prefetch.get().is_none() {
            self.prefetch(Prefetch::Entered(inner.head.load().index()));
        }
        self.reserve()?;
        let frame_len = (FRAME_HEADER_LEN + len as u64) as u32;
        let (mut seg, mut t, mut pending) = match self.claim(frame_len) {
            Ok(c) => c,
            Err(e) => {
                inner.ctl.reserved().fetch_sub(1, AcqRel);
                return Err(e);
            }
        };
        let mut off = inner.geo.offset_of(t);
        // SAFETY: [off + 16, off + 16 + len) belongs to the frame we just claimed.
        let buf = unsafe { seg.claimed_slice(off + FRAME_HEADER_LEN, len) };
        fill(buf);
        let mut stolen_copy: Option<Vec<u8>> = None;
        loop {
            let epoch = inner.ctl.epoch().load(Relaxed);
            // SAFETY: still our claimed, uncommitted frame.
            let payload = unsafe { seg.claimed_slice(off + FRAME_HEADER_LEN, len) };
            if let Some(copy) = &stolen_copy {
                payload.copy_from_slice(copy);
            }
            let crc = frame::frame_crc(frame_len, flags, epoch, payload);
            // SAFETY: `off` is our claimed frame with `pending`; `len` fits.
            if unsafe { frame_ops::commit(&**seg, off, pending, flags, epoch, len, crc) } {
                break;
            }
            // An unblocker gave up on us (we stalled past the recovery timeout)
            // and released our reservation: take it again and write elsewhere.
            tracing::warn!(
                id = t,
                "append stalled past the recovery timeout; rewriting"
            );
            if stolen_copy.is_none() {
                stolen_copy = Some(payload.to_vec());
            }
            inner.ctl.reserved().fetch_add(1, AcqRel);
            match self.claim(frame_len) {
                Ok((s, nt, p)) => {
                    seg = s;
                    t = nt;
                    pending = p;
                    off = inner.geo.offset_of(t);
                }
                Err(e) => {
                    inner.ctl.reserved().fetch_sub(1, AcqRel);
                    return Err(e);
                }
            }
        }
        wait::notify(inner.ctl.notify_seq(), inner.ctl.waiters());
        if inner.cfg.durability == Durability::Always {
            let aligned = align_frame(u64::from(frame_len));
            seg.flush_range(off, aligned)?;
            inner.ctl.flushed().fetch_max(t + aligned, AcqRel);
        }
        if let Some(s) = started {
            let ns = u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX);
            latency::record(&inner.ctl, CTL_ENQUEUE_LATENCY_OFF, ns);
        }
        Ok(t)
    }

    /// Records how long a synchronous enqueue waited for its
    /// acknowledgements, in the queue's shared histogram.
    pub fn record_sync_wait(&self, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        latency::record(&self.inner.ctl, CTL_SYNC_WAIT_OFF, ns);
    }

    fn reserve(&self) -> Result<()> {
        let ctl = &self.inner.ctl;
        let cap = self.inner.cfg.capacity;
        let r = ctl.reserved().fetch_add(1, AcqRel);
        let dequeued = self.default_group().count().load(Acquire);
        if r.saturating_sub(dequeued) >= cap {
            ctl.reserved().fetch_sub(1, AcqRel);
            ctl.u64_at(CTL_FULL_REJECTIONS_OFF).fetch_add(1, Relaxed);
            return Err(StoreError::Full { capacity: cap });
        }
        Ok(())
    }

    /// Claims a frame at the tail, rolling segments as needed.
    fn claim(&self, frame_len: u32) -> Result<(arc_swap::Guard<Arc<Segment>>, u64, u64)> {
        let inner = &*self.inner;
        let tail = inner.ctl.tail();
        loop {
            let t = tail.load(Acquire);
            let si = inner.geo.segment_of(t);
            let Some(seg) = self.head_segment(si)? else {
                continue; // `t` was stale: its segment is gone; reload the tail
            };
            match frame_ops::try_claim(&**seg, tail, inner.geo, t, frame_len, inner.pid) {
                ClaimStep::Claimed { pending } => return Ok((seg, t, pending)),
                ClaimStep::Retry => {}
                ClaimStep::NeedRoll => {
                    self.ensure_segment(si + 1)?;
                    frame_ops::pad_to_end(&**seg, tail, inner.geo, t);
                }
                ClaimStep::Corrupt(f) => {
                    return Err(StoreError::Corrupt {
                        id: t,
                        reason: format!("{} at the write position", f.describe()),
                    })
                }
            }
        }
    }

    /// The segment writers append to, mapping (and creating) it if the tail
    /// moved on. `Ok(None)` if `index` is stale: retention already deleted it.
    fn head_segment(&self, index: u64) -> Result<Option<arc_swap::Guard<Arc<Segment>>>> {
        let h = self.inner.head.load();
        if h.index() == index {
            return Ok(Some(h));
        }
        let newer = h.index() > index;
        drop(h);
        if newer {
            return Ok(None);
        }
        let inner = &*self.inner;
        self.ensure_segment(index)?;
        let Some(seg) = self.segment(index)? else {
            return Ok(None);
        };
        let cur = inner.head.load();
        if cur.index() < index {
            drop(cur);
            let old = inner.head.swap(seg.clone());
            // Unmap off the append path, unless the prefetch thread lags.
            if inner.retiring.fetch_add(1, AcqRel) < 4 {
                self.prefetch(Prefetch::Retire(old));
            } else {
                inner.retiring.fetch_sub(1, AcqRel);
                drop(old);
            }
            self.prefetch(Prefetch::Entered(index));
        }
        let h = inner.head.load();
        if h.index() == index {
            Ok(Some(h))
        } else {
            // Another thread moved head further; use our own mapping this once.
            Ok(Some(arc_swap::Guard::from_inner(seg)))
        }
    }

    /// Makes sure segment `index` exists (replication receiver, rolling).
    pub(crate) fn ensure_next_segment(&self, index: u64) -> Result<()> {
        self.ensure_segment(index)
    }

    /// Hands work to this handle's prefetch thread, starting it if needed.
    /// Best effort: if the thread cannot run, writers do the work inline.
    fn prefetch(&self, job: Prefetch) {
        let tx = self.inner.prefetch.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Prefetch>();
            let weak = Arc::downgrade(&self.inner);
            let r = std::thread::Builder::new()
                .name("repliq-prefetch".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        // Drain what queued up: unmap every retired segment
                        // first, then prepare only after the newest entry.
                        let mut newest = None;
                        let mut retired = 0;
                        for job in std::iter::once(first).chain(rx.try_iter()) {
                            match job {
                                Prefetch::Retire(seg) => {
                                    drop(seg);
                                    retired += 1;
                                }
                                Prefetch::Entered(k) => newest = newest.max(Some(k)),
                            }
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        inner.retiring.fetch_sub(retired, AcqRel);
                        let Some(k) = newest else { continue };
                        let store = Store { inner, _lock: None };
                        if let Err(e) = store.prepare(k + 1) {
                            tracing::warn!("cannot prepare segment {}: {e}", k + 1);
                        }
                    }
                });
            if let Err(e) = r {
                tracing::warn!("cannot start the prefetch thread: {e}");
            }
            Mutex::new(tx)
        });
        let tx = tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(std::sync::mpsc::SendError(Prefetch::Retire(seg))) = tx.send(job) {
            drop(seg);
        }
    }

    /// Creates segment `index` and maps it with every page faulted in.
    fn prepare(&self, index: u64) -> Result<()> {
        let inner = &*self.inner;
        if inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.index())
            == Some(index)
        {
            return Ok(());
        }
        self.ensure_segment(index)?;
        let seg = {
            let map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&index).and_then(Weak::upgrade)
        };
        let seg = match seg {
            Some(s) => s,
            None => {
                let Some(s) =
                    Segment::open_with(&inner.dir, index, inner.geo, inner.queue_id, true)?
                else {
                    return Ok(()); // deleted by retention meanwhile
                };
                let s = Arc::new(s);
                let mut map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&index).and_then(Weak::upgrade) {
                    Some(existing) => existing,
                    None => {
                        map.insert(index, Arc::downgrade(&s));
                        s
                    }
                }
            }
        };
        let old = inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(seg);
        drop(old);
        Ok(())
    }

    /// Creates segment `index` unless a segment at or beyond it was ever
    /// created. A missing segment at or below the high mark was deleted by
    /// retention; recreating it would let a writer holding a stale tail claim
    /// space that no reader will ever visit.
    fn ensure_segment(&self, index: u64) -> Result<()> {
        let inner = &*self.inner;
        let high = inner.ctl.high_segment();
        if index <= high.load(Acquire) {
            return Ok(());
        }
        segment::create_segment(
            &inner.dir,
            index,
            inner.geo,
            inner.queue_id,
            inner.cfg.durability != Durability::None,
        )?;
        high.fetch_max(index, AcqRel);
        Ok(())
    }

    /// Maps segment `index` (shared within this process). `Ok(None)` if absent.
    pub(crate) fn segment(&self, index: u64) -> Result<Option<Arc<Segment>>> {
        let inner = &*self.inner;
        let mut map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&index).and_then(Weak::upgrade) {
            return Ok(Some(s));
        }
        let Some(seg) = Segment::open(&inner.dir, index, inner.geo, inner.queue_id)? else {
            return Ok(None);
        };
        let seg = Arc::new(seg);
        if map.len() >= 32 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(index, Arc::downgrade(&seg));
        Ok(Some(seg))
    }

    // ------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------

    /// An unnamed tailer positioned at the oldest retained record.
    pub fn tailer(&self) -> Tailer {
        Tailer::new(self.clone(), self.first_position(), None)
    }

    /// A named tailer: its position is kept in the control file and resumes
    /// after a restart. A new name starts at the oldest retained record.
    pub fn named_tailer(&self, name: &str) -> Result<Tailer> {
        let slot = self.open_slot(
            "named tailer",
            CTL_TAILERS_OFF,
            TAILER_SLOT_LEN,
            TAILER_SLOTS,
            name,
        )?;
        let pos = self
            .inner
            .ctl
            .slot(CTL_TAILERS_OFF, TAILER_SLOT_LEN, slot)
            .position()
            .load(Acquire);
        Ok(Tailer::new(self.clone(), pos, Some(slot)))
    }

    /// A consumer of the default group (the founding API's `dequeue`).
    pub fn consumer(&self) -> Consumer {
        Consumer::new(self.clone(), 0)
    }

    /// A consumer of the named group, created on first use at the oldest retained record.
    pub fn group_consumer(&self, group: &str) -> Result<Consumer> {
        if group == DEFAULT_GROUP {
            return Ok(self.consumer());
        }
        let slot = self.open_slot(
            "consumer group",
            CTL_GROUPS_OFF,
            GROUP_SLOT_LEN,
            GROUP_SLOTS,
            group,
        )?;
        Ok(Consumer::new(self.clone(), slot))
    }

    pub(crate) fn default_group(&self) -> control::Slot<'_> {
        self.inner.ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, 0)
    }

    fn open_slot(
        &self,
        kind: &'static str,
        region: usize,
        len: usize,
        count: usize,
        name: &str,
    ) -> Result<usize> {
        if name.is_empty() || name.len() > SLOT_NAME_MAX {
            return Err(StoreError::InvalidConfig(format!(
                "{kind} name must be 1 to {SLOT_NAME_MAX} bytes, got {}",
                name.len()
            )));
        }
        let ctl = &self.inner.ctl;
        let find = || {
            (0..count).find(|&i| {
                let s = ctl.slot(region, len, i);
                s.state().load(Acquire) == SLOT_ACTIVE && s.name() == name
            })
        };
        if let Some(i) = find() {
            return Ok(i);
        }
        let _lock = DirLock::take(&self.inner.dir)?;
        if let Some(i) = find() {
            return Ok(i);
        }
        for i in 0..count {
            let s = ctl.slot(region, len, i);
            if s.state()
                .compare_exchange(SLOT_FREE, SLOT_BUSY, AcqRel, Relaxed)
                .is_ok()
            {
                s.set_name(name);
                s.position().store(self.first_position(), Release);
                s.count().store(0, Release);
                s.state().store(SLOT_ACTIVE, Release);
                return Ok(i);
            }
        }
        Err(StoreError::NoSlot {
            kind,
            name: name.into(),
            max: count,
        })
    }

    /// Looks at the frame at `pos`, resolving stuck writers. Used by tailers and consumers.
    pub(crate) fn peek(
        &self,
        pos: u64,
        cache: &mut Option<Arc<Segment>>,
        stall: &mut Stall,
    ) -> Result<Peek> {
        let inner = &*self.inner;
        let si = inner.geo.segment_of(pos);
        let seg = match cache {
            Some(s) if s.index() == si => s,
            _ => match self.segment(si)? {
                Some(s) => cache.insert(s),
                None => {
                    let low = inner.ctl.low_segment().load(Acquire);
                    if si < low {
                        return Err(StoreError::NotRetained {
                            id: pos,
                            first: inner.geo.first_position(low),
                        });
                    }
                    return Ok(Peek::Empty);
                }
            },
        };
        let off = inner.geo.offset_of(pos);
        let v = frame_ops::view(&**seg, inner.geo, off);
        match v {
            FrameView::Empty => Ok(Peek::Empty),
            FrameView::Padding { aligned } => Ok(Peek::Skip {
                next: inner.geo.advance(pos, aligned),
            }),
            FrameView::Data { len, flags, .. } => {
                let next = inner.geo.advance(pos, align_frame(u64::from(len)));
                if flags & FLAG_METADATA != 0 {
                    Ok(Peek::Skip { next })
                } else {
                    Ok(Peek::Data { next, view: v })
                }
            }
            FrameView::Pending { word0, owner_pid } => {
                if stall.should_unblock(pos, owner_pid, inner.pid, inner.cfg.recovery_timeout_ms) {
                    if frame_ops::unblock(&**seg, off, word0) {
                        inner.ctl.unblocked().fetch_add(1, AcqRel);
                        inner.ctl.reserved().fetch_sub(1, AcqRel);
                        tracing::warn!(
                            id = pos,
                            owner_pid,
                            queue = %inner.dir.display(),
                            "writer stalled or died mid-append; its frame became padding"
                        );
                        wait::notify(inner.ctl.notify_seq(), inner.ctl.waiters());
                    }
                    // Re-read: either padding now, or the writer committed.
                    return self.peek(pos, cache, stall);
                }
                Ok(Peek::Empty)
            }
            FrameView::Corrupt(f) => Err(StoreError::Corrupt {
                id: pos,
                reason: f.describe().into(),
            }),
        }
    }

    /// True if a frame is ready at `pos`: committed data, padding, or a
    /// header that fails its check (so that the reader finds the error).
    /// False for nothing yet, or a pending frame: sleepers wake on its commit,
    /// or every 50 ms to give up on a dead writer. `cached` is the caller's
    /// mapping, used if it is the right segment.
    pub fn frame_ready(&self, pos: u64, cached: Option<&Arc<Segment>>) -> bool {
        let geo = self.inner.geo;
        let si = geo.segment_of(pos);
        let looked_up;
        let seg = match cached {
            Some(s) if s.index() == si => s,
            _ => match self.segment(si) {
                Ok(Some(s)) => {
                    looked_up = s;
                    &looked_up
                }
                Ok(None) => return false,
                Err(_) => return true,
            },
        };
        !matches!(
            frame_ops::view(&**seg, geo, geo.offset_of(pos)),
            FrameView::Empty | FrameView::Pending { .. }
        )
    }

    /// Waits until `ready()` holds, sleeping on the shared futex; false on timeout.
    pub fn wait_until(&self, timeout: Option<Duration>, ready: impl FnMut() -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        wait::block_until(
            self.inner.ctl.notify_seq(),
            self.inner.ctl.waiters(),
            deadline,
            ready,
        )
    }

    /// A future that resolves once `ready()` holds, woken by writers in any process.
    pub fn ready_async<F: FnMut() -> bool + Unpin>(&self, ready: F) -> ReadyFuture<'_, F> {
        ReadyFuture { store: self, ready }
    }

    fn notifier(&self) -> Option<&wait::AsyncNotifier> {
        if let Some(n) = self.inner.notifier.get() {
            return Some(n);
        }
        let ctl = self.inner.ctl.clone();
        match wait::AsyncNotifier::start(ctl.notify_seq(), ctl.waiters(), ctl.clone()) {
            Ok(n) => {
                let _ = self.inner.notifier.set(n);
                self.inner.notifier.get()
            }
            Err(e) => {
                tracing::error!("cannot start the notifier thread: {e}");
                None
            }
        }
    }

    // ------------------------------------------------------------------
    // Committed position, flushing, retention
    // ------------------------------------------------------------------

    /// Advances and returns the committed position: every frame below it is complete.
    pub fn committed_position(&self) -> u64 {
        let inner = &*self.inner;
        let hint = inner.ctl.committed();
        let start = hint.load(Acquire);
        let tail = inner.ctl.tail().load(Acquire);
        let mut pos = start;
        let mut cache: Option<Arc<Segment>> = None;
        while pos < tail {
            let si = inner.geo.segment_of(pos);
            let seg = match &cache {
                Some(s) if s.index() == si => s,
                _ => match self.segment(si) {
                    Ok(Some(s)) => cache.insert(s),
                    _ => break,
                },
            };
            match frame_ops::view(&**seg, inner.geo, inner.geo.offset_of(pos)).aligned_len() {
                Some(a) => pos = inner.geo.advance(pos, a),
                None => break,
            }
        }
        hint.fetch_max(pos, AcqRel);
        hint.load(Acquire)
    }

    /// Flushes every committed frame not yet flushed, and the control file.
    pub fn flush(&self) -> Result<()> {
        let inner = &*self.inner;
        let committed = self.committed_position();
        let from = inner.ctl.flushed().load(Acquire);
        if committed > from {
            let mut seg_i = inner.geo.segment_of(from);
            let last = inner.geo.segment_of(committed);
            while seg_i <= last {
                if let Some(seg) = self.segment(seg_i)? {
                    let lo = if seg_i == inner.geo.segment_of(from) {
                        inner.geo.offset_of(from)
                    } else {
                        0
                    };
                    let hi = if seg_i == last {
                        inner.geo.offset_of(committed)
                    } else {
                        inner.geo.size()
                    };
                    seg.flush_range(lo, hi.saturating_sub(lo))?;
                }
                seg_i += 1;
            }
            inner.ctl.flushed().fetch_max(committed, AcqRel);
        }
        inner.ctl.flush()
    }

    /// Deletes segments that every consumer group and named tailer has moved past.
    pub fn retain(&self) -> Result<u64> {
        let inner = &*self.inner;
        let ctl = &inner.ctl;
        let mut min = ctl.tail().load(Acquire);
        for (region, len, n) in [
            (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS),
            (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS),
        ] {
            for i in 0..n {
                let s = ctl.slot(region, len, i);
                if s.state().load(Acquire) != SLOT_FREE {
                    min = min.min(s.position().load(Acquire));
                }
            }
        }
        for i in 0..PEER_SLOTS {
            let s = ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i);
            if s.state().load(Acquire) == SLOT_ACTIVE {
                min = min.min(s.position().load(Acquire));
            }
        }
        let target = inner.geo.segment_of(min);
        let low = ctl.low_segment().load(Acquire);
        if target <= low {
            return Ok(0);
        }
        let mut removed = 0;
        for k in low..target {
            let p = segment::segment_path(&inner.dir, k);
            match std::fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        ctl.low_segment().fetch_max(target, AcqRel);
        let mut map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|&k, _| k >= target);
        Ok(removed)
    }

    /// The epoch of the record `id`, which must be a record of this queue.
    pub fn epoch_of(&self, id: u64) -> Result<u32> {
        let mut t = Tailer::new(self.clone(), id, None);
        t.seek(id)?;
        match t.next_with(|r| r.epoch)? {
            Some(e) => Ok(e),
            None => Err(StoreError::InvalidId {
                id,
                reason: "not committed yet".into(),
            }),
        }
    }
}

fn check_matches(dir: &Path, cfg: &QueueConfig, o: &StoreOptions) -> Result<()> {
    let mismatch = |field: &'static str, existing: String, requested: String| {
        Err(StoreError::ConfigMismatch {
            path: dir.into(),
            field,
            existing,
            requested,
        })
    };
    if let Some(c) = o.capacity {
        if c == 0 {
            return Err(StoreError::InvalidConfig(
                "capacity must be at least 1".into(),
            ));
        }
        if c != cfg.capacity {
            return mismatch("capacity", cfg.capacity.to_string(), c.to_string());
        }
    }
    if let Some(s) = o.segment_size {
        if s != cfg.segment_size {
            return mismatch("segment_size", cfg.segment_size.to_string(), s.to_string());
        }
    }
    if let Some(d) = o.durability {
        if d != cfg.durability {
            return mismatch("durability", cfg.durability.to_string(), d.to_string());
        }
    }
    Ok(())
}

fn start_flusher(store: &Store, interval: Duration) {
    let weak = Arc::downgrade(&store.inner);
    let r = std::thread::Builder::new()
        .name("repliq-flush".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(inner) = weak.upgrade() else { return };
            let s = Store { inner, _lock: None };
            if let Err(e) = s.flush() {
                tracing::error!("background flush failed: {e}");
            }
        });
    if let Err(e) = r {
        tracing::error!("cannot start the flusher thread: {e}");
    }
}

/// What a reader finds at a position.
pub(crate) enum Peek {
    Empty,
    Skip { next: u64 },
    Data { next: u64, view: FrameView },
}

/// Tracks how long a reader has waited at one pending frame.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    pos: u64,
    since: Option<Duration>,
    checked: Option<Duration>,
}

/// A cheap monotonic clock (`CLOCK_MONOTONIC_COARSE`, a few ns through the vDSO).
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Stall {
    /// Grace before an owner pid is checked.
    const GRACE: Duration = Duration::from_millis(1);

    fn should_unblock(&mut self, pos: u64, owner: u32, me: u32, timeout_ms: u32) -> bool {
        let now = coarse_now();
        if self.pos != pos || self.since.is_none() {
            *self = Stall {
                pos,
                since: Some(now),
                checked: None,
            };
            return false;
        }
        let waited = now.saturating_sub(self.since.unwrap_or(now));
        if waited >= Duration::from_millis(u64::from(timeout_ms)) {
            return true;
        }
        if waited >= Self::GRACE && owner != 0 && owner != me {
            let recheck = self
                .checked
                .is_none_or(|c| now.saturating_sub(c) >= Self::GRACE);
            if recheck {
                self.checked = Some(now);
                return !process_alive(owner);
            }
        }
        false
    }
}

/// Whether `pid` names a live process in this pid namespace.
fn process_alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Future returned by [`Store::ready_async`].
pub struct ReadyFuture<'a, F> {
    store: &'a Store,
    ready: F,
}

impl<F: FnMut() -> bool + Unpin> std::future::Future for ReadyFuture<'_, F> {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if (self.ready)() {
            return std::task::Poll::Ready(());
        }
        match self.store.notifier() {
            Some(n) => n.register(cx.waker()),
            None => cx.waker().wake_by_ref(),
        }
        if (self.ready)() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// A consumer group's or named tailer's cursor, as reported by [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorStat {
    /// Group or tailer name.
    pub name: String,
    /// Next position it will read.
    pub position: u64,
    /// Messages dequeued (groups only).
    pub count: u64,
}

/// A snapshot of a queue's shared counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Write position.
    pub tail: u64,
    /// Committed position.
    pub committed: u64,
    /// Messages appended or in flight, ever.
    pub reserved: u64,
    /// Messages the default group has not dequeued.
    pub depth: u64,
    /// Capacity in messages.
    pub capacity: u64,
    /// Current epoch.
    pub epoch: u32,
    /// Replicated watermark.
    pub replicated: u64,
    /// Oldest segment on disk.
    pub low_segment: u64,
    /// Stuck frames turned into padding.
    pub unblocked: u64,
    /// Recoveries run on open.
    pub recoveries: u64,
    /// Position flushed to disk.
    pub flushed: u64,
    /// Appends refused with [`StoreError::Full`], ever.
    pub full_rejections: u64,
    /// Sampled enqueue latency, recorded by every appending process.
    pub enqueue_latency: LatencyStat,
    /// Waits of synchronous enqueues for their acknowledgements.
    pub sync_wait: LatencyStat,
    /// Consumer groups.
    pub groups: Vec<CursorStat>,
    /// Named tailers.
    pub tailers: Vec<CursorStat>,
}
