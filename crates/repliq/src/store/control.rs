//! The control file: configuration and the shared atomic words of a queue.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use memmap2::MmapMut;

use crate::store::error::{Result, StoreError};
use crate::store::layout::*;

/// How hard a queue pushes its writes to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Page cache only: survives a process crash, not a power loss.
    None,
    /// A background flusher msyncs committed data every flush interval.
    #[default]
    Batch,
    /// Every append is msynced before it returns.
    Always,
}

impl Durability {
    pub(crate) fn to_u32(self) -> u32 {
        match self {
            Durability::None => 0,
            Durability::Batch => 1,
            Durability::Always => 2,
        }
    }
    pub(crate) fn from_u32(v: u32) -> Option<Durability> {
        match v {
            0 => Some(Durability::None),
            1 => Some(Durability::Batch),
            2 => Some(Durability::Always),
            _ => None,
        }
    }
    /// The lower-case name used by the CLI and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Batch => "batch",
            Durability::Always => "always",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Durability::None),
            "batch" => Ok(Durability::Batch),
            "always" => Ok(Durability::Always),
            other => Err(format!(
                "unknown durability {other:?} (expected none, batch or always)"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The persistent configuration of a queue, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Messages the default group may hold undequeued.
    pub capacity: u64,
    /// Bytes per segment file; a power of two.
    pub segment_size: u64,
    /// Durability mode.
    pub durability: Durability,
    /// How long readers wait for a stuck writer whose process is alive, in milliseconds.
    pub recovery_timeout_ms: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 1_000_000,
            segment_size: DEFAULT_SEGMENT_SIZE,
            durability: Durability::default(),
            recovery_timeout_ms: 2_000,
        }
    }
}

impl QueueConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(StoreError::InvalidConfig(
                "capacity must be at least 1".into(),
            ));
        }
        if !self.segment_size.is_power_of_two()
            || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size)
        {
            return Err(StoreError::InvalidConfig(format!(
                "segment size {} must be a power of two between {} and {}",
                self.segment_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE
            )));
        }
        if self.recovery_timeout_ms == 0 {
            return Err(StoreError::InvalidConfig(
                "recovery timeout must be at least 1 ms".into(),
            ));
        }
        Ok(())
    }
}

/// The mapped control file of one queue, plus the descriptor it was mapped from.
///
/// Crate-private: its methods hand out the shared words as raw atomics, which
/// only the store may write. Code outside the crate reads them through
/// [`Store`](super::Store)'s typed accessors (for example
/// [`Store::committed_mark`](super::Store::committed_mark)) and [`Store::stats`](super::Store::stats).
pub(crate) struct Control {
    map: MmapMut,
    /// The descriptor the mapping was made from, kept open with it.
    _file: File,
    path: PathBuf,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("path", &self.path).finish()
    }
}

impl Control {
    /// Writes a fresh control file at `path`. The caller holds the directory lock.
    pub(crate) fn create(path: &Path, cfg: &QueueConfig, queue_id: u64) -> Result<()> {
        let tmp = path.with_extension("rq.tmp");
        let mut buf = vec![0u8; CONTROL_SIZE];
        let put64 =
            |b: &mut [u8], off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put64(&mut buf, CTL_MAGIC_OFF, CONTROL_MAGIC);
        put32(&mut buf, CTL_VERSION_OFF, FORMAT_VERSION);
        put32(&mut buf, CTL_SIZE_OFF, CONTROL_SIZE as u32);
        put64(&mut buf, CTL_SEGMENT_SIZE_OFF, cfg.segment_size);
        put64(&mut buf, CTL_CAPACITY_OFF, cfg.capacity);
        put32(&mut buf, CTL_DURABILITY_OFF, cfg.durability.to_u32());
        put32(&mut buf, CTL_RECOVERY_TIMEOUT_OFF, cfg.recovery_timeout_ms);
        put64(&mut buf, CTL_QUEUE_ID_OFF, queue_id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        put64(&mut buf, CTL_CREATED_OFF, now);
        let first = SEGMENT_HEADER_LEN;
        put64(&mut buf, CTL_TAIL_OFF, first);
        put64(&mut buf, CTL_COMMITTED_OFF, first);
        put64(&mut buf, CTL_FLUSHED_OFF, first);
        put32(&mut buf, CTL_EPOCH_OFF, 1);
        // The default consumer group occupies slot 0.
        let g = CTL_GROUPS_OFF;
        put32(&mut buf, g + SLOT_STATE_OFF, SLOT_ACTIVE);
        put32(&mut buf, g + SLOT_NAME_LEN_OFF, DEFAULT_GROUP.len() as u32);
        buf[g + SLOT_NAME_OFF..g + SLOT_NAME_OFF + DEFAULT_GROUP.len()]
            .copy_from_slice(DEFAULT_GROUP.as_bytes());
        put64(&mut buf, g + SLOT_POSITION_OFF, first);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(&buf).map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
        // The rename itself must survive a power loss too.
        if let Some(dir) = path.parent() {
            crate::store::segment::sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        Ok(())
    }

    /// Opens and validates an existing control file.
    pub(crate) fn open(path: &Path) -> Result<Control> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        let mut head = [0u8; 16];
        let n = file
            .read_at(&mut head, 0)
            .map_err(|e| StoreError::io(path, e))?;
        let magic = if n >= 8 {
            u64::from_le_bytes(head[0..8].try_into().unwrap_or_default())
        } else {
            0
        };
        if magic != CONTROL_MAGIC {
            return Err(StoreError::BadMagic {
                path: path.into(),
                kind: "control",
                found: magic,
            });
        }
        let version = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(StoreError::BadVersion {
                path: path.into(),
                found: version,
            });
        }
        if len != CONTROL_SIZE as u64 {
            return Err(StoreError::Corrupt {
                id: 0,
                reason: format!(
                    "control file {} has {len} bytes, expected {CONTROL_SIZE}",
                    path.display()
                ),
            });
        }
        // SAFETY: the file is exactly CONTROL_SIZE bytes (checked above) and is
        // never truncated by repliq while mapped. Other processes change it only
        // through the atomic words documented in `layout`.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| StoreError::io(path, e))?;
        let c = Control {
            map,
            _file: file,
            path: path.into(),
        };
        c.config()?.validate().map_err(|e| StoreError::Corrupt {
            id: 0,
            reason: format!("control file {}: {e}", path.display()),
        })?;
        Ok(c)
    }

