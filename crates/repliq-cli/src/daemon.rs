//! `repliq daemon`: runs a node of a replicated queue set. The node itself
//! is the `repliq-node` crate; this is its command line.

use std::path::PathBuf;

use repliq_node::{EXIT_CONFIG, EXIT_RUNTIME};

/// Arguments of `repliq daemon`.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// The YAML configuration file. Without it, the YAML text in the
    /// REPLIQ_CONFIG environment variable is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    pub check: bool,
}

/// Runs `repliq daemon` and returns the exit code.
pub fn run(a: DaemonArgs) -> i32 {
    let cfg = match repliq_node::load(a.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("repliq: error: configuration: {e}");
            return EXIT_CONFIG;
        }
    };
    if a.check {
        print!("{}", repliq_node::check_report(&cfg));
        return 0;
    }
    let r = repliq_node::preflight(&cfg).and_then(|()| repliq_node::run_blocking(cfg));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("repliq: error: {e}");
            EXIT_RUNTIME
        }
    }
}
