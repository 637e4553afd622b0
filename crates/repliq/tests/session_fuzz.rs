//! A fuzz target for the serving side of a replication session: whatever
//! bytes a peer sends after connecting (handshakes, acknowledgements,
//! positions, garbage), the primary never panics, never changes its log,
//! never raises its replicated watermark past its own tail, never changes its
//! consumer groups (a `Groups` frame from a secondary is refused), and gives a
//! slot only to a peer it serves. Replayed over the committed corpus
//! `fuzz/corpus/session/` (handshake, ack and position cases) and over
//! proptest mutations of it, as an ordinary test (no cargo-fuzz on stable).
//!
//! `REPLIQ_REGEN_CORPUS=1 cargo test -p repliq --test session_fuzz corpus`
//! rewrites the corpus from the cases below.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use repliq::replication::dispatch::serve_registry_with;
use repliq::replication::protocol::*;
use repliq::replication::PrimaryConfig;
use repliq::store::epochs::EpochEntry;
use repliq::store::layout::MIN_SEGMENT_SIZE;
use repliq::store::{Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

const QUEUE_ID: u64 = 0xfeed;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session")
}

/// A primary's queue with records in two segments.
fn primary(dir: &Path) -> Store {
    let s = Store::open(
        dir.join("orders"),
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .queue_id(QUEUE_ID),
    )
    .expect("create");
    while s.geometry().segment_of(s.tail_position()) < 1 {
        s.append(&[3u8; 900]).expect("append");
    }
    s
}

fn frame(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    Codec::default().encode(m, &mut b).expect("encode");
    b.to_vec()
}

fn hello(node: &str, queue: &str, queue_id: u64, position: u64) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        queue: queue.into(),
        queue_id,
        segment_size: if queue_id == 0 { 0 } else { MIN_SEGMENT_SIZE },
        position,
        epoch: 1,
        history: vec![EpochEntry {
            epoch: 1,
            start: 64,
        }],
    })
}

/// The named seed inputs: what a hostile or broken peer sends.
fn cases(s: &Store) -> Vec<(&'static str, Vec<u8>)> {
    let first = s.first_position();
    let tail = s.tail_position();
    let join = |v: &[Vec<u8>]| v.concat();
    vec![
        ("hello-new", frame(&hello("node-b", "orders", 0, 0))),
        (
            "hello-then-ack-tail",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&Message::Ack { position: tail }),
            ]),
        ),
        (
            "hello-then-forged-ack",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&Message::Ack { position: u64::MAX }),
            ]),
        ),
        (
            "hello-then-ack-past-tail",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&Message::Ack {
                    position: tail + 64,
                }),
            ]),
        ),
        (
            "hello-mid-frame",
            frame(&hello("node-b", "orders", QUEUE_ID, first + 8)),
        ),
        (
            "hello-mid-header",
            frame(&hello("node-b", "orders", QUEUE_ID, first + 4)),
        ),
        (
            "hello-segment-end",
            frame(&hello("node-b", "orders", QUEUE_ID, MIN_SEGMENT_SIZE - 4)),
        ),
        (
            "hello-past-tail",
            frame(&hello("node-b", "orders", QUEUE_ID, tail + 4096)),
        ),
        (
            "hello-max-position",
            frame(&hello("node-b", "orders", QUEUE_ID, u64::MAX)),
        ),
        (
            "hello-other-queue-id",
            frame(&hello("node-b", "orders", 7, first)),
        ),
        (
            "hello-other-queue",
            frame(&hello("node-b", "payroll", 0, 0)),
        ),
        ("hello-intruder", frame(&hello("intruder", "orders", 0, 0))),
        ("declared-16mib-before-hello", vec![0, 0, 0, 1, 1]),
        ("hello-v2", {
            let Message::Hello(mut h) = hello("node-b", "orders", 0, 0) else {
                unreachable!("hello() builds a hello")
            };
            h.version = 2;
            frame(&Message::Hello(h))
        }),
        (
            "hello-then-groups",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&Message::Groups(vec![repliq::store::GroupState {
                    name: "billing".into(),
                    position: u64::MAX,
                    dequeued: u64::MAX,
                }])),
            ]),
        ),
        (
            "hello-then-records",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&Message::Records {
                    position: tail,
                    bytes: bytes::Bytes::from(vec![0u8; 64]),
                }),
            ]),
        ),
        (
            "hello-twice",
            join(&[
                frame(&hello("node-b", "orders", 0, 0)),
                frame(&hello("node-b", "orders", QUEUE_ID, first)),
            ]),
        ),
        (
            "ack-before-hello",
            frame(&Message::Ack { position: u64::MAX }),
        ),
        ("garbage", vec![0xff; 64]),
    ]
}

