//! Queue commands: create, append, tail, dequeue, dump, stat, verify,
//! peer-remove, completions.
//!
//! Every command returns an exit code; errors are printed on one line of
//! standard error as `repliq: error: ...`. Codes and output formats are
//! documented in `docs/cli.md`.

mod append;
mod args;
mod create;
mod exit;
mod inspect;
mod json;
mod output;
mod peers;
mod read;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use repliq::store::{Store, StoreOptions};

pub use exit::{init_tracing, parse_cli};

/// The queue subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue directory.
    Create(create::CreateArgs),
    /// Append messages: arguments, lines of standard input, or a whole file.
    Append(append::AppendArgs),
    /// Print records (broadcast read: nothing is consumed); -f follows.
    Tail(read::TailArgs),
    /// Take messages for a consumer group (each message goes to one taker).
    Dequeue(read::DequeueArgs),
    /// Print the control file, the segments and every frame.
    Dump(inspect::DumpArgs),
    /// Print counters, cursors and disk usage.
    Stat(inspect::StatArgs),
    /// Check every frame's CRC; exit 4 at the first damage.
    Verify(inspect::VerifyArgs),
    /// Remove a replication peer's slot (a node gone for good): it stops
    /// holding segments back.
    PeerRemove(peers::PeerRemoveArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

/// Arguments of `repliq completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to generate for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Runs a queue subcommand and returns the process exit code.
pub fn run(c: QueueCommand) -> i32 {
    let r = match c {
        QueueCommand::Create(a) => create::run(a),
        QueueCommand::Append(a) => append::run(a),
        QueueCommand::Tail(a) => read::tail(a),
        QueueCommand::Dequeue(a) => read::dequeue(a),
        QueueCommand::Dump(a) => inspect::dump(a),
        QueueCommand::Stat(a) => inspect::stat(a),
        QueueCommand::Verify(a) => inspect::verify(a),
        QueueCommand::PeerRemove(a) => peers::remove(a),
        QueueCommand::Completions(a) => completions(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

fn completions(a: CompletionsArgs) -> exit::CmdResult {
    use clap::CommandFactory;
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "repliq", &mut buf);
    let mut out = output::Out::stdout();
    out.line(String::from_utf8_lossy(&buf).trim_end())?;
    out.flush()?;
    Ok(exit::OK)
}

/// Opens an existing queue for reading or writing; never creates one.
/// Recovery runs if no other process has the queue open.
fn open_existing(dir: &Path) -> Result<Store, exit::CliError> {
    Ok(Store::open(dir, &StoreOptions::open())?)
}

/// Opens an existing queue for inspection without running recovery, so that
/// `dump`, `stat` and `verify` show the files as they are and never repair
/// (zero) a damaged tail.
fn open_inspect(dir: &Path) -> Result<Store, exit::CliError> {
    Ok(Store::open(dir, &StoreOptions::open().skip_recovery())?)
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT/SIGTERM/SIGHUP handler; returns the flag it sets.
fn stop_flag() -> Result<&'static AtomicBool, exit::CliError> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .map_err(|e| exit::CliError::Other(format!("cannot install the signal handler: {e}")))?;
    Ok(&STOP)
}
