//! `repliq daemon` as real processes on loopback: configuration checks,
//! a primary with two secondaries, a secondary killed with SIGKILL and
//! restarted, and the HTTP endpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use repliq::store::{Store, StoreOptions};
use support::{free_port, http_get, signal, wait_exit, Sig, PATIENCE};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/founding-config.yaml"
);

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["daemon", "--check", "--config"])
        .arg(path)
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap()
}

// ---------------------------------------------------------------- config

#[test]
fn founding_config_passes_check() {
    let out = check(Path::new(FIXTURE));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("node_name: node-a"), "{stdout}");
    assert!(stdout.contains("kubernetes"), "{stdout}");
    assert!(stdout.contains("capacity: 1000000"), "{stdout}");
    assert!(stdout.contains("/var/lib/repliq/data"), "{stdout}");

    // The DaemonSet passes the YAML text itself in REPLIQ_CONFIG.
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--check"])
        .env("NODE_NAME", "node-b")
        .env("REPLIQ_CONFIG", &text)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("node_name: node-b"));
    // That it also runs: tests/kubernetes_discovery.rs.
}

#[test]
fn bad_configs_exit_2_naming_file_key_and_reason() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(FIXTURE).unwrap();
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "unknown.yaml",
            base.replace("  mode: async\n", "  mode: async\n  colour: blue\n"),
            "replication.colour",
            "unknown field",
        ),
        (
            "mode.yaml",
            base.replace("mode: async", "mode: eventually"),
            "replication.mode",
            "not one of async, sync",
        ),
        (
            "capacity.yaml",
            base.replace("capacity: 1000000", "capacity: 0"),
            "queue.capacity",
            "at least 1",
        ),
        (
            "segment.yaml",
            base.replace(
                "capacity: 1000000",
                "capacity: 1000000\n  segment_size: 100000",
            ),
            "queue.segment_size",
            "power of two",
        ),
        (
            "durability.yaml",
            base.replace(
                "capacity: 1000000",
                "capacity: 1000000\n  durability: eventually",
            ),
            "queue.durability",
            "expected none, batch or always",
        ),
        (
            "address.yaml",
            format!("{base}http:\n  listen: not-an-address\n"),
            "http.listen",
            "not an address",
        ),
        (
            "dns-cluster.yaml",
            base.replace(
                "method: kubernetes\n    label_selector: name=repliq",
                "method: dns\n    dns_name: repliq-peers",
            ),
            "replication.expected_members",
            "required with method dns",
        ),
        (
            "expected.yaml",
            base.replace("mode: async", "mode: async\n  expected_members: 0"),
            "replication.expected_members",
            "out of range",
        ),
        (
            "peer.yaml",
            base.replace(
                "method: kubernetes",
                "method: static\n    peers:\n      - name: a\n        address: nowhere",
            )
            .replace("replication:\n", "replication:\n  primary: a\n"),
            "replication.discovery.peers[0].address",
            "not an address",
        ),
        (
            // A name longer than a peer slot holds could never replicate.
            "long-node.yaml",
            format!("node:\n  name: {}\n{base}", "n".repeat(49)),
            "node.name",
            "1 to 48",
        ),
        (
            "long-peer.yaml",
            base.replace(
                "method: kubernetes",
                &format!(
                    "method: static\n    peers:\n      - name: a\n        address: a:1\n      \
                     - name: {}\n        address: b:1",
                    "b".repeat(49)
                ),
            )
            .replace("replication:\n", "replication:\n  primary: a\n"),
            "replication.discovery.peers[1].name",
            "1 to 48",
        ),
        (
            // One secondary can never give two acknowledgements.
            "min-acks.yaml",
            base.replace(
                "method: kubernetes",
                "method: static\n    peers:\n      - name: a\n        address: a:1\n      \
                 - name: b\n        address: b:1",
            )
            .replace(
                "replication:\n",
                "replication:\n  primary: a\n  min_acks: 2\n",
            ),
            "replication.min_acks",
            "more than the 1 peers",
        ),
        (
            "min-acks-cluster.yaml",
            base.replace(
                "method: kubernetes",
                "method: static\n    peers:\n      - name: a\n        address: a:1\n      \
                 - name: b\n        address: b:1\n      - name: c\n        address: c:1",
            )
            .replace(
                "replication:\n",
                "node:\n  name: a\nreplication:\n  min_acks: 3\n",
            ),
            "replication.min_acks",
            "more than the 2 peers",
        ),
    ];
    for (name, text, key, reason) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = check(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(&p.display().to_string()), "{name}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{name}: {err}");
        assert!(err.contains(reason), "{name}: {err}");
    }
}

