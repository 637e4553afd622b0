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

fn field(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("field {k} missing or not an integer in {v}"))
}

#[test]
fn ipc_json_is_sane() {
    let _g = serial();
    let out = repliq()
        .args([
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
        ])
        .output()
        .expect("run repliq");
    assert!(
        out.status.success(),
        "bench ipc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object expected, got {text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
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
}

#[test]
fn demo_runs() {
    let _g = serial();
    let out = repliq()
        .args(["demo", "--duration", "1"])
        .output()
        .expect("run repliq");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = repliq()
        .args([
            "bench",
            "throughput",
            "--writers",
            "2",
            "--readers",
            "1",
            "--count",
            "200000",
            "--json",
        ])
        .output()
        .expect("run repliq");
    assert!(
        out.status.success(),
        "bench throughput failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
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
