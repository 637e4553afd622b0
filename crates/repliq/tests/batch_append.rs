//! Batch appends (`Store::append_batch`, `Store::append_many_with`,
//! `RepliqQueue::enqueue_batch`): the records read back exactly as single
//! appends would have written them, ids dense and in order, across segment
//! rolls; bad input, a full queue and a replica refuse the whole batch and
//! write nothing.

use proptest::prelude::*;
use repliq::store::layout::{align_frame, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use repliq::store::{Durability, Role, Store, StoreError, StoreOptions};
use repliq::{QueueError, RepliqQueue};

const SEG: u64 = 4096;

fn store(dir: &tempfile::TempDir, seg: u64, capacity: u64) -> Store {
    Store::open(
        dir.path().join("q"),
        &StoreOptions::create().segment_size(seg).capacity(capacity),
    )
    .expect("create queue")
}

/// Every record from the start, as (id, payload), through a fresh tailer.
fn read_all(s: &Store) -> Vec<(u64, Vec<u8>)> {
    let mut t = s.tailer();
    let mut out = Vec::new();
    while let Some(r) = t.next().expect("read") {
        out.push((r.id, r.payload.to_vec()));
    }
    out
}

/// The id after the record `(id, len)`: dense means the next record is here.
fn next_id(s: &Store, id: u64, len: usize) -> u64 {
    let geo = s.geometry();
    let end = id + align_frame(FRAME_HEADER_LEN + len as u64);
    if geo.offset_of(end) == 0 {
        end + SEGMENT_HEADER_LEN
    } else {
        end
    }
}

#[test]
fn a_batch_round_trips_through_a_tailer_with_dense_ids_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20, 1000);
    let before = s.append(b"single before").unwrap();
    let msgs: Vec<Vec<u8>> = (0..50u32)
        .map(|i| vec![i as u8; (i % 7) as usize])
        .collect();
    let ids = s.append_batch(&msgs).unwrap();
    let after = s.append(b"single after").unwrap();
    assert_eq!(ids.len(), 50);
    assert_eq!(ids[0], next_id(&s, before, 13));
    for k in 1..ids.len() {
        assert_eq!(
            ids[k],
            next_id(&s, ids[k - 1], msgs[k - 1].len()),
            "record {k}"
        );
    }
    assert_eq!(after, next_id(&s, ids[49], msgs[49].len()));
    let got = read_all(&s);
    assert_eq!(got.len(), 52);
    for (k, (id, p)) in got[1..51].iter().enumerate() {
        assert_eq!((*id, p), (ids[k], &msgs[k]));
    }
    assert_eq!(s.depth(), 52);
}

#[test]
fn append_many_with_fills_each_message_in_place_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 1000);
    let lens = [3usize, 0, 17, 8];
    let mut order = Vec::new();
    let ids = s
        .append_many_with(&lens, |i, buf| {
            order.push(i);
            assert_eq!(buf.len(), lens[i]);
            buf.fill(b'a' + i as u8);
        })
        .unwrap();
    assert_eq!(order, vec![0, 1, 2, 3]);
    let got = read_all(&s);
    let want: Vec<(u64, Vec<u8>)> = ids
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (&id, len))| (id, vec![b'a' + i as u8; len]))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_batch_that_does_not_fit_the_segment_rolls_first_and_stays_in_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 100_000);
    // Fill the first segment to within 200 bytes of its end.
    let mut last = 0;
    while s.geometry().offset_of(s.tail_position()) + 200 < SEG
        && s.geometry().segment_of(s.tail_position()) == 0
    {
        last = s.append(&[7u8; 40]).unwrap();
    }
    assert_eq!(s.geometry().segment_of(last), 0);
    let msgs = vec![vec![1u8; 48]; 8]; // 8 frames of 64 bytes: 512 > what is left
    let ids = s.append_batch(&msgs).unwrap();
    assert_eq!(ids[0], s.geometry().first_position(1), "rolled first");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 64));
    let got = read_all(&s);
    let tail: Vec<_> = got[got.len() - 8..].to_vec();
    assert_eq!(
        tail,
        ids.iter()
            .map(|&id| (id, vec![1u8; 48]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_larger_than_a_segment_is_cut_into_spans_across_rolls_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 100_000);
    s.append(b"x").unwrap();
    // 300 records of 100 bytes (frames of 120): about nine segments' worth.
    let msgs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| (0..100).map(|j| (i + j) as u8).collect())
        .collect();
    let ids = s.append_batch(&msgs).unwrap();
    let segs: std::collections::BTreeSet<u64> =
        ids.iter().map(|&id| s.geometry().segment_of(id)).collect();
    assert!(segs.len() >= 9, "spread over {} segments", segs.len());
    for k in 1..ids.len() {
        let dense = next_id(&s, ids[k - 1], 100);
        let next_seg = s
            .geometry()
            .first_position(s.geometry().segment_of(ids[k - 1]) + 1);
        assert!(ids[k] == dense || ids[k] == next_seg, "record {k}: gap");
    }
    let got = read_all(&s);
    assert_eq!(got.len(), 301);
    for (k, (id, p)) in got[1..].iter().enumerate() {
        assert_eq!((*id, p), (ids[k], &msgs[k]), "record {k}");
    }
}

