//! Replication, side by side, on loopback:
//!
//! - **repliq**: two `repliq daemon` processes (a primary and a secondary,
//!   static discovery, `min_acks: 1`); the writer appends with the library
//!   into the primary's queue directory, the reader tails the secondary's
//!   queue directory (the replica) with the library.
//! - **redis**: a master and a replica (`--replicaof`); the writer `XADD`s on
//!   the master, the reader `XREAD BLOCK`s on the replica.
//! - **nats**: a three-node JetStream cluster and a stream with
//!   `num_replicas: 3`, its leadership moved to node 2 (`--nats-leader`); the
//!   writer publishes to node 1, the reader pulls from node 3. A JetStream
//!   consumer is served through the stream leader, and a message is
//!   delivered only once a quorum (2 of 3) stored it.
//!
//! ```text
//! peers repl --system S --kind lat|tput|sync --size N [--rate R] [--warmup SECS] --duration SECS
//!            repliq: --repliq BIN [--durability none|batch]
//!            redis:  --port MASTER --replica-port REPLICA
//!            nats:   --nats-ports P1,P2,P3 [--nats-leader NAME]
//! ```
//! Kinds:
//! - `lat`: asynchronous append at a fixed rate, latency from the intended
//!   send time to the message being in the reader's hands on the replica
//!   (coordinated omission corrected, as in `peers lat`).
//! - `tput`: unthrottled, messages delivered to the reader on the replica
//!   per second.
//! - `sync`: at a fixed rate, append and wait until the replica acknowledged
//!   it; latency from the intended send time to the acknowledgement.
//!
//! Every writer sleeps for its slots (`clock_nanosleep`, timer slack 1 ns):
//! with two daemons or servers, a writer and a reader, there are more busy
//! processes than CPUs, and nothing is pinned.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::*;
use crate::{collect, Cfg, Mode};

/// Largest amount of log the repliq throughput writer runs ahead of the
/// secondary's acknowledgements.
const REPLIQ_WINDOW: u64 = 64 << 20;
/// Segment size of the benchmark queue.
const SEGMENT: u64 = 64 << 20;
/// Name of the repliq queue on both nodes.
const QUEUE: &str = "bench";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Lat,
    Tput,
    Sync,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "lat" => Ok(Kind::Lat),
            "tput" => Ok(Kind::Tput),
            "sync" => Ok(Kind::Sync),
            o => Err(format!("--kind {o:?}: expected lat, tput or sync")),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Kind::Lat => "lat",
            Kind::Tput => "tput",
            Kind::Sync => "sync",
        }
    }
}

/// What a synchronous writer reports.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SyncOut {
    pub sent: u64,
    pub measured: u64,
    pub max_behind_ns: u64,
    /// Appends whose acknowledgement did not come within the timeout.
    pub failures: u64,
    /// Scheduled appends never made: the writer stops at twice the planned
    /// run time when the system cannot sustain the rate.
    pub unsent: u64,
    pub latency: Percentiles,
}

