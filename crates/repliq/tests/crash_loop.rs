//! Crash loop: writer processes are killed with SIGKILL, again and again,
//! while other writers and a reader process keep going.
//!
//! Each iteration spawns a *victim* writer and kills it, either at a random
//! moment of a bursty append loop, or while it is deliberately stuck inside
//! `append_with`'s fill closure (its frame claimed but not committed). After
//! each kill the parent opens the queue, reads everything written since the
//! last iteration, and checks every payload's own checksum and that each
//! writer's sequence numbers are contiguous; it then waits for the surviving
//! writers to make progress, and records how long it took from the kill until
//! a reader got past the write position of the moment of the kill.
//!
//! Whether a reader detected a dead writer or waited out the recovery
//! timeout is judged by how long it was held at that writer's frame (the
//! clock the store's timeout runs on), never by the time since the kill,
//! which a loaded machine stretches at will.
//!
//! Every `ALL_DEAD_EVERY` iterations every process is killed at once, so the
//! parent's open runs the exclusive recovery, which must pad the victim's
//! pending frame and cut nothing.

mod mp_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mp_support::{
    check_payload, child_exit, fill_payload, payload_len, run_reader, say, ChildProc, Rng,
    SeqTracker, PATIENCE,
};
use repliq::store::{Durability, Store, StoreOptions};

const ENTRY: &str = "crash_loop_child_entry";
const ITERATIONS: u32 = 300;
const ALL_DEAD_EVERY: u32 = 20;
const SURVIVORS: usize = 2;
const MAX_FILLER: usize = 40;
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// A reader held at a frame for less than this cannot have waited out the
/// recovery timeout (the store's coarse clock errs by a few milliseconds).
const SURELY_NOT_TIMED_OUT: Duration = Duration::from_millis(500);
/// A child, a read or the survivors that take longer than this hang.
const STEP_DEADLINE: Duration = PATIENCE;

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(64 * 1024)
        .capacity(100_000_000)
        .durability(Durability::None)
        .recovery_timeout(RECOVERY_TIMEOUT)
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

/// Dispatches a child role; a no-op when run as an ordinary test.
#[test]
fn crash_loop_child_entry() {
    let Some(role) = mp_support::role() else {
        return;
    };
    let dir = PathBuf::from(env("CL_DIR"));
    let r = match role.as_str() {
        "writer" => run_writer(&dir, env("CL_ID").parse().unwrap(), &env("CL_MODE")),
        "reader" => run_reader(&dir, Path::new(&env("CL_STOP"))),
        o => Err(format!("unknown role {o}")),
    };
    child_exit(r)
}

