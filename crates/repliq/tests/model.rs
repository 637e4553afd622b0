//! Model-based property test of the storage layer.
//!
//! Random sequences of appends, dequeues (default and named groups), tailer
//! reads, seeks and reopen-from-disk are run against a `Store` with tiny
//! segments (so segments roll and retention deletes) and a tiny capacity (so
//! `Full` is hit), and every observable result is compared with a plain
//! in-memory model.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use repliq::store::{Consumer, Durability, Store, StoreError, StoreOptions, Tailer};

const SEGMENT: u64 = 4096;
const CAPACITY: u64 = 20;
const GROUPS: [&str; 2] = ["g0", "g1"];
const NAMED: &str = "nt";

#[derive(Debug, Clone, Copy)]
enum SeekKind {
    Start,
    End,
    ToId(Index),
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `len` bytes derived from `seed`.
    Append {
        len: usize,
        seed: u8,
    },
    Dequeue,
    DequeueGroup(usize),
    TailerNext(usize),
    NamedTailerNext,
    /// Seek tailer 0, 1 (unnamed) or 2 (the named tailer).
    Seek(usize, SeekKind),
    Reopen,
    CheckCapacity,
}

fn op() -> impl Strategy<Value = Op> {
    let seek = prop_oneof![
        Just(SeekKind::Start),
        Just(SeekKind::End),
        any::<Index>().prop_map(SeekKind::ToId),
    ];
    prop_oneof![
        8 => (0usize..600, any::<u8>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        5 => Just(Op::Dequeue),
        4 => (0usize..2).prop_map(Op::DequeueGroup),
        3 => (0usize..2).prop_map(Op::TailerNext),
        4 => Just(Op::NamedTailerNext),
        2 => ((0usize..3), seek).prop_map(|(t, k)| Op::Seek(t, k)),
        1 => Just(Op::Reopen),
        1 => Just(Op::CheckCapacity),
    ]
}

fn payload(len: usize, seed: u8, n: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (n as u8))
        .collect()
}

fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        &StoreOptions::create()
            .segment_size(SEGMENT)
            .capacity(CAPACITY)
            .durability(Durability::None),
    )
    .expect("open store")
}

/// The system under test: the store and every handle on it.
struct Sut {
    store: Store,
    tailers: [Tailer; 2],
    named: Tailer,
    default: Consumer,
    groups: [Option<Consumer>; 2],
}

/// The model: the appended messages and every reader's index into them.
#[derive(Default)]
struct Model {
    msgs: Vec<(u64, Vec<u8>)>,
    default: usize,
    groups: [Option<usize>; 2],
    tailers: [usize; 2],
    named: usize,
}

impl Model {
    /// Index of the first message at or after position `first`.
    fn first_retained(&self, first: u64) -> usize {
        self.msgs.partition_point(|(id, _)| *id < first)
    }
    fn expect(&self, idx: usize) -> Option<(u64, Vec<u8>)> {
        self.msgs.get(idx).cloned()
    }
}

fn as_pair(r: Option<repliq::store::OwnedRecord>) -> Option<(u64, Vec<u8>)> {
    r.map(|r| (r.id, r.payload))
}

/// Reads from an unnamed tailer, which may have fallen behind retention.
fn tailer_next(
    t: &mut Tailer,
    store: &Store,
    model_idx: &mut usize,
    m: &Model,
) -> Result<(), TestCaseError> {
    match t.next() {
        Ok(r) => {
            prop_assert_eq!(as_pair(r), m.expect(*model_idx), "unnamed tailer read");
            if *model_idx < m.msgs.len() {
                *model_idx += 1;
            }
        }
        Err(StoreError::NotRetained { id, first }) => {
            // Only legitimate if the tailer really sits before the oldest segment.
            let now_first = store.first_position();
            prop_assert_eq!(first, now_first);
            prop_assert!(
                id < first && t.position() == id,
                "NotRetained for a retained id {id} (first {first})"
            );
            t.seek_start();
            let ni = m.first_retained(now_first);
            prop_assert!(ni >= *model_idx, "retention cannot move a tailer back");
            *model_idx = ni;
        }
        Err(e) => prop_assert!(false, "unexpected tailer error: {e}"),
    }
    Ok(())
}

