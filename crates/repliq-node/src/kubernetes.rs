//! Kubernetes discovery: the candidate addresses of the primary are the IPs
//! of the Ready pods matching a label selector, kept current by a watch on
//! the API server.
//!
//! A pod is a peer when its `Ready` condition is `True`, it has a `podIP`
//! and it is not being deleted; its address is `podIP:port`. The pod of the
//! configured primary (its `spec.nodeName` or its name equals
//! `replication.primary`) comes first; the others follow in address order.
//! A secondary tries the candidates in turn and only the primary answers.
//!
//! The watch is kube's [`watcher`]: it lists, then watches from the list's
//! `resourceVersion`, resumes a broken watch from the last version seen, and
//! re-lists when the API server answers `410 Gone` (version expired); the
//! re-listed state replaces the old one. Errors are retried with backoff.
//!
//! In cluster mode (no `replication.primary`) [`start_members`] gives the
//! members instead: each pod with an IP that is not being deleted, Ready or
//! not, under its node name (`spec.nodeName`, else the pod name) at
//! `podIP:port` (a member's readiness may wait on the catalog, so the catalog
//! cannot wait on readiness), this node's own address (its pod's), and how
//! many members to expect: `replication.expected_members`,
//! else the `status.desiredNumberScheduled` of the DaemonSet that owns the
//! pods (read every few seconds; needs `get` on `daemonsets`).
//!
//! This module depends on nothing else in the daemon (its tests include it
//! directly), so it takes plain values rather than the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

/// The service account's namespace file, mounted in every pod.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Candidate addresses of the primary (`ip:port`), kept current.
pub type Candidates = watch::Receiver<Arc<Vec<String>>>;

/// The client configuration: the API server at `api_server` (no
/// authentication; for tests and `kubectl proxy`), else in-cluster from the
/// service account (`KUBERNETES_SERVICE_HOST`/`PORT`, token and CA file).
pub fn client_config(api_server: Option<&str>) -> Result<kube::Config, String> {
    match api_server {
        Some(url) => url
            .parse()
            .map(kube::Config::new)
            .map_err(|e| format!("API server URL {url:?}: {e}")),
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "not in a Kubernetes pod with a service account ({e}); \
                 set replication.discovery.api_server to use another API server"
            )
        }),
    }
}

/// A client for `api_server` or in-cluster (see [`client_config`]). Needs a
/// tokio runtime.
pub fn client(api_server: Option<&str>) -> Result<Client, String> {
    let cfg = client_config(api_server)?;
    Client::try_from(cfg).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// The namespace to watch: `configured`, else the one in [`NAMESPACE_FILE`],
/// else `default`.
pub fn namespace(configured: Option<&str>) -> String {
    if let Some(ns) = configured {
        return ns.to_string();
    }
    std::fs::read_to_string(NAMESPACE_FILE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Watches the pods of `namespace` matching `selector` and returns their
/// Ready addresses (`podIP:port`), the pod of `primary` (a node or pod
/// name) first. Spawns a task on the current tokio runtime that ends when
/// every receiver is dropped.
pub fn start_with_client(
    client: Client,
    namespace: &str,
    selector: &str,
    port: u16,
    primary: Option<String>,
) -> Candidates {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let wc = watcher::Config::default().labels(selector);
    let what = format!("pods {selector:?} in namespace {namespace}");
    tokio::spawn(run(api, wc, what, port, primary, tx));
    rx
}

/// What discovery keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// `spec.nodeName`.
    node: Option<String>,
    /// `podIP:port` when the pod is a peer (Ready, with an IP, not deleting).
    address: Option<String>,
    /// `podIP:port` when the pod has an IP and is not deleting, Ready or not.
    ip_address: Option<String>,
    /// Name of the DaemonSet controlling the pod, if one does.
    daemonset: Option<String>,
}

impl Member {
    fn of(pod: &Pod, port: u16) -> Member {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty());
        let address = match ip {
            Some(ip) if ready && !deleting => Some(join_host_port(ip, port)),
            _ => None,
        };
        let ip_address = match ip {
            Some(ip) if !deleting => Some(join_host_port(ip, port)),
            _ => None,
        };
        let daemonset = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| {
                o.iter()
                    .find(|r| r.kind == "DaemonSet" && r.controller == Some(true))
            })
            .map(|r| r.name.clone());
        Member {
            node,
            address,
            ip_address,
            daemonset,
        }
    }
}

