//! Consumer groups across replication (protocol version 3): a follower's
//! groups follow the primary's cursors, never past the follower's own tail
//! and never backwards; a version 2 secondary is still served and never
//! sees a `Groups` frame; a version 3 secondary follows a primary that
//! refuses version 3 by falling back to version 2.

mod mp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mp_support::PATIENCE;
use repliq::replication::protocol::{kind, Codec, Hello, Message, PROTOCOL_VERSION};
use repliq::replication::{primary, secondary, PrimaryConfig, SecondaryConfig};
use repliq::store::{Durability, GroupState, Role, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

const HEARTBEAT: Duration = Duration::from_millis(100);

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(1 << 16)
        .capacity(1 << 30)
        .durability(Durability::Batch)
}

/// A primary serving `store` on a fresh loopback port.
async fn start_primary(store: Store) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.timeout = PATIENCE;
    cfg.heartbeat = HEARTBEAT;
    let cfg = Arc::new(cfg);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (store, cfg) = (store.clone(), cfg.clone());
            tokio::spawn(async move {
                let _ = primary::serve(store, cfg, s).await;
            });
        }
    });
    addr
}

fn secondary_cfg(dir: &std::path::Path, addr: &str) -> SecondaryConfig {
    let mut c = SecondaryConfig::new("node-b", "orders", dir, addr);
    c.timeout = PATIENCE;
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn group(s: &Store, name: &str) -> Option<GroupState> {
    s.groups().into_iter().find(|g| g.name == name)
}

fn fill(p: &Store, n: u32) {
    for i in 0..n {
        p.append(&i.to_le_bytes().repeat(8)).unwrap();
    }
}

/// Watches the replica at `dir` until its group `name` equals the primary's
/// (cursor and count), checking at every look that the replica's cursor is
/// at or below the replica's tail and never lower than at the look before.
async fn watch_until_equal(
    p: &Store,
    dir: &std::path::Path,
    name: &str,
    last: &mut u64,
) -> GroupState {
    let want = group(p, name).expect("the primary has the group");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(s) = Store::open(dir, &StoreOptions::open().skip_recovery()) {
            if let Some(g) = group(&s, name) {
                // Read after the group: the tail only grows.
                let tail = s.tail_position();
                assert!(
                    g.position <= tail,
                    "replica cursor {} beyond its tail {tail}",
                    g.position
                );
                assert!(
                    g.position >= *last,
                    "replica cursor moved back from {} to {}",
                    *last,
                    g.position
                );
                *last = g.position;
                if g == want {
                    return g;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "replica group {name} not at the primary's {want:?} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_groups_reach_the_primarys_cursors_never_past_its_tail_nor_backwards() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    // 3000 records over several segments; "billing" takes 1200 of them,
    // the default group 500, before the secondary exists: the first
    // table it gets is far beyond its (empty) log.
    fill(&p, 3000);
    let mut billing = p.group_consumer("billing").unwrap();
    for _ in 0..1200 {
        assert!(billing.dequeue().unwrap().is_some());
    }
    let mut default = p.consumer();
    for _ in 0..500 {
        assert!(default.dequeue().unwrap().is_some());
    }
    let addr = start_primary(p.clone()).await;
    let sdir = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg(&sdir, &addr)));
    let mut last = 0;
    let g = watch_until_equal(&p, &sdir, "billing", &mut last).await;
    assert_eq!(g.dequeued, 1200);
    let mut last_default = 0;
    let g = watch_until_equal(&p, &sdir, "default", &mut last_default).await;
    assert_eq!(g.dequeued, 500);

    // Live: more records and more dequeues while the session runs; the
    // table follows without new records too (dequeues alone).
    fill(&p, 1000);
    for _ in 0..2000 {
        assert!(billing.dequeue().unwrap().is_some());
    }
    let g = watch_until_equal(&p, &sdir, "billing", &mut last).await;
    assert_eq!(g.dequeued, 3200);
    for _ in 0..700 {
        assert!(billing.dequeue().unwrap().is_some());
    }
    let g = watch_until_equal(&p, &sdir, "billing", &mut last).await;
    assert_eq!(g.dequeued, 3900);
    f.abort();

    // A group of the replica's own, taken over: resuming on the replica
    // starts at the primary's cursor (what a failover does).
    let _ = f.await;
    let s = Store::open(&sdir, &StoreOptions::open()).unwrap();
    let mut c = s.group_consumer("billing").unwrap();
    let r = c.dequeue().unwrap().expect("records left after the cursor");
    assert_eq!(r.id, group(&p, "billing").unwrap().position);
}

#[test]
fn applying_a_table_holds_back_cursors_beyond_the_tail_and_never_moves_one_back() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), &opts()).unwrap();
    fill(&s, 100);
    let tail = s.tail_position();
    let mut c = s.group_consumer("mine").unwrap();
    for _ in 0..50 {
        c.dequeue().unwrap();
    }
    let mine = c.position();
    let table = vec![
        GroupState {
            name: "ahead".into(),
            position: tail + 64,
            dequeued: 101,
        },
        GroupState {
            name: "mine".into(),
            position: s.first_position(),
            dequeued: 1,
        },
        GroupState {
            name: "new".into(),
            position: tail,
            dequeued: 100,
        },
    ];
    let pending = s.apply_replicated_groups(&table);
    // Beyond the tail: neither created nor moved, handed back.
    assert_eq!(pending, vec![table[0].clone()]);
    assert!(group(&s, "ahead").is_none());
    // Behind this replica's own cursor: nothing moves back.
    assert_eq!(
        group(&s, "mine").unwrap(),
        GroupState {
            name: "mine".into(),
            position: mine,
            dequeued: 50
        }
    );
    // New and at the tail: created there.
    assert_eq!(group(&s, "new").unwrap(), table[2]);
}

