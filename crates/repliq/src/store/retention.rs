//! Retention: deleting segments every cursor has moved past.

use std::sync::atomic::Ordering::*;

use super::layout::*;
use super::segment;
use super::{Durability, Result, Store, StoreError};

impl Store {
    /// Deletes segments that every consumer group and named tailer has moved past.
    pub fn retain(&self) -> Result<u64> {
        let inner = &*self.inner;
        let ctl = &inner.ctl;
        // Every caller moved its own cursor just before: the fence pairs with
        // the other callers' fences, so of two readers crossing a segment at
        // once at least one sees both cursors (no store-buffer miss leaves a
        // passed segment behind).
        std::sync::atomic::fence(SeqCst);
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
        self.retain_below(min)
    }

    /// [`retain`](Self::retain), only if this queue has a consumer group or
    /// named tailer: with none, nothing has been read and nothing may go.
    pub(crate) fn retain_if_read(&self) -> Result<u64> {
        let ctl = &self.inner.ctl;
        let read = [
            (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS),
            (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS),
        ]
        .into_iter()
        .any(|(region, len, n)| {
            (0..n).any(|i| ctl.slot(region, len, i).state().load(Acquire) != SLOT_FREE)
        });
        if read {
            self.retain()
        } else {
            Ok(0)
        }
    }

    /// Deletes the segments wholly below position `min`: the low mark
    /// moves first, then the files go.
    fn retain_below(&self, min: u64) -> Result<u64> {
        let inner = &*self.inner;
        let ctl = &inner.ctl;
        let target = inner.geo.segment_of(min);
        let low = ctl.low_segment().load(Acquire);
        if target <= low {
            return Ok(0);
        }
        // The low mark moves first, then files go: a reader that finds a
        // file missing already sees the mark (`NotRetained`, never a hang),
        // and a creator that links a file after this point sees the mark in
        // `ensure_segment` and removes its file again.
        ctl.low_segment().fetch_max(target, SeqCst);
        let mut removed = 0;
        for k in low..target {
            let p = segment::segment_path(&inner.dir, k);
            #[cfg(test)]
            super::test_hooks::reached(super::test_hooks::Point::SegmentUnlink, &inner.dir, k);
            match std::fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        if removed > 0 && inner.cfg.durability != Durability::None {
            // The unlinks must not come back after a power loss: a segment
            // resurrected below the low mark would be debris for recovery.
            segment::sync_dir(&inner.dir).map_err(|e| StoreError::io(&inner.dir, e))?;
        }
        let mut map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k| k >= target);
        Ok(removed)
    }

    /// Retention on a replica: deletes the segments below `primary_first`
    /// (the primary's oldest retained position, sent in its heartbeats) that
    /// every named consumer group and named tailer of this replica has
    /// passed. The default group stands for the primary's consumers, whose
    /// cursor is the primary's; peer slots left from a time this node led
    /// the queue are ignored. Returns the number of files removed.
    pub fn retain_replica(&self, primary_first: u64) -> Result<u64> {
        let inner = &*self.inner;
        let ctl = &inner.ctl;
        std::sync::atomic::fence(SeqCst);
        let mut min = ctl.tail().load(Acquire).min(primary_first);
        for (region, len, n, from) in [
            (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS, 1),
            (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS, 0),
        ] {
            for i in from..n {
                let s = ctl.slot(region, len, i);
                if s.state().load(Acquire) != SLOT_FREE {
                    min = min.min(s.position().load(Acquire));
                }
            }
        }
        let removed = self.retain_below(min)?;
        // The default group's cursor here may lag the primary's (a version 2
        // primary sends no group table; a version 3 one sends it at most
        // once per heartbeat): keep it at a retained record, so that
        // consumers find the oldest one if this replica comes to lead.
        let first = inner.geo.first_position(ctl.low_segment().load(Acquire));
        let dg = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, 0);
        if dg.state().load(Acquire) == SLOT_ACTIVE {
            dg.position().fetch_max(first, AcqRel);
        }
        Ok(removed)
    }
}
