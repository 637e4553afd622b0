//! Kubernetes discovery against a stub Kubernetes API server on loopback.
//!
//! The stub (axum, in this file) keeps a set of pods and a log of their
//! changes with resource versions, like the API server: `GET
//! /api/v1/namespaces/{ns}/pods?labelSelector=…` answers a `PodList`, and
//! `?watch=true&resourceVersion=N` streams the events after `N` (`ADDED`,
//! `MODIFIED`, `DELETED`), or an `ERROR` event with a `410 Expired` status
//! when `N` was compacted away. The real kube client and watcher talk to it.
//!
//! * the discovery module (`repliq_node::kubernetes`) follows pods
//!   becoming Ready, being deleted, and a `410` after which the re-listed
//!   state wins;
//! * `repliq daemon` with `method: kubernetes` finds a primary daemon whose
//!   pod becomes Ready while it runs, and replicates from it;
//! * three `repliq daemon`s configured like the founding ConfigMap
//!   (kubernetes discovery, no peer list, no primary) wait for the
//!   DaemonSet's desired count of Ready pods, form one catalog, and replicate
//!   a queue created on one of them, refused on its followers;
//! * the founding config shipped in `deploy/k8s` (with mutual TLS
//!   required, each member's certificate naming its node) loads, forms the
//!   cluster above over TLS, and outside a pod without an API server exits
//!   with a clear error;
//! * the DaemonSet and the cert-manager overlay give each pod its own
//!   node's certificate, naming that node only.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::get;
use repliq::store::{Store, StoreOptions};
use repliq_node::kubernetes;
use serde_json::{json, Value};
use support::{free_port, http_get, PATIENCE};
use tokio::sync::mpsc;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const NS: &str = "repliq-test";
const SELECTOR: &str = "name=repliq";

// ---------------------------------------------------------------- the stub

/// One request the stub answered.
#[derive(Debug, Clone)]
struct Request {
    namespace: String,
    watch: bool,
    query: BTreeMap<String, String>,
}

struct Watcher {
    selector: String,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct StubState {
    /// The last resource version handed out.
    rv: u64,
    /// Pods by name, each with its current resourceVersion.
    pods: BTreeMap<String, Value>,
    /// Change log: (resource version, event type, object).
    events: Vec<(u64, &'static str, Value)>,
    /// Versions at or below this were compacted: watching from them is 410.
    compacted: u64,
    watchers: Vec<Watcher>,
    requests: Vec<Request>,
    /// `status.desiredNumberScheduled` of the DaemonSet `repliq-daemon`.
    desired: i32,
    /// Reads of the DaemonSet.
    daemonset_reads: usize,
}

impl StubState {
    fn record(&mut self, kind: &'static str, pod: Value) {
        let Some(name) = pod["metadata"]["name"].as_str().map(str::to_string) else {
            panic!("pod without a name: {pod}");
        };
        self.rv += 1;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == "DELETED" {
            self.pods.remove(&name);
        } else {
            self.pods.insert(name, pod.clone());
        }
        let line = event_line(kind, &pod);
        self.watchers
            .retain(|w| !matches(&w.selector, &pod) || w.tx.send(line.clone()).is_ok());
        self.events.push((self.rv, kind, pod));
    }
}

fn event_line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

/// The `ERROR` event the API server sends for an expired resource version.
fn gone_line(asked: u64, now: u64) -> String {
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {asked} ({now})"),
        "reason": "Expired",
        "code": 410
    });
    event_line("ERROR", &status)
}

/// Equality-based selectors (`k=v,k2==v2`), which is all the tests use.
fn matches(selector: &str, pod: &Value) -> bool {
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .all(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or((term, ""));
            pod["metadata"]["labels"][k.trim()].as_str() == Some(v.trim())
        })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn pods_handler(
    State(st): State<Arc<Mutex<StubState>>>,
    UrlPath(namespace): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = parse_query(raw.as_deref());
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let mut s = st.lock().unwrap();
    s.requests.push(Request {
        namespace: namespace.clone(),
        watch,
        query: query.clone(),
    });
    if namespace != NS {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404,
                    "message": format!("namespaces \"{namespace}\" not found")}),
        );
    }
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    if !watch {
        let items: Vec<Value> = s
            .pods
            .values()
            .filter(|p| matches(&selector, p))
            .map(|p| {
                // List items carry no apiVersion/kind, as from the API server.
                let mut p = p.clone();
                if let Some(m) = p.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                p
            })
            .collect();
        let list = json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": { "resourceVersion": s.rv.to_string() },
            "items": items,
        });
        return json_response(StatusCode::OK, &list);
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(s.rv);
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    if from < s.compacted {
        let _ = tx.send(gone_line(from, s.rv));
        drop(tx);
    } else {
        for (rv, kind, obj) in &s.events {
            if *rv > from && matches(&selector, obj) {
                let _ = tx.send(event_line(kind, obj));
            }
        }
        s.watchers.push(Watcher { selector, tx });
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn daemonset_handler(
    State(st): State<Arc<Mutex<StubState>>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    let mut s = st.lock().unwrap();
    s.daemonset_reads += 1;
    if namespace != NS || name != "repliq-daemon" {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404,
                    "message": format!("daemonsets.apps \"{name}\" not found")}),
        );
    }
    let ds = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": name, "namespace": NS, "resourceVersion": "1" },
        "spec": {
            "selector": { "matchLabels": { "name": "repliq" } },
            "template": { "metadata": { "labels": { "name": "repliq" } },
                          "spec": { "containers": [{ "name": "repliq", "image": "mahurangisoftware/repliq:latest" }] } }
        },
        "status": {
            "currentNumberScheduled": s.desired,
            "desiredNumberScheduled": s.desired,
            "numberMisscheduled": 0,
            "numberReady": s.desired
        }
    });
    json_response(StatusCode::OK, &ds)
}

