//! A running `repliq daemon` (a static primary, TLS off) against hostile
//! peers on its two ports, as an attacker on its network would try it: a
//! forged acknowledgement beyond what was sent, positions in the middle of a
//! frame and 4 bytes before a segment's end, 100 invented node names, 1,000
//! idle connections, slowloris on the replication and the HTTP port, and a
//! 16 MiB frame declared before any `Hello`. After all of it the daemon is
//! alive, its resident memory stays under 100 MiB, no peer slot was taken,
//! and the queue and its replicated watermark are unchanged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use repliq::replication::protocol::{Codec, Hello, Message, PROTOCOL_VERSION};
use repliq::store::{Store, StoreOptions};
use support::{free_port, http_get, KillOnDrop, PATIENCE};
use tokio_util::codec::{Decoder, Encoder};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");

fn encode(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    Codec::default().encode(m, &mut b).unwrap();
    b.to_vec()
}

fn hello(node: &str, queue: (u64, u64), position: u64) -> Message {
    let (queue_id, segment_size) = queue;
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        queue: "orders".into(),
        queue_id,
        segment_size,
        position,
        epoch: 1,
        history: Vec::new(),
    })
}

/// Reads messages until one decodes, the connection closes (`None`), or 20 s.
fn next_message(c: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    loop {
        if let Ok(Some(m)) = Codec::default().decode(buf) {
            return Some(m);
        }
        let mut chunk = [0u8; 65536];
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// True once the peer closed the connection (reads end), within `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 65536];
    let deadline = Instant::now() + within;
    loop {
        match c.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(u64::MAX)
}

/// `(tail, replicated, peers)` of the queue, read without recovery.
fn state(dir: &Path) -> (u64, u64, Vec<String>) {
    let s = Store::open(dir, &StoreOptions::open().skip_recovery()).unwrap();
    (
        s.tail_position(),
        s.replicated_position(),
        s.peer_links().into_iter().map(|l| l.node).collect(),
    )
}

#[test]
fn hostile_peers_leave_the_daemon_alive_small_and_the_queue_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (repl, http) = (free_port(), free_port());
    let data = tmp.path().join("data");
    // node-1 is a listed secondary that is not running: the attacker claims
    // its name, as anyone can without TLS.
    let cfg = format!(
        "node:\n  name: node-0\nreplication:\n  mode: async\n  primary: node-0\n  \
         listen: 127.0.0.1:{repl}\n  max_connections: 200\n  discovery:\n    method: static\n    \
         peers:\n      - {{name: node-0, address: \"127.0.0.1:{repl}\"}}\n      \
         - {{name: node-1, address: \"127.0.0.1:1\"}}\n\
         queue:\n  names: [orders]\n  persistence:\n    path: {}\n\
         http:\n  listen: 127.0.0.1:{http}\n  header_timeout_ms: 500\n",
        data.display()
    );
    let cfg_path = tmp.path().join("config.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let daemon = KillOnDrop(
        Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.id();
    let http = format!("127.0.0.1:{http}");
    let repl = format!("127.0.0.1:{repl}");
    let q = data.join("orders");
    let deadline = Instant::now() + PATIENCE;
    while http_get(&http, "/healthz").is_none() || !q.join("control.rq").is_file() {
        assert!(Instant::now() < deadline, "the daemon never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let msgs: Vec<String> = (0..300).map(|i| format!("record-{i:04}")).collect();
    let out = Command::new(BIN)
        .arg("append")
        .arg(&q)
        .args(&msgs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let before = state(&q);
    let (ours, first) = {
        let s = Store::open(&q, &StoreOptions::open().skip_recovery()).unwrap();
        ((s.queue_id(), s.geometry().size()), s.first_position())
    };

    // Slowloris on both ports, running while everything else happens: a
    // Hello fed a byte every 300 ms, HTTP headers a byte every 300 ms.
    let slow_repl = {
        let repl = repl.clone();
        // A name no peer has, long enough that the Hello takes longer to
        // trickle in than its 10 s deadline.
        let bytes = encode(&hello(&format!("slow-{}", "x".repeat(40)), (0, 0), 0));
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&repl).unwrap();
            let started = Instant::now();
            for b in bytes {
                if c.write_all(&[b]).is_err() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            started.elapsed()
        })
    };
    let slow_http = {
        let http = http.clone();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&http).unwrap();
            let started = Instant::now();
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
                if c.write_all(&[*b]).is_err() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            started.elapsed()
        })
    };

    // A 16 MiB frame declared before any Hello: closed at once.
    let mut c = TcpStream::connect(&repl).unwrap();
    c.write_all(&[0, 0, 0, 1, 1]).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "a declared 16 MiB hello"
    );

    // Positions in the middle of a frame are refused (code 3).
    for pos in [first + 4, first + 20] {
        let mut c = TcpStream::connect(&repl).unwrap();
        c.write_all(&encode(&hello("node-1", ours, pos))).unwrap();
        let mut buf = BytesMut::new();
        match next_message(&mut c, &mut buf) {
            Some(Message::Error { code: 3, .. }) => {}
            other => panic!("position {pos}: {other:?}"),
        }
    }
    // A position 4 bytes before the segment's end, past the primary's log:
    // a peer claiming more than the leader holds is told to cut back to the
    // leader's end (KIP-101), never streamed from where it claims.
    let mut c = TcpStream::connect(&repl).unwrap();
    c.write_all(&encode(&hello("node-1", ours, ours.1 - 4)))
        .unwrap();
    let mut buf = BytesMut::new();
    match next_message(&mut c, &mut buf) {
        Some(Message::Welcome(w)) => assert_eq!(w.start, before.0, "{w:?}"),
        Some(Message::Error { code: 3, .. }) => {}
        other => panic!("a position at the segment's end: {other:?}"),
    }
    drop(c);

    // A forged acknowledgement beyond what was sent ends the session.
    let mut c = TcpStream::connect(&repl).unwrap();
    c.write_all(&encode(&hello("node-1", ours, first))).unwrap();
    let mut buf = BytesMut::new();
    match next_message(&mut c, &mut buf) {
        Some(Message::Welcome(_)) => {}
        other => panic!("a listed peer's hello: {other:?}"),
    }
    c.write_all(&encode(&Message::Ack { position: u64::MAX }))
        .unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(10)),
        "the forged ack ends the session"
    );

    // 100 invented names are refused with code 2.
    for i in 0..100 {
        let mut c = TcpStream::connect(&repl).unwrap();
        c.write_all(&encode(&hello(&format!("intruder-{i}"), (0, 0), 0)))
            .unwrap();
        let mut buf = BytesMut::new();
        match next_message(&mut c, &mut buf) {
            Some(Message::Error { code: 2, .. }) => {}
            other => panic!("intruder-{i}: {other:?}"),
        }
    }

    // 1,000 idle connections: at most 200 are held, the rest closed.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(c) = TcpStream::connect(&repl) {
            idle.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(pid);
    let mut still_open = 0;
    for c in &mut idle {
        if !closed_within(c, Duration::from_millis(5)) {
            still_open += 1;
        }
    }
    assert!(
        still_open <= 200,
        "{still_open} idle connections held (cap 200)"
    );
    drop(idle);

    // The slow senders are cut off: the Hello by its 10 s deadline, the HTTP
    // headers by http.header_timeout_ms.
    let t = slow_repl.join().unwrap();
    assert!(
        t < Duration::from_secs(25),
        "a slowloris Hello lasted {t:?}"
    );
    let t = slow_http.join().unwrap();
    assert!(
        t < Duration::from_secs(10),
        "slowloris HTTP headers lasted {t:?}"
    );

    // Alive, small, unchanged.
    assert_eq!(http_get(&http, "/healthz").map(|r| r.0), Some(200));
    let rss = rss_kib(pid).max(rss_idle);
    assert!(rss < 100 * 1024, "RSS {rss} KiB");
    let after = state(&q);
    assert_eq!(after.0, before.0, "the tail moved");
    assert_eq!(after.1, before.1, "the replicated watermark moved");
    assert!(
        after.2.iter().all(|p| p == "node-1"),
        "peer slots taken: {:?}",
        after.2
    );
    let out = Command::new(BIN).arg("tail").arg(&q).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 300, "{text}");
}
