//! Primary and secondaries over real TCP on loopback (in one process; the
//! daemon will run them as separate processes).

use std::sync::Arc;
use std::time::{Duration, Instant};

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

async fn start_primary(
    store: Store,
    min_acks: usize,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), ReplicationError>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.min_acks = min_acks;
    cfg.timeout = Duration::from_secs(2);
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
    c.timeout = Duration::from_secs(2);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn wait_caught_up(p: &Store, dir: &std::path::Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = Store::open(dir, &StoreOptions::open().skip_recovery()) {
            if s.tail_position() == p.tail_position() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "secondary {dir:?} never caught up"
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
    let (addr, _sessions) = start_primary(p.clone(), 2).await;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.stats().replicated < p.tail_position() {
        assert!(
            Instant::now() < deadline,
            "watermark stuck at {}",
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while link("node-b").connected {
        assert!(Instant::now() < deadline, "{:?}", link("node-b"));
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
    let (addr, mut sessions) = start_primary(p.clone(), 1).await;

    // Garbage instead of a hello.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(&[0xff; 64]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), sessions.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(ReplicationError::Protocol(_))), "{r:?}");

    // A frame truncated mid-way, then silence: the primary times out.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(&[40, 0, 0, 0, 1, b'R']).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sessions.recv())
        .await
        .unwrap()
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
    let r = tokio::time::timeout(Duration::from_secs(5), sessions.recv())
        .await
        .unwrap()
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
    let (addr, _sessions) = start_primary(p.clone(), 1).await;
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
    let (addr, _sessions) = start_primary(p.clone(), 1).await;
    let s = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg("node-b", &s, &addr)));
    let id0 = p.append(b"first").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.stats().replicated <= id0 {
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.abort();
    let _ = f.await;
    let acked = p.stats().replicated;
    // Records written while the secondary is away are not acknowledged.
    let mut acked_only = p.tailer();
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.stats().replicated < p.tail_position() {
        assert!(Instant::now() < deadline, "watermark stuck");
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