/// `ip:port`, with brackets for IPv6.
fn join_host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The pods seen, by name, and the listing in progress after an `Init`.
#[derive(Debug, Default)]
struct Members {
    current: BTreeMap<String, Member>,
    listing: Option<BTreeMap<String, Member>>,
}

impl Members {
    /// Applies a watcher event.
    fn apply(&mut self, ev: Event<Pod>, port: u16) {
        match ev {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(pod) => {
                let m = Member::of(&pod, port);
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(pod_name(&pod), m);
            }
            Event::InitDone => {
                // The listed state replaces what was known: pods deleted
                // while the watch was down are gone.
                self.current = self.listing.take().unwrap_or_default();
            }
            Event::Apply(pod) => {
                let m = Member::of(&pod, port);
                let name = pod_name(&pod);
                if self.current.get(&name) != Some(&m) {
                    tracing::debug!(pod = %name, node = ?m.node, address = ?m.address, "kubernetes discovery: pod changed");
                }
                self.current.insert(name, m);
            }
            Event::Delete(pod) => {
                let name = pod_name(&pod);
                tracing::debug!(pod = %name, "kubernetes discovery: pod deleted");
                self.current.remove(&name);
            }
        }
    }

    /// The peers' addresses, the primary's pod first.
    fn candidates(&self, primary: Option<&str>) -> Vec<String> {
        let is_primary = |name: &str, m: &Member| {
            primary.is_some_and(|p| m.node.as_deref() == Some(p) || name == p)
        };
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for (name, m) in &self.current {
            if let Some(a) = &m.address {
                if is_primary(name, m) {
                    first.push(a.clone());
                } else {
                    rest.push(a.clone());
                }
            }
        }
        first.sort();
        rest.sort();
        rest.retain(|a| !first.contains(a));
        first.extend(rest);
        first.dedup();
        first
    }
}

/// What cluster mode learns from the pods: see [`start_members`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// `(name, podIP:port)` of each pod with an IP and not being deleted,
    /// Ready or not, by name; the name is the pod's `spec.nodeName`, else its
    /// pod name.
    pub members: Vec<(String, String)>,
    /// This node's own address: the IP of its pod (`spec.nodeName` or pod
    /// name equal to the node name).
    pub own: Option<String>,
    /// How many members to expect (configured, or the DaemonSet's desired
    /// count); `None` while unknown.
    pub expected: Option<usize>,
}

impl MemberView {
    /// True when the members found, this node included, are at least the
    /// expected count.
    pub fn complete(&self, me: &str) -> bool {
        let mut names: Vec<&str> = self.members.iter().map(|(n, _)| n.as_str()).collect();
        names.push(me);
        names.sort_unstable();
        names.dedup();
        self.expected.is_some_and(|e| names.len() >= e)
    }
}

impl Members {
    /// The members, this node's address and the DaemonSet of the pods.
    fn view(&self, me: &str) -> (Vec<(String, String)>, Option<String>, Option<String>) {
        let mut members: Vec<(String, String)> = Vec::new();
        let mut own = None;
        let mut daemonset = None;
        for (pod, m) in &self.current {
            let name = m.node.clone().unwrap_or_else(|| pod.clone());
            if name == me || pod == me {
                own = own.or_else(|| m.ip_address.clone());
            }
            if daemonset.is_none() {
                daemonset = m.daemonset.clone();
            }
            if let Some(a) = &m.ip_address {
                members.push((name, a.clone()));
            }
        }
        members.sort();
        // Two pods on one node (a surge during a rolling update): one entry,
        // the lowest address.
        members.dedup_by(|a, b| a.0 == b.0);
        (members, own, daemonset)
    }
}

