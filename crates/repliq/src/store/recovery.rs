//! Recovery on open, run when no other process has the queue open.
//!
//! It walks the log from the start of the segment holding the recorded write
//! position, checking every frame's header and CRC:
//!
//! * a pending frame (its writer died) becomes padding;
//! * below the recorded flushed position (what was on disk before, and so
//!   possibly acknowledged) nothing ends the log: a frame that fails its
//!   checks, or a word that reads zero where a frame was, is damage to
//!   acknowledged data. It is kept (a zero word is overwritten with
//!   [`DAMAGED_WORD0`] so that readers do not wait there), reported in
//!   [`RecoveryReport::corrupt`], and readers get an error carrying its id;
//! * above the flushed position, with `batch` or `always` durability, the
//!   first frame that fails its checks (or the first zero word) is the end of
//!   the log: after a power loss pages come back in any order, so a bad frame
//!   there is a torn write, and nothing after it was acknowledged. It and
//!   everything after it is zeroed (cut);
//! * with `none` durability (`kill -9` is the threat, not power loss), a frame
//!   that fails its checks with valid frames after it is corruption in the
//!   middle of the log: kept and reported; with nothing valid after it, it is
//!   a torn tail and cut;
//! * the write position, the committed position and the depth counters are
//!   recomputed from what is on disk. The depth recount walks from the
//!   default group's cursor, and a pending frame it meets there (a writer
//!   that died in an earlier segment) becomes padding too.
//!
//! # After a crash: the walk since the last recovery
//!
//! The walk above costs a pass over the segment holding the write position
//! and over every segment created after it (64 MiB each by default: reading
//! them faults in every page), plus a pass over every undequeued record for
//! the depth. That is what a power loss or damage needs. After `kill -9`, or
//! a process that exited without closing the queue, the page cache still
//! holds everything the dead processes wrote, in order: below the chain of
//! frames nothing is torn, and after its end nothing is written (invariant 2
//! of [`layout`](crate::store::layout)). Recovery then takes the fast path
//! when the control file says that processes of the *running boot* had the
//! queue open and did not close it ([`CTL_LIVE_BOOT_OFF`]; a power loss
//! changes the boot, a clean close clears the mark):
//!
//! * it walks from the end of the log at the previous recovery (the
//!   checkpoint, [`CTL_CHECKPOINT_OFF`]), or else from the default group's
//!   cursor: every frame below either is complete, so every frame a dead
//!   writer left pending is at or after it. Pending frames become padding,
//!   data frames are checked and counted, and the walk ends at the first
//!   empty word at or after the recorded write position;
//! * the depth is the checkpoint's, minus what the default group dequeued
//!   since, plus what was appended since: exact, as the full recount is;
//! * nothing after the end of the chain is scanned or cut.
//!
//! So the cost is that of what was appended (and dequeued) since the
//! previous recovery, not of the segment size or the queue's size. Anything
//! the fast walk does not expect (an empty word below the recorded write
//! position, a frame that fails its checks, a missing segment) sends
//! recovery to the full walk, as does any doubt about the checkpoint.

use std::sync::atomic::Ordering::*;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::store::control::Control;
use crate::store::error::Result;
use crate::store::frame_ops::{self, FrameView, Geometry, LogMemory};
use crate::store::layout::*;
use crate::store::segment::{self, Segment};
use crate::store::{Durability, Inner};

/// What recovery found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Whether recovery ran (false if other processes had the queue open).
    pub ran: bool,
    /// Write position recorded in the control file before recovery.
    pub tail_before: u64,
    /// Write position after recovery.
    pub tail_after: u64,
    /// Id of the first frame cut from a torn tail, if any.
    pub cut_from: Option<u64>,
    /// Bytes zeroed from the torn tail.
    pub cut_bytes: u64,
    /// Frames of dead writers turned into padding.
    pub pending_padded: u64,
    /// Ids of corrupt frames found in the middle of the log (kept, not served).
    pub corrupt: Vec<u64>,
    /// Temporary segment files of interrupted creations, removed.
    pub temporaries_removed: u64,
    /// Segment files below the low mark (retention had passed them; an
    /// interrupted retention or creation left them), removed.
    pub retired_removed: u64,
    /// Messages the default group has not dequeued, recounted from disk.
    pub depth: u64,
    /// Whether the fast path ran: the queue was left by processes of the
    /// running boot that did not close it (a crash, not a power loss), and
    /// only what changed since the previous recovery was walked.
    pub fast: bool,
    /// Time spent.
    pub duration: Duration,
}

