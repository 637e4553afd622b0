//! Test-only pause points inside the store, so a unit test can force a
//! schedule that a busy machine produces only by chance. Compiled only with
//! `cfg(test)`; release builds contain none of it.

use std::path::Path;
use std::sync::{Arc, Mutex};

/// A point in the store's code where a test may pause a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// In `ensure_segment`, after the high-mark check and before the file is
    /// created (the argument is the segment index).
    SegmentCreate,
    /// In `append_frame` (and a batch's `write_span`), after a frame (a
    /// batch's span) is claimed and before its payload is written (the
    /// argument is the frame's position). A hook that sleeps
    /// here plays a slow writer that holds an early frame pending while
    /// later writers commit.
    Claimed,
    /// In `segment::sync_dir`, before the directory is fsynced (the argument
    /// is 0): after a file in it was created, renamed or unlinked.
    DirSync,
    /// In retention, just before a segment file is unlinked (the argument
    /// is the segment index).
    SegmentUnlink,
}

type Hook = Arc<dyn Fn(Point, &Path, u64) + Send + Sync>;

static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Calls the installed hook, if any, on the calling thread. `dir` is the
/// queue directory of the store that reached the point: other unit tests run
/// in parallel in the same process, so a hook acts only on its own queue.
pub(crate) fn reached(point: Point, dir: &Path, arg: u64) {
    let hook = HOOK.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(h) = hook {
        h(point, dir, arg);
    }
}

/// Installs `hook` until the guard is dropped. Tests that install hooks
/// must not run concurrently with each other: they take [`serial`] first.
pub(crate) fn install(hook: impl Fn(Point, &Path, u64) + Send + Sync + 'static) -> Installed {
    *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    Installed
}

/// Removes the hook when dropped, even if the test fails.
pub(crate) struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Serialises the tests that install hooks (the hook is process-wide).
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches every msync of the store's files (segments and control file), for
/// the power-loss simulator. Installed separately from the pause hook.
pub(crate) trait SyncObserver: Send + Sync {
    /// Called just before `file[off, off + len)` is msynced. Returns a ticket
    /// for [`SyncObserver::after`], or `None` to ignore this msync (another
    /// test's queue).
    fn before(&self, file: &Path, off: u64, len: u64) -> Option<u64>;
    /// Called once the msync of `ticket` has returned, `ok` if it succeeded.
    fn after(&self, ticket: u64, ok: bool);
}

static SYNC: Mutex<Option<Arc<dyn SyncObserver>>> = Mutex::new(None);

/// Runs `msync`, the msync of `file[off, off + len)`, between the calls of
/// the installed [`SyncObserver`], if any.
pub(crate) fn around_sync<E>(
    file: &Path,
    off: u64,
    len: u64,
    msync: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    let obs = SYNC.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ticket = obs.as_ref().and_then(|o| o.before(file, off, len));
    let r = msync();
    if let (Some(o), Some(t)) = (obs, ticket) {
        o.after(t, r.is_ok());
    }
    r
}

/// Installs `obs` until the guard is dropped. Tests that install one take
/// [`serial`] first.
pub(crate) fn observe_syncs(obs: Arc<dyn SyncObserver>) -> Observing {
    *SYNC.lock().unwrap_or_else(|p| p.into_inner()) = Some(obs);
    Observing
}

/// Removes the sync observer when dropped.
pub(crate) struct Observing;

impl Drop for Observing {
    fn drop(&mut self) {
        *SYNC.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
