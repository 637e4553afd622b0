//! Real multi-process test: 4 writer processes, 3 competing consumer
//! processes and 2 broadcast tailer processes share one queue directory.
//!
//! The children are this test binary re-executed (see `mp_support`). Each
//! child writes what it saw to a file; the parent checks that every message
//! was dequeued exactly once, that each writer's order is kept in every
//! stream, and that both tailers saw the same 200,000 records in the same order.

mod mp_support;

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mp_support::{check_payload, child_exit, fill_payload, payload_len, say, ChildProc, PATIENCE};
use repliq::store::{Durability, IdleStrategy, Store, StoreOptions};

const ENTRY: &str = "multiprocess_child_entry";
const WRITERS: u32 = 4;
const PER_WRITER: u64 = 50_000;
const TOTAL: u64 = WRITERS as u64 * PER_WRITER;
const CONSUMERS: u32 = 3;
const TAILERS: u32 = 2;
const MAX_FILLER: usize = 24;
const SEGMENT: u64 = 1 << 20;
/// A child that has not finished by then has hung (it takes seconds, more
/// on a busy machine: nine processes share two cores here).
const CHILD_DEADLINE: Duration = Duration::from_secs(3 * 60);

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(SEGMENT)
        .capacity(1_000_000)
        .durability(Durability::None)
}

fn env_path(k: &str) -> PathBuf {
    PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("{k} not set")))
}

/// Dispatches a child role; a no-op when run as an ordinary test.
#[test]
fn multiprocess_child_entry() {
    let Some(role) = mp_support::role() else {
        return;
    };
    let dir = env_path("MP_DIR");
    let out = env_path("MP_OUT");
    let (kind, n) = role.split_once(':').expect("role kind:n");
    let n: u32 = n.parse().expect("role number");
    let r = match kind {
        "writer" => run_writer(&dir, &out, n),
        "consumer" => run_consumer(&dir, &out, n),
        "tailer" => run_tailer(&dir, &out, n),
        o => Err(format!("unknown role {o}")),
    };
    child_exit(r)
}

/// All children start appending/reading at about the same time, once the
/// parent has seen every child ready. (Only a convenience: a child that
/// starts early is still correct, so the wait is bounded and never fails.)
fn wait_go(dir: &Path) {
    let go = dir.with_extension("go");
    let deadline = Instant::now() + PATIENCE;
    while !go.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run_writer(dir: &Path, out: &Path, w: u32) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    say("READY");
    wait_go(dir);
    let mut ids = Vec::with_capacity(PER_WRITER as usize);
    for seq in 0..PER_WRITER {
        let len = payload_len(w, seq, MAX_FILLER);
        let id = store
            .append_with(len, |b| fill_payload(b, w, seq))
            .map_err(|e| format!("writer {w} append {seq}: {e}"))?;
        ids.push(id);
    }
    let mut f = BufWriter::new(std::fs::File::create(out).map_err(|e| e.to_string())?);
    for id in ids {
        f.write_all(&id.to_le_bytes()).map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())
}

/// Records `(id, writer, seq)` as 20 bytes each.
fn write_records(out: &Path, recs: &[(u64, u32, u64)]) -> Result<(), String> {
    let mut f = BufWriter::new(std::fs::File::create(out).map_err(|e| e.to_string())?);
    for &(id, w, s) in recs {
        f.write_all(&id.to_le_bytes()).map_err(|e| e.to_string())?;
        f.write_all(&w.to_le_bytes()).map_err(|e| e.to_string())?;
        f.write_all(&s.to_le_bytes()).map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())
}

fn read_records(p: &Path) -> Vec<(u64, u32, u64)> {
    let mut b = Vec::new();
    std::fs::File::open(p)
        .and_then(|mut f| f.read_to_end(&mut b))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(b.len() % 20, 0);
    b.chunks_exact(20)
        .map(|c| {
            (
                u64::from_le_bytes(c[0..8].try_into().unwrap()),
                u32::from_le_bytes(c[8..12].try_into().unwrap()),
                u64::from_le_bytes(c[12..20].try_into().unwrap()),
            )
        })
        .collect()
}

