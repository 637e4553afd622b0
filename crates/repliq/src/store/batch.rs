//! Batch appends: many records for one claim.
//!
//! A batch is written as *spans* (invariant 8 in [`layout`](super::layout)):
//! one claim at the tail covers the frames of many records, which are
//! written in place and published together by one commit CAS. The frames
//! are the ordinary frames of single appends, each with its own id, CRC and
//! epoch, so readers, tailers, replication and recovery see no difference.
//!
//! What a batch guarantees:
//!
//! * **Checks are all or nothing.** An empty batch, a message over the
//!   maximum size, a replica (`ReadOnly`), or a batch the capacity cannot
//!   take whole (`Full`) is refused before anything is written.
//! * **A span is all or nothing.** A batch that does not fit what is left of
//!   the current segment rolls to the next one first (the rest of the current
//!   segment becomes padding, as for a single append that does not fit), so a
//!   batch that fits in one segment is one span. A writer killed mid-batch
//!   leaves the whole span or none of it. Only a batch larger than a whole
//!   segment is cut into several spans, each all or nothing; an I/O error
//!   between them (creating the next segment) leaves the spans before it in
//!   the log.
//! * **Ids are dense and in the batch's order**: record `k + 1` starts where
//!   record `k` ends (or at the next segment's first frame, between spans).
//!
//! One known cost of the shared claim: a reader that turns a dead (killed)
//! batch writer's pending span into padding releases one reservation, not
//! one per record, so the queue's depth reads `n - 1` too high (and `Full`
//! may come that much early) until the queue is next recovered on open.

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::frame_ops;
use super::layout::*;
use super::segments::Prefetch;
#[cfg(test)]
use super::test_hooks;
use super::{frame, latency, wait, Durability, Result, Store, StoreError};

