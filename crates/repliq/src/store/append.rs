//! The append path: reserving capacity, claiming and committing frames, the
//! committed position, and durability (group commit in `sync_through`, msync,
//! the `batch` flusher thread).

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame_ops::{self, ClaimStep};
use super::layout::*;
use super::segment::Segment;
use super::segments::Prefetch;
#[cfg(test)]
use super::test_hooks;
use super::{frame, latency, wait, Durability, Peek, Result, Role, Store, StoreError};

impl Store {
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

    /// Waits, up to [`ROLE_CHANGE_WAIT_MS`], for the role appends meet to
    /// leave [`Role::Changing`] (a role change, or a primary's lease that ran
    /// out); returns the role it found last.
    #[cold]
    fn wait_role_settled(&self) -> Role {
        let deadline = Instant::now() + Duration::from_millis(ROLE_CHANGE_WAIT_MS);
        loop {
            let role = self.role_now();
            if role != Role::Changing || Instant::now() >= deadline {
                return role;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Refuses appends on a replica, or while the role is changing (after
    /// waiting up to [`ROLE_CHANGE_WAIT_MS`] for it to settle).
    #[inline]
    pub(super) fn check_writable(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.read_only.load(Relaxed) {
            return Err(StoreError::ReadOnly(format!(
                "{} is a replica; append on the primary",
                inner.dir.display()
            )));
        }
        let mut role = self.role_now();
        if role == Role::Changing {
            role = self.wait_role_settled();
        }
        if role == Role::Changing {
            let why = if self.role() == Role::Primary {
                "its lease from the cluster's catalog ran out (the daemon is stopped, \
                 overloaded or cut off from the catalog)"
            } else {
                "its node is taking or handing over the queue's leadership (role changing)"
            };
            return Err(StoreError::ReadOnly(format!(
                "{} is not taking appends: {why}, and that did not settle within {} ms; \
                 retry, or append on the leader",
                inner.dir.display(),
                ROLE_CHANGE_WAIT_MS
            )));
        }
        if !role.accepts_appends() {
            let leader = match self.leader_hint() {
                Some((name, epoch)) => {
                    format!("the leader is {name} (epoch {epoch}): append there")
                }
                None => "append on the primary, or configure this node as the primary".into(),
            };
            return Err(StoreError::ReadOnly(format!(
                "{} is a replica (role {} in its control file): only replication writes it; {leader}",
                inner.dir.display(),
                role.name()
            )));
        }
        Ok(())
    }

    pub(super) fn append_frame(
        &self,
        len: usize,
        flags: u16,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64> {
        let started = latency::sample_this_append().then(Instant::now);
        let inner = &*self.inner;
        self.check_writable()?;
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
        self.reserve(1)?;
        let frame_len = (FRAME_HEADER_LEN + len as u64) as u32;
        let (mut seg, mut t, mut pending) = match self.claim(frame_len) {
            Ok(c) => c,
            Err(e) => {
                inner.ctl.reserved().fetch_sub(1, AcqRel);
                return Err(e);
            }
        };
        let mut off = inner.geo.offset_of(t);
        #[cfg(test)]
        test_hooks::reached(test_hooks::Point::Claimed, &inner.dir, t);
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
            drop(seg);
            self.sync_through(t + align_frame(u64::from(frame_len)))?;
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

    /// Reserves room for `n` messages under the capacity, all or none.
    pub(super) fn reserve(&self, n: u64) -> Result<()> {
        let ctl = &self.inner.ctl;
        let cap = self.inner.cfg.capacity;
        let r = ctl.reserved().fetch_add(n, AcqRel);
        let dequeued = self.default_group().count().load(Acquire);
        if r.saturating_sub(dequeued).saturating_add(n) > cap {
            ctl.reserved().fetch_sub(n, AcqRel);
            ctl.u64_at(CTL_FULL_REJECTIONS_OFF).fetch_add(1, Relaxed);
            return Err(StoreError::Full { capacity: cap });
        }
        Ok(())
    }

    /// Claims a frame at the tail, rolling segments as needed.
    pub(super) fn claim(
        &self,
        frame_len: u32,
    ) -> Result<(arc_swap::Guard<Arc<Segment>>, u64, u64)> {
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
                    Ok(None) => {
                        // Retention deleted it: everything there was
                        // complete (readers passed it); go on from the
                        // oldest segment on disk.
                        let low = inner.ctl.low_segment().load(Acquire);
                        if si < low {
                            pos = inner.geo.first_position(low);
                            continue;
                        }
                        break;
                    }
                    Err(_) => break,
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

    /// Flushes every frame claimed before the call (waiting for writers
    /// still copying, and resolving dead ones as readers do), then the
    /// control file. Every append that returned before the call is durable
    /// when it returns.
    pub fn flush(&self) -> Result<()> {
        self.sync_through(self.inner.ctl.tail().load(Acquire))?;
        self.inner.ctl.flush()
    }

    /// [`flush`](Self::flush) for the background flusher: gives up, leaving
    /// the rest to the next flush, as soon as `closed` says the queue was
    /// closed in this process (so closing never waits on a writer's stall).
    pub(super) fn flush_unless_closed(&self, closed: &dyn Fn() -> bool) -> Result<()> {
        if self.sync_through_or(self.inner.ctl.tail().load(Acquire), closed)? {
            self.inner.ctl.flush()?;
        }
        Ok(())
    }

    /// Msyncs the log from `from` (a flushed position) to `to` (a committed
    /// one), end-of-segment padding included, then moves `flushed` to `to`.
    pub(super) fn msync_log(&self, from: u64, to: u64) -> Result<()> {
        let inner = &*self.inner;
        let mut seg_i = inner.geo.segment_of(from);
        let last = inner.geo.segment_of(to);
        while seg_i <= last {
            if let Some(seg) = self.segment(seg_i)? {
                let lo = if seg_i == inner.geo.segment_of(from) {
                    inner.geo.offset_of(from)
                } else {
                    0
                };
                // Whole earlier segments, their end-of-segment padding included.
                let hi = if seg_i == last {
                    inner.geo.offset_of(to)
                } else {
                    inner.geo.size()
                };
                seg.flush_range(lo, hi.saturating_sub(lo))?;
            }
            seg_i += 1;
        }
        inner.ctl.flushed().fetch_max(to, AcqRel);
        if last != inner.geo.segment_of(from) {
            // Once per segment, the flushed mark itself goes to disk, so that
            // recovery after a power loss walks at most from one segment back.
            inner.ctl.flush()?;
        }
        Ok(())
    }

    /// Returns once every byte of the log below `end` is msynced: the frames
    /// of other writers before it included, not just the caller's own.
    ///
    /// Group commit: in each process at most one msync of the log is in
    /// flight. Whoever finds none becomes the flusher and msyncs the whole
    /// committed prefix; every writer that committed meanwhile waits for it
    /// to finish, finds itself covered, and returns, or becomes the next
    /// flusher for everything committed since. So a burst of writers costs
    /// one msync, not one each. An earlier frame still pending is waited
    /// for; if its writer died or stalled past the recovery timeout it is
    /// resolved as readers resolve it.
    pub(super) fn sync_through(&self, end: u64) -> Result<()> {
        self.sync_through_or(end, &|| false).map(|_| ())
    }

    /// [`sync_through`](Self::sync_through) that returns `Ok(false)` without
    /// waiting further once `give_up` says so; `Ok(true)` when done.
    fn sync_through_or(&self, end: u64, give_up: &dyn Fn() -> bool) -> Result<bool> {
        let inner = &*self.inner;
        let flushed = inner.ctl.flushed();
        let mut stall = self.stall();
        let mut cache: Option<Arc<Segment>> = None;
        let mut waits = 0u32;
        loop {
            if flushed.load(Acquire) >= end {
                return Ok(true);
            }
            let mut busy = inner.flushing.lock().unwrap_or_else(|p| p.into_inner());
            if *busy {
                // An msync is in flight: it may cover us; if not, the next
                // one will, for us and everyone else who waits meanwhile.
                let _ = inner
                    .flushed_cv
                    .wait_timeout(busy, Duration::from_millis(5))
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if flushed.load(Acquire) >= end {
                return Ok(true);
            }
            let committed = self.committed_position();
            if committed >= end {
                *busy = true;
                drop(busy);
                let from = flushed.load(Acquire);
                let r = self.msync_log(from, committed);
                *inner.flushing.lock().unwrap_or_else(|p| p.into_inner()) = false;
                inner.flushed_cv.notify_all();
                r?;
                continue;
            }
            drop(busy);
            // The frame at `committed` is not complete: a writer before us is
            // still copying. Give up on it only by the readers' rule.
            if let Peek::Empty | Peek::Truncated { .. } =
                self.peek(committed, &mut cache, &mut stall)?
            {
                if give_up() {
                    return Ok(false);
                }
                self.check_segment_present(committed)?;
                waits += 1;
                if waits < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    /// A frame below the tail whose segment file is gone (deleted or moved
    /// by something other than retention) can never complete: an error, not
    /// an endless wait.
    fn check_segment_present(&self, pos: u64) -> Result<()> {
        let inner = &*self.inner;
        let si = inner.geo.segment_of(pos);
        let tail_segment = inner.geo.segment_of(inner.ctl.tail().load(Acquire));
        let low = inner.ctl.low_segment().load(Acquire);
        if si >= low && si < tail_segment && self.segment(si)?.is_none() {
            return Err(StoreError::Corrupt {
                id: pos,
                reason: format!("segment file {si} below the write position is missing"),
            });
        }
        Ok(())
    }
}

pub(super) fn start_flusher(store: &Store, interval: Duration) {
    let weak = Arc::downgrade(&store.inner);
    let r = std::thread::Builder::new()
        .name("repliq-flush".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(inner) = weak.upgrade() else { return };
            let bg = inner.bg.clone();
            let Some(_job) = bg.enter() else { return };
            let s = Store { inner, _lock: None };
            if let Err(e) = s.flush_unless_closed(&|| bg.is_closed()) {
                tracing::error!("background flush failed: {e}");
            }
        });
    if let Err(e) = r {
        tracing::error!("cannot start the flusher thread: {e}");
    }
}
