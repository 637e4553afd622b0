//! `report`: reads the JSON lines of one `bench/run` and writes a markdown
//! table plus PNG plots.
//!
//! ```text
//! report --results DIR --images DIR [--doc FILE] [--font TTF] [--command "..."]
//! ```
//! Every `*.jsonl` in DIR is read: `repliq bench ipc --json` and `repliq bench
//! throughput --json` lines (system "repliq"), `peers` lines (`kind` latency,
//! throughput, limits; `peers repl`: repl_latency, repl_sync, repl_throughput,
//! reported in a Replication section with its own plot) and
//! `{"kind":"skipped","system":..,"reason":..}` notes.
//! The markdown goes to DIR/results.md and, with --doc, replaces what is
//! between `<!-- BEGIN RESULTS -->` and `<!-- END RESULTS -->` in FILE.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

const ORDER: &[&str] = &[
    "crossbeam",
    "iceoryx2",
    "repliq",
    "pipe",
    "uds",
    "redis",
    "nats",
];
const PCTS: [(&str, &str); 6] = [
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p99_9", "p99.9"),
    ("p99_99", "p99.99"),
    ("max", "max"),
];

#[derive(Clone, Debug)]
struct Lat {
    system: String,
    size: u64,
    rate: u64,
    reader: String,
    count: u64,
    lost: u64,
    behind: u64,
    attempts: u64,
    pct: [u64; 6],
}

#[derive(Clone, Debug)]
struct Tput {
    system: String,
    size: u64,
    msgs: f64,
    mbs: f64,
    lost: u64,
    /// Server (daemon) CPU seconds per GB delivered; replication runs only.
    cpu_per_gb: Option<f64>,
}

/// One replication latency run: asynchronous append -> visible on the
/// replica (`repl_latency`) or synchronous round trip (`repl_sync`).
#[derive(Clone, Debug)]
struct ReplLat {
    label: String,
    system: String,
    size: u64,
    rate: u64,
    how: String,
    count: u64,
    lost: u64,
    failures: u64,
    unsent: u64,
    behind: u64,
    attempts: u64,
    pct: [u64; 6],
}

/// One loopback TCP ping-pong of the same run (`peers tcp-floor`).
#[derive(Clone, Debug)]
struct TcpFloor {
    size: u64,
    wait: String,
    rtt_p50: u64,
    rtt_p99: u64,
    rtt_p99_9: u64,
}

impl TcpFloor {
    /// The blocking floor at `size`, the one replication is compared with:
    /// repliq's daemons wait in `epoll_wait`, as Redis and NATS do.
    fn blocking(floors: &[TcpFloor], size: u64) -> Option<&TcpFloor> {
        floors
            .iter()
            .find(|f| f.size == size && f.wait == "blocking")
    }
}

/// `value / floor` as a ratio cell ("3.2×"), or "–" without a floor.
fn ratio(value: u64, floor: Option<u64>) -> String {
    match floor {
        Some(f) if f > 0 => format!("{:.1}×", value as f64 / f as f64),
        _ => "–".into(),
    }
}

/// The label of a replication run: the system, plus what differs.
fn repl_label(v: &Value) -> String {
    let sys = s(v, "system");
    let tls = v.get("tls").and_then(Value::as_bool) == Some(true);
    match (sys.as_str(), s(v, "durability").as_str(), tls) {
        ("repliq", "batch", false) => "repliq (msync)".into(),
        ("repliq", "always", false) => "repliq (msync each)".into(),
        ("repliq", "batch", true) => "repliq (msync, TLS)".into(),
        ("repliq", "always", true) => "repliq (msync each, TLS)".into(),
        ("repliq", _, true) => "repliq (TLS)".into(),
        _ => sys,
    }
}

fn rank(s: &str) -> usize {
    ORDER.iter().position(|x| *x == s).unwrap_or(99)
}

