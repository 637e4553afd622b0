//! Smoke tests of `repliq bench` and `repliq demo`: they run, their children
//! exit cleanly, and the figures are sane. Not a performance test.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The benchmarks pin processes to CPUs: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn repliq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_repliq"))
}

/// Runs `repliq args…`, fails the test (with its stderr) unless it exits 0,
/// and returns its standard output.
fn run_ok(args: &[&str]) -> String {
    let out = repliq().args(args).output().expect("run repliq");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "repliq {} failed: {}\n{text}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// As [`run_ok`], for a command printing exactly one JSON object.
fn run_json(args: &[&str]) -> serde_json::Value {
    let text = run_ok(args);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object expected, got {text}");
    serde_json::from_str(lines[0]).expect("JSON")
}

fn field(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("field {k} missing or not an integer in {v}"))
}

#[test]
fn ipc_json_is_sane() {
    let _g = serial();
    let v = run_json(&[
        "bench",
        "ipc",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "100000",
        "--pingpong-rounds",
        "10000",
        "--json",
    ]);
    // The writer sends every message scheduled in the window, however late,
    // and the bench checks that the reader got each: the counts are exact.
    let count = field(&v, "count");
    assert_eq!(count, 100_000, "1 s measured at 100,000 msg/s");
    assert_eq!(field(&v, "sent"), 120_000, "1.2 s sent at 100,000 msg/s");
    let (p50, p99, max) = (field(&v, "p50"), field(&v, "p99"), field(&v, "max"));
    assert!(
        p50 > 0 && p50 <= p99 && p99 <= max,
        "p50 {p50} p99 {p99} max {max}"
    );
    assert!(field(&v, "p99_9") <= field(&v, "p99_99"));
    // The throughput is measured over the reader's span, which a loaded
    // machine stretches or shifts: only its order of magnitude is checked
    // here (a unit or span error is off by 1000), not the machine's speed.
    let tput = v["throughput_msgs"].as_f64().expect("throughput_msgs");
    assert!(
        tput > 1_000.0 && tput < 10_000_000.0,
        "throughput {tput} msg/s is not of the order of the offered 100,000 msg/s"
    );
    assert!(field(&v["pingpong_before"], "p50") > 0);

    // The hiccup meters are on by default, one beside the reader and one
    // beside the writer: histograms of 1 ms sleeps' oversleep over the
    // measured second, and the tail's ratios to the worse of the two.
    let (hr, hw) = (&v["hiccup"], &v["hiccup_writer"]);
    for h in [hr, hw] {
        assert_eq!(h["method"], "sleep", "hiccup: {h}");
        assert_eq!(field(h, "interval_ns"), 1_000_000);
        assert!(field(h, "count") > 0, "the meter recorded nothing: {h}");
        assert_monotonic(h);
    }
    assert_eq!(hr["cpu"], v["reader_cpu"], "the meter is beside the reader");
    assert_eq!(hw["cpu"], v["writer_cpu"], "the meter is beside the writer");
    let ratios = &v["tail_vs_hiccup"];
    for k in ["p99", "p99_9", "max"] {
        let worse = field(hr, k).max(field(hw, k));
        if let Some(x) = ratios[k].as_f64() {
            let want = field(&v, k) as f64 / worse as f64;
            assert!((x - want).abs() <= 1e-9 * want, "{k}: {x} vs {want}");
        } else {
            assert_eq!(worse, 0, "ratio {k} missing though a meter saw {k} > 0");
        }
    }
    // CPU time over the window, per second and per measured message.
    for who in ["reader_cpu_use", "writer_cpu_use"] {
        assert_cpu_use(&v[who], who, count);
    }
}

