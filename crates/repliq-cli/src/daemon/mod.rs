//! `repliq daemon`: runs a node of a replicated queue set.
//!
//! The primary serves every queue under `queue.persistence.path` on one
//! replication port; secondaries follow each queue from the primary found
//! by discovery. An HTTP server answers `/healthz`, `/readyz`, `/metrics`,
//! the JSON API under `/api/v1/` and the dashboard at `/`.
//! See the "Daemon" section of `docs/operations.md`.

pub mod config;
mod discovery;
mod http;
mod kubernetes;
mod run;
// observability: /metrics, /api/v1, the dashboard
mod api;
mod dashboard;
mod history;
mod metrics;
mod snapshot;

use std::path::PathBuf;

/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for start-up or runtime failures.
pub const EXIT_RUNTIME: i32 = 1;

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

/// Loads the configuration from `--config` or `REPLIQ_CONFIG`.
fn load(a: &DaemonArgs) -> Result<config::Config, config::ConfigError> {
    match &a.config {
        Some(p) => {
            let source = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| config::ConfigError {
                source: source.clone(),
                key: None,
                reason: format!("cannot read: {e}"),
            })?;
            config::parse(&text, &source)
        }
        None => match std::env::var("REPLIQ_CONFIG") {
            Ok(text) => config::parse(&text, "REPLIQ_CONFIG"),
            Err(_) => Err(config::ConfigError {
                source: "repliq daemon".into(),
                key: None,
                reason: "no configuration: pass --config FILE or set REPLIQ_CONFIG".into(),
            }),
        },
    }
}

/// Runs `repliq daemon` and returns the exit code.
pub fn run(a: DaemonArgs) -> i32 {
    let cfg = match load(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("repliq: error: configuration: {e}");
            return EXIT_CONFIG;
        }
    };
    if a.check {
        print!("{}", config::render(&cfg));
        println!(
            "# role: {}",
            if cfg.is_primary() {
                "primary"
            } else {
                "secondary"
            }
        );
        return 0;
    }
    if let config::Discovery::Kubernetes { api_server, .. } = &cfg.discovery {
        if cfg.primary.is_none() {
            tracing::warn!(
                node = %cfg.node_name,
                "replication.primary is not set: this node serves its own queues alone \
                 and nothing is replicated until replication.primary names the primary's node"
            );
        } else if !cfg.is_primary() {
            // Only secondaries talk to the API server; fail early outside a cluster.
            if let Err(e) = kubernetes::client_config(api_server.as_deref()) {
                eprintln!("repliq: error: kubernetes discovery: {e}");
                return EXIT_RUNTIME;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("repliq: error: cannot start the runtime: {e}");
            return EXIT_RUNTIME;
        }
    };
    match rt.block_on(run::run(cfg)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("repliq: error: {e}");
            EXIT_RUNTIME
        }
    }
}
