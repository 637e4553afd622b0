//! The daemon's configuration file: parsing, defaults and validation.
//!
//! The keys of the founding ConfigMap (`replication.mode`,
//! `replication.discovery.{method,label_selector}`, `queue.capacity`,
//! `queue.persistence.path`) load as they are; the others have defaults.
//! Unknown keys and bad values are errors naming the source, the key and
//! the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default replication port (the founding DaemonSet's containerPort).
pub const DEFAULT_REPLICATION_LISTEN: &str = "0.0.0.0:31337";
/// Default HTTP port (health, readiness, metrics).
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";

/// A configuration error: where it came from, which key, why.
#[derive(Debug)]
pub struct ConfigError {
    /// The file (or `REPLIQ_CONFIG`).
    pub source: String,
    /// The dotted key, if known.
    pub key: Option<String>,
    /// Why the value is rejected.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key `{}`: {}", self.source, k, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

/// The file as written (all optional except what the founding file has).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    replication: RawReplication,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    tls: RawTls,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    mode: Option<String>,
    primary: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    discovery: RawDiscovery,
    min_acks: Option<u64>,
    timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    factor: Option<u64>,
    failover_timeout_ms: Option<u64>,
    expected_members: Option<u64>,
    max_connections: Option<u64>,
    peer_expiry_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    method: Option<String>,
    label_selector: Option<String>,
    peers: Option<Vec<RawPeer>>,
    dns_name: Option<String>,
    port: Option<u64>,
    refresh_interval: Option<u64>,
    namespace: Option<String>,
    api_server: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    address: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    capacity: Option<u64>,
    segment_size: Option<u64>,
    durability: Option<String>,
    #[serde(default)]
    persistence: RawPersistence,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    max_connections: Option<u64>,
    header_timeout_ms: Option<u64>,
    auth_token_file: Option<String>,
}

/// Whether the replication port (and the catalog on it) uses mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP both ways (loopback or development only).
    Disabled,
    /// Inbound: TLS and plain TCP both accepted; outbound: TLS. For a
    /// rolling upgrade from `disabled` to `required`.
    Permissive,
    /// Mutual TLS both ways; plain TCP is refused.
    Required,
}

/// The `tls` section: the mode and the PEM files of this node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// The mode (`disabled` when the section is absent).
    pub mode: TlsMode,
    /// This node's certificate chain (PEM), its SAN naming `node.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) every peer's certificate must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: TlsMode::Disabled,
            cert: None,
            key: None,
            ca: None,
        }
    }
}

/// Replication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Appends return before secondaries acknowledge.
    Async,
    /// The replicated watermark needs `min_acks` acknowledgements.
    Sync,
}

/// How the primary and the peers are found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Discovery {
    /// A fixed list of peers.
    Static {
        /// Every node, primary included.
        peers: Vec<Peer>,
    },
    /// Addresses resolved periodically from a DNS name.
    Dns {
        /// Name resolving to every node (e.g. a headless Service).
        dns_name: String,
        /// Replication port of the resolved addresses.
        port: u16,
        /// Seconds between resolutions.
        refresh_interval: u64,
    },
    /// The Ready pods selected by a label selector, watched through the
    /// Kubernetes API (see `daemon::kubernetes`).
    Kubernetes {
        /// The label selector (e.g. `name=repliq`).
        label_selector: String,
        /// Namespace of the pods (`None`: the service account's namespace,
        /// else `default`).
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// Replication port of the pods.
        port: u16,
        /// API server URL (`None`: in-cluster, from the service account).
        #[serde(skip_serializing_if = "Option::is_none")]
        api_server: Option<String>,
    },
}

