//! HTTP: `/healthz`, `/readyz`, `/metrics` (Prometheus text format), the
//! JSON API under `/api/v1/` and the built-in dashboard at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::run::Shared;
use super::snapshot::{readiness, Observer};
use super::{api, dashboard, metrics};

/// Serves HTTP on `l` until `stop` turns true.
pub async fn serve(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let obs = Observer::new(shared);
    let sampler = tokio::spawn(obs.clone().sample(stop.clone()));
    let app = Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{*file}", get(dashboard::asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/node", get(api::node))
        .route("/api/v1/cluster", get(api::cluster))
        .route("/api/v1/queues", get(api::queues))
        .with_state(obs);
    let r = axum::serve(l, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("http server failed: {e}");
    }
    sampler.abort();
}

async fn readyz(State(obs): State<Arc<Observer>>) -> impl IntoResponse {
    if obs.shared.primary {
        return (StatusCode::OK, "ready: primary\n".to_string());
    }
    let (ready, why) = readiness(&obs.shared);
    if ready {
        (StatusCode::OK, "ready: secondary caught up\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
    }
}

async fn metrics(State(obs): State<Arc<Observer>>) -> impl IntoResponse {
    match metrics::encode(&obs.snapshot()) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}
