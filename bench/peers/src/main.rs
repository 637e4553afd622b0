//! `peers`: the same writer -> reader workload as `repliq bench ipc` /
//! `repliq bench throughput`, on repliq's peers. Driven by `bench/run`.
//!
//! ```text
//! peers lat    --system S --size N --rate R --warmup SECS --duration SECS [--port P]
//! peers tput   --system S --size N --duration SECS [--port P]
//! peers repl   --system S --kind lat|tput|sync --size N ... (replication, see src/repl.rs)
//! peers limits [--rounds N]
//! peers tcp-floor --size N --wait blocking|busy [--rounds N]   (src/tcp_floor.rs)
//! peers free-port
//! ```
//! Systems: iceoryx2, uds, pipe, crossbeam, redis, nats. Each run prints one
//! JSON line on stdout. Two-process systems re-execute this binary as
//! `peers child ...` for the writer and the reader.
//!
//! Latency: the writer stamps each payload with the *intended* send time of
//! the schedule `start + i/rate` (CLOCK_MONOTONIC, comparable across
//! processes), so a stall counts against every message behind it
//! (coordinated omission corrected); the reader records `now - stamp` into an
//! HDR histogram as soon as the whole message is in its hands.

mod common;
mod repl;
mod systems;
mod tcp_floor;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Which side of a benchmark a process is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Lat,
    Tput,
}

/// Everything a writer or reader needs.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub system: String,
    pub mode: Mode,
    pub size: usize,
    pub rate: u64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub rdv: PathBuf,
    pub port: u16,
    pub name: String,
    pub cpu: Option<usize>,
}

impl Cfg {
    fn child_args(&self, role: &str) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "child".into(),
            "--role".into(),
            role.into(),
            "--system".into(),
            self.system.clone(),
            "--mode".into(),
            if self.mode == Mode::Lat {
                "lat"
            } else {
                "tput"
            }
            .into(),
            "--size".into(),
            self.size.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--warmup-ns".into(),
            self.warmup_ns.to_string(),
            "--duration-ns".into(),
            self.duration_ns.to_string(),
            "--rdv".into(),
            self.rdv.display().to_string(),
            "--port".into(),
            self.port.to_string(),
            "--name".into(),
            self.name.clone(),
        ];
        if let Some(c) = self.cpu {
            v.push("--cpu".into());
            v.push(c.to_string());
        }
        v
    }

    fn from_args(a: &Args) -> Result<Cfg, String> {
        Ok(Cfg {
            system: a.req("system")?,
            mode: if a.str("mode", "lat") == "tput" {
                Mode::Tput
            } else {
                Mode::Lat
            },
            size: a.u64("size", 64)? as usize,
            rate: a.u64("rate", 0)?,
            warmup_ns: a.u64("warmup-ns", 0)?,
            duration_ns: a.u64("duration-ns", 0)?,
            rdv: PathBuf::from(a.str("rdv", "/tmp")),
            port: a.u64("port", 0)? as u16,
            name: a.str("name", "repliq-peers"),
            cpu: a.0.get("cpu").and_then(|s| s.parse().ok()),
        })
    }
}

/// Is a system's server external (then the processes are not pinned: the
/// server needs a CPU too) and does its writer sleep between sends?
pub fn is_server(system: &str) -> bool {
    matches!(system, "redis" | "nats")
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let r = Args::parse(rest).and_then(|a| match cmd {
        "lat" | "tput" => orchestrate(cmd, &a),
        "child" => child(&a),
        "repl" => repl::orchestrate(&a),
        "repl-child" => repl::child(&a),
        "limits" => limits(&a),
        "tcp-floor" => tcp_floor::run(&a),
        "free-port" => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
            Ok(())
        }
        _ => Err(
            "usage: peers lat|tput|repl|limits|tcp-floor|free-port --system S --size N ... (see src/main.rs)"
                .into(),
        ),
    });
    if let Err(e) = r {
        eprintln!("peers {cmd}: error: {e}");
        std::process::exit(1);
    }
}

