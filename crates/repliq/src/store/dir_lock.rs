//! The directory lock: an exclusive `flock` serialising queue creation and
//! slot allocation across processes.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::error::{Result, StoreError};
use super::layout::DIR_LOCK_FILE;

/// Holds the directory lock (an exclusive `flock` on [`DIR_LOCK_FILE`]).
pub(super) struct DirLock(File);

impl DirLock {
    pub(super) fn take(dir: &Path) -> Result<DirLock> {
        let p = dir.join(DIR_LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::NotWritable {
                        path: dir.into(),
                        source: e,
                    }
                }
                _ => StoreError::io(&p, e),
            })?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| StoreError::io(&p, e.into()))?;
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}
