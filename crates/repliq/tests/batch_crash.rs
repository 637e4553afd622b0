//! Batch writers killed with SIGKILL mid-batch.
//!
//! Each iteration spawns a *victim* process appending batches of [`BATCH`]
//! self-checking records with `Store::append_many_with`, and kills it either
//! at a random moment or while it is deliberately stuck inside the fill
//! closure in the middle of a batch (its span claimed, some of its frames
//! written, not committed). A single-append writer and a reader process run
//! meanwhile; every few iterations everything is killed at once so that the
//! parent's open runs the exclusive recovery.
//!
//! After each kill the parent reads everything written since the previous
//! iteration and checks: every payload's own checksum (no torn record);
//! each writer's sequence numbers contiguous (nothing lost or duplicated
//! in the middle); the victim's records a whole number of batches (a batch
//! is all or nothing); ids dense inside a batch (each record starts where
//! the one before ends, or at the next segment's first frame); and after a
//! recovery the queue's depth equals the records in the log. The reader
//! process checks checksums and contiguity concurrently, and at the end
//! must have read exactly what the parent read.

mod mp_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mp_support::{
    check_payload, child_exit, fill_payload, payload_len, run_reader, say, serial, ChildProc, Rng,
    SeqTracker, PATIENCE,
};
use repliq::store::layout::{align_frame, FRAME_HEADER_LEN};
use repliq::store::{Durability, Store, StoreOptions};

const ENTRY: &str = "batch_crash_child_entry";
const ITERATIONS: u32 = 60;
const ALL_DEAD_EVERY: u32 = 6;
/// Records per batch.
const BATCH: u64 = 16;
const MAX_FILLER: usize = 40;

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(64 * 1024)
        .capacity(100_000_000)
        .durability(Durability::None)
        .recovery_timeout(Duration::from_secs(1))
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

/// Dispatches a child role; a no-op when run as an ordinary test.
#[test]
fn batch_crash_child_entry() {
    let Some(role) = mp_support::role() else {
        return;
    };
    let dir = PathBuf::from(env("BC_DIR"));
    let r = match role.as_str() {
        "batch" => run_batch_writer(&dir, env("BC_ID").parse().unwrap(), &env("BC_MODE")),
        "single" => run_single_writer(&dir, env("BC_ID").parse().unwrap()),
        "reader" => run_reader(&dir, Path::new(&env("BC_STOP"))),
        o => Err(format!("unknown role {o}")),
    };
    child_exit(r)
}

