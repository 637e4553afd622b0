//! Leader epochs, fencing and truncation (KIP-101 style): a replica whose
//! log parted from its leader's history is cut back to the point where the
//! histories part, keeps what it cut in quarantine, and then holds exactly
//! the leader's records. Store-level tests first, then over real TCP.

mod mp_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_support::PATIENCE;
use repliq::replication::{primary, secondary, PrimaryConfig, ReplicationError, SecondaryConfig};
use repliq::store::epochs::divergence;
use repliq::store::{Durability, Role, Store, StoreError, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(4096)
        .capacity(1 << 20)
        .durability(Durability::Batch)
}

/// Copies every complete frame `from` holds past `to`'s tail into `to`, as
/// the replication receiver does.
fn copy(from: &Store, to: &Store) -> Result<(), StoreError> {
    loop {
        let pos = to.tail_position();
        match from.with_committed_frames(pos, 1 << 20, |b| b.to_vec())? {
            Some((bytes, _)) => {
                to.append_replicated(pos, &bytes)?;
            }
            None => return Ok(()),
        }
    }
}

/// Every record of `s`: (id, epoch, payload).
fn records(s: &Store) -> Vec<(u64, u32, Vec<u8>)> {
    let mut t = s.tailer();
    let mut out = Vec::new();
    while let Some(r) = t.next().expect("read") {
        out.push((r.id, r.epoch, r.payload));
    }
    out
}

/// The records of a quarantine file: (id, epoch, payload).
fn quarantined(path: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let b = std::fs::read(path).expect("read the quarantine file");
    assert_eq!(&b[..8], b"RPLQQUAR", "quarantine magic");
    let n = u64::from_le_bytes(b[40..48].try_into().unwrap()) as usize;
    let mut at = 48;
    let mut out = Vec::new();
    for _ in 0..n {
        let id = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let epoch = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap());
        let len = u32::from_le_bytes(b[at + 12..at + 16].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[at + 16..at + 20].try_into().unwrap());
        let payload = b[at + 24..at + 24 + len].to_vec();
        assert_eq!(crc, crc32c::crc32c(&payload), "quarantined record {id} CRC");
        out.push((id, epoch, payload));
        at += (24 + len).next_multiple_of(8);
    }
    assert_eq!(at, b.len(), "nothing after the last quarantined record");
    out
}

#[test]
fn a_replica_cut_back_to_the_leaders_history_quarantines_its_suffix_and_becomes_identical() {
    let d = tempfile::tempdir().unwrap();
    let leader = Store::open(d.path().join("leader"), &opts()).unwrap();
    let follower = Store::open(
        d.path().join("follower"),
        &opts().queue_id(leader.queue_id()),
    )
    .unwrap();
    follower.set_role(Role::Secondary);
    for i in 0..30 {
        leader
            .append(format!("shared-{i}-{}", "x".repeat(i * 7)).as_bytes())
            .unwrap();
    }
    copy(&leader, &follower).unwrap();
    // The follower, leader of epoch 1 for a while, wrote records nobody copied.
    follower.set_role(Role::Primary);
    for i in 0..20 {
        follower
            .append(format!("orphan-{i}-{}", "y".repeat(i * 11)).as_bytes())
            .unwrap();
    }
    // Meanwhile the other node became leader of epoch 2 and wrote on.
    let epoch2_start = leader.begin_epoch(2).unwrap();
    for i in 0..25 {
        leader
            .append(format!("new-{i}-{}", "z".repeat(i * 5)).as_bytes())
            .unwrap();
    }
    // A reader on the follower in a handle of its own (as another process
    // would be) has read the orphans too.
    let reader_handle = Store::open(d.path().join("follower"), &StoreOptions::open()).unwrap();
    let mut reader = reader_handle.tailer();
    let mut seen_before = 0;
    while reader.next().unwrap().is_some() {
        seen_before += 1;
    }
    assert_eq!(seen_before, 50);

    let cut = divergence(
        &leader.epoch_history().unwrap(),
        leader.tail_position(),
        &follower.epoch_history().unwrap(),
        follower.tail_position(),
    );
    assert_eq!(cut, epoch2_start, "the histories part where epoch 2 began");
    let orphans: Vec<_> = records(&follower).into_iter().skip(30).collect();

    // A leader's log is never truncated.
    assert!(follower.truncate_suffix(cut).is_err());
    follower.set_role(Role::Secondary);
    let t = follower.truncate_suffix(cut).unwrap();
    assert_eq!((t.to, t.records), (cut, 20));
    assert_eq!(follower.tail_position(), cut);
    assert_eq!(follower.truncated_records(), 20);
    let q = t.quarantine.expect("a quarantine file");
    assert!(q.starts_with(d.path().join("follower")));
    assert_eq!(
        quarantined(&q),
        orphans,
        "the quarantine holds exactly the cut records"
    );

    copy(&leader, &follower).unwrap();
    assert_eq!(records(&follower), records(&leader), "byte-identical again");
    assert_eq!(
        follower.epoch_history().unwrap(),
        leader.epoch_history().unwrap()
    );
    assert_eq!(follower.epoch(), 2);

    // The reader stood past the cut: it is moved back to the cut and reads
    // the new history from there, never a torn or stale frame.
    let mut after = Vec::new();
    while let Some(r) = reader.next().unwrap() {
        after.push((r.id, r.epoch, r.payload));
    }
    let expected: Vec<_> = records(&leader).into_iter().skip(30).collect();
    assert_eq!(after, expected);
}

