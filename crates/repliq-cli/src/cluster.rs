//! `repliq cluster`: the cluster as a daemon in cluster mode sees it.

use serde_json::Value;

use crate::top::get_json;

/// Arguments of `repliq cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Members, the catalog's leader and term, and every queue's leader,
    /// epoch, replicas and lag.
    Status {
        /// A daemon's HTTP address (its `http.listen`), `host:port`.
        #[arg(default_value = "127.0.0.1:8080", value_name = "ADDR")]
        addr: String,
        /// Print the JSON of `/api/v1/cluster` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A planned leader change: the leader pauses appends until NODE holds
    /// its whole log, then NODE leads the next epoch. Nothing is lost.
    Transfer {
        /// The queue.
        queue: String,
        /// The replica to lead it.
        node: String,
        /// A daemon's HTTP address, `host:port`.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        http: String,
    },
    /// Makes NODE the queue's leader at once, whatever its log holds
    /// (records only the old leader has are cut into quarantine when it
    /// returns). Needs --unclean; logged by the daemon.
    Promote {
        /// The queue.
        queue: String,
        /// The replica to lead it.
        node: String,
        /// Accept that acknowledged records may be lost.
        #[arg(long)]
        unclean: bool,
        /// A daemon's HTTP address, `host:port`.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        http: String,
    },
}

/// Runs `repliq cluster` and returns the exit code.
pub fn run(a: ClusterArgs) -> i32 {
    match a.command {
        ClusterCommand::Transfer { queue, node, http } => {
            let started = std::time::Instant::now();
            match post(
                &http,
                &format!("/api/v1/cluster/transfer?queue={queue}&to={node}"),
            ) {
                Ok(_) => {}
                Err(e) => {
                    eprintln!("repliq: error: {e}");
                    return 1;
                }
            }
            let deadline = started + std::time::Duration::from_secs(60);
            loop {
                if let Ok(v) = get_json(&http, "/api/v1/cluster") {
                    let q = v["catalog"]["queues"]
                        .as_array()
                        .and_then(|qs| qs.iter().find(|q| q["name"] == queue.as_str()).cloned());
                    if let Some(q) = q {
                        if q["leader"] == node.as_str() {
                            println!(
                                "{node} leads {queue} in epoch {} ({} ms)",
                                s(&q["epoch"]),
                                started.elapsed().as_millis()
                            );
                            return 0;
                        }
                    }
                }
                if std::time::Instant::now() > deadline {
                    eprintln!("repliq: error: {node} did not take over {queue} within 60 s (the transfer is cancelled when the target cannot catch up)");
                    return 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        ClusterCommand::Promote {
            queue,
            node,
            unclean,
            http,
        } => {
            if !unclean {
                eprintln!("repliq: error: promote may lose acknowledged records: pass --unclean (or use `repliq cluster transfer`)");
                return 2;
            }
            match post(
                &http,
                &format!("/api/v1/cluster/promote?queue={queue}&to={node}&unclean=true"),
            ) {
                Ok(body) => {
                    println!("{body}");
                    0
                }
                Err(e) => {
                    eprintln!("repliq: error: {e}");
                    1
                }
            }
        }
        ClusterCommand::Status { addr, json } => match get_json(&addr, "/api/v1/cluster") {
            Ok(v) if json => {
                println!("{v}");
                0
            }
            Ok(v) => match render(&v) {
                Some(text) => {
                    print!("{text}");
                    0
                }
                None => {
                    eprintln!("repliq: error: {addr} is not in cluster mode (no catalog in /api/v1/cluster)");
                    1
                }
            },
            Err(e) => {
                eprintln!("repliq: error: {addr}: {e}");
                1
            }
        },
    }
}

/// `POST path` with an empty body; the answer's body, or an error with the
/// daemon's reason.
fn post(addr: &str, path: &str) -> Result<String, String> {
    let (status, body) =
        crate::http_client::request(addr, "POST", path, std::time::Duration::from_secs(30))?;
    match status.as_str() {
        "200" => Ok(body.trim().to_string()),
        code => Err(format!("{addr}: HTTP {code}: {}", body.trim())),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The text view of `/api/v1/cluster`, or `None` outside cluster mode.
fn render(v: &Value) -> Option<String> {
    let c = v.get("catalog")?;
    let mut out = String::new();
    out.push_str(&format!(
        "catalog: leader {}  term {}  applied {}  voters {}\n",
        s(&c["leader"]),
        s(&c["term"]),
        s(&c["commit_index"]),
        c["voters"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "seen from {}: factor {}  failover timeout {} ms\n\nMEMBER       ADDRESS                INCARNATION          VOTER\n",
        s(&v["node"]),
        s(&c["factor"]),
        s(&c["failover_timeout_ms"])
    ));
    for m in c["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<12} {:<22} {:<20} {}\n",
            s(&m["name"]),
            s(&m["address"]),
            s(&m["incarnation"]),
            if m["voter"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        ));
    }
    out.push_str("\nQUEUE        LEADER       EPOCH  REPLICAS (node:tail lag, * in sync)\n");
    for q in c["queues"].as_array().into_iter().flatten() {
        let reps: Vec<String> = q["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}{}:{} {}",
                    s(&r["node"]),
                    if r["in_sync"].as_bool() == Some(true) {
                        "*"
                    } else {
                        ""
                    },
                    s(&r["tail"]),
                    s(&r["lag_bytes"])
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<12} {:<12} {:<6} {}\n",
            s(&q["name"]),
            s(&q["leader"]),
            s(&q["epoch"]),
            reps.join("  ")
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_catalog_and_refuses_a_node_outside_cluster_mode() {
        assert!(render(&serde_json::json!({"node": "a", "nodes": []})).is_none());
        let v = serde_json::json!({
            "node": "a",
            "catalog": {
                "leader": "b", "term": 3, "commit_index": 40, "voters": ["a", "b", "c"],
                "factor": 3, "failover_timeout_ms": 3000,
                "members": [{"name": "a", "address": "10.0.0.1:31337", "incarnation": 7, "voter": true}],
                "queues": [{"name": "orders", "leader": "b", "epoch": 2, "replicas": [
                    {"node": "a", "in_sync": true, "tail": 136, "lag_bytes": 0}
                ]}]
            }
        });
        let t = render(&v).expect("cluster mode");
        assert!(
            t.contains("catalog: leader b  term 3  applied 40  voters a,b,c"),
            "{t}"
        );
        assert!(
            t.contains("orders       b            2      a*:136 0"),
            "{t}"
        );
    }
}
