//! Exit codes, the CLI's error type, and the one-line error report.

use std::fmt;
use std::io;

use repliq::store::StoreError;

/// Success.
pub const OK: i32 = 0;
/// Any failure without a more specific code (existing queue, config mismatch, no free slot, ...).
pub const OTHER: i32 = 1;
/// Bad command line: unknown option, bad value, bad message id (clap's own code).
pub const USAGE: i32 = 2;
/// No queue at the path (missing directory, no control file, or not a directory).
pub const NOT_FOUND: i32 = 3;
/// The queue's files are damaged: CRC mismatch, bad header, bad magic or version.
pub const CORRUPT: i32 = 4;
/// An operating-system call failed (including a directory that cannot be written).
pub const IO: i32 = 5;
/// The queue is full: the default group holds `capacity` undequeued messages.
pub const FULL: i32 = 6;
/// A message is larger than a segment can hold.
pub const TOO_LARGE: i32 = 7;
/// `dequeue --wait` was interrupted or timed out before COUNT messages were taken.
pub const INCOMPLETE: i32 = 8;

/// Everything a command can fail with.
#[derive(Debug)]
pub enum CliError {
    /// From the storage layer; the exit code follows the variant.
    Store(StoreError),
    /// Reading an input file or standard input failed.
    Input {
        /// What was being read.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Writing standard output failed. A broken pipe ends the command quietly.
    Stdout(io::Error),
    /// Damage found by `verify`.
    Corrupt(String),
    /// `dequeue --wait` stopped early.
    Incomplete(String),
    /// Anything else.
    Other(String),
    /// A message with an explicit exit code.
    Coded {
        /// The message.
        msg: String,
        /// The exit code.
        code: i32,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn code(&self) -> i32 {
        match self {
            CliError::Store(e) => store_code(e),
            CliError::Input { .. } | CliError::Stdout(_) => IO,
            CliError::Corrupt(_) => CORRUPT,
            CliError::Incomplete(_) => INCOMPLETE,
            CliError::Other(_) => OTHER,
            CliError::Coded { code, .. } => *code,
        }
    }
}

/// Maps a storage error to an exit code.
pub fn store_code(e: &StoreError) -> i32 {
    match e {
        StoreError::NotFound(_) | StoreError::NotADirectory(_) => NOT_FOUND,
        StoreError::Corrupt { .. }
        | StoreError::BadMagic { .. }
        | StoreError::BadVersion { .. } => CORRUPT,
        StoreError::Io { .. } | StoreError::NotWritable { .. } => IO,
        StoreError::Full { .. } => FULL,
        StoreError::TooLarge { .. } => TOO_LARGE,
        StoreError::InvalidConfig(_)
        | StoreError::InvalidBatch(_)
        | StoreError::InvalidId { .. }
        | StoreError::NotRetained { .. } => USAGE,
        _ => OTHER,
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Store(e) => write!(f, "{e}"),
            CliError::Input { what, source } => write!(f, "{what}: {source}"),
            CliError::Stdout(e) => write!(f, "writing standard output: {e}"),
            CliError::Corrupt(m) | CliError::Incomplete(m) | CliError::Other(m) => f.write_str(m),
            CliError::Coded { msg, .. } => f.write_str(msg),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Store(e)
    }
}

/// Result of a command: the exit code on success (0, or a warning code).
pub type CmdResult = Result<i32, CliError>;

/// Prints `e` on one line of standard error and returns its exit code.
/// A broken pipe on standard output is not reported: the reader went away.
pub fn report(e: &CliError) -> i32 {
    if let CliError::Stdout(io) = e {
        if io.kind() == io::ErrorKind::BrokenPipe {
            return OK;
        }
    }
    eprintln!("repliq: error: {}", one_line(&e.to_string()));
    e.code()
}

/// Joins the lines of a message with spaces, so an error is one line.
pub fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses the command line; on error prints one line `repliq: error: ...` and
/// exits with [`USAGE`]. `--help` and `--version` print as usual.
pub fn parse_cli<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            use clap::error::ErrorKind::*;
            match e.kind() {
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                _ => {
                    // clap renders: "error: <what>\n\n<details>\n\nUsage: ...\n\nFor more information, try '--help'."
                    let text = e.to_string();
                    let body: Vec<&str> = text
                        .lines()
                        .take_while(|l| {
                            !l.starts_with("Usage:") && !l.starts_with("For more information")
                        })
                        .collect();
                    let msg = one_line(&body.join("\n"));
                    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
                    eprintln!("repliq: error: {msg} (see 'repliq --help')");
                    std::process::exit(USAGE);
                }
            }
        }
    }
}

/// Logs of the library (recovery reports, stalled writers) go to standard
/// error; the level comes from `REPLIQ_LOG` (default `warn`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("REPLIQ_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
