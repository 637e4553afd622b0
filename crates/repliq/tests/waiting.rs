//! Waiting for data: blocking waits woken by other threads and other
//! processes, timeouts, async waits with many tasks, and no busy thread while
//! waiting.
//!
//! The tests of this file are serialised by a lock, because one of them
//! measures the CPU time of the whole process.

mod mp_support;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mp_support::{serial, ChildProc, PATIENCE};
use repliq::store::{Durability, IdleStrategy, Store, StoreOptions};
use repliq::RepliqQueue;

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(1 << 16)
        .capacity(1_000_000)
        .durability(Durability::None)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, &opts()).unwrap()
}

/// Waits until at least `n` readers sleep on the queue's shared futex (the
/// control file's waiter count, which every process sees).
fn wait_for_sleepers(s: &Store, n: u32, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while s.sleeping_readers() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: fewer than {n} readers asleep after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---------------------------------------------------------------------------
// Blocking waits
// ---------------------------------------------------------------------------

#[test]
fn blocked_tailer_wakes_when_another_thread_appends() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut t = s.tailer();
            let r = t
                .next_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| r.payload.to_vec())
                .unwrap();
            (r, Instant::now())
        })
    };
    // Append only once the reader sleeps on the futex.
    wait_for_sleepers(&s, 1, "the tailer blocks on an empty queue");
    let appended_at = Instant::now();
    s.append(b"wake up").unwrap();
    let (r, returned_at) = reader.join().unwrap();
    assert_eq!(
        r.as_deref(),
        Some(&b"wake up"[..]),
        "the sleeping tailer returns the record appended meanwhile, before its {PATIENCE:?} timeout"
    );
    assert!(returned_at >= appended_at, "returned before the append");
}

/// Writers see the sleeper and signal the shared futex: `notify_seq` is bumped
/// for the appends that found the reader asleep (a lost wake-up would leave it
/// untouched and the reader would only get data from its periodic re-check).
#[test]
fn blocked_reader_is_signalled_through_the_futex() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    const N: u64 = 40;
    let seq_before = s.notify_seq();
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut t = s.tailer();
            let mut got = Vec::new();
            for _ in 0..N {
                got.push(
                    t.next_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| {
                        u64::from_le_bytes(r.payload.try_into().unwrap())
                    })
                    .unwrap()
                    .expect("a message within the timeout"),
                );
            }
            got
        })
    };
    for i in 0..N {
        wait_for_sleepers(&s, 1, "the reader sleeps in the futex before each append");
        s.append(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..N).collect::<Vec<_>>());
    let bumps = s.notify_seq().wrapping_sub(seq_before);
    assert!(
        u64::from(bumps) >= N / 2,
        "only {bumps} of {N} appends signalled the sleeping reader"
    );
    assert_eq!(s.sleeping_readers(), 0);
}

#[test]
fn blocked_consumer_wakes_when_another_thread_appends() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut c = s.consumer();
            c.dequeue_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| {
                (r.id, r.payload.to_vec())
            })
            .unwrap()
        })
    };
    wait_for_sleepers(&s, 1, "the consumer blocks on an empty queue");
    let id = s.append(b"job").unwrap();
    assert_eq!(
        reader.join().unwrap(),
        Some((id, b"job".to_vec())),
        "the sleeping consumer takes the record appended meanwhile, before its {PATIENCE:?} timeout"
    );
}

#[test]
fn blocking_wait_times_out_with_none() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut t = s.tailer();
    let mut c = s.consumer();
    for idle in [
        IdleStrategy::Block,
        IdleStrategy::Yield,
        IdleStrategy::BusySpin,
    ] {
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let r = t.next_wait_with(idle, Some(timeout), |_| ()).unwrap();
        let e = start.elapsed();
        assert_eq!(r, None, "{idle:?}");
        assert!(e >= timeout, "{idle:?}: returned after {e:?}");
        // The promise is that a wait returns once its timeout has passed,
        // never that a loaded machine schedules it back promptly.
        assert!(
            e < timeout + PATIENCE,
            "{idle:?}: a wait with a {timeout:?} timeout returned only after {e:?}: it hangs"
        );

        let start = Instant::now();
        let r = c
            .dequeue_wait_with(idle, Some(Duration::from_millis(100)), |_| ())
            .unwrap();
        assert_eq!(r, None);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
    // A zero timeout still returns what is there.
    s.append(b"x").unwrap();
    assert_eq!(
        t.next_wait_with(IdleStrategy::Block, Some(Duration::ZERO), |r| r
            .payload
            .to_vec())
            .unwrap(),
        Some(b"x".to_vec())
    );
}