#[test]
fn a_record_from_an_older_epoch_is_refused_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let stale = Store::open(d.path().join("stale"), &opts()).unwrap();
    let follower = Store::open(
        d.path().join("follower"),
        &opts().queue_id(stale.queue_id()),
    )
    .unwrap();
    let newer = Store::open(d.path().join("newer"), &opts().queue_id(stale.queue_id())).unwrap();
    follower.set_role(Role::Secondary);
    newer.begin_epoch(3).unwrap();
    newer.append(b"epoch three").unwrap();
    copy(&newer, &follower).unwrap();
    assert_eq!(follower.epoch(), 3);
    let before = records(&follower);
    // The same position, written by a leader of epoch 1.
    stale.append(b"epoch one").unwrap();
    stale.append(b"epoch one again").unwrap();
    let pos = follower.tail_position();
    let bytes = stale
        .with_committed_frames(pos, 1 << 20, |b| b.to_vec())
        .unwrap()
        .expect("the stale leader has a frame there")
        .0;
    match follower.append_replicated(pos, &bytes) {
        Err(StoreError::StaleEpoch { epoch, current, .. }) => assert_eq!((epoch, current), (1, 3)),
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    assert_eq!(records(&follower), before);
    assert_eq!(follower.tail_position(), pos);
    // And an epoch cannot go back on a leader either.
    assert!(matches!(
        newer.begin_epoch(2),
        Err(StoreError::StaleEpoch { .. })
    ));
}

#[test]
fn an_interrupted_truncation_is_finished_by_the_next_open() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("q");
    let ids: Vec<u64> = {
        let s = Store::open(&dir, &opts()).unwrap();
        let ids = (0..40)
            .map(|i| {
                s.append(format!("r{i}-{}", "p".repeat(i * 9)).as_bytes())
                    .unwrap()
            })
            .collect();
        s.set_role(Role::Secondary);
        // What a process killed right after marking the truncation leaves.
        s.simulate_interrupted_truncation_for_tests(ids_at(&s, 12));
        ids
    };
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    assert_eq!(s.tail_position(), ids[12], "the open finished the cut");
    assert_eq!(s.truncations() % 2, 0);
    let got: Vec<u64> = records(&s).into_iter().map(|r| r.0).collect();
    assert_eq!(got, ids[..12]);
    // Nothing of the cut records is found by recovery or readers later.
    drop(s);
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    assert_eq!(records(&s).len(), 12);
}

