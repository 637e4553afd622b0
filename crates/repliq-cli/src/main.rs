//! `repliq`: the command line of the repliq queue.

mod bench;
mod cert;
mod cluster;
mod commands;
mod daemon;
mod demo;
mod demo_cluster;
mod http_client;
mod top;

use clap::{Parser, Subcommand};

/// A persistent, replicated message queue on memory-mapped files.
#[derive(Parser, Debug)]
#[command(name = "repliq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A self-contained tour: writer and reader processes on a temporary queue.
    Demo(demo::DemoArgs),
    /// Benchmarks: IPC latency and throughput.
    Bench(bench::BenchArgs),
    /// Run a node: replication, health, readiness and metrics over HTTP.
    Daemon(daemon::DaemonArgs),
    /// Live view of a running daemon: nodes, queue rates, depth, lag.
    Top(top::TopArgs),
    /// The cluster (cluster mode): members, the catalog, queue leaders and epochs.
    Cluster(cluster::ClusterArgs),
    /// Certificates for mutual TLS: a CA and per-node certificates (PEM).
    Cert(cert::CertArgs),
    #[command(flatten)]
    Queue(commands::QueueCommand),
}

fn main() {
    commands::init_tracing();
    let cli: Cli = commands::parse_cli();
    let code = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Daemon(a) => daemon::run(a),
        Command::Top(a) => top::run(a),
        Command::Cluster(a) => cluster::run(a),
        Command::Cert(a) => cert::run(a),
        Command::Queue(c) => commands::run(c),
    };
    std::process::exit(code);
}