#[test]
fn an_oversized_message_refuses_the_whole_batch_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 1000);
    let max = s.geometry().max_payload() as usize;
    let tail = s.tail_position();
    let msgs = vec![vec![0u8; 8], vec![0u8; max + 1], vec![0u8; 8]];
    match s.append_batch(&msgs) {
        Err(StoreError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (max as u64 + 1, max as u64))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(s.tail_position(), tail);
    assert_eq!(s.depth(), 0);
    // The largest message is fine, in a batch too.
    let ids = s.append_batch(&[vec![1u8; max], vec![2u8; 4]]).unwrap();
    assert_eq!(read_all(&s).len(), 2);
    assert_eq!(ids.len(), 2);
}

#[test]
fn an_empty_batch_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 1000);
    let empty: [&[u8]; 0] = [];
    match s.append_batch(&empty) {
        Err(e @ StoreError::InvalidBatch(_)) => assert!(e.to_string().contains("empty"), "{e}"),
        other => panic!("expected InvalidBatch, got {other:?}"),
    }
    assert_eq!(s.tail_position(), s.first_position());
}

#[test]
fn a_batch_the_capacity_cannot_take_whole_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 10);
    s.append_batch(&[b"a"; 7]).unwrap();
    let tail = s.tail_position();
    assert!(matches!(
        s.append_batch(&[b"b"; 4]),
        Err(StoreError::Full { capacity: 10 })
    ));
    assert_eq!(
        s.tail_position(),
        tail,
        "nothing of the refused batch written"
    );
    assert_eq!(s.depth(), 7, "its reservations released");
    s.append_batch(&[b"c"; 3]).unwrap();
    assert_eq!(s.depth(), 10);
    match s.append_batch(&[b"d"; 11]) {
        Err(e @ StoreError::InvalidBatch(_)) => assert!(e.to_string().contains("capacity"), "{e}"),
        other => panic!("expected InvalidBatch, got {other:?}"),
    }
}

#[test]
fn a_replica_refuses_a_batch_read_only_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, SEG, 1000);
    s.set_role(Role::Secondary);
    match s.append_batch(&[b"a", b"b"]) {
        Err(StoreError::ReadOnly(m)) => assert!(m.contains("replica"), "{m}"),
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    s.set_role(Role::Standalone);
    s.set_read_only(true);
    assert!(matches!(
        s.append_many_with(&[1], |_, b| b.fill(0)),
        Err(StoreError::ReadOnly(_))
    ));
    assert_eq!(s.tail_position(), s.first_position());
    assert_eq!(s.depth(), 0);
}

#[test]
fn a_batch_with_always_durability_is_flushed_through_its_last_record_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("q"),
        &StoreOptions::create()
            .segment_size(SEG)
            .durability(Durability::Always),
    )
    .unwrap();
    let ids = s.append_batch(&[&b"one"[..], b"two", b"three"]).unwrap();
    let end = next_id(&s, ids[2], 5);
    assert!(
        s.stats().flushed >= end,
        "flushed {} < {end}",
        s.stats().flushed
    );
}

#[tokio::test]
async fn enqueue_batch_round_trips_typed_items_and_refuses_on_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders");
    let q = RepliqQueue::<(u32, String)>::new(path.to_str().unwrap(), 100).unwrap();
    let items: Vec<(u32, String)> = (0..5).map(|i| (i, format!("item {i}"))).collect();
    let ids = q.enqueue_batch(&items).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    for it in &items {
        assert_eq!(q.dequeue().await.unwrap().as_ref(), Some(it));
    }
    assert_eq!(q.dequeue().await.unwrap(), None);
    assert!(matches!(q.enqueue_batch(&[]).await, Err(QueueError::Io(_))));
    q.store().set_role(Role::Secondary);
    assert!(matches!(
        q.enqueue_batch(&items).await,
        Err(QueueError::Replication(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any mix of single appends and batches of any sizes, over small
    /// segments: the log reads back as the same sequence, with the ids the
    /// appends returned, each record dense after the one before it (or at
    /// the next segment's start after a roll).
    #[test]
    fn batches_and_singles_interleave_into_the_same_log(
        ops in proptest::collection::vec(
            proptest::collection::vec(0usize..300, 1..20), 1..25)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, SEG, 1_000_000);
        let mut want = Vec::new();
        for (n, lens) in ops.iter().enumerate() {
            let msgs: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| vec![(n * 31 + i) as u8; l])
                .collect();
            if lens.len() == 1 {
                want.push((s.append(&msgs[0]).unwrap(), msgs[0].clone()));
            } else {
                let ids = s.append_batch(&msgs).unwrap();
                want.extend(ids.into_iter().zip(msgs));
            }
        }
        let got = read_all(&s);
        prop_assert_eq!(&got, &want);
        for w in got.windows(2) {
            let dense = next_id(&s, w[0].0, w[0].1.len());
            let next_seg = s.geometry().first_position(s.geometry().segment_of(w[0].0) + 1);
            prop_assert!(w[1].0 == dense || w[1].0 == next_seg, "gap after {}", w[0].0);
        }
    }
}
