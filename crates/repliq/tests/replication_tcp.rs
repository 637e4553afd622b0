//! Primary and secondaries over real TCP on loopback (in one process; the
//! daemon will run them as separate processes).

mod mp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_support::PATIENCE;
use repliq::replication::protocol::{Codec, Hello, Message, PROTOCOL_VERSION};
use repliq::replication::{primary, secondary, PrimaryConfig, ReplicationError, SecondaryConfig};
use repliq::store::{Durability, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(1 << 16)
        .capacity(1 << 30)
        .durability(Durability::Batch)
}

/// A primary serving `store`; `timeout` is how long it waits on a silent
/// peer. Only the test of silent peers needs a short one: elsewhere a long
/// one keeps a loaded machine from dropping a session (sessions are counted).
async fn start_primary(
    store: Store,
    min_acks: usize,
    timeout: Duration,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), ReplicationError>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.min_acks = min_acks;
    cfg.timeout = timeout;
    cfg.heartbeat = Duration::from_millis(100);
    let cfg = Arc::new(cfg);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (store, cfg, tx) = (store.clone(), cfg.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(primary::serve(store, cfg, s).await);
            });
        }
    });
    (addr, rx)
}

fn secondary_cfg(node: &str, dir: &std::path::Path, addr: &str) -> SecondaryConfig {
    let mut c = SecondaryConfig::new(node, "orders", dir, addr);
    // No test here is about a silent primary (see `start_primary`).
    c.timeout = PATIENCE;
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn wait_caught_up(p: &Store, dir: &std::path::Path) -> Store {
    // Catching up may copy a GiB: several times the usual patience.
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        if let Ok(s) = Store::open(dir, &StoreOptions::open().skip_recovery()) {
            if s.tail_position() == p.tail_position() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "secondary {dir:?} not caught up within {:?}",
            3 * PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compares segment files up to the primary's tail segment (the primary may
/// have created the next one ahead of its writers).
fn assert_identical(p: &std::path::Path, s: &std::path::Path) {
    let store = Store::open(p, &StoreOptions::open().skip_recovery()).unwrap();
    let last = store.geometry().segment_of(store.tail_position());
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let index = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok());
        if index.is_some_and(|i| i <= last) {
            let a = std::fs::read(e.path()).unwrap();
            let b = std::fs::read(s.join(&name)).unwrap();
            assert!(a == b, "segment {name} differs");
            n += 1;
        }
    }
    assert!(n > 3, "compared {n} segments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secondaries_follow_live_writes_and_resume_after_a_disconnect() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    let (addr, _sessions) = start_primary(p.clone(), 2, PATIENCE).await;
    let (s1, s2) = (d.path().join("s1"), d.path().join("s2"));
    let f1 = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s1, &addr)));
    let f2 = tokio::spawn(secondary::follow(secondary_cfg("node-c", &s2, &addr)));
    let writer = {
        let p = p.clone();
        std::thread::spawn(move || {
            for i in 0..20_000u32 {
                p.append(&i.to_le_bytes().repeat((i % 40) as usize + 1))
                    .unwrap();
            }
        })
    };
    writer.join().unwrap();
    let r1 = wait_caught_up(&p, &s1).await;
    let r2 = wait_caught_up(&p, &s2).await;
    assert_eq!(r1.depth(), 20_000);
    // Replicas refuse application writes.
    // (The follower holds its own handle read-only; this handle is ours.)
    drop((r1, r2));
    assert_identical(&d.path().join("p"), &s1);
    assert_identical(&d.path().join("p"), &s2);
    // Both acknowledged: the quorum watermark (min_acks = 2) reaches the tail.
    let deadline = Instant::now() + PATIENCE;
    while p.stats().replicated < p.tail_position() {
        assert!(
            Instant::now() < deadline,
            "watermark stuck at {} for {PATIENCE:?}",
            p.stats().replicated
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peers = p.peer_positions();
    assert_eq!(peers.len(), 2, "{peers:?}");
    // The link state every process can read from the control file.
    for l in p.peer_links() {
        assert!(l.connected && l.sessions == 1, "{l:?}");
        assert!(l.acked_at_unix_ns > 0, "{l:?}");
    }

    // Drop one follower mid-stream; write more; start it again: it resumes
    // from its own tail, with no gap and no duplicate (byte identity).
    f1.abort();
    let _ = f1.await;
    let link = |node: &str| p.peer_links().into_iter().find(|l| l.node == node).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while link("node-b").connected {
        assert!(
            Instant::now() < deadline,
            "node-b's link still up {PATIENCE:?} after its follower stopped: {:?}",
            link("node-b")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(link("node-c").connected);
    for i in 0..5_000u32 {
        p.append(&i.to_be_bytes()).unwrap();
    }
    let f1 = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s1, &addr)));
    wait_caught_up(&p, &s1).await;
    let l = link("node-b");
    assert!(l.connected && l.sessions == 2, "{l:?}");
    wait_caught_up(&p, &s2).await;
    assert_identical(&d.path().join("p"), &s1);
    let r1 = Store::open(&s1, &StoreOptions::open().skip_recovery()).unwrap();
    let (mut a, mut b) = (p.tailer(), r1.tailer());
    let mut n = 0;
    while let Some(x) = a.next().unwrap() {
        assert_eq!(Some(x), b.next().unwrap());
        n += 1;
    }
    assert_eq!(n, 25_000);
    f1.abort();
    f2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_disconnected_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    p.append(b"keep me").unwrap();
    let tail = p.tail_position();
    // A short timeout: the primary must drop a silent peer.
    let silence = Duration::from_secs(2);
    let (addr, mut sessions) = start_primary(p.clone(), 1, silence).await;

    // Garbage instead of a hello.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(&[0xff; 64]).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the primary ends a session that sends garbage")
        .unwrap();
    assert!(matches!(r, Err(ReplicationError::Protocol(_))), "{r:?}");

    // A frame truncated mid-way, then silence: the primary times out.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(&[40, 0, 0, 0, 1, b'R']).await.unwrap();
    let r = tokio::time::timeout(silence + PATIENCE, sessions.recv())
        .await
        .expect("the primary ends a silent session once its timeout passed")
        .unwrap();
    assert!(matches!(r, Err(ReplicationError::Timeout(_))), "{r:?}");

    // A well-formed hello for another queue is refused with an Error message.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    Codec::default()
        .encode(
            &Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node: "intruder".into(),
                queue: "payroll".into(),
                queue_id: 0,
                segment_size: 0,
                position: 0,
                epoch: 0,
                history: Vec::new(),
            }),
            &mut buf,
        )
        .unwrap();
    c.write_all(&buf).await.unwrap();
    let mut got = bytes::BytesMut::new();
    let msg = loop {
        if let Some(m) = Codec::default().decode(&mut got).unwrap() {
            break m;
        }
        assert!(
            c.read_buf(&mut got).await.unwrap() > 0,
            "closed without a reason"
        );
    };
    assert!(matches!(msg, Message::Error { code: 2, .. }), "{msg:?}");
    let r = tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the primary ends a session for another queue")
        .unwrap();
    assert!(matches!(r, Err(ReplicationError::Refused(_))), "{r:?}");

    // The primary's queue is untouched and no peer slot was taken.
    assert_eq!(p.tail_position(), tail);
    assert!(p.peer_positions().is_empty());
    assert_eq!(
        p.tailer().next().unwrap().unwrap().payload,
        b"keep me".to_vec()
    );
}