/// A statically configured node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// Replication address (`host:port`).
    pub address: String,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Replication mode.
    pub mode: Mode,
    /// Name of the primary node (`None`: single node, this one).
    pub primary: Option<String>,
    /// Replication listen address.
    pub listen: SocketAddr,
    /// Discovery.
    pub discovery: Discovery,
    /// Acknowledgements for the replicated watermark.
    pub min_acks: usize,
    /// Silence after which a peer is gone (ms).
    pub timeout_ms: u64,
    /// Heartbeat interval when idle (ms).
    pub heartbeat_ms: u64,
    /// Connections the replication port serves at once; more are closed
    /// as they arrive.
    pub max_connections: usize,
    /// Idle time after which a disconnected replication peer's slot is
    /// freed on the queues this node serves (ms; 0: never).
    pub peer_expiry_ms: u64,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// HTTP connections served at once; more are closed as they arrive.
    pub http_max_connections: usize,
    /// Time a client has to send a request's headers (ms).
    pub http_header_timeout_ms: u64,
    /// File holding the bearer token every HTTP endpoint but the probes
    /// needs (`None`: no token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_auth_token_file: Option<PathBuf>,
    /// Capacity of queues created here, in messages.
    pub capacity: u64,
    /// Segment size of queues created here, in bytes (`None`: the
    /// store's default, 64 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u64>,
    /// Durability of queues created here (`None`: the store's default).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "durability_str"
    )]
    pub durability: Option<repliq::store::Durability>,
    /// Directory holding one directory per queue.
    pub path: PathBuf,
    /// Queues listed explicitly (those found on disk are added at start).
    pub queue_names: Vec<String>,
    /// Cluster mode (no `replication.primary`, several members): the
    /// catalog, per-queue leaders and automatic failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSettings>,
    /// Mutual TLS on the replication port.
    pub tls: TlsSettings,
}

/// The settings of cluster mode.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSettings {
    /// Every member, this node included (static discovery). Empty with `dns`
    /// and `kubernetes` discovery: the members are found as the node runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Peer>,
    /// The address other members reach this node at (its entry in `members`).
    /// Empty with `dns` and `kubernetes` discovery: found as the node runs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advertise: String,
    /// Replicas of each queue (`replication.factor`, default `min(3, members)`;
    /// with discovered members, 3, capped by the members the catalog holds
    /// when the queue is registered).
    pub factor: usize,
    /// Members a fresh cluster waits for before its first voter initializes it
    /// (`replication.expected_members`). `None`: all of them (static), the
    /// DaemonSet's desired count (`kubernetes`); required with `dns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_members: Option<usize>,
    /// Silence of a queue's leader after which another replica takes over
    /// (`replication.failover_timeout_ms`, default 3000). A leader that
    /// cannot reach the catalog for half of it stops accepting appends.
    pub failover_timeout_ms: u64,
}

impl Config {
    /// True if this node is the primary (of every queue, outside cluster mode).
    pub fn is_primary(&self) -> bool {
        self.cluster.is_none() && self.primary.as_deref().is_none_or(|p| p == self.node_name)
    }
    /// Timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// Heartbeat as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// The options a queue created by this daemon gets: `queue.capacity`,
    /// `queue.segment_size` and `queue.durability`.
    pub fn create_options(&self) -> repliq::store::StoreOptions {
        let mut o = repliq::store::StoreOptions::create().capacity(self.capacity);
        if let Some(n) = self.segment_size {
            o = o.segment_size(n);
        }
        if let Some(d) = self.durability {
            o = o.durability(d);
        }
        o
    }
}

