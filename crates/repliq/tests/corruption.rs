//! Damaged files: every kind of damage surfaces as a clear error naming the
//! file or the record id, or as the documented torn-tail cut; readers never
//! panic, never skip a damaged record silently and never return a payload
//! other than the one written.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use repliq::store::layout::{
    CONTROL_FILE, CTL_MAGIC_OFF, CTL_VERSION_OFF, FORMAT_VERSION, FRAME_HEADER_LEN,
    SEGMENT_HEADER_LEN, SEG_MAGIC_OFF,
};
use repliq::store::{Durability, Store, StoreError, StoreOptions};
use repliq::{QueueError, RepliqQueue};

type Written = Vec<(u64, Vec<u8>)>;

fn opts(seg: u64) -> StoreOptions {
    StoreOptions::create()
        .segment_size(seg)
        .capacity(1_000_000)
        .durability(Durability::None)
}

fn open(dir: &Path, seg: u64) -> Result<Store, StoreError> {
    Store::open(dir, &opts(seg))
}

/// Creates a queue with `n` messages of varied lengths and returns what was written.
fn populate(dir: &Path, seg: u64, n: usize) -> Written {
    let s = open(dir, seg).unwrap();
    let mut w = Vec::new();
    for i in 0..n {
        let p: Vec<u8> = (0..(40 + (i * 37) % 160))
            .map(|j| (i * 7 + j) as u8 | 1)
            .collect();
        w.push((s.append(&p).unwrap(), p));
    }
    w
}

fn seg_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.seg"))
}

/// File and in-file offset of position `pos`.
fn locate(dir: &Path, seg: u64, pos: u64) -> (PathBuf, u64) {
    (seg_path(dir, pos / seg), pos % seg)
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = OpenOptions::new().read(true).open(p).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

fn write_at(p: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

fn flip_bit(p: &Path, off: u64, bit: u8) {
    let mut b = read_at(p, off, 1);
    b[0] ^= 1 << bit;
    write_at(p, off, &b);
}

/// What a reader saw: the records it returned, then how it stopped.
#[derive(Debug)]
enum End {
    /// `Ok(None)`: nothing more.
    Drained,
    /// An error, returned again by every further call.
    Error(StoreError),
}

fn same_error(a: &StoreError, b: &StoreError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b) && a.to_string() == b.to_string()
}

/// Reads with a tailer from the start; checks that what it returns is an
/// exact prefix of `w`, and that an error is sticky.
fn tail_all(s: &Store, w: &Written) -> (usize, End) {
    let mut t = s.tailer();
    let mut n = 0;
    loop {
        match t.next() {
            Ok(Some(r)) => {
                assert!(
                    n < w.len(),
                    "tailer returned a record never written: id {}",
                    r.id
                );
                assert_eq!(
                    (r.id, &r.payload),
                    (w[n].0, &w[n].1),
                    "tailer record {n} differs from what was written"
                );
                n += 1;
            }
            Ok(None) => return (n, End::Drained),
            Err(e) => {
                let pos = t.position();
                for _ in 0..3 {
                    let again = t
                        .next()
                        .expect_err("a corrupt record must not be skipped on retry");
                    assert!(same_error(&e, &again), "error changed: {e} then {again}");
                    assert_eq!(t.position(), pos, "tailer moved past the error");
                }
                return (n, End::Error(e));
            }
        }
    }
}

/// Same for the default consumer group.
fn dequeue_all(s: &Store, w: &Written) -> (usize, End) {
    let mut c = s.consumer();
    let mut n = 0;
    loop {
        match c.dequeue() {
            Ok(Some(r)) => {
                assert!(
                    n < w.len(),
                    "consumer returned a record never written: id {}",
                    r.id
                );
                assert_eq!(
                    (r.id, &r.payload),
                    (w[n].0, &w[n].1),
                    "dequeued record {n} differs from what was written"
                );
                n += 1;
            }
            Ok(None) => return (n, End::Drained),
            Err(e) => {
                let pos = c.position();
                let count = c.dequeued();
                for _ in 0..3 {
                    let again = c
                        .dequeue()
                        .expect_err("a corrupt record must not be skipped on retry");
                    assert!(same_error(&e, &again), "error changed: {e} then {again}");
                }
                assert_eq!(c.position(), pos, "group cursor moved past the error");
                assert_eq!(c.dequeued(), count);
                return (n, End::Error(e));
            }
        }
    }
}

/// Both readers stop with `Corrupt { id }` right before record `k`.
fn assert_corrupt_at(s: &Store, w: &Written, k: usize) {
    for (who, (n, end)) in [("tailer", tail_all(s, w)), ("consumer", dequeue_all(s, w))] {
        assert_eq!(
            n, k,
            "{who}: records before the damaged one are all delivered"
        );
        match end {
            End::Error(StoreError::Corrupt { id, reason }) => {
                assert_eq!(
                    id, w[k].0,
                    "{who}: error names the damaged record ({reason})"
                )
            }
            other => panic!("{who}: expected Corrupt at id {}, got {other:?}", w[k].0),
        }
    }
}

// ---------------------------------------------------------------------------
// Segment damage
// ---------------------------------------------------------------------------

#[test]
fn flipped_payload_bit_mid_segment_is_reported_with_its_id_and_not_skipped() {
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 65536, 100);
    let k = 40;
    let (p, off) = locate(d.path(), 65536, w[k].0);
    flip_bit(&p, off + FRAME_HEADER_LEN + 5, 3);

    let s = open(d.path(), 65536).unwrap();
    let rep = s.recovery_report();
    assert!(rep.ran);
    assert_eq!(
        rep.corrupt,
        vec![w[k].0],
        "recovery reports the corrupt record"
    );
    assert_eq!(rep.cut_from, None, "mid-log corruption is kept, not cut");
    assert_eq!(rep.tail_after, rep.tail_before);
    assert_corrupt_at(&s, &w, k);

    // Appends still work; the record after the damaged one is reachable by seek.
    let id = s.append(b"after").unwrap();
    let mut t = s.tailer();
    assert!(
        matches!(t.seek(w[k].0), Err(StoreError::InvalidId { .. })),
        "cannot seek onto a corrupt record"
    );
    t.seek(w[k + 1].0).unwrap();
    for (wid, wp) in &w[k + 1..] {
        let r = t.next().unwrap().unwrap();
        assert_eq!((&r.id, &r.payload), (wid, wp));
    }
    assert_eq!(t.next().unwrap().unwrap().id, id);
}

