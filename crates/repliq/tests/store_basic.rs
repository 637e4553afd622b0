//! Basic behaviour of the storage layer: appends, rolls, readers, capacity, retention.

mod mp_support;

use mp_support::PATIENCE;
use repliq::store::{Durability, Store, StoreError, StoreOptions};

fn small(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        &StoreOptions::create()
            .segment_size(4096)
            .capacity(1_000_000)
            .durability(Durability::None),
    )
    .unwrap()
}

#[test]
fn append_and_tail_across_many_segment_rolls() {
    let d = tempfile::tempdir().unwrap();
    let s = small(d.path());
    let mut ids = Vec::new();
    for i in 0..2000u32 {
        let msg = vec![(i % 251) as u8; (i % 300) as usize];
        ids.push(s.append(&msg).unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
    assert!(
        s.geometry().segment_of(*ids.last().unwrap()) > 50,
        "rolled many segments"
    );
    let mut t = s.tailer();
    for (i, id) in ids.iter().enumerate() {
        let r = t.next().unwrap().expect("record present");
        assert_eq!(r.id, *id);
        assert_eq!(r.epoch, 1);
        assert_eq!(r.payload, vec![(i % 251) as u8; i % 300]);
    }
    assert!(t.next().unwrap().is_none());
    // Seek to an id in the middle and to the end.
    t.seek(ids[1234]).unwrap();
    assert_eq!(t.next().unwrap().unwrap().id, ids[1234]);
    t.seek_end();
    assert!(t.next().unwrap().is_none());
    assert_eq!(s.epoch_of(ids[7]).unwrap(), 1);
}

#[test]
fn consumer_takes_each_message_once_and_capacity_is_enforced() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path(),
        &StoreOptions::create()
            .segment_size(4096)
            .capacity(3)
            .durability(Durability::None),
    )
    .unwrap();
    for i in 0..3u8 {
        s.append(&[i]).unwrap();
    }
    assert!(matches!(
        s.append(b"x"),
        Err(StoreError::Full { capacity: 3 })
    ));
    let mut c1 = s.consumer();
    let mut c2 = s.consumer();
    assert_eq!(c1.dequeue().unwrap().unwrap().payload, vec![0]);
    assert_eq!(c2.dequeue().unwrap().unwrap().payload, vec![1]);
    s.append(b"y").unwrap();
    s.append(b"z").unwrap();
    assert!(matches!(s.append(b"w"), Err(StoreError::Full { .. })));
    assert_eq!(c1.dequeue().unwrap().unwrap().payload, vec![2]);
    assert_eq!(c1.dequeue().unwrap().unwrap().payload, b"y".to_vec());
    assert_eq!(c2.dequeue().unwrap().unwrap().payload, b"z".to_vec());
    assert!(c2.dequeue().unwrap().is_none());
    assert_eq!(s.depth(), 0);
    // Both refusals are counted in the control file, for every process.
    assert_eq!(s.stats().full_rejections, 2);
    let other = Store::open(d.path(), &StoreOptions::open()).unwrap();
    assert_eq!(other.stats().full_rejections, 2);
}

#[test]
fn enqueue_latency_is_sampled_into_the_shared_histogram() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path(),
        &StoreOptions::create()
            .segment_size(1 << 16)
            .durability(Durability::None),
    )
    .unwrap();
    assert_eq!(s.stats().enqueue_latency.count, 0);
    // The 1st, 65th, ... append of each thread is timed.
    let h = std::thread::spawn({
        let s = s.clone();
        move || {
            for _ in 0..640 {
                s.append(b"sampled").unwrap();
            }
        }
    });
    h.join().unwrap();
    let lat = Store::open(d.path(), &StoreOptions::open())
        .unwrap()
        .stats()
        .enqueue_latency;
    assert_eq!(lat.count, 10, "{lat:?}");
    assert_eq!(lat.buckets.iter().map(|b| b.1).sum::<u64>(), 10);
    assert!(lat.sum_ns > 0);
}