fn color(s: &str) -> RGBColor {
    match s {
        "repliq" => RGBColor(214, 39, 40),
        "iceoryx2" => RGBColor(31, 119, 180),
        "crossbeam" => RGBColor(44, 160, 44),
        "uds" => RGBColor(255, 127, 14),
        "pipe" => RGBColor(148, 103, 189),
        "redis" => RGBColor(140, 86, 75),
        "nats" => RGBColor(127, 127, 127),
        "repliq (msync)" => RGBColor(255, 152, 150),
        "repliq (TLS)" => RGBColor(188, 189, 34),
        s if s.starts_with("repliq") => RGBColor(120, 20, 20),
        _ => RGBColor(0, 0, 0),
    }
}

fn fmt_ns(ns: u64) -> String {
    let n = ns as f64;
    if n < 1e3 {
        format!("{ns} ns")
    } else if n < 1e6 {
        format!("{:.1} µs", n / 1e3)
    } else if n < 1e9 {
        format!("{:.2} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}
fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}
fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("report: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut args = BTreeMap::new();
    let mut i = 0;
    while i + 1 < argv.len() {
        args.insert(
            argv[i].trim_start_matches("--").to_string(),
            argv[i + 1].clone(),
        );
        i += 2;
    }
    let results = PathBuf::from(args.get("results").ok_or("--results DIR is required")?);
    let images = PathBuf::from(
        args.get("images")
            .cloned()
            .unwrap_or_else(|| "docs/images".into()),
    );
    let font = args
        .get("font")
        .cloned()
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes = std::fs::read(&font).map_err(|e| format!("cannot read font {font}: {e}"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{font} is not a usable font"))?;

    let (mut lats, mut tputs, mut limits, mut notes) = (Vec::new(), Vec::new(), None, Vec::new());
    let (mut rlats, mut rsyncs, mut rtputs) = (Vec::new(), Vec::new(), Vec::new());
    let mut floors: Vec<TcpFloor> = Vec::new();
    let mut stream_leader = String::new();
    let mut machine: Option<Value> = None;
    let mut files: Vec<_> = std::fs::read_dir(&results)
        .map_err(|e| format!("{}: {e}", results.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for p in &files {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}: {line}", p.display()))?;
            let pct = |v: &Value| PCTS.map(|(k, _)| u(v, k));
            match (s(&v, "bench").as_str(), s(&v, "kind").as_str()) {
                ("ipc", _) => lats.push(Lat {
                    system: "repliq".into(),
                    size: u(&v, "size"),
                    rate: u(&v, "rate"),
                    reader: format!("{} (Tailer::next_with)", s(&v, "idle")),
                    count: u(&v, "count"),
                    lost: 0,
                    behind: u(&v, "writer_max_behind_ns"),
                    attempts: u(&v, "attempts").max(1),
                    pct: pct(&v),
                }),
                ("throughput", _) => tputs.push(Tput {
                    system: "repliq".into(),
                    size: u(&v, "size"),
                    msgs: f(&v, "read_msgs"),
                    mbs: f(&v, "read_gbs") * 1000.0,
                    lost: 0,
                    cpu_per_gb: None,
                }),
                (_, "latency") => lats.push(Lat {
                    system: s(&v, "system"),
                    size: u(&v, "size"),
                    rate: u(&v, "rate"),
                    reader: s(&v, "reader"),
                    count: u(&v, "count"),
                    lost: u(&v, "lost"),
                    behind: u(&v, "writer_max_behind_ns"),
                    attempts: u(&v, "attempts").max(1),
                    pct: pct(&v),
                }),
                (_, "throughput") => tputs.push(Tput {
                    system: s(&v, "system"),
                    size: u(&v, "size"),
                    msgs: f(&v, "msgs"),
                    mbs: f(&v, "mbs"),
                    lost: u(&v, "lost"),
                    cpu_per_gb: None,
                }),
                (_, k @ ("repl_latency" | "repl_sync")) => {
                    let r = ReplLat {
                        label: repl_label(&v),
                        system: s(&v, "system"),
                        size: u(&v, "size"),
                        rate: u(&v, "rate"),
                        how: if k == "repl_sync" {
                            s(&v, "ack")
                        } else {
                            s(&v, "reader")
                        },
                        count: u(&v, "count"),
                        lost: u(&v, "lost"),
                        failures: u(&v, "failures"),
                        unsent: u(&v, "unsent"),
                        behind: u(&v, "writer_max_behind_ns"),
                        attempts: u(&v, "attempts").max(1),
                        pct: pct(&v),
                    };
                    if s(&v, "system") == "nats" && !s(&v, "stream_leader").is_empty() {
                        stream_leader = s(&v, "stream_leader");
                    }
                    if k == "repl_sync" {
                        rsyncs.push(r)
                    } else {
                        rlats.push(r)
                    }
                }
                (_, "repl_throughput") => rtputs.push(Tput {
                    system: repl_label(&v),
                    size: u(&v, "size"),
                    msgs: f(&v, "msgs"),
                    mbs: f(&v, "mbs"),
                    lost: u(&v, "lost"),
                    cpu_per_gb: v.get("servers_cpu_s_per_gb").and_then(Value::as_f64),
                }),
                (_, "limits") => limits = Some(v),
                (_, "tcp_floor") => floors.push(TcpFloor {
                    size: u(&v, "size"),
                    wait: s(&v, "wait"),
                    rtt_p50: u(&v, "rtt_p50"),
                    rtt_p99: u(&v, "rtt_p99"),
                    rtt_p99_9: u(&v, "rtt_p99_9"),
                }),
                (_, "machine") => machine = Some(v),
                (_, "skipped") => {
                    notes.push(format!("**{}**: {}", s(&v, "system"), s(&v, "reason")))
                }
                _ => {}
            }
        }
    }
    lats.sort_by_key(|l| (std::cmp::Reverse(l.rate), rank(&l.system), l.size));
    tputs.sort_by_key(|t| (rank(&t.system), t.size));
    let rkey = |l: &ReplLat| {
        (
            std::cmp::Reverse(l.rate),
            rank(&l.system),
            l.label.clone(),
            l.size,
        )
    };
    rlats.sort_by_key(rkey);
    rsyncs.sort_by_key(rkey);
    rtputs.sort_by_key(|t| (rank(&t.system), t.system.clone(), t.size));

    let mut md = String::new();
    if let Some(cmd) = args.get("command") {
        let _ = writeln!(md, "Command: `{cmd}`\n");
    }
    if let Some(m) = &machine {
        let _ = writeln!(
            md,
            "Machine: {}, {} CPUs, {} GiB, Linux {}; {}; redis-server {}; {}. Mode: {}. \
             CPU busy with other work just before the run: {}%; load average before/after: {} / {}.\n",
            s(m, "cpu"),
            u(m, "nproc"),
            u(m, "mem_gib"),
            s(m, "kernel"),
            s(m, "rustc"),
            s(m, "redis"),
            s(m, "nats"),
            s(m, "mode"),
            s(m, "busy_before_pct"),
            s(m, "load_before"),
            fs::read_to_string(results.join("load_after")).unwrap_or_default().trim()
        );
    }
    if !notes.is_empty() {
        md.push_str("Skipped or failed:\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    if let Some(l) = &limits {
        let _ = writeln!(
            md,
            "Physical limits (same run): cross-core AtomicU64 ping-pong one-way latency p50 **{}**, p99 **{}** \
             (CPUs {} and {}); single-thread memcpy **{:.1} GB/s** (256 MiB buffers), {:.1} GB/s (256 KiB, cache-resident).\n",
            fmt_ns(u(l, "pingpong_oneway_p50")),
            fmt_ns(u(l, "pingpong_oneway_p99")),
            l["cpus"][0],
            l["cpus"][1],
            f(l, "memcpy_gbs_256mib"),
            f(l, "memcpy_gbs_256kib"),
        );
    }
    if !floors.is_empty() {
        floors.sort_by_key(|f| (f.size, f.wait.clone()));
        md.push_str(
            "Loopback TCP floor (same run, `peers tcp-floor`): a ping-pong between two threads pinned to the \
             two CPUs over one 127.0.0.1 connection with `TCP_NODELAY`; `blocking` sleeps in `read`, `busy` spins \
             on a non-blocking socket. One way is half the round trip.\n\n\
             | size | waits by | round trip p50 | p99 | p99.9 | one way p50 |\n|---:|---|---:|---:|---:|---:|\n",
        );
        for f in &floors {
            let _ = writeln!(
                md,
                "| {} B | {} | {} | {} | {} | {} |",
                f.size,
                f.wait,
                fmt_ns(f.rtt_p50),
                fmt_ns(f.rtt_p99),
                fmt_ns(f.rtt_p99_9),
                fmt_ns(f.rtt_p50 / 2)
            );
        }
        md.push('\n');
    }
    md.push_str("### One-way latency (writer process -> reader process, coordinated-omission corrected)\n\n");
    md.push_str("| system | size | target rate | reader waits by | p50 | p90 | p99 | p99.9 | p99.99 | max | messages | writer behind schedule (max) | attempts |\n");
    md.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in &lats {
        let _ = write!(
            md,
            "| {} | {} B | {}/s | {} |",
            l.system,
            l.size,
            fmt_rate(l.rate as f64),
            l.reader
        );
        for v in l.pct {
            let _ = write!(md, " {} |", fmt_ns(v));
        }
        let lost = if l.lost > 0 {
            format!(" ({} lost)", l.lost)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            " {}{} | {} | {} |",
            l.count,
            lost,
            fmt_ns(l.behind),
            l.attempts
        );
    }
    md.push_str(
        "\n### Unthrottled throughput (one writer, one reader; delivered to the reader)\n\n",
    );
    let sizes: Vec<u64> = {
        let mut v: Vec<u64> = tputs.iter().map(|t| t.size).collect();
        v.sort();
        v.dedup();
        v
    };
    md.push_str("| system |");
    for sz in &sizes {
        let _ = write!(md, " {sz} B msg/s | {sz} B MB/s |");
    }
    md.push_str("\n|---|");
    for _ in &sizes {
        md.push_str("---:|---:|");
    }
    md.push('\n');
    let mut systems: Vec<String> = tputs.iter().map(|t| t.system.clone()).collect();
    systems.dedup();
    for sys in &systems {
        let _ = write!(md, "| {sys} |");
        for sz in &sizes {
            match tputs.iter().find(|t| &t.system == sys && t.size == *sz) {
                Some(t) => {
                    let lost = if t.lost > 0 {
                        format!(" ({} lost)", t.lost)
                    } else {
                        String::new()
                    };
                    let _ = write!(md, " {}{lost} | {:.0} |", fmt_rate(t.msgs), t.mbs);
                }
                None => md.push_str(" – | – |"),
            }
        }
        md.push('\n');
    }

    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let mut rates: Vec<u64> = lats.iter().map(|l| l.rate).collect();
    rates.sort_unstable_by(|a, b| b.cmp(a));
    rates.dedup();
    md.push_str("\n### Plots\n\n");
    for rate in &rates {
        let name = format!(
            "bench-latency-{}.png",
            fmt_rate(*rate as f64).replace(' ', "").to_lowercase()
        );
        let set: Vec<&Lat> = lats.iter().filter(|l| l.rate == *rate).collect();
        plot_latency(&images.join(&name), *rate, &set)?;
        let _ = writeln!(
            md,
            "![latency percentiles at {}/s](images/{name})\n",
            fmt_rate(*rate as f64)
        );
    }
    if !tputs.is_empty() {
        plot_tput(&images.join("bench-throughput.png"), &tputs, &sizes)?;
        md.push_str("![unthrottled throughput](images/bench-throughput.png)\n");
    }
    if !(rlats.is_empty() && rsyncs.is_empty() && rtputs.is_empty()) {
        repl_markdown(&mut md, &rlats, &rsyncs, &rtputs, &stream_leader, &floors);
    }
    if !(rlats.is_empty() && rsyncs.is_empty()) {
        plot_repl(&images.join("bench-replication.png"), &rlats, &rsyncs)?;
        md.push_str("\n![replication latency percentiles](images/bench-replication.png)\n");
    }

    std::fs::write(results.join("results.md"), &md).map_err(|e| e.to_string())?;
    if let Some(doc) = args.get("doc") {
        splice(Path::new(doc), &md)?;
    }
    print!("{md}");
    Ok(())
}

/// Replaces the text between the markers in `doc` (creating the file if needed).
fn splice(doc: &Path, md: &str) -> Result<(), String> {
    const B: &str = "<!-- BEGIN RESULTS -->";
    const E: &str = "<!-- END RESULTS -->";
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let new = match (old.find(B), old.find(E)) {
        (Some(b), Some(e)) if b < e => format!("{}{B}\n{md}\n{}", &old[..b], &old[e..]),
        _ => format!("{old}\n{B}\n{md}\n{E}\n"),
    };
    std::fs::write(doc, new).map_err(|e| format!("{}: {e}", doc.display()))
}

fn plot_latency(path: &Path, rate: u64, set: &[&Lat]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            &format!(
                "One-way latency, writer -> reader, target {}/s (log scale)",
                fmt_rate(rate as f64)
            ),
            ("sans-serif", 28),
        )
        .map_err(|e| e.to_string())?;
    let mut sizes: Vec<u64> = set.iter().map(|l| l.size).collect();
    sizes.sort();
    sizes.dedup();
    let cells = root.split_evenly((2, 2));
    let lo = set
        .iter()
        .flat_map(|l| l.pct)
        .filter(|v| *v > 0)
        .min()
        .unwrap_or(1)
        .max(1) as f64
        / 1e3;
    let hi = set.iter().flat_map(|l| l.pct).max().unwrap_or(1000) as f64 / 1e3;
    for (cell, size) in cells.iter().zip(&sizes) {
        let mut chart = ChartBuilder::on(cell)
            .caption(format!("{size} B messages"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..5.2f64, ((lo * 0.7)..(hi * 1.5)).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                if (x - x.round()).abs() < 0.01 && i < PCTS.len() {
                    PCTS[i].1.to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("µs")
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| e.to_string())?;
        for l in set.iter().filter(|l| l.size == *size) {
            let c = color(&l.system);
            let pts: Vec<(f64, f64)> = l
                .pct
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, (*v).max(1) as f64 / 1e3))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(l.system.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn plot_tput(path: &Path, tputs: &[Tput], sizes: &[u64]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (1400, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(700);
    let n = sizes.len().max(1) as f64;
    for (area, mb) in [(left, false), (right, true)] {
        let vals: Vec<f64> = tputs
            .iter()
            .map(|t| if mb { t.mbs } else { t.msgs })
            .filter(|v| *v > 0.0)
            .collect();
        let lo = vals.iter().cloned().fold(f64::MAX, f64::min).min(1e9);
        let hi = vals.iter().cloned().fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                if mb {
                    "Unthrottled throughput, MB/s (log)"
                } else {
                    "Unthrottled throughput, messages/s (log)"
                },
                ("sans-serif", 24),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.3f64..(n - 0.7), ((lo * 0.5)..(hi * 2.0)).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(sizes.len())
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                if (x - x.round()).abs() < 0.01 && i < sizes.len() {
                    format!("{} B", sizes[i])
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| fmt_rate(*y))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| e.to_string())?;
        let mut systems: Vec<String> = tputs.iter().map(|t| t.system.clone()).collect();
        systems.dedup();
        for sys in systems {
            let c = color(&sys);
            let pts: Vec<(f64, f64)> = sizes
                .iter()
                .enumerate()
                .filter_map(|(i, sz)| {
                    tputs
                        .iter()
                        .find(|t| t.system == sys && t.size == *sz)
                        .map(|t| (i as f64, if mb { t.mbs } else { t.msgs }.max(lo)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(sys.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// A replication latency table. The `p50 ÷ TCP` column divides the p50 by
/// the same run's blocking loopback floor at the same size: the one-way
/// time for an append becoming visible, the round trip for a synchronous
/// append.
fn repl_lat_table(md: &mut String, set: &[ReplLat], how: &str, sync: bool, floors: &[TcpFloor]) {
    let floor_name = if sync {
        "TCP round trip"
    } else {
        "TCP one way"
    };
    let _ = writeln!(
        md,
        "| system | size | target rate | {how} | p50 | p90 | p99 | p99.9 | p99.99 | max | p50 ÷ {floor_name} (blocking) | messages | writer behind schedule (max) | attempts |"
    );
    md.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in set {
        let _ = write!(
            md,
            "| {} | {} B | {}/s | {} |",
            l.label,
            l.size,
            fmt_rate(l.rate as f64),
            l.how
        );
        for v in l.pct {
            let _ = write!(md, " {} |", fmt_ns(v));
        }
        let floor =
            TcpFloor::blocking(floors, l.size).map(
                |f| {
                    if sync {
                        f.rtt_p50
                    } else {
                        f.rtt_p50 / 2
                    }
                },
            );
        let _ = write!(md, " {} |", ratio(l.pct[0], floor));
        let mut note = String::new();
        if l.lost > 0 {
            let _ = write!(note, " ({} lost)", l.lost);
        }
        if sync && l.failures > 0 {
            let _ = write!(note, " ({} not acknowledged in time)", l.failures);
        }
        if sync && l.unsent > 0 {
            let _ = write!(
                note,
                " (rate not sustained: stopped at twice the planned time, {} never sent)",
                l.unsent
            );
        }
        let _ = writeln!(
            md,
            " {}{note} | {} | {} |",
            l.count,
            fmt_ns(l.behind),
            l.attempts
        );
    }
}

fn repl_markdown(
    md: &mut String,
    rlats: &[ReplLat],
    rsyncs: &[ReplLat],
    rtputs: &[Tput],
    leader: &str,
    floors: &[TcpFloor],
) {
    md.push_str(
        "\n### Replication (loopback; writer, reader, and every node a separate process)\n\n",
    );
    md.push_str(
        "repliq: a primary and a secondary `repliq daemon`, the writer appending into the primary's \
         queue directory, the reader tailing the secondary's; Redis: a master and a `--replicaof` replica, \
         XADD on the master, XREAD BLOCK on the replica; NATS: a three-node JetStream cluster, a stream \
         with `num_replicas: 3`, publishing to node 1 and consuming via node 3",
    );
    if !leader.is_empty() {
        let _ = write!(md, ", the stream's leader on {leader}");
    }
    md.push_str(". Every writer sleeps for its slots; nothing is pinned.\n\n");
    if !rlats.is_empty() {
        md.push_str("#### Asynchronous append -> visible to a reader on the replica (coordinated-omission corrected)\n\n");
        repl_lat_table(md, rlats, "reader on the replica", false, floors);
        md.push('\n');
    }
    if !rsyncs.is_empty() {
        md.push_str("#### Synchronous round trip: append, then wait for the replica's acknowledgement (from the intended send time)\n\n");
        repl_lat_table(md, rsyncs, "returns when", true, floors);
        md.push('\n');
    }
    if !rtputs.is_empty() {
        md.push_str(
            "#### Replicated throughput (unthrottled; delivered to the reader on the replica)\n\n",
        );
        let mut sizes: Vec<u64> = rtputs.iter().map(|t| t.size).collect();
        sizes.sort();
        sizes.dedup();
        md.push_str(
            "Server CPU per GB: the CPU time (user + system, from `/proc/<pid>/stat`) both servers \
             (the two repliq daemons; the Redis master and replica) used over the run, per GB delivered \
             to the reader. NATS is not measured (its three servers are shared with the other runs).\n\n",
        );
        md.push_str("| system |");
        for sz in &sizes {
            let _ = write!(md, " {sz} B msg/s | {sz} B MB/s | {sz} B server CPU s/GB |");
        }
        md.push_str("\n|---|");
        for _ in &sizes {
            md.push_str("---:|---:|---:|");
        }
        md.push('\n');
        let mut systems: Vec<String> = rtputs.iter().map(|t| t.system.clone()).collect();
        systems.dedup();
        for sys in &systems {
            let _ = write!(md, "| {sys} |");
            for sz in &sizes {
                match rtputs.iter().find(|t| &t.system == sys && t.size == *sz) {
                    Some(t) => {
                        let lost = if t.lost > 0 {
                            format!(" ({} lost)", t.lost)
                        } else {
                            String::new()
                        };
                        let cpu = t
                            .cpu_per_gb
                            .map_or_else(|| "–".to_string(), |c| format!("{c:.2}"));
                        let _ = write!(md, " {}{lost} | {:.0} | {cpu} |", fmt_rate(t.msgs), t.mbs);
                    }
                    None => md.push_str(" – | – | – |"),
                }
            }
            md.push('\n');
        }
    }
}

/// Replication latency percentiles: one row of panels per measurement
/// (asynchronous append -> visible, synchronous round trip), one column per size.
fn plot_repl(path: &Path, rlats: &[ReplLat], rsyncs: &[ReplLat]) -> Result<(), String> {
    let mut sizes: Vec<u64> = rlats.iter().chain(rsyncs).map(|l| l.size).collect();
    sizes.sort();
    sizes.dedup();
    let rows: Vec<(&str, &[ReplLat])> = [
        ("append -> visible on the replica", rlats),
        ("synchronous round trip", rsyncs),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    let root = BitMapBackend::new(path, (1400, 500 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            "Replication on loopback: latency percentiles (log scale)",
            ("sans-serif", 28),
        )
        .map_err(|e| e.to_string())?;
    let cells = root.split_evenly((rows.len(), sizes.len().max(1)));
    let all = rlats.iter().chain(rsyncs).flat_map(|l| l.pct);
    let lo = all.clone().filter(|v| *v > 0).min().unwrap_or(1).max(1) as f64 / 1e3;
    let hi = all.max().unwrap_or(1000) as f64 / 1e3;
    for (r, (what, set)) in rows.iter().enumerate() {
        for (ci, size) in sizes.iter().enumerate() {
            let cell = &cells[r * sizes.len() + ci];
            let mut chart = ChartBuilder::on(cell)
                .caption(format!("{what}, {size} B"), ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.2f64..5.2f64, ((lo * 0.7)..(hi * 1.5)).log_scale())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_labels(6)
                .x_label_formatter(&|x| {
                    let i = x.round() as usize;
                    if (x - x.round()).abs() < 0.01 && i < PCTS.len() {
                        PCTS[i].1.to_string()
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| fmt_ns((*y * 1e3).round() as u64))
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| e.to_string())?;
            for l in set.iter().filter(|l| l.size == *size) {
                let name = format!("{} @ {}/s", l.label, fmt_rate(l.rate as f64));
                let mut c = color(&l.label);
                if l.rate > 10_000 && l.system == "repliq" {
                    c = RGBColor(250, 180, 40);
                }
                let pts: Vec<(f64, f64)> = l
                    .pct
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, (*v).max(1) as f64 / 1e3))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                    .map_err(|e| e.to_string())?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}
