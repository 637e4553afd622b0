//! HTTP: `/healthz`, `/readyz`, `/metrics` (Prometheus text format), the
//! JSON API under `/api/v1/` and the built-in dashboard at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::snapshot::Observer;
use crate::state::Shared;
use crate::{api, dashboard, metrics};

/// Serves HTTP on `l` until `stop` turns true.
pub async fn serve(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let obs_cfg = shared.cfg.clone();
    let token = match &obs_cfg.http_auth_token_file {
        Some(p) => match crate::http_auth::Token::load(p) {
            Ok(t) => Some(t),
            Err(e) => {
                // Checked when the configuration was read; gone since.
                tracing::error!("http.auth_token_file: {e}; the HTTP server does not start");
                return;
            }
        },
        None => None,
    };
    let obs = Observer::new(shared);
    let sampler = tokio::spawn(obs.clone().sample(stop.clone()));
    let reloader = token.clone().map(|t| tokio::spawn(t.reload()));
    let mut app = Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{*file}", get(dashboard::asset))
        .route("/metrics", get(metrics))
        .route("/api/v1/node", get(api::node))
        .route("/api/v1/cluster", get(api::cluster))
        .route(
            "/api/v1/cluster/transfer",
            axum::routing::post(api::transfer),
        )
        .route("/api/v1/cluster/promote", axum::routing::post(api::promote))
        .route("/api/v1/queues", get(api::queues));
    if let Some(t) = token {
        app = app.route_layer(axum::middleware::from_fn_with_state(
            t,
            crate::http_auth::require,
        ));
    }
    // The probes stay open: the kubelet and Docker's health check send no token.
    let app = app
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(obs);
    accept_loop(l, app, &obs_cfg, &mut stop).await;
    sampler.abort();
    if let Some(r) = reloader {
        r.abort();
    }
}

/// Accepts HTTP/1.1 connections until `stop`: at most
/// `http.max_connections` at once (one more is closed as it arrives), each
/// with `http.header_timeout_ms` to send a request's headers, so idle or
/// slow clients cannot pile up.
async fn accept_loop(
    l: tokio::net::TcpListener,
    app: Router,
    cfg: &crate::config::Config,
    stop: &mut watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.http_max_connections));
    let header_timeout = std::time::Duration::from_millis(cfg.http_header_timeout_ms);
    let mut refused: u64 = 0;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused == 1 || refused % 1000 == 0 {
                tracing::warn!(%peer, refused, max = cfg.http_max_connections, "http.max_connections reached: connection closed");
            }
            drop(stream);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(stream);
            let r = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, svc)
                .await;
            if let Err(e) = r {
                tracing::debug!(%peer, "http connection ended: {e}");
            }
        });
    }
    // In-flight requests get a moment to finish; then they are dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn readyz(State(obs): State<Arc<Observer>>) -> impl IntoResponse {
    if obs.shared.primary {
        return (StatusCode::OK, "ready: primary\n".to_string());
    }
    let (ready, why) = obs.shared.readiness();
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
    match metrics::encode(&obs.snapshot_async().await) {
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
