//! Replication-peer slots: a session resets what its peer is known to hold
//! (so retention keeps what a peer that lost its disk needs again), idle
//! disconnected peers expire and release retention, and an operator can
//! remove one, never a connected one unless forced.

use std::time::Duration;

use repliq::store::layout::MIN_SEGMENT_SIZE;
use repliq::store::{Durability, Store, StoreOptions};

fn queue(dir: &std::path::Path) -> Store {
    Store::open(
        dir.join("q"),
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue")
}

/// Appends until the tail is in segment `k`.
fn fill_to_segment(s: &Store, k: u64) {
    while s.geometry().segment_of(s.tail_position()) < k {
        s.append(&[5u8; 1000]).expect("append");
    }
}

fn segments(s: &Store) -> usize {
    std::fs::read_dir(s.dir())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count()
}

fn acked(s: &Store, node: &str) -> Option<u64> {
    s.peer_links()
        .into_iter()
        .find(|l| l.node == node)
        .map(|l| l.acked)
}

#[test]
fn a_session_lowers_what_its_peer_holds_but_never_raises_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = queue(tmp.path());
    fill_to_segment(&s, 3);
    let tail = s.tail_position();
    let slot = s.attach_peer("b", s.first_position()).expect("attach");
    s.ack_peer(slot, tail, 1);
    s.set_peer_link(slot, false);
    assert_eq!(acked(&s, "b"), Some(tail));
    // b comes back with an empty directory: it holds nothing now.
    let first = s.first_position();
    let slot2 = s.attach_peer("b", first).expect("attach again");
    assert_eq!(slot2, slot, "the same slot");
    assert_eq!(
        acked(&s, "b"),
        Some(first),
        "lowered to where the session starts"
    );
    // A session starting beyond what b acknowledged does not raise it.
    s.set_peer_link(slot, false);
    s.attach_peer("b", tail).expect("attach");
    assert_eq!(acked(&s, "b"), Some(first), "only an ack raises it");
    // And retention keeps every segment b still needs.
    let mut c = s.consumer();
    while c.dequeue().expect("dequeue").is_some() {}
    s.retain().expect("retain");
    assert!(
        segments(&s) >= 4,
        "b holds the segments back: {}",
        segments(&s)
    );
}

#[test]
fn idle_disconnected_peers_expire_and_release_retention_but_connected_ones_stay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = queue(tmp.path());
    let gone = s.attach_peer("gone", s.first_position()).expect("attach");
    s.ack_peer(gone, s.first_position(), 1);
    s.set_peer_link(gone, false);
    let live = s.attach_peer("live", s.first_position()).expect("attach");
    fill_to_segment(&s, 3);
    let mut c = s.consumer();
    while c.dequeue().expect("dequeue").is_some() {}
    s.retain().expect("retain");
    let before = segments(&s);
    assert!(before >= 4, "the two peers hold every segment: {before}");

    // An hour of idleness has not passed: nothing expires.
    assert_eq!(
        s.expire_peers(Duration::from_secs(3600)).expect("expire"),
        Vec::<String>::new()
    );
    std::thread::sleep(Duration::from_millis(5));
    let freed = s.expire_peers(Duration::from_millis(1)).expect("expire");
    assert_eq!(freed, ["gone"], "only the disconnected peer expires");
    assert!(acked(&s, "gone").is_none());
    assert!(acked(&s, "live").is_some());
    // live still holds the segments back; once it acknowledges the tail,
    // retention frees them (gone no longer counts).
    s.ack_peer(live, s.tail_position(), 1);
    s.retain().expect("retain");
    assert!(
        segments(&s) < before,
        "retention ran past the expired peer: {}",
        segments(&s)
    );
    // The freed slot serves a new peer.
    s.attach_peer("newcomer", s.tail_position())
        .expect("a free slot again");
}

#[test]
fn an_operator_removes_a_peer_but_not_a_connected_one_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = queue(tmp.path());
    let b = s.attach_peer("b", s.first_position()).expect("attach");
    assert!(
        !s.remove_peer("nobody", false).expect("remove"),
        "no such peer"
    );
    let e = s.remove_peer("b", false).expect_err("b is connected");
    assert!(e.to_string().contains("connected"), "{e}");
    assert!(acked(&s, "b").is_some(), "still there");
    assert!(s.remove_peer("b", true).expect("forced"));
    assert!(acked(&s, "b").is_none());
    let c = s.attach_peer("c", s.first_position()).expect("attach");
    s.set_peer_link(c, false);
    assert!(s
        .remove_peer("c", false)
        .expect("remove a disconnected peer"));
    assert!(s.peer_links().is_empty(), "{:?}", s.peer_links());
    let _ = b;
}
