//! Replication through a fault-injecting TCP proxy: delay, a connection cut
//! mid-frame, resets, a stall longer than the timeouts, and a full partition.
//! After each fault replication resumes and the secondary catches up; every
//! synchronous wait that returned `Ok` is on the secondary's disk.

mod mp_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mp_support::PATIENCE;
use repliq::replication::sync::{record_end, wait_replicated};
use repliq::replication::{primary, secondary, PrimaryConfig, ReplicationError, SecondaryConfig};
use repliq::store::{Durability, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Forward everything.
    Pass,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Stop forwarding (and reading) until the mode changes.
    Stall,
    /// New connections are accepted and black-holed.
    Partition,
}

struct ProxyState {
    upstream: String,
    mode: Mutex<Mode>,
    /// Bumped to kill every live connection; the flag asks for a reset.
    kill: watch::Sender<(u64, bool)>,
    /// Bytes the primary-to-secondary direction still forwards before it
    /// closes the connection (once).
    cut: Mutex<Option<usize>>,
    accepted: AtomicUsize,
}

#[derive(Clone)]
struct Proxy {
    addr: String,
    st: Arc<ProxyState>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let st = Arc::new(ProxyState {
            upstream: upstream.into(),
            mode: Mutex::new(Mode::Pass),
            kill: watch::channel((0, false)).0,
            cut: Mutex::new(None),
            accepted: AtomicUsize::new(0),
        });
        let st2 = st.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                st2.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(st2.clone(), client));
            }
        });
        Proxy { addr, st }
    }
    fn mode(&self) -> Mode {
        *self.st.mode.lock().unwrap()
    }
    fn set(&self, m: Mode) {
        *self.st.mode.lock().unwrap() = m;
    }
    /// Kills every live connection, abruptly (RST) if `reset`.
    fn kill_all(&self, reset: bool) {
        self.st.kill.send_modify(|(g, r)| {
            *g += 1;
            *r = reset;
        });
    }
    /// Cuts the next primary-to-secondary stream after `n` more bytes.
    fn cut_after(&self, n: usize) {
        *self.st.cut.lock().unwrap() = Some(n);
    }
    fn accepted(&self) -> usize {
        self.st.accepted.load(Ordering::Relaxed)
    }
}

async fn connection(st: Arc<ProxyState>, client: TcpStream) {
    let kill = st.kill.subscribe();
    if *st.mode.lock().unwrap() == Mode::Partition {
        return blackhole(client, kill).await;
    }
    let Ok(up) = TcpStream::connect(&st.upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::spawn(pump(st.clone(), cr, uw, false, kill.clone()));
    tokio::spawn(pump(st, ur, cw, true, kill));
}

/// Reads and discards everything until killed or closed.
async fn blackhole(mut s: TcpStream, mut kill: watch::Receiver<(u64, bool)>) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            _ = kill.changed() => {
                if kill.borrow().1 {
                    let _ = s.set_zero_linger();
                }
                return;
            }
        }
    }
}

/// Copies `rd` to `wr` (`down`: primary to secondary), applying the faults.
async fn pump(
    st: Arc<ProxyState>,
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    down: bool,
    mut kill: watch::Receiver<(u64, bool)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // `biased`: a kill wins over data that is ready at the same moment.
        let n = tokio::select! {
            biased;
            _ = kill.changed() => {
                if kill.borrow().1 {
                    let _ = wr.as_ref().set_zero_linger();
                }
                return;
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        loop {
            let m = *st.mode.lock().unwrap();
            match m {
                Mode::Pass => break,
                // Nothing crosses a partition, even on a connection whose
                // kill has not been seen yet.
                Mode::Partition => return,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Stall => tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = kill.changed() => return,
                },
            }
        }
        let mut chunk = &buf[..n];
        let mut cut_now = false;
        if down {
            let mut cut = st.cut.lock().unwrap();
            if let Some(left) = *cut {
                if n >= left {
                    chunk = &buf[..left];
                    cut_now = true;
                    *cut = None;
                } else {
                    *cut = Some(left - n);
                }
            }
        }
        if wr.write_all(chunk).await.is_err() {
            break;
        }
        if cut_now {
            // A clean close in the middle of a frame.
            break;
        }
    }
    let _ = wr.shutdown().await;
}

// ---------------------------------------------------------------------------
// Primary, secondary through the proxy
// ---------------------------------------------------------------------------

