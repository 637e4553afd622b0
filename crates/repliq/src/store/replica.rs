//! Byte-identical copying of the log between stores: the storage half of
//! replication.
//!
//! The primary side lends out runs of committed frames straight from its
//! mapped segments ([`Store::with_committed_frames`]); the secondary side
//! validates such a run completely and then writes it at the same position
//! ([`Store::append_replicated`]), so ids, epochs and bytes are identical on
//! both.

use std::sync::atomic::Ordering::*;

use crate::store::error::{Result, StoreError};
use crate::store::frame::{self, decode_word0};
use crate::store::frame_ops::LogMemory;
use crate::store::layout::*;
use crate::store::{wait, Durability, Store};

/// One replication peer's link, read from its slot in the control file.
///
/// The primary serving the peer (the daemon or an application's in-process
/// engine) writes it; any process may read it, e.g. `repliq stat`.
///
/// ```
/// use repliq::store::{Store, StoreOptions};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
/// let slot = store.peer_slot("node-b")?;
/// store.set_peer_link(slot, true);
/// let links = store.peer_links();
/// assert_eq!((links[0].node.as_str(), links[0].connected, links[0].sessions), ("node-b", true, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer's node name.
    pub node: String,
    /// Position it has acknowledged as durable.
    pub acked: u64,
    /// True while a session with it is established.
    pub connected: bool,
    /// Sessions it has established since the slot was created.
    pub sessions: u64,
    /// Unix time in nanoseconds of its last acknowledgement; 0 if none.
    pub acked_at_unix_ns: u64,
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Store {
    /// Lends `f` the bytes of complete frames starting at `from`, at most
    /// `max` bytes (but at least one frame) and never past the end of
    /// `from`'s segment. Returns `f`'s result and the position after the
    /// run, or `None` if the frame at `from` is not complete yet.
    ///
    /// The slice points into the mapped segment: no copy, no allocation.
    pub fn with_committed_frames<R>(
        &self,
        from: u64,
        max: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<(R, u64)>> {
        let geo = self.geometry();
        let si = geo.segment_of(from);
        let Some(seg) = self.segment(si)? else {
            let low = self.control().low_segment().load(Acquire);
            if si < low {
                return Err(StoreError::NotRetained {
                    id: from,
                    first: geo.first_position(low),
                });
            }
            return Ok(None);
        };
        let start = geo.offset_of(from);
        let mut off = start;
        while off < geo.size() {
            let v = crate::store::frame_ops::view(&*seg, geo, off);
            let Some(aligned) = v.aligned_len() else {
                if let crate::store::frame_ops::FrameView::Corrupt(fault) = v {
                    return Err(StoreError::Corrupt {
                        id: geo.base_of(si) + off,
                        reason: fault.describe().into(),
                    });
                }
                break;
            };
            if off > start && (off + aligned - start) as usize > max {
                break;
            }
            off += aligned;
        }
        if off == start {
            return Ok(None);
        }
        let next = geo.advance(geo.base_of(si) + start, off - start);
        // SAFETY: [start, off) consists of complete frames (each word0 was
        // loaded with acquire ordering above); complete frames are immutable.
        let r = unsafe { seg.read(start, (off - start) as usize, f) };
        Ok(Some((r, next)))
    }

    /// Writes a run of frames copied from a primary at position `pos`, which
    /// must be this store's write position. Every frame is validated first
    /// (header check, bounds, CRC of data frames, nothing pending); on any
    /// fault nothing is written. Returns the new write position.
    ///
    /// Only a secondary's replication receiver calls this; the store should
    /// be read-only to applications ([`Store::set_read_only`]).
    pub fn append_replicated(&self, pos: u64, bytes: &[u8]) -> Result<u64> {
        let geo = self.geometry();
        let ctl = self.control();
        let tail = ctl.tail().load(Acquire);
        if pos != tail {
            return Err(StoreError::InvalidId {
                id: pos,
                reason: format!("replicated run must start at the write position {tail}"),
            });
        }
        let start = geo.offset_of(pos);
        let end = start + bytes.len() as u64;
        if bytes.is_empty() || end > geo.size() || bytes.len() % FRAME_ALIGN as usize != 0 {
            return Err(StoreError::InvalidId {
                id: pos,
                reason: format!("run of {} bytes does not fit its segment", bytes.len()),
            });
        }
        // Validate everything before touching the log.
        let bad = |at: usize, why: &str| StoreError::Corrupt {
            id: pos + at as u64,
            reason: format!("replicated frame rejected: {why}"),
        };
        let mut at = 0usize;
        let mut data_frames = 0u64;
        let mut frames = Vec::new();
        let mut epochs = Vec::new();
        while at < bytes.len() {
            let w0 = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
            let (len, flags) = decode_word0(w0).map_err(|f| bad(at, f.describe()))?;
            let aligned = align_frame(u64::from(len)) as usize;
            if (len as u64) < PADDING_MIN_LEN || at + aligned > bytes.len() {
                return Err(bad(at, "frame length out of bounds"));
            }
            if flags & FLAG_NOT_COMPLETE != 0 {
                return Err(bad(at, "frame not complete"));
            }
            if flags & FLAG_PADDING == 0 {
                if u64::from(len) < FRAME_HEADER_LEN {
                    return Err(bad(at, "frame length out of bounds"));
                }
                let w1 = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or_default());
                let payload = &bytes[at + FRAME_HEADER_LEN as usize..at + len as usize];
                if frame::frame_crc(len, flags, w1 as u32, payload) != (w1 >> 32) as u32 {
                    return Err(bad(at, "payload CRC32C mismatch"));
                }
                if flags & FLAG_METADATA == 0 {
                    data_frames += 1;
                    epochs.push((w1 as u32, pos + at as u64));
                }
            }
            frames.push((at, aligned, w0));
            at += aligned;
        }
        // Fencing: a run from a replaced leader (an older epoch than this
        // log holds) is refused; a newer epoch is recorded before its first
        // record is written.
        self.record_replicated_epochs(&epochs)?;
        let si = geo.segment_of(pos);
        let seg = self.segment(si)?.ok_or_else(|| {
            StoreError::NotFound(crate::store::segment::segment_path(self.dir(), si))
        })?;
        if end == geo.size() {
            // Invariant 5: the next segment exists before padding leads to it.
            self.ensure_next_segment(si + 1)?;
        }
        for &(at, aligned, w0) in &frames {
            let off = start + at as u64;
            // SAFETY: positions at or past the tail are unclaimed, and this
            // store is read-only to local writers; the range lies in the segment.
            unsafe { seg.write(off + 8, &bytes[at + 8..at + aligned]) };
            if seg
                .word0(off)
                .compare_exchange(0, w0, Release, Relaxed)
                .is_err()
            {
                return Err(StoreError::Corrupt {
                    id: pos + at as u64,
                    reason: "a local writer raced the replication receiver".into(),
                });
            }
        }
        let next = geo.advance(pos, bytes.len() as u64);
        ctl.reserved().fetch_add(data_frames, AcqRel);
        ctl.tail().store(next, Release);
        ctl.committed().fetch_max(next, AcqRel);
        wait::notify(ctl.notify_seq(), ctl.waiters());
        if self.config().durability == Durability::Always {
            seg.flush_range(start, end - start)?;
            ctl.flushed().fetch_max(next, AcqRel);
        }
        Ok(next)
    }
}