/// Modes: `burst` (killed at a random moment) and `stuck:<k>` (blocks inside
/// the fill closure of record `k`, in the middle of a batch).
fn run_batch_writer(dir: &Path, w: u32, mode: &str) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    let stuck_at: Option<u64> = mode.strip_prefix("stuck:").map(|k| k.parse().unwrap());
    let mut seq = 0u64;
    loop {
        let lens: Vec<usize> = (0..BATCH)
            .map(|i| payload_len(w, seq + i, MAX_FILLER))
            .collect();
        store
            .append_many_with(&lens, |i, b| {
                let s = seq + i as u64;
                fill_payload(b, w, s);
                if stuck_at == Some(s) {
                    say("STUCK");
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| format!("batch writer {w} seq {seq}: {e}"))?;
        if seq == 0 {
            say("READY");
        }
        seq += BATCH;
        if seq % (4 * BATCH) == 0 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

fn run_single_writer(dir: &Path, w: u32) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    let mut seq = 0u64;
    loop {
        let len = payload_len(w, seq, MAX_FILLER);
        store
            .append_with(len, |b| fill_payload(b, w, seq))
            .map_err(|e| format!("single writer {w} seq {seq}: {e}"))?;
        if seq == 0 {
            say("READY");
        }
        seq += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The parent's view of the log: what it read so far and the checks.
struct Checker {
    pos: u64,
    seqs: SeqTracker,
    /// Per writer: the last record read, `(id, payload length, seq)`.
    last: HashMap<u32, (u64, usize, u64)>,
    batch_writers: Vec<u32>,
}

impl Checker {
    /// Reads from `self.pos` until the tailer reaches `end`, checking every record.
    fn read_until(&mut self, store: &Store, end: u64) {
        let geo = store.geometry();
        let mut t = store.tailer();
        t.seek(self.pos)
            .unwrap_or_else(|e| panic!("seek {}: {e}", self.pos));
        let deadline = std::time::Instant::now() + PATIENCE;
        while t.position() < end {
            match t.next_with(|r| (r.id, r.payload.len(), check_payload(r.payload))) {
                Ok(Some((id, len, Ok((w, s))))) => {
                    self.seqs
                        .see(id, w, s)
                        .unwrap_or_else(|e| panic!("parent: {e}"));
                    if let Some(&(pid, plen, pseq)) = self.last.get(&w) {
                        let batch = self.batch_writers.contains(&w);
                        if batch && s == pseq + 1 && s % BATCH != 0 {
                            let dense = pid + align_frame(FRAME_HEADER_LEN + plen as u64);
                            let next_seg = geo.first_position(geo.segment_of(pid) + 1);
                            assert!(
                                id == dense || (geo.offset_of(dense) == 0 && id == next_seg),
                                "writer {w} seq {s}: id {id} does not follow {pid} densely"
                            );
                        }
                    }
                    self.last.insert(w, (id, len, s));
                }
                Ok(Some((id, _, Err(e)))) => panic!("parent: torn record at id {id}: {e}"),
                Ok(None) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "stuck at {} (target {end}), stats {:?}",
                        t.position(),
                        store.stats()
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("parent: read error at {}: {e}", t.position()),
            }
        }
        self.pos = t.position();
    }
}

struct Procs {
    dir: PathBuf,
    stop: PathBuf,
    next_id: u32,
}

impl Procs {
    fn spawn(&mut self, role: &str, mode: &str) -> (ChildProc, u32) {
        let id = self.next_id;
        self.next_id += 1;
        let mut c = ChildProc::spawn(
            ENTRY,
            &format!("{role} {id} ({mode})"),
            role,
            &[
                ("BC_DIR", self.dir.to_string_lossy().into_owned()),
                ("BC_STOP", self.stop.to_string_lossy().into_owned()),
                ("BC_ID", id.to_string()),
                ("BC_MODE", mode.to_string()),
            ],
        );
        if role != "batch" {
            c.expect_line("READY", PATIENCE);
        }
        (c, id)
    }
}

#[test]
fn batch_writers_killed_mid_batch_leave_whole_batches_with_dense_ids() {
    if mp_support::role().is_some() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    drop(Store::open(&dir, &opts()).unwrap());
    let (mut rng, seed) = Rng::from_time();
    eprintln!("seed {seed}");
    let mut procs = Procs {
        dir: dir.clone(),
        stop: tmp.path().join("stop"),
        next_id: 1,
    };
    let mut store = Some(Store::open(&dir, &StoreOptions::open()).unwrap());
    let mut check = Checker {
        pos: store.as_ref().unwrap().first_position(),
        seqs: SeqTracker::default(),
        last: HashMap::new(),
        batch_writers: Vec::new(),
    };
    let (mut reader, _) = procs.spawn("reader", "");
    let (mut single, _) = procs.spawn("single", "");
    let mut stuck_kills = 0;
    let mut recoveries = 0;
    for it in 1..=ITERATIONS {
        let stuck = it % 2 == 0;
        let mode = if stuck {
            // A record in the middle of batch 1 to 5.
            format!("stuck:{}", rng.range(1, 6) * BATCH + rng.range(1, BATCH))
        } else {
            "burst".to_string()
        };
        let (mut victim, vid) = procs.spawn("batch", &mode);
        check.batch_writers.push(vid);
        victim.expect_line("READY", PATIENCE);
        if stuck {
            victim.expect_line("STUCK", PATIENCE);
            stuck_kills += 1;
        } else {
            std::thread::sleep(Duration::from_micros(rng.range(0, 30_000)));
        }
        let all_dead = it % ALL_DEAD_EVERY == 0;
        victim.kill9();
        if all_dead {
            reader.kill9();
            single.kill9();
            drop(store.take()); // every handle closed: the next open recovers
            let s = Store::open(&dir, &StoreOptions::open()).unwrap();
            recoveries += 1;
            let end = s.tail_position();
            check.read_until(&s, end);
            assert_eq!(
                s.depth(),
                check.seqs.total,
                "after recovery the depth counts exactly the records in the log"
            );
            store = Some(s);
            (reader, _) = procs.spawn("reader", "");
            (single, _) = procs.spawn("single", "");
        } else {
            let s = store.as_ref().unwrap();
            let end = s.tail_position();
            check.read_until(s, end);
        }
        let n = check.seqs.count(vid);
        assert_eq!(
            n % BATCH,
            0,
            "victim {vid} ({mode}): {n} records, not whole batches"
        );
        if let Some(k) = mode.strip_prefix("stuck:") {
            let k: u64 = k.parse().unwrap();
            assert_eq!(
                n,
                k - k % BATCH,
                "victim {vid}: the stuck batch must be absent"
            );
        }
        assert!(n >= BATCH, "victim {vid} said READY after its first batch");
        assert!(reader.exited().is_none(), "reader died: {:?}", reader.log);
    }
    // The reader must have read exactly what the parent read.
    single.kill9();
    let s = store.as_ref().unwrap();
    let end = s.tail_position();
    check.read_until(s, end);
    std::fs::write(&procs.stop, end.to_string()).unwrap();
    let done = reader.expect_line("DONE", PATIENCE);
    let read: u64 = done["DONE ".len()..].parse().unwrap();
    // A reader respawned after a recovery read the log from its start.
    assert_eq!(read, check.seqs.total, "reader and parent disagree");
    reader.wait_ok(PATIENCE);
    assert!(stuck_kills >= ITERATIONS / 2 && recoveries >= 1);
    eprintln!(
        "{} records, {} batch writers killed ({stuck_kills} mid-batch while stuck), {recoveries} recoveries",
        check.seqs.total, ITERATIONS
    );
}

/// A batch writer killed while its span is claimed in the first segment,
/// another writer moving the write position two segments on, then the last
/// process closing the queue cleanly: the next open takes the full walk (no
/// crash of this boot is on record), which covers only the write position's
/// segment on, so the dead span is left for the depth recount, which walks
/// from the default group's cursor. It must turn the span into padding and
/// count every record after it (it used to stop there and report a depth of
/// one: the flake in the test above, whose parent, the last process with
/// the queue open once its children were killed, closes it cleanly).
#[test]
fn a_dead_span_in_an_earlier_segment_is_padded_by_the_recovery_recount_and_the_depth_is_exact() {
    if mp_support::role().is_some() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let store = Store::open(&dir, &opts()).unwrap();
    let mut procs = Procs {
        dir: dir.clone(),
        stop: tmp.path().join("stop"),
        next_id: 1,
    };
    // Stuck inside record 5 of its first batch: the span is claimed at the
    // start of segment 0, nothing of it committed.
    let (mut victim, _) = procs.spawn("batch", "stuck:5");
    victim.expect_line("STUCK", PATIENCE);
    let mut appended = 0u64;
    while store.geometry().segment_of(store.tail_position()) < 2 {
        store.append(&[7u8; 100]).unwrap();
        appended += 1;
    }
    victim.kill9();
    drop(store); // the last handle: a clean close
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    let rep = s.recovery_report().clone();
    assert!(
        rep.ran && !rep.fast,
        "the premise: a full recovery after a clean close, got {rep:?}"
    );
    assert_eq!(rep.pending_padded, 1, "the dead span is padded: {rep:?}");
    assert_eq!(s.depth(), appended, "the depth after recovery: {rep:?}");
    let mut t = s.tailer();
    let mut read = 0u64;
    while let Some(len) = t.next_with(|r| r.payload.len()).unwrap() {
        assert_eq!(len, 100, "only the parent's records are in the log");
        read += 1;
    }
    assert_eq!(read, appended);
}