/// The session timeout of both ends, short so that the faults that need a
/// timeout to be noticed (a stall, a partition) are noticed quickly.
const TIMEOUT: Duration = Duration::from_secs(1);

struct Rig {
    _d: tempfile::TempDir,
    p: Store,
    sdir: PathBuf,
    sec: Option<Store>,
    proxy: Proxy,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn rig() -> Rig {
    rig_with_timeout(TIMEOUT).await
}

/// A rig whose primary and secondary give up on a silent peer after `timeout`.
async fn rig_with_timeout(timeout: Duration) -> Rig {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(
        d.path().join("p"),
        &StoreOptions::create()
            .segment_size(1 << 16)
            .capacity(1 << 30)
            .durability(Durability::Batch),
    )
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.min_acks = 1;
    cfg.timeout = timeout;
    cfg.heartbeat = Duration::from_millis(100);
    let cfg = Arc::new(cfg);
    let store = p.clone();
    let serve = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(primary::serve(store.clone(), cfg.clone(), s));
        }
    });
    let proxy = Proxy::start(&addr).await;
    let sdir = d.path().join("s");
    let mut scfg = SecondaryConfig::new("node-b", "orders", &sdir, &proxy.addr);
    scfg.timeout = timeout;
    scfg.backoff_min = Duration::from_millis(20);
    scfg.backoff_max = Duration::from_millis(200);
    let follow = tokio::spawn(secondary::follow(scfg));
    Rig {
        _d: d,
        p,
        sdir,
        sec: None,
        proxy,
        tasks: vec![serve, follow],
    }
}

fn payload(i: u32) -> Vec<u8> {
    i.to_le_bytes().repeat((i % 50) as usize + 1)
}

impl Rig {
    /// The secondary's write position, as on its disk (0 before it exists).
    fn sec_tail(&mut self) -> u64 {
        if self.sec.is_none() {
            self.sec = Store::open(&self.sdir, &StoreOptions::open().skip_recovery()).ok();
        }
        self.sec.as_ref().map_or(0, Store::tail_position)
    }

