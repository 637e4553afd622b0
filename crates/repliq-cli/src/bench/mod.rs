//! `repliq bench`: IPC latency, multi-process throughput, and open latency.
//!
//! Every benchmark runs its writers and readers as separate processes: the
//! parent re-executes its own binary as `repliq bench child ...` (a hidden
//! subcommand) and coordinates the children through a small shared file of
//! atomics (see [`common::Coord`]). Children print one JSON line with their
//! result; the parent aggregates and reports. A failed child makes the whole
//! benchmark fail with a non-zero exit code.

pub mod common;
pub mod hiccup;
pub mod ipc;
pub mod open;
pub mod throughput;

use std::path::PathBuf;

use repliq::store::IdleStrategy;

/// Arguments of `repliq bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCommand {
    /// Writer -> reader latency between two processes (coordinated-omission corrected).
    Ipc(ipc::IpcArgs),
    /// N writer processes and M reader processes: messages and bytes per second.
    Throughput(throughput::ThroughputArgs),
    /// Time to open a queue right after a writer process was killed, cleanly, and when large.
    Open(open::OpenArgs),
    /// Internal: one writer or reader process of a benchmark.
    #[command(hide = true)]
    Child(ChildArgs),
}

/// Runs a benchmark and returns the exit code.
pub fn run(a: BenchArgs) -> i32 {
    let r = match a.cmd {
        BenchCommand::Ipc(a) => ipc::run(a),
        BenchCommand::Throughput(a) => throughput::run(a),
        BenchCommand::Open(a) => open::run(a),
        BenchCommand::Child(a) => run_child(a),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("repliq: error: {e}");
            1
        }
    }
}

/// Idle strategy of a reader, as given on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Busy-spin on the next frame (IdleStrategy::BusySpin).
    Spin,
    /// Poll, yielding the CPU in between (IdleStrategy::Yield).
    Yield,
    /// Sleep on the queue's shared futex (IdleStrategy::Block).
    Futex,
}

impl Idle {
    /// The engine's strategy.
    pub fn strategy(self) -> IdleStrategy {
        match self {
            Idle::Spin => IdleStrategy::BusySpin,
            Idle::Yield => IdleStrategy::Yield,
            Idle::Futex => IdleStrategy::Block,
        }
    }
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Idle::Spin => "spin",
            Idle::Yield => "yield",
            Idle::Futex => "futex",
        }
    }
}

/// Whether `repliq bench ipc` runs the hiccup meter (see [`hiccup`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hiccup {
    /// A thread in the reader and one in the writer process sleep 1 ms at a time and record
    /// their oversleep.
    On,
    /// No meter.
    Off,
}

impl Hiccup {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Hiccup::On => "on",
            Hiccup::Off => "off",
        }
    }
}

/// Role of a child process.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Latency writer: timestamps in the payload, optional rate schedule.
    IpcWriter,
    /// Latency reader: records receive time minus send time.
    IpcReader,
    /// Throughput writer: appends as fast as it can.
    TputWriter,
    /// Throughput reader: tails and counts.
    TputReader,
    /// Open benchmark writer: appends until it is killed.
    OpenWriter,
}

/// Arguments of the hidden `repliq bench child`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    role: Role,
    /// The queue directory.
    #[arg(long)]
    queue: PathBuf,
    /// The coordination file.
    #[arg(long)]
    coord: PathBuf,
    /// Index among processes of the same role.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second, 0 for unthrottled.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 0)]
    warmup_ns: u64,
    #[arg(long, default_value_t = 0)]
    duration_ns: u64,
    /// Messages to write (throughput writers), 0 to use the duration.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Writer processes (readers wait for all of them).
    #[arg(long, default_value_t = 1)]
    writers: u64,
    #[arg(long, value_enum, default_value_t = Idle::Spin)]
    idle: Idle,
    /// Run the hiccup meter (latency readers).
    #[arg(long, value_enum, default_value_t = Hiccup::Off)]
    hiccup: Hiccup,
    /// CPU to pin the reader's hiccup meter to (default: the reader's).
    #[arg(long)]
    hiccup_cpu: Option<usize>,
}

impl ChildArgs {
    /// The command line for this child.
    pub fn to_args(&self) -> Vec<String> {
        let role = match self.role {
            Role::IpcWriter => "ipc-writer",
            Role::IpcReader => "ipc-reader",
            Role::TputWriter => "tput-writer",
            Role::TputReader => "tput-reader",
            Role::OpenWriter => "open-writer",
        };
        let mut v = vec![
            "--role".into(),
            role.into(),
            "--queue".into(),
            self.queue.display().to_string(),
            "--coord".into(),
            self.coord.display().to_string(),
            "--index".into(),
            self.index.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--warmup-ns".into(),
            self.warmup_ns.to_string(),
            "--duration-ns".into(),
            self.duration_ns.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--writers".into(),
            self.writers.to_string(),
            "--idle".into(),
            self.idle.name().into(),
            "--hiccup".into(),
            self.hiccup.name().into(),
        ];
        if let Some(c) = self.cpu {
            v.push("--cpu".into());
            v.push(c.to_string());
        }
        if let Some(c) = self.hiccup_cpu {
            v.push("--hiccup-cpu".into());
            v.push(c.to_string());
        }
        v
    }
}

fn run_child(a: ChildArgs) -> common::BResult<()> {
    if let Some(c) = a.cpu {
        common::pin_to(c);
    }
    let coord = common::Coord::open(&a.coord, false)?;
    let r = match a.role {
        Role::IpcWriter => ipc::writer(&a, &coord),
        Role::IpcReader => ipc::reader(&a, &coord),
        Role::TputWriter => throughput::writer(&a, &coord),
        Role::TputReader => throughput::reader(&a, &coord),
        Role::OpenWriter => open::writer(&a, &coord),
    };
    match r {
        Ok(line) => {
            println!("{line}");
            Ok(())
        }
        Err(e) => {
            coord.abort();
            Err(e)
        }
    }
}

/// Parses a message size list entry.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    if !(16..=(1 << 20)).contains(&n) {
        return Err(format!(
            "message size {n} must be between 16 bytes and 1 MiB"
        ));
    }
    Ok(n)
}

/// Parses a rate: messages per second, or `max`/`0` for unthrottled.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "max" || t == "0" {
        return Ok(0);
    }
    let (num, mul) = if let Some(n) = t.strip_suffix('m') {
        (n, 1_000_000.0)
    } else if let Some(n) = t.strip_suffix('k') {
        (n, 1_000.0)
    } else {
        (t.as_str(), 1.0)
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a rate (messages per second, e.g. 100000, 1m or max)")
    })?;
    let r = v * mul;
    if !(1.0..=1e9).contains(&r) {
        return Err(format!(
            "rate {s} must be between 1 and 1e9 messages per second"
        ));
    }
    Ok(r as u64)
}

/// Parses a positive number of seconds.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{v} seconds is out of range (0 to 3600)"));
    }
    Ok(v)
}