const CHILD_ENTRY: &str = "replication_child_entry";

/// Dispatches a child role; a no-op when run as an ordinary test. The only
/// role, `stuck_writer`, claims a record in `RT_DIR` and blocks inside its
/// fill closure until it is killed.
#[test]
fn replication_child_entry() {
    let Some(role) = mp_support::role() else {
        return;
    };
    let r = match role.as_str() {
        "stuck_writer" => (|| {
            let dir = std::env::var("RT_DIR").map_err(|e| e.to_string())?;
            let s = Store::open(&dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
            s.append_with(64, |b| {
                b.fill(b's');
                mp_support::say("STUCK");
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        })(),
        o => Err(format!("unknown role {o}")),
    };
    mp_support::child_exit(r)
}

/// Issue 14: a writer killed with `kill -9` between claiming and committing
/// leaves a pending frame. Readers turn it into padding once its owner is
/// dead, but when the only reader of a primary is a secondary, nobody did and
/// replication stopped there for good. The sender now applies the readers'
/// rule: the secondary passes the dead frame and receives what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_append_does_not_stop_replication_when_only_a_secondary_reads() {
    let d = tempfile::tempdir().unwrap();
    let pdir = d.path().join("p");
    // Durability `none`: no background flusher waits at the frame either
    // (in `batch` and `always` the flush path resolves it the same way).
    let p = Store::open(&pdir, &opts().durability(Durability::None)).unwrap();
    let (addr, _sessions) = start_primary(p.clone(), 1, PATIENCE).await;
    let sdir = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg("node-b", &sdir, &addr)));
    p.append(b"before").unwrap();
    wait_caught_up(&p, &sdir).await;

    let mut w = mp_support::ChildProc::spawn(
        CHILD_ENTRY,
        "stuck writer",
        "stuck_writer",
        &[("RT_DIR", pdir.to_string_lossy().into_owned())],
    );
    w.expect_line("STUCK", PATIENCE);
    p.append(b"after").unwrap();
    w.kill9();

    let s = wait_caught_up(&p, &sdir).await;
    let mut t = s.tailer();
    let mut got = Vec::new();
    while let Some(r) = t.next().unwrap() {
        got.push(r.payload);
    }
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    f.abort();
}

