//! `repliq-chaos`: runs a workload against a cluster of `repliq daemon`
//! processes in network namespaces while nemeses inject faults, then checks
//! the history. See `docs/reliability.md`.

mod catalog;
mod client;
mod cluster;
mod compose;
mod report;
mod run;

use clap::{Parser, Subcommand};

/// A Jepsen-style fault harness and checker for repliq.
#[derive(Parser, Debug)]
#[command(name = "repliq-chaos", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a cluster, run the workload under faults, check the history.
    Run(run::RunArgs),
    /// Check a history file written by an earlier run.
    Check(run::CheckArgs),
    /// Remove namespaces, bridges and rules left by runs killed with SIGKILL.
    Cleanup,
    /// (internal) A writer, run inside a node's namespace.
    #[command(hide = true)]
    Client(client::ClientArgs),
    /// (internal) A consumer-group reader, run inside a node's namespace.
    #[command(hide = true)]
    Reader(client::ReaderArgs),
    /// (internal) A cluster-mode writer, run inside a node's namespace.
    #[command(hide = true)]
    ClusterClient(client::ClusterClientArgs),
    /// (internal) A cluster-mode consumer-group reader, run inside a node's
    /// namespace.
    #[command(hide = true)]
    GroupReader(client::GroupReaderArgs),
    /// (internal) A tailer of a node's replica, run inside its namespace.
    #[command(hide = true)]
    TailReader(client::TailReaderArgs),
    /// (internal) Prints a node's `/api/v1/cluster`, run inside its namespace.
    #[command(hide = true)]
    Catalog(catalog::CatalogArgs),
}

fn main() {
    // A workload client started in a container's namespaces: enter them.
    compose::enter_if_asked();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => run::check_file(a),
        Command::Cleanup => run::cleanup(),
        Command::Client(a) => client::client(a),
        Command::Reader(a) => client::reader(a),
        Command::ClusterClient(a) => client::cluster_client(a),
        Command::TailReader(a) => client::tail_reader(a),
        Command::GroupReader(a) => client::group_reader(a),
        Command::Catalog(a) => catalog::print(a),
    };
    std::process::exit(code);
}