/// Percentiles are non-decreasing from p50 to max.
fn assert_monotonic(h: &serde_json::Value) {
    let ps: Vec<u64> = ["p50", "p90", "p99", "p99_9", "p99_99", "max"]
        .iter()
        .map(|k| field(h, k))
        .collect();
    assert!(ps.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {h}");
}

/// One thread's CPU use over a window of the run: its fields agree with each
/// other, and one thread used at most one CPU (with room for a scheduler
/// tick of lag in `/proc`'s figure).
fn assert_cpu_use(u: &serde_json::Value, who: &str, measured: u64) {
    let (cpu, wall) = (field(u, "cpu_ns"), field(u, "wall_ns"));
    assert!(wall > 0, "{who}: empty window {u}");
    // The writer's window runs from its first measured send to its last, the
    // reader's is the measured window: both span the measured messages.
    assert_eq!(field(u, "messages"), measured, "{who}: {u}");
    let per_s = u["cpu_per_s"].as_f64().expect("cpu_per_s");
    let per_msg = u["ns_per_msg"].as_f64().expect("ns_per_msg");
    assert!(per_s >= 0.0 && per_msg >= 0.0, "{who}: {u}");
    assert!(
        (per_s - cpu as f64 / wall as f64).abs() < 1e-9,
        "{who}: cpu_per_s disagrees: {u}"
    );
    assert!(
        (per_msg - cpu as f64 / measured as f64).abs() < 1e-6,
        "{who}: ns_per_msg disagrees: {u}"
    );
    assert!(per_s <= 1.1, "{who}: one thread used {per_s} CPUs: {u}");
}

#[test]
fn ipc_without_the_meter_reports_no_hiccups_but_still_cpu_time() {
    let _g = serial();
    let v = run_json(&[
        "bench",
        "ipc",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--rate",
        "1000",
        "--idle",
        "futex",
        "--hiccup",
        "off",
        "--pingpong-rounds",
        "0",
        "--json",
    ]);
    assert_eq!(field(&v, "count"), 500, "0.5 s measured at 1,000 msg/s");
    assert!(v.get("hiccup").is_none(), "meter off but reported: {v}");
    assert!(
        v.get("hiccup_writer").is_none(),
        "meter off but reported: {v}"
    );
    assert!(
        v.get("tail_vs_hiccup").is_none(),
        "meter off but ratios: {v}"
    );
    for who in ["reader_cpu_use", "writer_cpu_use"] {
        assert_cpu_use(&v[who], who, 500);
    }
}

#[test]
fn ipc_text_shows_the_meter_and_cpu_time() {
    let _g = serial();
    let text = run_ok(&[
        "bench",
        "ipc",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--rate",
        "10000",
        "--idle",
        "yield",
        "--pingpong-rounds",
        "0",
    ]);
    for word in [
        "beside the reader",
        "beside the writer",
        "latency / worse hiccup",
        "cpu time  reader",
        "ns/msg",
    ] {
        assert!(text.contains(word), "output lacks {word:?}: {text}");
    }
}

#[test]
fn demo_runs() {
    let _g = serial();
    let text = run_ok(&["demo", "--duration", "1"]);
    for word in ["p50", "p99", "p99.99", "max", "msg/s"] {
        assert!(text.contains(word), "demo output lacks {word}: {text}");
    }
    // The cluster act: a leader killed, another elected, nothing replicated lost.
    for phrase in [
        "is killed with SIGKILL",
        "and takes appends",
        "Of the 1000 messages a had replicated, 1000 are on the new leader.",
        "record for record",
    ] {
        assert!(
            text.contains(phrase),
            "demo output lacks {phrase:?}: {text}"
        );
    }
}

#[test]
fn throughput_runs() {
    let _g = serial();
    let v = run_json(&[
        "bench",
        "throughput",
        "--writers",
        "2",
        "--readers",
        "1",
        "--count",
        "200000",
        "--json",
    ]);
    assert_eq!(field(&v, "messages"), 200_000);
    for k in ["write_msgs", "read_msgs", "memcpy_gbs", "write_vs_memcpy"] {
        let x = v[k].as_f64().unwrap_or(0.0);
        assert!(x > 0.0, "{k} = {x}");
    }
}

#[test]
fn bad_arguments_fail_cleanly() {
    let out = repliq()
        .args(["bench", "ipc", "--size", "8"])
        .output()
        .expect("run repliq");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("16"), "unhelpful error: {err}");
}

#[test]
fn a_hiccup_cpu_outside_the_allowed_set_is_refused() {
    let out = repliq()
        .args([
            "bench",
            "ipc",
            "--hiccup-cpu",
            "100000",
            "--duration",
            "0.1",
        ])
        .output()
        .expect("run repliq");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hiccup-cpu"), "unhelpful error: {err}");
}