/// A stub Kubernetes API server on 127.0.0.1.
struct Stub {
    addr: SocketAddr,
    state: Arc<Mutex<StubState>>,
}

impl Stub {
    async fn start() -> Stub {
        let state = Arc::new(Mutex::new(StubState::default()));
        let app = axum::Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(pods_handler))
            .route(
                "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
                get(daemonset_handler),
            )
            .with_state(state.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Stub { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (`ADDED`) or replaces (`MODIFIED`) a pod.
    fn put(&self, pod: Value) {
        let mut s = self.state.lock().unwrap();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let kind = if s.pods.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.record(kind, pod);
    }

    fn delete(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        let pod = s.pods.get(name).cloned().unwrap();
        s.record("DELETED", pod);
    }

    /// Changes pods without telling the open watches, compacts the change
    /// log, and ends each open watch with a `410 Expired` error event.
    fn expire(&self, change: impl FnOnce(&mut BTreeMap<String, Value>)) {
        let mut s = self.state.lock().unwrap();
        let before = s.pods.clone();
        change(&mut s.pods);
        s.rv += 1;
        let rv = s.rv.to_string();
        for (name, p) in s.pods.iter_mut() {
            if before.get(name) != Some(p) {
                p["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        s.compacted = s.rv;
        s.events.clear();
        let line = gone_line(s.rv - 1, s.rv);
        for w in s.watchers.drain(..) {
            let _ = w.tx.send(line.clone());
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    fn count(&self, watch: bool) -> usize {
        self.requests().iter().filter(|r| r.watch == watch).count()
    }
}

/// A pod as the API server returns it.
fn pod(name: &str, labels: Value, node: &str, ip: Option<&str>, ready: bool) -> Value {
    let flag = if ready { "True" } else { "False" };
    let mut status = json!({
        "phase": if ip.is_some() { "Running" } else { "Pending" },
        "conditions": [
            { "type": "PodScheduled", "status": "True" },
            { "type": "Initialized", "status": "True" },
            { "type": "ContainersReady", "status": flag },
            { "type": "Ready", "status": flag }
        ]
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
        status["hostIP"] = json!("127.0.0.1");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("00000000-0000-4000-8000-{:012x}", name.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b))) & 0xffff_ffff_ffff),
            "labels": labels,
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "repliq-daemon",
                                  "uid": "00000000-0000-4000-8000-00000000d5e7", "controller": true }]
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "repliq",
            "containers": [{ "name": "repliq", "image": "mahurangisoftware/repliq:latest",
                             "ports": [{ "containerPort": 31337, "protocol": "TCP" }] }]
        },
        "status": status
    })
}

fn repliq_pod(name: &str, node: &str, ip: Option<&str>, ready: bool) -> Value {
    pod(name, json!({ "name": "repliq" }), node, ip, ready)
}

/// Waits until the candidates are exactly `want`.
async fn expect(rx: &mut kubernetes::Candidates, want: &[&str], stub: &Stub) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now: Vec<String> = rx.borrow_and_update().to_vec();
        if now == want {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "candidates are {now:?}, expected {want:?} within {PATIENCE:?}; requests: {:#?}",
                stub.requests()
            );
        }
    }
}

