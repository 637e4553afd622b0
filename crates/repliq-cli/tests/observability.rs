//! Observability against real daemons on loopback: `/metrics` carries every
//! metric the Grafana dashboard queries and every one documented, with the
//! values the queue holds; `/api/v1/*` and the dashboard page answer; the
//! Telegraf configuration scrapes the daemon's default port and path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repliq::store::{Store, StoreOptions};
use support::{
    daemon_command, free_port, http_get_full as http_get, write_minimal_daemon_config, KillOnDrop,
    PATIENCE,
};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn repo(p: &str) -> PathBuf {
    Path::new(ROOT).join(p)
}

fn get_ok(addr: &str, path: &str) -> String {
    match http_get(addr, path) {
        Some((200, _, body)) => body,
        other => panic!("GET {path} on {addr}: {other:?}"),
    }
}

// ---------------------------------------------------------------- cluster

struct Daemon {
    name: String,
    http: String,
    log: PathBuf,
    child: Child,
}

impl Daemon {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Daemon>,
}

impl Cluster {
    /// A primary (`node-0`) and a secondary (`node-1`) serving `orders`.
    /// The tests count reconnections (none may happen): a long session
    /// timeout keeps a loaded machine from dropping a session.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let names = ["node-0", "node-1"];
        let repl: Vec<u16> = names.iter().map(|_| free_port()).collect();
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
                 timeout_ms: 30000\n  heartbeat_ms: 100\n  discovery:\n    method: static\n    peers:\n{peers}\
                 http:\n  listen: {http}\n\
                 queue:\n  capacity: 100000\n  names: [orders]\n  persistence:\n    path: {}\n",
                repl[i],
                data.display()
            );
            let config = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&config, text).unwrap();
            let log = dir.path().join(format!("{name}.log"));
            let child = Command::new(BIN)
                .args(["daemon", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            nodes.push(Daemon {
                name: name.to_string(),
                http,
                log,
                child,
            });
        }
        Cluster { dir, nodes }
    }

    fn queue(&self, node: usize) -> PathBuf {
        self.dir
            .path()
            .join(&self.nodes[node].name)
            .join("data/orders")
    }

    /// Waits for `ok`, up to [`PATIENCE`]; prints the logs and fails naming `what`.
    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ok() {
            if Instant::now() > deadline {
                for n in &self.nodes {
                    eprintln!("---- {} log:\n{}", n.name, n.logs());
                }
                panic!("timed out waiting {PATIENCE:?} for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const APPENDED: u64 = 5000;
const DEQUEUED: u64 = 1200;
const SECRET: &str = "payload-never-exposed";

/// Starts a pair, appends [`APPENDED`] messages (through the library, so
/// that enqueue latency is sampled) and dequeues [`DEQUEUED`], and waits
/// until the secondary has everything and both ends see the link up.
fn loaded_pair() -> Cluster {
    let c = Cluster::start();
    let pq = c.queue(0);
    c.wait_for("the primary's queue", || {
        pq.join("control.rq").is_file() && http_get(&c.nodes[0].http, "/healthz").is_some()
    });
    let s = Store::open(&pq, &StoreOptions::open()).unwrap();
    for i in 0..APPENDED {
        s.append(format!("{SECRET}-{i}").as_bytes()).unwrap();
    }
    let mut consumer = s.consumer();
    for _ in 0..DEQUEUED {
        assert!(consumer.dequeue().unwrap().is_some());
    }
    let tail = s.tail_position();
    let sq = c.queue(1);
    c.wait_for("the secondary to catch up", || {
        Store::open(&sq, &StoreOptions::open().skip_recovery())
            .is_ok_and(|r| r.tail_position() == tail)
    });
    c.wait_for("the link on both ends", || {
        let p = http_get(&c.nodes[0].http, "/metrics").map(|m| m.2);
        let q = http_get(&c.nodes[1].http, "/metrics").map(|m| m.2);
        p.is_some_and(|m| {
            m.contains(
                r#"repliq_replication_link_up{node="node-0",queue="orders",peer="node-1"} 1"#,
            ) && m.contains(
                r#"repliq_replication_lag_bytes{node="node-0",queue="orders",peer="node-1"} 0"#,
            )
        }) && q.is_some_and(|m| {
            m.contains(
                r#"repliq_replication_link_up{node="node-1",queue="orders",peer="node-0"} 1"#,
            )
        })
    });
    c
}

// ---------------------------------------------------------------- parsing

/// Sample names in an exposition (`name{...} value` or `name value`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// `(family, type)` of every `# TYPE` line.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The value of the sample written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every `repliq_*` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("repliq_") {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if before_ok {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Every panel, rows' nested panels included.
fn all_panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(all_panels(p));
    }
    out
}

#[test]
fn metric_name_extraction() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(repliq_enqueue_latency_seconds_bucket{queue=~"$queue"}[5m]))) / repliq_x"#
        ),
        vec!["repliq_enqueue_latency_seconds_bucket", "repliq_x"]
    );
    assert!(metric_names("not_repliq_role + up").is_empty());
    let text = "# TYPE a counter\na_total{x=\"1\"} 3\nb 4.5\n# EOF\n";
    assert_eq!(
        sample_names(text),
        BTreeSet::from(["a_total".to_string(), "b".to_string()])
    );
    assert_eq!(value(text, "b"), Some(4.5));
    assert_eq!(value(text, r#"a_total{x="1"}"#), Some(3.0));
    assert_eq!(families(text), vec![("a".into(), "counter".into())]);
}

// ---------------------------------------------------------------- tests

#[test]
fn metrics_cover_the_dashboard_and_the_docs_and_count_what_happened() {
    let c = loaded_pair();
    let p = get_ok(&c.nodes[0].http, "/metrics");
    let s = get_ok(&c.nodes[1].http, "/metrics");
    assert!(!p.contains(SECRET) && !s.contains(SECRET));

    // Values: what the queue holds, on both ends.
    let q0 = r#"{node="node-0",queue="orders"}"#;
    let q1 = r#"{node="node-1",queue="orders"}"#;
    let n = APPENDED as f64;
    assert_eq!(
        value(&p, &format!("repliq_appended_messages_total{q0}")),
        Some(n),
        "{p}"
    );
    assert_eq!(
        value(&s, &format!("repliq_appended_messages_total{q1}")),
        Some(n),
        "{s}"
    );
    assert_eq!(
        value(
            &p,
            r#"repliq_dequeued_messages_total{node="node-0",queue="orders",group="default"}"#
        ),
        Some(DEQUEUED as f64)
    );
    assert_eq!(
        value(&p, &format!("repliq_queue_depth{q0}")),
        Some((APPENDED - DEQUEUED) as f64)
    );
    assert_eq!(
        value(&p, &format!("repliq_queue_capacity{q0}")),
        Some(100000.0)
    );
    assert_eq!(
        value(&p, &format!("repliq_full_rejections_total{q0}")),
        Some(0.0)
    );
    let bytes = value(&p, &format!("repliq_appended_bytes_total{q0}")).unwrap();
    assert!(bytes >= n * (SECRET.len() as f64 + 2.0), "{bytes}");
    assert!(value(&p, &format!("repliq_queue_segments{q0}")).unwrap() >= 1.0);
    assert!(value(&p, &format!("repliq_queue_disk_bytes{q0}")).unwrap() > 0.0);
    assert!(value(&p, r#"repliq_disk_free_bytes{node="node-0"}"#).unwrap() > 0.0);
    assert!(value(&p, r#"repliq_disk_size_bytes{node="node-0"}"#).unwrap() > 0.0);
    // One append in 64 per thread is timed: 5000 appends give 78 samples.
    let count = value(&p, &format!("repliq_enqueue_latency_seconds_count{q0}")).unwrap();
    assert!(count >= (APPENDED / 64) as f64, "{count}");
    assert_eq!(
        value(
            &p,
            r#"repliq_enqueue_latency_seconds_bucket{le="+Inf",node="node-0",queue="orders"}"#
        ),
        Some(count),
        "{p}"
    );
    assert_eq!(
        value(&p, r#"repliq_role{node="node-0",role="primary"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&s, r#"repliq_role{node="node-1",role="secondary"}"#),
        Some(1.0)
    );
    assert_eq!(value(&s, r#"repliq_ready{node="node-1"}"#), Some(1.0));
    assert_eq!(
        value(
            &p,
            r#"repliq_replication_reconnects_total{node="node-0",queue="orders",peer="node-1"}"#
        ),
        Some(0.0)
    );
    let tail = value(&p, &format!("repliq_queue_tail_position{q0}")).unwrap();
    assert_eq!(
        value(
            &p,
            r#"repliq_replication_acked_position{node="node-0",queue="orders",peer="node-1"}"#
        ),
        Some(tail)
    );
    assert!(
        p.contains(r#"repliq_build_info{node="node-0",version=""#),
        "{p}"
    );
    assert!(p.trim_end().ends_with("# EOF"));

    // Every family has a Prometheus-conformant name and type.
    let fams = families(&p);
    assert!(fams.len() >= 30, "{fams:?}");
    for (name, ty) in &fams {
        assert!(name.starts_with("repliq_"), "{name}");
        match ty.as_str() {
            "counter" => assert!(p.contains(&format!("\n{name}_total{{")), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}: base unit"),
            "gauge" | "info" => {}
            other => panic!("{name}: unexpected type {other}"),
        }
    }
    // The secondary exports the same families.
    let sf: BTreeSet<_> = families(&s).into_iter().collect();
    for f in &fams {
        assert!(sf.contains(f), "{f:?} missing on the secondary");
    }

    // Every metric the Grafana dashboard queries exists on both nodes.
    let text = std::fs::read_to_string(repo("deploy/grafana/repliq-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in all_panels(&dash) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 20, "{exprs:?}");
    let (pn, sn) = (sample_names(&p), sample_names(&s));
    let types: std::collections::BTreeMap<_, _> = fams.iter().cloned().collect();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(pn.contains(&name), "{name} (in {e}) not on the primary");
            assert!(sn.contains(&name), "{name} (in {e}) not on the secondary");
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    assert_eq!(
                        types.get(base).map(String::as_str),
                        Some("histogram"),
                        "{name}"
                    );
                }
            }
            used.insert(name);
        }
    }
    for needed in [
        "repliq_role",
        "repliq_appended_messages_total",
        "repliq_dequeued_messages_total",
        "repliq_queue_depth",
        "repliq_replication_lag_messages",
        "repliq_replication_lag_seconds",
        "repliq_enqueue_latency_seconds_bucket",
        "repliq_disk_free_bytes",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not chart {needed}"
        );
    }
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.99")
        && e.contains("repliq_enqueue_latency_seconds_bucket")));

    // Every metric family is documented in docs/operations.md.
    let ops = std::fs::read_to_string(repo("docs/operations.md")).unwrap();
    for (name, ty) in &fams {
        let shown = match ty.as_str() {
            "counter" => format!("`{name}_total"),
            "info" => format!("`{name}_info"),
            _ => format!("`{name}"),
        };
        assert!(
            ops.contains(&shown),
            "{shown}` is not in docs/operations.md"
        );
    }
}

#[test]
fn grafana_dashboard_is_templated_and_provisioned() {
    let text = std::fs::read_to_string(repo("deploy/grafana/repliq-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |n: &str| vars.iter().find(|v| v["name"] == n);
    assert_eq!(var("datasource").unwrap()["type"], "datasource");
    assert_eq!(var("datasource").unwrap()["query"], "prometheus");
    for n in ["queue", "instance"] {
        let v = var(n).unwrap_or_else(|| panic!("no {n} variable"));
        assert_eq!(v["datasource"]["uid"], "${datasource}");
    }
    let panels = all_panels(&dash);
    let mut titles = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let e = t["expr"].as_str().unwrap();
            assert!(e.contains("$instance"), "{}: {e}", p["title"]);
        }
    }
    for want in ["roles", "appended", "depth", "lag", "latency", "disk"] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want}: {titles:?}"
        );
    }
    // Panel ids are unique and panels do not overlap in the grid.
    let ids: BTreeSet<_> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    let mut cells = BTreeSet::new();
    for p in &panels {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{} overlaps", p["title"]);
            }
        }
    }

    let ds: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo(
            "deploy/grafana/provisioning/datasources/prometheus.yaml",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(ds["apiVersion"], 1);
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let dp: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/provisioning/dashboards/repliq.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(dp["apiVersion"], 1);
    assert_eq!(dp["providers"][0]["type"], "file");
    assert!(dp["providers"][0]["options"]["path"].as_str().is_some());
}

