//! Three catalogs on loopback TCP with real files: election, replication, fencing,
//! leader loss, restart. Conditions are awaited with generous bounds; speed is never
//! asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use repliq_catalog::{
    Catalog, CatalogConfig, Command, Durability, QueueSettings, Rejection, ReplicationMode,
    Response,
};

const BOUND: Duration = Duration::from_secs(60);

/// Waits until `cond` holds, checking every 50 ms, panicking with `what` after `bound`.
async fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[path = "../../repliq/tests/mp_support/ports.rs"]
mod ports;

/// A free loopback address, its port outside the ephemeral range (an
/// outgoing connection cannot take it between the check and the bind).
fn free_addr() -> String {
    format!("127.0.0.1:{}", ports::free_port())
}

fn configs(root: &Path, snapshot_logs: u64) -> Vec<CatalogConfig> {
    configs_keeping(root, snapshot_logs, 1000)
}

fn configs_keeping(root: &Path, snapshot_logs: u64, kept: u64) -> Vec<CatalogConfig> {
    let names = ["a", "b", "c"];
    let peers: Vec<(String, String)> = names.iter().map(|n| (n.to_string(), free_addr())).collect();
    peers
        .iter()
        .map(|(n, a)| {
            let mut c = CatalogConfig::new(n.clone(), a.clone(), root.join(n), peers.clone());
            c.election_timeout_ms = (300, 600);
            c.heartbeat_ms = 100;
            c.snapshot_logs = snapshot_logs;
            c.logs_kept_after_snapshot = kept;
            c
        })
        .collect()
}

async fn start_all(cfgs: &[CatalogConfig]) -> Vec<Catalog> {
    let mut v = Vec::new();
    for c in cfgs {
        v.push(Catalog::start(c.clone()).await.expect("start"));
    }
    v
}

/// Waits until every node names the same leader, and returns its name.
async fn agreed_leader(nodes: &[&Catalog]) -> String {
    wait_for("an agreed leader", BOUND, || {
        let ls: Vec<Option<String>> = nodes.iter().map(|n| n.metrics().leader).collect();
        ls[0].is_some() && ls.iter().all(|l| *l == ls[0])
    })
    .await;
    nodes[0].metrics().leader.expect("leader")
}

fn settings() -> QueueSettings {
    QueueSettings {
        capacity: 1 << 30,
        segment_size: 1 << 26,
        durability: Durability::Sync,
        mode: ReplicationMode::Sync,
        min_insync: 2,
    }
}

fn create(name: &str) -> Command {
    Command::CreateQueue {
        name: name.into(),
        queue_id: 42,
        replicas: vec!["a".into(), "b".into(), "c".into()],
        leader: Some("a".into()),
        settings: settings(),
        start_pos: 0,
    }
}

