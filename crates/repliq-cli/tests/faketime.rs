//! The clock nemesis of `repliq-chaos` (docs/reliability.md, "Clocks")
//! moves a daemon's wall clock with libfaketime: `LD_PRELOAD`,
//! `FAKETIME_TIMESTAMP_FILE` re-read on every call (`FAKETIME_NO_CACHE`), and
//! `FAKETIME_DONT_FAKE_MONOTONIC` so that only `CLOCK_REALTIME` moves. This
//! test proves that the preload takes effect in the real daemon: its
//! `time_unix` follows the file forwards and backwards while its
//! `uptime_seconds` (an `Instant`, `CLOCK_MONOTONIC`) keeps pace with the
//! host's monotonic clock. Without libfaketime installed it says so and
//! proves nothing (the nemesis itself refuses to run then).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{daemon_command, http_get, write_minimal_daemon_config, KillOnDrop, PATIENCE};

mod support;

/// Where Debian's `libfaketime` package puts the library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn host_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `(time_unix, uptime_seconds)` of the daemon at `http`.
fn clocks(http: &str) -> Option<(f64, f64)> {
    let (status, body) = http_get(http, "/api/v1/node")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v["time_unix"].as_f64()?, v["uptime_seconds"].as_f64()?))
}

/// Waits until the daemon's wall clock is `offset` s from the host's (within
/// 5 s); returns its uptime then.
fn wait_offset(http: &str, offset: f64, child: &mut KillOnDrop) -> f64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((t, up)) = clocks(http) {
            if (t - host_unix() - offset).abs() < 5.0 {
                return up;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's time_unix never came to {offset} s off the host's (last {:?}, host {}): {:?}",
            clocks(http),
            host_unix(),
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Needs Debian's `libfaketime`, which a machine with only the Rust toolchain
/// lacks, so it is ignored by the plain test command and run by
/// `.ci/chaos.sh` (which installs the package) with `--ignored`; there it
/// fails if the library is absent.
#[test]
#[ignore = "needs libfaketime (apt-get install libfaketime); .ci/chaos.sh runs it"]
fn libfaketime_moves_the_daemons_wall_clock_but_not_its_monotonic_clock() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is absent: apt-get install libfaketime"
    );
    let d = tempfile::tempdir().expect("tempdir");
    let clock = d.path().join("clock");
    std::fs::write(&clock, "+0\n").expect("clock file");
    let cfg = d.path().join("node.yaml");
    let http = write_minimal_daemon_config(&cfg, &d.path().join("data"));
    let mut child = KillOnDrop(
        daemon_command(&cfg)
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .spawn()
            .expect("spawn the daemon"),
    );
    let start = Instant::now();
    let up0 = wait_offset(&http, 0.0, &mut child);
    let t0 = start.elapsed().as_secs_f64();

    // Backwards two hours, then forwards one, then back to the host's time.
    let mut last_up = up0;
    for offset in [-7200.0, 3600.0, 0.0] {
        std::fs::write(&clock, format!("{offset:+}\n")).expect("clock file");
        let up = wait_offset(&http, offset, &mut child);
        let host = start.elapsed().as_secs_f64();
        // Uptime is monotonic: it never goes back, and it moves as the
        // host's monotonic clock does (1 s for the daemon's snapshot
        // period and the scheduling of a loaded machine), not by the jump.
        assert!(up >= last_up, "uptime went back: {last_up} then {up}");
        assert!(
            (up - up0) <= (host - t0) + 3.0,
            "uptime moved {} s in {} s of host time (offset {offset})",
            up - up0,
            host - t0
        );
        last_up = up;
    }
    assert!(child.try_wait().ok().flatten().is_none(), "the daemon died");
}