/// Modes: `steady` (survivor), `burst` (victim killed at a random moment),
/// `stuck:<k>` (victim that blocks inside the fill closure of message `k`).
fn run_writer(dir: &Path, w: u32, mode: &str) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    let stuck_at: Option<u64> = mode.strip_prefix("stuck:").map(|k| k.parse().unwrap());
    let mut seq = 0u64;
    loop {
        let len = payload_len(w, seq, MAX_FILLER);
        let stuck = stuck_at == Some(seq);
        store
            .append_with(len, |b| {
                fill_payload(b, w, seq);
                if stuck {
                    // Claimed, not committed: wait here to be killed.
                    say("STUCK");
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| format!("writer {w} seq {seq}: {e}"))?;
        if seq == 0 {
            say("READY");
        }
        seq += 1;
        match mode {
            "steady" => std::thread::sleep(Duration::from_micros(200)),
            _ if seq % 20 == 0 => std::thread::sleep(Duration::from_micros(500)),
            _ => {}
        }
    }
}

struct Env {
    dir: PathBuf,
    stop: PathBuf,
    next_id: u32,
}

impl Env {
    fn spawn_writer(&mut self, mode: &str) -> (ChildProc, u32) {
        let id = self.next_id;
        self.next_id += 1;
        let name = format!("writer {id} ({mode})");
        let c = ChildProc::spawn(
            ENTRY,
            &name,
            "writer",
            &[
                ("CL_DIR", self.dir.to_string_lossy().into_owned()),
                ("CL_ID", id.to_string()),
                ("CL_MODE", mode.to_string()),
            ],
        );
        (c, id)
    }
    fn spawn_reader(&self) -> ChildProc {
        let mut c = ChildProc::spawn(
            ENTRY,
            "reader",
            "reader",
            &[
                ("CL_DIR", self.dir.to_string_lossy().into_owned()),
                ("CL_STOP", self.stop.to_string_lossy().into_owned()),
            ],
        );
        c.expect_line("READY", STEP_DEADLINE);
        c
    }
}

/// Reads from `pos` until the tailer's position reaches `end`, checking
/// every record; returns the new position and the frames the reader was
/// held at for more than 50 ms.
fn read_until(
    store: &Store,
    pos: u64,
    end: u64,
    seqs: &mut SeqTracker,
    what: &str,
) -> (u64, Vec<Held>) {
    let mut t = store.tailer();
    t.seek(pos)
        .unwrap_or_else(|e| panic!("{what}: seek {pos}: {e}"));
    let deadline = Instant::now() + STEP_DEADLINE;
    let mut held: Vec<Held> = Vec::new();
    let mut hold: Option<Hold> = None;
    let mut end_hold = |hold: &mut Option<Hold>| {
        if let Some(Hold {
            pos,
            since,
            words: Some((word0, word1)),
        }) = hold.take()
        {
            held.push(Held {
                pos,
                word0,
                word1,
                for_: since.elapsed(),
            });
        }
    };
    while t.position() < end {
        match t.next_with(|r| (r.id, check_payload(r.payload))) {
            Ok(Some((id, Ok((w, s))))) => {
                end_hold(&mut hold);
                seqs.see(id, w, s).unwrap_or_else(|e| panic!("{what}: {e}"))
            }
            Ok(Some((id, Err(e)))) => panic!("{what}: id {id}: {e}"),
            Ok(None) => {
                let p = t.position();
                if hold.as_ref().is_some_and(|h| h.pos != p) {
                    // Got past a frame that became padding.
                    end_hold(&mut hold);
                }
                let h = hold.get_or_insert(Hold {
                    pos: p,
                    since: Instant::now(),
                    words: None,
                });
                if h.words.is_none() && h.since.elapsed() > Duration::from_millis(50) {
                    h.words = Some(raw_frame(store, p));
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: stuck at {} (target {end}) for {STEP_DEADLINE:?}, stats {:?}",
                    t.position(),
                    store.stats()
                );
                std::hint::spin_loop();
            }
            Err(e) => panic!("{what}: read error at {}: {e}", t.position()),
        }
    }
    end_hold(&mut hold);
    (t.position(), held)
}

/// The frame a reader is held at now: since when, and its header words once
/// the hold passed 50 ms.
struct Hold {
    pos: u64,
    since: Instant,
    words: Option<(u64, u64)>,
}

/// A frame a reader was held up at.
#[derive(Debug, Clone, Copy)]
struct Held {
    pos: u64,
    word0: u64,
    word1: u64,
    /// How long the reader waited at it.
    for_: Duration,
}

impl Held {
    /// Why the owner of this pending frame could not be found dead quickly.
    fn class(&self) -> &'static str {
        if self.word1 == 0 {
            "owner pid not recorded yet (killed between the claim CAS and the pid store)"
        } else if self.word1 >> 32 != 0 {
            "word1 already overwritten by commit (killed between the word1 store and the commit CAS)"
        } else {
            "owner pid recorded"
        }
    }

    /// The pid recorded as the frame's owner, if any.
    fn owner(&self) -> Option<u32> {
        (self.word1 != 0 && self.word1 >> 32 == 0).then_some(self.word1 as u32)
    }
}

/// The raw header words at `pos`, read from the segment file.
fn raw_frame(store: &Store, pos: u64) -> (u64, u64) {
    use std::os::unix::fs::FileExt;
    let geo = store.geometry();
    let path = store.dir().join(format!("{:020}.seg", geo.segment_of(pos)));
    let mut b = [0u8; 16];
    let f = std::fs::File::open(&path).unwrap();
    f.read_exact_at(&mut b, geo.offset_of(pos)).unwrap();
    (
        u64::from_le_bytes(b[..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..].try_into().unwrap()),
    )
}

#[derive(Default)]
struct Times {
    /// Kill to "a reader is past the write position of the moment of the kill".
    to_reader: Vec<Duration>,
    /// The subset of `to_reader` where the victim died holding a pending frame.
    to_reader_pending: Vec<Duration>,
    /// Store::open while other processes had the queue open.
    open_shared: Vec<Duration>,
    /// Store::open running the exclusive recovery.
    open_recovery: Vec<Duration>,
}

fn summary(name: &str, v: &mut [Duration]) -> String {
    v.sort_unstable();
    format!(
        "{name}: n={} min={:?} p50={:?} p99={:?} max={:?}",
        v.len(),
        v.first().copied().unwrap_or_default(),
        mp_support::percentile(v, 50.0),
        mp_support::percentile(v, 99.0),
        v.last().copied().unwrap_or_default()
    )
}

