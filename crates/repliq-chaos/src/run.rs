//! `repliq-chaos run`: the cluster, the workload, the nemeses, the final
//! heal and drain, and the check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use repliq::store::{Store, StoreOptions};
use repliq_chaos::checker;
use repliq_chaos::history::{
    Event, EventType, Fault, History, LogRecord, Mode, NodeLog, OpFn, TEXT_VALUE_PREFIX,
};
use repliq_chaos::prng::Prng;

use crate::catalog::CatalogView;
use crate::client::now_ns;
use crate::cluster::{self, Cluster};
use crate::report;

/// Set by Ctrl-C / SIGTERM: stop, clean up, exit non-zero.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Every nemesis this tool knows.
pub const NEMESES: &[&str] = &[
    "kill",
    "pause",
    "partition",
    "lost-disk",
    "writer-kill",
    "replica-write",
    "netem",
    "loss",
    "clock",
    "roll-kill",
];

/// How long a node back from a lost disk may take to be recorded under its
/// new incarnation by the others' catalogs.
const REJOIN_WITHIN: Duration = Duration::from_secs(20);

/// The `loss` nemesis: the share of a node's packets dropped, each way.
const LOSS_PROBABILITY: &str = "0.2";

/// The iptables arguments that add (`-A`) or delete (`-D`) the `loss`
/// nemesis's rule on `chain` (`INPUT` or `OUTPUT`): drop a random
/// [`LOSS_PROBABILITY`] of the packets through the node's `eth0`, so its
/// loopback (clients to their own daemon) is spared.
fn loss_rule(
    op: &'static str,
    chain: &'static str,
    probability: &'static str,
) -> Vec<&'static str> {
    let dir = if chain == "INPUT" { "-i" } else { "-o" };
    vec![
        "iptables",
        op,
        chain,
        dir,
        "eth0",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        probability,
        "-j",
        "DROP",
    ]
}

/// Where libfaketime is looked for (Debian's `libfaketime`, then a
/// source install); `$REPLIQ_CHAOS_LIBFAKETIME` comes first.
const LIBFAKETIME_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The roll-kill nemesis's SIGKILL delay, drawn from 0 to this many µs
/// after the rolling append starts.
const ROLL_KILL_MAX_US: u64 = 250;

/// The class of a roll-kill outcome (the text up to the first `;` after
/// the delay), for the tally.
fn outcome_class(o: &str) -> String {
    let s = o.split_once(": ").map_or(o, |(_, rest)| rest);
    s.split(" (")
        .next()
        .unwrap_or(s)
        .split(';')
        .next()
        .unwrap_or(s)
        .to_string()
}

/// The clock nemesis's wall-clock offsets: forwards and backwards, small
/// and large.
const CLOCK_JUMPS: &[&str] = &["+3600s", "-7200s", "+86400s", "-86400s", "+30s", "-30s"];

/// The libfaketime library: `$REPLIQ_CHAOS_LIBFAKETIME` if set (and a
/// file), else the first of [`LIBFAKETIME_PATHS`] installed.
fn find_libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REPLIQ_CHAOS_LIBFAKETIME") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    LIBFAKETIME_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Parses `90`, `90s`, `2m`, `30m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix('h') {
        (n, 3600)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 90s, 2m, 30m, 1h"))?;
    if n == 0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs(n * mul))
}

/// Parses `--nodes`: 3 or 5.
fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("--nodes must be 3 or 5, not {s:?}")),
    }
}

/// Arguments of `repliq-chaos run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: usize,
    /// Workload duration (e.g. 120s, 2m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A soak run of this length (overrides --duration).
    #[arg(long, value_parser = parse_duration)]
    pub soak: Option<Duration>,
    /// Comma-separated nemeses: kill, pause, partition, lost-disk,
    /// writer-kill, replica-write, netem, loss, clock, roll-kill; or `none`.
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    pub nemesis: Vec<String>,
    /// Seed of the nemesis schedule (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Mean seconds between the end of one fault and the start of the next.
    #[arg(long, default_value_t = 6)]
    pub interval: u64,
    /// Enqueues per second per writer.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Workload modes: sync, async, or both.
    #[arg(long, default_value = "sync,async", value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Output directory (history.json, latency.svg, logs).
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,
    /// The `repliq` binary.
    #[arg(long, default_value = "target/release/repliq")]
    pub repliq: PathBuf,
    /// Run the old static-primary mode (`replication.primary: node0`,
    /// clients through the in-process `with_replication` on node0) instead
    /// of cluster mode.
    #[arg(long)]
    pub static_primary: bool,
    /// Cluster mode: `replication.failover_timeout_ms` of the daemons.
    #[arg(long, default_value_t = 2500)]
    pub failover_timeout_ms: u64,
    /// How long before a leadership change a consumer group's take may be
    /// and still be taken again on the new leader without counting as a
    /// duplicate (default: half the failover timeout, the lease, plus 750 ms;
    /// 2000 ms for the default timeout).
    #[arg(long)]
    pub redelivery_window_ms: Option<u64>,
    /// The container variant: the daemons run in containers of the product
    /// image, made by a generated compose file in the output directory
    /// (cluster mode only; see docs/reliability.md).
    #[arg(long, conflicts_with = "static_primary")]
    pub compose: bool,
    /// With --compose: the product image.
    #[arg(long, default_value = "repliq:ci")]
    pub image: String,
}

/// Arguments of `repliq-chaos check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A history.json written by `repliq-chaos run`.
    pub history: PathBuf,
    /// The redelivery window (default: the one the run used, else 2000 ms).
    #[arg(long)]
    pub redelivery_window_ms: Option<u64>,
}

/// Re-checks a saved history; exit 0 on PASS, 1 on FAIL, 2 on bad input.
pub fn check_file(a: CheckArgs) -> i32 {
    let text = match std::fs::read_to_string(&a.history) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("repliq-chaos: {}: {e}", a.history.display());
            return 2;
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("repliq-chaos: {}: not JSON: {e}", a.history.display());
            return 2;
        }
    };
    let saved_window_ms = v.get("redelivery_window_ms").and_then(|w| w.as_u64());
    let h: History = match serde_json::from_value(v.get("history").cloned().unwrap_or(v)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("repliq-chaos: {}: not a history: {e}", a.history.display());
            return 2;
        }
    };
    let window_ns = match a.redelivery_window_ms {
        Some(ms) => ms.saturating_mul(1_000_000),
        None => saved_window_ms.map_or(checker::DEFAULT_REDELIVERY_WINDOW_NS, |ms| {
            ms.saturating_mul(1_000_000)
        }),
    };
    let r = checker::check_with(
        &h,
        &checker::CheckOptions {
            redelivery_window_ns: window_ns,
        },
    );
    print!(
        "{}",
        report::summary(&h, &r, "re-check of a saved history", &[])
    );
    if r.pass() {
        0
    } else {
        1
    }
}