// ---------------------------------------------------------------- cluster

struct Node {
    name: String,
    config: PathBuf,
    data: PathBuf,
    http: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
    /// SIGTERM, once the daemon handles it; the exit code, or `None` if it
    /// was still running [`PATIENCE`] later (then it is killed).
    fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(&mut c, Sig::Term);
        wait_exit(&mut c, PATIENCE).and_then(|s| s.code())
    }
    fn queue(&self, q: &str) -> PathBuf {
        self.data.join(q)
    }
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// Writes configs for a primary and `n - 1` secondaries (static discovery).
/// No test here is about session timeouts: a long one keeps a loaded machine
/// from dropping a session (peers and reconnections are asserted).
fn cluster(n: usize, extra: &str) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let repl: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut peers = String::new();
    for (name, port) in names.iter().zip(&repl) {
        peers += &format!("      - name: {name}\n        address: 127.0.0.1:{port}\n");
    }
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let http = format!("127.0.0.1:{}", free_port());
        let data = dir.path().join(name).join("data");
        let text = format!(
            "node:\n  name: {name}\n\
             replication:\n  mode: async\n  primary: node-0\n  listen: 127.0.0.1:{}\n  \
             timeout_ms: 30000\n  heartbeat_ms: 100\n{extra}  discovery:\n    method: static\n    peers:\n{peers}\
             http:\n  listen: {http}\n\
             queue:\n  capacity: 1000000\n  names: [orders]\n  persistence:\n    path: {}\n",
            repl[i],
            data.display()
        );
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, text).unwrap();
        nodes.push(Node {
            name: name.clone(),
            config,
            data,
            http,
            log: dir.path().join(format!("{name}.log")),
            child: None,
        });
    }
    Cluster { _dir: dir, nodes }
}

/// Waits for `ok`, up to [`PATIENCE`]; prints the logs and fails naming `what`.
fn wait_for(what: &str, nodes: &[Node], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        if Instant::now() > deadline {
            for n in nodes {
                eprintln!("---- {} log:\n{}", n.name, n.logs());
            }
            panic!("timed out waiting {PATIENCE:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn open_ro(dir: &Path) -> Option<Store> {
    Store::open(dir, &StoreOptions::open().skip_recovery()).ok()
}

fn tail_of(dir: &Path) -> Option<u64> {
    open_ro(dir).map(|s| s.tail_position())
}

/// Segment files are byte-identical up to the primary's tail segment (the
/// primary may have created the next one ahead of its writers).
fn assert_identical(p: &Path, s: &Path) {
    let store = open_ro(p).unwrap();
    let last = store.geometry().segment_of(store.tail_position());
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let index = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok());
        if index.is_some_and(|i| i <= last) {
            let a = std::fs::read(e.path()).unwrap();
            let b = std::fs::read(s.join(&name))
                .unwrap_or_else(|e| panic!("{}: {e}", s.join(&name).display()));
            assert!(a == b, "segment {name} differs between {p:?} and {s:?}");
            n += 1;
        }
    }
    assert!(n >= 1, "compared {n} segments");
}

