//! The replication wire protocol: round trips, hostile frames, and a replayed
//! fuzz corpus (`fuzz/corpus/protocol`), mutated further by proptest.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use repliq::replication::protocol::*;
use repliq::store::layout::SLOT_NAME_MAX;
use repliq::store::GroupState;
use tokio_util::codec::{Decoder, Encoder};

fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node: "node-b".into(),
            queue: "orders".into(),
            queue_id: 0xfeed,
            segment_size: 1 << 20,
            position: 64,
            epoch: 3,
            history: vec![
                repliq::store::epochs::EpochEntry {
                    epoch: 1,
                    start: 64,
                },
                repliq::store::epochs::EpochEntry {
                    epoch: 3,
                    start: 1 << 20,
                },
            ],
        }),
        Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node: "node-a".into(),
            queue_id: 0xfeed,
            segment_size: 1 << 20,
            capacity: 1000,
            durability: 1,
            start: 64,
            epoch: 3,
        }),
        Message::Records {
            position: 4096,
            bytes: Bytes::from(vec![7u8; 48]),
        },
        Message::Ack { position: 8192 },
        Message::Heartbeat(Heartbeat {
            tail: 1,
            committed: 2,
            sent_unix_ns: 3,
            first: 4096,
        }),
        Message::Error {
            code: 2,
            message: "queue id mismatch".into(),
        },
        Message::Groups(vec![
            GroupState {
                name: "default".into(),
                position: 4096,
                dequeued: 12,
            },
            GroupState {
                name: "billing".into(),
                position: 8192,
                dequeued: 40,
            },
        ]),
    ]
}

/// The fuzz target: decode whatever arrives, never panic; anything decoded
/// re-encodes to a frame that decodes to the same message.
fn fuzz_decode(data: &[u8], max_frame: usize) {
    let mut codec = Codec::with_max_frame(max_frame);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(m)) => {
                let mut again = BytesMut::new();
                codec
                    .encode(&m, &mut again)
                    .expect("decoded messages re-encode");
                assert_eq!(codec.decode(&mut again).unwrap(), Some(m));
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fn encode(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    Codec::default().encode(m, &mut b).unwrap();
    b.to_vec()
}

#[test]
fn every_message_round_trips_even_byte_by_byte() {
    let mut stream = BytesMut::new();
    for m in samples() {
        Codec::default().encode(&m, &mut stream).unwrap();
    }
    // Feed one byte at a time: partial frames must wait, not fail.
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in stream {
        buf.put_u8(b);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, samples());
}

#[test]
fn hostile_frames_are_rejected_with_reasons() {
    let mut c = Codec::with_max_frame(1024);
    let dec = |c: &mut Codec, bytes: &[u8]| c.decode(&mut BytesMut::from(bytes));
    // Declared length over the maximum: rejected before buffering it.
    let e = dec(&mut c, &u32::MAX.to_le_bytes()).unwrap_err();
    assert!(matches!(e, ProtocolError::TooLarge { .. }), "{e}");
    assert!(matches!(
        dec(&mut c, &[0, 0, 0, 0]),
        Err(ProtocolError::Empty)
    ));
    assert!(matches!(
        dec(&mut c, &[1, 0, 0, 0, 99]),
        Err(ProtocolError::UnknownType(99))
    ));
    // Truncated body inside a complete frame.
    assert!(matches!(
        dec(&mut c, &[3, 0, 0, 0, 4, 1, 2]),
        Err(ProtocolError::Truncated(_))
    ));
    // Trailing garbage after an ack.
    let mut ack = encode(&Message::Ack { position: 1 });
    ack[0] += 1;
    ack.push(0);
    assert!(matches!(
        dec(&mut c, &ack),
        Err(ProtocolError::Trailing(1, _))
    ));
    // Records run not aligned to frames.
    let mut r = BytesMut::new();
    c.encode_records_header(64, 5, &mut r).unwrap();
    r.put_slice(&[1, 2, 3, 4, 5]);
    assert!(matches!(c.decode(&mut r), Err(ProtocolError::BadRun(5))));
    // Wrong magic in hello.
    let mut h = encode(&samples()[0]);
    h[5] ^= 0xff;
    assert!(matches!(dec(&mut c, &h), Err(ProtocolError::BadMagic(_))));
    // Names that are not UTF-8.
    let mut h = encode(&samples()[0]);
    h[5 + 4 + 2 + 2] = 0xff;
    assert!(matches!(dec(&mut c, &h), Err(ProtocolError::BadString(_))));
    // Encoding refuses what the peer would refuse.
    let big = Message::Records {
        position: 0,
        bytes: Bytes::from(vec![0u8; 2048]),
    };
    assert!(c.encode(&big, &mut BytesMut::new()).is_err());
}

/// A `Groups` body: `count:u16`, then per group `name_len:u16 | name |
/// position:u64 | dequeued:u64`.
fn groups_frame(count: u16, groups: &[(&[u8], u64, u64)], extra: &[u8]) -> Vec<u8> {
    let mut body = vec![kind::GROUPS];
    body.extend_from_slice(&count.to_le_bytes());
    for (name, position, dequeued) in groups {
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name);
        body.extend_from_slice(&position.to_le_bytes());
        body.extend_from_slice(&dequeued.to_le_bytes());
    }
    body.extend_from_slice(extra);
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

#[test]
fn groups_frames_that_are_truncated_trailing_oversized_or_badly_named_are_rejected() {
    let mut c = Codec::default();
    let dec = |c: &mut Codec, bytes: &[u8]| c.decode(&mut BytesMut::from(bytes));
    // The hand-made encoding is the codec's: a valid frame decodes.
    let ok = groups_frame(1, &[(b"billing", 64, 3)], &[]);
    assert_eq!(
        dec(&mut c, &ok).unwrap(),
        Some(Message::Groups(vec![GroupState {
            name: "billing".into(),
            position: 64,
            dequeued: 3
        }]))
    );
    assert_eq!(ok, encode(&dec(&mut c, &ok).unwrap().unwrap()));
    // Fewer entries than the count announces.
    let short = groups_frame(2, &[(b"billing", 64, 3)], &[]);
    assert!(matches!(
        dec(&mut c, &short),
        Err(ProtocolError::Truncated("groups"))
    ));
    // An entry cut in its counter.
    let cut = groups_frame(1, &[(b"billing", 64, 3)], &[]);
    let mut cut = cut[..cut.len() - 3].to_vec();
    let len = (cut.len() - 4) as u32;
    cut[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        dec(&mut c, &cut),
        Err(ProtocolError::Truncated("groups"))
    ));
    // Bytes after the last entry.
    let trailing = groups_frame(1, &[(b"billing", 64, 3)], &[0, 0]);
    assert!(matches!(
        dec(&mut c, &trailing),
        Err(ProtocolError::Trailing(2, "groups"))
    ));
    // More groups than a queue has slots: refused from the count alone.
    let many = groups_frame(MAX_GROUPS as u16 + 1, &[], &[]);
    assert!(matches!(
        dec(&mut c, &many),
        Err(ProtocolError::TooManyGroups(n)) if n == MAX_GROUPS + 1
    ));
    // Names: empty, longer than a slot holds, not UTF-8.
    let long = [b'g'; SLOT_NAME_MAX + 1];
    for bad in [&b""[..], &long[..], &[0xff, 0xfe][..]] {
        let f = groups_frame(1, &[(bad, 64, 3)], &[]);
        assert!(
            matches!(dec(&mut c, &f), Err(ProtocolError::BadString("group name"))),
            "name {bad:?}"
        );
    }
    // The longest name and the most groups are accepted.
    let name = vec![b'g'; SLOT_NAME_MAX];
    let names: Vec<Vec<u8>> = (0..MAX_GROUPS)
        .map(|i| {
            let mut n = name.clone();
            n[..4].copy_from_slice(format!("{i:04}").as_bytes());
            n
        })
        .collect();
    let all: Vec<(&[u8], u64, u64)> = names.iter().map(|n| (&n[..], 64, 1)).collect();
    let full = groups_frame(MAX_GROUPS as u16, &all, &[]);
    assert!(matches!(dec(&mut c, &full), Ok(Some(Message::Groups(g))) if g.len() == MAX_GROUPS));
    // Encoding refuses what the decoder would refuse.
    let too_many = Message::Groups(vec![
        GroupState {
            name: "g".into(),
            position: 0,
            dequeued: 0
        };
        MAX_GROUPS + 1
    ]);
    assert!(c.encode(&too_many, &mut BytesMut::new()).is_err());
    let unnamed = Message::Groups(vec![GroupState {
        name: String::new(),
        position: 0,
        dequeued: 0,
    }]);
    assert!(c.encode(&unnamed, &mut BytesMut::new()).is_err());
}