impl RecoveryReport {
    /// True if recovery changed or found anything worth a log line.
    pub fn is_eventful(&self) -> bool {
        self.cut_from.is_some()
            || self.pending_padded > 0
            || !self.corrupt.is_empty()
            || self.tail_after != self.tail_before
    }
}

/// Looks for the next valid frame after a bad one, within the segment.
fn resync(seg: &Segment, geo: Geometry, from: u64) -> Option<u64> {
    let mut off = from + FRAME_ALIGN;
    while off + FRAME_HEADER_LEN <= geo.size() {
        let v = frame_ops::view(seg, geo, off);
        if let FrameView::Data { .. } = v {
            // SAFETY: exclusive recovery; `v` is a data view of `off` in `seg`.
            if unsafe { frame_ops::read_payload(seg, off, v, |_| ()) }.is_ok() {
                return Some(off);
            }
        }
        off += FRAME_ALIGN;
    }
    None
}

fn has_nonzero(seg: &Segment, geo: Geometry, from: u64) -> bool {
    let mut off = from;
    while off + 8 <= geo.size() {
        if seg.word0(off).load(Relaxed) != 0 {
            return true;
        }
        off += 8;
    }
    false
}

fn remove_temporaries(dir: &std::path::Path, rep: &mut RecoveryReport) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.contains(SEGMENT_TMP_SUFFIX))
            && std::fs::remove_file(e.path()).is_ok()
        {
            rep.temporaries_removed += 1;
        }
    }
}

/// The running boot's id (`/proc/sys/kernel/random/boot_id`), read once;
/// `None` where the system has none.
pub(crate) fn boot_id() -> Option<u128> {
    static BOOT: OnceLock<Option<u128>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
        u128::from_str_radix(&hex, 16).ok().filter(|&b| b != 0)
    })
}

/// Marks the queue as in use in the running boot ([`CTL_LIVE_BOOT_OFF`]).
/// Every open does it once it holds its shared `flock`.
pub(crate) fn mark_live(ctl: &Control) {
    let b = boot_id().unwrap_or(0);
    ctl.u64_at(CTL_LIVE_BOOT_OFF).store(b as u64, SeqCst);
    ctl.u64_at(CTL_LIVE_BOOT_OFF + 8)
        .store((b >> 64) as u64, SeqCst);
}

/// Clears the in-use mark: the last process closed the queue cleanly. The
/// caller holds the exclusive `flock`.
pub(crate) fn mark_closed(ctl: &Control) {
    ctl.u64_at(CTL_LIVE_BOOT_OFF).store(0, SeqCst);
    ctl.u64_at(CTL_LIVE_BOOT_OFF + 8).store(0, SeqCst);
}

/// Whether processes of the running boot left the queue without closing it.
fn crashed_in_this_boot(ctl: &Control) -> bool {
    let lo = u128::from(ctl.u64_at(CTL_LIVE_BOOT_OFF).load(Acquire));
    let hi = u128::from(ctl.u64_at(CTL_LIVE_BOOT_OFF + 8).load(Acquire));
    boot_id().is_some_and(|b| b == lo | hi << 64)
}

/// The recovery checkpoint ([`CTL_CHECKPOINT_OFF`]): at the end of the last
/// recovery, the log ended at `end` and held `depth` messages from the
/// default group's cursor `g0` to there.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    end: u64,
    g0: u64,
    depth: u64,
}

impl Checkpoint {
    fn word(ctl: &Control, i: usize) -> &std::sync::atomic::AtomicU64 {
        ctl.u64_at(CTL_CHECKPOINT_OFF + 8 * i)
    }

    /// The checkpoint, if one was saved since the last truncation.
    fn load(ctl: &Control) -> Option<Checkpoint> {
        let tag = Self::word(ctl, 3).load(Acquire);
        (tag != 0 && tag == ctl.truncations().load(Acquire).wrapping_add(1)).then(|| Checkpoint {
            end: Self::word(ctl, 0).load(Acquire),
            g0: Self::word(ctl, 1).load(Acquire),
            depth: Self::word(ctl, 2).load(Acquire),
        })
    }