/// Sends one message on a raw connection and reads the primary's answers
/// until `want` matches one (or the connection closes: `None`).
async fn exchange(
    c: &mut tokio::net::TcpStream,
    send: Option<Message>,
    got: &mut bytes::BytesMut,
    want: impl Fn(&Message) -> bool,
) -> Option<Message> {
    if let Some(m) = send {
        let mut buf = bytes::BytesMut::new();
        Codec::default().encode(&m, &mut buf).unwrap();
        if c.write_all(&buf).await.is_err() {
            return None;
        }
    }
    loop {
        while let Some(m) = Codec::default().decode(got).unwrap() {
            if want(&m) {
                return Some(m);
            }
        }
        match tokio::time::timeout(PATIENCE, c.read_buf(got)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

fn hello_from(node: &str, p: &Store, position: u64) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        queue: "orders".into(),
        queue_id: p.queue_id(),
        segment_size: p.geometry().size(),
        position,
        epoch: 0,
        history: Vec::new(),
    })
}

/// Issue 13, seen from outside: one `Ack` carrying `u64::MAX` used to raise
/// the primary's replicated watermark past its tail for good. An ack beyond
/// what the session sent now ends the session and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_beyond_what_was_sent_ends_the_session_and_moves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    for i in 0..100u32 {
        p.append(&i.to_le_bytes()).unwrap();
    }
    let tail = p.tail_position();
    let (addr, mut sessions) = start_primary(p.clone(), 1, Duration::from_secs(30)).await;

    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut got = bytes::BytesMut::new();
    let first = p.first_position();
    let welcome = exchange(
        &mut c,
        Some(hello_from("forger", &p, first)),
        &mut got,
        |m| matches!(m, Message::Welcome(_)),
    )
    .await;
    assert!(matches!(welcome, Some(Message::Welcome(_))), "{welcome:?}");
    // Every record is streamed; then the forged acknowledgement.
    let _ = exchange(&mut c, None, &mut got, |m| {
        matches!(m, Message::Records { position, bytes } if *position + bytes.len() as u64 >= tail)
    })
    .await;
    let _ = exchange(
        &mut c,
        Some(Message::Ack { position: u64::MAX }),
        &mut got,
        |_| false,
    )
    .await;
    let r = tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the primary ends the session of a forged ack")
        .unwrap();
    assert!(
        matches!(&r, Err(ReplicationError::Refused(why)) if why.contains("beyond")),
        "{r:?}"
    );
    assert!(
        p.stats().replicated <= tail,
        "the watermark {} passed the tail {tail}",
        p.stats().replicated
    );
    assert!(
        p.peer_positions().iter().all(|(_, pos)| *pos <= tail),
        "a peer position passed the tail: {:?}",
        p.peer_positions()
    );
}

