//! Registers the queues created on this node in the catalog, with this node
//! as their leader, so that every replica starts following them.

use std::sync::Arc;
use std::time::Duration;

use repliq::store::{Durability, Role, Store, StoreOptions};
use repliq_catalog::{Catalog, Command, QueueSettings, ReplicationMode, Response};

use crate::config::{ClusterSettings, Mode};
use crate::state::Shared;

/// Scans the persistence path every `every` and registers what is new.
pub async fn run(shared: Arc<Shared>, catalog: Arc<Catalog>, c: ClusterSettings, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = register_new(&shared, &catalog, &c).await {
            tracing::warn!("registering queues: {e}");
        }
        grow(&shared, &catalog, &c).await;
    }
}

/// The replicas of a queue created on `me`: `me`, then the next members in
/// name order, wrapping around, `factor` in all.
pub fn replicas_for(me: &str, members: &[String], factor: usize) -> Vec<String> {
    let mut names: Vec<&String> = members.iter().collect();
    names.sort();
    names.dedup();
    let start = names.iter().position(|n| n.as_str() == me).unwrap_or(0);
    let mut out = vec![me.to_string()];
    for k in 1..names.len() {
        if out.len() >= factor {
            break;
        }
        let n = names[(start + k) % names.len()];
        if n != me {
            out.push(n.clone());
        }
    }
    out
}

async fn register_new(
    shared: &Shared,
    catalog: &Catalog,
    c: &ClusterSettings,
) -> Result<(), String> {
    let cfg = &shared.cfg;
    let state = catalog.state();
    // Queues the configuration names: created here if nobody has them.
    for n in &cfg.queue_names {
        let dir = cfg.path.join(n);
        if !state.queues.contains_key(n) && !is_queue(&dir) {
            let s =
                Store::open(&dir, &cfg.create_options()).map_err(|e| format!("queue {n}: {e}"))?;
            drop(s);
        }
    }
    let rd = match std::fs::read_dir(&cfg.path) {
        Ok(rd) => rd,
        Err(e) => return Err(format!("cannot list {}: {e}", cfg.path.display())),
    };
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || state.queues.contains_key(&name) || !is_queue(&e.path()) {
            continue;
        }
        let store = match Store::open(e.path(), &StoreOptions::open()) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(queue = %name, "cannot open to register: {err}");
                continue;
            }
        };
        if store.role() == Role::Secondary {
            // A replica of a queue the catalog does not list (any more).
            continue;
        }
        // Static: the configured peers. Discovered: the members in the
        // catalog now (the factor is capped by how many there are; `grow`
        // adds replicas as more members join).
        let members = members(catalog, c);
        let factor = c.factor.min(members.len()).max(1);
        let qc = store.config();
        let settings = QueueSettings {
            capacity: qc.capacity,
            segment_size: qc.segment_size,
            durability: match qc.durability {
                Durability::None => repliq_catalog::Durability::None,
                Durability::Batch => repliq_catalog::Durability::Batch,
                Durability::Always => repliq_catalog::Durability::Sync,
            },
            mode: match cfg.mode {
                Mode::Sync => ReplicationMode::Sync,
                Mode::Async => ReplicationMode::Async,
            },
            min_insync: (factor / 2 + 1) as u32,
        };
        let start_pos = store
            .epoch_history()
            .ok()
            .and_then(|h| h.first().map(|e| e.start))
            .unwrap_or_else(|| store.first_position());
        let cmd = Command::CreateQueue {
            name: name.clone(),
            queue_id: store.queue_id(),
            replicas: replicas_for(&cfg.node_name, &members, factor),
            leader: Some(cfg.node_name.clone()),
            settings,
            start_pos,
        };
        match catalog.propose(cmd).await {
            Ok(Response::Queue(q)) => {
                tracing::info!(queue = %name, replicas = ?q.replicas, "queue registered in the catalog")
            }
            Ok(other) => tracing::warn!(queue = %name, "not registered: {other:?}"),
            Err(e) => return Err(format!("queue {name}: {e}")),
        }
    }
    Ok(())
}

/// The members a queue's replicas are chosen from: the static peers, or the
/// members the catalog holds now (discovered).
fn members(catalog: &Catalog, c: &ClusterSettings) -> Vec<String> {
    if c.members.is_empty() {
        catalog.state().members.keys().cloned().collect()
    } else {
        c.members.iter().map(|p| p.name.clone()).collect()
    }
}

/// Brings the queues this node leads up to the replication factor: a queue
/// registered while fewer members were known (discovery still finding them,
/// a member added later) gains the next members in name order, one per
/// pass. Each new replica copies the log from this node and joins the
/// in-sync set once caught up.
async fn grow(shared: &Shared, catalog: &Catalog, c: &ClusterSettings) {
    let me = &shared.cfg.node_name;
    let state = catalog.state();
    let members = members(catalog, c);
    let factor = c.factor.min(members.len()).max(1);
    for q in state.queues.values() {
        if q.leader.as_deref() != Some(me.as_str())
            || q.transfer_to.is_some()
            || q.replicas.len() >= factor
        {
            continue;
        }
        let Some(node) = replicas_for(me, &members, factor)
            .into_iter()
            .find(|n| !q.replicas.contains(n) && state.members.contains_key(n))
        else {
            continue;
        };
        let cmd = Command::AddReplica {
            queue: q.name.clone(),
            epoch: q.epoch,
            node: node.clone(),
        };
        match catalog.propose(cmd).await {
            Ok(Response::Queue(e)) => {
                tracing::info!(queue = %q.name, %node, replicas = ?e.replicas, factor, "replica added: the queue had fewer than replication.factor")
            }
            Ok(other) => tracing::debug!(queue = %q.name, %node, "replica not added: {other:?}"),
            Err(e) => tracing::debug!(queue = %q.name, %node, "replica not added: {e}"),
        }
    }
}

fn is_queue(dir: &std::path::Path) -> bool {
    dir.join(repliq::store::layout::CONTROL_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_start_at_the_creator_and_wrap_in_name_order() {
        let m: Vec<String> = ["c", "a", "b", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(replicas_for("c", &m, 3), ["c", "d", "a"]);
        assert_eq!(replicas_for("a", &m, 2), ["a", "b"]);
        assert_eq!(replicas_for("d", &m, 4), ["d", "a", "b", "c"]);
        assert_eq!(replicas_for("b", &m, 1), ["b"]);
    }
}
