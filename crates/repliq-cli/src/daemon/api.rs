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

use super::snapshot::{DiskSnap, Observer, QueueSnap};

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
    json(&obs.snapshot().node)
}

/// `GET /api/v1/cluster`.
pub async fn cluster(State(obs): State<Arc<Observer>>) -> Response {
    json(&obs.cluster())
}

/// `GET /api/v1/queues`.
pub async fn queues(State(obs): State<Arc<Observer>>) -> Response {
    let s = obs.snapshot();
    json(&Queues {
        node: s.node.name,
        role: s.node.role,
        time_unix: s.node.time_unix,
        disk: s.node.disk,
        queues: s.queues,
    })
}