#[test]
fn flipped_payload_bit_in_an_older_segment_is_reported_by_readers() {
    // Recovery only walks the segment holding the tail; damage further back is
    // caught by the readers' CRC check.
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 4096, 200);
    let k = 5; // in segment 0, far from the tail
    assert_eq!(w[k].0 / 4096, 0);
    assert!(w.last().unwrap().0 / 4096 > 2);
    let (p, off) = locate(d.path(), 4096, w[k].0);
    flip_bit(&p, off + FRAME_HEADER_LEN, 0);
    let s = open(d.path(), 4096).unwrap();
    assert_corrupt_at(&s, &w, k);
}

#[test]
fn flipped_bit_in_frame_header_word0_is_reported_with_its_id() {
    for bit in [0u8, 3, 7] {
        for byte in [0u64, 4, 6] {
            let d = tempfile::tempdir().unwrap();
            let w = populate(d.path(), 65536, 60);
            let k = 30;
            let (p, off) = locate(d.path(), 65536, w[k].0);
            flip_bit(&p, off + byte, bit);
            let s = open(d.path(), 65536).unwrap();
            assert_eq!(
                s.recovery_report().corrupt,
                vec![w[k].0],
                "byte {byte} bit {bit}"
            );
            assert_eq!(s.recovery_report().cut_from, None);
            assert_corrupt_at(&s, &w, k);
        }
    }
}

#[test]
fn flipped_bit_in_frame_header_word1_crc_or_epoch_is_reported() {
    for byte in [8u64, 12] {
        let d = tempfile::tempdir().unwrap();
        let w = populate(d.path(), 4096, 10);
        let k = 4;
        let (p, off) = locate(d.path(), 4096, w[k].0);
        flip_bit(&p, off + byte, 1);
        let s = open(d.path(), 4096).unwrap();
        assert_eq!(s.recovery_report().corrupt, vec![w[k].0]);
        assert_corrupt_at(&s, &w, k);
    }
}

