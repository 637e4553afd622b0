//! Cutting a replica's log back to the point where it parted from its
//! leader's history, without losing what is cut and without a reader ever
//! seeing a torn or rewritten frame.
//!
//! # How
//!
//! 1. The records in `[to, tail)` are copied into a quarantine file in the
//!    queue directory, fsynced, before anything changes.
//! 2. The control file marks the truncation as in progress: it stores the
//!    point ([`CTL_TRUNCATED_TO_OFF`]) and makes the truncation count odd
//!    ([`CTL_TRUNCATIONS_OFF`]). A process that dies from here on leaves a
//!    mark that the next exclusive open finishes (see [`finish_pending`]).
//! 3. The write, committed, flushed and replicated positions, every reader
//!    slot and peer slot are moved back to `to` (never forward).
//! 4. The segment holding `to` is **replaced**, not rewritten: a new file
//!    with the bytes before `to` and zeros after it is renamed over it;
//!    later segments are unlinked. A process that still maps an old file
//!    keeps reading old, intact, immutable frames from it.
//! 5. The epoch history loses the epochs that began at or after `to`.
//! 6. The count becomes even again. A reader that finds no frame where it
//!    stands and sees the count changed drops its mappings and, if it stood
//!    past `to`, moves back to `to` ([`Peek::Truncated`](super::Peek)).
//!
//! Only a replica truncates ([`Role::Secondary`]): no local writer can
//! claim a frame, so the receiver that calls this is the only writer.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use crate::store::epochs;
use crate::store::error::{Result, StoreError};
use crate::store::layout::*;
use crate::store::segment::{self, Segment};
use crate::store::{Durability, Role, Store};

/// What [`Store::truncate_suffix`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Truncation {
    /// The new write position: everything from here on was cut.
    pub to: u64,
    /// The write position before the cut.
    pub old_tail: u64,
    /// Records moved to quarantine.
    pub records: u64,
    /// The quarantine file holding them; `None` if there were none.
    pub quarantine: Option<PathBuf>,
}