impl Store {
    /// Appends every payload of `payloads`, in order, with one claim per
    /// span (see the module documentation); returns their ids.
    ///
    /// ```
    /// use repliq::store::{Store, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// let ids = store.append_batch(&[&b"one"[..], b"two", b"three"])?;
    /// let mut tailer = store.tailer();
    /// for (id, want) in ids.iter().zip([&b"one"[..], b"two", b"three"]) {
    ///     let rec = tailer.next()?.expect("a record");
    ///     assert_eq!((rec.id, &rec.payload[..]), (*id, want));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<u64>> {
        let mut lens = Vec::with_capacity(payloads.len());
        lens.extend(payloads.iter().map(|p| p.as_ref().len()));
        self.append_many_with(&lens, |i, buf| buf.copy_from_slice(payloads[i].as_ref()))
    }

    /// Appends `lens.len()` messages written in place (zero copy): `fill(i,
    /// buf)` receives the `lens[i]` claimed bytes of message `i`, in order,
    /// once each; it should write all of them and must not panic. Returns
    /// the ids, in order.
    ///
    /// Errors before anything is written: [`StoreError::InvalidBatch`] for
    /// an empty batch or one with more messages than the capacity,
    /// [`StoreError::TooLarge`], [`StoreError::ReadOnly`],
    /// [`StoreError::Full`] if the capacity cannot take the whole batch.
    /// With [`Durability::Always`] it returns once the last record is
    /// flushed. A sampled batch is one sample of the enqueue-latency
    /// histogram: the whole batch's time.
    pub fn append_many_with(
        &self,
        lens: &[usize],
        mut fill: impl FnMut(usize, &mut [u8]),
    ) -> Result<Vec<u64>> {
        let started = latency::sample_this_append().then(Instant::now);
        let inner = &*self.inner;
        if lens.is_empty() {
            return Err(StoreError::InvalidBatch(
                "an empty batch: give at least one message".into(),
            ));
        }
        self.check_writable()?;
        let max = inner.geo.max_payload();
        if let Some((i, &len)) = lens.iter().enumerate().find(|(_, &l)| l as u64 > max) {
            tracing::debug!(index = i, len, "batch refused: message too large");
            return Err(StoreError::TooLarge {
                len: len as u64,
                max,
            });
        }
        let n = lens.len() as u64;
        if n > inner.cfg.capacity {
            return Err(StoreError::InvalidBatch(format!(
                "{n} messages in one batch exceed the queue's capacity of {} messages",
                inner.cfg.capacity
            )));
        }
        if inner.prefetch.get().is_none() {
            self.prefetch(Prefetch::Entered(inner.head.load().index()));
        }
        self.reserve(n)?;
        let mut ids = Vec::with_capacity(lens.len());
        // Room for frames in one segment; every message fits in it (max_payload).
        let room = inner.geo.size() - SEGMENT_HEADER_LEN;
        let mut start = 0;
        let mut end = 0;
        while start < lens.len() {
            let mut span = 0u64;
            let mut stop = start;
            while let Some(&len) = lens.get(stop) {
                let a = align_frame(FRAME_HEADER_LEN + len as u64);
                if span + a > room {
                    break;
                }
                span += a;
                stop += 1;
            }
            match self.write_span(&lens[start..stop], span, start, &mut fill, &mut ids) {
                Ok(e) => end = e,
                Err(e) => {
                    // Release what no span holds: the messages not written.
                    inner.ctl.reserved().fetch_sub(n - ids.len() as u64, AcqRel);
                    if !ids.is_empty() {
                        wait::notify(inner.ctl.notify_seq(), inner.ctl.waiters());
                    }
                    return Err(e);
                }
            }
            start = stop;
        }
        wait::notify(inner.ctl.notify_seq(), inner.ctl.waiters());
        if inner.cfg.durability == Durability::Always {
            self.sync_through(end)?;
        }
        if let Some(s) = started {
            // One sample per sampled batch: the whole batch's time.
            let ns = u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX);
            latency::record(&inner.ctl, CTL_ENQUEUE_LATENCY_OFF, ns);
        }
        Ok(ids)
    }

    /// Claims one span of `span` bytes for the messages `lens` (the batch's
    /// `first..`), writes and commits them, and pushes their ids. Returns the
    /// position after the span.
    fn write_span(
        &self,
        lens: &[usize],
        span: u64,
        first: usize,
        fill: &mut impl FnMut(usize, &mut [u8]),
        ids: &mut Vec<u64>,
    ) -> Result<u64> {
        let inner = &*self.inner;
        let span32 = u32::try_from(span).map_err(|_| {
            StoreError::InvalidBatch(format!(
                "a span of {span} bytes exceeds a frame's length field"
            ))
        })?;
        let (mut seg, mut t, mut pending) = self.claim(span32)?;
        #[cfg(test)]
        test_hooks::reached(test_hooks::Point::Claimed, &inner.dir, t);
        // The span's bytes, kept only if an unblocker took our claim.
        let mut stolen: Option<Vec<u8>> = None;
        loop {
            let base = inner.geo.offset_of(t);
            let epoch = inner.ctl.epoch().load(Relaxed);
            let mut off = base;
            let mut crc0 = 0;
            for (k, &len) in lens.iter().enumerate() {
                let frame_len = (FRAME_HEADER_LEN + len as u64) as u32;
                // SAFETY: [off + 16, off + 16 + len) is inside the span we
                // claimed (the sum of the aligned frames is `span`) and
                // not committed yet.
                let buf = unsafe { seg.claimed_slice(off + FRAME_HEADER_LEN, len) };
                match &stolen {
                    Some(copy) => {
                        let from = (off - base + FRAME_HEADER_LEN) as usize;
                        buf.copy_from_slice(&copy[from..from + len]);
                    }
                    None => fill(first + k, buf),
                }
                let crc = frame::frame_crc(frame_len, 0, epoch, buf);
                if k == 0 {
                    crc0 = crc;
                } else {
                    // SAFETY: frame `k > 0` of our claimed, uncommitted span.
                    unsafe { frame_ops::write_inner(&**seg, off, 0, epoch, len, crc) };
                }
                off += align_frame(u64::from(frame_len));
            }
            // SAFETY: `base` is our span claimed with `pending`; the first
            // frame fits in it.
            if unsafe { frame_ops::commit_span(&**seg, base, pending, 0, epoch, lens[0], crc0) } {
                break;
            }
            // An unblocker gave up on us (we stalled past the recovery
            // timeout), padded the span and released one reservation: take
            // it again and write the span elsewhere.
            tracing::warn!(
                id = t,
                "batch append stalled past the recovery timeout; rewriting"
            );
            if stolen.is_none() {
                // SAFETY: the span is padding now; nobody reads or writes
                // the bytes behind a padding frame's word0, and its payload
                // area is still the bytes we wrote.
                let bytes = unsafe { seg.claimed_slice(base, span as usize) };
                stolen = Some(bytes.to_vec());
            }
            inner.ctl.reserved().fetch_add(1, AcqRel);
            (seg, t, pending) = self.claim(span32)?;
        }
        let mut pos = t;
        for &len in lens {
            ids.push(pos);
            pos += align_frame(FRAME_HEADER_LEN + len as u64);
        }
        Ok(t + span)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::test_hooks::{self, Point};
    use super::super::{Store, StoreOptions};

    /// A batch writer stalls between its claim and its commit past the
    /// recovery timeout; a reader turns its span into one padding frame.
    /// The writer's commit then fails, and it writes the whole batch again
    /// after the padding: every record once, in order, dense, nothing of the
    /// first attempt visible, the reservation count right.
    #[test]
    fn a_batch_stalled_past_the_recovery_timeout_is_padded_whole_and_written_again() {
        let _serial = test_hooks::serial();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        let store = Store::open(
            &dir,
            &StoreOptions::create()
                .segment_size(1 << 16)
                .recovery_timeout(Duration::from_millis(50)),
        )
        .unwrap();
        store.append(b"before").unwrap();
        let stall_once = Arc::new(AtomicBool::new(true));
        let hook_dir = dir.clone();
        let stall = stall_once.clone();
        let watcher = Store::open(&dir, &StoreOptions::open()).unwrap();
        let _hook = test_hooks::install(move |point, at: &Path, _pos| {
            if point == Point::Claimed && at == hook_dir.as_path() && stall.swap(false, SeqCst) {
                // Stall until a reader gave up on the span (however slow
                // the machine), then go on to the commit, which must fail.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while watcher.stats().unblocked == 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let reader = {
            let store = Store::open(&dir, &StoreOptions::open()).unwrap();
            std::thread::spawn(move || {
                let mut t = store.tailer();
                let mut got = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while got.len() < 4 && std::time::Instant::now() < deadline {
                    match t.next() {
                        Ok(Some(r)) => got.push((r.id, r.payload.to_vec())),
                        Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                        Err(e) => panic!("reader: {e}"),
                    }
                }
                got
            })
        };
        let msgs = [&b"one"[..], b"two", b"three"];
        let ids = store.append_batch(&msgs).unwrap();
        let got = reader.join().unwrap();
        assert!(!stall_once.load(SeqCst), "the hook stalled the batch");
        assert_eq!(store.stats().unblocked, 1, "one span padded");
        let first = store.first_position();
        let after_before = first + 24;
        let span = 3 * 24;
        assert_eq!(
            ids[0],
            after_before + span,
            "rewritten after the padded span"
        );
        assert_eq!(ids, vec![ids[0], ids[0] + 24, ids[0] + 48]);
        let want: Vec<(u64, Vec<u8>)> = std::iter::once((first, b"before".to_vec()))
            .chain(ids.iter().zip(msgs).map(|(&id, m)| (id, m.to_vec())))
            .collect();
        assert_eq!(got, want);
        assert_eq!(store.depth(), 4);
    }
}