fn default_node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.trim().is_empty() {
            return n.trim().to_string();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// True if `s` is a valid node name: a valid name that fits the 48 bytes a
/// replication-peer slot holds (a longer name could never be replicated to).
fn valid_node_name(s: &str) -> bool {
    valid_name(s) && s.len() <= repliq::store::layout::SLOT_NAME_MAX
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses and validates `text`; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        source: source.to_string(),
        key: Some(key.to_string()),
        reason,
    };
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let reason = msg
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .trim_start_matches("error: ")
                .to_string();
            ConfigError {
                source: source.to_string(),
                key: error_key(text, &msg),
                reason,
            }
        })?
    };

    let node_name = match raw.node.name {
        Some(n) => n,
        None => default_node_name(),
    };
    if !valid_node_name(&node_name) {
        return Err(err(
            "node.name",
            format!(
                "{node_name:?} is not a valid node name (1 to {} letters, digits, '-', '_', '.')",
                repliq::store::layout::SLOT_NAME_MAX
            ),
        ));
    }
    let r = raw.replication;
    let mode = match r.mode.as_deref().unwrap_or("async") {
        "async" | "asynchronous" => Mode::Async,
        "sync" | "synchronous" => Mode::Sync,
        other => {
            return Err(err(
                "replication.mode",
                format!("{other:?} is not one of async, sync (asynchronous, synchronous)"),
            ))
        }
    };
    let listen_s = r
        .listen
        .unwrap_or_else(|| DEFAULT_REPLICATION_LISTEN.to_string());
    let listen: SocketAddr = listen_s.parse().map_err(|e| {
        err(
            "replication.listen",
            format!("{listen_s:?} is not an address ip:port ({e})"),
        )
    })?;
    let d = r.discovery;
    let method = d.method.as_deref().unwrap_or("static");
    let port = || {
        let port = d.port.unwrap_or(u64::from(listen.port()));
        u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
            err(
                "replication.discovery.port",
                format!("{port} is not a port (1-65535)"),
            )
        })
    };
    let discovery = match method {
        "static" => {
            let mut peers = Vec::new();
            for (i, p) in d.peers.unwrap_or_default().into_iter().enumerate() {
                let key = format!("replication.discovery.peers[{i}]");
                if !valid_node_name(&p.name) {
                    return Err(err(
                        &format!("{key}.name"),
                        format!(
                            "{:?} is not a valid node name (1 to {} letters, digits, '-', '_', '.')",
                            p.name,
                            repliq::store::layout::SLOT_NAME_MAX
                        ),
                    ));
                }
                if !valid_host_port(&p.address) {
                    return Err(err(
                        &format!("{key}.address"),
                        format!("{:?} is not an address host:port", p.address),
                    ));
                }
                if peers.iter().any(|q: &Peer| q.name == p.name) {
                    return Err(err(
                        &format!("{key}.name"),
                        format!("peer {:?} listed twice", p.name),
                    ));
                }
                peers.push(Peer {
                    name: p.name,
                    address: p.address,
                });
            }
            Discovery::Static { peers }
        }
        "dns" => {
            let dns_name = d.dns_name.unwrap_or_default();
            if dns_name.is_empty() {
                return Err(err(
                    "replication.discovery.dns_name",
                    "required with method dns".into(),
                ));
            }
            let port = port()?;
            let refresh_interval = d.refresh_interval.unwrap_or(10);
            if refresh_interval == 0 {
                return Err(err(
                    "replication.discovery.refresh_interval",
                    "must be at least 1 (seconds)".into(),
                ));
            }
            Discovery::Dns {
                dns_name,
                port,
                refresh_interval,
            }
        }
        "kubernetes" => {
            let label_selector = d.label_selector.clone().unwrap_or_default();
            if label_selector.trim().is_empty() {
                return Err(err(
                    "replication.discovery.label_selector",
                    "required with method kubernetes (e.g. name=repliq)".into(),
                ));
            }
            if let Some(ns) = &d.namespace {
                if !valid_dns_label(ns) {
                    return Err(err(
                        "replication.discovery.namespace",
                        format!("{ns:?} is not a namespace name (lower-case letters, digits, '-')"),
                    ));
                }
            }
            if let Some(url) = &d.api_server {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(err(
                        "replication.discovery.api_server",
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            Discovery::Kubernetes {
                label_selector,
                namespace: d.namespace.clone(),
                port: port()?,
                api_server: d.api_server.clone(),
            }
        }
        other => {
            return Err(err(
                "replication.discovery.method",
                format!("{other:?} is not one of static, dns, kubernetes"),
            ))
        }
    };
    let primary = r.primary;
    if let Some(p) = &primary {
        if !valid_node_name(p) {
            return Err(err(
                "replication.primary",
                format!(
                    "{p:?} is not a valid node name (1 to {} letters, digits, '-', '_', '.')",
                    repliq::store::layout::SLOT_NAME_MAX
                ),
            ));
        }
    }
    let secondaries = match &discovery {
        Discovery::Static { peers } => {
            if let Some(p) = &primary {
                if !peers.is_empty() && !peers.iter().any(|q| &q.name == p) {
                    return Err(err(
                        "replication.primary",
                        format!("{p:?} is not in replication.discovery.peers"),
                    ));
                }
                if p != &node_name && peers.is_empty() {
                    return Err(err(
                        "replication.discovery.peers",
                        format!("must list the primary {p:?} (static discovery)"),
                    ));
                }
            } else if peers.iter().any(|q| q.name != node_name)
                && !peers.iter().any(|q| q.name == node_name)
            {
                return Err(err(
                    "replication.discovery.peers",
                    format!(
                        "must list this node ({node_name:?}) too: without replication.primary \
                         the peers form a cluster"
                    ),
                ));
            }
            peers
                .iter()
                .filter(|q| Some(&q.name) != primary.as_ref())
                .count()
        }
        Discovery::Dns { .. } => 1,
        Discovery::Kubernetes { .. } => 1,
    };
    // Cluster mode: no fixed primary, and static peers besides this node or
    // members found by dns or kubernetes discovery.
    let failover_timeout_ms = r.failover_timeout_ms.unwrap_or(3000);
    let expected_members = match r.expected_members {
        None => None,
        Some(n) if (1..=1000).contains(&n) => Some(n as usize),
        Some(n) => {
            return Err(err(
                "replication.expected_members",
                format!("{n} is out of range 1..=1000"),
            ))
        }
    };
    let clustered = primary.is_none()
        && match &discovery {
            Discovery::Static { peers } => peers.iter().any(|q| q.name != node_name),
            Discovery::Dns { .. } | Discovery::Kubernetes { .. } => true,
        };
    let cluster = if clustered {
        let (members, advertise) = match &discovery {
            Discovery::Static { peers } => (
                peers.clone(),
                peers
                    .iter()
                    .find(|q| q.name == node_name)
                    .map(|q| q.address.clone())
                    .unwrap_or_default(),
            ),
            _ => (Vec::new(), String::new()),
        };
        if let Discovery::Dns { .. } = &discovery {
            if expected_members.is_none() {
                return Err(err(
                    "replication.expected_members",
                    "required with method dns and no replication.primary (a cluster): \
                     DNS does not say how many members to wait for before forming it"
                        .into(),
                ));
            }
        }
        if let Some(n) = expected_members {
            if !members.is_empty() && n != members.len() {
                return Err(err(
                    "replication.expected_members",
                    format!(
                        "{n} differs from the {} static peers (leave it out with static peers)",
                        members.len()
                    ),
                ));
            }
        }
        let factor = match r.factor {
            None if members.is_empty() => 3,
            None => members.len().min(3),
            Some(f) => {
                let f = usize::try_from(f).unwrap_or(usize::MAX);
                let most = if members.is_empty() {
                    expected_members.unwrap_or(1000).max(1)
                } else {
                    members.len()
                };
                if f == 0 || f > most {
                    return Err(err(
                        "replication.factor",
                        format!("{f} is not between 1 and the {most} members"),
                    ));
                }
                f
            }
        };
        if !(200..=600_000).contains(&failover_timeout_ms) {
            return Err(err(
                "replication.failover_timeout_ms",
                format!("{failover_timeout_ms} is out of range 200..=600000"),
            ));
        }
        Some(ClusterSettings {
            members,
            advertise,
            factor,
            expected_members,
            failover_timeout_ms,
        })
    } else {
        for (key, set) in [
            ("replication.factor", r.factor.is_some()),
            (
                "replication.failover_timeout_ms",
                r.failover_timeout_ms.is_some(),
            ),
            ("replication.expected_members", r.expected_members.is_some()),
        ] {
            if set {
                return Err(err(
                    key,
                    "only applies to a cluster (no replication.primary)".into(),
                ));
            }
        }
        None
    };
    let secondaries = match &cluster {
        // The leader's acknowledgement counts: a majority of the replicas.
        Some(c) => c.factor / 2,
        None => secondaries,
    };
    let min_acks = match r.min_acks {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > 64 {
                return Err(err(
                    "replication.min_acks",
                    format!("{n} is more than the 64 peers a queue tracks"),
                ));
            }
            // What can acknowledge at most: the other replicas of a queue
            // (cluster), the secondaries (static peers). Unknown with dns or
            // kubernetes discovery and a fixed primary.
            let most = match (&cluster, &discovery) {
                (Some(c), _) => Some(c.factor.saturating_sub(1)),
                (None, Discovery::Static { .. }) => Some(secondaries),
                _ => None,
            };
            if let Some(m) = most.filter(|&m| n > m) {
                return Err(err(
                    "replication.min_acks",
                    format!(
                        "{n} is more than the {m} peers that can acknowledge (a synchronous \
                         enqueue could never succeed)"
                    ),
                ));
            }
            n
        }
        None => secondaries,
    };
    let timeout_ms = r.timeout_ms.unwrap_or(5000);
    if !(10..=3_600_000).contains(&timeout_ms) {
        return Err(err(
            "replication.timeout_ms",
            format!("{timeout_ms} is out of range 10..=3600000"),
        ));
    }
    let max_connections = match r.max_connections {
        None => 1024,
        Some(n) if (1..=65536).contains(&n) => n as usize,
        Some(n) => {
            return Err(err(
                "replication.max_connections",
                format!("{n} is out of range 1..=65536"),
            ))
        }
    };
    let peer_expiry_ms = r.peer_expiry_ms.unwrap_or(3_600_000);
    if peer_expiry_ms != 0 && peer_expiry_ms < 1000 {
        return Err(err(
            "replication.peer_expiry_ms",
            format!("{peer_expiry_ms} is below 1000 (0 turns expiry off)"),
        ));
    }
    let heartbeat_ms = r.heartbeat_ms.unwrap_or(500);
    if heartbeat_ms == 0 || heartbeat_ms >= timeout_ms {
        return Err(err(
            "replication.heartbeat_ms",
            format!(
                "{heartbeat_ms} must be at least 1 and below replication.timeout_ms ({timeout_ms})"
            ),
        ));
    }
    let http_s = raw
        .http
        .listen
        .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_string());
    let http_max_connections = match raw.http.max_connections {
        None => 256,
        Some(n) if (1..=65536).contains(&n) => n as usize,
        Some(n) => {
            return Err(err(
                "http.max_connections",
                format!("{n} is out of range 1..=65536"),
            ))
        }
    };
    let http_header_timeout_ms = raw.http.header_timeout_ms.unwrap_or(10_000);
    if !(100..=600_000).contains(&http_header_timeout_ms) {
        return Err(err(
            "http.header_timeout_ms",
            format!("{http_header_timeout_ms} is out of range 100..=600000"),
        ));
    }
    let http_auth_token_file = match raw.http.auth_token_file {
        None => None,
        Some(p) if p.is_empty() => {
            return Err(err("http.auth_token_file", "must not be empty".into()))
        }
        Some(p) => {
            let p = PathBuf::from(p);
            crate::http_auth::read_token(&p).map_err(|e| err("http.auth_token_file", e))?;
            Some(p)
        }
    };
    let http_listen: SocketAddr = http_s.parse().map_err(|e| {
        err(
            "http.listen",
            format!("{http_s:?} is not an address ip:port ({e})"),
        )
    })?;
    let q = raw.queue;
    let capacity = q.capacity.unwrap_or(1_000_000);
    if capacity == 0 {
        return Err(err("queue.capacity", "must be at least 1".into()));
    }
    let segment_size = match q.segment_size {
        None => None,
        Some(n)
            if n.is_power_of_two()
                && (repliq::store::layout::MIN_SEGMENT_SIZE
                    ..=repliq::store::layout::MAX_SEGMENT_SIZE)
                    .contains(&n) =>
        {
            Some(n)
        }
        Some(n) => {
            return Err(err(
                "queue.segment_size",
                format!(
                    "{n} must be a power of two from {} to {} bytes (e.g. 67108864 for 64 MiB)",
                    repliq::store::layout::MIN_SEGMENT_SIZE,
                    repliq::store::layout::MAX_SEGMENT_SIZE
                ),
            ))
        }
    };
    let durability = match q.durability.as_deref() {
        None => None,
        Some(d) => Some(d.parse().map_err(|e| err("queue.durability", e))?),
    };
    let path = match q.persistence.path {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        Some(_) => return Err(err("queue.persistence.path", "must not be empty".into())),
        None => {
            return Err(err("queue.persistence.path", "required".into()));
        }
    };
    let mut queue_names = Vec::new();
    for (i, n) in q.names.unwrap_or_default().into_iter().enumerate() {
        if !valid_name(&n) {
            return Err(err(
                &format!("queue.names[{i}]"),
                format!("{n:?} is not a valid queue name (letters, digits, '-', '_', '.')"),
            ));
        }
        if !queue_names.contains(&n) {
            queue_names.push(n);
        }
    }
    let t = raw.tls;
    let tls_mode = match t.mode.as_deref().unwrap_or("disabled") {
        "disabled" => TlsMode::Disabled,
        "permissive" => TlsMode::Permissive,
        "required" => TlsMode::Required,
        other => {
            return Err(err(
                "tls.mode",
                format!("{other:?} is not one of required, permissive, disabled"),
            ))
        }
    };
    let tls_file = |key: &str, v: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        match v {
            // `${NODE_NAME}` stands for this node's name: one ConfigMap for
            // every pod of a DaemonSet that mounts a whole Secret directory.
            Some(p) if !p.trim().is_empty() => {
                Ok(Some(PathBuf::from(p.replace("${NODE_NAME}", &node_name))))
            }
            Some(_) => Err(err(key, "must not be empty".into())),
            None if tls_mode != TlsMode::Disabled => Err(err(
                key,
                format!(
                    "required with tls.mode {} (a PEM file)",
                    match tls_mode {
                        TlsMode::Required => "required",
                        _ => "permissive",
                    }
                ),
            )),
            None => Ok(None),
        }
    };
    let tls = TlsSettings {
        mode: tls_mode,
        cert: tls_file("tls.cert", t.cert)?,
        key: tls_file("tls.key", t.key)?,
        ca: tls_file("tls.ca", t.ca)?,
    };
    Ok(Config {
        tls,
        node_name,
        mode,
        primary,
        listen,
        discovery,
        min_acks,
        timeout_ms,
        heartbeat_ms,
        max_connections,
        peer_expiry_ms,
        http_listen,
        http_max_connections,
        http_header_timeout_ms,
        http_auth_token_file,
        capacity,
        segment_size,
        durability,
        path,
        queue_names,
        cluster,
    })
}

