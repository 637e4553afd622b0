//! The leader-epoch history of a queue: which epoch (leader term) wrote the
//! log from which position on, as Kafka's leader-epoch checkpoint (KIP-101).
//!
//! Two replicas agree on every record below the point where their
//! histories part, because one epoch has one leader and followers copy its
//! bytes. [`divergence`] finds that point from the two histories alone, never
//! from a watermark, so a follower truncates exactly the records the leader
//! does not hold.
//!
//! On disk it is [`EPOCHS_FILE`] in the queue directory (see
//! `docs/format.md`): magic, version, entry count, then 16-byte entries
//! `epoch:u32 | crc32c:u32 | start:u64`, rewritten whole (temporary file,
//! fsync, rename, directory fsync) when an epoch begins or a truncation drops
//! entries. A missing file is an empty history; a damaged one is an error.
//!
//! ```
//! use repliq::store::epochs::{divergence, EpochEntry};
//! let e = |epoch, start| EpochEntry { epoch, start };
//! // The follower wrote 100..150 in epoch 2 as a leader nobody followed; the
//! // leader's epoch 3 began at 100: the follower cuts at 100.
//! let leader = [e(1, 68), e(3, 100)];
//! let follower = [e(1, 68), e(2, 100)];
//! assert_eq!(divergence(&leader, 400, &follower, 150), 100);
//! ```

use std::io::Write;
use std::path::Path;

use crate::store::error::{Result, StoreError};
use crate::store::layout::{EPOCHS_FILE, EPOCHS_MAGIC, EPOCHS_MAX_ENTRIES, EPOCHS_VERSION};

/// One epoch of a queue's history: records from `start` on (up to the next
/// entry's start) were written under `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochEntry {
    /// The epoch (leader term).
    pub epoch: u32,
    /// Position of its first record.
    pub start: u64,
}

/// The position up to which a follower holding `follower` (and written up to
/// `follower_tail`) agrees with a leader holding `leader` (up to
/// `leader_tail`): the follower keeps everything below it and truncates the
/// rest.
///
/// For the latest epoch both histories contain with the same start, the
/// agreement reaches the end of that epoch on the side where it ends first
/// (an epoch's end is the next entry's start, or the tail). Without such an
/// epoch the histories share nothing and the answer is the earliest start.
pub fn divergence(
    leader: &[EpochEntry],
    leader_tail: u64,
    follower: &[EpochEntry],
    follower_tail: u64,
) -> u64 {
    let end_of = |h: &[EpochEntry], i: usize, tail: u64| h.get(i + 1).map_or(tail, |n| n.start);
    for (fi, f) in follower.iter().enumerate().rev() {
        if let Some(li) = leader.iter().position(|l| l.epoch == f.epoch) {
            if leader[li].start == f.start {
                let agreed =
                    end_of(leader, li, leader_tail).min(end_of(follower, fi, follower_tail));
                return agreed.min(follower_tail);
            }
        }
    }
    // Nothing in common: keep nothing the histories describe.
    let first = |h: &[EpochEntry], tail: u64| h.first().map_or(tail, |e| e.start);
    first(follower, follower_tail)
        .min(first(leader, leader_tail))
        .min(follower_tail)
}

/// Reads the history in `dir`; empty if the file does not exist.
pub fn load(dir: &Path) -> Result<Vec<EpochEntry>> {
    let path = dir.join(EPOCHS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    decode(&bytes).map_err(|reason| StoreError::Corrupt {
        id: 0,
        reason: format!("epoch history {}: {reason}", path.display()),
    })
}

/// Replaces the history in `dir` with `entries`, durably.
pub fn save(dir: &Path, entries: &[EpochEntry]) -> Result<()> {
    let path = dir.join(EPOCHS_FILE);
    let tmp = dir.join(format!("{EPOCHS_FILE}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(entries))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::store::segment::sync_dir(dir)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(&path, e)
    })
}

fn entry_crc(e: &EpochEntry) -> u32 {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&e.epoch.to_le_bytes());
    b[4..].copy_from_slice(&e.start.to_le_bytes());
    crc32c::crc32c(&b)
}