    /// Forgets the checkpoint; the tag goes first, so a crash in between
    /// leaves no checkpoint rather than a torn one.
    fn clear(ctl: &Control) {
        Self::word(ctl, 3).store(0, SeqCst);
    }

    /// Saves `self`: tag cleared first, set last.
    fn save(self, ctl: &Control) {
        Self::clear(ctl);
        Self::word(ctl, 0).store(self.end, SeqCst);
        Self::word(ctl, 1).store(self.g0, SeqCst);
        Self::word(ctl, 2).store(self.depth, SeqCst);
        let tag = ctl.truncations().load(Acquire).wrapping_add(1);
        Self::word(ctl, 3).store(tag, SeqCst);
    }
}

/// Counts the messages (data frames that are not metadata) in `[from, to)`,
/// a stretch of complete frames. `None` if the walk meets anything else, a
/// missing segment, or does not land on `to`.
fn count_complete(inner: &Inner, from: u64, to: u64) -> Option<u64> {
    let geo = inner.geo;
    let mut p = from;
    let mut n = 0u64;
    let mut cur: Option<Segment> = None;
    while p < to {
        let si = geo.segment_of(p);
        if cur.as_ref().map(Segment::index) != Some(si) {
            cur = Some(Segment::open(&inner.dir, si, geo, inner.queue_id).ok()??);
        }
        let s = cur.as_ref()?;
        match frame_ops::view(s, geo, geo.offset_of(p)) {
            FrameView::Data { len, flags, .. } => {
                n += u64::from(flags & FLAG_METADATA == 0);
                p = geo.advance(p, align_frame(u64::from(len)));
            }
            FrameView::Padding { aligned } => p = geo.advance(p, aligned),
            _ => return None,
        }
    }
    (p == to).then_some(n)
}

/// The fast path (see the module documentation). `Ok(None)` sends recovery
/// to the full walk; pending frames padded before that stay padded (and
/// counted in `rep`). Returns the end of the log and the depth.
fn fast_walk(inner: &Inner, tail_before: u64, rep: &mut RecoveryReport) -> Option<(u64, u64)> {
    let ctl = &inner.ctl;
    let geo = inner.geo;
    let low = ctl.low_segment().load(Acquire);
    let g0 = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, 0);
    if g0.state().load(Acquire) != SLOT_ACTIVE {
        return None;
    }
    let g_now = g0.position().load(Acquire);
    let usable = |p: u64| p <= tail_before && geo.segment_of(p) >= low;
    // Where to start, from which position on to count messages, and the
    // messages between the default group's cursor and that position.
    let from_checkpoint = Checkpoint::load(ctl)
        .filter(|c| usable(c.end))
        .and_then(|c| {
            if g_now >= c.end {
                return Some((c.end, g_now, 0));
            }
            if c.g0 > g_now {
                return None;
            }
            let consumed = count_complete(inner, c.g0, g_now)?;
            Some((c.end, c.end, c.depth.checked_sub(consumed)?))
        });
    let (start, count_from, base) = match from_checkpoint {
        Some(s) => s,
        None if usable(g_now) => (g_now, g_now, 0),
        None => return None,
    };
    let mut pos = start;
    let mut counted = 0u64;
    let mut seg: Option<Segment> = None;
    loop {
        let si = geo.segment_of(pos);
        if seg.as_ref().map(Segment::index) != Some(si) {
            match Segment::open(&inner.dir, si, geo, inner.queue_id) {
                Ok(Some(s)) => seg = Some(s),
                Ok(None) if pos >= tail_before => break,
                _ => return None,
            }
        }
        let s = seg.as_ref()?;
        let off = geo.offset_of(pos);
        let v = frame_ops::view(s, geo, off);
        match v {
            FrameView::Empty if pos >= tail_before => break,
            FrameView::Pending { word0, .. } => {
                frame_ops::unblock(s, off, word0);
                rep.pending_padded += 1;
                pos = geo.advance(pos, align_frame(u64::from(word0 as u32)));
            }
            FrameView::Padding { aligned } => pos = geo.advance(pos, aligned),
            FrameView::Data { len, flags, .. } => {
                // SAFETY: exclusive recovery; `v` is the data view of `off`.
                if unsafe { frame_ops::read_payload(s, off, v, |_| ()) }.is_err() {
                    return None;
                }
                if flags & FLAG_METADATA == 0 && pos >= count_from {
                    counted += 1;
                }
                pos = geo.advance(pos, align_frame(u64::from(len)));
            }
            // An empty word below the recorded write position, or a frame
            // that fails its checks: not what a crash leaves.
            FrameView::Empty | FrameView::Corrupt(_) => return None,
        }
    }
    Some((pos, base + counted))
}