/// Runs `repliq-chaos cleanup`: removes what killed runs left behind.
pub fn cleanup() -> i32 {
    if let Err(e) = cluster::preflight() {
        eprintln!("repliq-chaos: error: {e}");
        return 2;
    }
    let removed = cluster::cleanup_stale();
    for r in &removed {
        println!("removed {r}");
    }
    if removed.is_empty() {
        println!("nothing left over");
    }
    0
}

/// Sleeps up to `d`, returning false early if interrupted.
fn nap(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !INTERRUPTED.load(Ordering::Relaxed)
}

/// A planned fault.
#[derive(Debug, Clone)]
struct Planned {
    kind: String,
    target: usize,
    hold: Duration,
    gap: Duration,
    pick: u64,
}

/// The schedule: a pure function of the seed, the nemeses and the length.
fn plan(seed: u64, nemeses: &[String], n: usize, len: Duration, interval: u64) -> Vec<Planned> {
    let mut p = Prng::new(seed);
    let mut out = Vec::new();
    let mut t = Duration::from_secs(5);
    if nemeses.is_empty() {
        return out;
    }
    loop {
        let kind = nemeses[p.below(nemeses.len() as u64) as usize].clone();
        let hold = Duration::from_millis(match kind.as_str() {
            "pause" => p.between(3000, 5000),
            "kill" | "lost-disk" | "writer-kill" | "roll-kill" => p.between(500, 3000),
            "replica-write" => 0,
            _ => p.between(3000, 6000),
        });
        let gap = Duration::from_millis(p.between(interval * 500, interval * 1500));
        if t + hold + Duration::from_secs(8) > len {
            break;
        }
        out.push(Planned {
            kind,
            target: p.below(n as u64) as usize,
            hold,
            gap,
            pick: p.next_u64(),
        });
        t += hold + gap;
    }
    out
}

/// A writer client and where its events go.
struct Writer {
    slot: usize,
    node: usize,
    queue: String,
    mode: Mode,
}

struct Run {
    c: Cluster,
    exe: PathBuf,
    events: Arc<Mutex<Vec<Event>>>,
    readers: Vec<JoinHandle<()>>,
    next_process: u64,
    min_acks: usize,
    rate: f64,
    stop_file: PathBuf,
    /// Written once the writers stopped and the cluster settled: the group
    /// readers drain and stop.
    end_file: PathBuf,
    /// Indices in `c.others` of the consumer-group readers.
    group_readers: Vec<usize>,
    cluster_mode: bool,
}

