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
//!   recomputed from what is on disk.

use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

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

pub(crate) fn recover(inner: &Inner) -> Result<RecoveryReport> {
    let started = Instant::now();
    let ctl = &inner.ctl;
    let geo = inner.geo;
    let tail_before = ctl.tail().load(Acquire);
    let flushed_before = ctl.flushed().load(Acquire);
    let mut rep = RecoveryReport {
        ran: true,
        tail_before,
        ..Default::default()
    };
    // Exclusive: nobody is creating segments, so temporaries are debris of
    // a writer killed inside `create_segment`.
    remove_temporaries(&inner.dir, &mut rep);
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
    let mut p = g0.position().load(Acquire);
    let mut depth = 0u64;
    let mut cur: Option<Segment> = None;
    while p < pos {
        let si = geo.segment_of(p);
        if cur.as_ref().map(Segment::index) != Some(si) {
            cur = match open(si) {
                Ok(s) => s,
                // A damaged segment the default group has not reached: count it
                // like a corrupt frame. Readers report it (with its id) when they
                // get there; it must not make the whole queue unopenable.
                Err(e) => {
                    tracing::warn!(queue = %inner.dir.display(), segment = si, "depth recount stops at a damaged segment: {e}");
                    depth += 1;
                    break;
                }
            };
        }
        let Some(s) = cur.as_ref() else { break };
        match frame_ops::view(s, geo, geo.offset_of(p)) {
            FrameView::Data { len, flags, .. } => {
                if flags & FLAG_METADATA == 0 {
                    depth += 1;
                }
                p = geo.advance(p, align_frame(u64::from(len)));
            }
            FrameView::Padding { aligned } => p = geo.advance(p, aligned),
            // A corrupt frame in the middle: count it, readers will stop there.
            _ => {
                depth += 1;
                break;
            }
        }
    }
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
    ctl.recoveries().fetch_add(1, AcqRel);
    ctl.flush()?;
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
            "recovered queue"
        );
    }
    Ok(rep)
}