/// Removes the debris of interrupted creations and retentions; returns the
/// segments on disk from the low mark on.
fn remove_debris(inner: &Inner, rep: &mut RecoveryReport) -> Result<Vec<u64>> {
    let ctl = &inner.ctl;
    // Exclusive: nobody is creating segments, so temporaries are debris of
    // a writer killed inside `create_segment`.
    remove_temporaries(&inner.dir, rep);
    let low = ctl.low_segment().load(Acquire);
    let mut existing = segment::list_segments(&inner.dir)?;
    // Files below the low mark are debris of a process killed between
    // moving the mark and unlinking, or of a late creator (see
    // `Store::ensure_segment`): no reader may visit them.
    for &k in existing.iter().filter(|&&k| k < low) {
        let p = segment::segment_path(&inner.dir, k);
        match std::fs::remove_file(&p) {
            Ok(()) => rep.retired_removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::store::StoreError::io(&p, e)),
        }
    }
    existing.retain(|&k| k >= low);
    if (rep.retired_removed > 0 || rep.temporaries_removed > 0)
        && inner.cfg.durability != Durability::None
    {
        segment::sync_dir(&inner.dir).map_err(|e| crate::store::StoreError::io(&inner.dir, e))?;
    }
    Ok(existing)
}

pub(crate) fn recover(inner: &Inner) -> Result<RecoveryReport> {
    let started = Instant::now();
    let ctl = &inner.ctl;
    let tail_before = ctl.tail().load(Acquire);
    let mut rep = RecoveryReport {
        ran: true,
        tail_before,
        ..Default::default()
    };
    let existing = remove_debris(inner, &mut rep)?;
    let fast = if crashed_in_this_boot(ctl) {
        fast_walk(inner, tail_before, &mut rep)
    } else {
        None
    };
    rep.fast = fast.is_some();
    let (pos, depth) = match fast {
        Some((pos, depth)) => (pos, Some(depth)),
        None => {
            // The full walk may cut below the checkpoint.
            Checkpoint::clear(ctl);
            (full_walk(inner, &existing, &mut rep)?, None)
        }
    };
    if let Some(&k) = existing.last() {
        ctl.high_segment().fetch_max(k, AcqRel);
    }
    ctl.tail().store(pos, Release);
    ctl.committed().store(pos, Release);
    if ctl.flushed().load(Acquire) > pos {
        ctl.flushed().store(pos, Release);
    }
    // Clamp cursors past the cut, and recount the default group's depth.
    for (region, len, n) in [
        (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS),
        (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS),
    ] {
        for i in 0..n {
            let s = ctl.slot(region, len, i);
            match s.state().load(Acquire) {
                SLOT_ACTIVE if s.position().load(Acquire) > pos => {
                    s.position().store(pos, Release);
                }
                SLOT_BUSY => s.state().store(SLOT_FREE, Release), // died while creating
                _ => {}
            }
        }
    }
    let g0 = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, 0);
    let g0_pos = g0.position().load(Acquire);
    let (depth, exact) = match depth {
        Some(d) => (d, true),
        None => recount(inner, g0_pos, pos, &mut rep),
    };
    rep.depth = depth;
    ctl.reserved()
        .store(g0.count().load(Acquire) + depth, Release);
    ctl.waiters().store(0, Release);
    // No process has the queue open, so no replication session is live.
    for i in 0..PEER_SLOTS {
        let s = ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i);
        if s.link().load(Acquire) == LINK_CONNECTED {
            s.link().store(LINK_DISCONNECTED, Release);
        }
    }
    if exact && rep.corrupt.is_empty() && g0.state().load(Acquire) == SLOT_ACTIVE {
        Checkpoint {
            end: pos,
            g0: g0_pos,
            depth,
        }
        .save(ctl);
    } else {
        Checkpoint::clear(ctl);
    }
    ctl.recoveries().fetch_add(1, AcqRel);
    // After a crash in this boot nothing here needs to reach the disk: if
    // the machine loses power later, the next boot differs and the full
    // walk repairs whatever state the control file's pages come back in.
    if !rep.fast {
        ctl.flush()?;
    }
    rep.tail_after = pos;
    rep.duration = started.elapsed();
    if rep.is_eventful() {
        tracing::warn!(
            queue = %inner.dir.display(),
            tail_before = rep.tail_before,
            tail_after = rep.tail_after,
            cut_from = ?rep.cut_from,
            cut_bytes = rep.cut_bytes,
            pending_padded = rep.pending_padded,
            corrupt = ?rep.corrupt,
            fast = rep.fast,
            "recovered queue"
        );
    }
    Ok(rep)
}

