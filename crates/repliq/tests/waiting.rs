//! Waiting for data: blocking waits woken by other threads and other
//! processes, timeouts, async waits with many tasks, and no busy thread while
//! waiting.
//!
//! The tests of this file are serialised by a lock, because one of them
//! measures the CPU time of the whole process.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use repliq::store::{Durability, IdleStrategy, Store, StoreOptions};
use repliq::RepliqQueue;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(1 << 16)
        .capacity(1_000_000)
        .durability(Durability::None)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, &opts()).unwrap()
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
            let start = Instant::now();
            let r = t
                .next_wait_with(IdleStrategy::Block, Some(Duration::from_secs(10)), |r| {
                    r.payload.to_vec()
                })
                .unwrap();
            (r, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let appended_at = Instant::now();
    s.append(b"wake up").unwrap();
    let (r, waited) = reader.join().unwrap();
    let latency = appended_at.elapsed();
    assert_eq!(r.as_deref(), Some(&b"wake up"[..]));
    assert!(
        waited >= Duration::from_millis(150),
        "returned before the append: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "woke late: {waited:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
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
    let seq_before = s
        .control()
        .notify_seq()
        .load(std::sync::atomic::Ordering::SeqCst);
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut t = s.tailer();
            let mut got = Vec::new();
            for _ in 0..N {
                got.push(
                    t.next_wait_with(IdleStrategy::Block, Some(Duration::from_secs(10)), |r| {
                        u64::from_le_bytes(r.payload.try_into().unwrap())
                    })
                    .unwrap()
                    .expect("message"),
                );
            }
            got
        })
    };
    for i in 0..N {
        // Long enough for the reader to be asleep in the futex.
        std::thread::sleep(Duration::from_millis(15));
        s.append(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..N).collect::<Vec<_>>());
    let bumps = s
        .control()
        .notify_seq()
        .load(std::sync::atomic::Ordering::SeqCst)
        .wrapping_sub(seq_before);
    assert!(
        u64::from(bumps) >= N / 2,
        "only {bumps} of {N} appends signalled the sleeping reader"
    );
    assert_eq!(
        s.control()
            .waiters()
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
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
            c.dequeue_wait_with(IdleStrategy::Block, None, |r| (r.id, r.payload.to_vec()))
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let id = s.append(b"job").unwrap();
    assert_eq!(reader.join().unwrap(), Some((id, b"job".to_vec())));
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
        assert!(
            e < timeout + Duration::from_secs(1),
            "{idle:?}: returned after {e:?}"
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
                                .dequeue_wait_with(idle, Some(Duration::from_secs(10)), |r| {
                                    r.payload.to_vec()
                                })
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
                                .next_wait_with(idle, Some(Duration::from_secs(10)), |r| {
                                    r.payload.to_vec()
                                })
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

/// Not a test on its own: when re-executed with `CHILD_ENV` set, this is the
/// writer process of `blocked_reader_wakes_when_another_process_appends`.
#[test]
fn child_writer_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5u32 {
        s.append(format!("from child {i}").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn blocked_reader_wakes_when_another_process_appends() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, d.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("re-execute the test binary");
    let mut t = s.tailer();
    let mut c = s.consumer();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < 5 {
        match t
            .next_wait_with(IdleStrategy::Block, Some(Duration::from_secs(20)), |r| {
                r.payload.to_vec()
            })
            .unwrap()
        {
            Some(p) => got.push(String::from_utf8(p).unwrap()),
            None => panic!(
                "no message from the child process after {:?}",
                start.elapsed()
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
            .dequeue_wait_with(IdleStrategy::Block, Some(Duration::from_secs(10)), |r| {
                r.payload.to_vec()
            })
            .unwrap()
            .unwrap();
        assert_eq!(&String::from_utf8(p).unwrap(), w);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child writer failed: {status}");
    // The futex waiter count is back to zero once nobody waits.
    assert_eq!(
        s.control()
            .waiters()
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
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
    let rec = tokio::time::timeout(Duration::from_secs(5), tailer_task)
        .await
        .expect("next_async woke")
        .unwrap()
        .unwrap();
    assert_eq!(rec.id, id);
    let job = tokio::time::timeout(Duration::from_secs(5), deq_task)
        .await
        .expect("dequeue_wait woke")
        .unwrap()
        .unwrap();
    assert_eq!(
        job,
        Job {
            n: 7,
            name: "seven".into()
        }
    );
    // Already available: completes at once.
    q.enqueue_id(&Job {
        n: 8,
        name: "x".into(),
    })
    .unwrap();
    let j = tokio::time::timeout(Duration::from_secs(1), q.dequeue_wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.n, 8);
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
        let p = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("tailer task completed")
            .unwrap()
            .unwrap();
        assert_eq!(p, first);
    }
    let mut seen = HashSet::new();
    for h in dequeuers {
        let v = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("dequeue task completed")
            .unwrap()
            .unwrap();
        assert!(seen.insert(v), "item {v} dequeued twice");
    }
    assert_eq!(seen, (0..50).collect::<HashSet<u32>>());
    assert_eq!(q.try_dequeue().unwrap(), None);
}

#[test]
fn idle_blocked_threads_do_not_spin() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut t = s.tailer();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if t.next_wait_with(
                        IdleStrategy::Block,
                        Some(Duration::from_millis(500)),
                        |_| (),
                    )
                    .unwrap()
                    .is_some()
                    {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let cpu0 = cpu_time();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_time() - cpu0;
    assert!(
        cpu < Duration::from_millis(100),
        "8 blocked readers used {cpu:?}"
    );
    s.append(b"one").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
}
