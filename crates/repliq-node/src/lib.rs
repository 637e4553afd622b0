//! A repliq node: runs one member of a replicated queue set (what
//! `repliq daemon` runs).
//!
//! The primary serves every queue under `queue.persistence.path` on one
//! replication port; secondaries follow each queue from the primary found
//! by discovery. An HTTP server answers `/healthz`, `/readyz`, `/metrics`,
//! the JSON API under `/api/v1/` and the dashboard at `/`.
//! See the "Daemon" section of `docs/operations.md`.
//!
//! Modules, from the bottom up:
//!
//! * [`config`]: the YAML configuration, its validation and defaults.
//! * `state`: the node's state (configuration, queues, readiness), shared
//!   by everything above; it depends on no module but [`config`].
//! * [`kubernetes`] and `discovery`: finding the primary's address
//!   (static, DNS, or Ready pods watched through the Kubernetes API).
//! * `history`: queue tails over time, for replication lag in seconds.
//! * `snapshot`: what the node observes (node, queues, links, cluster).
//! * `metrics` (Prometheus/OpenMetrics text), `api` (`/api/v1/*` JSON) and
//!   `dashboard` (static files compiled in): encodings of a snapshot.
//! * `http`: the HTTP server.
//! * `run`: the main loop: the HTTP server, the primary's replication
//!   listener or the secondaries' followers, graceful shutdown.
//!
//! Use: [`load`] the configuration, [`check_report`] for `--check`,
//! [`preflight`], then [`run`] (or [`run_blocking`] outside a tokio
//! runtime, or [`run_until`] with a stop signal of one's own).

#![warn(missing_docs)]

pub mod cluster;
pub mod config;
mod discovery;
mod http;
pub mod http_auth;
pub mod kubernetes;
mod peer_expiry;
pub mod refusals;
mod run;
mod state;
pub mod tls;
// observability: /metrics, /api/v1, the dashboard
mod api;
mod dashboard;
mod history;
mod metrics;
mod snapshot;

use std::path::Path;

pub use config::{Config, ConfigError};
pub use run::{run_until, wait_for_signal};

/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for start-up or runtime failures.
pub const EXIT_RUNTIME: i32 = 1;

/// Loads the configuration from the YAML file `path`, or without one from
/// the YAML text in the `REPLIQ_CONFIG` environment variable.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => {
            let source = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                source: source.clone(),
                key: None,
                reason: format!("cannot read: {e}"),
            })?;
            config::parse(&text, &source)
        }
        None => match std::env::var("REPLIQ_CONFIG") {
            Ok(text) => config::parse(&text, "REPLIQ_CONFIG"),
            Err(_) => Err(ConfigError {
                source: "repliq daemon".into(),
                key: None,
                reason: "no configuration: pass --config FILE or set REPLIQ_CONFIG".into(),
            }),
        },
    }
}

/// The effective settings as YAML, then the node's role as a comment: what
/// `repliq daemon --check` prints.
pub fn check_report(cfg: &Config) -> String {
    let role = if cfg.cluster.is_some() {
        "cluster member (per-queue leaders)"
    } else if cfg.is_primary() {
        "primary"
    } else {
        "secondary"
    };
    format!("{}# role: {role}\n", config::render(cfg))
}

/// Checks what can be checked before the node starts. The TLS files must
/// load (`tls.mode` `required` or `permissive`) and the certificate name
/// `node.name`. With Kubernetes
/// discovery, a secondary and a cluster member (no `replication.primary`)
/// need an API server (configured, or in-cluster from the pod's service
/// account).
pub fn preflight(cfg: &Config) -> Result<(), String> {
    if let Some(t) = tls::Tls::from_settings(&cfg.tls)? {
        t.check_own_name(&cfg.node_name)?;
    }
    if let config::Discovery::Kubernetes { api_server, .. } = &cfg.discovery {
        if !cfg.is_primary() {
            // The primary never talks to the API server; the others fail
            // early outside a Kubernetes cluster.
            kubernetes::client_config(api_server.as_deref())
                .map_err(|e| format!("kubernetes discovery: {e}"))?;
        }
    }
    Ok(())
}

/// Runs the node until SIGTERM or SIGINT, then flushes its queues. Needs a
/// tokio runtime with I/O and time enabled.
pub async fn run(cfg: Config) -> Result<(), String> {
    run_until(cfg, wait_for_signal()).await
}

/// [`run`] on a multi-threaded tokio runtime of its own, blocking until the
/// node stops.
pub fn run_blocking(cfg: Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(run(cfg))
}