fn membership_entries(c: &Catalog) -> usize {
    c.log_store()
        .entries(..)
        .iter()
        .filter(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_fence_epochs() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfgs = configs(root.path(), 1000);
    let nodes = start_all(&cfgs).await;
    let refs: Vec<&Catalog> = nodes.iter().collect();
    let leader = agreed_leader(&refs).await;
    assert_eq!(nodes.iter().filter(|n| n.initialized_here()).count(), 1);
    assert!(
        nodes[0].initialized_here(),
        "the first voter by name initializes"
    );
    assert_eq!(nodes[0].metrics().voters, vec!["a", "b", "c"]);

    let follower = nodes
        .iter()
        .find(|n| n.metrics().leader.as_deref() != Some(n.name()))
        .expect("a follower");
    let _ = &leader;
    let mut rx = nodes[2].subscribe();
    let r = follower.propose(create("q")).await.expect("propose");
    assert!(matches!(r, Response::Queue(ref q) if q.epoch == 1), "{r:?}");
    wait_for("the queue on all nodes", BOUND, || {
        nodes.iter().all(|n| n.state().queues.contains_key("q"))
    })
    .await;
    tokio::time::timeout(BOUND, rx.wait_for(|s| s.queues.contains_key("q")))
        .await
        .expect("subscriber sees the queue in time")
        .expect("watch open");
    wait_for("all members joined", BOUND, || {
        nodes.iter().all(|n| n.state().members.len() == 3)
    })
    .await;

    // Idempotent create; a different one with the same name is refused.
    let again = follower.propose(create("q")).await.expect("propose");
    assert!(matches!(again, Response::Queue(_)), "{again:?}");

    let elect = |e: u32| Command::ElectLeader {
        queue: "q".into(),
        new_leader: "b".into(),
        expected_epoch: e,
        first_id: 500,
        unclean: false,
    };
    let r = follower.propose(elect(7)).await.expect("propose");
    assert_eq!(
        r,
        Response::Rejected(Rejection::StaleEpoch {
            given: 7,
            current: 1
        })
    );
    let r = follower.propose(elect(1)).await.expect("propose");
    let Response::Queue(q) = r else {
        panic!("elect refused: {r:?}")
    };
    assert_eq!(q.epoch, 2);
    assert_eq!(q.leader.as_deref(), Some("b"));
    assert_eq!(q.epoch_history, vec![(1, 0), (2, 500)]);
    // The same CAS again is now stale.
    let r = follower.propose(elect(1)).await.expect("propose");
    assert!(
        matches!(r, Response::Rejected(Rejection::StaleEpoch { .. })),
        "{r:?}"
    );

    let read = follower.read().await.expect("linearizable read");
    assert_eq!(read.queues["q"].epoch, 2);
    wait_for("epoch 2 everywhere", BOUND, || {
        nodes
            .iter()
            .all(|n| n.state().queues.get("q").map(|q| q.epoch) == Some(2))
    })
    .await;

    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_elects_another() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfgs = configs(root.path(), 1000);
    let mut nodes = start_all(&cfgs).await;
    let refs: Vec<&Catalog> = nodes.iter().collect();
    let old = agreed_leader(&refs).await;
    let r = nodes[1].propose(create("before")).await.expect("propose");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");

    let i = nodes
        .iter()
        .position(|n| n.name() == old)
        .expect("leader node");
    nodes.remove(i).shutdown().await.expect("shutdown leader");

    let refs: Vec<&Catalog> = nodes.iter().collect();
    wait_for("a new leader", BOUND, || {
        let ls: Vec<Option<String>> = refs.iter().map(|n| n.metrics().leader).collect();
        ls[0].is_some() && ls[0].as_deref() != Some(old.as_str()) && ls.iter().all(|l| *l == ls[0])
    })
    .await;
    let r = nodes[0]
        .propose(create("after"))
        .await
        .expect("propose after");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");
    wait_for("the new queue on both", BOUND, || {
        nodes.iter().all(|n| n.state().queues.contains_key("after"))
    })
    .await;
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_recovers_state_and_does_not_initialize_again() {
    let root = tempfile::tempdir().expect("tempdir");
    // Small snapshot interval so the restart goes through a snapshot file too.
    let cfgs = configs(root.path(), 3);
    let mut nodes = start_all(&cfgs).await;
    let refs: Vec<&Catalog> = nodes.iter().collect();
    agreed_leader(&refs).await;
    assert!(nodes[0].initialized_here());
    for q in ["q1", "q2", "q3", "q4"] {
        let r = nodes[2].propose(create(q)).await.expect("propose");
        assert!(matches!(r, Response::Queue(_)), "{r:?}");
    }
    wait_for("queues everywhere", BOUND, || {
        nodes.iter().all(|n| n.state().queues.len() == 4)
    })
    .await;

    let a = nodes.remove(0);
    let (id, inc) = (a.node_id(), a.incarnation());
    a.shutdown().await.expect("shutdown a");
    assert!(
        root.path().join("a").join("snapshot").exists(),
        "a snapshot was written"
    );

    let a = Catalog::start(cfgs[0].clone()).await.expect("restart a");
    assert_eq!(
        (a.node_id(), a.incarnation()),
        (id, inc),
        "same identity from the same dir"
    );
    wait_for("a's state recovered", BOUND, || a.state().queues.len() == 4).await;
    assert!(!a.initialized_here(), "a restart never initializes");
    let r = a
        .propose(create("q5"))
        .await
        .expect("propose after restart");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");
    nodes.insert(0, a);
    wait_for("q5 everywhere", BOUND, || {
        nodes.iter().all(|n| n.state().queues.contains_key("q5"))
    })
    .await;
    // Exactly one initial membership in the cluster's history (no second initialize).
    for n in &nodes {
        assert!(
            membership_entries(n) == 1,
            "{} membership entries",
            membership_entries(n)
        );
    }
    assert_eq!(nodes[0].metrics().voters, vec!["a", "b", "c"]);
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_cluster_and_foreign_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let cfg = CatalogConfig::new("solo", addr.clone(), root.path().join("solo"), vec![]);
    let solo = Catalog::start(cfg).await.expect("start");
    wait_for("solo leads", BOUND, || {
        solo.metrics().leader.as_deref() == Some("solo")
    })
    .await;
    assert!(solo.initialized_here());
    let r = solo.propose(create("q")).await.expect("propose");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");
    assert!(solo.read().await.expect("read").queues.contains_key("q"));

    // Another protocol's magic: the server closes the connection.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"RPLQ\x01\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf))
        .await
        .expect("no hang");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // An oversized frame: refused without reading it, connection closed.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"RQCL\x01\x00").await.expect("write");
    s.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
    let n = tokio::time::timeout(BOUND, s.read(&mut buf))
        .await
        .expect("no hang");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // The server still works.
    assert!(solo.read().await.is_ok());
    solo.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_directory_comes_back_under_a_new_identity() {
    let root = tempfile::tempdir().expect("tempdir");
    // Snapshots every 3 entries and no log kept behind them: the new c can only catch
    // up through a snapshot sent over the wire.
    let cfgs = configs_keeping(root.path(), 3, 0);
    let mut nodes = start_all(&cfgs).await;
    let refs: Vec<&Catalog> = nodes.iter().collect();
    agreed_leader(&refs).await;
    for q in ["q1", "q2", "q3", "q4", "q5", "q6"] {
        let r = nodes[0].propose(create(q)).await.expect("propose");
        assert!(matches!(r, Response::Queue(_)), "{r:?}");
    }
    wait_for("the leader purged its log", BOUND, || {
        nodes.iter().any(|n| n.log_store().state().0.is_some())
    })
    .await;
    let c = nodes.remove(2);
    let old = (c.node_id(), c.incarnation());
    c.shutdown().await.expect("shutdown c");
    std::fs::remove_dir_all(root.path().join("c")).expect("lose c's dir");
    let c = Catalog::start(cfgs[2].clone()).await.expect("restart c");
    assert_ne!((c.node_id(), c.incarnation()), old);
    assert!(!c.initialized_here(), "only the first voter initializes");
    wait_for("c rejoined with its new incarnation", BOUND, || {
        nodes[0].state().members.get("c").map(|m| m.incarnation) == Some(c.incarnation())
    })
    .await;
    let new_id = c.node_id();
    nodes.push(c);
    wait_for("c's new id replaces its old one as a voter", BOUND, || {
        nodes.iter().all(|n| {
            let m = n.metrics();
            m.voter_ids.contains(&new_id) && !m.voter_ids.contains(&old.0) && m.voter_ids.len() == 3
        })
    })
    .await;
    assert_eq!(nodes[0].metrics().voters, vec!["a", "b", "c"]);
    let r = nodes[2]
        .propose(create("after"))
        .await
        .expect("propose from new c");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");
    wait_for("the queues on new c", BOUND, || {
        let s = nodes[2].state();
        s.queues.contains_key("after") && s.queues.contains_key("q1")
    })
    .await;
    assert!(
        root.path().join("c").join("snapshot").exists(),
        "new c installed a snapshot"
    );
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
}

/// A node whose first directory was made while its clock was an hour fast
/// (its incarnation from that clock), then lost that directory after the
/// clock was put right: it must still come back under a higher incarnation,
/// or the catalog refuses its `Join` and keeps counting its lost copies (the
/// chaos harness's clock nemesis found this with a lost disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_directory_first_made_under_a_fast_clock_rejoins_under_a_higher_incarnation() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfgs = configs(root.path(), 1000);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let fast = ((now_ms + 3_600_000) << 20) | 0x1234;
    let c_dir = root.path().join("c");
    std::fs::create_dir_all(&c_dir).expect("c's dir");
    repliq_catalog::storage::file::write_atomic(
        &c_dir.join(repliq_catalog::catalog::INCARNATION_FILE),
        &fast,
    )
    .expect("c's first incarnation, from a fast clock");
    let mut nodes = start_all(&cfgs).await;
    assert_eq!(nodes[2].incarnation(), fast);
    let refs: Vec<&Catalog> = nodes.iter().collect();
    agreed_leader(&refs).await;
    wait_for("c joined with its fast-clock incarnation", BOUND, || {
        nodes[0].state().members.get("c").map(|m| m.incarnation) == Some(fast)
    })
    .await;
    let r = nodes[0].propose(create("q1")).await.expect("propose");
    assert!(matches!(r, Response::Queue(_)), "{r:?}");
    let c = nodes.remove(2);
    c.shutdown().await.expect("shutdown c");
    std::fs::remove_dir_all(&c_dir).expect("lose c's dir");
    let c = Catalog::start(cfgs[2].clone()).await.expect("restart c");
    assert!(
        c.incarnation() > fast,
        "the new incarnation {} is not above the former {fast}: the catalog would refuse it",
        c.incarnation()
    );
    wait_for("the catalog accepted c's new incarnation", BOUND, || {
        nodes[0].state().members.get("c").map(|m| m.incarnation) == Some(c.incarnation())
    })
    .await;
    nodes.push(c);
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
}
