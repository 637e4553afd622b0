//! `/api/v1/*`: read-only JSON for the built-in dashboard and scripts.
//!
//! * `/api/v1/node`: this node (name, role, mode, epoch, readiness, disk).
//! * `/api/v1/cluster`: this node and every peer it knows of, with their
//!   role, health and link state.
//! * `/api/v1/queues`: per queue, counters (appended, dequeued per group),
//!   depth against capacity, disk use, latency percentiles and each
//!   replication link's lag.
//!
//! Counters are cumulative; the dashboard derives rates from two readings
//! and their `time_unix`. Payloads are never exposed. The format is
//! described in the "HTTP endpoints" section of `docs/operations.md`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::snapshot::{DiskSnap, Observer, QueueSnap};

/// The answer of `/api/v1/queues`.
#[derive(Serialize)]
struct Queues {
    node: String,
    role: &'static str,
    time_unix: f64,
    disk: Option<DiskSnap>,
    queues: Vec<QueueSnap>,
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /api/v1/node`.
pub async fn node(State(obs): State<Arc<Observer>>) -> Response {
    json(&obs.snapshot_async().await.node)
}

/// `GET /api/v1/cluster`.
pub async fn cluster(State(obs): State<Arc<Observer>>) -> Response {
    json(&obs.cluster_async().await)
}

/// `GET /api/v1/queues`.
pub async fn queues(State(obs): State<Arc<Observer>>) -> Response {
    let s = obs.snapshot_async().await;
    json(&Queues {
        node: s.node.name,
        role: s.node.role,
        time_unix: s.node.time_unix,
        disk: s.node.disk,
        queues: s.queues,
    })
}

/// Query of the cluster operations.
#[derive(serde::Deserialize)]
pub struct MoveQuery {
    /// The queue.
    queue: String,
    /// The node to lead it.
    to: String,
    /// `promote` only: allow a replica outside the in-sync set, whose log may
    /// lack acknowledged records.
    #[serde(default)]
    unclean: bool,
}

fn refuse(status: StatusCode, why: String) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// `POST /api/v1/cluster/transfer?queue=Q&to=NODE`: a planned leader change.
/// The leader pauses appends, waits for `NODE` to hold its whole log, then
/// elects it (the epoch goes up); nothing is lost.
pub async fn transfer(
    State(obs): State<Arc<Observer>>,
    axum::extract::Query(m): axum::extract::Query<MoveQuery>,
) -> Response {
    let (cat, e) = match cluster_queue(&obs, &m.queue) {
        Ok(x) => x,
        Err((status, why)) => return refuse(status, why),
    };
    let cmd = repliq_catalog::Command::BeginTransfer {
        queue: m.queue.clone(),
        to: m.to.clone(),
        epoch: e.epoch,
    };
    propose(cat, cmd, &format!("transfer of {} to {}", m.queue, m.to)).await
}

/// `POST /api/v1/cluster/promote?queue=Q&to=NODE&unclean=true`: makes `NODE`
/// the leader now, whatever its log holds: records only the old leader has
/// are cut into quarantine when it returns. Refused without `unclean=true`
/// (a planned change is `transfer`). Logged at WARN.
pub async fn promote(
    State(obs): State<Arc<Observer>>,
    axum::extract::Query(m): axum::extract::Query<MoveQuery>,
) -> Response {
    if !m.unclean {
        return refuse(
            StatusCode::BAD_REQUEST,
            "promote needs unclean=true (it may lose acknowledged records); use transfer for a planned change".into(),
        );
    }
    let (cat, e) = match cluster_queue(&obs, &m.queue) {
        Ok(x) => x,
        Err((status, why)) => return refuse(status, why),
    };
    let first_id = cat
        .state()
        .progress
        .get(&m.queue)
        .and_then(|p| p.get(&m.to))
        .map_or(0, |p| p.tail);
    tracing::warn!(queue = %m.queue, to = %m.to, epoch = e.epoch, "operator: unclean promotion");
    let cmd = repliq_catalog::Command::ElectLeader {
        queue: m.queue.clone(),
        new_leader: m.to.clone(),
        expected_epoch: e.epoch,
        first_id,
        unclean: true,
    };
    propose(cat, cmd, &format!("promotion of {} on {}", m.queue, m.to)).await
}

/// The catalog and its entry for `queue`, or the answer that refuses.
fn cluster_queue<'a>(
    obs: &'a Observer,
    queue: &str,
) -> Result<(&'a repliq_catalog::Catalog, repliq_catalog::QueueEntry), (StatusCode, String)> {
    let Some(cat) = obs.shared.catalog() else {
        return Err((
            StatusCode::CONFLICT,
            "this node is not in cluster mode".into(),
        ));
    };
    match cat.state().queues.get(queue).cloned() {
        Some(e) => Ok((cat, e)),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("no queue {queue:?} in the catalog"),
        )),
    }
}

async fn propose(
    cat: &repliq_catalog::Catalog,
    cmd: repliq_catalog::Command,
    what: &str,
) -> Response {
    match cat.propose(cmd).await {
        Ok(repliq_catalog::Response::Queue(q)) => json(&serde_json::json!({
            "queue": q.name,
            "leader": q.leader,
            "epoch": q.epoch,
            "transfer_to": q.transfer_to,
        })),
        Ok(repliq_catalog::Response::Rejected(r)) => {
            refuse(StatusCode::CONFLICT, format!("{what} refused: {r}"))
        }
        Ok(other) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}: unexpected {other:?}"),
        ),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: the catalog did not answer: {e}"),
        ),
    }
}