impl Store {
    /// The replication-peer slot for `node`, created on first use at the
    /// oldest retained position (so retention keeps what the peer still needs).
    pub fn peer_slot(&self, node: &str) -> Result<usize> {
        self.open_slot(
            "replication peer",
            CTL_PEERS_OFF,
            PEER_SLOT_LEN,
            PEER_SLOTS,
            node,
        )
    }

    /// Records that peer `slot` has `position` durable and returns the quorum
    /// watermark: the highest position durable on at least `min_acks` peers.
    pub fn ack_peer(&self, slot: usize, position: u64, min_acks: usize) -> u64 {
        let ctl = self.control();
        let s = ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, slot);
        let before = s.position().fetch_max(position, AcqRel);
        s.acked_at().store(unix_ns(), Release);
        if self.geometry().segment_of(before) < self.geometry().segment_of(position) {
            // The peer passed a segment that local readers may have passed
            // long ago: retention waited for this peer, so run it now rather
            // than at the next local read (which may never come).
            if let Err(e) = self.retain_if_read() {
                tracing::warn!(queue = %self.dir().display(), "retention after an ack failed: {e}");
            }
        }
        let mut acked: Vec<u64> = (0..PEER_SLOTS)
            .map(|i| ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i))
            .filter(|s| s.state().load(Acquire) == SLOT_ACTIVE)
            .map(|s| s.position().load(Acquire))
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let w = match min_acks {
            0 => self.tail_position(),
            k => acked.get(k - 1).copied().unwrap_or(0),
        };
        // Never past what this queue holds, whatever a peer claims.
        let w = w.min(self.tail_position());
        ctl.replicated().fetch_max(w, AcqRel);
        wait::notify(ctl.notify_seq(), ctl.waiters());
        ctl.replicated().load(Acquire)
    }

    /// Marks peer `slot`'s link as connected (counting the session) or
    /// disconnected, for every process reading the queue's statistics.
    pub fn set_peer_link(&self, slot: usize, connected: bool) {
        let s = self.control().slot(CTL_PEERS_OFF, PEER_SLOT_LEN, slot);
        if connected {
            s.count().fetch_add(1, AcqRel);
            s.link().store(LINK_CONNECTED, SeqCst);
        } else {
            s.link().store(LINK_DISCONNECTED, SeqCst);
        }
        s.link_at().store(unix_ns(), Release);
    }

    /// Starts a replication session with peer `node`: its slot (created at
    /// the oldest retained position on first use), marked connected, with
    /// its acknowledged position lowered to `position`, where the session
    /// starts, if that is lower: the peer holds less than it once
    /// acknowledged (it lost its disk, or cut a divergent suffix), so
    /// retention must keep what it needs again. It is never raised here:
    /// only an acknowledgement says what the peer holds durably. Safe against [`Store::expire_peers`] running in
    /// another process: a slot freed between the lookup and the mark is
    /// looked up again. End the session with `set_peer_link(slot, false)`.
    pub fn attach_peer(&self, node: &str, position: u64) -> Result<usize> {
        loop {
            let slot = self.peer_slot(node)?;
            self.set_peer_link(slot, true);
            let s = self.control().slot(CTL_PEERS_OFF, PEER_SLOT_LEN, slot);
            // SeqCst pairs with `expire_peers`: it takes the slot (state
            // BUSY) before it reads the link; this marks the link before it
            // reads the state. One of the two sees the other.
            if s.state().load(SeqCst) == SLOT_ACTIVE && s.name() == node {
                s.position().fetch_min(position, AcqRel);
                return Ok(slot);
            }
        }
    }

    /// Frees the slots of peers disconnected for longer than `idle` (counted
    /// from the later of their last acknowledgement and their last link
    /// change), so that they stop holding segments back from retention and
    /// stop taking one of the [`PEER_SLOTS`]. A connected peer is never
    /// expired. Returns the names freed. A slot never stamped (an older
    /// build's) is stamped now and expires `idle` later.
    pub fn expire_peers(&self, idle: std::time::Duration) -> Result<Vec<String>> {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let now = unix_ns();
        let ctl = self.control();
        let mut freed = Vec::new();
        for i in 0..PEER_SLOTS {
            let s = ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i);
            if s.state().load(Acquire) != SLOT_ACTIVE || s.link().load(SeqCst) == LINK_CONNECTED {
                continue;
            }
            let since = s.acked_at().load(Acquire).max(s.link_at().load(Acquire));
            if since == 0 {
                s.link_at().store(now, Release);
                continue;
            }
            if now.saturating_sub(since) <= idle_ns {
                continue;
            }
            if let Some(name) = self.free_peer_slot(i, false)? {
                freed.push(name);
            }
        }
        if !freed.is_empty() {
            self.retain_if_read()?;
        }
        Ok(freed)
    }

    /// Removes peer `node`'s slot (an operator's `repliq peer-remove`): it
    /// stops holding segments back and frees its slot. Refused while the
    /// peer is connected unless `force`. Returns false if there is no such
    /// peer.
    pub fn remove_peer(&self, node: &str, force: bool) -> Result<bool> {
        let ctl = self.control();
        let found = (0..PEER_SLOTS).find(|&i| {
            let s = ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i);
            s.state().load(Acquire) == SLOT_ACTIVE && s.name() == node
        });
        let Some(i) = found else {
            return Ok(false);
        };
        match self.free_peer_slot(i, force)? {
            Some(_) => {
                self.retain_if_read()?;
                Ok(true)
            }
            None => Err(StoreError::InvalidConfig(format!(
                "peer {node} is connected; stop it first or force the removal"
            ))),
        }
    }

    /// Frees peer slot `i` unless its peer is connected (or `force`), under
    /// the directory lock. Returns the freed name.
    fn free_peer_slot(&self, i: usize, force: bool) -> Result<Option<String>> {
        let _lock = super::dir_lock::DirLock::take(self.dir())?;
        let s = self.control().slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i);
        if s.state()
            .compare_exchange(SLOT_ACTIVE, SLOT_BUSY, SeqCst, Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        if !force && s.link().load(SeqCst) == LINK_CONNECTED {
            s.state().store(SLOT_ACTIVE, SeqCst);
            return Ok(None);
        }
        let name = s.name();
        s.link().store(LINK_UNKNOWN, Release);
        s.acked_at().store(0, Release);
        s.link_at().store(0, Release);
        s.state().store(SLOT_FREE, SeqCst);
        tracing::info!(queue = %self.dir().display(), peer = %name, "replication peer slot freed");
        Ok(Some(name))
    }

    /// Every replication peer's link, as recorded in the control file.
    pub fn peer_links(&self) -> Vec<PeerLink> {
        let ctl = self.control();
        (0..PEER_SLOTS)
            .map(|i| ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i))
            .filter(|s| s.state().load(Acquire) == SLOT_ACTIVE)
            .map(|s| PeerLink {
                node: s.name(),
                acked: s.position().load(Acquire),
                connected: s.link().load(Acquire) == LINK_CONNECTED,
                sessions: s.count().load(Acquire),
                acked_at_unix_ns: s.acked_at().load(Acquire),
            })
            .collect()
    }

    /// Positions acknowledged by each replication peer, by node name.
    pub fn peer_positions(&self) -> Vec<(String, u64)> {
        let ctl = self.control();
        (0..PEER_SLOTS)
            .map(|i| ctl.slot(CTL_PEERS_OFF, PEER_SLOT_LEN, i))
            .filter(|s| s.state().load(Acquire) == SLOT_ACTIVE)
            .map(|s| (s.name(), s.position().load(Acquire)))
            .collect()
    }

    /// Moves an empty replica's log to start at `pos` (the first position of
    /// a segment on the primary, whose older segments are gone).
    pub fn rebase_empty(&self, pos: u64) -> Result<()> {
        let geo = self.geometry();
        let ctl = self.control();
        let tail = ctl.tail().load(Acquire);
        if self.frame_ready(self.first_position(), None) || tail != self.first_position() {
            return Err(StoreError::InvalidId {
                id: pos,
                reason: "only an empty replica can be rebased".into(),
            });
        }
        let si = geo.segment_of(pos);
        if pos != geo.first_position(si) {
            return Err(StoreError::InvalidId {
                id: pos,
                reason: "a replica can only start at the first position of a segment".into(),
            });
        }
        if pos <= tail {
            return Ok(());
        }
        self.ensure_next_segment(si)?;
        let low = ctl.low_segment().load(Acquire);
        for (region, len, n) in [
            (CTL_GROUPS_OFF, GROUP_SLOT_LEN, GROUP_SLOTS),
            (CTL_TAILERS_OFF, TAILER_SLOT_LEN, TAILER_SLOTS),
        ] {
            for i in 0..n {
                let s = ctl.slot(region, len, i);
                if s.state().load(Acquire) == SLOT_ACTIVE {
                    s.position().fetch_max(pos, AcqRel);
                }
            }
        }
        ctl.tail().store(pos, Release);
        ctl.committed().fetch_max(pos, AcqRel);
        ctl.flushed().fetch_max(pos, AcqRel);
        ctl.low_segment().fetch_max(si, AcqRel);
        for k in low..si {
            let _ = std::fs::remove_file(crate::store::segment::segment_path(self.dir(), k));
        }
        Ok(())
    }
}