// ---------------------------------------------------------------- discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_follow_readiness_deletion_and_a_relist_after_410() {
    let stub = Stub::start().await;
    // A Ready pod of another application: the selector must keep it out.
    stub.put(pod(
        "web-0",
        json!({ "app": "web" }),
        "node-a",
        Some("127.0.0.50"),
        true,
    ));
    stub.put(repliq_pod("repliq-a", "node-a", Some("127.0.0.11"), true));
    stub.put(repliq_pod("repliq-b", "node-b", Some("127.0.0.12"), false));

    let client = kubernetes::client(Some(&stub.url())).unwrap();
    let mut rx =
        kubernetes::start_with_client(client, NS, SELECTOR, 31337, Some("node-c".to_string()));
    expect(&mut rx, &["127.0.0.11:31337"], &stub).await;

    // Added but not Ready (then Ready without an IP): not a peer. The next
    // change shows it was left out.
    stub.put(repliq_pod("repliq-c", "node-c", None, false));
    stub.put(repliq_pod("repliq-c", "node-c", None, true));
    stub.put(repliq_pod("repliq-b", "node-b", Some("127.0.0.12"), true));
    expect(&mut rx, &["127.0.0.11:31337", "127.0.0.12:31337"], &stub).await;

    // Ready with an IP: a peer, first because it runs on the primary's node.
    stub.put(repliq_pod("repliq-c", "node-c", Some("127.0.0.13"), true));
    expect(
        &mut rx,
        &["127.0.0.13:31337", "127.0.0.11:31337", "127.0.0.12:31337"],
        &stub,
    )
    .await;

    // Deleted: removed.
    stub.delete("repliq-b");
    expect(&mut rx, &["127.0.0.13:31337", "127.0.0.11:31337"], &stub).await;

    // Changes the watch never reports, then 410: the re-listed state wins.
    let lists = stub.count(false);
    stub.expire(|pods| {
        pods.remove("repliq-c");
        pods.insert(
            "repliq-a".into(),
            repliq_pod("repliq-a", "node-a", Some("127.0.0.11"), false),
        );
        pods.insert(
            "repliq-d".into(),
            repliq_pod("repliq-d", "node-d", Some("127.0.0.14"), true),
        );
    });
    expect(&mut rx, &["127.0.0.14:31337"], &stub).await;
    assert!(stub.count(false) > lists, "no list after the 410");

    // And the new watch goes on from the new list.
    stub.put(repliq_pod("repliq-a", "node-a", Some("127.0.0.11"), true));
    expect(&mut rx, &["127.0.0.11:31337", "127.0.0.14:31337"], &stub).await;

    let reqs = stub.requests();
    assert!(reqs.iter().any(|r| r.watch), "{reqs:#?}");
    for r in &reqs {
        assert_eq!(r.namespace, NS, "{r:?}");
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some(SELECTOR),
            "{r:?}"
        );
        if r.watch {
            // Every watch starts from a version the client got from us.
            let rv: u64 = r.query["resourceVersion"].parse().unwrap();
            assert!(rv >= 1, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_ends_when_the_candidates_are_dropped() {
    let stub = Stub::start().await;
    stub.put(repliq_pod("repliq-a", "node-a", Some("127.0.0.11"), true));
    let client = kubernetes::client(Some(&stub.url())).unwrap();
    let mut rx = kubernetes::start_with_client(client, NS, SELECTOR, 4000, None);
    expect(&mut rx, &["127.0.0.11:4000"], &stub).await;
    // The watcher lists, then watches, one request at a time. Wait until the
    // watch has reached the stub, so that no request of the live task is
    // still in flight when the receiver goes (on a busy machine the watch
    // request can arrive long after the list was answered).
    let open_watches = |stub: &Stub| {
        stub.state
            .lock()
            .unwrap()
            .watchers
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    while open_watches(&stub) == 0 {
        assert!(
            Instant::now() < deadline,
            "no watch request reached the stub within {PATIENCE:?}; requests: {:#?}",
            stub.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(rx);
    // The promise: the task stops, so its watch connection closes and no
    // request follows.
    let deadline = Instant::now() + PATIENCE;
    while open_watches(&stub) > 0 {
        assert!(
            Instant::now() < deadline,
            "the watch is still open {PATIENCE:?} after the receiver was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = stub.requests().len();
    stub.put(repliq_pod("repliq-b", "node-b", Some("127.0.0.12"), true));
    // A live watcher would re-watch or re-list at once; none may come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stub.requests().len(),
        n,
        "a request followed after the task ended: {:#?}",
        stub.requests()
    );
}

#[tokio::test]
async fn an_https_client_builds_with_the_ring_provider() {
    // TLS set-up happens when the client is built (no connection is made):
    // rustls must find its crypto provider (ring) without a panic.
    let c = kubernetes::client(Some("https://127.0.0.1:9"));
    assert!(c.is_ok(), "{:?}", c.err());
}

#[test]
fn client_configuration_errors_are_clear() {
    let e = kubernetes::client_config(Some("not a url")).unwrap_err();
    assert!(e.contains("not a url"), "{e}");
    // Outside a pod (the test's environment has no KUBERNETES_SERVICE_HOST).
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let e = kubernetes::client_config(None).unwrap_err();
        assert!(e.contains("replication.discovery.api_server"), "{e}");
    }
    assert_eq!(kubernetes::namespace(Some("team-a")), "team-a");
}

// ---------------------------------------------------------------- the daemon

/// A `repliq daemon` process, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, node: &str, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(config)
            .env("NODE_NAME", node)
            .env("REPLIQ_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(what: &str, daemons: &[&Daemon], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        if Instant::now() > deadline {
            for d in daemons {
                eprintln!("---- {}:\n{}", d.log.display(), d.log());
            }
            panic!("timed out waiting {PATIENCE:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tail_of(dir: &Path) -> Option<u64> {
    Store::open(dir, &StoreOptions::open().skip_recovery())
        .ok()
        .map(|s| s.tail_position())
}

fn payloads(dir: &Path) -> Vec<String> {
    let s = Store::open(dir, &StoreOptions::open().skip_recovery()).unwrap();
    let mut t = s.tailer();
    let mut v = Vec::new();
    while let Some(r) = t.next().unwrap() {
        v.push(String::from_utf8_lossy(&r.payload).into_owned());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_with_kubernetes_discovery_replicates_from_the_primary_pod() {
    let stub = Stub::start().await;
    // The primary's pod is starting (not Ready); the secondary's own pod
    // is not Ready either (it is not connected yet).
    stub.put(repliq_pod("repliq-p", "node-p", Some("127.0.0.1"), false));
    stub.put(repliq_pod("repliq-s", "node-s", Some("127.0.0.2"), false));

    let dir = tempfile::tempdir().unwrap();
    let repl = free_port();
    let (http_p, http_s) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (data_p, data_s) = (dir.path().join("p"), dir.path().join("s"));
    let common = |http: &str, data: &Path| {
        format!(
            "http:\n  listen: {http}\nqueue:\n  names: [orders]\n  persistence:\n    path: {}\n",
            data.display()
        )
    };
    let primary_cfg = dir.path().join("primary.yaml");
    std::fs::write(
        &primary_cfg,
        format!(
            "replication:\n  primary: node-p\n  listen: 127.0.0.1:{repl}\n  heartbeat_ms: 100\n  \
             timeout_ms: 2000\n{}",
            common(&http_p, &data_p)
        ),
    )
    .unwrap();
    let secondary_cfg = dir.path().join("secondary.yaml");
    std::fs::write(
        &secondary_cfg,
        format!(
            "replication:\n  mode: async\n  primary: node-p\n  timeout_ms: 2000\n  \
             heartbeat_ms: 100\n  discovery:\n    method: kubernetes\n    label_selector: {SELECTOR}\n    \
             namespace: {NS}\n    port: {repl}\n    api_server: {}\n{}",
            stub.url(),
            common(&http_s, &data_s)
        ),
    )
    .unwrap();

    let mut primary = Daemon::start(&primary_cfg, "node-p", dir.path().join("p.log"));
    let mut secondary = Daemon::start(&secondary_cfg, "node-s", dir.path().join("s.log"));
    let pq = data_p.join("orders");
    let sq = data_s.join("orders");
    wait_until("the primary's queue", &[&primary, &secondary], || {
        tail_of(&pq).is_some() && http_get(&http_p, "/healthz").is_some()
    })
    .await;
    let mut c = Command::new(BIN)
        .arg("append")
        .arg(&pq)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    assert!(c.wait().unwrap().success());

    // The secondary lists and watches, finds no Ready pod, and waits.
    wait_until("the secondary's watch", &[&primary, &secondary], || {
        stub.count(true) >= 1
    })
    .await;
    // Its HTTP server may start after its watch: wait for an answer.
    let mut ready = None;
    wait_until(
        "the secondary's HTTP server",
        &[&primary, &secondary],
        || {
            ready = http_get(&http_s, "/readyz");
            ready.is_some()
        },
    )
    .await;
    let (st, body) = ready.unwrap();
    assert_eq!(st, 503, "{body}");
    assert_eq!(secondary.exited(), None, "{}", secondary.log());

    // The primary's pod becomes Ready: the watch delivers it, the
    // secondary connects and replicates without a restart.
    stub.put(repliq_pod("repliq-p", "node-p", Some("127.0.0.1"), true));
    let ptail = tail_of(&pq).unwrap();
    wait_until("replication", &[&primary, &secondary], || {
        tail_of(&sq) == Some(ptail)
    })
    .await;
    assert_eq!(payloads(&sq), ["one", "two", "three"]);
    wait_until("readiness", &[&primary, &secondary], || {
        http_get(&http_s, "/readyz").is_some_and(|(st, _)| st == 200)
    })
    .await;
    let log = secondary.log();
    assert!(log.contains("membership changed"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{repl}")), "{log}");
    for r in stub.requests() {
        assert_eq!(r.namespace, NS);
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some(SELECTOR)
        );
    }
    assert_eq!(primary.exited(), None, "{}", primary.log());
}

#[test]
fn bad_kubernetes_keys_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "replication.discovery.label_selector", "required"),
        (
            "    label_selector: name=repliq\n    namespace: Team_A\n",
            "replication.discovery.namespace",
            "not a namespace name",
        ),
        (
            "    label_selector: name=repliq\n    api_server: ftp://x\n",
            "replication.discovery.api_server",
            "not an http:// or https:// URL",
        ),
        (
            "    label_selector: name=repliq\n    port: 70000\n",
            "replication.discovery.port",
            "not a port",
        ),
    ];
    for (i, (extra, key, reason)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("{i}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "replication:\n  discovery:\n    method: kubernetes\n{extra}queue:\n  \
                 persistence:\n    path: /tmp/unused\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["daemon", "--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(err.contains(reason), "{key}: {err}");
    }
}

#[test]
fn a_secondary_outside_a_cluster_without_api_server_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "replication:\n  primary: node-p\n  discovery:\n    method: kubernetes\n    \
             label_selector: {SELECTOR}\nhttp:\n  listen: 127.0.0.1:{}\nqueue:\n  persistence:\n    \
             path: {}\n",
            free_port(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env("NODE_NAME", "node-s")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("kubernetes discovery: not in a Kubernetes pod"),
        "{err}"
    );
    assert!(err.contains("replication.discovery.api_server"), "{err}");
}

// ---------------------------------------------------------------- deploy/k8s

#[derive(serde::Deserialize)]
struct ConfigMap {
    kind: String,
    metadata: BTreeMap<String, Value>,
    data: BTreeMap<String, String>,
}

fn base_file(name: &str) -> String {
    let p = Path::new(ROOT).join("deploy/k8s/base").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The ConfigMap's `config.yaml`, as the DaemonSet passes it.
fn configmap_config() -> String {
    let cm: ConfigMap = serde_saphyr::from_str(&base_file("configmap.yaml")).unwrap();
    assert_eq!(cm.kind, "ConfigMap");
    assert_eq!(cm.metadata["name"], json!("repliq-config"));
    cm.data["config.yaml"].clone()
}

#[test]
fn the_configmap_holds_the_founding_config_and_passes_check() {
    let text = configmap_config();
    let founding = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/founding-config.yaml"
    ))
    .unwrap();
    // The founding config, as it is, then mutual TLS required.
    assert_eq!(
        text.trim_end(),
        format!("{}\n{}", founding.trim_end(), CONFIGMAP_TLS.trim_end())
    );

    for config in [&text, &founding] {
        let out = Command::new(BIN)
            .args(["daemon", "--check"])
            .env("NODE_NAME", "worker-1")
            .env("REPLIQ_CONFIG", config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("method: kubernetes"), "{stdout}");
        assert!(stdout.contains("label_selector: name=repliq"), "{stdout}");
        assert!(stdout.contains("port: 31337"), "{stdout}");
        // No primary: a cluster member, with per-queue leaders.
        assert!(stdout.contains("# role: cluster member"), "{stdout}");
    }
}

/// The `tls` section the ConfigMap adds to the founding config.
const CONFIGMAP_TLS: &str = "tls:
  mode: required
  cert: /etc/repliq/tls/tls.crt
  key: /etc/repliq/tls/tls.key
  ca: /etc/repliq/tls/ca.crt
";

/// A CA in `dir/pki/ca` and, for each of `names`, a certificate naming it
/// in `dir/pki/<name>` (made by `repliq cert`); returns `dir/pki`.
fn node_certs(dir: &Path, names: &[&str]) -> PathBuf {
    let pki = dir.join("pki");
    let ca = pki.join("ca");
    let run = |args: Vec<&std::ffi::OsStr>| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    run(vec![
        "cert".as_ref(),
        "ca".as_ref(),
        "--out".as_ref(),
        ca.as_os_str(),
    ]);
    for n in names {
        let out = pki.join(n);
        run(vec![
            "cert".as_ref(),
            "node".as_ref(),
            n.as_ref(),
            "--ca".as_ref(),
            ca.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
    }
    pki
}

/// `text` (the ConfigMap's config) with its TLS files taken from `dir`.
fn with_tls_files(text: &str, dir: &Path) -> String {
    assert!(text.contains("/etc/repliq/tls/"), "{text}");
    text.replace("/etc/repliq/tls/", &format!("{}/", dir.display()))
}

#[test]
fn the_statefulset_overlay_config_names_repliq_0_the_primary() {
    let p = Path::new(ROOT).join("deploy/k8s/overlays/statefulset/kustomization.yaml");
    let k: Value = serde_saphyr::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let cm: Value = k["patches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| serde_saphyr::from_str::<Value>(p["patch"].as_str()?).ok())
        .find(|p| p["kind"] == "ConfigMap")
        .unwrap();
    assert_eq!(cm["metadata"]["name"], "repliq-config");
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    for (node, role) in [("repliq-0", "primary"), ("repliq-2", "secondary")] {
        let out = Command::new(BIN)
            .args(["daemon", "--check"])
            .env("NODE_NAME", node)
            .env("REPLIQ_CONFIG", text)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("primary: repliq-0"), "{stdout}");
        assert!(stdout.contains(&format!("# role: {role}")), "{stdout}");
    }
}

#[test]
fn the_daemonset_passes_the_configmap_and_the_node_name() {
    let ds: Value = serde_saphyr::from_str(&base_file("daemonset.yaml")).unwrap();
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "repliq-daemon");
    let pod = &ds["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "repliq"))
        .unwrap();
    assert_eq!(c["image"], "mahurangisoftware/repliq:latest");
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["valueFrom"].clone(),
            )
        })
        .collect();
    assert_eq!(env["NODE_NAME"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(
        env["REPLIQ_CONFIG"]["configMapKeyRef"]["name"],
        "repliq-config"
    );
    assert_eq!(
        env["REPLIQ_CONFIG"]["configMapKeyRef"]["key"],
        "config.yaml"
    );
    assert!(c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"] == 31337));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["serviceAccountName"], "repliq");
}

/// The repliq container's mounts of the volume `tls` in a pod template:
/// `(mountPath, subPath or subPathExpr)`; panics on a mount without a
/// subPath (it would expose every node's key) or not read-only.
fn tls_mounts(pod: &Value) -> BTreeMap<String, String> {
    let c = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "repliq"))
        .unwrap();
    c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "tls")
        .map(|m| {
            assert_eq!(m["readOnly"], true, "{m}");
            let sub = m["subPathExpr"].as_str().or(m["subPath"].as_str());
            let sub = sub.unwrap_or_else(|| panic!("the whole volume mounted: {m}"));
            (
                m["mountPath"].as_str().unwrap().to_string(),
                sub.to_string(),
            )
        })
        .collect()
}

#[test]
fn the_daemonset_mounts_only_its_own_nodes_certificate_and_key_where_the_config_says() {
    let ds: Value = serde_saphyr::from_str(&base_file("daemonset.yaml")).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let want: BTreeMap<String, String> = [
        ("/etc/repliq/tls/tls.crt", "$(NODE_NAME).crt"),
        ("/etc/repliq/tls/tls.key", "$(NODE_NAME).key"),
        ("/etc/repliq/tls/ca.crt", "ca.crt"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(tls_mounts(pod), want);
    // The paths the ConfigMap's tls section names.
    for path in want.keys() {
        assert!(configmap_config().contains(path.as_str()), "{path}");
    }
    let v = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .unwrap();
    assert_eq!(v["secret"]["secretName"], "repliq-tls");
    // Readable by the daemon's group (fsGroup) only.
    assert_eq!(v["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 10001);

    // The StatefulSet overlay mounts the same way (its node names are pod
    // names).
    let p = Path::new(ROOT).join("deploy/k8s/overlays/statefulset/statefulset.yaml");
    let sts: Value = serde_saphyr::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    assert_eq!(tls_mounts(&sts["spec"]["template"]["spec"]), want);
}

/// The YAML documents of a file under deploy/k8s/overlays/cert-manager.
fn cert_manager_file(name: &str) -> Vec<Value> {
    let p = Path::new(ROOT)
        .join("deploy/k8s/overlays/cert-manager")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.split("\n---\n")
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap())
        .collect()
}

#[test]
fn the_cert_manager_overlay_gives_each_node_a_certificate_naming_only_that_node() {
    let mut nodes = Vec::new();
    for c in cert_manager_file("certificates.yaml") {
        assert_eq!(c["kind"], "Certificate", "{c}");
        let spec = &c["spec"];
        let node = spec["commonName"].as_str().unwrap().to_string();
        assert_eq!(spec["dnsNames"], json!([node]), "{c}");
        assert!(
            spec["ipAddresses"].is_null() && spec["uris"].is_null(),
            "{c}"
        );
        assert_eq!(spec["secretName"], format!("repliq-tls-{node}"));
        for u in ["server auth", "client auth"] {
            assert!(
                spec["usages"].as_array().unwrap().contains(&json!(u)),
                "{c}"
            );
        }
        assert_eq!(spec["issuerRef"]["name"], "repliq-ca");
        nodes.push(node);
    }
    assert!(nodes.len() >= 2, "{nodes:?}");
    // The CA Issuer signs with the CA certificate issued by cert-manager.
    let issuers = cert_manager_file("issuer.yaml");
    let ca = issuers
        .iter()
        .find(|d| d["kind"] == "Issuer" && d["metadata"]["name"] == "repliq-ca")
        .unwrap();
    let ca_cert = issuers.iter().find(|d| d["kind"] == "Certificate").unwrap();
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(
        ca["spec"]["ca"]["secretName"],
        ca_cert["spec"]["secretName"]
    );

    // Each node's Secret becomes <node>.crt and <node>.key, what the base's
    // subPathExpr picks; ca.crt comes from exactly one; nothing else.
    let patch = &cert_manager_file("daemonset-tls.yaml")[0];
    let v = patch["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .unwrap();
    let mut projected = Vec::new();
    let mut ca_files = 0;
    for src in v["projected"]["sources"].as_array().unwrap() {
        let secret = src["secret"]["name"].as_str().unwrap();
        let node = secret.strip_prefix("repliq-tls-").unwrap().to_string();
        for item in src["secret"]["items"].as_array().unwrap() {
            match (
                item["key"].as_str().unwrap(),
                item["path"].as_str().unwrap(),
            ) {
                ("tls.crt", p) => assert_eq!(p, format!("{node}.crt")),
                ("tls.key", p) => assert_eq!(p, format!("{node}.key")),
                ("ca.crt", "ca.crt") => ca_files += 1,
                other => panic!("{secret}: unexpected item {other:?}"),
            }
        }
        projected.push(node);
    }
    assert_eq!(projected, nodes);
    assert_eq!(ca_files, 1);
    assert_eq!(v["projected"]["defaultMode"], 0o440);
}

#[test]
fn the_founding_config_outside_a_pod_without_api_server_exits_1() {
    // The ConfigMap as shipped makes a cluster member, which needs the API
    // server to find the others: outside a pod it says so and exits 1.
    let dir = tempfile::tempdir().unwrap();
    let pki = node_certs(dir.path(), &["worker-1"]);
    let text = with_tls_files(&configmap_config(), &pki.join("worker-1")).replace(
        "/var/lib/repliq/data",
        &dir.path().join("data").display().to_string(),
    ) + &format!("http:\n  listen: 127.0.0.1:{}\n", free_port());
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, &text).unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env("NODE_NAME", "worker-1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("kubernetes discovery: not in a Kubernetes pod"),
        "{err}"
    );
}

// ------------------------------------------------- cluster mode, founding config

/// `(id, epoch, payload)` of every record, as `repliq tail` prints them.
fn records(dir: &Path) -> Vec<(u64, u32, String)> {
    support::records(BIN, dir)
}

/// The catalog as the daemon at `http` serves it in `/api/v1/cluster`.
fn catalog_at(http: &str) -> Option<Value> {
    let (status, body) = http_get(http, "/api/v1/cluster")?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v.get("catalog").cloned().filter(|c| !c.is_null())
}

/// The ConfigMap's config (the founding one with mutual TLS required), with
/// what a loopback test must add: the addresses, the stub API server and its
/// namespace, a failover timeout a loaded machine never reaches, and the TLS
/// files in `tls` (see [`node_certs`]).
fn loopback_founding_config(
    stub: &Stub,
    data: &Path,
    ip: &str,
    port: u16,
    http: &str,
    tls: &Path,
) -> String {
    with_tls_files(&configmap_config(), tls)
        .replace("/var/lib/repliq/data", &data.display().to_string())
        .replace(
            "  mode: async\n",
            &format!("  mode: async\n  listen: {ip}:{port}\n  failover_timeout_ms: 30000\n"),
        )
        .replace(
            "    label_selector: name=repliq\n",
            &format!(
                "    label_selector: name=repliq\n    namespace: {NS}\n    api_server: {}\n",
                stub.url()
            ),
        )
        + &format!("http:\n  listen: {http}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_with_the_founding_config_form_one_cluster_and_replicate() {
    let stub = Stub::start().await;
    stub.state.lock().unwrap().desired = 3;
    // node-a's and node-b's pods run; node-c's is pending (no IP yet). Only
    // node-b's is Ready: members are the pods with an IP, Ready or not.
    let names = ["node-a", "node-b", "node-c"];
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    for (n, ip) in names.iter().zip(ips) {
        let ip = Some(ip).filter(|_| *n != "node-c");
        stub.put(repliq_pod(&format!("repliq-{n}"), n, ip, *n == "node-b"));
    }
    // One replication port for every pod, as in the DaemonSet; each daemon
    // on its own loopback address.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // Each member's certificate names its node (spec.nodeName), the name
    // discovery gives it.
    let pki = node_certs(dir.path(), &names);
    let mut daemons = Vec::new();
    let mut https = Vec::new();
    let mut data = Vec::new();
    for (n, ip) in names.iter().zip(ips) {
        let http = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join(n).join("data");
        let text = loopback_founding_config(&stub, &path, ip, port, &http, &pki.join(n));
        assert!(!text.contains("peers"), "{text}");
        assert!(!text.contains("primary"), "{text}");
        let cfg = dir.path().join(format!("{n}.yaml"));
        std::fs::write(&cfg, &text).unwrap();
        daemons.push(Daemon::start(&cfg, n, dir.path().join(format!("{n}.log"))));
        https.push(http);
        data.push(path);
    }
    let all: Vec<&Daemon> = daemons.iter().collect();

    // node-a, the first voter by name, sees two of the three members the
    // DaemonSet wants: it waits, and nobody initializes.
    wait_until("node-a to wait for the expected members", &all, || {
        daemons[0]
            .log()
            .contains("waiting for the expected members")
    })
    .await;
    wait_until("the DaemonSet's desired count to be read", &all, || {
        stub.state.lock().unwrap().daemonset_reads >= 1
    })
    .await;
    for d in &daemons {
        assert!(
            !d.log().contains("initialized the catalog cluster"),
            "initialized with a partial view: {}",
            d.log()
        );
    }

    // node-c's pod gets its IP (not Ready yet): the view is complete, one
    // cluster forms.
    stub.put(repliq_pod(
        "repliq-node-c",
        "node-c",
        Some("127.0.0.3"),
        false,
    ));
    wait_until(
        "every daemon's catalog to hold the three members",
        &all,
        || {
            https.iter().all(|h| {
                catalog_at(h).is_some_and(|c| {
                    c["members"].as_array().map_or(0, Vec::len) == 3
                        && c["voters"].as_array().map_or(0, Vec::len) == 3
                })
            })
        },
    )
    .await;
    // Over mutual TLS, each member's certificate naming its node: nobody
    // refused anybody.
    for d in &daemons {
        let log = d.log();
        assert!(log.contains("mutual TLS required"), "{log}");
        assert!(!log.contains("TLS handshake refused"), "{log}");
        assert!(!log.contains("connection refused:"), "{log}");
    }
    let initialized: Vec<&str> = names
        .iter()
        .zip(&daemons)
        .filter(|(_, d)| d.log().contains("initialized the catalog cluster"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        initialized,
        ["node-a"],
        "exactly the first voter initializes"
    );
    for h in &https {
        let c = catalog_at(h).unwrap();
        let mut members: Vec<(String, String)> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["address"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        members.sort();
        let want: Vec<(String, String)> = names
            .iter()
            .zip(ips)
            .map(|(n, ip)| (n.to_string(), format!("{ip}:{port}")))
            .collect();
        assert_eq!(members, want, "members named by node, at their pod IPs");
    }

    // A queue created on node-b is led by node-b and replicated to the others.
    let qb = data[1].join("orders");
    let out = Command::new(BIN).arg("create").arg(&qb).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .arg("append")
        .arg(&qb)
        .args(["one", "two", "three"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let expected = records(&qb);
    assert_eq!(
        expected.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    let (qa, qc) = (data[0].join("orders"), data[2].join("orders"));
    wait_until("orders replicated to node-a and node-c", &all, || {
        records(&qa) == expected && records(&qc) == expected
    })
    .await;
    wait_until("every catalog to show node-b leading orders", &all, || {
        https.iter().all(|h| {
            catalog_at(h).is_some_and(|c| {
                c["queues"].as_array().is_some_and(|qs| {
                    qs.iter()
                        .any(|q| q["name"] == "orders" && q["leader"] == "node-b")
                })
            })
        })
    })
    .await;
    // A follower refuses a local append, and keeps what it had.
    for q in [&qa, &qc] {
        let out = Command::new(BIN)
            .arg("append")
            .arg(q)
            .arg("intruder")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("replica"), "{err}");
        assert_eq!(records(q), expected, "the refused append left no trace");
    }
    drop(all);
    for d in &mut daemons {
        assert_eq!(d.exited(), None, "{}", d.log());
    }

    // The whole DaemonSet restarts and every pod comes back with a new IP,
    // not Ready yet (a follower is Ready once it has caught up, which needs
    // the catalog):
    // the catalog reaches its members where discovery finds them now (the
    // Raft membership still holds the old addresses), nobody initializes
    // again, and nothing is lost.
    daemons.clear();
    let new_ips = ["127.0.0.4", "127.0.0.5", "127.0.0.6"];
    for (n, ip) in names.iter().zip(new_ips) {
        stub.put(repliq_pod(&format!("repliq-{n}"), n, Some(ip), false));
    }
    for ((n, old), new) in names.iter().zip(ips).zip(new_ips) {
        let cfg = dir.path().join(format!("{n}.yaml"));
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("listen: {old}:{port}"),
            &format!("listen: {new}:{port}"),
        );
        std::fs::write(&cfg, text).unwrap();
        daemons.push(Daemon::start(
            &cfg,
            n,
            dir.path().join(format!("{n}-restart.log")),
        ));
    }
    let all: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "the catalog to hold the members at their new addresses",
        &all,
        || {
            https.iter().all(|h| {
                catalog_at(h).is_some_and(|c| {
                    c["leader"].is_string()
                        && c["members"].as_array().is_some_and(|ms| {
                            ms.len() == 3
                                && ms.iter().all(|m| {
                                    m["address"].as_str().is_some_and(|a| {
                                        new_ips.iter().any(|ip| a == format!("{ip}:{port}"))
                                    })
                                })
                        })
                })
            })
        },
    )
    .await;
    // node-b leads orders again: an append there succeeds (retried while it
    // takes its lease back) and reaches the others.
    let mut appended = false;
    wait_until("an append on node-b after the restart", &all, || {
        if !appended {
            appended = Command::new(BIN)
                .arg("append")
                .arg(&qb)
                .arg("four")
                .output()
                .is_ok_and(|o| o.status.success());
        }
        appended
    })
    .await;
    let expected = records(&qb);
    assert_eq!(
        expected.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three", "four"]
    );
    wait_until("four replicated after the restart", &all, || {
        records(&qa) == expected && records(&qc) == expected
    })
    .await;
    drop(all);
    for d in &mut daemons {
        assert!(
            !d.log().contains("initialized the catalog cluster"),
            "a restart initialized again: {}",
            d.log()
        );
        assert_eq!(d.exited(), None, "{}", d.log());
    }
}

/// A queue created while the cluster had two members (a DaemonSet of two
/// nodes) has two replicas; once a third node joins (the DaemonSet grows),
/// its leader adds it, the new replica copies the whole log and joins the
/// in-sync set. Before, the queue kept two replicas for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_created_before_a_member_joined_gains_it_as_a_replica() {
    let stub = Stub::start().await;
    stub.state.lock().unwrap().desired = 2;
    let names = ["node-a", "node-b", "node-c"];
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    for (n, ip) in names.iter().zip(ips).take(2) {
        stub.put(repliq_pod(&format!("repliq-{n}"), n, Some(ip), true));
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pki = node_certs(dir.path(), &names);
    let mut daemons = Vec::new();
    let mut https = Vec::new();
    let mut data = Vec::new();
    let start = |k: usize| {
        let n = names[k];
        let http = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join(n).join("data");
        let cfg = dir.path().join(format!("{n}.yaml"));
        std::fs::write(
            &cfg,
            loopback_founding_config(&stub, &path, ips[k], port, &http, &pki.join(n)),
        )
        .unwrap();
        let d = Daemon::start(&cfg, n, dir.path().join(format!("{n}.log")));
        (d, http, path)
    };
    for k in 0..2 {
        let (d, http, path) = start(k);
        daemons.push(d);
        https.push(http);
        data.push(path);
    }
    let replicas_at = |h: &str| -> Option<Vec<String>> {
        let c = catalog_at(h)?;
        let q = c["queues"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == "orders")?
            .clone();
        let mut v: Vec<String> = q["replicas"]
            .as_array()?
            .iter()
            .filter_map(|r| r["node"].as_str().map(String::from))
            .collect();
        v.sort();
        Some(v)
    };
    {
        let all: Vec<&Daemon> = daemons.iter().collect();
        wait_until("a two-member cluster", &all, || {
            https.iter().all(|h| {
                catalog_at(h).is_some_and(|c| c["members"].as_array().map_or(0, Vec::len) == 2)
            })
        })
        .await;
    }
    let qb = data[1].join("orders");
    let out = Command::new(BIN).arg("create").arg(&qb).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let h_b = https[1].clone();
    {
        let all: Vec<&Daemon> = daemons.iter().collect();
        wait_until("orders registered with two replicas", &all, || {
            replicas_at(&h_b).is_some_and(|r| r == ["node-a", "node-b"])
        })
        .await;
        let mut appended = false;
        wait_until("node-b takes appends", &all, || {
            appended = appended
                || Command::new(BIN)
                    .arg("append")
                    .arg(&qb)
                    .args(["one", "two"])
                    .output()
                    .is_ok_and(|o| o.status.success());
            appended
        })
        .await;
    }

    // The DaemonSet grows to a third node.
    stub.state.lock().unwrap().desired = 3;
    stub.put(repliq_pod("repliq-node-c", "node-c", Some(ips[2]), true));
    let (d, _, path) = start(2);
    daemons.push(d);
    let qc = path.join("orders");
    let expected = records(&qb);
    assert_eq!(expected.len(), 2, "{expected:?}");
    let all: Vec<&Daemon> = daemons.iter().collect();
    wait_until("node-c added to orders' replicas", &all, || {
        replicas_at(&h_b).is_some_and(|r| r == ["node-a", "node-b", "node-c"])
    })
    .await;
    wait_until("node-c holds the whole log and is in sync", &all, || {
        records(&qc) == expected
            && catalog_at(&h_b).is_some_and(|c| {
                c["queues"].as_array().is_some_and(|qs| {
                    qs.iter().any(|q| {
                        q["name"] == "orders"
                            && q["replicas"]
                                .as_array()
                                .is_some_and(|rs| rs.iter().all(|r| r["in_sync"] == true))
                    })
                })
            })
    })
    .await;
    drop(all);
    for d in &mut daemons {
        assert_eq!(d.exited(), None, "{}", d.log());
    }
}