/// Counts the default group's depth, the messages in `[g0_pos, end)`, and
/// whether the count is exact (it stops at a damaged frame or segment,
/// counting it as one).
///
/// A pending frame met on the way is a dead writer's (recovery runs alone)
/// and becomes padding, as in the walks. The full walk only covers the
/// segment of the write position onward, so a writer that died holding a
/// frame in an earlier segment, after which the last process closed the
/// queue cleanly, leaves its frame for this count to find; it used to stop
/// there and count everything after it as one message.
fn recount(inner: &Inner, g0_pos: u64, end: u64, rep: &mut RecoveryReport) -> (u64, bool) {
    let geo = inner.geo;
    let mut p = g0_pos;
    let mut depth = 0u64;
    let mut cur: Option<Segment> = None;
    while p < end {
        let si = geo.segment_of(p);
        if cur.as_ref().map(Segment::index) != Some(si) {
            cur = match Segment::open(&inner.dir, si, geo, inner.queue_id) {
                Ok(s) => s,
                // A damaged segment the default group has not reached: count it
                // like a corrupt frame. Readers report it (with its id) when they
                // get there; it must not make the whole queue unopenable.
                Err(e) => {
                    tracing::warn!(queue = %inner.dir.display(), segment = si, "depth recount stops at a damaged segment: {e}");
                    return (depth + 1, false);
                }
            };
        }
        let Some(s) = cur.as_ref() else {
            return (depth, false);
        };
        let off = geo.offset_of(p);
        match frame_ops::view(s, geo, off) {
            FrameView::Data { len, flags, .. } => {
                if flags & FLAG_METADATA == 0 {
                    depth += 1;
                }
                p = geo.advance(p, align_frame(u64::from(len)));
            }
            FrameView::Padding { aligned } => p = geo.advance(p, aligned),
            FrameView::Pending { word0, .. } => {
                frame_ops::unblock(s, off, word0);
                rep.pending_padded += 1;
                p = geo.advance(p, align_frame(u64::from(word0 as u32)));
            }
            // A corrupt frame in the middle: count it, readers will stop there.
            _ => return (depth + 1, false),
        }
    }
    (depth, p == end)
}

