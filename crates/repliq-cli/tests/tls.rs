//! Mutual TLS on the replication port, with real daemons on loopback and
//! certificates made by `repliq cert`: a static primary and secondary, a
//! three-member cluster, peers refused (no client certificate, another CA,
//! a SAN that is not the name claimed, plain TCP), certificate rotation on
//! a running daemon, and `permissive` mode taking plain and TLS peers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repliq::replication::{secondary, ReplicationError, SecondaryConfig};
use repliq_node::config::{TlsMode, TlsSettings};
use repliq_node::tls::{Alpn, Tls};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use support::{free_port, http_get, KillOnDrop, PATIENCE};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");

fn repliq(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA in `dir/<ca>` and a certificate for each of `names` in `dir/<name>`.
fn certs(dir: &Path, ca: &str, names: &[&str]) {
    let ca_dir = dir.join(ca);
    ok(repliq(&["cert", "ca", "--out", ca_dir.to_str().unwrap()]));
    for n in names {
        issue(dir, ca, n, n);
    }
}

/// A certificate for SAN `san`, signed by `dir/<ca>`, into `dir/<out>`.
fn issue(dir: &Path, ca: &str, san: &str, out: &str) {
    ok(repliq(&[
        "cert",
        "node",
        san,
        "--ca",
        dir.join(ca).to_str().unwrap(),
        "--out",
        dir.join(out).to_str().unwrap(),
    ]));
}

/// The `tls:` section using the files in `dir/<name>`.
fn tls_yaml(dir: &Path, name: &str, mode: &str) -> String {
    let d = dir.join(name);
    format!(
        "tls:\n  mode: {mode}\n  cert: {}\n  key: {}\n  ca: {}\n",
        d.join("tls.crt").display(),
        d.join("tls.key").display(),
        d.join("ca.crt").display()
    )
}

/// The TLS settings of a test client using the files in `dir/<name>`.
fn client(dir: &Path, name: &str) -> Arc<Tls> {
    client_trusting(dir, name, name)
}

/// A test client presenting `dir/<name>`'s certificate, trusting the CA
/// copied into `dir/<trust>`.
fn client_trusting(dir: &Path, name: &str, trust: &str) -> Arc<Tls> {
    let d = dir.join(name);
    Tls::from_settings(&TlsSettings {
        mode: TlsMode::Required,
        cert: Some(d.join("tls.crt")),
        key: Some(d.join("tls.key")),
        ca: Some(dir.join(trust).join("ca.crt")),
    })
    .unwrap()
    .unwrap()
}

struct Daemon {
    name: String,
    config: PathBuf,
    data: PathBuf,
    http: String,
    repl: String,
    log: PathBuf,
    child: Option<KillOnDrop>,
}

impl Daemon {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .env("REPLIQ_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(KillOnDrop(child));
    }
    fn kill(&mut self) {
        self.child.take();
    }
    fn queue(&self, q: &str) -> PathBuf {
        self.data.join(q)
    }
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits for `cond`, printing every log if it never holds.
fn wait(what: &str, nodes: &[Daemon], mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            for n in nodes {
                eprintln!("===== {} =====\n{}", n.name, n.logs());
            }
            panic!("{what}: not within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Static replication: `node-0` the primary of queue `orders`, the others
/// its secondaries; `tls[i]` is node i's `tls:` section (may be empty).
fn static_nodes(dir: &Path, tls: &[String]) -> Vec<Daemon> {
    let names: Vec<String> = (0..tls.len()).map(|i| format!("node-{i}")).collect();
    let repl: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let peers: String = names
        .iter()
        .zip(&repl)
        .map(|(n, p)| format!("      - name: {n}\n        address: 127.0.0.1:{p}\n"))
        .collect();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let http = format!("127.0.0.1:{}", free_port());
        let data = dir.join(format!("{name}-data"));
        let text = format!(
            "node:\n  name: {name}\n\
             replication:\n  mode: async\n  primary: node-0\n  listen: 127.0.0.1:{}\n  \
             timeout_ms: 30000\n  heartbeat_ms: 100\n  discovery:\n    method: static\n    peers:\n{peers}\
             http:\n  listen: {http}\n\
             queue:\n  capacity: 1000000\n  names: [orders]\n  persistence:\n    path: {}\n{}",
            repl[i],
            data.display(),
            tls[i]
        );
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, text).unwrap();
        nodes.push(Daemon {
            name: name.clone(),
            config,
            data,
            http,
            repl: format!("127.0.0.1:{}", repl[i]),
            log: dir.join(format!("{name}.log")),
            child: None,
        });
    }
    nodes
}

fn append(dir: &Path, msgs: &[String]) {
    let out = Command::new(BIN)
        .arg("append")
        .arg(dir)
        .args(msgs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn records(dir: &Path) -> Vec<(u64, u32, String)> {
    support::records(BIN, dir)
}

fn msgs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Starts every node, waits for the primary's queue and its HTTP server.
fn start_all(nodes: &mut [Daemon]) {
    for n in nodes.iter_mut() {
        n.start();
    }
    let pq = nodes[0].queue("orders");
    wait("the primary's queue", nodes, || {
        pq.join("control.rq").is_file() && http_get(&nodes[0].http, "/healthz").is_some()
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A replication session as the test client: `hello_node` is the node name
/// its `Hello` claims, into the replica directory `dir`, over `stream`,
/// for at most `for_` (a session that is not refused runs until then).
async fn session<S>(
    primary: &str,
    hello_node: &str,
    dir: &Path,
    stream: S,
    for_: Duration,
) -> Result<(), ReplicationError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut sc = SecondaryConfig::new(hello_node, "orders", dir, primary);
    sc.timeout = Duration::from_secs(20);
    let mut store = None;
    match tokio::time::timeout(for_, secondary::session_on(&sc, &mut store, None, stream)).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// A rustls client presenting `dir/<name>`'s certificate (or none), trusting
/// `dir/<name>`'s CA: the server's certificate chain as it was served.
async fn served_chain(
    addr: &str,
    dir: &Path,
    name: &str,
    with_client_cert: bool,
) -> std::io::Result<(
    Vec<CertificateDer<'static>>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
)> {
    let d = dir.join(name);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = if with_client_cert {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join("tls.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(d.join("tls.key")).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![repliq_node::tls::ALPN_REPLICATION.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = rustls_pki_types::ServerName::try_from("node-0").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server_name, tcp)
        .await?;
    let chain = s.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
    Ok((chain, s))
}

fn pem_der(p: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(p).unwrap()
}

// ------------------------------------------------------------------ config

#[test]
fn tls_config_errors_name_the_key_and_check_shows_the_section() {
    let d = tempfile::tempdir().unwrap();
    let base = format!(
        "node:\n  name: a\nqueue:\n  persistence:\n    path: {}\n",
        d.path().join("data").display()
    );
    let cases = [
        (
            "tls:\n  mode: required\n",
            "tls.cert",
            "required with tls.mode required",
        ),
        (
            "tls:\n  mode: permissive\n  cert: /x/tls.crt\n  key: /x/tls.key\n",
            "tls.ca",
            "required with tls.mode permissive",
        ),
        (
            "tls:\n  mode: optional\n",
            "tls.mode",
            "not one of required, permissive, disabled",
        ),
        (
            "tls:\n  mode: disabled\n  certificate: x\n",
            "tls.certificate",
            "unknown field",
        ),
    ];
    for (i, (tls, key, reason)) in cases.iter().enumerate() {
        let p = d.path().join(format!("c{i}.yaml"));
        std::fs::write(&p, format!("{base}{tls}")).unwrap();
        let out = repliq(&["daemon", "--check", "--config", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tls}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{tls}: {err}");
        assert!(err.contains(reason), "{tls}: {err}");
    }
    // Absent: disabled, and --check says so.
    let p = d.path().join("plain.yaml");
    std::fs::write(&p, &base).unwrap();
    let out = ok(repliq(&[
        "daemon",
        "--check",
        "--config",
        p.to_str().unwrap(),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tls:\n  mode: disabled"), "{text}");
    // Files that do not load: a start-up error naming the key and the file.
    let p = d.path().join("missing.yaml");
    std::fs::write(
        &p,
        format!("{base}tls:\n  mode: required\n  cert: /nonexistent/tls.crt\n  key: /nonexistent/tls.key\n  ca: /nonexistent/ca.crt\n"),
    )
    .unwrap();
    let out = ok(repliq(&[
        "daemon",
        "--check",
        "--config",
        p.to_str().unwrap(),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mode: required"));
    let out = repliq(&["daemon", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tls.cert /nonexistent/tls.crt"), "{err}");
    // A certificate that does not name node.name: its peers would refuse
    // it, so the daemon does not start.
    certs(d.path(), "ca", &["other"]);
    let p = d.path().join("wrong-name.yaml");
    std::fs::write(
        &p,
        format!("{base}{}", tls_yaml(d.path(), "other", "required")),
    )
    .unwrap();
    let out = repliq(&["daemon", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the certificate names other but not this node (\"a\", node.name)"),
        "{err}"
    );
}

// ------------------------------------------------------------------ static

#[test]
fn static_primary_and_secondary_replicate_over_mutual_tls_and_plain_tcp_is_refused() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), "ca", &["node-0", "node-1"]);
    let tls: Vec<String> = ["node-0", "node-1"]
        .iter()
        .map(|n| tls_yaml(d.path(), n, "required"))
        .collect();
    let mut nodes = static_nodes(d.path(), &tls);
    start_all(&mut nodes);
    let (pq, sq) = (nodes[0].queue("orders"), nodes[1].queue("orders"));
    append(&pq, &msgs("m", 500));
    let expected = records(&pq);
    assert_eq!(expected.len(), 500);
    wait("orders replicated to node-1 over TLS", &nodes, || {
        records(&sq) == expected
    });

    // A plain TCP secondary (a valid Hello, no TLS) gets nothing.
    let primary = nodes[0].repl.clone();
    let plain_dir = d.path().join("plain-replica");
    let r = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(&primary).await.unwrap();
        session(&primary, "node-1", &plain_dir, tcp, PATIENCE).await
    });
    assert!(r.is_err(), "a plain TCP session was not refused");
    assert!(
        !plain_dir.join("control.rq").exists(),
        "a plain TCP peer got a replica"
    );
    wait("the refusal logged", &nodes, || {
        nodes[0]
            .logs()
            .contains("plain TCP connection refused: tls.mode is required")
    });
    // ... and counted where an operator's alert can see it.
    assert!(refused(&nodes[0].http, "plain_tcp") >= 1);
    assert_eq!(refused(&nodes[0].http, "tls_handshake"), 0);
}

/// `repliq_connections_refused_total` for `reason` on the node serving
/// HTTP at `http` (0 if the series is absent).
fn refused(http: &str, reason: &str) -> u64 {
    let (code, body) = http_get(http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let needle = format!("reason=\"{reason}\"}} ");
    body.lines()
        .filter(|l| l.starts_with("repliq_connections_refused_total{"))
        .find(|l| l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn peers_without_a_client_certificate_from_another_ca_or_claiming_another_name_are_refused() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), "ca", &["node-0", "node-1"]);
    certs(d.path(), "other-ca", &["intruder"]);
    // Signed by the right CA, but for another name.
    issue(d.path(), "ca", "mallory", "mallory");
    // Signed by another CA, for the right name.
    issue(d.path(), "other-ca", "node-1", "node-1-other-ca");
    let tls = vec![tls_yaml(d.path(), "node-0", "required"), String::new()];
    // Only the primary runs: the test client plays node-1.
    let mut nodes = static_nodes(d.path(), &tls);
    nodes[0].start();
    let pq = nodes[0].queue("orders");
    wait("the primary", &nodes, || {
        pq.join("control.rq").is_file() && http_get(&nodes[0].http, "/healthz").is_some()
    });
    append(&pq, &msgs("m", 100));
    let expected = records(&pq);
    let primary = nodes[0].repl.clone();
    let base = d.path().to_path_buf();
    let rt = rt();

    // Control: node-1's own certificate is served records (sessions of 3 s
    // until they are all there: a session that is not refused runs on).
    let good = base.join("good-replica");
    wait("the valid peer's replica", &nodes, || {
        let r = rt.block_on(async {
            let s = client(&base, "node-1")
                .dial(&primary, Some("node-0"), Alpn::Replication)
                .await
                .unwrap();
            session(&primary, "node-1", &good, s, Duration::from_secs(3)).await
        });
        assert!(r.is_ok(), "the valid peer was refused: {r:?}");
        records(&good) == expected
    });

    // No client certificate: the handshake is refused, no Welcome comes.
    let none = base.join("no-cert-replica");
    let r = rt.block_on(async {
        match served_chain(&primary, &base, "node-1", false).await {
            Ok((_, s)) => session(&primary, "node-1", &none, s, PATIENCE).await,
            Err(e) => Err(ReplicationError::Io(e)),
        }
    });
    assert!(r.is_err(), "a peer without a certificate was served");
    assert!(!none.join("control.rq").exists());

    // A certificate from another CA (naming the right node), the client
    // trusting the primary's CA: refused at the handshake by the server.
    let other = base.join("other-ca-replica");
    let r = rt.block_on(async {
        match client_trusting(&base, "node-1-other-ca", "node-1")
            .dial(&primary, Some("node-0"), Alpn::Replication)
            .await
        {
            Ok(s) => session(&primary, "node-1", &other, s, PATIENCE).await,
            Err(e) => Err(ReplicationError::Io(e)),
        }
    });
    assert!(r.is_err(), "a peer of another CA was served");
    assert!(!other.join("control.rq").exists());

    // The right CA, but its SAN is mallory while its Hello claims node-1:
    // refused with an error frame naming the mismatch.
    let liar = base.join("mallory-replica");
    let r = rt.block_on(async {
        let s = client(&base, "mallory")
            .dial(&primary, Some("node-0"), Alpn::Replication)
            .await
            .unwrap();
        session(&primary, "node-1", &liar, s, PATIENCE).await
    });
    match r {
        Err(ReplicationError::Refused(m)) => {
            assert!(m.contains("(5)") && m.contains("mallory"), "{m}")
        }
        other => panic!("a SAN mismatch was not refused with an error frame: {other:?}"),
    }
    assert!(!liar.join("control.rq").exists());

    // The daemon logs a refusal after it has sent the error frame: wait.
    wait("the SAN mismatch logged", &nodes, || {
        nodes[0].logs().contains("does not name \"node-1\"")
    });
    assert!(nodes[0].logs().contains("TLS handshake refused"));
    // No certificate and another CA's certificate are handshake refusals;
    // the SAN mismatch is refused later, in the session.
    assert_eq!(refused(&nodes[0].http, "tls_handshake"), 2);
    assert_eq!(refused(&nodes[0].http, "plain_tcp"), 0);
}

#[test]
fn rotated_certificate_files_are_served_to_new_connections_and_replication_goes_on() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), "ca", &["node-0", "node-1"]);
    let tls: Vec<String> = ["node-0", "node-1"]
        .iter()
        .map(|n| tls_yaml(d.path(), n, "required"))
        .collect();
    let mut nodes = static_nodes(d.path(), &tls);
    start_all(&mut nodes);
    let (pq, sq) = (nodes[0].queue("orders"), nodes[1].queue("orders"));
    append(&pq, &msgs("before", 200));
    let expected = records(&pq);
    wait("replicated before the rotation", &nodes, || {
        records(&sq) == expected
    });
    let primary = nodes[0].repl.clone();
    let base = d.path().to_path_buf();
    let rt = rt();
    let old = pem_der(&base.join("node-0").join("tls.crt"));
    let served = rt
        .block_on(served_chain(&primary, &base, "node-1", true))
        .unwrap()
        .0;
    assert_eq!(
        served.first(),
        Some(&old),
        "the served certificate is not the file's"
    );

    // Re-issue node-0's certificate and key in place, as a rotated Secret.
    issue(&base, "ca", "node-0", "node-0");
    let new = pem_der(&base.join("node-0").join("tls.crt"));
    assert_ne!(new, old);
    wait("the new certificate served", &nodes, || {
        rt.block_on(served_chain(&primary, &base, "node-1", true))
            .map(|(c, _)| c.first() == Some(&new))
            .unwrap_or(false)
    });
    assert!(nodes[0]
        .logs()
        .contains("certificate files changed: reloaded"));

    // The running session goes on...
    append(&pq, &msgs("after", 200));
    let expected = records(&pq);
    assert_eq!(expected.len(), 400);
    wait("replicated after the rotation", &nodes, || {
        records(&sq) == expected
    });
    // ...and a new one (the secondary restarted) is accepted with it.
    nodes[1].kill();
    append(&pq, &msgs("restart", 100));
    nodes[1].start();
    let expected = records(&pq);
    wait("replicated after the secondary's restart", &nodes, || {
        records(&sq) == expected
    });
}

#[test]
fn permissive_accepts_a_plain_tcp_peer_and_a_tls_peer() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), "ca", &["node-0", "node-2"]);
    let tls = vec![
        tls_yaml(d.path(), "node-0", "permissive"),
        // node-1 not upgraded yet: plain TCP.
        String::new(),
        tls_yaml(d.path(), "node-2", "required"),
    ];
    let mut nodes = static_nodes(d.path(), &tls);
    start_all(&mut nodes);
    let pq = nodes[0].queue("orders");
    append(&pq, &msgs("m", 300));
    let expected = records(&pq);
    for n in &nodes[1..] {
        let q = n.queue("orders");
        wait(&format!("orders replicated to {}", n.name), &nodes, || {
            records(&q) == expected
        });
    }
    assert!(nodes[0].logs().contains("tls.mode is permissive"));
    assert!(nodes[1].logs().contains("tls.mode is disabled"));
    // The TLS peer did use TLS: the primary served it a certificate.
    let base = d.path().to_path_buf();
    let served = rt()
        .block_on(served_chain(&nodes[0].repl, &base, "node-2", true))
        .unwrap()
        .0;
    assert_eq!(
        served.first(),
        Some(&pem_der(&base.join("node-0").join("tls.crt")))
    );
}

#[test]
fn a_permissive_secondary_follows_a_primary_not_upgraded_yet_and_a_required_one_does_not() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), "ca", &["node-1", "node-2"]);
    let tls = vec![
        // The primary still plain TCP.
        String::new(),
        tls_yaml(d.path(), "node-1", "permissive"),
        tls_yaml(d.path(), "node-2", "required"),
    ];
    let mut nodes = static_nodes(d.path(), &tls);
    start_all(&mut nodes);
    let pq = nodes[0].queue("orders");
    append(&pq, &msgs("m", 300));
    let expected = records(&pq);
    let q1 = nodes[1].queue("orders");
    wait("orders replicated to the permissive node-1", &nodes, || {
        records(&q1) == expected
    });
    // node-2 requires TLS: it never falls back to plain TCP.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        records(&nodes[2].queue("orders")).is_empty(),
        "a required node followed a plain TCP primary"
    );
}

// ------------------------------------------------------------------ cluster

#[test]
fn a_three_member_cluster_over_mutual_tls_forms_and_replicates_with_one_tls_section_naming_node_name(
) {
    let d = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    certs(d.path(), "ca", &names);
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let peers: String = names
        .iter()
        .zip(&ports)
        .map(|(n, (r, _))| format!("      - {{name: {n}, address: \"127.0.0.1:{r}\"}}\n"))
        .collect();
    let mut nodes = Vec::new();
    for (n, (r, h)) in names.iter().zip(&ports) {
        let data = d.path().join(format!("{n}-data"));
        let cfg = format!(
            "node:\n  name: {n}\nreplication:\n  mode: async\n  listen: 127.0.0.1:{r}\n  \
             failover_timeout_ms: 30000\n  discovery:\n    method: static\n    \
             peers:\n{peers}queue:\n  capacity: 100000\n  persistence:\n    path: {}\n\
             http:\n  listen: 127.0.0.1:{h}\n{}",
            data.display(),
            // One tls section for all three: `${NODE_NAME}` picks each
            // node's own files (a node without them would not start).
            tls_yaml(d.path(), "${NODE_NAME}", "required")
        );
        let config = d.path().join(format!("{n}.yaml"));
        std::fs::write(&config, cfg).unwrap();
        nodes.push(Daemon {
            name: n.to_string(),
            config,
            data,
            http: format!("127.0.0.1:{h}"),
            repl: format!("127.0.0.1:{r}"),
            log: d.path().join(format!("{n}.log")),
            child: None,
        });
    }
    for n in &mut nodes {
        n.start();
    }
    let catalog = |n: &Daemon| -> Option<serde_json::Value> {
        let (status, body) = http_get(&n.http, "/api/v1/cluster")?;
        (status == 200).then_some(())?;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()?
            .get("catalog")
            .cloned()
    };
    wait("the cluster formed over TLS", &nodes, || {
        nodes.iter().all(|n| {
            catalog(n).is_some_and(|cat| {
                cat["members"].as_array().is_some_and(|ms| {
                    ms.len() == 3 && ms.iter().all(|m| !m["last_report"].is_null())
                })
            })
        })
    });
    let a = nodes[0].queue("orders");
    ok(Command::new(BIN).arg("create").arg(&a).output().unwrap());
    append(&a, &msgs("m", 100));
    let expected = records(&a);
    assert_eq!(expected.len(), 100);
    let (b, c) = (nodes[1].queue("orders"), nodes[2].queue("orders"));
    wait("orders replicated to b and c over TLS", &nodes, || {
        records(&b) == expected && records(&c) == expected
    });
    for n in &nodes {
        let log = n.logs();
        assert!(log.contains("mutual TLS required"), "{log}");
        // No certificate was refused between members (a handshake a
        // loaded machine's client abandoned at its connect timeout may be).
        for bad in [
            "invalid peer certificate",
            "peer sent no certificates",
            "does not name",
        ] {
            assert!(!log.contains(bad), "{bad}: {log}");
        }
    }

    // The catalog checks the member a request claims against the
    // certificate: mallory (signed by the CA) may ask who b is, but not
    // propose b's Join.
    issue(d.path(), "ca", "mallory", "mallory");
    let dialer: repliq_catalog::network::Dialer =
        Arc::new(repliq_node::tls::CatalogDialer(client(d.path(), "mallory")));
    let (identify, join) = rt().block_on(async {
        let mut c = repliq_catalog::network::PeerClient::with_dialer(
            nodes[1].repl.clone(),
            Some("b".into()),
            dialer,
        );
        let identify = c
            .call(&repliq_catalog::wire::RpcRequest::Identify, PATIENCE)
            .await;
        let join = c
            .call(
                &repliq_catalog::wire::RpcRequest::Propose(repliq_catalog::Command::Join {
                    name: "b".into(),
                    addr: "127.0.0.1:1".into(),
                    incarnation: u64::MAX,
                }),
                PATIENCE,
            )
            .await;
        (identify, join)
    });
    match identify {
        Ok(repliq_catalog::wire::RpcReply::Identify(id)) => assert_eq!(id.name, "b"),
        other => panic!("identify over TLS: {other:?}"),
    }
    assert!(
        join.is_err(),
        "a Join for b from mallory was answered: {join:?}"
    );
    wait("the catalog's refusal logged", &nodes, || {
        nodes[1].logs().contains(
            "catalog connection refused: identity refused: the peer's certificate does not name member \"b\"",
        )
    });
    // b's member record is untouched on every member.
    for n in &nodes {
        let cat = catalog(n).unwrap().to_string();
        assert!(!cat.contains("\"127.0.0.1:1\""), "{cat}");
        assert!(!cat.contains(&u64::MAX.to_string()), "{cat}");
    }
}