/// Watches the pods of `namespace` matching `selector` for cluster mode;
/// `me` is this node's name, `expected` the configured member count (else
/// the DaemonSet's desired count is read). Spawns a task on the current
/// tokio runtime that ends when every receiver is dropped.
pub fn start_members(
    client: Client,
    namespace: &str,
    selector: &str,
    port: u16,
    me: String,
    expected: Option<usize>,
) -> watch::Receiver<MemberView> {
    let (tx, rx) = watch::channel(MemberView {
        expected,
        ..Default::default()
    });
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let ds: Api<DaemonSet> = Api::namespaced(client, namespace);
    let wc = watcher::Config::default().labels(selector);
    let what = format!("pods {selector:?} in namespace {namespace}");
    tokio::spawn(run_members(api, ds, wc, what, port, me, expected, tx));
    rx
}

/// How often the DaemonSet's desired count is read again.
const DESIRED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[allow(clippy::too_many_arguments)]
async fn run_members(
    api: Api<Pod>,
    ds: Api<DaemonSet>,
    wc: watcher::Config,
    what: String,
    port: u16,
    me: String,
    configured: Option<usize>,
    tx: watch::Sender<MemberView>,
) {
    tracing::info!(node = %me, port, expected = ?configured, "kubernetes discovery (cluster): watching {what}");
    let mut events = watcher::watcher(api, wc).default_backoff().boxed();
    let mut members = Members::default();
    let mut desired: Option<usize> = configured;
    let mut tick = tokio::time::interval(DESIRED_EVERY);
    let mut daemonset: Option<String> = None;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick(), if configured.is_none() => {
                match &daemonset {
                    Some(name) => match ds.get(name).await {
                        Ok(d) => {
                            let n = d
                                .status
                                .as_ref()
                                .map(|s| s.desired_number_scheduled)
                                .and_then(|n| usize::try_from(n).ok());
                            if n != desired {
                                tracing::info!(daemonset = %name, desired = ?n, "kubernetes discovery: expected members");
                            }
                            desired = n;
                        }
                        Err(e) => tracing::warn!(daemonset = %name, "kubernetes discovery: cannot read the DaemonSet's desired count ({e}); set replication.expected_members or allow get on daemonsets"),
                    },
                    None => tracing::debug!("kubernetes discovery: no DaemonSet owns the pods yet; set replication.expected_members outside a DaemonSet"),
                }
            }
            ev = events.next() => match ev {
                None => return,
                Some(Ok(ev)) => members.apply(ev, port),
                Some(Err(watcher::Error::WatchError(e))) if e.code == 410 => {
                    tracing::info!("kubernetes discovery: watch expired ({}), listing again", e.message);
                }
                Some(Err(e)) => tracing::warn!("kubernetes discovery: {what}: {e} (retrying)"),
            },
        }
        let (list, own, ds_name) = members.view(&me);
        if ds_name.is_some() && daemonset.is_none() && configured.is_none() {
            // Read its desired count at once.
            tick.reset_immediately();
        }
        daemonset = daemonset.or(ds_name);
        let view = MemberView {
            members: list,
            own,
            expected: desired,
        };
        let old = tx.borrow().clone();
        if old != view {
            tracing::info!(
                members = ?view.members,
                own = ?view.own,
                expected = ?view.expected,
                complete = view.complete(&me),
                "kubernetes discovery: membership changed"
            );
            if tx.send(view).is_err() {
                return;
            }
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The discovery task: applies watcher events and publishes the candidates
/// whenever they change.
async fn run(
    api: Api<Pod>,
    wc: watcher::Config,
    what: String,
    port: u16,
    primary: Option<String>,
    tx: watch::Sender<Arc<Vec<String>>>,
) {
    tracing::info!(primary = ?primary, port, "kubernetes discovery: watching {what}");
    let mut events = watcher::watcher(api, wc).default_backoff().boxed();
    let mut members = Members::default();
    loop {
        let ev = tokio::select! {
            _ = tx.closed() => return,
            ev = events.next() => ev,
        };
        match ev {
            // The watcher restarts itself; it does not end.
            None => return,
            Some(Ok(ev)) => {
                let done = matches!(ev, Event::InitDone);
                members.apply(ev, port);
                let new = members.candidates(primary.as_deref());
                let old = tx.borrow().clone();
                if *old != new {
                    let added: Vec<&String> = new.iter().filter(|a| !old.contains(a)).collect();
                    let removed: Vec<&String> = old.iter().filter(|a| !new.contains(a)).collect();
                    tracing::info!(
                        peers = ?new,
                        ?added,
                        ?removed,
                        "kubernetes discovery: membership changed"
                    );
                    if tx.send(Arc::new(new)).is_err() {
                        return;
                    }
                } else if done {
                    tracing::debug!(peers = ?new, "kubernetes discovery: listed");
                }
            }
            Some(Err(watcher::Error::WatchError(e))) if e.code == 410 => {
                tracing::info!(
                    "kubernetes discovery: watch expired ({}), listing again",
                    e.message
                );
            }
            Some(Err(e)) => tracing::warn!("kubernetes discovery: {what}: {e} (retrying)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(name: &str, node: &str, ip: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_pods_with_an_ip_are_peers_primary_first() {
        let mut m = Members::default();
        m.apply(Event::Init, 31337);
        for p in [
            pod("a", "node-a", Some("10.0.0.9"), true),
            pod("b", "node-b", Some("10.0.0.2"), false),
            pod("c", "node-c", None, true),
            pod("d", "node-d", Some("fd00::1"), true),
        ] {
            m.apply(Event::InitApply(p), 31337);
        }
        assert!(m.candidates(None).is_empty(), "nothing before InitDone");
        m.apply(Event::InitDone, 31337);
        assert_eq!(m.candidates(None), ["10.0.0.9:31337", "[fd00::1]:31337"]);
        assert_eq!(
            m.candidates(Some("node-d")),
            ["[fd00::1]:31337", "10.0.0.9:31337"]
        );
        // The pod name matches too (StatefulSet: NODE_NAME is the pod name).
        assert_eq!(m.candidates(Some("d"))[0], "[fd00::1]:31337");

        let mut deleting = pod("a", "node-a", Some("10.0.0.9"), true);
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2025-01-01T00:00:00Z")).unwrap());
        m.apply(Event::Apply(deleting), 31337);
        assert_eq!(m.candidates(None), ["[fd00::1]:31337"]);

        // A new listing replaces the old state.
        m.apply(Event::Init, 31337);
        m.apply(
            Event::InitApply(pod("b", "node-b", Some("10.0.0.2"), true)),
            31337,
        );
        assert_eq!(m.candidates(None), ["[fd00::1]:31337"]);
        m.apply(Event::InitDone, 31337);
        assert_eq!(m.candidates(None), ["10.0.0.2:31337"]);
    }

    #[test]
    fn members_are_named_by_node_and_complete_at_the_expected_count() {
        let mut m = Members::default();
        m.apply(Event::Init, 31337);
        m.apply(
            Event::InitApply(pod("repliq-x1", "node-a", Some("10.0.0.1"), true)),
            31337,
        );
        // This node's pod has an IP but is not Ready yet.
        m.apply(
            Event::InitApply(pod("repliq-x2", "node-b", Some("10.0.0.2"), false)),
            31337,
        );
        m.apply(Event::InitDone, 31337);
        // A pod without an IP yet is not a member.
        m.apply(Event::Apply(pod("repliq-x3", "node-c", None, false)), 31337);
        let (members, own, ds) = m.view("node-b");
        assert_eq!(
            members,
            [
                ("node-a".to_string(), "10.0.0.1:31337".to_string()),
                ("node-b".to_string(), "10.0.0.2:31337".to_string())
            ],
            "named by node, Ready or not"
        );
        assert_eq!(own.as_deref(), Some("10.0.0.2:31337"));
        assert_eq!(ds, None, "the test pods have no owner");
        let mut v = MemberView {
            members,
            own,
            expected: None,
        };
        assert!(
            !v.complete("node-b"),
            "unknown expected count: never complete"
        );
        v.expected = Some(3);
        assert!(!v.complete("node-b"), "two of three");
        v.expected = Some(2);
        assert!(v.complete("node-b"), "node-a and this node");
        v.members.truncate(1);
        assert!(
            v.complete("node-b"),
            "this node counts even when not listed"
        );
    }
}