/// Runs `ops`; returns the final oldest retained position.
fn run(ops: Vec<Op>) -> Result<u64, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let store = open(&path);
    let mut sut = Some(Sut {
        tailers: [store.tailer(), store.tailer()],
        named: store.named_tailer(NAMED).unwrap(),
        default: store.consumer(),
        groups: [None, None],
        store,
    });
    let mut m = Model::default();
    let mut appended = 0usize;

    for op in ops {
        let s = sut.as_mut().unwrap();
        match op {
            Op::Append { len, seed } => {
                let p = payload(len, seed, appended);
                appended += 1;
                let undequeued = (m.msgs.len() - m.default) as u64;
                match s.store.append(&p) {
                    Ok(id) => {
                        prop_assert!(undequeued < CAPACITY, "append accepted beyond capacity");
                        if let Some((last, _)) = m.msgs.last() {
                            prop_assert!(id > *last, "ids strictly increase");
                        }
                        m.msgs.push((id, p));
                    }
                    Err(StoreError::Full { capacity }) => {
                        prop_assert_eq!(capacity, CAPACITY);
                        prop_assert_eq!(undequeued, CAPACITY, "Full reported below capacity");
                    }
                    Err(e) => prop_assert!(false, "append failed: {e}"),
                }
            }
            Op::Dequeue => {
                let r = s
                    .default
                    .dequeue()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(as_pair(r), m.expect(m.default), "default dequeue");
                m.default = (m.default + 1).min(m.msgs.len());
            }
            Op::DequeueGroup(g) => {
                if s.groups[g].is_none() {
                    let first = s.store.first_position();
                    s.groups[g] = Some(s.store.group_consumer(GROUPS[g]).unwrap());
                    // A new group starts at the oldest retained record.
                    m.groups[g] = Some(m.first_retained(first));
                }
                let c = s.groups[g].as_mut().unwrap();
                let idx = m.groups[g].get_or_insert(0);
                let r = c
                    .dequeue()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(as_pair(r), m.msgs.get(*idx).cloned(), "group {} dequeue", g);
                *idx = (*idx + 1).min(m.msgs.len());
            }
            Op::TailerNext(i) => {
                let mut idx = m.tailers[i];
                tailer_next(&mut s.tailers[i], &s.store, &mut idx, &m)?;
                m.tailers[i] = idx;
            }
            Op::NamedTailerNext => {
                let r = s
                    .named
                    .next()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(as_pair(r), m.expect(m.named), "named tailer read");
                m.named = (m.named + 1).min(m.msgs.len());
            }
            Op::Seek(t, kind) => {
                let first = s.store.first_position();
                let (tailer, idx) = if t < 2 {
                    (&mut s.tailers[t], &mut m.tailers[t])
                } else {
                    (&mut s.named, &mut m.named)
                };
                match kind {
                    SeekKind::Start => {
                        tailer.seek_start();
                        *idx = m.msgs.partition_point(|(id, _)| *id < first);
                    }
                    SeekKind::End => {
                        tailer.seek_end();
                        *idx = m.msgs.len();
                    }
                    SeekKind::ToId(ix) => {
                        if m.msgs.is_empty() {
                            continue;
                        }
                        let k = ix.index(m.msgs.len());
                        let id = m.msgs[k].0;
                        match tailer.seek(id) {
                            Ok(()) => {
                                prop_assert!(
                                    id >= first,
                                    "seek to deleted id {id} succeeded (first {first})"
                                );
                                *idx = k;
                            }
                            Err(StoreError::NotRetained {
                                id: e_id,
                                first: e_first,
                            }) => {
                                prop_assert_eq!(e_id, id);
                                prop_assert_eq!(e_first, first);
                                prop_assert!(id < first, "retained id {id} reported NotRetained");
                            }
                            Err(e) => prop_assert!(false, "seek({id}) failed: {e}"),
                        }
                    }
                }
            }
            Op::Reopen => {
                let old = sut.take().unwrap();
                let positions = [old.tailers[0].position(), old.tailers[1].position()];
                let tail_before = old.store.tail_position();
                let had_groups = [old.groups[0].is_some(), old.groups[1].is_some()];
                drop(old);
                let store = open(&path);
                let rep = store.recovery_report().clone();
                prop_assert!(rep.ran, "single process: recovery must run");
                prop_assert_eq!(rep.cut_from, None, "clean log cut on reopen");
                prop_assert!(rep.corrupt.is_empty(), "clean log reported corrupt");
                prop_assert_eq!(rep.tail_after, tail_before);
                prop_assert_eq!(rep.depth, (m.msgs.len() - m.default) as u64);
                let first = store.first_position();
                let mut tailers = [store.tailer(), store.tailer()];
                for i in 0..2 {
                    match tailers[i].seek(positions[i]) {
                        Ok(()) => {}
                        Err(StoreError::NotRetained { .. }) if positions[i] < first => {
                            tailers[i].seek_start();
                            m.tailers[i] = m.first_retained(first).max(m.tailers[i]);
                        }
                        Err(e) => prop_assert!(false, "re-seek to {} failed: {e}", positions[i]),
                    }
                }
                let mut groups = [None, None];
                for g in 0..2 {
                    if had_groups[g] {
                        groups[g] = Some(store.group_consumer(GROUPS[g]).unwrap());
                    }
                }
                sut = Some(Sut {
                    tailers,
                    named: store.named_tailer(NAMED).unwrap(),
                    default: store.consumer(),
                    groups,
                    store,
                });
            }
            Op::CheckCapacity => {
                let undequeued = (m.msgs.len() - m.default) as u64;
                prop_assert_eq!(s.store.depth(), undequeued);
                prop_assert_eq!(s.default.dequeued() >= m.default as u64, true);
                let st = s.store.stats();
                prop_assert_eq!(st.capacity, CAPACITY);
                prop_assert_eq!(st.depth, undequeued);
                if undequeued == CAPACITY {
                    let full = matches!(s.store.append(b"probe"), Err(StoreError::Full { .. }));
                    prop_assert!(full, "append at capacity must be Full");
                }
            }
        }
        // Retention must never delete what a persistent cursor has not read.
        let s = sut.as_ref().unwrap();
        let first = s.store.first_position();
        let mut persistent = vec![m.default, m.named];
        persistent.extend(m.groups.iter().flatten().copied());
        for idx in persistent {
            if let Some((id, _)) = m.msgs.get(idx) {
                prop_assert!(
                    *id >= first,
                    "retention deleted unread id {id} (first {first})"
                );
            }
        }
        prop_assert!(first <= s.store.tail_position());
    }
    Ok(sut.unwrap().store.first_position())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 80..250)) {
        run(ops)?;
    }
}

/// A fixed long scenario: many rolls, retention actually deleting segments,
/// capacity reached, reopen in the middle.
#[test]
fn long_deterministic_scenario_deletes_segments() {
    let mut ops = Vec::new();
    for round in 0..40u8 {
        for k in 0..15u8 {
            ops.push(Op::Append {
                len: 100 + 31 * usize::from(k),
                seed: round ^ k,
            });
        }
        for _ in 0..16 {
            ops.push(Op::Dequeue);
            ops.push(Op::NamedTailerNext);
            ops.push(Op::TailerNext(0));
        }
        ops.push(Op::CheckCapacity);
        if round % 10 == 9 {
            ops.push(Op::Reopen);
        }
    }
    let first = run(ops).unwrap();
    assert!(
        first > SEGMENT,
        "retention deleted old segments (first position {first})"
    );
}