    /// Appends `n` records, waiting for each to replicate; asserts that an
    /// `Ok` wait means the secondary holds the record. Returns the count of
    /// `Ok`s.
    async fn append_sync(&mut self, from: u32, n: u32, timeout: Duration) -> u32 {
        let mut ok = 0;
        for i in from..from + n {
            let b = payload(i);
            let id = self.p.append(&b).unwrap();
            let end = record_end(&self.p, id, b.len());
            match wait_replicated(&self.p, end, timeout).await {
                Ok(()) => {
                    let t = self.sec_tail();
                    assert!(t >= end, "acknowledged {end} but the secondary holds {t}");
                    ok += 1;
                }
                Err(ReplicationError::Timeout(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        ok
    }

    fn append(&self, from: u32, n: u32) {
        for i in from..from + n {
            self.p.append(&payload(i)).unwrap();
        }
    }

    /// Waits until the secondary holds the primary's whole log, then compares
    /// every record.
    async fn caught_up(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while self.sec_tail() != self.p.tail_position() {
            assert!(
                Instant::now() < deadline,
                "secondary at {} did not reach {} within {PATIENCE:?}",
                self.sec_tail(),
                self.p.tail_position()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        same_records(&self.p, self.sec.as_ref().unwrap());
    }
}

fn same_records(a: &Store, b: &Store) {
    let (mut ta, mut tb) = (a.tailer(), b.tailer());
    let mut n = 0;
    loop {
        let (ra, rb) = (ta.next().unwrap(), tb.next().unwrap());
        match (ra, rb) {
            (None, None) => break,
            (Some(x), Some(y)) => {
                assert_eq!((x.id, &x.payload), (y.id, &y.payload));
                n += 1;
            }
            (x, y) => panic!("logs differ: {x:?} vs {y:?}"),
        }
    }
    assert!(n > 0);
}

// ---------------------------------------------------------------------------
// The faults
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_slows_but_keeps_sync_replication() {
    // A session timeout far above the delay: the session must survive the
    // delay itself, and a loaded machine must not time it out either.
    let mut r = rig_with_timeout(PATIENCE).await;
    assert_eq!(r.append_sync(0, 20, PATIENCE).await, 20);
    r.proxy.set(Mode::Delay(Duration::from_millis(30)));
    let t0 = Instant::now();
    assert_eq!(r.append_sync(20, 10, PATIENCE).await, 10);
    // Each round trip crosses the proxy twice.
    assert!(
        t0.elapsed() >= Duration::from_millis(10 * 60),
        "{:?}",
        t0.elapsed()
    );
    r.append(30, 2000);
    r.proxy.set(Mode::Pass);
    r.caught_up().await;
    assert_eq!(
        r.proxy.accepted(),
        1,
        "a delay alone does not break the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_frame_resumes() {
    let mut r = rig().await;
    assert_eq!(r.append_sync(0, 20, PATIENCE).await, 20);
    for round in 0..3u32 {
        // 1001 bytes: not a frame boundary (frames are multiples of 8).
        r.proxy.cut_after(1001);
        r.append(1000 * (round + 1), 500);
        r.caught_up().await;
        assert_eq!(r.append_sync(100 + round * 10, 5, PATIENCE).await, 5);
    }
    assert!(r.proxy.accepted() >= 4, "{}", r.proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_during_streaming_resume() {
    let mut r = rig().await;
    assert_eq!(r.append_sync(0, 10, PATIENCE).await, 10);
    let writer = {
        let p = r.p.clone();
        std::thread::spawn(move || {
            for i in 0..20_000u32 {
                p.append(&payload(i)).unwrap();
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        r.proxy.kill_all(true);
    }
    writer.join().unwrap();
    r.caught_up().await;
    assert_eq!(r.append_sync(50_000, 5, PATIENCE).await, 5);
    assert!(r.proxy.accepted() >= 2, "{}", r.proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_longer_than_the_timeout_resumes() {
    let mut r = rig().await;
    assert_eq!(r.append_sync(0, 10, PATIENCE).await, 10);
    let sessions_before = r.proxy.accepted();
    r.proxy.set(Mode::Stall);
    // Nothing moves: a sync wait times out, the record stays in the log.
    assert_eq!(r.append_sync(10, 1, Duration::from_millis(300)).await, 0);
    r.append(11, 500);
    // The secondary gives up on the stalled session after its timeout and
    // connects again (through the proxy, which still stalls).
    let deadline = Instant::now() + TIMEOUT + PATIENCE;
    while r.proxy.accepted() <= sessions_before {
        assert!(
            Instant::now() < deadline,
            "the stalled session was not replaced within {:?}",
            TIMEOUT + PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.proxy.mode(), Mode::Stall);
    r.proxy.set(Mode::Pass);
    r.caught_up().await;
    assert_eq!(r.append_sync(600, 5, PATIENCE).await, 5);
    assert!(
        r.proxy.accepted() > sessions_before,
        "the stalled session was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_times_out_sync_waits_then_heals() {
    let mut r = rig().await;
    assert_eq!(r.append_sync(0, 10, PATIENCE).await, 10);
    r.proxy.set(Mode::Partition);
    r.proxy.kill_all(true);
    let b = payload(10);
    let id = r.p.append(&b).unwrap();
    let end = record_end(&r.p, id, b.len());
    let t0 = Instant::now();
    let e = wait_replicated(&r.p, end, Duration::from_millis(500)).await;
    let took = t0.elapsed();
    assert!(matches!(e, Err(ReplicationError::Timeout(_))), "{e:?}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_millis(500) + PATIENCE,
        "a sync wait with a 500 ms timeout returned after {took:?}: it hangs"
    );
    // The record is still in the primary's log, not acknowledged.
    assert!(r.p.tail_position() >= end);
    assert!(r.p.stats().replicated < end);
    let mut t = r.p.tailer();
    t.seek(id).unwrap();
    assert_eq!(t.next().unwrap().unwrap().payload, b);
    // More during the partition, then heal.
    r.append(11, 300);
    tokio::time::sleep(TIMEOUT + Duration::from_millis(300)).await;
    assert!(r.sec_tail() < end, "nothing crosses a partition");
    r.proxy.set(Mode::Pass);
    r.proxy.kill_all(false);
    // The earlier record is now acknowledged.
    wait_replicated(&r.p, end, PATIENCE)
        .await
        .expect("acknowledged once the partition healed");
    r.caught_up().await;
    assert_eq!(r.append_sync(400, 5, PATIENCE).await, 5);
}