/// Issue 13: a `Hello` at a position inside the retained range but in the
/// middle of a frame (or 4 bytes before a segment's end) is refused with
/// code 3 instead of streaming from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_position_that_is_not_a_record_boundary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    // Enough 1000-byte records to fill the first 64 KiB segment and more.
    for _ in 0..100 {
        p.append(&[9u8; 1000]).unwrap();
    }
    let (addr, mut sessions) = start_primary(p.clone(), 1, Duration::from_secs(30)).await;
    let first = p.first_position();
    let seg_end = p.geometry().first_position(1) - 4;
    for (what, pos) in [
        ("mid-frame", first + 8),
        ("unaligned, at a segment's end", seg_end),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut got = bytes::BytesMut::new();
        let msg = exchange(&mut c, Some(hello_from("prober", &p, pos)), &mut got, |m| {
            matches!(m, Message::Error { .. } | Message::Welcome(_))
        })
        .await;
        assert!(
            matches!(&msg, Some(Message::Error { code: 3, .. })),
            "{what} position {pos}: {msg:?}"
        );
        let r = tokio::time::timeout(PATIENCE, sessions.recv())
            .await
            .expect("the primary ends the session")
            .unwrap();
        assert!(
            matches!(r, Err(ReplicationError::Refused(_))),
            "{what}: {r:?}"
        );
    }
    assert!(p.peer_positions().is_empty(), "a refused peer took a slot");
}

/// A fresh secondary joins a primary that already holds 1 GiB and catches up
/// completely, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_secondary_catches_up_from_one_gib() {
    let d = tempfile::tempdir().unwrap();
    let o = StoreOptions::create()
        .segment_size(64 << 20)
        .capacity(1 << 30)
        .durability(Durability::None);
    let p = Store::open(d.path().join("p"), &o).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024 - 64];
    while p.tail_position() < (1u64 << 30) {
        p.append(&chunk).unwrap();
    }
    let (addr, _sessions) = start_primary(p.clone(), 1, PATIENCE).await;
    let s = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s, &addr)));
    let r = wait_caught_up(&p, &s).await;
    assert!(r.tail_position() >= 1 << 30);
    assert_eq!(r.depth(), p.depth());
    drop(r);
    assert_identical(&d.path().join("p"), &s);
    f.abort();
}

/// Acknowledged-only tailers see a record once a secondary holds it, and the
/// primary keeps every segment a secondary still needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_only_tailers_and_retention_follow_the_secondary() {
    let d = tempfile::tempdir().unwrap();
    let o = StoreOptions::create()
        .segment_size(1 << 12)
        .capacity(1 << 20)
        .durability(Durability::None);
    let p = Store::open(d.path().join("p"), &o).unwrap();
    // A secondary that connected once (its slot holds its acked position) and is gone.
    let (addr, _sessions) = start_primary(p.clone(), 1, PATIENCE).await;
    let s = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s, &addr)));
    let id0 = p.append(b"first").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while p.stats().replicated <= id0 {
        assert!(
            Instant::now() < deadline,
            "not acknowledged within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.abort();
    let _ = f.await;
    let acked = p.stats().replicated;
    // Records written while the secondary is away are not acknowledged. The
    // tailer is named, so retention (which also runs when the secondary's
    // acknowledgements pass a segment) keeps what it has not read.
    let mut acked_only = p.named_tailer("acked-only").unwrap();
    acked_only.set_acknowledged_only(true);
    for i in 0..200u32 {
        p.append(&i.to_le_bytes().repeat(32)).unwrap();
    }
    assert_eq!(acked_only.next().unwrap().unwrap().id, id0);
    assert!(
        acked_only.next().unwrap().is_none(),
        "unacknowledged record served"
    );
    // Consumers move on, but the segments the secondary still needs stay.
    let mut c = p.consumer();
    while c.dequeue().unwrap().is_some() {}
    p.retain().unwrap();
    assert!(
        p.first_position() <= acked,
        "retention deleted what the secondary needs"
    );
    assert!(
        p.tail_position() > p.geometry().first_position(3),
        "several segments written"
    );
    // The secondary comes back and catches up; then retention may proceed.
    let f = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s, &addr)));
    wait_caught_up(&p, &s).await;
    let deadline = Instant::now() + PATIENCE;
    while p.stats().replicated < p.tail_position() {
        assert!(
            Instant::now() < deadline,
            "watermark stuck for {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut n = 1;
    while acked_only.next().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 201);
    p.retain().unwrap();
    assert!(
        p.first_position() > acked,
        "retention resumes once the secondary caught up"
    );
    f.abort();
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        })
        .unwrap_or(0)
}