impl Store {
    /// Cuts the log back to `to`, a record boundary at or below the write
    /// position, moving the records after it into a quarantine file.
    ///
    /// Refused unless this queue is a replica ([`Role::Secondary`]).
    ///
    /// ```
    /// use repliq::store::{Role, Store, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// let a = store.append(b"kept")?;
    /// let b = store.append(b"cut")?;
    /// store.set_role(Role::Secondary);
    /// let t = store.truncate_suffix(b)?;
    /// assert_eq!((t.to, t.records), (b, 1));
    /// assert_eq!(store.tail_position(), b);
    /// let mut r = store.tailer();
    /// assert_eq!(r.next()?.map(|r| r.id), Some(a));
    /// assert!(r.next()?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn truncate_suffix(&self, to: u64) -> Result<Truncation> {
        if self.role() != Role::Secondary {
            return Err(StoreError::InvalidId {
                id: to,
                reason: "only a replica's log is truncated; this queue accepts appends".into(),
            });
        }
        let ctl = self.control();
        let old_tail = ctl.tail().load(Acquire);
        if to >= old_tail {
            return Ok(Truncation {
                to: old_tail,
                old_tail,
                records: 0,
                quarantine: None,
            });
        }
        // A record boundary of this log (validated, CRC included).
        self.tailer().seek(to)?;
        let (records, quarantine) = self.quarantine(to, old_tail)?;
        ctl.truncated_to().store(to, SeqCst);
        ctl.truncations().fetch_add(1, SeqCst); // odd: in progress
        if self.config().durability != Durability::None {
            ctl.flush()?;
        }
        ctl.truncated_records().fetch_add(records, AcqRel);
        let r = finish(self, to, records);
        tracing::warn!(
            queue = %self.dir().display(),
            to,
            old_tail,
            records,
            quarantine = ?quarantine,
            "log truncated to the leader's history; the cut records are in quarantine"
        );
        r.map(|()| Truncation {
            to,
            old_tail,
            records,
            quarantine,
        })
    }

    /// Test support, not an API: leaves the control file as a process killed
    /// right after marking a truncation to `to` would (the cut marked in
    /// progress, nothing cut yet), so that tests can check that the next
    /// exclusive open finishes it. `to` must be a record boundary. Never call
    /// it on a queue whose data matters.
    #[doc(hidden)]
    pub fn simulate_interrupted_truncation_for_tests(&self, to: u64) {
        let ctl = self.control();
        ctl.truncated_to().store(to, SeqCst);
        ctl.truncations().fetch_add(1, SeqCst); // odd: in progress
    }

    /// Records moved to quarantine by truncations of this queue, in total.
    pub fn truncated_records(&self) -> u64 {
        self.control().truncated_records().load(Acquire)
    }

    /// Writes the data records in `[from, to)` to a new quarantine file.
    fn quarantine(&self, from: u64, to: u64) -> Result<(u64, Option<PathBuf>)> {
        let mut body = Vec::new();
        let mut n = 0u64;
        let mut t = self.tailer();
        t.seek(from)?;
        while let Some(r) = t.next_with(|r| {
            if r.id < to {
                body.extend_from_slice(&r.id.to_le_bytes());
                body.extend_from_slice(&r.epoch.to_le_bytes());
                body.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
                body.extend_from_slice(&crc32c::crc32c(r.payload).to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
                body.extend_from_slice(r.payload);
                body.resize(body.len().next_multiple_of(8), 0);
            }
            r.id
        })? {
            if r >= to {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok((0, None));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.dir();
        let path = dir.join(format!("{QUARANTINE_PREFIX}{from:020}-{now}.rq"));
        let mut head = Vec::with_capacity(48);
        head.extend_from_slice(&QUARANTINE_MAGIC.to_le_bytes());
        head.extend_from_slice(&QUARANTINE_VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&self.queue_id().to_le_bytes());
        head.extend_from_slice(&from.to_le_bytes());
        head.extend_from_slice(&to.to_le_bytes());
        head.extend_from_slice(&n.to_le_bytes());
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all(&head)?;
            f.write_all(&body)?;
            f.sync_all()?;
            segment::sync_dir(dir)
        };
        write().map_err(|e| StoreError::io(&path, e))?;
        Ok((n, Some(path)))
    }
}

/// Finishes a truncation a process began and did not end (the count is
/// odd): run by the exclusive open before recovery scans the log.
pub(crate) fn finish_pending(store: &Store) -> Result<bool> {
    let ctl = store.control();
    if ctl.truncations().load(Acquire) % 2 == 0 {
        return Ok(false);
    }
    let to = ctl.truncated_to().load(Acquire);
    tracing::warn!(queue = %store.dir().display(), to, "finishing an interrupted truncation");
    finish(store, to, 0)?;
    Ok(true)
}

/// Steps 3 to 6 of the module's description. Idempotent.
fn finish(store: &Store, to: u64, records: u64) -> Result<()> {
    let ctl = store.control();
    let geo = store.geometry();
    let old_tail = ctl.tail().load(Acquire);
    let min_to = |w: &std::sync::atomic::AtomicU64| {
        let _ = w.fetch_update(AcqRel, Acquire, |v| (v > to).then_some(to));
    };
    min_to(ctl.tail());
    min_to(ctl.committed());
    min_to(ctl.flushed());
    min_to(ctl.replicated());
    let _ = ctl
        .reserved()
        .fetch_update(AcqRel, Acquire, |v| Some(v.saturating_sub(records)));
    for (region, len, n) in [
        (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS),
        (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS),
        (CTL_PEERS_OFF, PEER_SLOT_LEN, PEER_SLOTS),
    ] {
        for i in 0..n {
            min_to(ctl.slot(region, len, i).position());
        }
    }
    // Replace the segment holding `to`; unlink every later one.
    let si = geo.segment_of(to);
    let high = ctl
        .high_segment()
        .load(Acquire)
        .max(geo.segment_of(old_tail));
    replace_segment(store, si, geo.offset_of(to))?;
    for k in si + 1..=high {
        let p = segment::segment_path(store.dir(), k);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&p, e)),
        }
    }
    segment::sync_dir(store.dir()).map_err(|e| StoreError::io(store.dir(), e))?;
    let _ = ctl
        .high_segment()
        .fetch_update(AcqRel, Acquire, |v| (v > si).then_some(si));
    // The epochs that began at or after `to` wrote nothing that remains.
    let mut h = epochs::load(store.dir())?;
    if h.iter().any(|e| e.start >= to) {
        h.retain(|e| e.start < to);
        epochs::save(store.dir(), &h)?;
    }
    if let Some(last) = h.last() {
        ctl.epoch().store(last.epoch, Release);
    }
    store.forget_mappings_from(si)?;
    if store.config().durability != Durability::None {
        ctl.flush()?;
    }
    ctl.truncations().fetch_add(1, SeqCst); // even: done
    crate::store::wait::notify(ctl.notify_seq(), ctl.waiters());
    Ok(())
}

/// Replaces segment `index` by a copy of its first `keep` bytes followed by
/// zeros, renamed into place.
fn replace_segment(store: &Store, index: u64, keep: u64) -> Result<()> {
    let dir = store.dir();
    let path = segment::segment_path(dir, index);
    let tmp = dir.join(format!(
        "{index:020}{SEGMENT_TMP_SUFFIX}.trunc.{}",
        std::process::id()
    ));
    let size = store.geometry().size();
    let copy = || -> std::io::Result<()> {
        let old = std::fs::File::open(&path)?;
        let mut prefix = vec![0u8; keep as usize];
        old.read_exact_at(&mut prefix, 0)?;
        let _ = std::fs::remove_file(&tmp);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        segment::preallocate(&f, size)?;
        f.write_all_at(&prefix, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(&path, e)
    })
}

impl Store {
    /// Drops this process's cached mappings of segments `from` and later and
    /// maps the head segment afresh (after a truncation replaced them).
    pub(crate) fn forget_mappings_from(&self, from: u64) -> Result<()> {
        let inner = &*self.inner;
        inner
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| k < from);
        *inner.prepared.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let head_index = inner.geo.segment_of(inner.ctl.tail().load(Acquire));
        if inner.head.load().index() >= from {
            let seg = match self.segment(head_index)? {
                Some(s) => s,
                None => {
                    self.ensure_segment(head_index)?;
                    Arc::new(
                        Segment::open(&inner.dir, head_index, inner.geo, inner.queue_id)?
                            .ok_or_else(|| {
                                StoreError::NotFound(segment::segment_path(&inner.dir, head_index))
                            })?,
                    )
                }
            };
            inner.head.store(seg);
        }
        Ok(())
    }
}