fn ids_at(s: &Store, k: usize) -> u64 {
    records(s)[k].0
}

// ---------------------------------------------------------------------------
// Over TCP
// ---------------------------------------------------------------------------

async fn serve(store: Store, node: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = PrimaryConfig::new(node, "orders");
    cfg.timeout = PATIENCE;
    cfg.heartbeat = Duration::from_millis(100);
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

fn follow_cfg(node: &str, dir: &Path, addr: &str) -> SecondaryConfig {
    let mut c = SecondaryConfig::new(node, "orders", dir, addr);
    c.timeout = PATIENCE;
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_that_comes_back_truncates_its_unreplicated_suffix_and_follows() {
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    let a = Store::open(&a_dir, &opts()).unwrap();
    a.set_role(Role::Primary);
    for i in 0..30 {
        a.append(format!("replicated-{i}").as_bytes()).unwrap();
    }
    let a_addr = serve(a.clone(), "node-a").await;
    let follow_a = tokio::spawn(secondary::follow(follow_cfg("node-b", &b_dir, &a_addr)));
    wait_for("node-b caught up with node-a", || {
        Store::open(&b_dir, &StoreOptions::open().skip_recovery())
            .is_ok_and(|b| b.tail_position() == a.tail_position())
    })
    .await;
    // node-b loses node-a; node-a writes on, unreplicated.
    follow_a.abort();
    let _ = follow_a.await;
    let unreplicated: Vec<u64> = (0..10)
        .map(|i| a.append(format!("unreplicated-{i}").as_bytes()).unwrap())
        .collect();
    // node-b becomes the leader of epoch 2 (what the catalog will decide).
    let b = Store::open(&b_dir, &StoreOptions::open()).unwrap();
    assert_eq!(b.role(), Role::Secondary);
    let start = b.begin_epoch(2).unwrap();
    b.set_role(Role::Primary);
    for i in 0..15 {
        b.append(format!("epoch-two-{i}").as_bytes()).unwrap();
    }
    let b_addr = serve(b.clone(), "node-b").await;

    // node-a comes back as a follower of node-b.
    a.set_role(Role::Secondary);
    assert!(a.append(b"refused").is_err(), "a follower refuses appends");
    let follow_b = tokio::spawn(secondary::follow(follow_cfg("node-a", &a_dir, &b_addr)));
    wait_for("node-a follows node-b's history", || {
        a.tail_position() == b.tail_position() && a.epoch() == 2
    })
    .await;
    assert_eq!(
        records(&a),
        records(&b),
        "node-a holds exactly node-b's records"
    );
    assert_eq!(a.truncated_records(), 10);
    let q: Vec<_> = std::fs::read_dir(&a_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("quarantine-"))
        })
        .collect();
    assert_eq!(q.len(), 1, "one quarantine file: {q:?}");
    let cut: Vec<u64> = quarantined(&q[0]).into_iter().map(|r| r.0).collect();
    assert_eq!(cut, unreplicated);
    assert_eq!(unreplicated[0], start, "the cut is where epoch 2 began");
    follow_b.abort();
    let _ = follow_b.await;

    // Fencing: a node still in epoch 1 that believes it leads is refused by
    // a secondary that has seen epoch 2, and nothing reaches that secondary.
    let z = Store::open(d.path().join("z"), &opts().queue_id(a.queue_id())).unwrap();
    for i in 0..50 {
        z.append(format!("stale-{i}").as_bytes()).unwrap();
    }
    let z_addr = serve(z.clone(), "node-z").await;
    let before = records(&a);
    let mut store = Some(Store::open(&a_dir, &StoreOptions::open()).unwrap());
    let r = secondary::session(&follow_cfg("node-a", &a_dir, &z_addr), &mut store).await;
    match r {
        Err(ReplicationError::Refused(why)) => {
            assert!(why.contains("not the queue's leader"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(records(&a), before);
}
