//! HTTP: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use repliq::store::Store;
use tokio::sync::watch;

use super::config::Mode;
use super::run::{QueueState, Shared};

/// A secondary is ready when every followed queue is within this many
/// bytes of its primary's last known write position.
pub const READY_LAG_BYTES: u64 = 1 << 20;

type Labels = Vec<(String, String)>;

/// Serves HTTP on `l` until `stop` turns true.
pub async fn serve(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let r = axum::serve(l, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("http server failed: {e}");
    }
}

/// Replication lag of one followed queue, as seen by the secondary.
struct Lag {
    bytes: u64,
    seconds: f64,
    connected: bool,
}

fn follower_lag(q: &QueueState, s: Option<&Store>) -> Option<Lag> {
    let st = q.status.as_ref()?;
    let local = s.map_or(0, Store::tail_position);
    let bytes = st.primary_tail().saturating_sub(local);
    let now = Instant::now();
    let seconds = match q.caught_up_at.lock() {
        Ok(mut at) => {
            if bytes == 0 && st.connected() {
                *at = now;
                0.0
            } else {
                now.duration_since(*at).as_secs_f64()
            }
        }
        Err(_) => 0.0,
    };
    Some(Lag {
        bytes,
        seconds,
        connected: st.connected(),
    })
}

fn queues(shared: &Shared) -> Vec<(String, Arc<QueueState>)> {
    shared
        .queues
        .read()
        .map(|q| q.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.primary {
        return (StatusCode::OK, "ready: primary\n".to_string());
    }
    let mut not_ready = Vec::new();
    for (name, q) in queues(&shared) {
        let s = q.store();
        match follower_lag(&q, s.as_ref()) {
            Some(l) if l.connected && l.bytes <= READY_LAG_BYTES && s.is_some() => {}
            Some(l) if !l.connected => not_ready.push(format!("{name}: not connected")),
            Some(l) => not_ready.push(format!("{name}: {} bytes behind", l.bytes)),
            None => not_ready.push(format!("{name}: not followed")),
        }
    }
    if not_ready.is_empty() {
        (StatusCode::OK, "ready: secondary caught up\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Estimated messages in `bytes` of log, from the queue's average frame size.
fn estimate_messages(s: &Store, bytes: u64) -> u64 {
    let stats = s.stats();
    let span = stats.tail.saturating_sub(s.geometry().first_position(0));
    if bytes == 0 || stats.reserved == 0 || span == 0 {
        return 0;
    }
    let est = (u128::from(bytes) * u128::from(stats.reserved)).div_ceil(u128::from(span));
    u64::try_from(est).unwrap_or(u64::MAX).max(1)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let node = shared.cfg.node_name.clone();
    let mut reg = Registry::default();
    let role = Family::<Labels, Gauge>::default();
    let mode = Family::<Labels, Gauge>::default();
    let epoch = Family::<Labels, Gauge>::default();
    let rep_msgs = Family::<Labels, Counter>::default();
    let rep_bytes = Family::<Labels, Counter>::default();
    let lag_msgs = Family::<Labels, Gauge>::default();
    let lag_bytes = Family::<Labels, Gauge>::default();
    let lag_secs = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let peers = Family::<Labels, Gauge>::default();
    let depth = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    let tail = Family::<Labels, Gauge>::default();

    let r = if shared.primary {
        "primary"
    } else {
        "secondary"
    };
    role.get_or_create(&l(&[("node", &node), ("role", r)]))
        .set(1);
    let m = match shared.cfg.mode {
        Mode::Async => "async",
        Mode::Sync => "sync",
    };
    mode.get_or_create(&l(&[("node", &node), ("mode", m)]))
        .set(1);
    let mut connected = if shared.primary {
        shared.connected.load(Ordering::Acquire)
    } else {
        0
    };
    for (name, q) in queues(&shared) {
        let s = q.store();
        let ql = l(&[("node", &node), ("queue", &name)]);
        if let Some(s) = &s {
            let st = s.stats();
            epoch.get_or_create(&ql).set(i64::from(st.epoch));
            depth.get_or_create(&ql).set(clamp(st.depth));
            capacity.get_or_create(&ql).set(clamp(st.capacity));
            tail.get_or_create(&ql).set(clamp(st.tail));
        }
        if shared.primary {
            let Some(s) = &s else { continue };
            let st = s.stats();
            let base = s.geometry().first_position(0);
            // Bytes and (estimated) messages under the replicated watermark.
            let b = st.replicated.max(base) - base;
            rep_bytes.get_or_create(&ql).inc_by(b);
            rep_msgs
                .get_or_create(&ql)
                .inc_by(estimate_messages(s, b).min(st.reserved));
            for (peer, acked) in s.peer_positions() {
                let pl = l(&[("node", &node), ("queue", &name), ("peer", &peer)]);
                let lag = st.tail.saturating_sub(acked);
                lag_bytes.get_or_create(&pl).set(clamp(lag));
                lag_msgs
                    .get_or_create(&pl)
                    .set(clamp(estimate_messages(s, lag)));
                // Seconds are only known on the secondary; 0 when caught up.
                let _ = lag_secs.get_or_create(&pl);
            }
        } else if let Some(lag) = follower_lag(&q, s.as_ref()) {
            if lag.connected {
                connected += 1;
            }
            let primary = shared.cfg.primary.clone().unwrap_or_default();
            let pl = l(&[("node", &node), ("queue", &name), ("peer", &primary)]);
            lag_bytes.get_or_create(&pl).set(clamp(lag.bytes));
            lag_secs.get_or_create(&pl).set(lag.seconds);
            if let Some(s) = &s {
                lag_msgs
                    .get_or_create(&pl)
                    .set(clamp(estimate_messages(s, lag.bytes)));
                if let Ok(start) = q.start.lock() {
                    if let Some((t0, r0)) = *start {
                        let st = s.stats();
                        rep_bytes
                            .get_or_create(&ql)
                            .inc_by(st.tail.saturating_sub(t0));
                        rep_msgs
                            .get_or_create(&ql)
                            .inc_by(st.reserved.saturating_sub(r0));
                    }
                }
            }
        }
    }
    peers.get_or_create(&l(&[("node", &node)])).set(connected);

    reg.register(
        "repliq_role",
        "Role of this node (1 for the labelled role)",
        role,
    );
    reg.register(
        "repliq_replication_mode",
        "Replication mode (1 for the labelled mode)",
        mode,
    );
    reg.register("repliq_epoch", "Epoch of the queue", epoch);
    reg.register(
        "repliq_replicated_messages",
        "Messages replicated (primary: under the replicated watermark, estimated; secondary: received since start)",
        rep_msgs,
    );
    reg.register(
        "repliq_replicated_bytes",
        "Log bytes replicated (primary: under the replicated watermark; secondary: received since start)",
        rep_bytes,
    );
    reg.register(
        "repliq_replication_lag_messages",
        "Messages a peer is behind (estimated from the average frame size)",
        lag_msgs,
    );
    reg.register(
        "repliq_replication_lag_bytes",
        "Log bytes a peer is behind: primary tail minus the peer's acknowledged position",
        lag_bytes,
    );
    reg.register(
        "repliq_replication_lag_seconds",
        "Seconds since the secondary was last caught up (0 when caught up)",
        lag_secs,
    );
    reg.register(
        "repliq_connected_peers",
        "Replication sessions established (primary: secondaries; secondary: followed queues)",
        peers,
    );
    reg.register(
        "repliq_queue_depth",
        "Messages the default group has not dequeued",
        depth,
    );
    reg.register(
        "repliq_queue_capacity",
        "Queue capacity in messages",
        capacity,
    );
    reg.register(
        "repliq_queue_tail_position",
        "Write position of the queue",
        tail,
    );

    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &reg) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {e}\n"),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