#[test]
fn spin_and_yield_strategies_receive_from_another_thread() {
    let _g = serial();
    for idle in [IdleStrategy::BusySpin, IdleStrategy::Yield] {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let readers: Vec<_> = (0..2)
            .map(|k| {
                let s = s.clone();
                std::thread::spawn(move || {
                    if k == 0 {
                        let mut c = s.consumer();
                        let mut got = Vec::new();
                        while got.len() < 100 {
                            let r = c
                                .dequeue_wait_with(idle, Some(PATIENCE), |r| r.payload.to_vec())
                                .unwrap()
                                .expect("message within the timeout");
                            got.push(r);
                        }
                        got
                    } else {
                        let mut t = s.tailer();
                        let mut got = Vec::new();
                        while got.len() < 100 {
                            let r = t
                                .next_wait_with(idle, Some(PATIENCE), |r| r.payload.to_vec())
                                .unwrap()
                                .expect("message within the timeout");
                            got.push(r);
                        }
                        got
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let want: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for (i, w) in want.iter().enumerate() {
            s.append(w).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), want, "{idle:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Another process
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "REPLIQ_WAITING_CHILD_DIR";

/// Not a test on its own: when re-executed as a child (see `mp_support`),
/// this is the writer process of
/// `blocked_reader_wakes_when_another_process_appends`.
#[test]
fn child_writer_process() {
    if mp_support::role().is_none() {
        return;
    }
    let r = (|| {
        let dir = std::env::var(CHILD_ENV).map_err(|e| format!("{CHILD_ENV}: {e}"))?;
        let s = Store::open(&dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        // Append only once the parent's reader sleeps, so that this process's
        // appends are what wakes it.
        let deadline = Instant::now() + PATIENCE;
        while s.sleeping_readers() == 0 {
            if Instant::now() > deadline {
                return Err(format!("no reader asleep after {PATIENCE:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..5u32 {
            s.append(format!("from child {i}").as_bytes())
                .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    mp_support::child_exit(r)
}

#[test]
fn blocked_reader_wakes_when_another_process_appends() {
    if mp_support::role().is_some() {
        return;
    }
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut t = s.tailer();
    let mut c = s.consumer();
    // Before the spawn: the child appends at least 300 ms after it starts.
    let start = Instant::now();
    let mut child = ChildProc::spawn(
        "child_writer_process",
        "child writer",
        "writer",
        &[(CHILD_ENV, d.path().to_string_lossy().into_owned())],
    );
    let mut got = Vec::new();
    while got.len() < 5 {
        match t
            .next_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| r.payload.to_vec())
            .unwrap()
        {
            Some(p) => got.push(String::from_utf8(p).unwrap()),
            None => panic!(
                "no message from the child process after {:?}; child {:?}",
                start.elapsed(),
                child.exited()
            ),
        }
    }
    let first_after = start.elapsed();
    let want: Vec<String> = (0..5).map(|i| format!("from child {i}")).collect();
    assert_eq!(got, want);
    assert!(first_after >= Duration::from_millis(250), "{first_after:?}");
    // The consumer, blocked as well, receives the same messages.
    for w in &want {
        let p = c
            .dequeue_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| r.payload.to_vec())
            .unwrap()
            .expect("the consumer takes what the tailer saw");
        assert_eq!(&String::from_utf8(p).unwrap(), w);
    }
    child.wait_ok(PATIENCE);
    // The futex waiter count is back to zero once nobody waits.
    assert_eq!(s.sleeping_readers(), 0);
}

// ---------------------------------------------------------------------------
// Async
// ---------------------------------------------------------------------------

/// A multi-threaded runtime (the tests hold the serialising lock outside it).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Job {
    n: u32,
    name: String,
}

#[test]
fn dequeue_wait_and_next_async_complete_when_another_thread_appends() {
    let _g = serial();
    runtime().block_on(dequeue_wait_and_next_async_complete_when_another_thread_appends_body());
}

async fn dequeue_wait_and_next_async_complete_when_another_thread_appends_body() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("q");
    let q = Arc::new(RepliqQueue::<Job>::with_options(path.to_str().unwrap(), &opts()).unwrap());
    let mut t = q.tailer();
    let tailer_task = tokio::spawn(async move { t.next_async().await });
    let q2 = q.clone();
    let deq_task = tokio::spawn(async move { q2.dequeue_wait().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !tailer_task.is_finished() && !deq_task.is_finished(),
        "completed before any append"
    );
    let writer = {
        let q = q.clone();
        std::thread::spawn(move || {
            q.enqueue_id(&Job {
                n: 7,
                name: "seven".into(),
            })
            .unwrap()
        })
    };
    let id = writer.join().unwrap();
    let rec = tokio::time::timeout(PATIENCE, tailer_task)
        .await
        .expect("next_async woke by the append")
        .unwrap()
        .unwrap();
    assert_eq!(rec.id, id);
    let job = tokio::time::timeout(PATIENCE, deq_task)
        .await
        .expect("dequeue_wait woke by the append")
        .unwrap()
        .unwrap();
    assert_eq!(
        job,
        Job {
            n: 7,
            name: "seven".into()
        }
    );
    // Already available: completes at once, at its first poll.
    q.enqueue_id(&Job {
        n: 8,
        name: "x".into(),
    })
    .unwrap();
    let mut fut = std::pin::pin!(q.dequeue_wait());
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(j) => assert_eq!(j.unwrap().n, 8),
        Poll::Pending => panic!("dequeue_wait with an item available waits"),
    }
}

#[test]
fn fifty_waiting_tasks_complete_and_no_thread_spins_meanwhile() {
    let _g = serial();
    runtime().block_on(fifty_waiting_tasks_complete_and_no_thread_spins_meanwhile_body());
}

async fn fifty_waiting_tasks_complete_and_no_thread_spins_meanwhile_body() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("q");
    let q = Arc::new(RepliqQueue::<u32>::with_options(path.to_str().unwrap(), &opts()).unwrap());
    let store = q.store().clone();

    let mut tailers = Vec::new();
    let mut dequeuers = Vec::new();
    for _ in 0..50 {
        let mut t = store.tailer();
        tailers.push(tokio::spawn(async move {
            t.next_async().await.map(|r| r.payload)
        }));
        let q = q.clone();
        dequeuers.push(tokio::spawn(async move { q.dequeue_wait().await }));
    }
    // Let every task register, then measure while nothing arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_time() - cpu0;
    let wall = wall0.elapsed();
    assert!(
        cpu < Duration::from_millis(100),
        "100 idle waiting tasks used {cpu:?} of CPU in {wall:?}: something spins"
    );
    assert!(tailers.iter().all(|h| !h.is_finished()));
    assert!(dequeuers.iter().all(|h| !h.is_finished()));

    // One writer thread appends 50 items: every tailer sees the first one, and
    // the 50 dequeuers share the 50 items, one each.
    let writer = {
        let q = q.clone();
        std::thread::spawn(move || {
            for i in 0..50u32 {
                q.enqueue_id(&i).unwrap();
            }
        })
    };
    writer.join().unwrap();
    let first = postcard::to_allocvec(&0u32).unwrap();
    for h in tailers {
        let p = tokio::time::timeout(PATIENCE, h)
            .await
            .expect("tailer task completed after the appends")
            .unwrap()
            .unwrap();
        assert_eq!(p, first);
    }
    let mut seen = HashSet::new();
    for h in dequeuers {
        let v = tokio::time::timeout(PATIENCE, h)
            .await
            .expect("dequeue task completed after the appends")
            .unwrap()
            .unwrap();
        assert!(seen.insert(v), "item {v} dequeued twice");
    }
    assert_eq!(seen, (0..50).collect::<HashSet<u32>>());
    assert_eq!(q.try_dequeue().unwrap(), None);
}

/// The async notifier thread stays on the futex for a while after waking its
/// tasks, and parks on a condition variable after that: a task that waits
/// again at once (the notifier still on the futex, so registering does not
/// signal it), and one that waits again only after the notifier parked
/// (registering must signal it), are both woken by the next append from
/// another thread, many times over.
#[test]
fn a_task_waiting_again_at_once_or_after_the_notifier_parked_is_woken_by_the_next_append() {
    let _g = serial();
    runtime().block_on(async {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let mut t = s.tailer();
        // (pause before waiting again, pause before the append)
        let pattern = [(0, 0), (0, 5), (0, 0), (150, 5), (0, 0), (150, 0), (0, 20)];
        for round in 0..3u8 {
            for (i, &(before, after)) in pattern.iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(before)).await;
                let waiting = tokio::spawn(async move {
                    let r = t.next_async().await.map(|r| r.payload);
                    (t, r)
                });
                let s2 = s.clone();
                let tag = [round, i as u8];
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    s2.append(&tag).unwrap()
                });
                let (back, r) = tokio::time::timeout(PATIENCE, waiting)
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "round {round}, step {i}: the waiting task was not woken by the append"
                        )
                    })
                    .unwrap();
                assert_eq!(r.unwrap(), tag, "round {round}, step {i}");
                writer.join().unwrap();
                t = back;
            }
        }
    });
}

#[test]
fn idle_blocked_threads_do_not_spin() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let stop = stop.clone();
            let received = received.clone();
            std::thread::spawn(move || {
                let mut t = s.tailer();
                let mut n = 0;
                while !stop.load(SeqCst) {
                    if t.next_wait_with(
                        IdleStrategy::Block,
                        Some(Duration::from_millis(500)),
                        |_| (),
                    )
                    .unwrap()
                    .is_some()
                    {
                        n += 1;
                        received.fetch_add(1, SeqCst);
                    }
                }
                n
            })
        })
        .collect();
    wait_for_sleepers(&s, 8, "8 readers block on an empty queue");
    let cpu0 = cpu_time();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_time() - cpu0;
    assert!(
        cpu < Duration::from_millis(100),
        "8 blocked readers used {cpu:?}"
    );
    s.append(b"one").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while received.load(SeqCst) < 8 {
        assert!(
            Instant::now() < deadline,
            "{} of 8 blocked readers received the record within {PATIENCE:?}",
            received.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, SeqCst);
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
}
