//! `repliq top`: a live terminal view of a daemon, from its JSON API
//! (`/api/v1/cluster` and `/api/v1/queues`): the nodes it knows with their
//! role, health and link, and per queue the rates in and out, depth against
//! capacity, enqueue p99, replication lag and disk use.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Exit codes, as in `docs/cli.md`.
mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The daemon could not be read.
    pub const OTHER: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
}

/// Arguments of `repliq top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The daemon's HTTP address (its `http.listen`), `host:port`.
    #[arg(default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub addr: String,
    /// Seconds between refreshes (0.1 to 3600).
    #[arg(long, short = 'i', default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
    /// Stop after COUNT refreshes (default: until interrupted). Rates need
    /// two: the first view shows counters only.
    #[arg(long, short = 'n', value_name = "COUNT")]
    pub count: Option<u64>,
}

/// Runs `repliq top` and returns the exit code.
pub fn run(a: TopArgs) -> i32 {
    if !(a.interval.is_finite() && (0.1..=3600.0).contains(&a.interval)) {
        eprintln!(
            "repliq: error: --interval {}: not between 0.1 and 3600 seconds",
            a.interval
        );
        return exit::USAGE;
    }
    let addr = a.addr.trim_start_matches("http://").trim_end_matches('/');
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<Value> = None;
    let mut shown = 0u64;
    loop {
        let started = Instant::now();
        match fetch(addr) {
            Ok((cluster, queues)) => {
                let frame = render(addr, &cluster, &queues, prev.as_ref());
                let mut out = std::io::stdout().lock();
                let r = if tty {
                    write!(out, "\x1b[H\x1b[2J{frame}")
                } else {
                    writeln!(out, "{frame}")
                };
                if r.and_then(|()| out.flush()).is_err() {
                    return exit::OK; // stdout closed (e.g. `| head`)
                }
                prev = Some(queues);
            }
            Err(e) if prev.is_none() => {
                eprintln!("repliq: error: {addr}: {e}");
                return exit::OTHER;
            }
            Err(e) => eprintln!("repliq: {addr}: {e} (retrying)"),
        }
        shown += 1;
        if a.count.is_some_and(|n| shown >= n) {
            return exit::OK;
        }
        let period = Duration::from_secs_f64(a.interval);
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

fn fetch(addr: &str) -> Result<(Value, Value), String> {
    let cluster = get_json(addr, "/api/v1/cluster")?;
    let queues = get_json(addr, "/api/v1/queues")?;
    Ok((cluster, queues))
}

/// `GET path` over HTTP/1.1 and parse the JSON body.
pub(crate) fn get_json(addr: &str, path: &str) -> Result<Value, String> {
    let (status, body) = crate::http_client::request(addr, "GET", path, Duration::from_secs(5))?;
    if status != "200" {
        return Err(format!("{path}: HTTP {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON: {e}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn seconds(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 1e-6 => format!("{:.0}ns", s * 1e9),
        Some(s) if s < 1e-3 => format!("{:.1}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.1}s"),
    }
}

fn dequeued(q: &Value) -> u64 {
    q["groups"]
        .as_array()
        .map_or(0, |g| g.iter().map(|g| u(&g["dequeued_messages"])).sum())
}

/// One view: the cluster, then the queues with rates against `prev`.
fn render(addr: &str, cluster: &Value, queues: &Value, prev: Option<&Value>) -> String {
    let mut o = String::new();
    let me = &cluster["nodes"][0];
    o += &format!(
        "repliq top  {}  ({}, {})  at {addr}\n\n",
        cluster["node"].as_str().unwrap_or("?"),
        me["role"].as_str().unwrap_or("?"),
        cluster["mode"].as_str().unwrap_or("?"),
    );
    o += &format!(
        "{:<20} {:<10} {:>6} {:<10} {:<13} {:>10} {:>8}\n",
        "NODE", "ROLE", "EPOCH", "HEALTH", "LINK", "LAG", "LAG S"
    );
    for n in cluster["nodes"].as_array().into_iter().flatten() {
        let is_self = n["self"].as_bool() == Some(true);
        o += &format!(
            "{:<20} {:<10} {:>6} {:<10} {:<13} {:>10} {:>8}\n",
            n["name"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("?"),
            n["epoch"].as_u64().map_or("-".into(), |e| e.to_string()),
            n["health"].as_str().unwrap_or("?"),
            n["link"].as_str().unwrap_or("?"),
            if is_self {
                "-".into()
            } else {
                bytes(u(&n["lag_bytes"]))
            },
            if is_self {
                "-".into()
            } else {
                format!("{:.1}", n["lag_seconds"].as_f64().unwrap_or(0.0))
            },
        );
    }
    let dt = prev.map_or(0.0, |p| {
        queues["time_unix"].as_f64().unwrap_or(0.0) - p["time_unix"].as_f64().unwrap_or(0.0)
    });
    o += &format!(
        "\n{:<20} {:>9} {:>9} {:>10} {:>10} {:>6} {:>9} {:>9} {:>10}\n",
        "QUEUE", "IN/S", "OUT/S", "DEPTH", "CAPACITY", "USE", "P99", "LAG MSGS", "DISK"
    );
    for q in queues["queues"].as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or("?");
        let before = prev.and_then(|p| {
            p["queues"]
                .as_array()?
                .iter()
                .find(|x| x["name"].as_str() == Some(name))
        });
        let rate = |now: u64, then: u64| {
            if dt > 0.0 {
                count(now.saturating_sub(then) as f64 / dt)
            } else {
                "-".into()
            }
        };
        let (inr, outr) = match before {
            Some(b) => (
                rate(u(&q["appended_messages"]), u(&b["appended_messages"])),
                rate(dequeued(q), dequeued(b)),
            ),
            None => ("-".into(), "-".into()),
        };
        let (depth, cap) = (u(&q["depth"]), u(&q["capacity"]));
        let lag = q["links"]
            .as_array()
            .and_then(|l| l.iter().map(|l| u(&l["lag_messages"])).max());
        o += &format!(
            "{:<20} {:>9} {:>9} {:>10} {:>10} {:>5.1}% {:>9} {:>9} {:>10}\n",
            name,
            inr,
            outr,
            depth,
            cap,
            if cap > 0 {
                depth as f64 * 100.0 / cap as f64
            } else {
                0.0
            },
            seconds(&q["enqueue_latency"]["p99_seconds"]),
            lag.map_or("-".into(), |l| l.to_string()),
            bytes(u(&q["disk_bytes"])),
        );
    }
    if let Some(d) = queues["disk"].as_object() {
        o += &format!(
            "\ndisk {}: {} free of {}\n",
            d.get("path").and_then(Value::as_str).unwrap_or("?"),
            bytes(d.get("free_bytes").map_or(0, u)),
            bytes(d.get("total_bytes").map_or(0, u)),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(seconds(&serde_json::json!(0.000_008_19)), "8.2us");
    }

    #[test]
    fn renders_rates_from_two_readings() {
        let cluster = serde_json::json!({"node": "a", "mode": "async", "nodes": [
            {"name": "a", "role": "primary", "epoch": 3, "health": "ok", "link": "self",
             "lag_bytes": 0, "lag_seconds": 0.0, "self": true},
            {"name": "b", "role": "secondary", "epoch": null, "health": "down",
             "link": "disconnected", "lag_bytes": 2048, "lag_seconds": 1.5, "self": false}]});
        let q = |t: f64, app: u64, deq: u64| {
            serde_json::json!({"time_unix": t, "queues": [{"name": "orders",
                "appended_messages": app, "groups": [{"dequeued_messages": deq}],
                "depth": app - deq, "capacity": 1000, "disk_bytes": 1024,
                "enqueue_latency": {"p99_seconds": null}, "links": []}]})
        };
        let first = render("x:1", &cluster, &q(10.0, 100, 0), None);
        assert!(first.contains("orders"), "{first}");
        let second = render("x:1", &cluster, &q(12.0, 500, 100), Some(&q(10.0, 100, 0)));
        let line = second.lines().find(|l| l.starts_with("orders")).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[1..5], &["200", "50", "400", "1000"], "{line}");
        assert!(
            second.contains("b                    secondary"),
            "{second}"
        );
        assert!(second.contains("2.0 KiB"), "{second}");
    }
}