/// Sets this thread's timer slack to 1 ns, so that a sleeping writer wakes
/// on its slot, not up to 50 µs later.
fn tight_timers() {
    // SAFETY: plain prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------- orchestration

struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn check(&mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!(
                "repliq daemon ({}) exited with {st}: {}",
                self.name,
                tail_of(&self.log)
            ));
        }
        Ok(())
    }
    fn stop(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_of(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let t: String = s.chars().rev().take(400).collect();
    t.chars().rev().collect::<String>().replace('\n', " | ")
}

/// Makes a CA and a certificate for each of `names` with `repliq cert`,
/// under `root/pki/<name>` (each directory holds tls.crt, tls.key, ca.crt).
fn make_certs(bin: &str, root: &Path, names: &[&str]) -> Result<PathBuf, String> {
    let pki = root.join("pki");
    let ca = pki.join("ca");
    let run = |args: Vec<std::ffi::OsString>| -> Result<(), String> {
        let o = Command::new(bin)
            .arg("cert")
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run {bin} cert: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{bin} cert {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    run(vec!["ca".into(), "--out".into(), ca.clone().into()])?;
    for n in names {
        run(vec![
            "node".into(),
            (*n).into(),
            "--ca".into(),
            ca.clone().into(),
            "--out".into(),
            pki.join(n).into(),
        ])?;
    }
    Ok(pki)
}

/// Writes the config of one node and starts `repliq daemon` on it; with
/// `pki`, mutual TLS is required, with the certificate in `pki/<name>`.
#[allow(clippy::too_many_arguments)]
fn start_daemon(
    bin: &str,
    root: &Path,
    name: &'static str,
    mode: &str,
    rep_port: u16,
    http_port: u16,
    data: &Path,
    pki: Option<&Path>,
) -> Result<Daemon, String> {
    let tls = pki.map_or(String::new(), |p| {
        let d = p.join(name);
        format!(
            "tls:\n  mode: required\n  cert: {}\n  key: {}\n  ca: {}\n",
            d.join("tls.crt").display(),
            d.join("tls.key").display(),
            d.join("ca.crt").display()
        )
    });
    let yaml = format!(
        "node:\n  name: {name}\n\
         replication:\n  mode: {mode}\n  primary: bench-primary\n  listen: 127.0.0.1:{rep_port}\n  min_acks: 1\n  \
         discovery:\n    method: static\n    peers:\n      - {{ name: bench-primary, address: \"127.0.0.1:{rep_port}\" }}\n      \
         - {{ name: bench-secondary, address: \"127.0.0.1:{rep_port}\" }}\n\
         http:\n  listen: 127.0.0.1:{http_port}\n\
         queue:\n  names: [{QUEUE}]\n  persistence:\n    path: {}\n{tls}",
        data.display()
    );
    let cfg = root.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    let log = root.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env(
            "REPLIQ_LOG",
            std::env::var("REPLIQ_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| format!("cannot start {bin} daemon: {e}"))?;
    Ok(Daemon { name, child, log })
}

fn spawn_child(args: &[String]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .arg("repl-child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a child: {e}"))
}

fn child_args(c: &Cfg, kind: Kind, role: &str, port: u16, extra: &[(&str, String)]) -> Vec<String> {
    let mut v: Vec<String> = [
        ("role", role.to_string()),
        ("system", c.system.clone()),
        ("kind", kind.as_str().to_string()),
        ("size", c.size.to_string()),
        ("rate", c.rate.to_string()),
        ("warmup-ns", c.warmup_ns.to_string()),
        ("duration-ns", c.duration_ns.to_string()),
        ("rdv", c.rdv.display().to_string()),
        ("port", port.to_string()),
        ("name", c.name.clone()),
    ]
    .iter()
    .chain(extra.iter())
    .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
    .collect();
    v.shrink_to_fit();
    v
}

/// `peers repl ...`: one replication measurement; prints one JSON line.
pub fn orchestrate(a: &Args) -> Result<(), String> {
    let system = a.req("system")?;
    let kind = Kind::parse(&a.req("kind")?)?;
    let size = a.u64("size", 64)? as usize;
    if size < 16 {
        return Err("--size must be at least 16".into());
    }
    let warmup = if kind == Kind::Tput {
        0.0
    } else {
        a.f64("warmup", 1.0)?
    };
    let duration = a.f64("duration", 5.0)?;
    let rate = if kind == Kind::Tput {
        0
    } else {
        a.u64("rate", 5000)?
    };
    let rdv = temp_dir(&format!("repl-{system}"));
    let cfg = Cfg {
        system: system.clone(),
        mode: if kind == Kind::Tput {
            Mode::Tput
        } else {
            Mode::Lat
        },
        size,
        rate,
        warmup_ns: (warmup * 1e9) as u64,
        duration_ns: (duration * 1e9) as u64,
        rdv: rdv.clone(),
        port: 0,
        name: format!("repl{}x{}", std::process::id(), now_ns() % 1_000_000_007),
        cpu: None,
    };
    let timeout = Duration::from_secs_f64(warmup + duration + 90.0);
    let r = match system.as_str() {
        "repliq" => run_repliq(a, &cfg, kind, timeout),
        "redis" => run_redis(a, &cfg, kind, timeout),
        "nats" => run_nats(a, &cfg, kind, timeout),
        s => Err(format!("replication: unknown system {s}")),
    };
    let _ = std::fs::remove_dir_all(&rdv);
    let (w, r, extra) = r?;
    let line = result_line(&cfg, kind, warmup, duration, &w, r.as_deref(), extra)?;
    println!("{line}");
    Ok(())
}

/// Runs the writer (and for lat/tput the reader) as child processes.
fn run_pair(
    cfg: &Cfg,
    kind: Kind,
    wport: u16,
    rport: u16,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<(String, Option<String>), String> {
    if kind == Kind::Sync {
        touch(&cfg.rdv.join("reader-ready"));
        let w = spawn_child(&child_args(cfg, kind, "writer", wport, extra))?;
        let outs = collect(vec![("writer", w)], timeout)?;
        return Ok((outs[0].clone(), None));
    }
    let reader = spawn_child(&child_args(cfg, kind, "reader", rport, extra))?;
    let writer = match spawn_child(&child_args(cfg, kind, "writer", wport, extra)) {
        Ok(w) => w,
        Err(e) => {
            let _ = collect(vec![("reader", reader)], Duration::ZERO);
            return Err(e);
        }
    };
    let outs = collect(vec![("reader", reader), ("writer", writer)], timeout)?;
    Ok((outs[1].clone(), Some(outs[0].clone())))
}

type RunOut = (String, Option<String>, serde_json::Value);

fn run_repliq(a: &Args, cfg: &Cfg, kind: Kind, timeout: Duration) -> Result<RunOut, String> {
    use repliq::store::{Durability, Store, StoreOptions};
    let bin = a.req("repliq")?;
    let durability = a.str("durability", "none");
    let dur = match durability.as_str() {
        "none" => Durability::None,
        "batch" => Durability::Batch,
        "always" => Durability::Always,
        o => {
            return Err(format!(
                "--durability {o:?}: expected none, batch or always"
            ))
        }
    };
    let root = cfg.rdv.clone();
    let (pdata, sdata) = (root.join("primary"), root.join("secondary"));
    let pq = pdata.join(QUEUE);
    let sq = sdata.join(QUEUE);
    // The queue is created here, so the benchmark chooses its settings; the
    // primary daemon serves it as it finds it.
    Store::open(
        &pq,
        &StoreOptions::create()
            .capacity(1 << 40)
            .segment_size(SEGMENT)
            .durability(dur),
    )
    .map_err(|e| format!("cannot create the primary's queue: {e}"))?;
    let tls = a.str("tls", "false") == "true";
    let pki = if tls {
        Some(make_certs(
            &bin,
            &root,
            &["bench-primary", "bench-secondary"],
        )?)
    } else {
        None
    };
    let rep = free_port()?;
    let mode = if kind == Kind::Sync { "sync" } else { "async" };
    let p = start_daemon(
        &bin,
        &root,
        "bench-primary",
        mode,
        rep,
        free_port()?,
        &pdata,
        pki.as_deref(),
    )?;
    let s = match start_daemon(
        &bin,
        &root,
        "bench-secondary",
        mode,
        rep,
        free_port()?,
        &sdata,
        pki.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            p.stop();
            return Err(e);
        }
    };
    let mut ds = [p, s];
    let r = (|| {
        // Wait until the secondary has created its replica (the session is up).
        let t0 = Instant::now();
        loop {
            for d in ds.iter_mut() {
                d.check()?;
            }
            if Store::open(&sq, &StoreOptions::open().skip_recovery()).is_ok() {
                break;
            }
            if t0.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "the secondary did not create its replica within 30 s: {}",
                    tail_of(&ds[1].log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let extra = [
            ("pqueue", pq.display().to_string()),
            ("squeue", sq.display().to_string()),
        ];
        let cpu0 = daemons_cpu_s(&ds);
        let r = run_pair(cfg, kind, 0, 0, &extra, timeout);
        let cpu = cpu0.zip(daemons_cpu_s(&ds)).map(|(a, b)| (b - a).max(0.0));
        for d in ds.iter_mut() {
            d.check()?;
        }
        r.map(|r| (r, cpu))
    })();
    let [p, s] = ds;
    p.stop();
    s.stop();
    let ((w, r), cpu) = r?;
    let variant = format!(
        "{}{}",
        match dur {
            Durability::None => "durability none",
            Durability::Batch => "durability batch",
            Durability::Always => "durability always",
        },
        if tls { ", mutual TLS" } else { "" }
    );
    Ok((
        w,
        r,
        json!({"variant": variant, "durability": durability, "tls": tls,
               "daemons": "repliq daemon x2 (primary, secondary), static discovery, min_acks 1",
               "servers_cpu_s": cpu}),
    ))
}

/// CPU seconds both daemons have used so far (`None` if either is unreadable).
fn daemons_cpu_s(ds: &[Daemon]) -> Option<f64> {
    ds.iter().map(|d| proc_cpu_s(d.child.id())).sum()
}

/// The pid a Redis server reports for itself (`INFO server`).
fn redis_pid(port: u16) -> Option<u32> {
    let mut c = redis_client(port).ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds a Redis master and replica have used so far, read from
/// `/proc` by the pids they report (`None` if either is unreadable).
fn redis_cpu_s(pids: Option<(u32, u32)>) -> Option<f64> {
    let (m, r) = pids?;
    Some(proc_cpu_s(m)? + proc_cpu_s(r)?)
}

fn redis_client(port: u16) -> Result<redis::Connection, String> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| e.to_string())?
        .get_connection()
        .map_err(|e| format!("redis connect 127.0.0.1:{port}: {e}"))
}

fn run_redis(a: &Args, cfg: &Cfg, kind: Kind, timeout: Duration) -> Result<RunOut, String> {
    let master = a.u64("port", 0)? as u16;
    let replica = a.u64("replica-port", 0)? as u16;
    if master == 0 || replica == 0 {
        return Err("redis replication needs --port and --replica-port".into());
    }
    // The replica must be in sync before we start.
    let mut rc = redis_client(replica)?;
    let t0 = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut rc)
            .map_err(|e| format!("INFO on the replica: {e}"))?;
        if info.contains("master_link_status:up") {
            break;
        }
        if t0.elapsed() > READY_TIMEOUT {
            return Err("the Redis replica is not connected to its master".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = redis_pid(master).zip(redis_pid(replica));
    let cpu0 = redis_cpu_s(pids);
    let r = run_pair(cfg, kind, master, replica, &[], timeout);
    let cpu = cpu0.zip(redis_cpu_s(pids)).map(|(a, b)| (b - a).max(0.0));
    if let Ok(mut mc) = redis_client(master) {
        let _ = redis::cmd("DEL")
            .arg(&cfg.name)
            .query::<redis::Value>(&mut mc);
    }
    let (w, r) = r?;
    Ok((
        w,
        r,
        json!({"variant": "", "replica": replica, "servers_cpu_s": cpu}),
    ))
}

fn nats_rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

async fn js_connect(port: u16) -> Result<async_nats::jetstream::Context, String> {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .map_err(|e| format!("nats connect 127.0.0.1:{port}: {e}"))?;
    let mut js = async_nats::jetstream::new(client);
    // Three servers, a writer and a reader share two CPUs: give acks time.
    js.set_timeout(Duration::from_secs(30));
    Ok(js)
}

fn run_nats(a: &Args, cfg: &Cfg, kind: Kind, timeout: Duration) -> Result<RunOut, String> {
    use async_nats::jetstream::stream;
    let ports: Vec<u16> = a
        .req("nats-ports")?
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("--nats-ports: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if ports.len() < 3 {
        return Err("--nats-ports needs the client ports of three servers".into());
    }
    let (wport, rport) = (ports[0], ports[ports.len() - 1]);
    let want = a.str("nats-leader", "");
    let rt = nats_rt()?;
    // The replicated stream, created before the writer and reader start
    // (retried: the cluster may still be electing its meta leader).
    let leader = rt.block_on(async {
        let js = js_connect(wport).await?;
        let t0 = Instant::now();
        let mut st = loop {
            let r = js
                .create_stream(stream::Config {
                    name: cfg.name.clone(),
                    subjects: vec![cfg.name.clone()],
                    storage: stream::StorageType::File,
                    num_replicas: 3,
                    max_bytes: 1 << 30,
                    discard: stream::DiscardPolicy::Old,
                    ..Default::default()
                })
                .await;
            match r {
                Ok(st) => break st,
                Err(e) if t0.elapsed() > READY_TIMEOUT => {
                    return Err(format!("cannot create an R3 stream: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        // Move the stream's leadership (bounded) to `want`, the node neither
        // the writer nor the reader is connected to, so that every run has
        // the same topology: writer -> node 1 -> leader (node 2) -> quorum,
        // then leader -> node 3 -> reader.
        let mut leader = String::new();
        for _ in 0..12 {
            leader = current_leader(&mut st).await?;
            if want.is_empty() || leader == want {
                break;
            }
            let _ = js
                .request::<_, _, serde_json::Value>(
                    format!("STREAM.LEADER.STEPDOWN.{}", cfg.name),
                    &json!({}),
                )
                .await;
            let t1 = Instant::now();
            while t1.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let l = current_leader(&mut st).await.unwrap_or_default();
                if !l.is_empty() && l != leader {
                    break;
                }
            }
        }
        Ok::<String, String>(leader)
    })?;
    let r = run_pair(cfg, kind, wport, rport, &[], timeout);
    let _ = rt.block_on(async {
        let js = js_connect(wport).await?;
        js.delete_stream(&cfg.name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let (w, r) = r?;
    Ok((
        w,
        r,
        json!({"variant": "", "stream_leader": leader, "num_replicas": 3,
               "writer_node": wport, "reader_node": rport}),
    ))
}

/// The stream's current leader ("" while there is none).
async fn current_leader(st: &mut async_nats::jetstream::stream::Stream) -> Result<String, String> {
    let info = st.info().await.map_err(|e| format!("stream info: {e}"))?;
    Ok(info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap_or_default())
}

fn result_line(
    cfg: &Cfg,
    kind: Kind,
    warmup: f64,
    duration: f64,
    w: &str,
    r: Option<&str>,
    extra: serde_json::Value,
) -> Result<String, String> {
    let system = &cfg.system;
    let mut v = match kind {
        Kind::Lat => {
            let wo: WriterOut =
                serde_json::from_str(w).map_err(|e| format!("writer said {w:?}: {e}"))?;
            let r = r.ok_or("no reader output")?;
            let ro: ReaderOut =
                serde_json::from_str(r).map_err(|e| format!("reader said {r:?}: {e}"))?;
            if ro.measured != wo.measured {
                eprintln!(
                    "peers repl: warning: {system} reader got {} measured messages, the writer sent {} (lost {})",
                    ro.measured, wo.measured, ro.lost
                );
            }
            let l = ro.latency;
            json!({
                "system": system, "kind": "repl_latency", "size": cfg.size, "rate": cfg.rate,
                "warmup_s": warmup, "duration_s": duration, "reader": reader_kind(system),
                "sent": wo.sent, "measured_sent": wo.measured, "measured": ro.measured,
                "lost": ro.lost.max(wo.measured.saturating_sub(ro.measured)),
                "count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "p99_9": l.p99_9,
                "p99_99": l.p99_99, "max": l.max,
                "writer_max_behind_ns": wo.max_behind_ns,
            })
        }
        Kind::Tput => {
            let wo: TputOut =
                serde_json::from_str(w).map_err(|e| format!("writer said {w:?}: {e}"))?;
            let r = r.ok_or("no reader output")?;
            let ro: TputOut =
                serde_json::from_str(r).map_err(|e| format!("reader said {r:?}: {e}"))?;
            let span = ro.end_ns.saturating_sub(wo.first_ns).max(1) as f64 / 1e9;
            let msgs = ro.received as f64 / span;
            json!({
                "system": system, "kind": "repl_throughput", "size": cfg.size,
                "duration_s": duration, "reader": reader_kind(system),
                "messages": ro.received, "sent": wo.received,
                "lost": wo.received.saturating_sub(ro.received),
                "msgs": msgs, "mbs": msgs * cfg.size as f64 / 1e6,
                // CPU the servers (daemons) spent per GB delivered, over the
                // whole run (idle start-up included; small against it).
                "servers_cpu_s_per_gb": extra.get("servers_cpu_s").and_then(|c| c.as_f64())
                    .filter(|_| ro.received > 0)
                    .map(|c| c / (ro.received as f64 * cfg.size as f64 / 1e9)),
            })
        }
        Kind::Sync => {
            let so: SyncOut =
                serde_json::from_str(w).map_err(|e| format!("writer said {w:?}: {e}"))?;
            let l = so.latency;
            json!({
                "system": system, "kind": "repl_sync", "size": cfg.size, "rate": cfg.rate,
                "warmup_s": warmup, "duration_s": duration, "ack": ack_kind(system, &extra),
                "sent": so.sent, "measured_sent": so.measured, "failures": so.failures,
                "unsent": so.unsent,
                "count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "p99_9": l.p99_9,
                "p99_99": l.p99_99, "max": l.max,
                "writer_max_behind_ns": so.max_behind_ns,
            })
        }
    };
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    serde_json::to_string(&v).map_err(|e| e.to_string())
}

fn reader_kind(system: &str) -> &'static str {
    match system {
        "repliq" => "Tailer on the secondary's queue (futex wait)",
        "redis" => "XREAD BLOCK on the replica",
        "nats" => "pull consumer on node 3 (via the stream leader)",
        _ => "?",
    }
}

fn ack_kind(system: &str, extra: &serde_json::Value) -> String {
    match system {
        "repliq" => {
            if extra["durability"] == "none" {
                "wait_replicated: the secondary has it in its mapped queue (page cache)".into()
            } else {
                "wait_replicated: the secondary has msynced it".into()
            }
        }
        "redis" => "WAIT 1 (pipelined with the XADD): the replica applied it (memory)".into(),
        "nats" => "publish ack: 2 of 3 stored it (Raft quorum; no fsync)".into(),
        _ => "?".into(),
    }
}

// ---------------------------------------------------------------- children

/// `peers repl-child ...`: one writer or reader of a replication run.
pub fn child(a: &Args) -> Result<(), String> {
    tight_timers();
    let kind = Kind::parse(&a.req("kind")?)?;
    let role = a.req("role")?;
    let cfg = Cfg {
        system: a.req("system")?,
        mode: if kind == Kind::Tput {
            Mode::Tput
        } else {
            Mode::Lat
        },
        size: a.u64("size", 64)? as usize,
        rate: a.u64("rate", 0)?,
        warmup_ns: a.u64("warmup-ns", 0)?,
        duration_ns: a.u64("duration-ns", 0)?,
        rdv: PathBuf::from(a.req("rdv")?),
        port: a.u64("port", 0)? as u16,
        name: a.req("name")?,
        cpu: None,
    };
    let js = |r: Result<String, serde_json::Error>| r.map_err(|e| e.to_string());
    use crate::systems;
    let out = match (cfg.system.as_str(), kind, role.as_str()) {
        ("repliq", Kind::Lat, "writer") => js(serde_json::to_string(&repliq_writer_lat(a, &cfg)?)),
        ("repliq", Kind::Lat, "reader") => js(serde_json::to_string(&repliq_reader_lat(a, &cfg)?)),
        ("repliq", Kind::Tput, "writer") => {
            js(serde_json::to_string(&repliq_writer_tput(a, &cfg)?))
        }
        ("repliq", Kind::Tput, "reader") => {
            js(serde_json::to_string(&repliq_reader_tput(a, &cfg)?))
        }
        ("repliq", Kind::Sync, "writer") => js(serde_json::to_string(&repliq_sync(a, &cfg)?)),
        // Redis: the same writer and reader as `peers lat`/`tput`, the writer
        // on the master and the reader on the replica.
        ("redis", Kind::Lat, "writer") => js(serde_json::to_string(&systems::writer_lat(&cfg)?)),
        ("redis", Kind::Lat, "reader") => js(serde_json::to_string(&systems::reader_lat(&cfg)?)),
        ("redis", Kind::Tput, "writer") => js(serde_json::to_string(&systems::writer_tput(&cfg)?)),
        ("redis", Kind::Tput, "reader") => js(serde_json::to_string(&systems::reader_tput(&cfg)?)),
        ("redis", Kind::Sync, "writer") => js(serde_json::to_string(&redis_sync(&cfg)?)),
        // NATS: the asynchronous writer publishes without waiting for acks;
        // the throughput writer keeps 256 acks outstanding, as `peers tput`
        // does; the reader is the `peers lat` pull consumer, on node 3.
        ("nats", Kind::Lat, "writer") => js(serde_json::to_string(&nats_writer_async(&cfg)?)),
        ("nats", Kind::Lat, "reader") => js(serde_json::to_string(&systems::reader_lat(&cfg)?)),
        ("nats", Kind::Tput, "writer") => js(serde_json::to_string(&nats_writer_tput(&cfg)?)),
        ("nats", Kind::Tput, "reader") => js(serde_json::to_string(&systems::reader_tput(&cfg)?)),
        ("nats", Kind::Sync, "writer") => js(serde_json::to_string(&nats_sync(&cfg)?)),
        (s, k, r) => return Err(format!("no {r} for {s} {k:?}")),
    }?;
    println!("{out}");
    Ok(())
}

fn start_after_connect() -> u64 {
    now_ns() + 20_000_000
}

fn open_primary(a: &Args) -> Result<repliq::store::Store, String> {
    use repliq::store::{Store, StoreOptions};
    let p = a.req("pqueue")?;
    Store::open(&p, &StoreOptions::open()).map_err(|e| format!("cannot open {p}: {e}"))
}

fn open_replica(a: &Args) -> Result<repliq::store::Store, String> {
    use repliq::store::{Store, StoreOptions};
    let p = a.req("squeue")?;
    let t0 = Instant::now();
    loop {
        match Store::open(&p, &StoreOptions::open().skip_recovery()) {
            Ok(s) => return Ok(s),
            Err(e) if t0.elapsed() > READY_TIMEOUT => return Err(format!("cannot open {p}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn repliq_writer_lat(a: &Args, c: &Cfg) -> Result<WriterOut, String> {
    let store = open_primary(a)?;
    wait_file(&c.rdv.join("reader-ready"), READY_TIMEOUT)?;
    let mut sch = Schedule::new(
        start_after_connect(),
        c.warmup_ns,
        c.duration_ns,
        c.rate,
        false,
    );
    let size = c.size;
    while let Some((stamp, tag)) = sch.next() {
        store
            .append_with(size, |b| fill(b, stamp, tag))
            .map_err(|e| format!("append: {e}"))?;
    }
    store
        .append_with(size, |b| fill(b, 0, DONE))
        .map_err(|e| format!("append: {e}"))?;
    Ok(sch.out())
}

/// Reads the replica, calling `f(stamp, tag, now)` until it returns false.
fn repliq_read(a: &Args, c: &Cfg, mut f: impl FnMut(u64, u64, u64) -> bool) -> Result<(), String> {
    use repliq::store::IdleStrategy;
    let store = open_replica(a)?;
    let mut t = store.tailer();
    touch(&c.rdv.join("reader-ready"));
    loop {
        let r = t
            .next_wait_with(IdleStrategy::Block, Some(IDLE), |r| decode(r.payload))
            .map_err(|e| format!("read: {e}"))?;
        let Some((s, tag)) = r else {
            return Err("repliq: no message on the secondary for 30 s".into());
        };
        if !f(s, tag, now_ns()) {
            return Ok(());
        }
    }
}

fn repliq_reader_lat(a: &Args, c: &Cfg) -> Result<ReaderOut, String> {
    let mut rec = LatRecorder::new();
    repliq_read(a, c, |s, t, now| rec.record(s, t, now))?;
    Ok(rec.out())
}

fn repliq_reader_tput(a: &Args, c: &Cfg) -> Result<TputOut, String> {
    let mut o = TputOut::default();
    let size = c.size as u64;
    repliq_read(a, c, |_, tag, now| {
        if tag == DONE {
            o.end_ns = now;
            return false;
        }
        if o.received == 0 {
            o.first_ns = now;
        }
        o.received += 1;
        o.bytes += size;
        true
    })?;
    Ok(o)
}

/// Appends as fast as it can, never more than [`REPLIQ_WINDOW`] bytes of log
/// ahead of the secondary's acknowledgements (its replicated watermark).
fn repliq_writer_tput(a: &Args, c: &Cfg) -> Result<TputOut, String> {
    use repliq::replication::sync::replicated;
    let store = open_primary(a)?;
    wait_file(&c.rdv.join("reader-ready"), READY_TIMEOUT)?;
    let mut buf = vec![0x5au8; c.size];
    let ahead = |s: &repliq::store::Store| s.tail_position().saturating_sub(replicated(s));
    let start = now_ns();
    let end = start + c.duration_ns;
    let mut seq = 0u64;
    loop {
        for _ in 0..64 {
            buf[8..16].copy_from_slice(&seq.to_le_bytes());
            store.append(&buf).map_err(|e| format!("append: {e}"))?;
            seq += 1;
        }
        if now_ns() >= end {
            break;
        }
        if ahead(&store) > REPLIQ_WINDOW
            && !store.wait_until(Some(IDLE), || ahead(&store) <= REPLIQ_WINDOW / 2)
        {
            return Err("repliq: the secondary acknowledged nothing for 30 s".into());
        }
    }
    fill(&mut buf, 0, DONE);
    store.append(&buf).map_err(|e| format!("append: {e}"))?;
    Ok(TputOut {
        received: seq,
        bytes: seq * c.size as u64,
        first_ns: start,
        end_ns: now_ns(),
    })
}

/// The synchronous loop shared by every system: at each slot, `op` appends
/// and waits for the replica's acknowledgement (false: it did not come).
fn sync_loop(
    c: &Cfg,
    mut op: impl FnMut(&[u8]) -> Result<bool, String>,
) -> Result<SyncOut, String> {
    let mut buf = vec![0u8; c.size];
    let mut h = new_histogram();
    let mut failures = 0;
    let mut sch = Schedule::new(
        start_after_connect(),
        c.warmup_ns,
        c.duration_ns,
        c.rate,
        false,
    );
    let planned = sch.end - sch.start;
    let hard_end = sch.end + planned;
    let scheduled = (u128::from(planned) * u128::from(c.rate)).div_ceil(1_000_000_000) as u64;
    while let Some((stamp, tag)) = sch.next() {
        fill(&mut buf, stamp, tag);
        let ok = op(&buf)?;
        let now = now_ns();
        if tag & MEASURED != 0 {
            if ok {
                let _ = h.record(now.saturating_sub(stamp).max(1));
            } else {
                failures += 1;
            }
        }
        if now > hard_end {
            break;
        }
    }
    let w = sch.out();
    Ok(SyncOut {
        sent: w.sent,
        measured: w.measured,
        max_behind_ns: w.max_behind_ns,
        failures,
        unsent: scheduled.saturating_sub(w.sent),
        latency: Percentiles::of(&h),
    })
}

/// Append, then `wait_replicated` on the record's end, as a synchronous
/// `RepliqQueue::enqueue` does.
fn repliq_sync(a: &Args, c: &Cfg) -> Result<SyncOut, String> {
    use repliq::replication::sync::{record_end, wait_replicated};
    let store = open_primary(a)?;
    let rt = nats_rt()?;
    wait_file(&c.rdv.join("reader-ready"), READY_TIMEOUT)?;
    sync_loop(c, |buf| {
        let id = store.append(buf).map_err(|e| format!("append: {e}"))?;
        let end = record_end(&store, id, buf.len());
        Ok(rt
            .block_on(wait_replicated(&store, end, Duration::from_secs(5)))
            .is_ok())
    })
}

/// `XADD` and `WAIT 1 1000` in one pipeline (one round trip) per message.
fn redis_sync(c: &Cfg) -> Result<SyncOut, String> {
    let mut con = redis_client(c.port)?;
    sync_loop(c, |buf| {
        let mut p = redis::pipe();
        p.cmd("XADD")
            .arg(&c.name)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("d")
            .arg(buf)
            .ignore();
        p.cmd("WAIT").arg(1).arg(1000);
        let (n,): (i64,) = p.query(&mut con).map_err(|e| format!("XADD + WAIT: {e}"))?;
        Ok(n >= 1)
    })
}

/// Publishes on the stream's subject without waiting for acks (core NATS
/// publish, flushed per message).
fn nats_writer_async(c: &Cfg) -> Result<WriterOut, String> {
    nats_rt()?.block_on(async {
        wait_file(&c.rdv.join("reader-ready"), READY_TIMEOUT)?;
        let client = async_nats::connect(format!("127.0.0.1:{}", c.port))
            .await
            .map_err(|e| format!("nats connect: {e}"))?;
        let mut buf = vec![0u8; c.size];
        let mut sch = Schedule::new(
            start_after_connect(),
            c.warmup_ns,
            c.duration_ns,
            c.rate,
            false,
        );
        loop {
            let next = sch.next();
            let (stamp, tag) = next.unwrap_or((0, DONE));
            fill(&mut buf, stamp, tag);
            client
                .publish(c.name.clone(), bytes::Bytes::copy_from_slice(&buf))
                .await
                .map_err(|e| format!("publish: {e}"))?;
            // The writer sleeps outside the runtime: hand the message to the
            // socket now.
            client.flush().await.map_err(|e| format!("flush: {e}"))?;
            if next.is_none() {
                break;
            }
        }
        Ok(sch.out())
    })
}

/// Publishes as fast as it can with up to 256 acks outstanding (as `peers
/// tput` does, with a longer ack timeout).
fn nats_writer_tput(c: &Cfg) -> Result<TputOut, String> {
    nats_rt()?.block_on(async {
        wait_file(&c.rdv.join("reader-ready"), READY_TIMEOUT)?;
        let js = js_connect(c.port).await?;
        let mut buf = vec![0x5au8; c.size];
        let start = now_ns();
        let end = start + c.duration_ns;
        let mut seq = 0u64;
        let mut acks = Vec::with_capacity(256);
        loop {
            let done = now_ns() >= end;
            let tag = if done { DONE } else { seq };
            buf[8..16].copy_from_slice(&tag.to_le_bytes());
            let f = js
                .publish(c.name.clone(), bytes::Bytes::copy_from_slice(&buf))
                .await
                .map_err(|e| format!("publish: {e}"))?;
            acks.push(f);
            if acks.len() >= 256 || done {
                for a in acks.drain(..) {
                    a.await.map_err(|e| format!("publish ack: {e}"))?;
                }
            }
            if done {
                break;
            }
            seq += 1;
        }
        Ok(TputOut {
            received: seq,
            bytes: seq * c.size as u64,
            first_ns: start,
            end_ns: now_ns(),
        })
    })
}

/// Publishes and waits for the JetStream ack of each message.
fn nats_sync(c: &Cfg) -> Result<SyncOut, String> {
    let rt = nats_rt()?;
    let js = rt.block_on(js_connect(c.port))?;
    sync_loop(c, |buf| {
        rt.block_on(async {
            js.publish(c.name.clone(), bytes::Bytes::copy_from_slice(buf))
                .await
                .map_err(|e| format!("publish: {e}"))?
                .await
                .map_err(|e| format!("publish ack: {e}"))?;
            Ok(true)
        })
    })
}