/// Runs one session fed `input`, then checks the invariants.
fn fuzz_session(s: &Store, input: &[u8]) -> Result<(), String> {
    let tail = s.tail_position();
    let groups = s.groups();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut cfg = PrimaryConfig::new("node-a", "orders");
    cfg.timeout = Duration::from_millis(200);
    cfg.heartbeat = Duration::from_millis(50);
    cfg.min_acks = 1;
    let cfg = Arc::new(cfg);
    let input = input.to_vec();
    let store = s.clone();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let lookup = move |q: &str, node: &str| {
            (q == "orders" && node == "node-b").then(|| (store.clone(), cfg.clone()))
        };
        let serving = tokio::spawn(serve_registry_with(lookup, |_| Ok(()), server));
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        // Drain what the primary sends until it ends the session.
        let mut sink = vec![0u8; 1 << 16];
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            return Err("the session did not end within 20 s".to_string());
        }
        match tokio::time::timeout(Duration::from_secs(20), serving).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the session task failed: {e}")),
            Err(_) => Err("the session task did not end".to_string()),
        }
    })?;
    if s.tail_position() != tail {
        return Err(format!(
            "the log changed: tail {tail} -> {}",
            s.tail_position()
        ));
    }
    if s.groups() != groups {
        return Err(format!(
            "the consumer groups changed: {groups:?} -> {:?}",
            s.groups()
        ));
    }
    if s.replicated_position() > tail {
        return Err(format!(
            "replicated watermark {} past the tail {tail}",
            s.replicated_position()
        ));
    }
    for l in s.peer_links() {
        if l.node != "node-b" {
            return Err(format!("a slot for {:?}", l.node));
        }
        if l.acked > tail {
            return Err(format!(
                "node-b acknowledged {} past the tail {tail}",
                l.acked
            ));
        }
    }
    Ok(())
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("the session corpus is committed")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read a corpus file"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_replays_and_every_invariant_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = primary(tmp.path());
    if std::env::var_os("REPLIQ_REGEN_CORPUS").is_some() {
        std::fs::create_dir_all(corpus_dir()).expect("mkdir");
        for (name, bytes) in cases(&s) {
            std::fs::write(corpus_dir().join(name), bytes).expect("write the corpus");
        }
    }
    let corpus = corpus();
    assert!(corpus.len() >= 15, "{} corpus entries", corpus.len());
    for (name, bytes) in &corpus {
        fuzz_session(&s, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The named cases are the committed ones: the corpus is not stale.
    for (name, bytes) in cases(&s) {
        let committed = corpus.iter().find(|(n, _)| n == name).map(|(_, b)| b);
        assert_eq!(committed, Some(&bytes), "{name}: regenerate the corpus");
    }
}

/// A forged acknowledgement beyond what was sent leaves the peer's slot and
/// the watermark where they were; an honest one of the tail moves both.
#[test]
fn only_an_honest_ack_moves_the_watermark() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = primary(tmp.path());
    let c = cases(&s);
    let get = |n: &str| {
        c.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    fuzz_session(&s, &get("hello-then-forged-ack")).expect("forged");
    assert_eq!(
        s.replicated_position(),
        0,
        "a forged ack moved the watermark"
    );
    fuzz_session(&s, &get("hello-then-ack-past-tail")).expect("past tail");
    assert_eq!(
        s.replicated_position(),
        0,
        "an ack past what was sent moved it"
    );
    // The honest ack may race the stream (it is sent before the records
    // arrive): it counts only if the records it covers were sent.
    fuzz_session(&s, &get("hello-then-ack-tail")).expect("honest");
    assert!(s.replicated_position() <= s.tail_position());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Mutations of the corpus: bytes flipped, cut short, or spliced.
    #[test]
    fn mutated_corpus_never_breaks_an_invariant(
        pick in 0usize..64,
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..4096),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = primary(tmp.path());
        let corpus = corpus();
        let mut input = corpus[pick % corpus.len()].1.clone();
        for (at, b) in flips {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] ^= b;
            }
        }
        if let Some(c) = cut {
            input.truncate(c % (input.len() + 1));
        }
        prop_assert_eq!(fuzz_session(&s, &input), Ok(()));
    }
}
