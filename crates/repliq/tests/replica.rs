//! Byte-identical copying between stores (the storage half of replication).

use repliq::store::{Durability, Store, StoreError, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(1 << 14)
        .capacity(1 << 30)
        .durability(Durability::None)
}

/// Copies everything committed on `p` to `s`, in runs of at most `max` bytes.
fn sync(p: &Store, s: &Store, max: usize) -> usize {
    let mut runs = 0;
    loop {
        let pos = s.tail_position();
        let r = p
            .with_committed_frames(pos, max, |bytes| s.append_replicated(pos, bytes))
            .unwrap();
        match r {
            Some((res, next)) => {
                assert_eq!(res.unwrap(), next);
                runs += 1;
            }
            None => return runs,
        }
    }
}

#[test]
fn replica_is_byte_identical_with_same_ids_and_epochs() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    let s = Store::open(d.path().join("s"), &opts().queue_id(p.queue_id())).unwrap();
    s.set_read_only(true);
    // Concurrent writers, two epochs, segment rolls. An epoch begins while
    // no append is in flight (as a new leader starts one before it lets
    // writers in): a writer that read the old epoch must not commit after
    // the new epoch's start, which a replica would refuse as fenced.
    for (phase, epoch) in [(0u32, None), (1, Some(7))] {
        if let Some(e) = epoch {
            p.begin_epoch(e).unwrap();
        }
        std::thread::scope(|sc| {
            for w in 0..3u32 {
                let p = p.clone();
                sc.spawn(move || {
                    for i in phase * 1000..(phase + 1) * 1000 {
                        let len = ((i * 31 + w * 7) % 700) as usize;
                        p.append(&vec![(i as u8) ^ (w as u8); len]).unwrap();
                    }
                });
            }
            // Replicate while they write.
            for _ in 0..25 {
                sync(&p, &s, 4096);
            }
        });
    }
    assert!(sync(&p, &s, 64 * 1024) > 0 || s.tail_position() == p.tail_position());
    sync(&p, &s, 64 * 1024);
    assert_eq!(s.tail_position(), p.tail_position());
    assert!(
        p.geometry().segment_of(p.tail_position()) > 10,
        "segments rolled"
    );
    // Same records, ids and epochs.
    let (mut tp, mut ts) = (p.tailer(), s.tailer());
    let mut n = 0;
    while let Some(a) = tp.next().unwrap() {
        assert_eq!(Some(a), ts.next().unwrap());
        n += 1;
    }
    assert_eq!(n, 6000);
    assert!(ts.next().unwrap().is_none());
    assert_eq!(s.depth(), 6000);
    // Byte-identical segment files.
    for e in std::fs::read_dir(d.path().join("p")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        // Up to the tail's segment (the primary may have created the next one ahead).
        let last = p.geometry().segment_of(p.tail_position());
        let index = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok());
        if index.is_some_and(|i| i <= last) {
            let a = std::fs::read(e.path()).unwrap();
            let b = std::fs::read(d.path().join("s").join(&name)).unwrap();
            assert!(a == b, "segment {name} differs");
        }
    }
    // Applications cannot append to the replica.
    assert!(matches!(s.append(b"x"), Err(StoreError::ReadOnly(_))));
}

#[test]
fn hostile_runs_are_rejected_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = Store::open(d.path().join("p"), &opts()).unwrap();
    let s = Store::open(d.path().join("s"), &opts()).unwrap();
    for i in 0..10u8 {
        p.append(&[i; 40]).unwrap();
    }
    let pos = s.tail_position();
    let good = p
        .with_committed_frames(pos, 1 << 20, |b| b.to_vec())
        .unwrap()
        .unwrap()
        .0;
    let check_rejected = |bytes: &[u8]| {
        let e = s.append_replicated(pos, bytes).unwrap_err();
        assert!(
            matches!(e, StoreError::Corrupt { .. } | StoreError::InvalidId { .. }),
            "{e}"
        );
        assert_eq!(s.tail_position(), pos, "nothing written");
        assert!(s.tailer().next().unwrap().is_none());
    };
    // A flipped payload bit in the last frame: nothing of the run is written.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 1;
    check_rejected(&bad);
    // A flipped header bit.
    let mut bad = good.clone();
    bad[2] ^= 0x10;
    check_rejected(&bad);
    // Truncated mid-frame, unaligned, empty, oversize.
    check_rejected(&good[..good.len() - 8]);
    check_rejected(&good[..13]);
    check_rejected(&[]);
    check_rejected(&vec![0u8; 1 << 15]);
    // A pending frame.
    let mut bad = good.clone();
    let pending = repliq::store::frame::pending_word0(16 + 40);
    bad[..8].copy_from_slice(&pending.to_le_bytes());
    check_rejected(&bad);
    // Wrong position.
    assert!(matches!(
        s.append_replicated(pos + 8, &good),
        Err(StoreError::InvalidId { .. })
    ));
    // The genuine run still applies.
    assert_eq!(s.append_replicated(pos, &good).unwrap(), p.tail_position());
    assert_eq!(s.tailer().next().unwrap().unwrap().payload, vec![0u8; 40]);
}
