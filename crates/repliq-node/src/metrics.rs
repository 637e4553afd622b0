//! `/metrics`: a [`Snapshot`] in the Prometheus/OpenMetrics text format.
//!
//! Names follow Prometheus conventions: the `repliq_` prefix, base units
//! (seconds, bytes) in the name, `_total` on counters. Labels are bounded:
//! `node`, `queue`, `peer` (a node name), `group` (a consumer group), and
//! the enumerations `role`, `mode`, `version`, `commit`. Never a message id
//! or a payload. The full list is in the "Metrics" section of
//! `docs/operations.md`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::snapshot::{LatencySnap, LinkSnap as L, NodeSnap, QueueSnap as Q, Snapshot};

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// One sample value.
#[derive(Debug, Clone)]
enum Value {
    Gauge(f64),
    GaugeInt(i64),
    Counter(u64),
    Histogram(LatencySnap),
    Info,
}

/// A metric family: name (without the `_total` or `_info` suffix the
/// encoder adds), help, type and series.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

/// Every family of one scrape.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(&mut self, name: &'static str, kind: MetricType, help: &'static str) -> &mut Family {
        self.0.push(Family {
            name,
            help,
            kind,
            series: Vec::new(),
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }
}

impl Family {
    fn push(&mut self, labels: Labels, v: Value) -> &mut Self {
        self.series.push((labels, v));
        self
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            if f.series.is_empty() {
                continue;
            }
            let mut me = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, v) in &f.series {
                if let Value::Info = v {
                    me.encode_info(labels)?;
                    continue;
                }
                let mut s = me.encode_family(labels)?;
                match v {
                    Value::Gauge(x) => s.encode_gauge(x)?,
                    Value::GaugeInt(x) => s.encode_gauge(x)?,
                    Value::Counter(x) => s.encode_counter::<NoLabelSet, u64, f64>(x, None)?,
                    Value::Histogram(h) => {
                        let buckets: Vec<(f64, u64)> = h
                            .buckets
                            .iter()
                            .map(|&(b, n)| (b.unwrap_or(f64::MAX), n))
                            .collect();
                        // The count from the buckets themselves, so that it
                        // always equals the +Inf bucket (the shared counters
                        // are read one by one).
                        let count = buckets.iter().map(|b| b.1).sum();
                        s.encode_histogram::<NoLabelSet>(h.sum_seconds, count, &buckets, None)?
                    }
                    Value::Info => {}
                }
            }
        }
        Ok(())
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn queue_labels(n: &NodeSnap, q: &str) -> Labels {
    vec![("node", n.name.clone()), ("queue", q.to_string())]
}

/// Adds a family with one series per open queue.
fn per_queue(
    fs: &mut Families,
    snap: &Snapshot,
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    value: fn(&Q) -> Value,
) {
    let f = fs.add(name, kind, help);
    for q in snap.queues.iter().filter(|q| q.open) {
        f.push(queue_labels(&snap.node, &q.name), value(q));
    }
}

/// Adds a family with one series per replication link.
fn per_link(
    fs: &mut Families,
    snap: &Snapshot,
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    value: fn(&L) -> Value,
) {
    let f = fs.add(name, kind, help);
    for q in &snap.queues {
        for l in &q.links {
            let mut lb = queue_labels(&snap.node, &q.name);
            lb.push(("peer", l.peer.clone()));
            f.push(lb, value(l));
        }
    }
}

