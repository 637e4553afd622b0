//! The lifetime of a process's background work on one queue.
//!
//! A [`Store`](super::Store) may start threads that touch the queue's
//! mappings after the call that started them returned: the prefetch thread
//! (creates and maps the next segment, unmaps retired ones) and the batch
//! flusher. They hold only a weak reference to the handle's state.
//!
//! Invariant: once the last application handle of a process is dropped, no
//! background thread of that process reads or writes the queue's files or
//! mappings again. Dropping the handle waits for a job in progress to finish
//! and every later job is skipped. Without this, another process could
//! legitimately change the files after the user closed the queue (repair,
//! `rm`, a test damaging them) and this process would take a `SIGBUS` on a
//! page that no longer exists.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use super::control::Control;

/// Shared between a process's application handles and its background threads.
#[derive(Debug, Default)]
pub(crate) struct Background {
    closed: AtomicBool,
    busy: Mutex<()>,
}

impl Background {
    /// Starts one job of background work: `None` once the queue is closed
    /// in this process. The job must end before the guard is dropped.
    pub(crate) fn enter(&self) -> Option<MutexGuard<'_, ()>> {
        let g = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        (!self.closed.load(SeqCst)).then_some(g)
    }

    /// Whether the last application handle is gone: a job in progress
    /// should stop waiting on anything and return.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Ends background work: waits for a job in progress, refuses later ones.
    fn close(&self) {
        self.closed.store(true, SeqCst);
        drop(self.busy.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What every application handle of one `Store::open` shares: the shared
/// `flock` marking this process as a user of the queue, and the switch that
/// stops background work when the last handle goes.
///
/// Dropping the last handle of the last process using the queue is a clean
/// close: it clears the in-use mark
/// ([`CTL_LIVE_BOOT_OFF`](super::layout::CTL_LIVE_BOOT_OFF)), so that the next
/// exclusive open runs the full recovery walk rather than the one for a
/// crash.
#[derive(Debug)]
pub(crate) struct AppHandle {
    lock: File,
    bg: Arc<Background>,
    ctl: Arc<Control>,
}

impl AppHandle {
    pub(crate) fn new(lock: File, bg: Arc<Background>, ctl: Arc<Control>) -> AppHandle {
        AppHandle { lock, bg, ctl }
    }
}

impl Drop for AppHandle {
    fn drop(&mut self) {
        // Background work stops before the flock is released (fields drop
        // after this body), so a process that takes the queue exclusively
        // next never races with a thread of ours.
        self.bg.close();
        // The last user, if the exclusive lock can be had. (A failed
        // conversion may drop our shared lock early: we are closing anyway,
        // and the background work has stopped.) An opener that got here
        // first holds its shared lock and keeps us out; one that comes after
        // marks the queue in use again once it holds its shared lock.
        if rustix::fs::flock(
            &self.lock,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_ok()
        {
            super::recovery::mark_closed(&self.ctl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_waits_for_the_job_in_progress_and_refuses_later_ones() {
        let bg = Arc::new(Background::default());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let job = {
            let (bg, done) = (bg.clone(), done.clone());
            std::thread::spawn(move || {
                let g = bg.enter().expect("open before close");
                started_tx.send(()).expect("test alive");
                let _ = finish_rx.recv();
                done.store(true, SeqCst);
                drop(g);
            })
        };
        started_rx.recv().expect("job started");
        let closer = {
            let bg = bg.clone();
            std::thread::spawn(move || bg.close())
        };
        // The closer cannot return while the job runs: release the job and
        // check that the job had finished by the time close returned.
        finish_tx.send(()).expect("job alive");
        closer.join().expect("close");
        assert!(done.load(SeqCst), "close returned before the job ended");
        job.join().expect("job");
        assert!(bg.enter().is_none(), "a job started after close");
    }
}