/// A version 2 `Hello` (what a secondary of the previous release sends)
/// still decodes, with its epoch history.
#[test]
fn a_version_2_hello_still_decodes() {
    let Message::Hello(mut h) = samples()[0].clone() else {
        unreachable!("sample 0 is a hello")
    };
    h.version = 2;
    let m = Message::Hello(h);
    assert_eq!(
        Codec::default()
            .decode(&mut BytesMut::from(&encode(&m)[..]))
            .unwrap(),
        Some(m)
    );
}

#[test]
fn corpus_replays_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/protocol");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        fuzz_decode(&data, 1 << 16);
        fuzz_decode(&data, 64);
        n += 1;
    }
    assert!(n >= 10, "corpus has {n} entries");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_decode(&data, 256);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut f = encode(&samples()[which]);
        for (i, x) in flips {
            let n = f.len();
            f[i % n] ^= x;
        }
        let cut = cut % (f.len() + 1);
        fuzz_decode(&f[..cut], 1 << 16);
        fuzz_decode(&f, 1 << 16);
    }
}

/// The committed corpus holds each sample's encoding: golden files that pin
/// the wire format (a change to the encoding fails here, on purpose).
/// Seeds were written from `samples()`: `valid-N`, `truncated-N` (first
/// half), `huge-length-N` (length field set to 0x7f....ff) and `stream`.
#[test]
fn corpus_pins_the_wire_format() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/protocol");
    // After a deliberate change of the wire format (and of `docs/protocol.md`):
    // REPLIQ_REGEN_CORPUS=1 cargo test -p repliq --test protocol corpus_pins
    if std::env::var_os("REPLIQ_REGEN_CORPUS").is_some() {
        for (i, m) in samples().iter().enumerate() {
            let f = encode(m);
            std::fs::write(dir.join(format!("valid-{i}")), &f).unwrap();
            std::fs::write(dir.join(format!("truncated-{i}")), &f[..f.len() / 2]).unwrap();
            let mut huge = f.clone();
            huge[..4].copy_from_slice(&0x7f00_00ffu32.to_le_bytes());
            std::fs::write(dir.join(format!("huge-length-{i}")), &huge).unwrap();
        }
        let all: Vec<u8> = samples().iter().flat_map(encode).collect();
        std::fs::write(dir.join("stream"), all).unwrap();
    }
    for (i, m) in samples().iter().enumerate() {
        let golden = std::fs::read(dir.join(format!("valid-{i}"))).unwrap();
        assert_eq!(golden, encode(m), "encoding of sample {i} changed");
    }
    let all: Vec<u8> = samples().iter().flat_map(encode).collect();
    assert_eq!(std::fs::read(dir.join("stream")).unwrap(), all);
}