#[test]
fn corrupt_header_of_last_frame_is_cut_as_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 65536, 20);
    let last = w.len() - 1;
    let (p, off) = locate(d.path(), 65536, w[last].0);
    flip_bit(&p, off + 2, 5);
    let s = open(d.path(), 65536).unwrap();
    let rep = s.recovery_report().clone();
    assert_eq!(rep.cut_from, Some(w[last].0), "{rep:?}");
    assert!(rep.corrupt.is_empty());
    assert_eq!(rep.tail_after, w[last].0);
    assert_eq!(rep.depth, last as u64);
    let (n, end) = tail_all(&s, &w);
    assert_eq!(n, last);
    assert!(matches!(end, End::Drained));
    // The queue keeps working after the cut: the new record takes the cut id.
    let id = s.append(b"new").unwrap();
    assert_eq!(id, w[last].0);
    let mut w2 = w[..last].to_vec();
    w2.push((id, b"new".to_vec()));
    let (n, end) = dequeue_all(&s, &w2);
    assert_eq!(n, w2.len());
    assert!(matches!(end, End::Drained));
}

#[test]
fn zeroed_tail_is_cut_and_the_rest_served() {
    // Zero the last N bytes of written data, for N cutting into the last
    // payload, the last header, and across two frames.
    for n_zero in [3u64, 20, 100, 300] {
        let d = tempfile::tempdir().unwrap();
        let w = populate(d.path(), 65536, 30);
        let s = open(d.path(), 65536).unwrap();
        let tail = s.tail_position();
        drop(s);
        let (p, end_off) = locate(d.path(), 65536, tail);
        // The last frame's real end (without alignment padding).
        let last = w.last().unwrap();
        let data_end = last.0 % 65536 + FRAME_HEADER_LEN + last.1.len() as u64;
        assert!(data_end <= end_off);
        write_at(&p, data_end - n_zero, &vec![0u8; n_zero as usize]);

        let s = open(d.path(), 65536).unwrap();
        let rep = s.recovery_report().clone();
        assert!(rep.corrupt.is_empty(), "n={n_zero}: {rep:?}");
        // Every record whose bytes were touched is gone; all the others are served.
        let intact = w
            .iter()
            .take_while(|(id, p)| {
                id % 65536 + FRAME_HEADER_LEN + p.len() as u64 <= data_end - n_zero
            })
            .count();
        assert!(intact < w.len());
        assert_eq!(rep.tail_after, w[intact].0, "n={n_zero}: {rep:?}");
        if let Some(c) = rep.cut_from {
            assert_eq!(c, w[intact].0);
        }
        assert_eq!(rep.depth, intact as u64);
        assert_eq!(s.depth(), intact as u64);
        let (n, end) = tail_all(&s, &w);
        assert_eq!(n, intact, "n={n_zero}");
        assert!(matches!(end, End::Drained), "n={n_zero}: {end:?}");
        let (n, end) = dequeue_all(&s, &w);
        assert_eq!(n, intact);
        assert!(matches!(end, End::Drained));
        // New appends land where the cut was, and are read back intact.
        let id = s.append(b"fresh").unwrap();
        assert_eq!(id, w[intact].0);
        let mut c = s.consumer();
        assert_eq!(c.dequeue().unwrap().unwrap().payload, b"fresh");
    }
}

#[test]
fn truncated_older_segment_is_reported_at_its_first_id() {
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 4096, 200);
    let k_seg = 1;
    assert!(w.last().unwrap().0 / 4096 > k_seg + 1);
    let p = seg_path(d.path(), k_seg);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(2048)
        .unwrap();
    let s = open(d.path(), 4096).unwrap();
    let k = w.iter().position(|(id, _)| id / 4096 == k_seg).unwrap();
    assert_eq!(w[k].0, k_seg * 4096 + SEGMENT_HEADER_LEN);
    assert_corrupt_at(&s, &w, k);
}