fn child(a: &Args) -> Result<(), String> {
    let cfg = Cfg::from_args(a)?;
    if let Some(c) = cfg.cpu {
        pin_to(c);
    }
    let out = match (a.req("role")?.as_str(), cfg.mode) {
        ("writer", Mode::Lat) => serde_json::to_string(&systems::writer_lat(&cfg)?),
        ("writer", Mode::Tput) => serde_json::to_string(&systems::writer_tput(&cfg)?),
        ("reader", Mode::Lat) => serde_json::to_string(&systems::reader_lat(&cfg)?),
        ("reader", Mode::Tput) => serde_json::to_string(&systems::reader_tput(&cfg)?),
        (r, _) => return Err(format!("unknown role {r}")),
    }
    .map_err(|e| e.to_string())?;
    println!("{out}");
    Ok(())
}

fn spawn(cfg: &Cfg, role: &str, cpu: Option<usize>) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = cfg.clone();
    c.cpu = cpu;
    Command::new(exe)
        .args(c.child_args(role))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the {role}: {e}"))
}

/// Waits for both children (bounded); kills them on timeout or failure.
fn collect(mut procs: Vec<(&str, Child)>, timeout: Duration) -> Result<Vec<String>, String> {
    let t0 = Instant::now();
    let mut done: Vec<Option<std::process::ExitStatus>> = vec![None; procs.len()];
    loop {
        for (i, (_, p)) in procs.iter_mut().enumerate() {
            if done[i].is_none() {
                done[i] = p.try_wait().map_err(|e| e.to_string())?;
            }
        }
        let failed = done.iter().any(|s| s.is_some_and(|s| !s.success()));
        if done.iter().all(Option::is_some) && !failed {
            break;
        }
        if failed || t0.elapsed() > timeout {
            for (_, p) in procs.iter_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
            let who: Vec<_> = procs
                .iter()
                .zip(&done)
                .map(|((n, _), s)| format!("{n}: {s:?}"))
                .collect();
            return Err(format!(
                "{} ({})",
                if failed {
                    "a child failed"
                } else {
                    "timed out"
                },
                who.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut outs = Vec::new();
    for (n, p) in procs.iter_mut() {
        let mut s = String::new();
        p.stdout
            .take()
            .ok_or("no stdout")?
            .read_to_string(&mut s)
            .map_err(|e| e.to_string())?;
        let line = s.lines().last().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(format!("the {n} printed no result"));
        }
        outs.push(line);
    }
    Ok(outs)
}

fn orchestrate(cmd: &str, a: &Args) -> Result<(), String> {
    let system = a.req("system")?;
    let size = a.u64("size", 64)? as usize;
    if size < 16 {
        return Err("--size must be at least 16".into());
    }
    let mode = if cmd == "lat" { Mode::Lat } else { Mode::Tput };
    let warmup = if mode == Mode::Lat {
        a.f64("warmup", 1.0)?
    } else {
        0.0
    };
    let duration = a.f64("duration", 5.0)?;
    let rdv = temp_dir(&system);
    let cfg = Cfg {
        system: system.clone(),
        mode,
        size,
        rate: if mode == Mode::Lat {
            a.u64("rate", 100_000)?
        } else {
            0
        },
        warmup_ns: (warmup * 1e9) as u64,
        duration_ns: (duration * 1e9) as u64,
        rdv: rdv.clone(),
        port: a.u64("port", 0)? as u16,
        name: format!("peers{}x{}", std::process::id(), now_ns() % 1_000_000_007),
        cpu: None,
    };
    let (wcpu, rcpu) = if is_server(&system) {
        (None, None)
    } else {
        cpu_pair()
    };
    let timeout = Duration::from_secs_f64(warmup + duration + 60.0);
    let (w, r): (String, String) = if system == "crossbeam" {
        let (w, r) = systems::crossbeam_run(&cfg, wcpu, rcpu)?;
        (w, r)
    } else {
        let reader = spawn(&cfg, "reader", rcpu)?;
        let writer = match spawn(&cfg, "writer", wcpu) {
            Ok(w) => w,
            Err(e) => {
                let _ = collect(vec![("reader", reader)], Duration::ZERO);
                return Err(e);
            }
        };
        let outs = collect(vec![("reader", reader), ("writer", writer)], timeout);
        let _ = std::fs::remove_dir_all(&rdv);
        let outs = outs?;
        (outs[1].clone(), outs[0].clone())
    };
    let _ = std::fs::remove_dir_all(&rdv);
    let reader_kind = systems::reader_kind(&system, mode);
    let line = if mode == Mode::Lat {
        let wo: WriterOut =
            serde_json::from_str(&w).map_err(|e| format!("writer said {w:?}: {e}"))?;
        let ro: ReaderOut =
            serde_json::from_str(&r).map_err(|e| format!("reader said {r:?}: {e}"))?;
        if ro.measured != wo.measured {
            eprintln!(
                "peers: warning: {system} reader got {} measured messages, the writer sent {} (lost {})",
                ro.measured, wo.measured, ro.lost
            );
        }
        let span = ro.last_ns.saturating_sub(ro.first_ns).max(1) as f64 / 1e9;
        let l = ro.latency;
        json!({
            "system": system, "kind": "latency", "size": size, "rate": cfg.rate,
            "warmup_s": warmup, "duration_s": duration, "reader": reader_kind,
            "writer_cpu": wcpu, "reader_cpu": rcpu,
            "sent": wo.sent, "measured_sent": wo.measured, "measured": ro.measured, "lost": ro.lost,
            "count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "p99_9": l.p99_9,
            "p99_99": l.p99_99, "max": l.max,
            "throughput_msgs": ro.measured.saturating_sub(1) as f64 / span,
            "writer_max_behind_ns": wo.max_behind_ns,
        })
    } else {
        let wo: TputOut =
            serde_json::from_str(&w).map_err(|e| format!("writer said {w:?}: {e}"))?;
        let ro: TputOut =
            serde_json::from_str(&r).map_err(|e| format!("reader said {r:?}: {e}"))?;
        if ro.received != wo.received {
            eprintln!(
                "peers: warning: {system} reader got {} messages, the writer sent {}",
                ro.received, wo.received
            );
        }
        // From the writer's first send to the reader's last receive.
        let span = ro.end_ns.saturating_sub(wo.first_ns).max(1) as f64 / 1e9;
        let msgs = ro.received as f64 / span;
        json!({
            "system": system, "kind": "throughput", "size": size, "duration_s": duration,
            "reader": reader_kind, "writer_cpu": wcpu, "reader_cpu": rcpu,
            "messages": ro.received, "sent": wo.received,
            "lost": wo.received.saturating_sub(ro.received),
            "msgs": msgs, "mbs": msgs * size as f64 / 1e6,
        })
    };
    println!("{line}");
    Ok(())
}

#[repr(align(128))]
struct Padded(AtomicU64);

/// Physical limits: cross-core AtomicU64 ping-pong (one-way = round trip / 2)
/// and single-thread memcpy bandwidth.
fn limits(a: &Args) -> Result<(), String> {
    let rounds = a.u64("rounds", 1_000_000)?;
    let (ca, cb) = cpu_pair();
    let flag = Padded(AtomicU64::new(0));
    let warm = rounds / 10;
    let total = warm + rounds;
    let hist = std::thread::scope(|s| {
        let f = &flag.0;
        s.spawn(move || {
            if let Some(c) = cb {
                pin_to(c);
            }
            for i in 0..total {
                while f.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                f.store(2 * i + 2, Ordering::Release);
            }
        });
        let h = s.spawn(move || {
            if let Some(c) = ca {
                pin_to(c);
            }
            let mut h = new_histogram();
            for i in 0..total {
                let t0 = now_ns();
                f.store(2 * i + 1, Ordering::Release);
                while f.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                let rtt = now_ns() - t0;
                if i >= warm {
                    let _ = h.record((rtt / 2).max(1));
                }
            }
            h
        });
        h.join().expect("ping-pong thread")
    });
    let pp = Percentiles::of(&hist);
    let memcpy = |bytes: usize, min_total: usize| -> f64 {
        let src = vec![0x5au8; bytes];
        let mut dst = vec![0u8; bytes];
        dst.copy_from_slice(&src); // fault the pages in
        let reps = (min_total / bytes).max(3);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t0 = now_ns();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            best = best.min((now_ns() - t0) as f64);
        }
        bytes as f64 / best // bytes per ns = GB/s
    };
    if let Some(c) = ca {
        pin_to(c);
    }
    let big = memcpy(256 << 20, 2 << 30);
    let small = memcpy(256 << 10, 1 << 30);
    println!(
        "{}",
        json!({
            "kind": "limits", "cpus": [ca, cb], "pingpong_rounds": rounds,
            "pingpong_oneway_p50": pp.p50, "pingpong_oneway_p90": pp.p90,
            "pingpong_oneway_p99": pp.p99, "pingpong_oneway_p99_9": pp.p99_9,
            "pingpong_oneway_max": pp.max,
            "memcpy_gbs_256mib": big, "memcpy_gbs_256kib": small,
        })
    );
    Ok(())
}
