//! Finding the primary's replication address.
//!
//! `static`: the address of the peer named `replication.primary`.
//! `dns`: every address `dns_name` resolves to (A and AAAA), re-resolved
//! every `refresh_interval` seconds; a secondary tries them in turn, and
//! only the primary answers with a welcome.
//! `kubernetes`: the Ready pods matching `label_selector`, watched through
//! the API server (see [`crate::kubernetes`]).
//!
//! In cluster mode with `dns` or `kubernetes` discovery, [`members`] finds
//! the members with their names instead (see "Cluster mode" in
//! `docs/operations.md`):
//!
//! * `kubernetes`: each pod with an IP (Ready or not) is a member named by its `spec.nodeName`
//!   (the DaemonSet's `NODE_NAME`), else its pod name, at `podIP:port`;
//! * `dns`: each resolved address is asked its node name over the catalog
//!   protocol (`Identify`); this node's own address is the resolved address
//!   equal to `replication.listen`, or, when that listens on every interface,
//!   the resolved address with its port whose IP is local.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Discovery};
use crate::kubernetes::{self, MemberView};

/// Candidate addresses of the primary, kept current.
pub type Candidates = watch::Receiver<Arc<Vec<String>>>;

/// Starts discovery for `cfg`; returns the current candidates.
pub fn start(cfg: &Config) -> Candidates {
    match &cfg.discovery {
        Discovery::Static { peers } => {
            let addrs: Vec<String> = peers
                .iter()
                .filter(|p| Some(&p.name) == cfg.primary.as_ref())
                .map(|p| p.address.clone())
                .collect();
            let (_tx, rx) = watch::channel(Arc::new(addrs));
            // The sender is dropped: the list never changes.
            rx
        }
        Discovery::Dns {
            dns_name,
            port,
            refresh_interval,
        } => {
            let (tx, rx) = watch::channel(Arc::new(Vec::new()));
            let host = format!("{dns_name}:{port}");
            let every = Duration::from_secs(*refresh_interval);
            tokio::spawn(async move {
                loop {
                    match tokio::net::lookup_host(host.as_str()).await {
                        Ok(it) => {
                            let mut v: Vec<String> = it.map(|a| a.to_string()).collect();
                            v.sort();
                            v.dedup();
                            if **tx.borrow() != v {
                                tracing::info!(name = %host, addresses = ?v, "discovery: resolved");
                                if tx.send(Arc::new(v)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => tracing::warn!(name = %host, "discovery: cannot resolve: {e}"),
                    }
                    tokio::time::sleep(every).await;
                }
            });
            rx
        }
        Discovery::Kubernetes {
            label_selector,
            namespace,
            port,
            api_server,
        } => match kubernetes::client(api_server.as_deref()) {
            Ok(client) => kubernetes::start_with_client(
                client,
                &kubernetes::namespace(namespace.as_deref()),
                label_selector,
                *port,
                cfg.primary.clone(),
            ),
            Err(e) => {
                // The client configuration was checked before the runtime
                // started ([`crate::preflight`]); what remains (TLS set-up) is
                // logged, and without a client no primary is found.
                tracing::error!("kubernetes discovery: {e}");
                watch::channel(Arc::new(Vec::new())).1
            }
        },
    }
}

/// Cluster mode with `dns` or `kubernetes` discovery: waits until this node's
/// own address is known, then returns it and the members as the catalog reads
/// them, kept current by a task. `complete` is true once the members found,
/// this node included, reach the expected count.
pub async fn members(
    cfg: &Config,
    dialer: repliq_catalog::network::Dialer,
) -> Result<(String, watch::Receiver<repliq_catalog::Discovered>), String> {
    let expected = cfg.cluster.as_ref().and_then(|c| c.expected_members);
    let me = cfg.node_name.clone();
    let mut rx = match &cfg.discovery {
        Discovery::Kubernetes {
            label_selector,
            namespace,
            port,
            api_server,
        } => {
            let client = kubernetes::client(api_server.as_deref())
                .map_err(|e| format!("kubernetes discovery: {e}"))?;
            kubernetes::start_members(
                client,
                &kubernetes::namespace(namespace.as_deref()),
                label_selector,
                *port,
                me.clone(),
                expected,
            )
        }
        Discovery::Dns {
            dns_name,
            port,
            refresh_interval,
        } => start_dns_members(
            format!("{dns_name}:{port}"),
            cfg.listen,
            me.clone(),
            expected,
            Duration::from_secs(*refresh_interval),
            dialer,
        ),
        Discovery::Static { .. } => {
            return Err("static peers are not discovered (this is a bug)".into())
        }
    };
    tracing::info!(node = %me, "cluster mode: waiting for discovery to find this node's own address");
    let own = loop {
        if let Some(a) = rx.borrow_and_update().own.clone() {
            break a;
        }
        if rx.changed().await.is_err() {
            return Err("discovery ended before finding this node's address".into());
        }
    };
    tracing::info!(node = %me, address = %own, "cluster mode: this node's address");
    let convert = |v: &MemberView, me: &str| repliq_catalog::Discovered {
        members: v.members.clone(),
        complete: v.complete(me),
    };
    let (tx, out) = watch::channel(convert(&rx.borrow(), &me));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let d = convert(&rx.borrow_and_update(), &me);
            if tx.send(d).is_err() {
                return;
            }
        }
    });
    Ok((own, out))
}