/// The file's bytes for `entries` (only the newest [`EPOCHS_MAX_ENTRIES`]).
fn encode(entries: &[EpochEntry]) -> Vec<u8> {
    let keep = &entries[entries.len().saturating_sub(EPOCHS_MAX_ENTRIES)..];
    let mut out = Vec::with_capacity(16 + 16 * keep.len());
    out.extend_from_slice(&EPOCHS_MAGIC.to_le_bytes());
    out.extend_from_slice(&EPOCHS_VERSION.to_le_bytes());
    out.extend_from_slice(&(keep.len() as u32).to_le_bytes());
    for e in keep {
        out.extend_from_slice(&e.epoch.to_le_bytes());
        out.extend_from_slice(&entry_crc(e).to_le_bytes());
        out.extend_from_slice(&e.start.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> std::result::Result<Vec<EpochEntry>, String> {
    let u32_at = |o: usize| -> std::result::Result<u32, String> {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let u64_at = |o: usize| -> std::result::Result<u64, String> {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    if u64_at(0)? != EPOCHS_MAGIC {
        return Err("bad magic".into());
    }
    let v = u32_at(8)?;
    if v != EPOCHS_VERSION {
        return Err(format!("version {v} not supported"));
    }
    let n = u32_at(12)? as usize;
    if n > EPOCHS_MAX_ENTRIES || b.len() != 16 + 16 * n {
        return Err(format!("{} bytes for {n} entries", b.len()));
    }
    let mut out: Vec<EpochEntry> = Vec::with_capacity(n);
    for i in 0..n {
        let o = 16 + 16 * i;
        let e = EpochEntry {
            epoch: u32_at(o)?,
            start: u64_at(o + 8)?,
        };
        if u32_at(o + 4)? != entry_crc(&e) {
            return Err(format!("entry {i} fails its CRC"));
        }
        if let Some(p) = out.last() {
            if e.epoch <= p.epoch || e.start < p.start {
                return Err(format!("entry {i} does not follow entry {}", i - 1));
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The history of a queue that never recorded one: epoch 1 from the start.
fn initial() -> Vec<EpochEntry> {
    vec![EpochEntry {
        epoch: 1,
        start: crate::store::layout::SEGMENT_HEADER_LEN,
    }]
}

impl crate::store::Store {
    /// The queue's leader-epoch history, oldest first. A queue that never
    /// changed epoch has one entry: epoch 1 from the first position.
    pub fn epoch_history(&self) -> Result<Vec<EpochEntry>> {
        let h = load(self.dir())?;
        Ok(if h.is_empty() { initial() } else { h })
    }

    /// Starts epoch `epoch` at the write position, durably, and stamps it
    /// into every later append. Returns the epoch's first position.
    ///
    /// The caller is the node that just became this queue's leader, and
    /// calls it before it lets appends in ([`Store::set_role`] to primary):
    /// a writer that read the old epoch must not claim a frame after the
    /// new epoch's start. `epoch` must exceed every epoch in the history.
    ///
    /// ```
    /// use repliq::store::{epochs::EpochEntry, Store, StoreOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
    /// store.append(b"in epoch 1")?;
    /// let start = store.begin_epoch(3)?;
    /// let id = store.append(b"in epoch 3")?;
    /// assert_eq!(id, start);
    /// assert_eq!(store.epoch_history()?.last(), Some(&EpochEntry { epoch: 3, start }));
    /// assert!(store.begin_epoch(2).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_epoch(&self, epoch: u32) -> Result<u64> {
        let mut h = self.epoch_history()?;
        let last = h.last().map_or(0, |e| e.epoch).max(self.epoch());
        if epoch <= last {
            return Err(StoreError::StaleEpoch {
                id: self.tail_position(),
                epoch,
                current: last,
            });
        }
        let start = self.tail_position();
        h.retain(|e| e.start < start);
        h.push(EpochEntry { epoch, start });
        save(self.dir(), &h)?;
        self.set_epoch(epoch);
        Ok(start)
    }

    /// Records, before a replicated run is written, the epochs that begin
    /// in it (`(epoch, first position)` in log order), and refuses a run
    /// that goes back to an older epoch than the log already holds.
    pub(crate) fn record_replicated_epochs(&self, run: &[(u32, u64)]) -> Result<()> {
        let known = self.epoch();
        let mut current = known;
        let mut new = Vec::new();
        for &(epoch, id) in run {
            if epoch < current {
                return Err(StoreError::StaleEpoch { id, epoch, current });
            }
            if epoch > current {
                new.push(EpochEntry { epoch, start: id });
                current = epoch;
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let mut h = self.epoch_history()?;
        h.extend(new);
        save(self.dir(), &h)?;
        self.set_epoch(current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u32, start: u64) -> EpochEntry {
        EpochEntry { epoch, start }
    }

    #[test]
    fn identical_histories_agree_up_to_the_shorter_tail() {
        let h = [e(1, 68), e(2, 500)];
        assert_eq!(divergence(&h, 900, &h, 700), 700);
        // A follower ahead of its leader in the same epoch (a leader that
        // lost its tail cannot happen, but the answer stays safe).
        assert_eq!(divergence(&h, 600, &h, 700), 600);
    }

    #[test]
    fn a_follower_cuts_where_a_newer_leader_epoch_began() {
        // The old leader wrote 300..450 in epoch 1 after the new leader's
        // epoch 2 began at 300.
        let leader = [e(1, 68), e(2, 300)];
        let old = [e(1, 68)];
        assert_eq!(divergence(&leader, 1000, &old, 450), 300);
    }

    #[test]
    fn an_epoch_only_the_follower_knows_is_cut_back_to_a_shared_one() {
        // KIP-279's case: the follower's epoch 3 is unknown to the leader,
        // whose epoch 2 the follower never saw.
        let leader = [e(1, 68), e(2, 80), e(4, 200)];
        let follower = [e(1, 68), e(3, 100)];
        assert_eq!(divergence(&leader, 400, &follower, 150), 80);
    }

    #[test]
    fn histories_with_nothing_in_common_keep_nothing() {
        assert_eq!(divergence(&[e(5, 68)], 400, &[e(1, 68)], 300), 68);
        assert_eq!(divergence(&[e(5, 68)], 400, &[], 68), 68);
    }

    #[test]
    fn the_file_round_trips_and_damage_is_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(load(d.path()).expect("missing file").is_empty());
        let h = vec![e(1, 68), e(2, 4096), e(7, 9000)];
        save(d.path(), &h).expect("save");
        assert_eq!(load(d.path()).expect("load"), h);
        let p = d.path().join(EPOCHS_FILE);
        let mut b = std::fs::read(&p).expect("read");
        b[16 + 16 + 9] ^= 1; // a bit of entry 1's start
        std::fs::write(&p, &b).expect("write");
        let err = load(d.path()).expect_err("damaged");
        assert!(err.to_string().contains("entry 1 fails its CRC"), "{err}");
        std::fs::write(&p, &b[..20]).expect("write");
        assert!(load(d.path()).is_err());
    }
}
