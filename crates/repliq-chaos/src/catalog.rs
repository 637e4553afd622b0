//! Reading a node's view of the cluster catalog (`GET /api/v1/cluster` on
//! its HTTP port) with a minimal HTTP/1.1 client, and the hidden `catalog`
//! subcommand the controller runs inside a namespace to read it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One queue as a node's catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// Its leader, if it has one.
    pub leader: Option<String>,
    /// Its leader epoch.
    pub epoch: u32,
    /// Its replica set.
    pub replicas: Vec<String>,
    /// Its in-sync replicas.
    pub in_sync: Vec<String>,
}

/// A node's view of the catalog: its queues and members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogView {
    /// Every queue the catalog holds.
    pub queues: Vec<QueueView>,
    /// The answering node's own incarnation.
    pub incarnation: u64,
    /// Every member's name and the incarnation the catalog records for it.
    pub members: Vec<(String, u64)>,
}

impl CatalogView {
    /// The entry of queue `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueView> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The leader of queue `name`, if the catalog names one.
    pub fn leader(&self, name: &str) -> Option<&str> {
        self.queue(name)?.leader.as_deref()
    }

    /// The incarnation the catalog records for member `name`.
    pub fn member_incarnation(&self, name: &str) -> Option<u64> {
        self.members.iter().find(|(n, _)| n == name).map(|m| m.1)
    }

    /// Parses the body of `/api/v1/cluster`; `None` if it holds no catalog.
    pub fn parse(body: &str) -> Option<CatalogView> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let cat = v.get("catalog")?;
        let qs = cat.get("queues")?.as_array()?;
        let incarnation = cat.get("incarnation").and_then(|i| i.as_u64()).unwrap_or(0);
        let members = cat
            .get("members")
            .and_then(|m| m.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some((
                            m.get("name")?.as_str()?.to_string(),
                            m.get("incarnation")?.as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // `replicas` is a list of `{node, in_sync, ...}`.
        let replicas = |q: &serde_json::Value, only_in_sync: bool| -> Vec<String> {
            q.get("replicas")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter(|r| {
                            !only_in_sync
                                || r.get("in_sync").and_then(|b| b.as_bool()) == Some(true)
                        })
                        .filter_map(|r| r.get("node")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let queues = qs
            .iter()
            .filter_map(|q| {
                Some(QueueView {
                    name: q.get("name")?.as_str()?.to_string(),
                    leader: q.get("leader").and_then(|l| l.as_str()).map(str::to_string),
                    epoch: q
                        .get("epoch")
                        .and_then(|e| e.as_u64())
                        .and_then(|e| u32::try_from(e).ok())
                        .unwrap_or(0),
                    replicas: replicas(q, false),
                    in_sync: replicas(q, true),
                })
            })
            .collect();
        Some(CatalogView {
            queues,
            incarnation,
            members,
        })
    }
}

/// `GET path` on `addr`; the body of a 200 answer, else `None`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Option<String> {
    let sa: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Some(dechunk(body));
    }
    Some(body.to_string())
}

/// Decodes a chunked body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The catalog as the node at `http` serves it.
pub fn fetch(http: &str, timeout: Duration) -> Option<CatalogView> {
    CatalogView::parse(&http_get(http, "/api/v1/cluster", timeout)?)
}

/// Arguments of the hidden `repliq-chaos catalog`.
#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    /// The node's HTTP address.
    #[arg(long)]
    pub http: String,
    /// The API path (the clock nemesis reads `/api/v1/node`'s `time_unix`).
    #[arg(long, default_value = "/api/v1/cluster")]
    pub path: String,
}

/// Prints the raw body of `path` (the catalog, by default) on a node; exit 1
/// if unreachable.
pub fn print(a: CatalogArgs) -> i32 {
    match http_get(&a.http, &a.path, Duration::from_millis(800)) {
        Some(body) => {
            println!("{body}");
            0
        }
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leaders_epochs_and_replica_sets() {
        let body = r#"{"catalog":{"queues":[
            {"name":"s0","leader":"node1","epoch":3,"replicas":[
                {"node":"node0","in_sync":false},{"node":"node1","in_sync":true},
                {"node":"node2","in_sync":true}]},
            {"name":"a0","leader":null,"epoch":1,"replicas":[{"node":"node2","in_sync":false}]}]}}"#;
        let c = CatalogView::parse(body).expect("a catalog");
        assert_eq!(c.leader("s0"), Some("node1"));
        assert_eq!(c.queue("s0").map(|q| q.epoch), Some(3));
        assert_eq!(
            c.queue("s0").map(|q| q.in_sync.clone()),
            Some(vec!["node1".to_string(), "node2".to_string()])
        );
        assert_eq!(c.queue("s0").map(|q| q.replicas.len()), Some(3));
        assert_eq!(c.leader("a0"), None);
        assert_eq!(c.leader("zz"), None);
        assert!(CatalogView::parse(r#"{"catalog":null}"#).is_none());
        assert!(CatalogView::parse("not json").is_none());
    }

    #[test]
    fn parses_the_node_incarnation_and_the_members_incarnations_exactly() {
        // Incarnations use all 64 bits: they must not pass through f64.
        let body = r#"{"catalog":{"incarnation":1883322655713992700,"queues":[],
            "members":[{"name":"node0","incarnation":18446744073709551615},
                       {"name":"node1","incarnation":1883318900431105111}]}}"#;
        let c = CatalogView::parse(body).expect("a catalog");
        assert_eq!(c.incarnation, 1883322655713992700);
        assert_eq!(c.member_incarnation("node0"), Some(u64::MAX));
        assert_eq!(c.member_incarnation("node1"), Some(1883318900431105111));
        assert_eq!(c.member_incarnation("node2"), None);
    }

    #[test]
    fn dechunks_a_chunked_body() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }
}
