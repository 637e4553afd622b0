//! In-process replication started by `with_replication`: three nodes in one
//! process (distinguished by `with_node_name`), over real TCP on loopback.

mod mp_support;

use std::path::Path;
use std::time::{Duration, Instant};

use mp_support::PATIENCE;
use repliq::replication::inprocess::Role;
use repliq::{QueueError, ReplicatedQueue, ReplicationMode, RepliqQueue};

use mp_support::free_port;

fn node(dir: &Path, name: &str) -> RepliqQueue<String> {
    // Same queue name ("orders") on every node, in its own directory.
    let p = dir.join(name.replace([':', '.'], "_")).join("orders");
    RepliqQueue::<String>::new(p.to_str().unwrap(), 100_000)
        .unwrap()
        .with_node_name(name)
}

struct Cluster {
    p: RepliqQueue<String>,
    s1: Option<RepliqQueue<String>>,
    s2: Option<RepliqQueue<String>>,
}

fn cluster(dir: &Path, mode: ReplicationMode, sync_timeout: Duration) -> Cluster {
    let names: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let secs = vec![names[1].as_str(), names[2].as_str()];
    let mut p = node(dir, &names[0]).with_sync_timeout(sync_timeout);
    p.with_replication(&names[0], secs.clone(), mode).unwrap();
    let mut s1 = node(dir, &names[1]);
    s1.with_replication(&names[0], secs.clone(), mode).unwrap();
    let mut s2 = node(dir, &names[2]);
    s2.with_replication(&names[0], secs, mode).unwrap();
    assert_eq!(p.role(), Some(Role::Primary));
    assert_eq!(s1.role(), Some(Role::Secondary));
    assert_eq!(s2.role(), Some(Role::Secondary));
    Cluster {
        p,
        s1: Some(s1),
        s2: Some(s2),
    }
}