fn durability_str<S: serde::Serializer>(
    d: &Option<repliq::store::Durability>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(d.as_str()),
        None => s.serialize_none(),
    }
}

/// True if `s` is a DNS label (RFC 1123), as namespace names are.
fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', ' ', '[', ']'])
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// The effective configuration as YAML, for `--check`.
pub fn render(c: &Config) -> String {
    serde_saphyr::to_string(c).unwrap_or_else(|e| format!("(cannot render: {e})\n{c:#?}"))
}

/// The key a parser message is about. For an unknown field the parser
/// points at the enclosing mapping, so the field is appended to its path.
fn error_key(text: &str, msg: &str) -> Option<String> {
    let at = error_line(msg).and_then(|n| key_at(text, n));
    let unknown = msg
        .split("unknown field `")
        .nth(1)
        .and_then(|r| r.split('`').next());
    match (unknown, at) {
        (Some(u), Some(at)) => Some(match at.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.{u}"),
            None => u.to_string(),
        }),
        (Some(u), None) => Some(u.to_string()),
        (None, at) => at,
    }
}

/// The 1-based line number in a parser message ("line N column M").
fn error_line(msg: &str) -> Option<usize> {
    let rest = msg.split("line ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The dotted key path of the mapping key on 1-based `line` of a block-style
/// YAML document (e.g. `replication.discovery.method`).
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let key_of = |l: &str| -> Option<(usize, String)> {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        let k = k.trim();
        if k.is_empty() || k.starts_with('#') || k.contains(' ') {
            return None;
        }
        Some((indent, k.to_string()))
    };
    let (mut indent, first) = key_of(lines.get(line.checked_sub(1)?)?)?;
    let mut path = vec![first];
    for l in lines[..line - 1].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        if let Some((i, k)) = key_of(l) {
            if i < indent {
                path.push(k);
                indent = i;
            }
        }
        if indent == 0 {
            break;
        }
    }
    path.reverse();
    Some(path.join("."))
}