/// Issue 14: a replica's disk stays flat. The primary's consumers move its
/// low watermark; its heartbeats carry it; the replica deletes what the
/// primary deleted once its own named readers have passed it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_deletes_the_segments_its_primary_and_its_own_readers_have_passed() {
    let d = tempfile::tempdir().unwrap();
    let small = StoreOptions::create()
        .segment_size(4096)
        .capacity(1 << 30)
        .durability(Durability::None);
    let p = Store::open(d.path().join("p"), &small).unwrap();
    p.set_role(repliq::store::Role::Primary);
    let (addr, _rx) = start_primary(p.clone(), 1, PATIENCE).await;
    let sdir = d.path().join("s");
    let follower = tokio::spawn(secondary::follow(secondary_cfg("node-b", &sdir, &addr)));
    let payload = [5u8; 200];
    let mut consumer = p.consumer();
    let mut round = |n: usize| {
        for _ in 0..n {
            p.append(&payload).unwrap();
        }
        while consumer.dequeue().unwrap().is_some() {}
    };
    round(2000); // about 100 segments of 4 KiB, all consumed on the primary
                 // The primary deletes what its consumers passed once the secondary has
                 // acknowledged it too: at once if the secondary kept pace, else as its
                 // acknowledgements arrive (retention runs on acks that pass a segment).
    let deadline = Instant::now() + PATIENCE;
    while p.geometry().segment_of(p.first_position()) <= 50 {
        assert!(
            Instant::now() < deadline,
            "the primary still retains from segment {} after {PATIENCE:?}",
            p.geometry().segment_of(p.first_position())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let caught_up = Store::open(&sdir, &StoreOptions::open().skip_recovery())
            .is_ok_and(|s| s.tail_position() == p.tail_position());
        if caught_up && segment_files(&sdir) <= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica kept {} segment files",
            segment_files(&sdir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A named tailer on the replica holds what it has not read yet.
    let s = Store::open(&sdir, &StoreOptions::open().skip_recovery()).unwrap();
    let pin = s.named_tailer("audit").unwrap();
    let pinned = pin.position();
    round(1000);
    let deadline = Instant::now() + PATIENCE;
    while s.tail_position() != p.tail_position() {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a few heartbeats pass, then the pinned records are still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.first_position() <= pinned,
        "retention passed a named tailer"
    );
    assert!(segment_files(&sdir) > 40, "the pinned segments are kept");
    let mut t = s.named_tailer("audit").unwrap();
    assert!(t.next().unwrap().is_some(), "the pinned reader reads on");
    follower.abort();
    let _ = follower.await;
}

/// Issue 13: before its `Hello` a connection is anonymous; a frame header
/// declaring megabytes is refused at once, before anything is reserved for
/// it (a `Hello` is at most 64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_peer_cannot_make_the_primary_reserve_a_large_frame() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        repliq::replication::dispatch::serve_registry(|_, _| None, s).await
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut header = (8u32 << 20).to_le_bytes().to_vec();
    header.push(1); // a Hello, supposedly
    c.write_all(&header).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    match r {
        Err(ReplicationError::Protocol(
            repliq::replication::protocol::ProtocolError::TooLarge { len, max },
        )) => {
            assert_eq!(len, 8 << 20);
            assert_eq!(max, repliq::replication::protocol::HELLO_MAX_FRAME);
        }
        other => panic!("expected TooLarge before the hello, got {other:?}"),
    }
}

/// Issue 13: the read deadline is per message. A peer that feeds a valid
/// `Hello` one byte at a time, each byte well within the timeout, is cut off
/// once the whole message has taken longer than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_fed_a_byte_at_a_time_is_cut_off_at_the_message_deadline() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.timeout = Duration::from_millis(300);
    let cfg = Arc::new(cfg);
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        primary::serve(p, cfg, s).await
    });
    let mut buf = bytes::BytesMut::new();
    Codec::default()
        .encode(
            &Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node: "slow-peer-with-a-long-name".into(),
                queue: "orders".into(),
                queue_id: 0,
                segment_size: 0,
                position: 0,
                epoch: 0,
                history: Vec::new(),
            }),
            &mut buf,
        )
        .unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    // 100 ms per byte: every read is within the 300 ms timeout, the whole
    // hello (over 60 bytes) is not.
    let feeder = tokio::spawn(async move {
        for b in buf.iter() {
            if c.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let r = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(r, Err(ReplicationError::Timeout("hello"))),
        "expected the hello deadline, got {r:?}"
    );
    feeder.abort();
}
