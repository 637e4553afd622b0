//! Segment files: creation with preallocation, validation and mapping.
//!
//! A segment's descriptor is closed as soon as it is mapped, so open file
//! handles do not grow with the number of segments; a mapping is released
//! when the last `Arc<Segment>` referring to it is dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use memmap2::MmapMut;

use crate::store::error::{Result, StoreError};
use crate::store::frame_ops::{Geometry, LogMemory};
use crate::store::layout::*;

/// One mapped segment file.
pub struct Segment {
    index: u64,
    map: MmapMut,
    path: PathBuf,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("index", &self.index)
            .finish()
    }
}

/// Path of segment `index` in `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}{SEGMENT_SUFFIX}"))
}

/// Parses a segment file name into its index.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// Lists the indexes of the segment files in `dir`, sorted.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let e = e.map_err(|e| StoreError::io(dir, e))?;
        if let Some(i) = e.file_name().to_str().and_then(parse_segment_name) {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
            // No fallocate on this filesystem: write the zeros ourselves, so the
            // file is never sparse and a full disk fails here, not in a write.
            let zeros = vec![0u8; 1 << 16];
            let mut off = 0;
            while off < len {
                let n = (len - off).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], off)?;
                off += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates segment `index` if it does not exist yet. Idempotent and safe to