    /// The 64-bit atomic at byte offset `off`.
    #[inline]
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= CONTROL_SIZE);
        // SAFETY: in bounds and 8-aligned (asserted; the map is page-aligned);
        // the mapping lives as long as `self`, and all shared access to this
        // word goes through atomics.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// The 32-bit atomic at byte offset `off`.
    #[inline]
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= CONTROL_SIZE);
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The stored configuration.
    pub(crate) fn config(&self) -> Result<QueueConfig> {
        let d = self.u32_at(CTL_DURABILITY_OFF).load(Relaxed);
        let durability = Durability::from_u32(d).ok_or_else(|| StoreError::Corrupt {
            id: 0,
            reason: format!("control file has unknown durability code {d}"),
        })?;
        Ok(QueueConfig {
            capacity: self.u64_at(CTL_CAPACITY_OFF).load(Relaxed),
            segment_size: self.u64_at(CTL_SEGMENT_SIZE_OFF).load(Relaxed),
            durability,
            recovery_timeout_ms: self.u32_at(CTL_RECOVERY_TIMEOUT_OFF).load(Relaxed),
        })
    }

    /// The random id of this queue, stamped in every segment.
    pub(crate) fn queue_id(&self) -> u64 {
        self.u64_at(CTL_QUEUE_ID_OFF).load(Relaxed)
    }

    /// The write position.
    pub(crate) fn tail(&self) -> &AtomicU64 {
        self.u64_at(CTL_TAIL_OFF)
    }

    /// The committed-position hint.
    pub(crate) fn committed(&self) -> &AtomicU64 {
        self.u64_at(CTL_COMMITTED_OFF)
    }

    /// Messages appended or in flight.
    pub(crate) fn reserved(&self) -> &AtomicU64 {
        self.u64_at(CTL_RESERVED_OFF)
    }

    /// Futex word for wake-ups.
    pub(crate) fn notify_seq(&self) -> &AtomicU32 {
        self.u32_at(CTL_NOTIFY_SEQ_OFF)
    }

    /// Number of sleepers.
    pub(crate) fn waiters(&self) -> &AtomicU32 {
        self.u32_at(CTL_WAITERS_OFF)
    }

    /// Current epoch.
    pub(crate) fn epoch(&self) -> &AtomicU32 {
        self.u32_at(CTL_EPOCH_OFF)
    }

    /// Replication role code.
    pub(crate) fn role(&self) -> &AtomicU32 {
        self.u32_at(CTL_ROLE_OFF)
    }

    /// The leader's lease deadline (`CLOCK_MONOTONIC` ns, 0 for none).
    pub(crate) fn lease_until(&self) -> &AtomicU64 {
        self.u64_at(CTL_LEASE_UNTIL_OFF)
    }

    /// Secondary acknowledgements a daemon-replicated synchronous enqueue
    /// waits for (0: none).
    pub(crate) fn sync_acks(&self) -> &AtomicU32 {
        self.u32_at(CTL_SYNC_ACKS_OFF)
    }

    /// Replicated (quorum) watermark.
    pub(crate) fn replicated(&self) -> &AtomicU64 {
        self.u64_at(CTL_REPLICATED_OFF)
    }

    /// Oldest segment on disk.
    pub(crate) fn low_segment(&self) -> &AtomicU64 {
        self.u64_at(CTL_LOW_SEGMENT_OFF)
    }

    /// Stuck frames turned into padding.
    pub(crate) fn unblocked(&self) -> &AtomicU64 {
        self.u64_at(CTL_UNBLOCKED_OFF)
    }

    /// Recoveries run on open.
    pub(crate) fn recoveries(&self) -> &AtomicU64 {
        self.u64_at(CTL_RECOVERIES_OFF)
    }

    /// Position up to which segments were last flushed.
    pub(crate) fn flushed(&self) -> &AtomicU64 {
        self.u64_at(CTL_FLUSHED_OFF)
    }

    /// Highest segment index ever created.
    pub(crate) fn high_segment(&self) -> &AtomicU64 {
        self.u64_at(CTL_HIGH_SEGMENT_OFF)
    }

    /// Truncations of the log so far (odd while one is in progress).
    pub(crate) fn truncations(&self) -> &AtomicU64 {
        self.u64_at(CTL_TRUNCATIONS_OFF)
    }

    /// The position the last truncation cut the log at.
    pub(crate) fn truncated_to(&self) -> &AtomicU64 {
        self.u64_at(CTL_TRUNCATED_TO_OFF)
    }

    /// Records moved to quarantine by truncations, in total.
    pub(crate) fn truncated_records(&self) -> &AtomicU64 {
        self.u64_at(CTL_TRUNCATED_RECORDS_OFF)
    }

    /// Flushes the control file to disk.
    pub(crate) fn flush(&self) -> Result<()> {
        let msync = || self.map.flush();
        #[cfg(test)]
        let r = crate::store::test_hooks::around_sync(&self.path, 0, CONTROL_SIZE as u64, msync);
        #[cfg(not(test))]
        let r = msync();
        r.map_err(|e| StoreError::io(&self.path, e))
    }

    /// The slot at `index` of the region starting at `region`, `len` bytes each.
    pub(crate) fn slot(&self, region: usize, len: usize, index: usize) -> Slot<'_> {
        Slot {
            ctl: self,
            base: region + index * len,
        }
    }
}