#[test]
fn crash_loop_sigkill_writers() {
    if mp_support::role().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut env = Env {
        dir: tmp.path().join("q"),
        stop: tmp.path().join("stop"),
        next_id: 0,
    };
    drop(Store::open(&env.dir, &opts()).unwrap());
    let (mut rng, seed) = Rng::from_time();
    println!("crash loop seed {seed}");
    let started = Instant::now();

    let mut reader = env.spawn_reader();
    let mut survivors: Vec<(ChildProc, u32)> =
        (0..SURVIVORS).map(|_| env.spawn_writer("steady")).collect();
    for (c, _) in &mut survivors {
        c.expect_line("READY", STEP_DEADLINE);
    }

    let mut seqs = SeqTracker::default();
    let mut pos = Store::open(&env.dir, &StoreOptions::open())
        .unwrap()
        .first_position();
    let mut times = Times::default();
    let (mut pending_kills, mut recoveries) = (0u32, 0u32);
    // Stuck frames readers have turned into padding, as last seen.
    let mut unblocked_seen = 0u64;
    let mut timeout_waits: std::collections::BTreeMap<&str, u32> = Default::default();

    for it in 0..ITERATIONS {
        let all_dead = it % ALL_DEAD_EVERY == ALL_DEAD_EVERY - 1;
        let stuck_at = (all_dead || rng.range(0, 2) == 0).then(|| rng.range(1, 200));
        let mode = match stuck_at {
            Some(k) => format!("stuck:{k}"),
            None => "burst".to_string(),
        };
        let (mut victim, vid) = env.spawn_writer(&mode);
        victim.expect_line("READY", STEP_DEADLINE);
        if stuck_at.is_some() {
            victim.expect_line("STUCK", STEP_DEADLINE);
        } else {
            std::thread::sleep(Duration::from_micros(rng.range(0, 30_000)));
        }
        for (c, id) in &mut survivors {
            assert!(
                c.exited().is_none(),
                "survivor writer {id} died: {:?}",
                c.log
            );
        }
        assert!(reader.exited().is_none(), "reader died: {:?}", reader.log);

        if all_dead {
            // Everyone at once: SIGKILL all, then reap all.
            for c in std::iter::once(&mut victim)
                .chain(survivors.iter_mut().map(|(c, _)| c))
                .chain(std::iter::once(&mut reader))
            {
                let _ = c.child.kill();
            }
            victim.kill9();
            reader.kill9();
            for (c, _) in &mut survivors {
                c.kill9();
            }
            let t0 = Instant::now();
            let store = Store::open(&env.dir, &StoreOptions::open()).unwrap();
            times.open_recovery.push(t0.elapsed());
            recoveries += 1;
            let rep = store.recovery_report().clone();
            assert!(rep.ran, "iteration {it}: exclusive open must run recovery");
            // Padded by recovery, or already by the reader process: the
            // victim stays stuck past the recovery timeout (1 s) when this
            // machine is slow between its STUCK line and the kill, and a
            // reader then pads a live owner's frame by the same rule.
            let by_reader = store.stats().unblocked > unblocked_seen;
            assert!(
                rep.pending_padded >= 1 || by_reader,
                "iteration {it}: the stuck victim's frame is padded: {rep:?}"
            );
            unblocked_seen = store.stats().unblocked;
            assert!(
                rep.corrupt.is_empty(),
                "iteration {it}: no corruption after SIGKILL: {rep:?}"
            );
            assert_eq!(
                rep.cut_from, None,
                "iteration {it}: SIGKILL tears nothing: {rep:?}"
            );
            // Full check from the start.
            let mut full = SeqTracker::default();
            let end = store.tail_position();
            pos = read_until(&store, store.first_position(), end, &mut full, "full scan").0;
            assert_eq!(
                rep.depth, full.total,
                "recovered depth counts every record on disk"
            );
            assert!(full.total >= seqs.total);
            for (w, &n) in &seqs.next {
                assert!(
                    full.count(*w) >= n,
                    "writer {w} lost records across recovery"
                );
            }
            seqs = full;
            assert_eq!(
                seqs.count(vid),
                stuck_at.unwrap(),
                "victim's committed prefix survives exactly"
            );
            drop(store);
            reader = env.spawn_reader();
            survivors = (0..SURVIVORS).map(|_| env.spawn_writer("steady")).collect();
            for (c, _) in &mut survivors {
                c.expect_line("READY", STEP_DEADLINE);
            }
            continue;
        }

        victim.kill9();
        let killed = Instant::now();
        let store = Store::open(&env.dir, &StoreOptions::open()).unwrap();
        times.open_shared.push(killed.elapsed());
        assert!(
            !store.recovery_report().ran,
            "others have the queue open: no exclusive recovery"
        );
        let unblocked_before = store.stats().unblocked;
        let end = store.tail_position();
        let (p, held) = read_until(&store, pos, end, &mut seqs, &format!("iteration {it}"));
        pos = p;
        let took = killed.elapsed();
        times.to_reader.push(took);
        // Held at the dead victim's own frame: its pid is recorded and dead.
        let held_at_victim: Vec<&Held> = held
            .iter()
            .filter(|h| h.owner() == Some(victim.pid()))
            .collect();
        for h in &held {
            println!(
                "iteration {it} ({mode}, victim pid {}): reader held {:?} at {} (word0 {:#018x} word1 {:#018x}), {took:?} after the kill: {}",
                victim.pid(),
                h.for_,
                h.pos,
                h.word0,
                h.word1,
                h.class()
            );
            if h.for_ >= SURELY_NOT_TIMED_OUT {
                *timeout_waits.entry(h.class()).or_insert(0) += 1;
            }
        }
        // Only a frame whose owner cannot be known may cost the timeout; a
        // recorded, dead owner pid must be detected within milliseconds of the
        // reader reaching its frame.
        for h in &held_at_victim {
            assert!(
                h.for_ < SURELY_NOT_TIMED_OUT,
                "iteration {it}: the reader waited {:?} at {h:?} although its owner (the victim) \
                 is recorded and dead: the dead pid was not detected, the recovery timeout was waited",
                h.for_
            );
        }
        let unblocked = store.stats().unblocked;
        unblocked_seen = unblocked;
        if let Some(k) = stuck_at {
            // The first `k` messages were acknowledged; the stuck one is padding.
            assert_eq!(
                seqs.count(vid),
                k,
                "iteration {it}: victim's committed messages"
            );
            assert!(unblocked > 0, "the stuck frame was turned into padding");
        } else {
            assert!(
                seqs.count(vid) >= 1,
                "iteration {it}: victim wrote before READY"
            );
        }
        if stuck_at.is_some() || unblocked > unblocked_before {
            times.to_reader_pending.push(took);
            pending_kills += 1;
        }
        // The surviving writers continue after the kill.
        let counts: Vec<u64> = survivors.iter().map(|&(_, id)| seqs.count(id)).collect();
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let end = store.tail_position();
            pos = read_until(
                &store,
                pos,
                end,
                &mut seqs,
                &format!("iteration {it} (survivors)"),
            )
            .0;
            if survivors
                .iter()
                .zip(&counts)
                .all(|(&(_, id), &n)| seqs.count(id) > n)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {it}: survivors made no progress after the kill"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    // Wind down: kill the writers, then the reader must reach the end.
    for (c, _) in &mut survivors {
        c.kill9();
    }
    let store = Store::open(&env.dir, &StoreOptions::open()).unwrap();
    let end = store.tail_position();
    std::fs::write(&env.stop, end.to_string()).unwrap();
    let done = reader.expect_line("DONE", STEP_DEADLINE);
    reader.wait_ok(STEP_DEADLINE);
    let mut full = SeqTracker::default();
    read_until(
        &store,
        store.first_position(),
        end,
        &mut full,
        "final full scan",
    );
    let reader_total: u64 = done.trim_start_matches("DONE ").parse().unwrap();
    assert_eq!(
        reader_total, full.total,
        "the reader process saw every record"
    );
    assert!(full.total >= seqs.total);
    let st = store.stats();
    drop(store);
    // Everyone is gone now: this open is exclusive and runs recovery once more.
    let store = Store::open(&env.dir, &StoreOptions::open()).unwrap();
    let rep = store.recovery_report().clone();
    assert!(
        rep.ran && rep.corrupt.is_empty() && rep.cut_from.is_none(),
        "{rep:?}"
    );
    assert_eq!(rep.depth, full.total);
    drop(store);

    // Garbage left by writers killed while creating a segment.
    let tmp_files: Vec<String> = std::fs::read_dir(&env.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".seg.tmp"))
        .collect();

    println!(
        "crash loop: {ITERATIONS} iterations in {:?}; {} writers; {} records; {pending_kills} kills left a pending frame; \
         {recoveries} exclusive recoveries; unblocked {}; segments up to {}; leftover tmp files {:?}",
        started.elapsed(),
        env.next_id,
        full.total,
        st.unblocked,
        st.tail >> 16,
        tmp_files
    );
    println!("  readers waited for the {RECOVERY_TIMEOUT:?} recovery timeout: {timeout_waits:?}");
    println!(
        "  {}",
        summary(
            "kill -> reader past the kill-time tail (all kills)",
            &mut times.to_reader
        )
    );
    println!(
        "  {}",
        summary(
            "kill -> reader past a dead writer's pending frame",
            &mut times.to_reader_pending
        )
    );
    println!(
        "  {}",
        summary("Store::open, shared", &mut times.open_shared)
    );
    println!(
        "  {}",
        summary(
            "Store::open with exclusive recovery",
            &mut times.open_recovery
        )
    );
}
