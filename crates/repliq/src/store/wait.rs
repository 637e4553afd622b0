//! Waiting for data: idle strategies, the shared futex, and async wake-ups.
//!
//! Writers bump the futex word `notify_seq` in the control file only when
//! `waiters` is non-zero, so an append costs one extra load when nobody
//! sleeps. The futex is *shared* (no `FUTEX_PRIVATE_FLAG`): sleepers in any
//! process mapping the queue are woken.

use std::sync::atomic::{fence, AtomicU32, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// How a reader waits when the queue is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleStrategy {
    /// Spin on the next frame's header: lowest latency, burns a core.
    BusySpin,
    /// Spin, yielding the CPU between polls.
    Yield,
    /// Sleep on the shared futex until a writer wakes us.
    #[default]
    Block,
}

impl std::str::FromStr for IdleStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spin" | "busy-spin" => Ok(IdleStrategy::BusySpin),
            "yield" => Ok(IdleStrategy::Yield),
            "block" | "futex" => Ok(IdleStrategy::Block),
            o => Err(format!(
                "unknown idle strategy {o:?} (expected spin, yield or futex)"
            )),
        }
    }
}

/// Wakes every sleeper if there is one. Called by writers after each commit.
#[inline]
pub fn notify(seq: &AtomicU32, waiters: &AtomicU32) {
    if waiters.load(SeqCst) != 0 {
        seq.fetch_add(1, SeqCst);
        let _ = futex::wake(seq, futex::Flags::empty(), i32::MAX as u32);
    }
}

/// Longest single futex sleep; bounds the delay of a missed wake-up and lets
/// readers revisit stuck frames.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Sleeps until `ready()` holds or `deadline` passes. Returns `ready()`'s last value.
pub fn block_until(
    seq: &AtomicU32,
    waiters: &AtomicU32,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    loop {
        if ready() {
            return true;
        }
        let observed = seq.load(SeqCst);
        waiters.fetch_add(1, SeqCst);
        fence(SeqCst);
        if ready() {
            waiters.fetch_sub(1, SeqCst);
            return true;
        }
        let mut sleep = MAX_SLEEP;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                waiters.fetch_sub(1, SeqCst);
                return false;
            }
            sleep = sleep.min(d - now);
        }
        let ts = rustix::time::Timespec {
            tv_sec: sleep.as_secs() as _,
            tv_nsec: sleep.subsec_nanos() as _,
        };
        let _ = futex::wait(seq, futex::Flags::empty(), observed, Some(&ts));
        waiters.fetch_sub(1, SeqCst);
    }
}

/// Wakes tokio (or any executor's) tasks waiting on one queue.
///
/// One thread per queue handle sleeps on the futex while at least one task
/// waits; it holds `waiters` raised for as long as any waker is registered,
/// so writers always signal it. No thread spins.
///
/// After waking the tasks it stays on the futex for one more `MAX_SLEEP`
/// (with `waiters` not raised, so writers do not signal it) before it parks
/// on its condition variable: a task it just woke usually registers again
/// within microseconds, and finds it already on the futex, so registering
/// costs no second thread wake-up (a registration only signals the
/// condition variable when the thread is parked there). The next commit
/// after that registration raises `seq` and wakes it as usual; a commit
/// between its last look and the registration is seen by the task's own
/// re-check after registering (see `ReadyFuture`).
///
/// Dropping it stops and joins the thread, so that the control mapping is
/// not touched after the queue is closed (see `background`).
pub(crate) struct AsyncNotifier {
    shared: Arc<NotifierShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct NotifierShared {
    state: Mutex<Waiting>,
    cv: Condvar,
    seq: *const AtomicU32,
    waiters: *const AtomicU32,
    stop: std::sync::atomic::AtomicBool,
    // Keeps the control mapping alive for the raw pointers above.
    _keep: Arc<dyn Send + Sync>,
}

/// The tasks waiting, and whether the thread is parked on the condition
/// variable (then, and only then, a registration must signal it).
#[derive(Default)]
struct Waiting {
    wakers: Vec<Waker>,
    parked: bool,
}

// SAFETY: the raw pointers point into a mapping kept alive by `_keep` and are
// only used to reach atomics, which are Sync.
unsafe impl Send for NotifierShared {}
// SAFETY: as above.
unsafe impl Sync for NotifierShared {}

impl NotifierShared {
    fn seq(&self) -> &AtomicU32 {
        // SAFETY: valid for the life of `_keep` (see struct comment).
        unsafe { &*self.seq }
    }
    fn waiters(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.waiters }
    }
}

impl AsyncNotifier {
    /// Starts the notifier thread for the futex words `seq` and `waiters`,
    /// which live inside the mapping that `keep` owns.
    pub(crate) fn start(
        seq: &AtomicU32,
        waiters: &AtomicU32,
        keep: Arc<dyn Send + Sync>,
    ) -> std::io::Result<AsyncNotifier> {
        let shared = Arc::new(NotifierShared {
            state: Mutex::new(Waiting::default()),
            cv: Condvar::new(),
            seq,
            waiters,
            stop: Default::default(),
            _keep: keep,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("repliq-notify".into())
            .spawn(move || run(&s))?;
        Ok(AsyncNotifier {
            shared,
            thread: Some(thread),
        })
    }

    /// Registers `w` to be woken at the next commit (or within 50 ms).
    pub(crate) fn register(&self, w: &Waker) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.wakers.is_empty() {
            self.shared.waiters().fetch_add(1, SeqCst);
            if st.parked {
                self.shared.cv.notify_one();
            }
        }
        if !st.wakers.iter().any(|x| x.will_wake(w)) {
            st.wakers.push(w.clone());
        }
        drop(st);
        fence(SeqCst);
    }
}

impl Drop for AsyncNotifier {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Taken and released: the thread is now either before its look at
        // `stop` (and sees it) or waiting on the condition variable.
        drop(self.shared.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.cv.notify_one();
        // Wake the futex wait at once (a spurious wake for any other waiter
        // on the word, which re-checks), then wait for the thread to end.
        let _ = futex::wake(self.shared.seq(), futex::Flags::empty(), i32::MAX as u32);
        if let Some(t) = self.thread.take() {
            if std::thread::current().id() != t.thread().id() {
                let _ = t.join();
            }
        }
    }
}

fn run(s: &NotifierShared) {
    let mut last = s.seq().load(SeqCst);
    // True once a whole futex wait ended with no task to wake: park then.
    let mut idle = false;
    loop {
        {
            let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
            if idle && st.wakers.is_empty() {
                st.parked = true;
                while st.wakers.is_empty() && !s.stop.load(SeqCst) {
                    st = s.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.parked = false;
            }
            if s.stop.load(SeqCst) {
                if !st.wakers.is_empty() {
                    s.waiters().fetch_sub(1, SeqCst);
                    st.wakers.drain(..).for_each(Waker::wake);
                }
                return;
            }
        }
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: MAX_SLEEP.as_nanos() as _,
        };
        let _ = futex::wait(s.seq(), futex::Flags::empty(), last, Some(&ts));
        if s.stop.load(SeqCst) {
            continue; // the top of the loop wakes the remaining wakers and ends
        }
        last = s.seq().load(SeqCst);
        let drained: Vec<Waker> = {
            let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.wakers.is_empty() {
                s.waiters().fetch_sub(1, SeqCst);
            }
            std::mem::take(&mut st.wakers)
        };
        idle = drained.is_empty();
        drained.into_iter().for_each(Waker::wake);
    }
}
