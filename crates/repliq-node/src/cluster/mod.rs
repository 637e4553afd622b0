//! Cluster mode: the catalog (Raft, `repliq-catalog`) among the members,
//! per-queue leaders with epochs, leases and automatic failover.
//!
//! A node runs cluster mode when its configuration names no
//! `replication.primary` and lists static peers besides itself, or uses `dns`
//! or `kubernetes` discovery. The members are the static peers, or what
//! discovery finds as the node runs ([`crate::discovery::members`]): a fresh
//! cluster is initialized only once the expected number of members is found.
//! Then:
//!
//! * the catalog shares the replication port: connections that start with
//!   `b"RQCL"` are the catalog's, the rest replication sessions
//!   ([`crate::run`]);
//! * [`registrar`] registers every queue created on this node (by an
//!   application, `repliq create` or `queue.names`) in the catalog, with
//!   this node as its leader and `replication.factor` replicas;
//! * [`driver`] runs one task per queue this node replicates: it leads the
//!   queue (role primary, the catalog's epoch stamped into new records) or
//!   follows the leader the catalog names, and switches when that changes;
//! * [`report`] sends this node's progress on every queue to the catalog
//!   every heartbeat. A report the catalog commits renews the node's
//!   **lease**: a leader whose last committed report was sent more than half
//!   the failover timeout ago stops taking appends before another node can
//!   be elected. The lease's deadline is also written into each led queue's
//!   control file, so local writers of every process stop at it even while
//!   the daemon is stopped or dead. After a lapse, the lease counts only
//!   once this node's copy of the catalog has applied the report that
//!   renewed it (so it shows any election made in the gap);
//! * [`failover`] runs on the catalog's leader: when a queue leader has not
//!   reported for the failover timeout, it waits for fresh reports from
//!   enough replicas to be sure to see every acknowledged record, then
//!   elects the one with the newest log (highest last epoch, then tail),
//!   fenced by the catalog's compare-and-set on the epoch.
//!
//! See "Cluster" in `docs/operations.md` for what each failure does.

pub mod driver;
pub mod failover;
pub mod in_sync;
pub mod lease;
pub mod registrar;
pub mod report;
#[cfg(test)]
mod test_fixtures;

use std::sync::Arc;
use std::time::Duration;

use repliq_catalog::{Catalog, CatalogConfig};

use crate::config::ClusterSettings;
use crate::state::Shared;

/// Directory of the catalog's state under `queue.persistence.path` (not a
/// queue: it has no control file).
pub const CATALOG_DIR: &str = ".repliq-catalog";

/// The running cluster side of a node.
pub struct Cluster {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// This node's lease on the queues it leads.
    pub lease: Arc<lease::Lease>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How the catalog dials its peers: mutual TLS when configured.
fn dialer(shared: &Shared) -> repliq_catalog::network::Dialer {
    match &shared.tls {
        Some(t) => Arc::new(crate::tls::CatalogDialer(t.clone())),
        None => repliq_catalog::network::tcp_dialer(),
    }
}

impl Cluster {
    /// Starts the catalog (served through the replication port by the
    /// caller) and the cluster tasks.
    pub async fn start(shared: Arc<Shared>, c: &ClusterSettings) -> Result<Cluster, String> {
        let cfg = &shared.cfg;
        let peers = c
            .members
            .iter()
            .map(|p| (p.name.clone(), p.address.clone()))
            .collect();
        let (advertise, discovered) = if c.members.is_empty() {
            let (addr, rx) = crate::discovery::members(cfg, dialer(&shared)).await?;
            (addr, Some(rx))
        } else {
            (c.advertise.clone(), None)
        };
        let mut cc = CatalogConfig::new(
            cfg.node_name.clone(),
            advertise,
            cfg.path.join(CATALOG_DIR),
            peers,
        );
        cc.discovered = discovered;
        cc.own_listener = false;
        cc.dialer = dialer(&shared);
        // The catalog must elect well within the failover timeout.
        let e = (c.failover_timeout_ms / 6).clamp(150, 1000);
        cc.election_timeout_ms = (e, 2 * e);
        cc.heartbeat_ms = (e / 3).max(50);
        let catalog = Arc::new(
            Catalog::start(cc)
                .await
                .map_err(|e| format!("cannot start the catalog: {e}"))?,
        );
        let failover = Duration::from_millis(c.failover_timeout_ms);
        let lease = Arc::new(lease::Lease::new(failover / 2));
        let every = (failover / 6).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let tasks = vec![
            tokio::spawn(registrar::run(
                shared.clone(),
                catalog.clone(),
                c.clone(),
                every,
            )),
            tokio::spawn(driver::run_all(
                shared.clone(),
                catalog.clone(),
                lease.clone(),
            )),
            tokio::spawn(report::run(
                shared.clone(),
                catalog.clone(),
                lease.clone(),
                every,
            )),
            tokio::spawn(failover::run(catalog.clone(), failover, every)),
        ];
        Ok(Cluster {
            catalog,
            lease,
            tasks,
        })
    }

    /// Stops the cluster tasks (the drivers' followers end with them).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