/// `dns` in cluster mode: resolves `host` every `every`, finds this node's
/// own address and asks every other address its name.
fn start_dns_members(
    host: String,
    listen: std::net::SocketAddr,
    me: String,
    expected: Option<usize>,
    every: Duration,
    dialer: repliq_catalog::network::Dialer,
) -> watch::Receiver<MemberView> {
    let (tx, rx) = watch::channel(MemberView {
        expected,
        ..Default::default()
    });
    tokio::spawn(async move {
        let mut names: std::collections::HashMap<String, String> = Default::default();
        loop {
            let addrs: Vec<std::net::SocketAddr> =
                match tokio::net::lookup_host(host.as_str()).await {
                    Ok(it) => it.collect(),
                    Err(e) => {
                        tracing::warn!(name = %host, "discovery: cannot resolve: {e}");
                        Vec::new()
                    }
                };
            let own = addrs
                .iter()
                .find(|a| is_own(a, &listen))
                .map(|a| a.to_string());
            // An address that went away may come back as another node: ask
            // again then.
            names.retain(|a, _| addrs.iter().any(|x| x.to_string() == *a));
            let mut members = Vec::new();
            for a in &addrs {
                let s = a.to_string();
                if Some(&s) == own.as_ref() {
                    continue;
                }
                if !names.contains_key(&s) {
                    if let Some(n) = identify(&s, &dialer).await {
                        names.insert(s.clone(), n);
                    }
                }
                if let Some(n) = names.get(&s) {
                    members.push((n.clone(), s));
                }
            }
            members.sort();
            members.dedup_by(|a, b| a.0 == b.0);
            let view = MemberView {
                members,
                own,
                expected,
            };
            if *tx.borrow() != view {
                tracing::info!(name = %host, members = ?view.members, own = ?view.own, complete = view.complete(&me), "dns discovery: membership changed");
                if tx.send(view).is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            // Faster while names are missing, so a forming cluster does not
            // wait a whole refresh interval per member.
            let pause = if names.len() + 1 < addrs.len() {
                every.min(Duration::from_millis(500))
            } else {
                every
            };
            tokio::time::sleep(pause).await;
        }
    });
    rx
}

/// True if `a` is where this node listens: `listen` itself, or, when
/// `listen` is on every interface, `a` with its port and a local IP.
fn is_own(a: &std::net::SocketAddr, listen: &std::net::SocketAddr) -> bool {
    if a == listen {
        return true;
    }
    listen.ip().is_unspecified()
        && a.port() == listen.port()
        && std::net::UdpSocket::bind((a.ip(), 0)).is_ok()
}

/// The node name of the daemon at `addr`, asked over the catalog protocol.
///
/// The first connection cannot check a name it does not know yet (a TLS
/// dialer checks only that the certificate chains to the CA), so the name
/// given is taken only once a second connection, dialed as that member,
/// shows a certificate naming it: a peer holding the CA's certificate for
/// one name cannot join the membership under another. Over plain TCP there
/// is nothing to check.
async fn identify(addr: &str, dialer: &repliq_catalog::network::Dialer) -> Option<String> {
    let mut client =
        repliq_catalog::network::PeerClient::with_dialer(addr.to_string(), None, dialer.clone());
    let name = match client
        .call(
            &repliq_catalog::wire::RpcRequest::Identify,
            Duration::from_secs(2),
        )
        .await
    {
        Ok(repliq_catalog::wire::RpcReply::Identify(id)) => id.name,
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(%addr, "dns discovery: no name yet: {e}");
            return None;
        }
    };
    match tokio::time::timeout(
        repliq_catalog::network::CONNECT_TIMEOUT * 2,
        dialer.connect(addr, Some(&name)),
    )
    .await
    {
        Ok(Ok(_)) => Some(name),
        Ok(Err(e)) => {
            tracing::warn!(%addr, claimed = %name, "dns discovery: the peer's certificate does not name the member it claims to be; not a member: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, claimed = %name, "dns discovery: no name yet: the check of its certificate timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Waits (at most a minute) for a view that `ok` accepts.
    async fn wait_for(
        rx: &mut watch::Receiver<MemberView>,
        ok: impl Fn(&MemberView) -> bool,
    ) -> MemberView {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = rx.borrow_and_update().clone();
            if ok(&v) {
                return v;
            }
            assert!(
                tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_ok(),
                "no matching view within a minute; last {v:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_members_are_named_by_asking_them_and_this_node_is_found_by_its_listen_address() {
        // A real catalog node named "x" at 127.0.0.1:port, which `localhost`
        // resolves to.
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let x = repliq_catalog::Catalog::start(repliq_catalog::CatalogConfig::new(
            "x",
            addr.clone(),
            dir.path().join("x"),
            vec![("x".to_string(), addr.clone())],
        ))
        .await
        .expect("catalog x");
        let host = format!("localhost:{port}");

        // A node listening elsewhere sees x as a member, by the name x gave.
        let elsewhere: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
        let mut rx = start_dns_members(
            host.clone(),
            elsewhere,
            "y".into(),
            Some(2),
            Duration::from_secs(1),
            repliq_catalog::network::tcp_dialer(),
        );
        let v = wait_for(&mut rx, |v| !v.members.is_empty()).await;
        assert_eq!(v.members, [("x".to_string(), addr.clone())]);
        assert_eq!(v.own, None, "127.0.0.1 is not where y listens");
        assert!(v.complete("y"), "x and y are the 2 expected members");
        drop(rx);

        // The node listening at the resolved address is that address itself.
        let mut rx = start_dns_members(
            host,
            addr.parse().expect("addr"),
            "x".into(),
            Some(2),
            Duration::from_secs(1),
            repliq_catalog::network::tcp_dialer(),
        );
        let v = wait_for(&mut rx, |v| v.own.is_some()).await;
        assert_eq!(v.own.as_deref(), Some(addr.as_str()));
        assert!(v.members.is_empty(), "{v:?}");
        assert!(!v.complete("x"), "one of the 2 expected members");
        x.shutdown().await.expect("shutdown");
    }

    /// A catalog endpoint under TLS with a certificate naming `cert_name`
    /// that answers every `Identify` with `claims`.
    async fn identifying_server(
        tls: std::sync::Arc<crate::tls::Tls>,
        claims: &'static str,
    ) -> String {
        use repliq_catalog::wire::{read_frame, read_magic, read_version, write_frame};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok((mut s, _)) = tls.accept(tcp).await else {
                        return;
                    };
                    if read_magic(&mut s).await.is_err() || read_version(&mut s).await.is_err() {
                        return;
                    }
                    while let Ok(Some(repliq_catalog::wire::RpcRequest::Identify)) =
                        read_frame(&mut s).await
                    {
                        let id = repliq_catalog::wire::Identity {
                            name: claims.to_string(),
                            addr: String::new(),
                            incarnation: 1,
                            node_id: 1,
                            initialized: true,
                        };
                        let reply = repliq_catalog::wire::RpcReply::Identify(id);
                        if write_frame(&mut s, &reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_tls_a_dns_member_is_named_only_if_its_certificate_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::generate_ca("t").expect("ca");
        let load = |name: &str| {
            crate::tls::Tls::from_settings(&crate::tls::tests::write_node(dir.path(), name, &ca))
                .expect("load")
                .expect("enabled")
        };
        let dialer: repliq_catalog::network::Dialer =
            std::sync::Arc::new(crate::tls::CatalogDialer(load("y")));
        // An honest node: its certificate names "x", and it says "x".
        let honest = identifying_server(load("x"), "x").await;
        assert_eq!(identify(&honest, &dialer).await.as_deref(), Some("x"));
        // A node with a valid certificate of the CA for "mallory" that
        // claims to be "x": refused, not named.
        let liar = identifying_server(load("mallory"), "x").await;
        assert_eq!(identify(&liar, &dialer).await, None);
    }

    #[test]
    fn own_address_on_every_interface_is_a_local_ip_with_the_port() {
        let any: std::net::SocketAddr = "0.0.0.0:4000".parse().expect("addr");
        assert!(is_own(&"127.0.0.1:4000".parse().expect("addr"), &any));
        assert!(!is_own(&"127.0.0.1:4001".parse().expect("addr"), &any));
        // TEST-NET-3: not an address of this machine.
        assert!(!is_own(&"203.0.113.7:4000".parse().expect("addr"), &any));
    }
}