async fn wait_tail(s: &RepliqQueue<String>, tail: u64) {
    let deadline = Instant::now() + PATIENCE;
    while s.store().tail_position() < tail {
        assert!(
            Instant::now() < deadline,
            "secondary not caught up with {tail} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_secondaries_follow_and_refuse_writes() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(
        d.path(),
        ReplicationMode::Asynchronous,
        Duration::from_secs(5),
    );
    for i in 0..200 {
        c.p.enqueue(format!("m{i}")).await.unwrap();
    }
    let tail = c.p.store().tail_position();
    for s in [c.s1.as_ref().unwrap(), c.s2.as_ref().unwrap()] {
        wait_tail(s, tail).await;
        // The secondary sees the items through its own tailer and dequeue.
        let mut t = s.tailer();
        let first = t.next().unwrap().unwrap();
        assert_eq!(postcard_string(&first.payload), "m0");
        for i in 0..200 {
            assert_eq!(s.dequeue().await.unwrap(), Some(format!("m{i}")));
        }
        assert_eq!(s.dequeue().await.unwrap(), None);
        // Appends on a secondary are refused.
        let e = s.enqueue("local".into()).await.unwrap_err();
        assert!(matches!(e, QueueError::Replication(_)), "{e:?}");
        let st = s.replication_status().unwrap();
        assert_eq!(st.role, Role::Secondary);
        assert_eq!(st.connected_to_primary, Some(true));
    }
    // The primary's own consumers are independent of the secondaries'.
    assert_eq!(c.p.dequeue().await.unwrap(), Some("m0".into()));
    let st = c.p.replication_status().unwrap();
    assert!(st.listening.is_some(), "{st:?}");
    assert_eq!(st.secondaries.len(), 2);
    let deadline = Instant::now() + PATIENCE;
    while !c
        .p
        .replication_status()
        .unwrap()
        .secondaries
        .iter()
        .all(|p| p.acked == Some(tail))
    {
        assert!(
            Instant::now() < deadline,
            "both secondaries acknowledge {tail} within {PATIENCE:?}: {:?}",
            c.p.replication_status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = c.p.replication_status().unwrap();
    assert!(st.secondaries.iter().all(|p| p.connected), "{st:?}");
}

fn postcard_string(b: &[u8]) -> String {
    // postcard encodes a String as a varint length and the bytes.
    String::from_utf8(b[1..].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_waits_for_both_secondaries_and_times_out_without_one() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cluster(d.path(), ReplicationMode::Synchronous, PATIENCE);
    // The first waits for the secondaries to connect.
    for i in 0..20 {
        c.p.enqueue(format!("s{i}")).await.unwrap();
        // Ok means both secondaries hold it.
        let tail = c.p.store().tail_position();
        assert!(c.p.store().stats().replicated >= tail);
        for (name, pos) in c.p.store().peer_positions() {
            assert!(pos >= tail, "{name} acked {pos} < {tail}");
        }
        for s in [c.s1.as_ref().unwrap(), c.s2.as_ref().unwrap()] {
            assert!(s.store().tail_position() >= tail);
        }
    }
    // Stop one secondary: sync enqueue fails within the timeout. Dropping its
    // queue aborts its replication tasks, which end at their next await: until
    // the primary has seen that session close, the secondary may still take
    // (and truthfully acknowledge) a record. Wait for the close.
    let gone = c.s2.as_ref().unwrap().replication_status().unwrap().node;
    drop(c.s2.take());
    let deadline = Instant::now() + PATIENCE;
    while c
        .p
        .replication_status()
        .unwrap()
        .secondaries
        .iter()
        .any(|p| p.node == gone && p.connected)
    {
        assert!(
            Instant::now() < deadline,
            "the primary still sees {gone} connected {PATIENCE:?} after its queue was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.p.set_sync_timeout(Duration::from_millis(500));
    let t0 = Instant::now();
    let e = c.p.enqueue("unacked".into()).await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(&e, QueueError::Replication(m) if m.contains("stays in the log")),
        "{e:?}"
    );
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(
        took < Duration::from_millis(500) + PATIENCE,
        "a sync enqueue with a 500 ms timeout returned after {took:?}: it hangs"
    );
    // Every synchronous enqueue, the timed-out one included, is in the
    // queue's shared sync-wait histogram; the timeout lands at >= 256 ms.
    let w = c.p.store().stats().sync_wait;
    assert_eq!(w.count, 21, "{w:?}");
    assert_eq!(w.buckets.iter().map(|b| b.1).sum::<u64>(), 21);
    assert!(w.sum_ns >= 450_000_000, "{w:?}");
    assert!(w.quantile_bound(1.0).unwrap() > 256_000_000, "{w:?}");
    // The record is in the primary's log (and reached the live secondary).
    let mut t = c.p.tailer();
    let mut last = None;
    while let Some(r) = t.next().unwrap() {
        last = Some(postcard_string(&r.payload));
    }
    assert_eq!(last.as_deref(), Some("unacked"));
    wait_tail(c.s1.as_ref().unwrap(), c.p.store().tail_position()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_with_min_acks_one_survives_a_stopped_secondary() {
    let d = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let secs = vec![names[1].as_str(), names[2].as_str()];
    let mode = ReplicationMode::Synchronous;
    let mut p = node(d.path(), &names[0])
        .with_min_acks(1)
        .with_sync_timeout(PATIENCE);
    p.with_replication(&names[0], secs.clone(), mode).unwrap();
    let mut s1 = node(d.path(), &names[1]);
    s1.with_replication(&names[0], secs, mode).unwrap();
    // The second secondary never starts.
    for i in 0..10 {
        p.enqueue(format!("x{i}")).await.unwrap();
        assert!(s1.store().tail_position() >= p.store().tail_position());
    }
}

#[test]
fn unmatched_node_acts_as_primary_and_reports_unreachable_secondaries() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("my_queue");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut q = RepliqQueue::<String>::new(p.to_str().unwrap(), 1024)
            .unwrap()
            .with_node_name("this-host");
        let port = free_port();
        q.with_replication(
            &format!("primary-node:{port}"),
            vec!["secondary-node-1.invalid", "secondary-node-2.invalid"],
            ReplicationMode::Asynchronous,
        )
        .unwrap();
        assert_eq!(q.role(), Some(Role::Unmatched));
        q.enqueue("hello".into()).await.unwrap();
        assert_eq!(q.dequeue().await.unwrap().as_deref(), Some("hello"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let st = q.replication_status().unwrap();
            if st.secondaries.iter().all(|p| p.reachable == Some(false)) {
                assert!(st.secondaries.iter().all(|p| p.last_error.is_some()));
                assert!(st
                    .secondaries
                    .iter()
                    .all(|p| !p.connected && p.acked.is_none()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "both secondaries reported unreachable within {PATIENCE:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The runtime shuts down despite the background tasks (their reconnect
    // loops would run forever); the bound only tells a hang from a slow
    // machine.
    let t0 = Instant::now();
    drop(rt);
    assert!(
        t0.elapsed() < PATIENCE,
        "dropping the runtime took {:?}: the replication tasks hold it",
        t0.elapsed()
    );
}

/// A record of exactly the store's largest payload (bounded by what one
/// replication frame carries, not by the 64 MiB segment) reaches a
/// secondary intact; one byte more is refused with `TooLarge` on the
/// primary, so it can never stall the replication session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_exactly_the_payload_limit_replicates_intact() {
    use repliq::store::layout::MAX_RECORD_PAYLOAD;
    use repliq::store::StoreError;
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), ReplicationMode::Asynchronous, PATIENCE);
    let store = c.p.store();
    assert_eq!(store.max_payload(), MAX_RECORD_PAYLOAD);
    let too_big = vec![0u8; MAX_RECORD_PAYLOAD as usize + 1];
    assert!(
        matches!(store.append(&too_big), Err(StoreError::TooLarge { .. })),
        "one byte over the limit is refused"
    );
    drop(too_big);
    let big: Vec<u8> = (0..MAX_RECORD_PAYLOAD as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    let id = store.append(&big).unwrap();
    let small = store.append(b"after").unwrap();
    let tail = store.tail_position();
    let s1 = c.s1.as_ref().unwrap();
    wait_tail(s1, tail).await;
    let mut t = s1.store().tailer();
    t.seek(id).unwrap();
    let r = t.next().unwrap().expect("the big record on the secondary");
    assert_eq!(r.id, id);
    assert!(r.payload == big, "payload differs on the secondary");
    assert_eq!(t.next().unwrap().expect("the record after it").id, small);
}
