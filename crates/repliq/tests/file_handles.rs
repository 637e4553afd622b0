//! File handles and mappings stay bounded over 10,000 segment rolls while a
//! named tailer follows and a consumer drains (so retention deletes old
//! segments as it goes).
//!
//! This binary holds a single test, so /proc/self/fd and /proc/self/maps
//! reflect only the queue under test.

mod mp_support;

use std::time::{Duration, Instant};

use mp_support::{check_payload, fill_payload, maps_mentioning, open_fds, PATIENCE};
use repliq::store::{Durability, IdleStrategy, Store, StoreOptions};

const SEGMENT: u64 = 4096;
/// 3 frames of 1,272 bytes fill a 4 KiB segment: every third append rolls.
const PAYLOAD: usize = 1250;
const ROLLS: u64 = 10_000;
const MESSAGES: u64 = ROLLS * 3 + 3;

#[test]
fn ten_thousand_rolls_keep_fds_and_mappings_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(SEGMENT)
            .capacity(1_000_000)
            .durability(Durability::None),
    )
    .unwrap();
    // Named, so retention waits for it as it waits for the consumer.
    let mut tailer = store.named_tailer("follower").unwrap();
    let mut consumer = store.consumer();
    let fds_before = open_fds();
    let maps_before = maps_mentioning(&dir);
    let started = Instant::now();

    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; PAYLOAD];
            for seq in 0..MESSAGES {
                fill_payload(&mut buf, 0, seq);
                // Back off while the readers are far behind, so the test
                // measures steady following, not a backlog of segments.
                while store.depth() > 64 {
                    std::thread::yield_now();
                }
                store.append(&buf).unwrap();
            }
        })
    };
    let follower = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut last_id = 0;
        while next < MESSAGES {
            let r = tailer
                .next_wait_with(IdleStrategy::Block, Some(PATIENCE), |r| {
                    (r.id, check_payload(r.payload))
                })
                .unwrap()
                .expect("tailer: the next record before the timeout");
            let (id, (w, s)) = (r.0, r.1.unwrap());
            assert!(id > last_id);
            assert_eq!((w, s), (0, next), "tailer order");
            last_id = id;
            next += 1;
        }
        last_id
    });
    let drainer = std::thread::spawn(move || {
        let mut next = 0u64;
        while next < MESSAGES {
            let r = consumer
                .dequeue_wait_with(IdleStrategy::Yield, Some(PATIENCE), |r| {
                    check_payload(r.payload)
                })
                .unwrap()
                .expect("consumer: the next record before the timeout");
            assert_eq!(r.unwrap(), (0, next), "consumer order");
            next += 1;
        }
    });
    // Sample while everything runs.
    let (mut max_fds, mut max_maps, mut max_files, mut samples) = (0, 0, 0, 0);
    let sample = |max_fds: &mut usize, max_maps: &mut usize, max_files: &mut usize| {
        *max_fds = (*max_fds).max(open_fds());
        *max_maps = (*max_maps).max(maps_mentioning(&dir));
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        *max_files = (*max_files).max(files);
    };
    while !writer.is_finished() || !follower.is_finished() || !drainer.is_finished() {
        sample(&mut max_fds, &mut max_maps, &mut max_files);
        samples += 1;
        std::thread::sleep(Duration::from_millis(2));
        // Only a hang detector: the rolls take seconds, more on a busy machine.
        assert!(
            started.elapsed() < 5 * PATIENCE,
            "10,000 rolls did not finish in {:?}: something hangs",
            5 * PATIENCE
        );
    }
    writer.join().unwrap();
    let last_id = follower.join().unwrap();
    drainer.join().unwrap();
    let elapsed = started.elapsed();
    sample(&mut max_fds, &mut max_maps, &mut max_files);

    let st = store.stats();
    let last_seg = store.geometry().segment_of(last_id);
    assert!(last_seg >= ROLLS, "rolled {last_seg} times, wanted {ROLLS}");
    assert_eq!(st.depth, 0);
    assert!(
        st.low_segment + 4 >= last_seg,
        "retention kept up: low {} last {last_seg}",
        st.low_segment
    );
    let fds_after = open_fds();
    let maps_after = maps_mentioning(&dir);
    let files_after = std::fs::read_dir(&dir).unwrap().count();
    println!(
        "file handles: {ROLLS} rolls in {elapsed:?}; fds {fds_before} -> {fds_after} (max {max_fds}); \
         maps of the queue {maps_before} -> {maps_after} (max {max_maps}); \
         files in the queue dir max {max_files} (the laggard reader deletes, inline), at the end {files_after}; \
         {samples} samples"
    );
    assert!(
        max_fds < fds_before + 16,
        "open fds grew: {fds_before} -> max {max_fds}"
    );
    assert!(
        fds_after < fds_before + 16,
        "open fds grew: {fds_before} -> {fds_after}"
    );
    assert!(
        max_maps < 16,
        "mappings of the queue dir grew to {max_maps}"
    );
    assert!(maps_after < 16, "mappings of the queue dir: {maps_after}");
    assert!(
        files_after < 16,
        "segment files not deleted: {files_after} in the directory"
    );
    drop(store);
    assert_eq!(
        maps_mentioning(&dir),
        0,
        "dropping the last handle unmaps everything"
    );
}