fn run_consumer(dir: &Path, out: &Path, c: u32) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    let mut consumer = store.consumer();
    // One consumer yields, the others sleep on the shared futex.
    let idle = if c == 0 {
        IdleStrategy::Yield
    } else {
        IdleStrategy::Block
    };
    say("READY");
    wait_go(dir);
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut got = Vec::new();
    let mut bad: Option<String> = None;
    loop {
        let r = consumer
            .dequeue_wait_with(idle, Some(Duration::from_millis(20)), |r| {
                (r.id, check_payload(r.payload))
            })
            .map_err(|e| format!("consumer {c}: {e}"))?;
        match r {
            Some((id, Ok((w, s)))) => got.push((id, w, s)),
            Some((id, Err(e))) => {
                bad.get_or_insert(format!("consumer {c}: id {id}: {e}"));
            }
            // Stop once the whole group has taken every message.
            None if store.stats().groups[0].count >= TOTAL => break,
            None => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "consumer {c} timed out: group count {}, took {}",
                store.stats().groups[0].count,
                got.len()
            ));
        }
    }
    if let Some(b) = bad {
        return Err(b);
    }
    write_records(out, &got)
}

fn run_tailer(dir: &Path, out: &Path, t: u32) -> Result<(), String> {
    let store = Store::open(dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
    // Named, so that retention (driven by the consumers) keeps what it has not read.
    let mut tailer = store
        .named_tailer(&format!("t{t}"))
        .map_err(|e| e.to_string())?;
    let idle = if t == 0 {
        IdleStrategy::Block
    } else {
        IdleStrategy::Yield
    };
    say("READY");
    wait_go(dir);
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut got = Vec::with_capacity(TOTAL as usize);
    while (got.len() as u64) < TOTAL {
        let r = tailer
            .next_wait_with(idle, Some(Duration::from_millis(20)), |r| {
                (r.id, check_payload(r.payload))
            })
            .map_err(|e| format!("tailer {t}: {e}"))?;
        match r {
            Some((id, Ok((w, s)))) => got.push((id, w, s)),
            Some((id, Err(e))) => return Err(format!("tailer {t}: id {id}: {e}")),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(format!("tailer {t} timed out after {} records", got.len()));
        }
    }
    write_records(out, &got)
}

#[test]
fn four_writers_three_consumers_two_tailers() {
    if mp_support::role().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let outs = tmp.path().join("out");
    std::fs::create_dir(&outs).unwrap();
    {
        // Create the queue and both named tailers before anyone consumes, so
        // retention cannot delete what a tailer has yet to read.
        let s = Store::open(&dir, &opts()).unwrap();
        for t in 0..TAILERS {
            s.named_tailer(&format!("t{t}")).unwrap();
        }
    }
    let started = Instant::now();
    let mut children = Vec::new();
    let spawn = |role: String, out: PathBuf| {
        ChildProc::spawn(
            ENTRY,
            &role,
            &role,
            &[
                ("MP_DIR", dir.to_string_lossy().into_owned()),
                ("MP_OUT", out.to_string_lossy().into_owned()),
            ],
        )
    };
    for w in 0..WRITERS {
        children.push((
            spawn(format!("writer:{w}"), outs.join(format!("w{w}"))),
            'w',
            w,
        ));
    }
    for c in 0..CONSUMERS {
        children.push((
            spawn(format!("consumer:{c}"), outs.join(format!("c{c}"))),
            'c',
            c,
        ));
    }
    for t in 0..TAILERS {
        children.push((
            spawn(format!("tailer:{t}"), outs.join(format!("t{t}"))),
            't',
            t,
        ));
    }
    for (ch, _, _) in &mut children {
        ch.expect_line("READY", PATIENCE);
    }
    std::fs::write(dir.with_extension("go"), b"").unwrap();
    // Writers first, then the readers, which stop once everything is read.
    for (ch, _, _) in children.iter_mut().filter(|c| c.1 == 'w') {
        ch.wait_ok(CHILD_DEADLINE);
    }
    let writers_done = started.elapsed();
    for (ch, _, _) in children.iter_mut().filter(|c| c.1 != 'w') {
        ch.wait_ok(CHILD_DEADLINE);
    }
    let all_done = started.elapsed();

    // What each writer was told: (writer, seq) -> id.
    let mut id_of: HashMap<(u32, u64), u64> = HashMap::new();
    for w in 0..WRITERS {
        let b = std::fs::read(outs.join(format!("w{w}"))).unwrap();
        assert_eq!(b.len() as u64, PER_WRITER * 8);
        let ids: Vec<u64> = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            ids.windows(2).all(|p| p[0] < p[1]),
            "writer {w}: ids strictly increase"
        );
        for (s, id) in ids.into_iter().enumerate() {
            assert!(id_of.insert((w, s as u64), id).is_none());
        }
    }
    let mut distinct: Vec<u64> = id_of.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len() as u64,
        TOTAL,
        "ids handed to writers are unique"
    );

    // Consumers: every message exactly once overall, writer order kept per consumer.
    let mut taken: HashMap<(u32, u64), u32> = HashMap::new();
    let mut per_consumer = Vec::new();
    for c in 0..CONSUMERS {
        let recs = read_records(&outs.join(format!("c{c}")));
        per_consumer.push(recs.len());
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        let mut last_id = 0;
        for &(id, w, s) in &recs {
            assert!(id > last_id, "consumer {c}: ids out of order at {id}");
            last_id = id;
            if let Some(&p) = last_seq.get(&w) {
                assert!(s > p, "consumer {c}: writer {w} seq {s} after {p}");
            }
            last_seq.insert(w, s);
            assert_eq!(
                id_of.get(&(w, s)),
                Some(&id),
                "consumer {c}: ({w},{s}) has the writer's id"
            );
            if let Some(other) = taken.insert((w, s), c) {
                panic!("message ({w},{s}) id {id} dequeued by consumers {other} and {c}");
            }
        }
    }
    assert_eq!(
        taken.len() as u64,
        TOTAL,
        "every message dequeued (per consumer {per_consumer:?})"
    );

    // Tailers: all messages, each writer in order, both identical.
    let t0 = read_records(&outs.join("t0"));
    for t in 0..TAILERS {
        let recs = read_records(&outs.join(format!("t{t}")));
        assert_eq!(recs.len() as u64, TOTAL, "tailer {t} saw everything");
        let mut next: HashMap<u32, u64> = HashMap::new();
        for (i, &(id, w, s)) in recs.iter().enumerate() {
            let e = next.entry(w).or_insert(0);
            assert_eq!(s, *e, "tailer {t}: record {i} writer {w} out of order");
            *e += 1;
            assert_eq!(id_of.get(&(w, s)), Some(&id), "tailer {t}: id of ({w},{s})");
        }
        assert_eq!(recs, t0, "tailer {t} saw the same sequence as tailer 0");
    }

    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    let st = s.stats();
    assert_eq!(st.groups[0].count, TOTAL);
    assert_eq!(st.depth, 0);
    assert!(st.low_segment > 0, "retention deleted consumed segments");
    assert!(
        s.geometry().segment_of(st.tail) >= 5,
        "segments rolled: tail {}",
        st.tail
    );
    println!(
        "multiprocess: {TOTAL} messages, writers done in {writers_done:?}, readers in {all_done:?}; \
         per consumer {per_consumer:?}; segments 0..={}, low {}",
        s.geometry().segment_of(st.tail),
        st.low_segment
    );
}