impl Run {
    fn collect(&mut self, mut child: Child) -> Child {
        if let Some(out) = child.stdout.take() {
            let events = self.events.clone();
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Event>(&line) {
                        Ok(e) => {
                            if let Ok(mut v) = events.lock() {
                                v.push(e);
                            }
                        }
                        Err(e) => eprintln!("repliq-chaos: bad event line {line:?}: {e}"),
                    }
                }
            }));
        }
        child
    }

    /// A writer of `queue` on node `node`: in cluster mode a
    /// `cluster-client` that appends while the catalog names its node the
    /// leader; with a static primary, a `client` on node0.
    fn spawn_writer(&mut self, node: usize, queue: &str, mode: Mode) -> Result<usize, String> {
        if !self.cluster_mode {
            return self.spawn_static_writer(queue, mode);
        }
        let (process, mut cmd) = self.writer_command(node, "cluster-client", queue, mode);
        cmd.arg("--http").arg(self.c.http(node));
        cmd.arg("--roll-kill-dir").arg(&self.c.dir);
        self.launch_writer(process, cmd)
    }

    /// A reader subcommand `sub` of this tool on node `node`'s copy of
    /// `queue`, with `--dir`, `--queue`, `--node` and `--process` filled in
    /// and `args` after them; its stderr goes to `reader-<process>.log`, its
    /// events to the history. Returns its index in `c.others`.
    fn spawn_client(
        &mut self,
        node: usize,
        queue: &str,
        sub: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<usize, String> {
        let process = self.next_process;
        self.next_process += 1;
        let log = self.c.log_file(&format!("reader-{process}.log"))?;
        let child = self
            .c
            .in_ns(node, &self.exe)
            .arg(sub)
            .arg("--dir")
            .arg(self.c.nodes[node].data.join(queue))
            .args(["--queue", queue, "--node", &self.c.nodes[node].name])
            .arg("--process")
            .arg(process.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a {sub}: {e}"))?;
        let child = self.collect(child);
        self.c.others.push(child);
        Ok(self.c.others.len() - 1)
    }

    /// A tailer of node `node`'s replica of `queue` (cluster mode).
    fn spawn_tail_reader(&mut self, node: usize, queue: &str) -> Result<(), String> {
        let stop = self.stop_file.clone();
        self.spawn_client(
            node,
            queue,
            "tail-reader",
            &["--stop-file".as_ref(), stop.as_os_str()],
        )?;
        Ok(())
    }

    /// A consumer-group reader of `group` on node `node`'s copy of `queue`
    /// (cluster mode): it takes only while its node leads the queue.
    fn spawn_group_reader(&mut self, node: usize, queue: &str, group: &str) -> Result<(), String> {
        let end = self.end_file.clone();
        let k = self.spawn_client(
            node,
            queue,
            "group-reader",
            &[
                "--group".as_ref(),
                group.as_ref(),
                "--end-file".as_ref(),
                end.as_os_str(),
            ],
        )?;
        self.group_readers.push(k);
        Ok(())
    }

    /// Node `i`'s view of the catalog, read inside its namespace.
    fn catalog(&self, i: usize) -> Option<CatalogView> {
        let o = self
            .c
            .in_ns(i, &self.exe)
            .arg("catalog")
            .arg("--http")
            .arg(self.c.http(i))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        CatalogView::parse(&String::from_utf8_lossy(&o.stdout))
    }

    /// The first view of the catalog any node answers with.
    fn any_catalog(&self) -> Option<CatalogView> {
        (0..self.c.nodes.len()).find_map(|i| self.catalog(i))
    }

    /// The node index of `name`.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.c.nodes.iter().position(|n| n.name == name)
    }

    fn spawn_static_writer(&mut self, queue: &str, mode: Mode) -> Result<usize, String> {
        let secs: Vec<String> = self.c.nodes[1..].iter().map(|n| n.name.clone()).collect();
        let (process, mut cmd) = self.writer_command(0, "client", queue, mode);
        cmd.arg("--secondaries")
            .arg(secs.join(","))
            .arg("--port")
            .arg((40000 + process).to_string())
            .arg("--min-acks")
            .arg(self.min_acks.to_string());
        self.launch_writer(process, cmd)
    }

    /// The command line every writer shares (`sub` on node `node`), with its
    /// process number.
    fn writer_command(
        &mut self,
        node: usize,
        sub: &str,
        queue: &str,
        mode: Mode,
    ) -> (u64, std::process::Command) {
        let process = self.next_process;
        self.next_process += 1;
        let mut cmd = self.c.in_ns(node, &self.exe);
        self.c.fake_clock(node, &mut cmd);
        cmd.arg(sub)
            .arg("--dir")
            .arg(self.c.nodes[node].data.join(queue))
            .args(["--queue", queue, "--node", &self.c.nodes[node].name])
            .arg("--process")
            .arg(process.to_string())
            .arg("--mode")
            .arg(if mode == Mode::Sync { "sync" } else { "async" })
            .arg("--rate")
            .arg(self.rate.to_string())
            .arg("--stop-file")
            .arg(&self.stop_file);
        (process, cmd)
    }

    /// Starts a writer, collecting its history; returns its index.
    fn launch_writer(
        &mut self,
        process: u64,
        mut cmd: std::process::Command,
    ) -> Result<usize, String> {
        let log = self.c.log_file(&format!("client-{process}.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a client: {e}"))?;
        let child = self.collect(child);
        self.c.others.push(child);
        Ok(self.c.others.len() - 1)
    }

    /// A consumer-group reader of `group` on the static primary (node0); it
    /// stops once the end file exists and the queue is drained.
    fn spawn_reader(&mut self, queue: &str, group: &str) -> Result<(), String> {
        let end = self.end_file.clone();
        let k = self.spawn_client(
            0,
            queue,
            "reader",
            &[
                "--group".as_ref(),
                group.as_ref(),
                "--stop-file".as_ref(),
                end.as_os_str(),
            ],
        )?;
        self.group_readers.push(k);
        Ok(())
    }

    /// Asks the writer in `others[slot]` (node `node`, queue `q`) to kill
    /// itself `delay_us` into its next append that rolls a segment, waits
    /// for it to die (up to 60 s), and says where the kill landed, read
    /// from the queue's write and committed positions against what the
    /// writer armed at.
    fn roll_kill(
        &mut self,
        slot: usize,
        node: usize,
        q: &str,
        delay_us: u64,
    ) -> Result<String, String> {
        use std::os::unix::process::ExitStatusExt;
        let Some(pid) = self.c.others.get(slot).map(Child::id) else {
            return Ok("no such writer".into());
        };
        let req = self.c.dir.join(format!("roll-kill-{pid}"));
        let armed = self.c.dir.join(format!("roll-kill-{pid}.armed"));
        std::fs::write(&req, format!("{delay_us}\n"))
            .map_err(|e| format!("{}: {e}", req.display()))?;
        let t = Instant::now();
        let status = loop {
            match self.c.others.get_mut(slot).map(Child::try_wait) {
                Some(Ok(Some(st))) => break Some(st),
                Some(Ok(None)) if t.elapsed() < Duration::from_secs(60) => {
                    if !nap(Duration::from_millis(5)) {
                        break None;
                    }
                }
                _ => break None,
            }
        };
        let _ = std::fs::remove_file(&req);
        let Some(status) = status else {
            let _ = std::fs::remove_file(&armed);
            return Ok("did not reach a roll within 60 s (writer replaced)".into());
        };
        let plan = std::fs::read_to_string(&armed).unwrap_or_default();
        let _ = std::fs::remove_file(&armed);
        let v: Vec<u64> = plan
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [pos, boundary, frame, _] = v[..] else {
            return Ok(format!("exited ({status}) without arming"));
        };
        if status.signal() != Some(libc::SIGKILL) {
            return Ok(format!("exited ({status}) after arming"));
        }
        let dir = self.c.nodes[node].data.join(q);
        let s = Store::open(&dir, &StoreOptions::open().skip_recovery())
            .map_err(|e| format!("roll-kill: {}: {e}", dir.display()))?;
        let (tail, committed) = (s.tail_position(), s.committed_position());
        // The prefetch thread creates the segment after the new one as
        // the writer enters the new one: was it created, torn (a temporary
        // file left), or not begun?
        let after = s.geometry().segment_of(boundary) + 1;
        let name = format!("{after:020}");
        let files: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.starts_with(&name))
                    .collect()
            })
            .unwrap_or_default();
        let prefetch = if files
            .iter()
            .any(|f| *f == format!("{name}{}", repliq::store::layout::SEGMENT_SUFFIX))
        {
            "created"
        } else if files.is_empty() {
            "not created"
        } else {
            "torn (temporary file left)"
        };
        let at = if tail == pos {
            "write position unmoved (before or in the switch to the new segment)".to_string()
        } else if tail == boundary {
            "in the roll (padded to the segment end, nothing claimed in the new one)".to_string()
        } else if tail == boundary + frame && committed < tail {
            "frame claimed in the new segment, not committed".to_string()
        } else if tail == boundary + frame {
            "after the append (frame committed)".to_string()
        } else {
            format!(
                "later (position {pos}, boundary {boundary}, now {tail}: {} frames on)",
                tail.saturating_sub(boundary) / frame.max(1)
            )
        };
        Ok(format!(
            "killed {delay_us} us into the rolling append: {at}; next segment after it {prefetch}"
        ))
    }

    /// Moves node `i`'s wall clock to `offset` from the host's (libfaketime
    /// re-reads the file on every wall-clock read of the daemon and the
    /// writers on that node).
    fn set_clock(&self, i: usize, offset: &str) -> Result<(), String> {
        let f = self.c.clock_file(i);
        std::fs::write(&f, format!("{offset}\n")).map_err(|e| format!("{}: {e}", f.display()))
    }

    /// Kills node `i` and removes its data directory.
    fn lose_disk(&mut self, i: usize) -> Result<(), String> {
        self.c.kill(i)?;
        let data = self.c.nodes[i].data.clone();
        std::fs::remove_dir_all(&data).map_err(|e| format!("lost-disk: {}: {e}", data.display()))
    }

    /// Whether, within `within`, another node's catalog records node `i`
    /// under the incarnation node `i` reports for itself (its `Join` was
    /// taken).
    fn rejoined(&self, i: usize, within: Duration) -> bool {
        let name = format!("node{i}");
        let until = Instant::now() + within;
        loop {
            let own = self.catalog(i).map(|v| v.incarnation).filter(|&x| x != 0);
            let recorded = (0..self.c.nodes.len())
                .filter(|&j| j != i)
                .find_map(|j| self.catalog(j)?.member_incarnation(&name));
            if own.is_some() && own == recorded {
                return true;
            }
            if Instant::now() >= until || !nap(Duration::from_millis(250)) {
                return false;
            }
        }
    }

    /// Node `i`'s `time_unix` as its daemon reports it.
    fn daemon_time(&self, i: usize) -> Option<f64> {
        let o = self
            .c
            .in_ns(i, &self.exe)
            .args(["catalog", "--path", "/api/v1/node", "--http"])
            .arg(self.c.http(i))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v.get("time_unix")?.as_f64()
    }

    /// Proves the preload takes effect before the workload: every daemon's
    /// `time_unix` must follow a +3600 s offset and come back, else the run
    /// stops (exit 2) rather than inject clock faults that do nothing.
    fn check_fake_clocks(&self) -> Result<(), String> {
        let n = self.c.nodes.len();
        let host = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        for (offset, secs) in [("+3600s", 3600.0), ("+0", 0.0)] {
            for i in 0..n {
                self.set_clock(i, offset)?;
            }
            for i in 0..n {
                let t = Instant::now();
                loop {
                    let got = self.daemon_time(i);
                    if got.is_some_and(|d| (d - host() - secs).abs() < 10.0) {
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(30) || !nap(Duration::from_millis(200)) {
                        return Err(format!(
                            "nemesis clock: libfaketime did not take effect in node{i}'s \
                             daemon (offset {offset}: time_unix {got:?}, host {:.0})",
                            host()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&self, e: Event) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }

    fn heal_network(&self) {
        for i in 0..self.c.nodes.len() {
            let _ = self.c.ns_sh(i, &["iptables", "-F", "INPUT"]);
            let _ = self.c.ns_sh(i, &["iptables", "-F", "OUTPUT"]);
        }
    }

    /// Cuts every pair of nodes for which `allowed` is false.
    fn partition(&self, allowed: impl Fn(usize, usize) -> bool) -> Result<(), String> {
        let n = self.c.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i != j && !allowed(i, j) {
                    let ip = self.c.nodes[j].ip.clone();
                    self.c
                        .ns_sh(i, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                    self.c
                        .ns_sh(i, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }
}

/// Runs `repliq-chaos run`; returns the exit code (0 PASS, 1 FAIL, 2 usage
/// or environment error, 130 interrupted).
pub fn run(a: RunArgs) -> i32 {
    match run_inner(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("repliq-chaos: error: {e}");
            if INTERRUPTED.load(Ordering::Relaxed) {
                130
            } else {
                2
            }
        }
    }
}

fn run_inner(a: RunArgs) -> Result<i32, String> {
    let len = a.soak.unwrap_or(a.duration);
    let mut nemeses: Vec<String> = a
        .nemesis
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    for n in &nemeses {
        if !NEMESES.contains(&n.as_str()) {
            return Err(format!(
                "unknown nemesis {n:?}; known: {}",
                NEMESES.join(", ")
            ));
        }
    }
    if a.static_primary && nemeses.iter().any(|k| k == "roll-kill") {
        return Err(
            "nemesis roll-kill needs cluster mode (the cluster-client writer); \
                    drop --static-primary"
                .into(),
        );
    }
    let mut modes = Vec::new();
    for m in &a.modes {
        match m.trim() {
            "sync" => modes.push(Mode::Sync),
            "async" => modes.push(Mode::Async),
            other => return Err(format!("unknown mode {other:?}: sync or async")),
        }
    }
    if modes.is_empty() {
        return Err("--modes needs sync, async or both".into());
    }
    if !(a.rate > 0.0 && a.rate <= 1000.0) {
        return Err("--rate must be in (0, 1000]".into());
    }
    // The containers bring their own daemon: there the host's `repliq` is
    // only what the replica-write nemesis runs.
    let repliq = match std::fs::canonicalize(&a.repliq) {
        Ok(p) => p,
        Err(_) if a.compose => a.repliq.clone(),
        Err(e) => {
            return Err(format!(
                "the repliq binary {}: {e} (build it: cargo build --release -p repliq-cli)",
                a.repliq.display()
            ))
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    cluster::preflight()?;
    if a.compose {
        crate::compose::preflight(&a.image)?;
    }
    for r in cluster::cleanup_stale() {
        println!("removed a leftover of an earlier run: {r}");
    }
    let seed = a
        .seed
        .unwrap_or_else(|| now_ns() ^ u64::from(std::process::id()));
    let out = a.out.join(format!("run-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let out = std::fs::canonicalize(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let mut unavailable: Vec<(String, String)> = Vec::new();
    let n = a.nodes;
    let min_acks = n / 2; // a majority, the primary included
    let mut queues: Vec<(String, Mode)> = Vec::new();
    for m in &modes {
        match m {
            Mode::Sync => {
                queues.push(("s0".into(), Mode::Sync));
                queues.push(("s1".into(), Mode::Sync));
            }
            Mode::Async => queues.push(("a0".into(), Mode::Async)),
        }
    }
    let names: Vec<String> = queues.iter().map(|q| q.0.clone()).collect();
    println!(
        "repliq-chaos: {n} nodes, {} s, seed {seed}, nemeses [{}], output {}",
        len.as_secs(),
        nemeses.join(","),
        out.display()
    );
    let cluster_mode = !a.static_primary;
    let c = if a.compose {
        Cluster::create_compose(n, &out, &repliq, a.failover_timeout_ms, &a.image)?
    } else {
        Cluster::create(
            n,
            &out,
            &repliq,
            &names,
            min_acks,
            cluster_mode.then_some(a.failover_timeout_ms),
        )?
    };
    // Queues made with small segments, so that rolls are frequent and kills
    // land near them: on the primary, or in cluster mode queue k on node
    // k mod n, which registers it in the catalog as its first leader.
    for (k, q) in names.iter().enumerate() {
        let home = if cluster_mode { k % n } else { 0 };
        let dir = c.nodes[home].data.join(q);
        Store::open(
            &dir,
            &StoreOptions::create()
                .capacity(100_000_000)
                .segment_size(1 << 16),
        )
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let stop_file = out.join("stop");
    let end_file = out.join("end");
    let mut r = Run {
        c,
        exe,
        events: Arc::new(Mutex::new(Vec::new())),
        readers: Vec::new(),
        next_process: 1,
        min_acks,
        rate: a.rate,
        stop_file,
        end_file,
        group_readers: Vec::new(),
        cluster_mode,
    };
    if nemeses.iter().any(|k| k == "clock") {
        if a.compose {
            return Err(
                "nemesis clock is not available with --compose: the daemons run the \
                        image's binary, and libfaketime is not in the image"
                    .into(),
            );
        }
        let lib = find_libfaketime().ok_or_else(|| {
            format!(
                "nemesis clock needs libfaketime (apt-get install libfaketime; looked for \
                 $REPLIQ_CHAOS_LIBFAKETIME if set, else {})",
                LIBFAKETIME_PATHS.join(", ")
            )
        })?;
        for i in 0..n {
            let f = r.c.clock_file(i);
            std::fs::write(&f, "+0\n").map_err(|e| format!("{}: {e}", f.display()))?;
        }
        r.c.faketime = Some(lib);
    }
    for i in 0..n {
        r.c.start(i)?;
    }
    // Probe what this kernel can do.
    if nemeses.iter().any(|k| k == "netem") {
        match r.c.ns_sh(
            0,
            &[
                "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        ) {
            Ok(()) => {
                let _ = r.c.ns_sh(0, &["tc", "qdisc", "del", "dev", "lo", "root"]);
            }
            Err(e) => {
                println!("nemesis netem: UNAVAILABLE on this machine: {e}");
                unavailable.push(("netem".into(), e));
                nemeses.retain(|k| k != "netem");
            }
        }
    }
    if nemeses.iter().any(|k| k == "loss") {
        let probe = |op| r.c.ns_sh(0, &loss_rule(op, "INPUT", "0.0001"));
        match probe("-A") {
            Ok(()) => {
                let _ = probe("-D");
            }
            Err(e) => {
                println!("nemesis loss: UNAVAILABLE on this machine: {e}");
                unavailable.push(("loss".into(), e));
                nemeses.retain(|k| k != "loss");
            }
        }
    }
    if !nap(Duration::from_secs(2)) {
        return Ok(130);
    }
    if cluster_mode {
        // Start the workload once every queue has a leader.
        let t = Instant::now();
        loop {
            if r.any_catalog()
                .is_some_and(|v| names.iter().all(|q| v.leader(q).is_some()))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err(
                    "the cluster did not register every queue with a leader within 60 s \
                     (see the daemon logs)"
                        .into(),
                );
            }
            if !nap(Duration::from_millis(250)) {
                return Ok(130);
            }
        }
    }
    // The clock check runs once the daemons have settled (their data
    // directories and the catalog's incarnations made at the real time: a
    // directory made during the check would carry the +1 h clock), and is
    // recorded as a fault.
    let mut clock_check = None;
    if r.c.faketime.is_some() {
        let t0 = now_ns();
        r.check_fake_clocks()?;
        println!("nemesis clock: libfaketime moves every daemon's CLOCK_REALTIME (checked)");
        clock_check = Some(Fault {
            kind: "clock".into(),
            target: "every node +3600s then +0 (the pre-flight check)".into(),
            start_ns: t0,
            end_ns: now_ns(),
        });
    }
    let mut writers = Vec::new();
    for (q, m) in &queues {
        if cluster_mode {
            // A writer on every node: the one where the catalog says the
            // leader is appends.
            for i in 0..n {
                let slot = r.spawn_writer(i, q, *m)?;
                writers.push(Writer {
                    slot,
                    node: i,
                    queue: q.clone(),
                    mode: *m,
                });
            }
            if *m == Mode::Sync {
                // A tailer of every replica, and a reader of the queue's
                // consumer group on every node: the leader's takes.
                for i in 0..n {
                    r.spawn_tail_reader(i, q)?;
                    r.spawn_group_reader(i, q, &format!("g-{q}"))?;
                }
            }
            continue;
        }
        let count = if q == "s0" { 2 } else { 1 };
        for _ in 0..count {
            let slot = r.spawn_writer(0, q, *m)?;
            writers.push(Writer {
                slot,
                node: 0,
                queue: q.clone(),
                mode: *m,
            });
        }
        if *m == Mode::Sync {
            r.spawn_reader(q, "g1")?;
            if q == "s0" {
                r.spawn_reader(q, "g2")?;
            }
        }
    }

    // The nemesis loop.
    let started = Instant::now();
    let schedule = plan(seed, &nemeses, n, len, a.interval);
    let mut faults: Vec<Fault> = clock_check.into_iter().collect();
    let mut replica_writes = 0u64;
    let mut roll_kills: BTreeMap<String, usize> = BTreeMap::new();
    // Lost disks whose node came back under a slower clock: (rejoined, refused).
    let mut slow_rejoins = (0usize, 0usize);
    for p in &schedule {
        if !nap(p.gap.min(len.saturating_sub(started.elapsed()))) {
            break;
        }
        if started.elapsed() + p.hold + Duration::from_secs(5) > len {
            break;
        }
        for d in r.c.reap_dead() {
            println!("warning: daemon died on its own: {d}");
        }
        // Who leads what, as some node's catalog says now.
        let view = if cluster_mode { r.any_catalog() } else { None };
        let roles: Vec<String> = (0..n)
            .map(|i| {
                if !cluster_mode {
                    return if i == 0 { "primary" } else { "secondary" }.into();
                }
                let led: Vec<String> = view
                    .as_ref()
                    .map(|v| {
                        v.queues
                            .iter()
                            .filter(|q| q.leader.as_deref() == Some(r.c.nodes[i].name.as_str()))
                            .map(|q| q.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                if led.is_empty() {
                    "follower".into()
                } else {
                    format!("leader of {}", led.join(","))
                }
            })
            .collect();
        let leader_idx: Vec<Option<usize>> = names
            .iter()
            .map(|q| {
                view.as_ref()
                    .and_then(|v| v.leader(q))
                    .and_then(|l| r.index_of(l))
            })
            .collect();
        let role = |i: usize| roles[i].clone();
        // Cluster mode: half the kills and pauses hit a queue's leader.
        let leader_or_target = |pick: u64, target: usize| -> usize {
            if !cluster_mode || pick % 2 == 1 {
                return target;
            }
            leader_idx[((pick >> 1) % names.len() as u64) as usize].unwrap_or(target)
        };
        let t0 = now_ns();
        let (kind, target) = match p.kind.as_str() {
            "kill" => {
                let i = leader_or_target(p.pick, p.target);
                let desc = format!("node{i} ({})", role(i));
                r.c.kill(i)?;
                nap(p.hold);
                r.c.start(i)?;
                ("kill".to_string(), desc)
            }
            "pause" => {
                let i = leader_or_target(p.pick, p.target);
                let desc = format!("node{i} ({})", role(i));
                if let Some(pid) = r.c.pid(i) {
                    cluster::signal(pid, libc::SIGSTOP)?;
                    r.c.nodes[i].paused = true;
                    nap(p.hold);
                    cluster::signal(pid, libc::SIGCONT)?;
                    r.c.nodes[i].paused = false;
                }
                ("pause".to_string(), desc)
            }
            "partition" => {
                let variant = p.pick % 3;
                let mut order: Vec<usize> = (0..n).collect();
                let mut q = Prng::new(p.pick);
                for k in (1..n).rev() {
                    order.swap(k, q.below(k as u64 + 1) as usize);
                }
                let (kind, desc) = match variant {
                    0 => {
                        let minority: Vec<usize> = order[..n / 2].to_vec();
                        let side = |i: usize| minority.contains(&i);
                        r.partition(|i, j| side(i) == side(j))?;
                        (
                            "partition-majority",
                            format!(
                                "minority {:?}",
                                minority
                                    .iter()
                                    .map(|i| format!("node{i}"))
                                    .collect::<Vec<_>>()
                            ),
                        )
                    }
                    1 if cluster_mode => {
                        let l = leader_or_target(p.pick & !1, order[0]);
                        let desc = format!("node{l} ({}) isolated", role(l));
                        r.partition(|i, j| i != l && j != l)?;
                        ("partition-leader", desc)
                    }
                    1 => {
                        r.partition(|i, j| i != 0 && j != 0)?;
                        ("partition-primary", "node0 (primary) isolated".to_string())
                    }
                    _ => {
                        let b = order[0];
                        let rest: Vec<usize> = order[1..].to_vec();
                        let half = rest.len() / 2;
                        let side = |i: usize| rest[..half].contains(&i);
                        r.partition(|i, j| i == b || j == b || side(i) == side(j))?;
                        ("partition-bridge", format!("node{b} sees both sides"))
                    }
                };
                nap(p.hold);
                r.heal_network();
                (kind.to_string(), desc)
            }
            "lost-disk" => {
                // A secondary: the primary's disk is where the writers are.
                let i = 1 + p.target % (n - 1);
                let mut desc = format!("node{i} ({})", role(i));
                // With clock faults on, in cluster mode, every other lost
                // disk is first remade while the node's clock is an hour
                // fast, then lost again with the clock right: the second
                // directory's incarnation is behind the first's by the
                // clock, and the node must still rejoin.
                let slow_again = cluster_mode && r.c.faketime.is_some() && (p.pick >> 16) & 1 == 1;
                if slow_again {
                    r.lose_disk(i)?;
                    r.set_clock(i, "+3600s")?;
                    r.c.start(i)?;
                    let first = r.rejoined(i, REJOIN_WITHIN);
                    r.set_clock(i, "+0")?;
                    desc.push_str(&format!(
                        ", first remade at +3600s ({})",
                        if first { "joined" } else { "join not seen" }
                    ));
                }
                r.lose_disk(i)?;
                nap(p.hold);
                r.c.start(i)?;
                if slow_again {
                    if r.rejoined(i, REJOIN_WITHIN) {
                        slow_rejoins.0 += 1;
                        desc.push_str(", then at +0: rejoined");
                    } else {
                        slow_rejoins.1 += 1;
                        desc.push_str(", then at +0: REJOIN REFUSED");
                        println!("lost-disk: node{i} came back under a slower clock and was not taken back");
                    }
                }
                ("lost-disk".to_string(), desc)
            }
            "writer-kill" => {
                let w = &writers[(p.pick % writers.len() as u64) as usize];
                let (slot, node, queue, mode) = (w.slot, w.node, w.queue.clone(), w.mode);
                if let Some(ch) = r.c.others.get_mut(slot) {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                nap(p.hold);
                let new = r.spawn_writer(node, &queue, mode)?;
                // The new writer takes the old one's place in `others`.
                let ch = r.c.others.swap_remove(new);
                let mut old = std::mem::replace(&mut r.c.others[slot], ch);
                let _ = old.wait();
                (
                    "writer-kill".to_string(),
                    format!("writer of {queue} on node{node}"),
                )
            }
            "replica-write" => {
                let k = (p.pick % queues.len() as u64) as usize;
                let (q, _) = &queues[k];
                // A node that does not lead the queue: a secondary, or in
                // cluster mode a node other than the catalog's leader.
                let i = match leader_idx.get(k).copied().flatten() {
                    Some(l) if cluster_mode => (l + 1 + p.target % (n - 1)) % n,
                    _ => 1 + p.target % (n - 1),
                };
                replica_writes += 1;
                let value = (999_000u64 << 32) | replica_writes;
                let dir = r.c.nodes[i].data.join(q);
                let mut e = Event {
                    kind: EventType::Invoke,
                    f: OpFn::Enqueue,
                    process: 999_000,
                    node: r.c.nodes[i].name.clone(),
                    queue: q.clone(),
                    mode: Mode::Async,
                    value,
                    group: None,
                    id: None,
                    epoch: None,
                    term: None,
                    time_ns: now_ns(),
                    error: None,
                };
                r.push(e.clone());
                let repliq = r.c.repliq.clone();
                let res =
                    r.c.in_ns(i, &repliq)
                        .arg("append")
                        .arg(&dir)
                        .arg(format!("{TEXT_VALUE_PREFIX}{value}"))
                        .arg("--print-ids")
                        .stdin(Stdio::null())
                        .output();
                e.time_ns = now_ns();
                match res {
                    Ok(o) if o.status.success() => {
                        e.kind = EventType::Ok;
                        e.id = String::from_utf8_lossy(&o.stdout).trim().parse().ok();
                    }
                    Ok(o) => {
                        e.kind = EventType::Fail;
                        e.error = Some(String::from_utf8_lossy(&o.stderr).trim().to_string());
                    }
                    Err(err) => {
                        e.kind = EventType::Info;
                        e.error = Some(err.to_string());
                    }
                }
                println!(
                    "replica-write on node{i}/{q}: {:?}{}",
                    e.kind,
                    e.error
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                );
                r.push(e);
                (
                    "replica-write".to_string(),
                    format!("node{i} ({}) {q}", role(i)),
                )
            }
            "netem" => {
                let i = p.target;
                r.c.ns_sh(
                    i,
                    &[
                        "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "100ms",
                        "20ms", "loss", "10%",
                    ],
                )?;
                nap(p.hold);
                let _ = r.c.ns_sh(i, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
                ("netem".to_string(), format!("node{i} ({})", role(i)))
            }
            "loss" => {
                let i = p.target;
                let rule = |op, chain| loss_rule(op, chain, LOSS_PROBABILITY);
                r.c.ns_sh(i, &rule("-A", "INPUT"))?;
                r.c.ns_sh(i, &rule("-A", "OUTPUT"))?;
                nap(p.hold);
                let _ = r.c.ns_sh(i, &rule("-D", "INPUT"));
                let _ = r.c.ns_sh(i, &rule("-D", "OUTPUT"));
                (
                    "loss".to_string(),
                    format!(
                        "node{i} ({}) drops {LOSS_PROBABILITY} of its packets each way",
                        role(i)
                    ),
                )
            }
            "roll-kill" => {
                if !cluster_mode {
                    return Err("nemesis roll-kill needs cluster mode (the cluster-client \
                                writer)"
                        .into());
                }
                let k = (p.pick % names.len() as u64) as usize;
                let q = names[k].clone();
                let leader = leader_idx[k];
                let w = writers
                    .iter()
                    .find(|w| w.queue == q && Some(w.node) == leader);
                let delay_us = Prng::new(p.pick).between(0, ROLL_KILL_MAX_US);
                let outcome = match w {
                    None => "no leader known: nothing armed".to_string(),
                    Some(w) => {
                        let (slot, node, mode) = (w.slot, w.node, w.mode);
                        let o = r.roll_kill(slot, node, &q, delay_us)?;
                        nap(p.hold);
                        let new = r.spawn_writer(node, &q, mode)?;
                        let ch = r.c.others.swap_remove(new);
                        let mut old = std::mem::replace(&mut r.c.others[slot], ch);
                        let _ = old.kill();
                        let _ = old.wait();
                        o
                    }
                };
                println!("roll-kill {q}: {outcome}");
                *roll_kills.entry(outcome_class(&outcome)).or_default() += 1;
                (
                    "roll-kill".to_string(),
                    format!(
                        "writer of {q} on {}: {outcome}",
                        leader.map_or("?".to_string(), |l| format!("node{l}"))
                    ),
                )
            }
            "clock" => {
                let i = leader_or_target(p.pick, p.target);
                let jump = CLOCK_JUMPS[((p.pick >> 8) % CLOCK_JUMPS.len() as u64) as usize];
                let desc = format!("node{i} ({}) wall clock {jump}", role(i));
                r.set_clock(i, jump)?;
                nap(p.hold);
                r.set_clock(i, "+0")?;
                ("clock".to_string(), desc)
            }
            other => return Err(format!("nemesis {other} has no implementation")),
        };
        faults.push(Fault {
            kind,
            target,
            start_ns: t0,
            end_ns: now_ns(),
        });
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
    }
    if !roll_kills.is_empty() {
        println!(
            "roll-kill outcomes: {}",
            roll_kills
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if INTERRUPTED.load(Ordering::Relaxed) {
        eprintln!("repliq-chaos: interrupted; cleaning up");
        return Ok(130);
    }
    if !nap(len.saturating_sub(started.elapsed())) {
        eprintln!("repliq-chaos: interrupted; cleaning up");
        return Ok(130);
    }

    // Final heal: network, pauses, dead daemons.
    r.heal_network();
    for i in 0..n {
        if let Some(pid) = r.c.pid(i) {
            let _ = cluster::signal(pid, libc::SIGCONT);
        }
    }
    for d in r.c.reap_dead() {
        println!("warning: daemon died on its own: {d}");
    }
    for i in 0..n {
        if r.c.pid(i).is_none() {
            r.c.start(i)?;
        }
    }
    // Stop the workload and the tailers; the group readers go on.
    std::fs::write(&r.stop_file, b"stop").map_err(|e| format!("stop file: {e}"))?;
    let t = Instant::now();
    for (k, ch) in r.c.others.iter_mut().enumerate() {
        if r.group_readers.contains(&k) {
            continue;
        }
        wait_or_kill(ch, t, None);
    }
    // Drain: wait until every replica's write position reaches the
    // leader's (the primary's, with a static primary). In cluster mode the
    // leader and replica set of each queue are what the catalog says, read
    // again on every round (a failover may still be under way).
    let pos = |i: usize, q: &str| -> Option<u64> {
        let s = Store::open(
            r.c.nodes[i].data.join(q),
            &StoreOptions::open().skip_recovery(),
        )
        .ok()?;
        Some(s.tail_position())
    };
    let drain_start = Instant::now();
    let mut drained = false;
    let mut final_view: Option<CatalogView> = None;
    while drain_start.elapsed() < Duration::from_secs(60) && !INTERRUPTED.load(Ordering::Relaxed) {
        if cluster_mode {
            // Every node's catalog must agree on each queue's leader and epoch.
            let views: Vec<Option<CatalogView>> = (0..n).map(|i| r.catalog(i)).collect();
            let agreed = views.iter().all(|v| {
                v.as_ref().is_some_and(|v| {
                    names.iter().all(|q| {
                        let (Some(a), Some(b)) =
                            (v.queue(q), views[0].as_ref().and_then(|w| w.queue(q)))
                        else {
                            return false;
                        };
                        a.leader.is_some() && a.leader == b.leader && a.epoch == b.epoch
                    })
                })
            });
            if agreed {
                if let Some(v) = views[0].clone() {
                    drained = names.iter().all(|q| {
                        let Some(e) = v.queue(q) else { return false };
                        let Some(l) = e.leader.as_deref().and_then(|l| r.index_of(l)) else {
                            return false;
                        };
                        let p = pos(l, q);
                        p.is_some()
                            && e.replicas
                                .iter()
                                .filter_map(|x| r.index_of(x))
                                .all(|i| pos(i, q) == p)
                    });
                    final_view = Some(v);
                }
            }
        } else {
            drained = names.iter().all(|q| {
                let p = pos(0, q);
                p.is_some() && (1..n).all(|i| pos(i, q) == p)
            });
        }
        if drained {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if INTERRUPTED.load(Ordering::Relaxed) {
        eprintln!("repliq-chaos: interrupted; cleaning up");
        return Ok(130);
    }
    // The group readers drain: the one whose node leads takes until its
    // group is empty, the others stop once they have not led for 3 s.
    std::fs::write(&r.end_file, b"end").map_err(|e| format!("end file: {e}"))?;
    let t = Instant::now();
    let slots = r.group_readers.clone();
    for k in slots {
        let Some(ch) = r.c.others.get_mut(k) else {
            continue;
        };
        wait_or_kill(
            ch,
            t,
            Some("warning: a group reader did not finish draining within 60 s"),
        );
    }
    for h in r.readers.drain(..) {
        let _ = h.join();
    }
    if INTERRUPTED.load(Ordering::Relaxed) {
        eprintln!("repliq-chaos: interrupted; cleaning up");
        return Ok(130);
    }
    if !drained {
        println!(
            "warning: replicas did not reach the {}'s write position within 60 s",
            if cluster_mode { "leader" } else { "primary" }
        );
    }
    if cluster_mode {
        // The catalog as it stands at the end: final leaders, in-sync sets.
        if let Some(v) = r.any_catalog() {
            final_view = Some(v);
        }
        match &final_view {
            Some(v) => {
                for q in &names {
                    if let Some(e) = v.queue(q) {
                        println!(
                            "final: {q} led by {} in epoch {}, replicas [{}], in sync [{}]",
                            e.leader.as_deref().unwrap_or("nobody"),
                            e.epoch,
                            e.replicas.join(","),
                            e.in_sync.join(",")
                        );
                    }
                }
            }
            None => println!("warning: no node served the catalog at the end"),
        }
    }
    for i in 0..n {
        r.c.stop(i, Duration::from_secs(10))?;
    }

    // Final logs.
    let mut logs = Vec::new();
    for q in &names {
        let entry = final_view.as_ref().and_then(|v| v.queue(q));
        for (i, node) in r.c.nodes.iter().enumerate() {
            let (primary, in_sync) = if cluster_mode {
                // Only the queue's replicas hold it; the leader is the
                // catalog's (none known: no primary, which the checker
                // reports).
                let Some(e) = entry else { continue };
                if !e.replicas.contains(&node.name) {
                    continue;
                }
                (
                    e.leader.as_deref() == Some(node.name.as_str()),
                    e.in_sync.contains(&node.name),
                )
            } else {
                (i == 0, false)
            };
            let (records, error) = match read_log(&node.data.join(q)) {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            logs.push(NodeLog {
                queue: q.clone(),
                node: node.name.clone(),
                primary,
                in_sync,
                records,
                error,
            });
        }
    }
    let events = r.events.lock().map(|v| v.clone()).unwrap_or_default();
    let h = History {
        events,
        faults,
        logs,
        unavailable,
    };
    let window_ms = a
        .redelivery_window_ms
        .unwrap_or(checker::redelivery_window_ns(a.failover_timeout_ms) / 1_000_000);
    let rep = checker::check_with(
        &h,
        &checker::CheckOptions {
            redelivery_window_ns: window_ms.saturating_mul(1_000_000),
        },
    );
    let header = format!(
        "repliq-chaos: {n} nodes ({}), {} s, seed {seed}, nemeses [{}]",
        if cluster_mode {
            format!(
                "cluster mode, failover timeout {} ms{}",
                a.failover_timeout_ms,
                if a.compose {
                    format!(", containers of {}", a.image)
                } else {
                    String::new()
                }
            )
        } else {
            "static primary node0".to_string()
        },
        len.as_secs(),
        a.nemesis.join(",")
    );
    let mut harness_failures = Vec::new();
    if slow_rejoins.1 > 0 {
        harness_failures.push(format!(
            "{} of {} nodes back from a lost disk under a slower clock were not taken back within {} s",
            slow_rejoins.1,
            slow_rejoins.0 + slow_rejoins.1,
            REJOIN_WITHIN.as_secs()
        ));
    }
    let hist_path = out.join("history.json");
    let doc = serde_json::json!({
        "seed": seed,
        "nodes": n,
        "duration_s": len.as_secs(),
        "nemeses": a.nemesis,
        "mode": if cluster_mode { "cluster" } else { "static-primary" },
        "image": a.compose.then_some(&a.image),
        "failover_timeout_ms": cluster_mode.then_some(a.failover_timeout_ms),
        "redelivery_window_ms": window_ms,
        "report": rep,
        "harness_failures": harness_failures,
        "failovers": checker::failovers(&h),
        "history": h,
    });
    let text = serde_json::to_string(&doc).map_err(|e| format!("history: {e}"))?;
    std::fs::write(&hist_path, text).map_err(|e| format!("{}: {e}", hist_path.display()))?;
    let plot_path = out.join("latency.svg");
    if let Err(e) = report::plot(&h, &plot_path) {
        println!("warning: plot: {e}");
    }
    println!("history: {}", hist_path.display());
    println!("plot:    {}", plot_path.display());
    print!("{}", report::summary(&h, &rep, &header, &harness_failures));
    if slow_rejoins != (0, 0) {
        println!(
            "lost disks under a slower clock: {} rejoined, {} refused",
            slow_rejoins.0, slow_rejoins.1
        );
    }
    drop(r);
    Ok(if rep.pass() && harness_failures.is_empty() {
        0
    } else {
        1
    })
}

/// Waits for `ch` to end until 60 s after `since` (or an interrupt), then
/// kills it, printing `warning` if given.
fn wait_or_kill(ch: &mut Child, since: Instant, warning: Option<&str>) {
    loop {
        match ch.try_wait() {
            Ok(Some(_)) => return,
            Ok(None)
                if since.elapsed() < Duration::from_secs(60)
                    && !INTERRUPTED.load(Ordering::Relaxed) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                if let Some(w) = warning {
                    println!("{w}");
                }
                let _ = ch.kill();
                let _ = ch.wait();
                return;
            }
        }
    }
}

/// Reads every record of a queue directory, running recovery as a
/// restarted daemon would.
fn read_log(dir: &Path) -> Result<Vec<LogRecord>, String> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let s =
        Store::open(dir, &StoreOptions::open()).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut t = s.tailer();
    t.seek_start();
    let mut v = Vec::new();
    while let Some(rec) = t.next().map_err(|e| format!("{}: {e}", dir.display()))? {
        v.push(LogRecord {
            id: rec.id,
            epoch: rec.epoch,
            payload: rec.payload,
        });
    }
    Ok(v)
}

/// Faults by kind, for the summary.
pub fn fault_counts(h: &History) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in &h.faults {
        *m.entry(f.kind.clone()).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::{loss_rule, plan, NEMESES};
    use std::time::Duration;

    #[test]
    fn the_loss_rule_drops_at_random_on_eth0_only_in_the_direction_of_its_chain() {
        let input = loss_rule("-A", "INPUT", "0.2");
        let output = loss_rule("-D", "OUTPUT", "0.2");
        assert_eq!(&input[..5], &["iptables", "-A", "INPUT", "-i", "eth0"]);
        assert_eq!(&output[..5], &["iptables", "-D", "OUTPUT", "-o", "eth0"]);
        for r in [&input, &output] {
            let s = r.join(" ");
            assert!(
                s.contains("-m statistic --mode random --probability 0.2"),
                "{s}"
            );
            assert!(s.ends_with("-j DROP"), "{s}");
        }
    }

    #[test]
    fn loss_is_a_known_nemesis_and_is_scheduled_with_a_hold() {
        assert!(NEMESES.contains(&"loss"));
        let p = plan(7, &["loss".to_string()], 3, Duration::from_secs(120), 6);
        assert!(!p.is_empty());
        assert!(p
            .iter()
            .all(|f| f.kind == "loss" && f.hold >= Duration::from_secs(3)));
    }
}
