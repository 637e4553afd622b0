//! Finding the primary's replication address.
//!
//! `static`: the address of the peer named `replication.primary`.
//! `dns`: every address `dns_name` resolves to (A and AAAA), re-resolved
//! every `refresh_interval` seconds; a secondary tries them in turn, and
//! only the primary answers with a welcome.
//! `kubernetes`: the Ready pods matching `label_selector`, watched through
//! the API server (see [`crate::kubernetes`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Discovery};
use crate::kubernetes;

/// Candidate addresses of the primary, kept current.
pub type Candidates = watch::Receiver<Arc<Vec<String>>>;

/// Starts discovery for `cfg`; returns the current candidates.
pub fn start(cfg: &Config) -> Candidates {
    match &cfg.discovery {
        Discovery::Static { peers } => {
            let addrs: Vec<String> = peers
                .iter()
                .filter(|p| Some(&p.name) == cfg.primary.as_ref())
                .map(|p| p.address.clone())
                .collect();
            let (_tx, rx) = watch::channel(Arc::new(addrs));
            // The sender is dropped: the list never changes.
            rx
        }
        Discovery::Dns {
            dns_name,
            port,
            refresh_interval,
        } => {
            let (tx, rx) = watch::channel(Arc::new(Vec::new()));
            let host = format!("{dns_name}:{port}");
            let every = Duration::from_secs(*refresh_interval);
            tokio::spawn(async move {
                loop {
                    match tokio::net::lookup_host(host.as_str()).await {
                        Ok(it) => {
                            let mut v: Vec<String> = it.map(|a| a.to_string()).collect();
                            v.sort();
                            v.dedup();
                            if **tx.borrow() != v {
                                tracing::info!(name = %host, addresses = ?v, "discovery: resolved");
                                if tx.send(Arc::new(v)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => tracing::warn!(name = %host, "discovery: cannot resolve: {e}"),
                    }
                    tokio::time::sleep(every).await;
                }
            });
            rx
        }
        Discovery::Kubernetes {
            label_selector,
            namespace,
            port,
            api_server,
        } => match kubernetes::client(api_server.as_deref()) {
            Ok(client) => kubernetes::start_with_client(
                client,
                &kubernetes::namespace(namespace.as_deref()),
                label_selector,
                *port,
                cfg.primary.clone(),
            ),
            Err(e) => {
                // The client configuration was checked before the runtime
                // started ([`crate::preflight`]); what remains (TLS set-up) is
                // logged, and without a client no primary is found.
                tracing::error!("kubernetes discovery: {e}");
                watch::channel(Arc::new(Vec::new())).1
            }
        },
    }
}
