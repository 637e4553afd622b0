//! The segment cache and segment preparation: mapping segments within a
//! process, creating the next one ahead of the writers (the prefetch
//! thread), and dropping mappings a truncation replaced.

use std::collections::HashMap;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, Weak};

use super::segment::{self, Segment};
#[cfg(test)]
use super::test_hooks;
use super::{Durability, Result, Store, StoreError};

/// Segments kept mapped by a store even while no reader holds them.
///
/// A process that reads or writes the log through [`Store::segment`] without
/// holding the returned mapping (a replication sender batching frames, a
/// follower writing received runs) would otherwise map the segment afresh
/// on every call and fault in every page it touches again: at 100 MB/s that
/// was an mmap, a statx, a munmap and a fault per page for each batch.
const PINNED: usize = 2;

/// This process's mappings of a queue's segments: every live one by index
/// (weak, so a mapping ends with its last user), and the [`PINNED`] most
/// recently looked up, held.
#[derive(Default)]
pub(super) struct SegmentCache {
    weak: HashMap<u64, Weak<Segment>>,
    /// Most recent first.
    pinned: [Option<Arc<Segment>>; PINNED],
}

impl SegmentCache {
    /// A cache holding `head`.
    pub(super) fn with(head: &Arc<Segment>) -> SegmentCache {
        let mut c = SegmentCache::default();
        c.weak.insert(head.index(), Arc::downgrade(head));
        c
    }

    /// The live mapping of segment `index`, if any, pinned as the most recent.
    fn get(&mut self, index: u64) -> Option<Arc<Segment>> {
        let s = self.weak.get(&index).and_then(Weak::upgrade)?;
        self.pin(&s);
        Some(s)
    }

    /// Records `seg` as the live mapping of its index, pinned as the most
    /// recent; a live mapping already recorded wins and is returned instead.
    fn insert(&mut self, seg: Arc<Segment>) -> Arc<Segment> {
        if let Some(existing) = self.get(seg.index()) {
            return existing;
        }
        if self.weak.len() >= 32 {
            self.weak.retain(|_, w| w.strong_count() > 0);
        }
        self.weak.insert(seg.index(), Arc::downgrade(&seg));
        self.pin(&seg);
        seg
    }

    fn pin(&mut self, seg: &Arc<Segment>) {
        if self.pinned[0].as_ref().is_some_and(|p| Arc::ptr_eq(p, seg)) {
            return;
        }
        // Most recent first; the least recent falls out (a one-off munmap
        // per segment the process moves past).
        let keep = self
            .pinned
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, seg)))
            .unwrap_or(PINNED - 1);
        self.pinned[..=keep].rotate_right(1);
        self.pinned[0] = Some(seg.clone());
    }

    /// Lets go of the held mappings of segments below `low`.
    fn release_below(&mut self, low: u64) {
        self.unpin(|i| i >= low);
    }

    /// Forgets every mapping whose index fails `keep` (retention deleted
    /// them, or a truncation replaced them).
    pub(super) fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.weak.retain(|&k, _| keep(k));
        self.unpin(keep);
    }

    /// Lets go of the held mappings whose index fails `keep`.
    fn unpin(&mut self, keep: impl Fn(u64) -> bool) {
        for p in &mut self.pinned {
            if p.as_ref().is_some_and(|s| !keep(s.index())) {
                *p = None;
            }
        }
    }
}

/// Work for the prefetch thread.
pub(super) enum Prefetch {
    /// Writers entered segment `0`: create and map the one after it.
    Entered(u64),
    /// A segment writers left: unmap it here, off the append path.
    Retire(Arc<Segment>),
}

impl Store {
    /// The segment writers append to, mapping (and creating) it if the tail
    /// moved on. `Ok(None)` if `index` is stale: retention already deleted it.
    pub(super) fn head_segment(&self, index: u64) -> Result<Option<arc_swap::Guard<Arc<Segment>>>> {
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
    pub(super) fn prefetch(&self, job: Prefetch) {
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
                        let bg = inner.bg.clone();
                        let Some(_job) = bg.enter() else { return };
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
    pub(super) fn prepare(&self, index: u64) -> Result<()> {
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
        let seg = inner
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(index);
        let seg = match seg {
            Some(s) => s,
            None => {
                let Some(s) =
                    Segment::open_with(&inner.dir, index, inner.geo, inner.queue_id, true)?
                else {
                    return Ok(()); // deleted by retention meanwhile
                };
                inner
                    .segments
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(Arc::new(s))
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
    ///
    /// The check and the creation are not one atomic step: a creator paused
    /// between them (the prefetch thread on a busy machine) can link a file
    /// that writers already passed and retention already deleted. Retention
    /// moves `low_segment` before it unlinks, so such a creator sees the
    /// mark after its link and removes the file again; nothing is left
    /// behind below the low mark.
    pub(super) fn ensure_segment(&self, index: u64) -> Result<()> {
        let inner = &*self.inner;
        let high = inner.ctl.high_segment();
        if index <= high.load(Acquire) {
            return Ok(());
        }
        #[cfg(test)]
        test_hooks::reached(test_hooks::Point::SegmentCreate, &inner.dir, index);
        segment::create_segment(
            &inner.dir,
            index,
            inner.geo,
            inner.queue_id,
            inner.cfg.durability != Durability::None,
        )?;
        high.fetch_max(index, AcqRel);
        if index < inner.ctl.low_segment().load(SeqCst) {
            let p = segment::segment_path(&inner.dir, index);
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::debug!(
                    segment = index,
                    "removed a segment created behind retention"
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        Ok(())
    }

    /// Maps segment `index` (shared within this process). `Ok(None)` if absent.
    pub(crate) fn segment(&self, index: u64) -> Result<Option<Arc<Segment>>> {
        self.refresh_after_truncation()?;
        let inner = &*self.inner;
        let mut map = inner.segments.lock().unwrap_or_else(|p| p.into_inner());
        // Retention (in any process) deleted the segments below the low
        // mark: let go of a held mapping of one, so its space comes back.
        map.release_below(inner.ctl.low_segment().load(Acquire));
        if let Some(s) = map.get(index) {
            return Ok(Some(s));
        }
        let Some(seg) = Segment::open(&inner.dir, index, inner.geo, inner.queue_id)? else {
            return Ok(None);
        };
        Ok(Some(map.insert(Arc::new(seg))))
    }

    /// Drops this process's mappings of segments a truncation replaced, once
    /// per truncation (another process may have done it; see [`truncate`](super::truncate)).
    pub(super) fn refresh_after_truncation(&self) -> Result<()> {
        let inner = &*self.inner;
        let n = inner.ctl.truncations().load(SeqCst);
        if n % 2 == 1 || inner.truncations_seen.load(Acquire) == n {
            return Ok(());
        }
        if inner.truncations_seen.swap(n, AcqRel) == n {
            return Ok(());
        }
        let to = inner.ctl.truncated_to().load(SeqCst);
        self.forget_mappings_from(inner.geo.segment_of(to))
    }
}