/// A named slot of the control file: a consumer group, a named tailer or a peer.
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    ctl: &'a Control,
    base: usize,
}

impl<'a> Slot<'a> {
    /// Slot state word.
    pub(crate) fn state(&self) -> &'a AtomicU32 {
        self.ctl.u32_at(self.base + SLOT_STATE_OFF)
    }
    /// The slot's position word.
    pub(crate) fn position(&self) -> &'a AtomicU64 {
        self.ctl.u64_at(self.base + SLOT_POSITION_OFF)
    }
    /// The slot's counter word.
    pub(crate) fn count(&self) -> &'a AtomicU64 {
        self.ctl.u64_at(self.base + SLOT_COUNT_OFF)
    }
    /// A peer slot's link state word (`LINK_*`).
    pub(crate) fn link(&self) -> &'a AtomicU32 {
        self.ctl.u32_at(self.base + SLOT_LINK_OFF)
    }
    /// A peer slot's time of last acknowledgement (Unix ns).
    pub(crate) fn acked_at(&self) -> &'a AtomicU64 {
        self.ctl.u64_at(self.base + SLOT_ACKED_AT_OFF)
    }
    /// A peer slot's time of its link state's last change (Unix ns).
    pub(crate) fn link_at(&self) -> &'a AtomicU64 {
        self.ctl.u64_at(self.base + SLOT_LINK_AT_OFF)
    }
    /// The slot's name; empty if unreadable.
    pub(crate) fn name(&self) -> String {
        let len = (self.ctl.u32_at(self.base + SLOT_NAME_LEN_OFF).load(Acquire) as usize)
            .min(SLOT_NAME_MAX);
        let mut out = Vec::with_capacity(len);
        for i in 0..len.div_ceil(8) {
            let w = self
                .ctl
                .u64_at(self.base + SLOT_NAME_OFF + i * 8)
                .load(Acquire);
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(len);
        String::from_utf8(out).unwrap_or_default()
    }
    /// Writes the name. Only while the slot is held `SLOT_BUSY` by the caller.
    pub(crate) fn set_name(&self, name: &str) {
        let b = name.as_bytes();
        for i in 0..SLOT_NAME_MAX / 8 {
            let mut w = [0u8; 8];
            let lo = (i * 8).min(b.len());
            let hi = (i * 8 + 8).min(b.len());
            w[..hi - lo].copy_from_slice(&b[lo..hi]);
            self.ctl
                .u64_at(self.base + SLOT_NAME_OFF + i * 8)
                .store(u64::from_le_bytes(w), Release);
        }
        self.ctl
            .u32_at(self.base + SLOT_NAME_LEN_OFF)
            .store(b.len() as u32, Release);
    }
}