#[test]
fn a_truncation_moves_a_replicated_cursor_back_to_the_cut_and_the_leaders_table_waits_for_the_records(
) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), &opts()).unwrap();
    let ids: Vec<u64> = (0..20u32)
        .map(|i| s.append(&i.to_le_bytes()).unwrap())
        .collect();
    s.set_role(Role::Secondary);
    let table = vec![GroupState {
        name: "billing".into(),
        position: ids[15],
        dequeued: 15,
    }];
    assert!(s.apply_replicated_groups(&table).is_empty());
    assert_eq!(group(&s, "billing").unwrap().position, ids[15]);
    // Cut back below the replicated cursor: it moves back to the cut, as
    // every reader past it does.
    s.truncate_suffix(ids[10]).unwrap();
    assert_eq!(group(&s, "billing").unwrap().position, ids[10]);
    // The same table again: beyond the new tail, it waits for the records.
    assert_eq!(s.apply_replicated_groups(&table), table);
    assert_eq!(group(&s, "billing").unwrap().position, ids[10]);
    assert_eq!(s.tail_position(), ids[10]);
}

/// Reads frames from `c` into `got` until `stop` holds for one or `until`
/// passes; returns every message read.
async fn read_for(
    c: &mut tokio::net::TcpStream,
    got: &mut BytesMut,
    until: Instant,
    stop: impl Fn(&Message) -> bool,
) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        while let Some(m) = Codec::default().decode(got).unwrap() {
            let done = stop(&m);
            out.push(m);
            if done {
                return out;
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read_buf(got)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return out,
        }
    }
}