/// The full walk (see the module documentation): returns the end of the
/// valid log, having padded, marked and cut as described there.
fn full_walk(inner: &Inner, existing: &[u64], rep: &mut RecoveryReport) -> Result<u64> {
    let ctl = &inner.ctl;
    let geo = inner.geo;
    let tail_before = rep.tail_before;
    let flushed_before = ctl.flushed().load(Acquire);
    let low = ctl.low_segment().load(Acquire);
    let last_existing = existing.last().copied().unwrap_or(0);
    // With a durability mode, `flushed` marks what was acknowledged as on
    // disk: the walk starts at its segment (or the tail's, if earlier), so
    // that a torn frame above it in an earlier segment is found and cut.
    let durable = inner.cfg.durability != Durability::None;
    let walk_from = if durable {
        tail_before.min(flushed_before)
    } else {
        tail_before
    };
    let start_seg = geo.segment_of(walk_from).min(last_existing).max(low);
    let mut pos = geo.first_position(start_seg);
    let open = |i: u64| Segment::open(&inner.dir, i, geo, inner.queue_id);
    let mut seg = match open(start_seg)? {
        Some(s) => s,
        None => {
            segment::create_segment(&inner.dir, start_seg, geo, inner.queue_id, true)?;
            open(start_seg)?.ok_or_else(|| {
                crate::store::StoreError::NotFound(segment::segment_path(&inner.dir, start_seg))
            })?
        }
    };
    // Where the walk goes on after damage at `off` below the flushed mark:
    // the next valid frame in the segment, else the next segment.
    let skip_damage = |seg: &Segment, off: u64| -> u64 {
        match resync(seg, geo, off) {
            Some(r) => geo.base_of(seg.index()) + r,
            None => geo.first_position(seg.index() + 1),
        }
    };
    loop {
        let si = geo.segment_of(pos);
        if seg.index() != si {
            seg = match open(si)? {
                Some(s) => s,
                None => break,
            };
        }
        let off = geo.offset_of(pos);
        let v = frame_ops::view(&seg, geo, off);
        // Below the flushed mark every frame was on disk before: damage
        // there is never the end of the log. It is kept, reported, and
        // readers get an error with its id.
        let acknowledged = pos < flushed_before;
        match v {
            FrameView::Empty if acknowledged => {
                // A lost word where a frame was: mark it so readers report
                // it instead of waiting there forever.
                seg.word0(off).store(DAMAGED_WORD0, Release);
                seg.flush_range(off, 8)?;
                rep.corrupt.push(pos);
                pos = skip_damage(&seg, off);
            }
            FrameView::Empty => break,
            FrameView::Pending { word0, .. } => {
                frame_ops::unblock(&seg, off, word0);
                rep.pending_padded += 1;
                pos = geo.advance(pos, align_frame(u64::from(word0 as u32)));
            }
            FrameView::Padding { aligned } => pos = geo.advance(pos, aligned),
            FrameView::Data { len, .. } => {
                // SAFETY: exclusive recovery; `v` is the data view of `off`.
                let ok = unsafe { frame_ops::read_payload(&seg, off, v, |_| ()) }.is_ok();
                let next = geo.advance(pos, align_frame(u64::from(len)));
                if ok {
                    pos = next;
                    continue;
                }
                if acknowledged {
                    rep.corrupt.push(pos);
                    pos = next;
                    continue;
                }
                if durable {
                    // Above the flushed mark after a power loss, pages are
                    // written back in any order: a bad frame is a torn write,
                    // and nothing after it was acknowledged. The log ends here.
                    break;
                }
                let next_valid = geo.segment_of(next) == si
                    && !matches!(
                        frame_ops::view(&seg, geo, geo.offset_of(next)),
                        FrameView::Empty | FrameView::Corrupt(_)
                    );
                if next_valid {
                    rep.corrupt.push(pos);
                    pos = next;
                } else if let Some(r) = resync(&seg, geo, off) {
                    rep.corrupt.push(pos);
                    pos = geo.base_of(si) + r;
                } else {
                    break;
                }
            }
            FrameView::Corrupt(_) if acknowledged => {
                rep.corrupt.push(pos);
                pos = skip_damage(&seg, off);
            }
            FrameView::Corrupt(_) if durable => break,
            FrameView::Corrupt(_) => match resync(&seg, geo, off) {
                Some(r) => {
                    rep.corrupt.push(pos);
                    pos = geo.base_of(geo.segment_of(pos)) + r;
                }
                None => break,
            },
        }
    }
    // `pos` is the end of the valid log. Anything after it is a torn tail.
    let end_seg = geo.segment_of(pos);
    if seg.index() == end_seg {
        let off = geo.offset_of(pos);
        if has_nonzero(&seg, geo, off) {
            rep.cut_from = Some(pos);
            rep.cut_bytes += geo.size() - off;
            seg.zero_from(off);
            seg.flush_range(0, geo.size())?;
        }
    }
    for &k in existing.iter().filter(|&&k| k > end_seg) {
        if let Some(s) = open(k)? {
            if has_nonzero(&s, geo, SEGMENT_HEADER_LEN) {
                rep.cut_from.get_or_insert(geo.first_position(k));
                rep.cut_bytes += geo.size() - SEGMENT_HEADER_LEN;
                s.zero_from(SEGMENT_HEADER_LEN);
                s.flush_range(0, geo.size())?;
            }
        }
    }
    Ok(pos)
}
