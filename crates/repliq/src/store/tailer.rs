//! Tailers: broadcast readers. Every tailer sees every message, in order.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::error::{Result, StoreError};
use crate::store::frame_ops::{self, FrameView};
use crate::store::layout::{CTL_TAILERS_OFF, TAILER_SLOT_LEN};
use crate::store::segment::Segment;
use crate::store::wait::IdleStrategy;
use crate::store::{Peek, Stall, Store};

/// A record borrowed from the mapped segment (zero copy).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The message id: its position in the log.
    pub id: u64,
    /// The epoch (leader term) it was written under.
    pub epoch: u32,
    /// The payload, checked against its CRC32C.
    pub payload: &'a [u8],
}

/// A record copied out of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// The message id.
    pub id: u64,
    /// The epoch it was written under.
    pub epoch: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A broadcast reader with its own position.
///
/// ```
/// # use repliq::store::{Store, StoreOptions};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), &StoreOptions::create().segment_size(1 << 16))?;
/// store.append(b"a")?;
/// store.append(b"b")?;
/// let mut t = store.tailer();
/// let mut seen = Vec::new();
/// while let Some(n) = t.next_with(|r| r.payload.len())? {
///     seen.push(n);
/// }
/// assert_eq!(seen, [1, 1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Tailer {
    store: Store,
    pos: u64,
    seg: Option<Arc<Segment>>,
    named: Option<usize>,
    stall: Stall,
    acked_only: bool,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("pos", &self.pos)
            .field("named", &self.named)
            .finish()
    }
}

impl Tailer {
    pub(crate) fn new(store: Store, pos: u64, named: Option<usize>) -> Tailer {
        Tailer {
            stall: store.stall(),
            store,
            pos,
            seg: None,
            named,
            acked_only: false,
        }
    }

    /// The id of the next record this tailer will look at.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Only deliver records at or below the replicated watermark (like
    /// Chronicle's `readAfterReplicaAcknowledged`).
    pub fn set_acknowledged_only(&mut self, on: bool) {
        self.acked_only = on;
    }

    fn set_pos(&mut self, pos: u64) {
        let old_seg = self.store.geometry().segment_of(self.pos);
        self.pos = pos;
        if let Some(i) = self.named {
            self.store
                .control()
                .slot(CTL_TAILERS_OFF, TAILER_SLOT_LEN, i)
                .position()
                .store(pos, Release);
            if self.store.geometry().segment_of(pos) != old_seg {
                if let Err(e) = self.store.retain() {
                    tracing::warn!("retention failed: {e}");
                }
            }
        }
    }

    /// Moves to the oldest retained record.
    pub fn seek_start(&mut self) {
        let p = self.store.first_position();
        self.set_pos(p);
    }

    /// Moves past the last record written so far.
    pub fn seek_end(&mut self) {
        let p = self.store.tail_position();
        self.set_pos(p);
    }

    /// Moves to record `id`, in O(1): the id is its position.
    ///
    /// `id` must be a record boundary of this queue (an id returned by an
    /// append or read) or the write position; the frame found there is
    /// validated (header check and, for data, its CRC).
    pub fn seek(&mut self, id: u64) -> Result<()> {
        let geo = self.store.geometry();
        let first = self.store.first_position();
        let tail = self.store.tail_position();
        let invalid = |reason: &str| StoreError::InvalidId {
            id,
            reason: reason.into(),
        };
        if id < first {
            return Err(StoreError::NotRetained { id, first });
        }
        if id > tail {
            return Err(invalid("beyond the write position"));
        }
        let off = geo.offset_of(id);
        if off % 8 != 0 || off < crate::store::layout::SEGMENT_HEADER_LEN {
            return Err(invalid("not aligned to a frame"));
        }
        if id == tail {
            self.set_pos(id);
            return Ok(());
        }
        let seg = self
            .store
            .segment(geo.segment_of(id))?
            .ok_or_else(|| invalid("segment missing"))?;
        match frame_ops::view(&*seg, geo, off) {
            v @ FrameView::Data { .. } => {
                // SAFETY: `v` is a committed data frame at `off` in `seg`.
                unsafe { frame_ops::read_payload(&*seg, off, v, |_| ()) }
                    .map_err(|_| invalid("no valid record starts here"))?;
            }
            FrameView::Padding { .. } | FrameView::Pending { .. } => {}
            FrameView::Empty | FrameView::Corrupt(_) => {
                return Err(invalid("no valid record starts here"))
            }
        }
        self.set_pos(id);
        Ok(())
    }

    /// Reads the next record without copying, or `Ok(None)` if there is none yet.
    ///
    /// A record whose CRC does not match is an error carrying its id; the
    /// tailer stays on it, so it is never skipped silently.
    pub fn next_with<R>(&mut self, f: impl FnOnce(Record<'_>) -> R) -> Result<Option<R>> {
        loop {
            if self.acked_only && self.pos >= self.store.control().replicated().load(Acquire) {
                return Ok(None);
            }
            match self.store.peek(self.pos, &mut self.seg, &mut self.stall)? {
                Peek::Empty => return Ok(None),
                Peek::Truncated { to } => {
                    if self.pos > to {
                        self.set_pos(to);
                    }
                }
                Peek::Skip { next } => self.set_pos(next),
                Peek::Data { next, view } => {
                    let FrameView::Data { epoch, .. } = view else {
                        unreachable!("peek returns Data views only")
                    };
                    let id = self.pos;
                    let off = self.store.geometry().offset_of(id);
                    let Some(seg) = self.seg.as_ref() else {
                        return Ok(None);
                    };
                    // SAFETY: `view` is the committed data frame at `off` in `seg`.
                    let r = unsafe {
                        frame_ops::read_payload(&**seg, off, view, |payload| {
                            f(Record { id, epoch, payload })
                        })
                    };
                    let r = r.map_err(|_| StoreError::Corrupt {
                        id,
                        reason: "payload CRC32C mismatch".into(),
                    })?;
                    self.set_pos(next);
                    return Ok(Some(r));
                }
            }
        }
    }

    /// Reads the next record, copying its payload.
    // Not `Iterator::next`: a read can fail, and `None` only means "not yet".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<OwnedRecord>> {
        self.next_with(|r| OwnedRecord {
            id: r.id,
            epoch: r.epoch,
            payload: r.payload.to_vec(),
        })
    }

    /// True if a complete frame (a record, padding, or a corrupt header to
    /// report) is at the current position.
    pub fn has_next(&self) -> bool {
        self.store.frame_ready(self.pos, self.seg.as_ref())
    }

    /// Waits for the next record with `idle`, up to `timeout`, then reads it without copying.
    pub fn next_wait_with<R>(
        &mut self,
        idle: IdleStrategy,
        timeout: Option<Duration>,
        mut f: impl FnMut(Record<'_>) -> R,
    ) -> Result<Option<R>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(r) = self.next_with(&mut f)? {
                return Ok(Some(r));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            match idle {
                IdleStrategy::BusySpin => std::hint::spin_loop(),
                IdleStrategy::Yield => std::thread::yield_now(),
                IdleStrategy::Block => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let store = self.store.clone();
                    store.wait_until(left.or(Some(Duration::from_millis(50))), || self.has_next());
                }
            }
        }
    }

    /// Waits asynchronously for the next record and copies it out.
    pub async fn next_async(&mut self) -> Result<OwnedRecord> {
        loop {
            if let Some(r) = self.next()? {
                return Ok(r);
            }
            let store = self.store.clone();
            store.ready_async(|| self.has_next()).await;
        }
    }
}