async fn raw_session(addr: &str, version: u16) -> (tokio::net::TcpStream, BytesMut) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    Codec::default()
        .encode(
            &Message::Hello(Hello {
                version,
                node: format!("node-v{version}"),
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
    c.write_all(&buf).await.unwrap();
    (c, BytesMut::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_secondary_is_streamed_and_never_sent_groups() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    fill(&p, 500);
    let mut billing = p.group_consumer("billing").unwrap();
    billing.dequeue().unwrap();
    let addr = start_primary(p.clone()).await;
    let tail = p.tail_position();

    // Version 2: a welcome in version 2, every record, heartbeats, and no
    // GROUPS frame over ten heartbeat intervals with the table changing.
    let (mut c, mut got) = raw_session(&addr, 2).await;
    let until = Instant::now() + PATIENCE;
    let mut seen = read_for(&mut c, &mut got, until, |m| {
        matches!(m, Message::Records { position, bytes } if position + bytes.len() as u64 >= tail)
    })
    .await;
    for _ in 0..10 {
        billing.dequeue().unwrap();
        let until = Instant::now() + HEARTBEAT;
        seen.extend(read_for(&mut c, &mut got, until, |_| false).await);
    }
    assert!(
        matches!(&seen[0], Message::Welcome(w) if w.version == 2),
        "{:?}",
        seen[0]
    );
    let streamed = seen.iter().any(
        |m| matches!(m, Message::Records { position, bytes } if position + bytes.len() as u64 >= tail),
    );
    assert!(streamed, "the version 2 secondary was not streamed the log");
    assert!(
        seen.iter().any(|m| matches!(m, Message::Heartbeat(_))),
        "no heartbeat in ten intervals"
    );
    assert!(
        !seen.iter().any(|m| matches!(m, Message::Groups(_))),
        "a version 2 secondary was sent a GROUPS frame (kind {})",
        kind::GROUPS
    );

    // Version 3, same primary: the table follows the welcome at once.
    let (mut c, mut got) = raw_session(&addr, PROTOCOL_VERSION).await;
    let seen = read_for(&mut c, &mut got, Instant::now() + PATIENCE, |m| {
        matches!(m, Message::Groups(_))
    })
    .await;
    assert!(matches!(&seen[0], Message::Welcome(w) if w.version == PROTOCOL_VERSION));
    let Some(Message::Groups(g)) = seen.last() else {
        panic!("no GROUPS frame for a version 3 secondary: {seen:?}")
    };
    assert_eq!(
        g.iter().find(|g| g.name == "billing"),
        group(&p, "billing").as_ref()
    );
}

/// Stands for a primary of the previous release: refuses a version 3
/// `Hello` with error code 1, and passes a version 2 session through to the
/// real primary at `upstream`.
async fn start_v2_only_proxy(upstream: String) -> (String, Arc<std::sync::atomic::AtomicU32>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let refused = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (upstream, r) = (upstream.clone(), r.clone());
            tokio::spawn(async move {
                let mut got = BytesMut::new();
                let Some(Message::Hello(h)) =
                    read_for(&mut s, &mut got, Instant::now() + PATIENCE, |m| {
                        matches!(m, Message::Hello(_))
                    })
                    .await
                    .pop()
                else {
                    return;
                };
                let mut out = BytesMut::new();
                if h.version != 2 {
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let e = Message::Error {
                        code: 1,
                        message: format!("protocol version {} not supported", h.version),
                    };
                    Codec::default().encode(&e, &mut out).unwrap();
                    let _ = s.write_all(&out).await;
                    return;
                }
                let Ok(mut u) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                Codec::default()
                    .encode(&Message::Hello(h), &mut out)
                    .unwrap();
                out.extend_from_slice(&got);
                if u.write_all(&out).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut u).await;
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_secondary_follows_a_primary_that_refuses_version_3() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    fill(&p, 500);
    let upstream = start_primary(p.clone()).await;
    let (addr, refused) = start_v2_only_proxy(upstream).await;
    let sdir = d.path().join("s");
    let f = tokio::spawn(secondary::follow(secondary_cfg(&sdir, &addr)));
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(s) = Store::open(&sdir, &StoreOptions::open().skip_recovery()) {
            if s.tail_position() == p.tail_position() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the secondary never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the secondary never offered version 3"
    );
    f.abort();
}