#[test]
fn truncated_head_segment_fails_open_with_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 4096, 50);
    let head = w.last().unwrap().0 / 4096;
    let p = seg_path(d.path(), head);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1000)
        .unwrap();
    match open(d.path(), 4096) {
        Err(StoreError::Corrupt { id, reason }) => {
            assert_eq!(id, head * 4096 + SEGMENT_HEADER_LEN);
            assert!(reason.contains("1000 bytes"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn wrong_magic_in_segment_file() {
    // An older segment: readers report it; the head segment: open fails.
    let d = tempfile::tempdir().unwrap();
    let w = populate(d.path(), 4096, 200);
    let p0 = seg_path(d.path(), 0);
    write_at(&p0, SEG_MAGIC_OFF as u64, b"NOTMAGIC");
    let s = open(d.path(), 4096).unwrap();
    let (n, end) = tail_all(&s, &w);
    assert_eq!(n, 0);
    match end {
        End::Error(StoreError::BadMagic { path, kind, found }) => {
            assert_eq!(path, p0);
            assert_eq!(kind, "segment");
            assert_eq!(found, u64::from_le_bytes(*b"NOTMAGIC"));
        }
        other => panic!("expected BadMagic, got {other:?}"),
    }
    let (n, end) = dequeue_all(&s, &w);
    assert_eq!(n, 0);
    assert!(
        matches!(end, End::Error(StoreError::BadMagic { .. })),
        "{end:?}"
    );
    drop(s);

    let head = w.last().unwrap().0 / 4096;
    let ph = seg_path(d.path(), head);
    write_at(&ph, SEG_MAGIC_OFF as u64, &[0xAB; 8]);
    match open(d.path(), 4096) {
        Err(StoreError::BadMagic { path, kind, .. }) => {
            assert_eq!(path, ph);
            assert_eq!(kind, "segment");
        }
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Control-file damage
// ---------------------------------------------------------------------------

#[test]
fn wrong_magic_in_control_file() {
    let d = tempfile::tempdir().unwrap();
    populate(d.path(), 4096, 5);
    let c = d.path().join(CONTROL_FILE);
    write_at(&c, CTL_MAGIC_OFF as u64, b"GARBAGE!");
    for o in [opts(4096), StoreOptions::open()] {
        match Store::open(d.path(), &o) {
            Err(StoreError::BadMagic { path, kind, found }) => {
                assert_eq!(path, c);
                assert_eq!(kind, "control");
                assert_eq!(found, u64::from_le_bytes(*b"GARBAGE!"));
            }
            other => panic!("expected BadMagic, got {other:?}"),
        }
    }
    // Nothing was overwritten by the failed opens.
    assert_eq!(read_at(&c, 0, 8), b"GARBAGE!");
}

#[test]
fn wrong_version_in_control_file() {
    let d = tempfile::tempdir().unwrap();
    populate(d.path(), 4096, 5);
    let c = d.path().join(CONTROL_FILE);
    write_at(
        &c,
        CTL_VERSION_OFF as u64,
        &(FORMAT_VERSION + 1).to_le_bytes(),
    );
    match open(d.path(), 4096) {
        Err(e @ StoreError::BadVersion { .. }) => {
            let StoreError::BadVersion { ref path, found } = e else {
                unreachable!()
            };
            assert_eq!(path, &c);
            assert_eq!(found, FORMAT_VERSION + 1);
            assert!(e.to_string().contains("not supported"), "{e}");
        }
        other => panic!("expected BadVersion, got {other:?}"),
    }
}

#[test]
fn short_or_garbage_control_file() {
    let d = tempfile::tempdir().unwrap();
    populate(d.path(), 4096, 5);
    let c = d.path().join(CONTROL_FILE);
    let orig = std::fs::read(&c).unwrap();

    // Empty, shorter than a magic, and random garbage: not a control file.
    for garbage in [&b""[..], &b"RPLQ"[..], &b"hello, this is not a queue"[..]] {
        std::fs::write(&c, garbage).unwrap();
        match open(d.path(), 4096) {
            Err(StoreError::BadMagic {
                kind: "control", ..
            }) => {}
            other => panic!("{garbage:?}: expected BadMagic, got {other:?}"),
        }
    }
    // Right magic and version, but truncated: corrupt, with the size in the message.
    std::fs::write(&c, &orig[..4096]).unwrap();
    match open(d.path(), 4096) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("4096 bytes"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A nonsense configuration (segment size not a power of two).
    let mut bad = orig.clone();
    bad[16..24].copy_from_slice(&5000u64.to_le_bytes());
    std::fs::write(&c, &bad).unwrap();
    assert!(matches!(
        Store::open(d.path(), &StoreOptions::open()),
        Err(StoreError::Corrupt { .. })
    ));
    // Restored, it opens again.
    std::fs::write(&c, &orig).unwrap();
    let s = open(d.path(), 4096).unwrap();
    assert_eq!(s.depth(), 5);
}

// ---------------------------------------------------------------------------
// Founding API mapping
// ---------------------------------------------------------------------------

fn assert_invalid_data(e: QueueError) -> StoreError {
    match e {
        QueueError::Io(io) => {
            assert_eq!(io.kind(), ErrorKind::InvalidData, "{io}");
            let inner = io.into_inner().expect("StoreError inside");
            *inner.downcast::<StoreError>().expect("a StoreError")
        }
        other => panic!("expected Io(InvalidData), got {other:?}"),
    }
}

#[test]
fn founding_api_maps_corruption_to_invalid_data() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("q");
    let ps = path.to_str().unwrap();
    let ids: Vec<u64> = {
        let q = RepliqQueue::<(u32, String)>::with_options(ps, &opts(4096)).unwrap();
        (0..20u32)
            .map(|i| q.enqueue_id(&(i, format!("item {i}"))).unwrap())
            .collect()
    };
    // Flip a payload bit of item 7.
    let (p, off) = locate(&path, 4096, ids[7]);
    flip_bit(&p, off + FRAME_HEADER_LEN + 1, 2);
    {
        let q = RepliqQueue::<(u32, String)>::open(ps).unwrap();
        for i in 0..7u32 {
            assert_eq!(q.try_dequeue().unwrap(), Some((i, format!("item {i}"))));
        }
        for _ in 0..3 {
            let e = assert_invalid_data(q.try_dequeue().unwrap_err());
            assert_eq!(e.corrupt_id(), Some(ids[7]));
        }
        // Raw bytes access reports the same.
        let e = assert_invalid_data(q.dequeue_bytes().unwrap_err());
        assert_eq!(e.corrupt_id(), Some(ids[7]));
    }
    // Damaged control file: open and new both fail with InvalidData.
    let c = path.join(CONTROL_FILE);
    write_at(&c, CTL_MAGIC_OFF as u64, b"XXXXXXXX");
    let e = assert_invalid_data(RepliqQueue::<(u32, String)>::open(ps).unwrap_err());
    assert!(
        matches!(
            e,
            StoreError::BadMagic {
                kind: "control",
                ..
            }
        ),
        "{e:?}"
    );
    let e = assert_invalid_data(RepliqQueue::<(u32, String)>::new(ps, 1_000_000).unwrap_err());
    assert!(matches!(e, StoreError::BadMagic { .. }), "{e:?}");
    write_at(&c, CTL_MAGIC_OFF as u64, b"RPLQCTRL");
    write_at(&c, CTL_VERSION_OFF as u64, &99u32.to_le_bytes());
    let e = assert_invalid_data(RepliqQueue::<(u32, String)>::open(ps).unwrap_err());
    assert!(
        matches!(e, StoreError::BadVersion { found: 99, .. }),
        "{e:?}"
    );
}

/// A damaged last record that was already flushed to disk is acknowledged
/// data: recovery keeps it and reports it instead of cutting it as a torn tail.
#[test]
fn damaged_last_record_below_the_flushed_mark_is_kept_and_reported() {
    for durability in [Durability::Batch, Durability::Always, Durability::None] {
        let d = tempfile::tempdir().unwrap();
        let o = StoreOptions::create()
            .segment_size(65536)
            .capacity(1000)
            .durability(durability);
        let ids: Vec<u64> = {
            let s = Store::open(d.path(), &o).unwrap();
            let ids = (0..3u8).map(|i| s.append(&[i; 100]).unwrap()).collect();
            if durability == Durability::Batch {
                s.flush().unwrap();
            }
            ids
        };
        let last = ids[2];
        let (p, off) = locate(d.path(), 65536, last);
        flip_bit(&p, off + 16 + 50, 3);
        let s = Store::open(d.path(), &o).unwrap();
        let rep = s.recovery_report().clone();
        assert!(rep.ran);
        let mut t = s.tailer();
        assert_eq!(t.next().unwrap().unwrap().id, ids[0]);
        assert_eq!(t.next().unwrap().unwrap().id, ids[1]);
        if durability == Durability::None {
            // Never flushed: indistinguishable from a torn write, so it is cut and said so.
            assert_eq!(rep.cut_from, Some(last), "{durability:?}");
            assert!(t.next().unwrap().is_none());
        } else {
            assert_eq!(rep.corrupt, vec![last], "{durability:?}");
            assert_eq!(rep.cut_from, None, "{durability:?}");
            let e = t.next().unwrap_err();
            assert_eq!(e.corrupt_id(), Some(last), "{durability:?}: {e}");
        }
    }
}

/// A frame header lost below the flushed mark (its word reads zero, as a
/// lost sector would leave it) is damage to acknowledged data, not the end
/// of the log: recovery keeps every record after it, reports it, and readers
/// get an error with its id instead of waiting there or seeing the log end.
#[test]
fn zeroed_header_below_the_flushed_mark_is_reported_and_the_records_after_it_kept() {
    for durability in [Durability::Batch, Durability::Always] {
        let d = tempfile::tempdir().unwrap();
        let o = StoreOptions::create()
            .segment_size(65536)
            .capacity(1000)
            .durability(durability);
        let ids: Vec<u64> = {
            let s = Store::open(d.path(), &o).unwrap();
            let ids = (0..5u8).map(|i| s.append(&[i; 100]).unwrap()).collect();
            s.flush().unwrap();
            ids
        };
        let (p, off) = locate(d.path(), 65536, ids[2]);
        write_at(&p, off, &[0u8; 8]);
        let s = Store::open(d.path(), &o).unwrap();
        let rep = s.recovery_report().clone();
        assert_eq!(rep.corrupt, vec![ids[2]], "{durability:?}: {rep:?}");
        assert_eq!(rep.cut_from, None, "{durability:?}: {rep:?}");
        assert_eq!(rep.tail_after, rep.tail_before, "{durability:?}");
        let mut t = s.tailer();
        assert_eq!(t.next().unwrap().unwrap().id, ids[0]);
        assert_eq!(t.next().unwrap().unwrap().id, ids[1]);
        let e = t.next().unwrap_err();
        assert_eq!(e.corrupt_id(), Some(ids[2]), "{durability:?}: {e}");
        // The records after the damage are still there, intact.
        let mut after = s.tailer();
        after.seek(ids[3]).unwrap();
        assert_eq!(after.next().unwrap().unwrap().payload, vec![3u8; 100]);
        assert_eq!(after.next().unwrap().unwrap().payload, vec![4u8; 100]);
    }
}

/// Above the flushed mark, with a durability mode, a bad frame followed by
/// valid ones is what a power loss leaves (pages written back out of order):
/// the log ends at the bad frame, and readers are not stopped by an error
/// at a record that was never acknowledged.
#[test]
fn torn_frame_above_the_flushed_mark_ends_the_log_under_batch() {
    let d = tempfile::tempdir().unwrap();
    let o = StoreOptions::create()
        .segment_size(65536)
        .capacity(1000)
        .durability(Durability::Batch)
        .flush_interval(std::time::Duration::from_secs(3600));
    let ids: Vec<u64> = {
        let s = Store::open(d.path(), &o).unwrap();
        let first: Vec<u64> = (0..2u8).map(|i| s.append(&[i; 100]).unwrap()).collect();
        s.flush().unwrap();
        let more: Vec<u64> = (2..5u8).map(|i| s.append(&[i; 100]).unwrap()).collect();
        first.into_iter().chain(more).collect()
    };
    let (p, off) = locate(d.path(), 65536, ids[2]);
    flip_bit(&p, off + 16 + 50, 3);
    let s = Store::open(d.path(), &o).unwrap();
    let rep = s.recovery_report().clone();
    assert_eq!(rep.cut_from, Some(ids[2]), "{rep:?}");
    assert!(rep.corrupt.is_empty(), "{rep:?}");
    let mut t = s.tailer();
    assert_eq!(t.next().unwrap().unwrap().id, ids[0]);
    assert_eq!(t.next().unwrap().unwrap().id, ids[1]);
    assert!(t.next().unwrap().is_none());
}