fn append_cli(dir: &Path, lines: &str) {
    let mut c = Command::new(BIN)
        .arg("append")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn tail_cli(dir: &Path) -> Vec<String> {
    let out = Command::new(BIN).arg("tail").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The payloads of a queue, in order.
fn payloads(dir: &Path) -> Vec<Vec<u8>> {
    let s = open_ro(dir).unwrap();
    let mut t = s.tailer();
    let mut v = Vec::new();
    while let Some(r) = t.next().unwrap() {
        v.push(r.payload);
    }
    v
}

#[test]
fn primary_and_two_secondaries_replicate_and_serve_http() {
    let mut c = cluster(3, "");
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    wait_for("the primary's queue", &c.nodes, || {
        tail_of(&pq).is_some() && http_get(&c.nodes[0].http, "/healthz").is_some()
    });
    let lines: String = (0..20_000).map(|i| format!("message-{i:05}\n")).collect();
    append_cli(&pq, &lines);
    let ptail = tail_of(&pq).unwrap();
    for n in &c.nodes[1..] {
        let q = n.queue("orders");
        wait_for("a secondary to catch up", &c.nodes, || {
            tail_of(&q) == Some(ptail)
        });
        assert_identical(&pq, &q);
        let out = tail_cli(&q);
        assert_eq!(out.len(), 20_000);
        assert!(out[0].ends_with(" message-00000"), "{}", out[0]);
        assert!(out[19_999].ends_with(" message-19999"), "{}", out[19_999]);
    }

    // HTTP: health, readiness, metrics on every node.
    for n in &c.nodes {
        let (st, body) = http_get(&n.http, "/healthz").unwrap();
        assert_eq!((st, body.trim()), (200, "ok"));
        wait_for("readiness", &c.nodes, || {
            http_get(&n.http, "/readyz").is_some_and(|(st, _)| st == 200)
        });
    }
    let (_, m) = http_get(&c.nodes[0].http, "/metrics").unwrap();
    assert!(
        m.contains(r#"repliq_role{node="node-0",role="primary"} 1"#),
        "{m}"
    );
    assert!(m.contains("repliq_replication_lag_bytes{"), "{m}");
    assert!(m.contains("repliq_replication_lag_messages{"), "{m}");
    assert!(m.contains(r#"peer="node-1""#), "{m}");
    assert!(
        m.contains(r#"repliq_queue_capacity{node="node-0",queue="orders"} 1000000"#),
        "{m}"
    );
    assert!(
        m.contains("repliq_connected_peers{node=\"node-0\"} 2"),
        "{m}"
    );
    wait_for("acknowledgements", &c.nodes, || {
        http_get(&c.nodes[0].http, "/metrics").is_some_and(|(_, m)| {
            m.contains(
                r#"repliq_replication_lag_bytes{node="node-0",queue="orders",peer="node-1"} 0"#,
            ) && m.contains(
                r#"repliq_replication_lag_bytes{node="node-0",queue="orders",peer="node-2"} 0"#,
            )
        })
    });
    let (_, m) = http_get(&c.nodes[1].http, "/metrics").unwrap();
    assert!(
        m.contains(r#"repliq_role{node="node-1",role="secondary"} 1"#),
        "{m}"
    );
    assert!(m.contains("repliq_replication_lag_seconds{"), "{m}");
    assert!(
        m.contains(r#"repliq_replicated_messages_total{node="node-1",queue="orders"} 20000"#),
        "{m}"
    );

    // A secondary is not ready without its primary; SIGTERM exits cleanly.
    assert_eq!(c.nodes[0].terminate(), Some(0));
    wait_for("not ready without a primary", &c.nodes, || {
        http_get(&c.nodes[1].http, "/readyz").is_some_and(|(st, _)| st == 503)
    });
    assert_eq!(c.nodes[1].terminate(), Some(0));
}

#[test]
fn killed_secondary_catches_up_without_gap_or_duplicate_in_sync_mode() {
    let mut c = cluster(3, "  min_acks: 1\n");
    for n in &c.nodes {
        let t = std::fs::read_to_string(&n.config).unwrap();
        std::fs::write(&n.config, t.replace("mode: async", "mode: sync")).unwrap();
    }
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    wait_for("the primary's queue", &c.nodes, || {
        tail_of(&pq).is_some() && http_get(&c.nodes[0].http, "/healthz").is_some()
    });
    let (_, m) = http_get(&c.nodes[0].http, "/metrics").unwrap();
    assert!(
        m.contains(r#"repliq_replication_mode{node="node-0",mode="sync"} 1"#),
        "{m}"
    );
    // The primary publishes what a synchronous enqueue of any local process
    // waits for: min_acks (1) replica acknowledgements.
    let stat = Command::new(BIN).arg("stat").arg(&pq).output().unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["sync_acks", "1"]),
        "{stat}"
    );

    // The writer runs in three phases, each started by the test: while
    // node-1 replicates, while it is dead, and while it restarts and catches
    // up. (Timing alone cannot promise that writes overlap the kill.)
    const N: u32 = 30_000;
    const PHASE: u32 = N / 3;
    let (go, go_rx) = mpsc::channel::<()>();
    let (paused_tx, paused) = mpsc::channel::<u32>();
    let writer = {
        let pq = pq.clone();
        std::thread::spawn(move || {
            let p = Store::open(&pq, &StoreOptions::open()).unwrap();
            for i in 0..N {
                if i % PHASE == 0 {
                    let _ = paused_tx.send(i);
                    if go_rx.recv().is_err() {
                        return;
                    }
                }
                p.append(format!("m{i:06}").repeat((i % 7) as usize + 1).as_bytes())
                    .unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let wait_paused_at = |at: u32| {
        assert_eq!(
            paused.recv_timeout(PATIENCE),
            Ok(at),
            "the writer reaches message {at} within {PATIENCE:?}"
        );
    };
    wait_paused_at(0);
    go.send(()).unwrap();
    let s1 = c.nodes[1].queue("orders");
    wait_for("replication under way", &c.nodes, || {
        tail_of(&s1).is_some_and(|t| t > 4096)
    });
    c.nodes[1].kill9();
    let at_kill = tail_of(&s1).unwrap();
    wait_paused_at(PHASE);
    go.send(()).unwrap();
    wait_paused_at(2 * PHASE);
    c.nodes[1].start();
    go.send(()).unwrap();
    writer.join().unwrap();
    assert!(at_kill < tail_of(&pq).unwrap());
    let ptail = tail_of(&pq).unwrap();
    for n in &c.nodes[1..] {
        let q = n.queue("orders");
        wait_for("a secondary to catch up", &c.nodes, || {
            tail_of(&q) == Some(ptail)
        });
        assert_identical(&pq, &q);
        let got = payloads(&q);
        assert_eq!(got.len(), N as usize, "{}", n.name);
        for (i, p) in got.iter().enumerate() {
            let want = format!("m{i:06}").repeat(i % 7 + 1);
            assert_eq!(p, want.as_bytes(), "{} message {i}", n.name);
        }
    }
    // In sync mode the replicated watermark reaches the tail.
    wait_for("replicated watermark", &c.nodes, || {
        open_ro(&pq).is_some_and(|s| s.stats().replicated >= ptail)
    });
}

/// The bug the fault harness found on main (docs/reliability.md): another
/// process appending on a secondary's replica diverged it for good. The role
/// word in the control file now refuses it in every process, with a clear
/// error, and replication goes on byte-identical.
#[test]
fn an_append_on_a_secondary_from_another_process_is_refused_and_replication_goes_on() {
    let mut c = cluster(2, "");
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    let sq = c.nodes[1].queue("orders");
    wait_for("the primary's queue", &c.nodes, || tail_of(&pq).is_some());
    append_cli(&pq, "one\ntwo\n");
    let ptail = tail_of(&pq).unwrap();
    wait_for("the replica to catch up", &c.nodes, || {
        tail_of(&sq) == Some(ptail)
    });

    // `repliq append` on the replica, from its own process.
    let mut c2 = Command::new(BIN)
        .arg("append")
        .arg(&sq)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c2.stdin.take().unwrap().write_all(b"rogue\n").unwrap();
    let out = c2.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the append on a replica succeeded");
    assert!(err.contains("is a replica"), "unclear error: {err}");
    assert_eq!(
        tail_of(&sq),
        Some(ptail),
        "the refused append moved the tail"
    );
    // The same through the library, as any other process would.
    let other = Store::open(&sq, &StoreOptions::open().skip_recovery()).unwrap();
    assert!(
        matches!(
            other.append(b"rogue"),
            Err(repliq::store::StoreError::ReadOnly(_))
        ),
        "a library append on the replica was accepted"
    );
    drop(other);

    // Replication goes on, byte-identical, and nothing rogue reached it.
    append_cli(&pq, "three\n");
    let ptail = tail_of(&pq).unwrap();
    wait_for("the replica to catch up again", &c.nodes, || {
        tail_of(&sq) == Some(ptail)
    });
    assert_identical(&pq, &sq);
    let got: Vec<Vec<u8>> = payloads(&sq);
    assert_eq!(
        got,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );

    // The word outlives the daemon: a stopped secondary's replica still
    // refuses local appends.
    assert_eq!(c.nodes[1].terminate(), Some(0));
    let after = Store::open(&sq, &StoreOptions::open()).unwrap();
    assert_eq!(after.role(), repliq::store::Role::Secondary);
    assert!(matches!(
        after.append(b"rogue"),
        Err(repliq::store::StoreError::ReadOnly(_))
    ));
}

#[test]
fn dns_discovery_finds_the_primary() {
    let mut c = cluster(2, "");
    let text = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let port = text
        .split("listen: 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap()
        .to_string();
    let t1 = std::fs::read_to_string(&c.nodes[1].config).unwrap();
    let (head, rest) = t1.split_once("  discovery:\n").unwrap();
    let (_, tail) = rest.split_once("http:\n").unwrap();
    let dns = format!(
        "{head}  discovery:\n    method: dns\n    dns_name: localhost\n    port: {port}\n    \
         refresh_interval: 1\nhttp:\n{tail}"
    );
    std::fs::write(&c.nodes[1].config, dns).unwrap();
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    wait_for("the primary's queue", &c.nodes, || tail_of(&pq).is_some());
    append_cli(&pq, "one\ntwo\nthree\n");
    let ptail = tail_of(&pq).unwrap();
    let q = c.nodes[1].queue("orders");
    wait_for("the secondary to catch up", &c.nodes, || {
        tail_of(&q) == Some(ptail)
    });
    assert_identical(&pq, &q);
    let out = tail_cli(&q);
    assert_eq!(out.len(), 3);
    assert!(out[2].ends_with(" three"));
}

/// Issue 13: the replication port serves `replication.max_connections`
/// connections at once; one more is closed as it arrives, while the others
/// stay open (they would only end at the hello timeout).
#[test]
fn connections_beyond_max_connections_are_closed_as_they_arrive() {
    use std::io::Read;
    let mut c = cluster(1, "  max_connections: 2\n");
    let node = &mut c.nodes[0];
    node.start();
    let text = std::fs::read_to_string(&node.config).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: 127.0.0.1:"))
        .unwrap()
        .to_string();
    let addr = format!("127.0.0.1:{port}");
    // The first connection that succeeds is one of the two held.
    let mut first = None;
    wait_for("the replication port listens", &c.nodes, || {
        first = std::net::TcpStream::connect(&addr).ok();
        first.is_some()
    });
    let held = vec![first.unwrap(), std::net::TcpStream::connect(&addr).unwrap()];
    // Give the daemon the two connections before the third arrives: each
    // new connection is accepted in order, so one round trip on a fresh
    // one after them is enough; it is the one refused.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut b = [0u8; 1];
    let n = extra.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the connection beyond the cap is closed");
    for mut h in held {
        h.set_nonblocking(true).unwrap();
        match h.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a connection within the cap was closed: {other:?}"),
        }
    }
    let logs = c.nodes[0].logs();
    assert!(
        logs.contains("replication.max_connections reached"),
        "{logs}"
    );
}

/// Issue 13: a hostile peer that is not a configured node cannot follow a
/// queue, so invented names cannot take the queue's peer slots (each would
/// pin retention for good).
#[test]
fn a_follower_with_an_invented_name_is_refused_and_takes_no_peer_slot() {
    use std::io::{Read, Write};
    let mut c = cluster(2, "");
    c.nodes[0].start();
    let text = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: 127.0.0.1:"))
        .unwrap()
        .to_string();
    let q = c.nodes[0].queue("orders");
    wait_for("the primary opened orders", &c.nodes, || {
        q.join("control.rq").is_file()
    });
    let hello = |node: &str| {
        let mut body = vec![1u8]; // Hello
        body.extend_from_slice(b"RPLQ");
        body.extend_from_slice(&2u16.to_le_bytes());
        for s in [node, "orders"] {
            body.extend_from_slice(&(s.len() as u16).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        body.extend_from_slice(&[0u8; 8 * 3 + 4 + 4]); // ids, position, epoch, no history
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    };
    let addr = format!("127.0.0.1:{port}");
    let mut conn = None;
    wait_for("the replication port listens", &c.nodes, || {
        conn = std::net::TcpStream::connect(&addr).ok();
        conn.is_some()
    });
    let mut s = conn.unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(&hello("intruder")).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.len() > 5, "an answer before the close: {answer:?}");
    assert_eq!(answer[4], 6, "an Error message");
    let msg = String::from_utf8_lossy(&answer);
    assert!(msg.contains("intruder"), "{msg}");
    let peers = Store::open(&q, &StoreOptions::open().skip_recovery())
        .unwrap()
        .peer_links();
    assert!(
        peers.iter().all(|p| p.node != "intruder"),
        "the intruder took a peer slot: {peers:?}"
    );
}

/// Issue 13: the HTTP server gives a client `http.header_timeout_ms` to send
/// its headers and serves `http.max_connections` connections at once.
#[test]
fn http_closes_slow_header_senders_and_connections_beyond_its_cap() {
    use std::io::{Read, Write};
    let mut c = cluster(1, "");
    let base = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let http = c.nodes[0].http.clone();
    let with = |extra: &str| {
        let cfg = base.replace(
            &format!("http:\n  listen: {http}\n"),
            &format!("http:\n  listen: {http}\n{extra}"),
        );
        assert!(cfg.contains(extra), "{cfg}");
        cfg
    };
    // Headers never finished: the server closes the connection.
    std::fs::write(&c.nodes[0].config, with("  header_timeout_ms: 300\n")).unwrap();
    c.nodes[0].start();
    wait_for("the daemon answers", &c.nodes, || {
        http_get(&http, "/healthz").is_some()
    });
    let mut slow = std::net::TcpStream::connect(&http).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    let r = slow.read_to_end(&mut rest);
    assert!(r.is_ok(), "the slow client was not disconnected: {r:?}");
    assert_eq!(c.nodes[0].terminate(), Some(0));

    // Two idle connections take both slots (the default header timeout, 10 s,
    // keeps them); a third is closed at once, while the two are still open.
    std::fs::write(&c.nodes[0].config, with("  max_connections: 2\n")).unwrap();
    c.nodes[0].start();
    let mut first = None;
    wait_for("the daemon listens again", &c.nodes, || {
        first = std::net::TcpStream::connect(&http).ok();
        first.is_some()
    });
    let held = vec![first.unwrap(), std::net::TcpStream::connect(&http).unwrap()];
    let mut extra = std::net::TcpStream::connect(&http).unwrap();
    extra.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        extra.read(&mut b).unwrap_or(0),
        0,
        "the third connection is closed"
    );
    for mut h in held {
        h.set_nonblocking(true).unwrap();
        match h.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a connection within the cap was closed: {other:?}"),
        }
    }
}

/// The primary frees the slot of a secondary disconnected for longer than
/// `replication.peer_expiry_ms` (its segments no longer held back); a
/// secondary that comes back starts again and gets a slot. `repliq
/// peer-remove` frees one at once, refusing a connected peer without
/// `--force`.
#[test]
fn a_secondary_gone_longer_than_the_peer_expiry_loses_its_slot_and_peer_remove_frees_one() {
    let mut c = cluster(2, "  peer_expiry_ms: 1500\n");
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    let peers = |dir: &Path| -> Vec<String> {
        open_ro(dir)
            .map(|s| s.peer_links().into_iter().map(|l| l.node).collect())
            .unwrap_or_default()
    };
    let connected = |dir: &Path| -> bool {
        open_ro(dir).is_some_and(|s| {
            s.peer_links()
                .iter()
                .any(|l| l.node == "node-1" && l.connected)
        })
    };
    wait_for("node-1 connected", &c.nodes, || connected(&pq));
    // Connected: never expires, and peer-remove refuses without --force.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(peers(&pq), ["node-1"], "a connected peer does not expire");
    let out = Command::new(BIN)
        .arg("peer-remove")
        .arg(&pq)
        .arg("node-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .arg("peer-remove")
        .arg(&pq)
        .arg("nobody")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // node-1 dies: after the expiry its slot is gone.
    c.nodes[1].kill9();
    wait_for("node-1's slot expired", &c.nodes, || peers(&pq).is_empty());
    assert!(
        c.nodes[0].logs().contains("peer_expiry_ms"),
        "{}",
        c.nodes[0].logs()
    );
    // It comes back: a new slot, replication goes on.
    c.nodes[1].start();
    wait_for("node-1 connected again", &c.nodes, || connected(&pq));
    // A forced removal of the connected peer.
    let out = Command::new(BIN)
        .args(["peer-remove", "--force"])
        .arg(&pq)
        .arg("node-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed peer node-1"
    );
}

#[test]
fn queues_the_daemon_creates_take_segment_size_and_durability_from_the_config() {
    let mut c = cluster(2, "");
    for n in &c.nodes {
        let text = std::fs::read_to_string(&n.config).unwrap().replace(
            "  capacity: 1000000\n",
            "  capacity: 1000000\n  segment_size: 1048576\n  durability: none\n",
        );
        std::fs::write(&n.config, text).unwrap();
    }
    for n in &mut c.nodes {
        n.start();
    }
    let pq = c.nodes[0].queue("orders");
    wait_for("the primary's queue", &c.nodes, || tail_of(&pq).is_some());
    let cfg = open_ro(&pq).unwrap().config();
    assert_eq!(cfg.segment_size, 1 << 20, "{cfg:?}");
    assert_eq!(cfg.durability, repliq::store::Durability::None, "{cfg:?}");
    // The replica is shaped like its primary's queue.
    append_cli(&pq, "one\ntwo\n");
    let sq = c.nodes[1].queue("orders");
    wait_for("the secondary's replica", &c.nodes, || {
        tail_of(&sq) == tail_of(&pq)
    });
    assert_eq!(open_ro(&sq).unwrap().config().segment_size, 1 << 20);
}