/// race: the file is built under a unique temporary name, preallocated, its
/// header written, and then linked into place; a loser of the race discards
/// its copy.
pub fn create_segment(
    dir: &Path,
    index: u64,
    geo: Geometry,
    queue_id: u64,
    sync: bool,
) -> Result<()> {
    let path = segment_path(dir, index);
    if path.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!(
        "{index:020}{SEGMENT_TMP_SUFFIX}.{}.{}",
        std::process::id(),
        unique()
    ));
    let result = (|| -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        preallocate(&f, geo.size())?;
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        h[SEG_MAGIC_OFF..SEG_MAGIC_OFF + 8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        h[SEG_VERSION_OFF..SEG_VERSION_OFF + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[SEG_HEADER_LEN_OFF..SEG_HEADER_LEN_OFF + 4]
            .copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        h[SEG_INDEX_OFF..SEG_INDEX_OFF + 8].copy_from_slice(&index.to_le_bytes());
        h[SEG_SIZE_OFF..SEG_SIZE_OFF + 8].copy_from_slice(&geo.size().to_le_bytes());
        h[SEG_QUEUE_ID_OFF..SEG_QUEUE_ID_OFF + 8].copy_from_slice(&queue_id.to_le_bytes());
        f.write_all_at(&h, 0)?;
        if sync {
            f.sync_all()?;
        }
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if sync {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| StoreError::io(&path, e))
}

/// Fsyncs the directory `dir`, so that the names created, renamed or
/// unlinked in it survive a power loss (the files' own fsync does not cover
/// their directory entries).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    crate::store::test_hooks::reached(crate::store::test_hooks::Point::DirSync, dir, 0);
    File::open(dir)?.sync_all()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Segment {
    /// Maps segment `index`. `Ok(None)` if the file does not exist.
    pub fn open(dir: &Path, index: u64, geo: Geometry, queue_id: u64) -> Result<Option<Segment>> {
        Self::open_with(dir, index, geo, queue_id, false)
    }

    /// Maps segment `index`, with `populate` also faulting in every page up
    /// front (`MAP_POPULATE`), so that a writer entering it later takes no
    /// page faults for allocation and zeroing.
    pub fn open_with(
        dir: &Path,
        index: u64,
        geo: Geometry,
        queue_id: u64,
        populate: bool,
    ) -> Result<Option<Segment>> {
        let path = segment_path(dir, index);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let first = geo.first_position(index);
        if len != geo.size() {
            return Err(StoreError::Corrupt {
                id: first,
                reason: format!(
                    "segment {} has {len} bytes, expected {} (truncated or foreign)",
                    path.display(),
                    geo.size()
                ),
            });
        }
        let mut mo = memmap2::MmapOptions::new();
        if populate {
            mo.populate();
        }
        // SAFETY: the file has exactly `segment_size` bytes (checked above) and
        // repliq never truncates a live segment, so every mapped page is backed
        // by allocated blocks (segments are preallocated). Shared words are only
        // accessed atomically; payload bytes only as the layout invariants allow.
        let map = unsafe { mo.map_mut(&file) }.map_err(|e| StoreError::io(&path, e))?;
        drop(file);
        let seg = Segment { index, map, path };
        seg.check_header(geo, queue_id)?;
        Ok(Some(seg))
    }

    fn check_header(&self, geo: Geometry, queue_id: u64) -> Result<()> {
        let h = &self.map[..SEGMENT_HEADER_LEN as usize];
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
        let magic = u64_at(SEG_MAGIC_OFF);
        if magic != SEGMENT_MAGIC {
            return Err(StoreError::BadMagic {
                path: self.path.clone(),
                kind: "segment",
                found: magic,
            });
        }
        let v = u32_at(SEG_VERSION_OFF);
        if v != FORMAT_VERSION {
            return Err(StoreError::BadVersion {
                path: self.path.clone(),
                found: v,
            });
        }
        let bad = |what: String| StoreError::Corrupt {
            id: geo.first_position(self.index),
            reason: format!("segment {}: {what}", self.path.display()),
        };
        if u32_at(SEG_HEADER_LEN_OFF) as u64 != SEGMENT_HEADER_LEN {
            return Err(bad("bad header length".into()));
        }
        if u64_at(SEG_INDEX_OFF) != self.index {
            return Err(bad(format!("header says index {}", u64_at(SEG_INDEX_OFF))));
        }
        if u64_at(SEG_SIZE_OFF) != geo.size() {
            return Err(bad(format!("header says size {}", u64_at(SEG_SIZE_OFF))));
        }
        if u64_at(SEG_QUEUE_ID_OFF) != queue_id {
            return Err(bad("belongs to another queue".into()));
        }
        Ok(())
    }

    /// This segment's index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The segment file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Synchronously flushes `[off, off + len)` to disk.
    pub fn flush_range(&self, off: u64, len: u64) -> Result<()> {
        let size = self.map.len() as u64;
        let off = off.min(size);
        let len = len.min(size - off);
        if len == 0 {
            return Ok(());
        }
        let msync = || self.map.flush_range(off as usize, len as usize);
        #[cfg(test)]
        let r = crate::store::test_hooks::around_sync(&self.path, off, len, msync);
        #[cfg(not(test))]
        let r = msync();
        r.map_err(|e| StoreError::io(&self.path, e))
    }

    /// Zeroes `[off, end of segment)`. Only during exclusive recovery.
    pub fn zero_from(&self, off: u64) {
        let size = self.map.len() as u64;
        let mut o = off.min(size);
        while o < size {
            // Words are cleared atomically so concurrent mappings stay well-defined.
            self.word0(o).store(0, std::sync::atomic::Ordering::Release);
            o += 8;
        }
    }
}

impl LogMemory for Segment {
    type W = AtomicU64;

    #[inline]
    fn word0(&self, off: u64) -> &AtomicU64 {
        // Checked in release builds too: a bad offset must never become an
        // access outside the mapping, whatever a corrupt file says.
        assert!(
            off % 8 == 0 && off + 8 <= self.map.len() as u64,
            "word0 at {off} outside the segment"
        );
        // SAFETY: `off` is 8-aligned and in bounds (asserted above); the mapping is page-aligned and
        // lives as long as `self`; shared header words are only used atomically.
        unsafe { &*(self.map.as_ptr().add(off as usize) as *const AtomicU64) }
    }

    #[inline]
    fn word1(&self, off: u64) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 16 <= self.map.len() as u64,
            "word1 at {off} outside the segment"
        );
        // SAFETY: as for word0, one word further (asserted above).
        unsafe { &*(self.map.as_ptr().add(off as usize + 8) as *const AtomicU64) }
    }

    #[inline]
    unsafe fn write(&self, off: u64, src: &[u8]) {
        assert!(
            (off as usize).saturating_add(src.len()) <= self.map.len(),
            "write outside the segment"
        );
        // SAFETY: in bounds (asserted above); the caller owns this range by claim (see trait contract); no
        // other process reads it before the commit's release CAS.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.as_ptr().add(off as usize) as *mut u8,
                src.len(),
            )
        }
    }

    #[inline]
    unsafe fn read<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        assert!(
            (off as usize).saturating_add(len) <= self.map.len(),
            "read outside the segment"
        );
        // SAFETY: in bounds (asserted above); the range is a committed frame (trait contract), immutable
        // from its commit on, inside the mapping that `self` keeps alive.
        f(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off as usize), len) })
    }
}

impl Segment {
    /// A mutable pointer into the payload area of a claimed frame, for
    /// zero-copy writes.
    ///
    /// # Safety
    /// The caller owns `[off, off + len)` through a claim and has not committed it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn claimed_slice(&self, off: u64, len: usize) -> &mut [u8] {
        assert!(
            (off as usize).saturating_add(len) <= self.map.len(),
            "claimed slice outside the segment"
        );
        // SAFETY: in bounds (asserted above); forwarded from the caller: exclusive ownership of the range.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.as_ptr().add(off as usize) as *mut u8, len)
        }
    }
}