/// The families of `snap`.
fn families(snap: &Snapshot) -> Families {
    use MetricType::{Counter as C, Gauge as G, Histogram as H, Info as I};
    let n = &snap.node;
    let node = || vec![("node", n.name.clone())];
    let mut fs = Families::default();

    // ------------------------------------------------------------ node
    fs.add(
        "repliq_build",
        I,
        "Build of the daemon: version and git commit",
    )
    .push(
        vec![
            ("node", n.name.clone()),
            ("version", n.version.to_string()),
            ("commit", n.commit.unwrap_or("unknown").to_string()),
        ],
        Value::Info,
    );
    fs.add(
        "repliq_role",
        G,
        "Role of this node (1 for the labelled role)",
    )
    .push(
        vec![("node", n.name.clone()), ("role", n.role.to_string())],
        Value::GaugeInt(1),
    );
    fs.add(
        "repliq_replication_mode",
        G,
        "Replication mode (1 for the labelled mode)",
    )
    .push(
        vec![("node", n.name.clone()), ("mode", n.mode.to_string())],
        Value::GaugeInt(1),
    );
    fs.add(
        "repliq_node_epoch",
        G,
        "Highest epoch of the queues on this node",
    )
    .push(node(), Value::GaugeInt(i64::from(n.epoch)));
    fs.add(
        "repliq_ready",
        G,
        "1 when the node is ready (as /readyz answers), else 0",
    )
    .push(node(), Value::GaugeInt(i64::from(n.ready)));
    fs.add(
        "repliq_start_time_seconds",
        G,
        "When the daemon started, in seconds since the Unix epoch",
    )
    .push(node(), Value::Gauge(n.start_time_unix));
    fs.add(
        "repliq_connected_peers",
        G,
        "Replication sessions established (primary: secondaries; secondary: followed queues)",
    )
    .push(node(), Value::GaugeInt(clamp(n.connected_peers)));
    let refused = fs.add(
        "repliq_connections_refused",
        C,
        "Connections the replication port closed before any session, by reason",
    );
    for (reason, count) in &n.refused_connections {
        refused.push(
            vec![("node", n.name.clone()), ("reason", reason.clone())],
            Value::Counter(*count),
        );
    }
    if let Some(d) = &n.disk {
        fs.add(
            "repliq_disk_free_bytes",
            G,
            "Bytes available on the file system of queue.persistence.path",
        )
        .push(node(), Value::GaugeInt(clamp(d.free_bytes)));
        fs.add(
            "repliq_disk_size_bytes",
            G,
            "Size of the file system of queue.persistence.path in bytes",
        )
        .push(node(), Value::GaugeInt(clamp(d.total_bytes)));
    }

    // ------------------------------------------------------------ queues
    let ql = |q: &str| queue_labels(n, q);
    per_queue(
        &mut fs,
        snap,
        "repliq_epoch",
        G,
        "Epoch of the queue",
        |q: &Q| Value::GaugeInt(i64::from(q.epoch)),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_appended_messages",
        C,
        "Messages appended to the queue since it was created (on a secondary: replicated into it)",
        |q: &Q| Value::Counter(q.appended_messages),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_appended_bytes",
        C,
        "Log bytes appended since the queue was created (frame headers and padding included)",
        |q: &Q| Value::Counter(q.appended_bytes),
    );
    {
        let f = fs.add(
            "repliq_dequeued_messages",
            C,
            "Messages dequeued by each consumer group",
        );
        for q in snap.queues.iter().filter(|q| q.open) {
            for g in &q.groups {
                let mut l = ql(&q.name);
                l.push(("group", g.name.clone()));
                f.push(l, Value::Counter(g.dequeued_messages));
            }
        }
    }
    per_queue(
        &mut fs,
        snap,
        "repliq_queue_depth",
        G,
        "Messages the default group has not dequeued",
        |q: &Q| Value::GaugeInt(clamp(q.depth)),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_queue_capacity",
        G,
        "Queue capacity in messages",
        |q: &Q| Value::GaugeInt(clamp(q.capacity)),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_queue_tail_position",
        G,
        "Write position of the queue",
        |q: &Q| Value::GaugeInt(clamp(q.tail)),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_queue_replicated_position",
        G,
        "Replicated watermark of the queue",
        |q: &Q| Value::GaugeInt(clamp(q.replicated_position)),
    );
    {
        let f = fs.add(
            "repliq_queue_segments",
            G,
            "Segment files of the queue on disk",
        );
        for q in &snap.queues {
            f.push(ql(&q.name), Value::GaugeInt(clamp(q.segments)));
        }
        let f = fs.add(
            "repliq_queue_disk_bytes",
            G,
            "Bytes the queue's files occupy on disk (allocated blocks)",
        );
        for q in &snap.queues {
            f.push(ql(&q.name), Value::GaugeInt(clamp(q.disk_bytes)));
        }
    }
    per_queue(
        &mut fs,
        snap,
        "repliq_full_rejections",
        C,
        "Appends refused because the queue held capacity undequeued messages",
        |q: &Q| Value::Counter(q.full_rejections),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_recoveries",
        C,
        "Recoveries run when the queue was opened after a crash",
        |q: &Q| Value::Counter(q.recoveries),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_unblocked_frames",
        C,
        "Frames left incomplete by dead writers and turned into padding",
        |q: &Q| Value::Counter(q.unblocked),
    );
    if let Some(c) = &snap.catalog {
        fs.add("repliq_catalog_term", G, "Raft term of the cluster catalog")
            .push(node(), Value::GaugeInt(clamp(c.term)));
        fs.add(
            "repliq_catalog_commit_index",
            G,
            "Last catalog log index applied on this node",
        )
        .push(node(), Value::GaugeInt(clamp(c.commit_index.unwrap_or(0))));
        let f = fs.add(
            "repliq_catalog_leader",
            G,
            "The catalog's Raft leader as this node sees it (1 for the labelled node)",
        );
        if let Some(l) = &c.leader {
            f.push(
                vec![("node", n.name.clone()), ("leader", l.clone())],
                Value::GaugeInt(1),
            );
        }
        let f = fs.add(
            "repliq_failovers",
            C,
            "Leader changes of the queue recorded in the catalog (epochs after the first)",
        );
        for q in &c.queues {
            f.push(
                queue_labels(n, &q.name),
                Value::Counter(q.epoch_history.len().saturating_sub(1) as u64),
            );
        }
        let f = fs.add(
            "repliq_in_sync_replicas",
            G,
            "Replicas of the queue in its in-sync set (the leader included)",
        );
        for q in &c.queues {
            let n_in = q.replicas.iter().filter(|r| r.in_sync).count();
            f.push(queue_labels(n, &q.name), Value::GaugeInt(n_in as i64));
        }
    }
    per_queue(
        &mut fs,
        snap,
        "repliq_truncated_records",
        C,
        "Records a truncation to the leader's history moved to a quarantine file",
        |q: &Q| Value::Counter(q.truncated_records),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_queue_leader_epoch",
        G,
        "Epoch of the queue's newest record on this node",
        |q: &Q| Value::GaugeInt(i64::from(q.epoch)),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_enqueue_latency_seconds",
        H,
        "Enqueue latency, one append in 64 per thread sampled by every process appending",
        |q: &Q| Value::Histogram(q.enqueue_latency.clone()),
    );
    per_queue(
        &mut fs,
        snap,
        "repliq_sync_enqueue_wait_seconds",
        H,
        "Time synchronous enqueues waited for acknowledgements from secondaries",
        |q: &Q| Value::Histogram(q.sync_wait.clone()),
    );
    per_queue(&mut fs, snap, "repliq_replicated_messages",
        C,
        "Messages replicated (primary: under the replicated watermark, estimated; secondary: received since start)",
        |q: &Q| Value::Counter(q.replicated_messages)
    );
    per_queue(&mut fs, snap, "repliq_replicated_bytes",
        C,
        "Log bytes replicated (primary: under the replicated watermark; secondary: received since start)",
        |q: &Q| Value::Counter(q.replicated_bytes)
    );

    // ------------------------------------------------------------ links
    per_link(
        &mut fs,
        snap,
        "repliq_replication_lag_messages",
        G,
        "Messages a secondary is behind its primary (estimated from the average frame size)",
        |l: &L| Value::GaugeInt(clamp(l.lag_messages)),
    );
    per_link(
        &mut fs,
        snap,
        "repliq_replication_lag_bytes",
        G,
        "Log bytes a secondary is behind: primary tail minus the secondary's position",
        |l: &L| Value::GaugeInt(clamp(l.lag_bytes)),
    );
    per_link(
        &mut fs,
        snap,
        "repliq_replication_lag_seconds",
        G,
        "Age of the oldest message the secondary does not have yet (0 when caught up)",
        |l: &L| Value::Gauge(l.lag_seconds),
    );
    per_link(
        &mut fs,
        snap,
        "repliq_replication_acked_position",
        G,
        "Position the secondary has acknowledged (on a secondary: its write position)",
        |l: &L| Value::GaugeInt(clamp(l.acked_position)),
    );
    per_link(
        &mut fs,
        snap,
        "repliq_replication_reconnects",
        C,
        "Replication sessions after the first since the daemon started",
        |l: &L| Value::Counter(l.reconnects),
    );
    per_link(
        &mut fs,
        snap,
        "repliq_replication_link_up",
        G,
        "1 while a replication session with the peer runs, else 0",
        |l: &L| Value::GaugeInt(i64::from(l.connected)),
    );
    fs
}

/// The OpenMetrics text of `snap`.
pub fn encode(snap: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(families(snap)));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &reg)?;
    Ok(body)
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