#[test]
fn named_tailer_resumes_and_retention_deletes_passed_segments() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = small(d.path());
        for i in 0..500u32 {
            s.append(&i.to_le_bytes().repeat(20)).unwrap();
        }
        let mut t = s.named_tailer("audit").unwrap();
        for _ in 0..100 {
            t.next().unwrap().unwrap();
        }
    }
    let s = small(d.path());
    let mut t = s.named_tailer("audit").unwrap();
    let r = t.next().unwrap().unwrap();
    assert_eq!(r.payload, 100u32.to_le_bytes().repeat(20));
    let before = std::fs::read_dir(d.path()).unwrap().count();
    // Drain both the default group and the named tailer: old segments go.
    let mut c = s.consumer();
    while c.dequeue().unwrap().is_some() {}
    while t.next().unwrap().is_some() {}
    let after = std::fs::read_dir(d.path()).unwrap().count();
    assert!(after < before, "segments deleted: {before} -> {after}");
    assert!(s.first_position() > s.geometry().first_position(0));
    let mut fresh = s.tailer();
    let first = fresh
        .next()
        .unwrap()
        .expect("the retained segment still holds records");
    assert!(first.id >= s.first_position());
}

#[test]
fn bad_inputs_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    assert!(matches!(
        Store::open(&f, &StoreOptions::create()),
        Err(StoreError::NotADirectory(_))
    ));
    assert!(matches!(
        Store::open(d.path().join("none"), &StoreOptions::open()),
        Err(StoreError::NotFound(_))
    ));
    let q = d.path().join("q");
    let s = Store::open(&q, &StoreOptions::create().segment_size(4096).capacity(10)).unwrap();
    let big = vec![0u8; 5000];
    assert!(matches!(s.append(&big), Err(StoreError::TooLarge { .. })));
    let max = s.max_payload() as usize;
    s.append(&vec![1u8; max]).unwrap();
    drop(s);
    let e = Store::open(&q, &StoreOptions::create().capacity(11)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ConfigMismatch {
                field: "capacity",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        Store::open(d.path().join("z"), &StoreOptions::create().capacity(0)),
        Err(StoreError::InvalidConfig(_))
    ));
    assert!(matches!(
        Store::open(
            d.path().join("z2"),
            &StoreOptions::create().segment_size(5000)
        ),
        Err(StoreError::InvalidConfig(_))
    ));
}

#[test]
fn batch_durability_flushes_in_the_background_and_always_is_synchronous() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path().join("b"),
        &StoreOptions::create()
            .segment_size(1 << 16)
            .durability(Durability::Batch)
            .flush_interval(std::time::Duration::from_millis(5)),
    )
    .unwrap();
    let id = s.append(b"persist me").unwrap();
    let end = s.tail_position();
    assert!(end > id);
    // The flusher runs every 5 ms; wait for it to cover the record (bounded).
    let deadline = std::time::Instant::now() + PATIENCE;
    while s.stats().flushed < end {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher did not cover {end} within {PATIENCE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(s.stats().committed, end);

    let a = Store::open(
        d.path().join("a"),
        &StoreOptions::create()
            .segment_size(1 << 16)
            .durability(Durability::Always),
    )
    .unwrap();
    let id = a.append(b"synced").unwrap();
    assert_eq!(a.tailer().next().unwrap().unwrap().id, id);
    assert_eq!(a.config().durability, Durability::Always);
}

/// With segments larger than what replication carries, the payload limit is
/// the replication one: a standalone queue refuses more too.
#[test]
fn payload_limit_is_the_replication_limit_with_large_segments() {
    use repliq::store::layout::MAX_RECORD_PAYLOAD;
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path().join("q"),
        &StoreOptions::create()
            .segment_size(64 << 20)
            .durability(repliq::store::Durability::None),
    )
    .unwrap();
    assert_eq!(s.max_payload(), MAX_RECORD_PAYLOAD);
    let over = vec![1u8; MAX_RECORD_PAYLOAD as usize + 1];
    match s.append(&over) {
        Err(StoreError::TooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_RECORD_PAYLOAD + 1, MAX_RECORD_PAYLOAD));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let exact = vec![2u8; MAX_RECORD_PAYLOAD as usize];
    let id = s.append(&exact).unwrap();
    let mut t = s.tailer();
    assert_eq!(
        t.next().unwrap().map(|r| (r.id, r.payload == exact)),
        Some((id, true))
    );
}