#[test]
fn api_and_dashboard_answer_without_payloads() {
    let c = loaded_pair();
    let (p, s) = (&c.nodes[0].http, &c.nodes[1].http);

    let cluster: serde_json::Value = serde_json::from_str(&get_ok(p, "/api/v1/cluster")).unwrap();
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["name"], "node-0");
    assert_eq!(nodes[0]["role"], "primary");
    assert_eq!(nodes[0]["self"], true);
    assert_eq!(nodes[0]["health"], "ok");
    let n1 = nodes.iter().find(|n| n["name"] == "node-1").unwrap();
    assert_eq!(n1["role"], "secondary");
    assert_eq!(n1["link"], "connected");
    assert_eq!(n1["self"], false);

    let cluster: serde_json::Value = serde_json::from_str(&get_ok(s, "/api/v1/cluster")).unwrap();
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(
        (nodes[0]["name"].as_str(), nodes[0]["role"].as_str()),
        (Some("node-1"), Some("secondary"))
    );
    let n0 = nodes.iter().find(|n| n["name"] == "node-0").unwrap();
    assert_eq!(n0["role"], "primary");
    assert_eq!(n0["link"], "connected");
    assert_eq!(n0["epoch"], 1);

    let node: serde_json::Value = serde_json::from_str(&get_ok(p, "/api/v1/node")).unwrap();
    assert_eq!(node["name"], "node-0");
    assert_eq!(node["role"], "primary");
    assert_eq!(node["ready"], true);
    assert!(node["disk"]["free_bytes"].as_u64().unwrap() > 0);

    let body = get_ok(p, "/api/v1/queues");
    assert!(!body.contains(SECRET), "payloads must never be exposed");
    let qs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let q = &qs["queues"][0];
    assert_eq!(q["name"], "orders");
    assert_eq!(q["appended_messages"], APPENDED);
    assert_eq!(q["depth"], APPENDED - DEQUEUED);
    assert_eq!(q["capacity"], 100000);
    assert_eq!(q["groups"][0]["dequeued_messages"], DEQUEUED);
    assert!(q["segments"].as_u64().unwrap() >= 1);
    assert!(q["enqueue_latency"]["p99_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(q["links"][0]["peer"], "node-1");
    assert_eq!(q["links"][0]["connected"], true);
    assert_eq!(q["links"][0]["lag_bytes"], 0);
    assert!(qs["time_unix"].as_f64().unwrap() > 1.7e9);
    assert!(qs["disk"]["total_bytes"].as_u64().unwrap() > 0);
    let body = get_ok(s, "/api/v1/queues");
    assert!(!body.contains(SECRET));
    let qs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(qs["queues"][0]["links"][0]["peer"], "node-0");
    assert_eq!(qs["queues"][0]["appended_messages"], APPENDED);

    // The page and everything it loads, from this server only.
    let (st, head, html) = http_get(p, "/").unwrap();
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(html.contains("<title>repliq dashboard</title>"));
    for asset in [
        "ui/dashboard.js",
        "ui/dashboard.css",
        "ui/vendor/chart.min.js",
    ] {
        assert!(html.contains(&format!("\"{asset}\"")), "{asset}");
        let (st, _, body) = http_get(p, &format!("/{asset}")).unwrap();
        assert_eq!(st, 200, "{asset}");
        assert!(body.len() > 500, "{asset}");
    }
    // `repliq top` reads the same API.
    let out = Command::new(BIN)
        .args(["top", p, "-n", "2", "-i", "0.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(SECRET));
    let frames: Vec<&str> = text.split("repliq top").skip(1).collect();
    assert_eq!(frames.len(), 2, "{text}");
    for want in ["node-0", "primary", "node-1", "secondary", "connected"] {
        assert!(frames[1].contains(want), "{want}: {text}");
    }
    let row = frames[1]
        .lines()
        .find(|l| l.starts_with("orders"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let depth = (APPENDED - DEQUEUED).to_string();
    assert_eq!(&cols[3..5], &[depth.as_str(), "100000"], "{row}");
    let out = Command::new(BIN)
        .args(["top", "-n", "1", "-i", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["top", &format!("127.0.0.1:{}", free_port()), "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    let (_, _, lic) = http_get(p, "/ui/vendor/chart.js.copyright").unwrap();
    assert!(lic.contains("Permission is hereby granted"));
    assert_eq!(http_get(p, "/ui/../Cargo.toml").unwrap().0, 404);
    assert_eq!(http_get(p, "/ui/nothing.js").unwrap().0, 404);
}

#[test]
fn telegraf_scrapes_the_daemons_default_http_port_and_path() {
    let conf: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("deploy/telegraf/telegraf.conf")).unwrap())
            .unwrap();
    let inputs = conf["inputs"]["prometheus"].as_array().unwrap();
    let urls: Vec<&str> = inputs[0]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(!urls.is_empty());
    assert!(conf["outputs"].as_table().is_some_and(|o| !o.is_empty()));

    // The daemon's defaults, as it reports them.
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("min.yaml");
    std::fs::write(
        &cfg,
        format!(
            "queue:\n  persistence:\n    path: {}\n",
            d.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--check", "--config"])
        .arg(&cfg)
        .env("NODE_NAME", "t")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("http_listen: "))
        .unwrap_or_else(|| panic!("{text}"));
    let default_port = listen.rsplit(':').next().unwrap();

    let mut path = None;
    for u in &urls {
        let rest = u.strip_prefix("http://").unwrap_or_else(|| panic!("{u}"));
        let (hostport, p) = rest.split_once('/').unwrap();
        let port = hostport.rsplit(':').next().unwrap();
        assert_eq!(port, default_port, "{u} against the daemon's {listen}");
        assert_eq!(format!("/{p}"), "/metrics", "{u}");
        path = Some(format!("/{p}"));
    }

    // And that path, on a running daemon, is its Prometheus exposition.
    let http = write_minimal_daemon_config(&cfg, &d.path().join("data"));
    let mut child = KillOnDrop(daemon_command(&cfg).spawn().unwrap());
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        if let Some(r) = http_get(&http, path.as_deref().unwrap()) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not answer within {PATIENCE:?}: {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child);
    assert_eq!(got.0, 200);
    assert!(
        got.2.contains(r#"repliq_role{node="t",role="primary"} 1"#),
        "{}",
        got.2
    );
}
