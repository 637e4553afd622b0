//! The cluster act of `repliq demo`: three local daemons in cluster mode, a
//! writer, SIGKILL of the queue's leader, automatic failover, the old leader
//! rejoining, and a count showing that nothing replicated was lost.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repliq::store::{Store, StoreOptions};

/// How long any step may take before the act gives up (generous: a busy
/// 2-CPU machine is slow, never wrong).
const PATIENCE: Duration = Duration::from_secs(60);
/// Failover timeout of the demo cluster.
const FAILOVER_MS: u64 = 2000;
/// Messages the writer appends before the kill.
const MESSAGES: usize = 1000;

struct Member {
    name: &'static str,
    root: PathBuf,
    http: String,
    child: Option<Child>,
}

impl Member {
    fn queue(&self) -> PathBuf {
        self.root.join("data").join("orders")
    }
    fn start(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("log"))
            .map_err(|e| format!("log of {}: {e}", self.name))?;
        let child = Command::new(exe)
            .args(["daemon", "--config"])
            .arg(self.root.join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start daemon {}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Waits for `f` to return `Some`, up to [`PATIENCE`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {PATIENCE:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every record's (id, epoch, payload) in the queue at `dir`.
fn records(dir: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let Ok(s) = Store::open(dir, &StoreOptions::open().skip_recovery()) else {
        return Vec::new();
    };
    let mut t = s.tailer();
    let mut out = Vec::new();
    while let Ok(Some(r)) = t.next() {
        out.push((r.id, r.epoch, r.payload));
    }
    out
}

/// Runs the act; prints as it goes.
pub fn act(step: u32) -> Result<(), String> {
    println!("{step}. A replicated cluster that fails over by itself.");
    println!("   Three daemons on loopback list each other as peers and name no primary:");
    println!("   they run a Raft catalog and give each queue a leader and an epoch.");
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let names = ["a", "b", "c"];
    let mut ports = Vec::new();
    for _ in names {
        ports.push((free_port()?, free_port()?));
    }
    let peers: String = names
        .iter()
        .zip(&ports)
        .map(|(n, (r, _))| format!("      - {{name: {n}, address: \"127.0.0.1:{r}\"}}\n"))
        .collect();
    let mut members = Vec::new();
    for (n, (r, h)) in names.iter().zip(&ports) {
        let root = tmp.path().join(n);
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let cfg = format!(
            "node:\n  name: {n}\nreplication:\n  mode: async\n  listen: 127.0.0.1:{r}\n  \
             failover_timeout_ms: {FAILOVER_MS}\n  discovery:\n    method: static\n    \
             peers:\n{peers}queue:\n  persistence:\n    path: {}\nhttp:\n  listen: 127.0.0.1:{h}\n",
            root.join("data").display()
        );
        std::fs::write(root.join("config.yaml"), cfg).map_err(|e| format!("config of {n}: {e}"))?;
        members.push(Member {
            name: n,
            root,
            http: format!("127.0.0.1:{h}"),
            child: None,
        });
    }
    let started = Instant::now();
    for m in &mut members {
        m.start()?;
    }
    let qa = members[0].queue();
    let writer = Store::open(&qa, &StoreOptions::create())
        .map_err(|e| format!("create the queue on a: {e}"))?;
    for i in 0..MESSAGES {
        writer
            .append(format!("order {i}").as_bytes())
            .map_err(|e| format!("append on a: {e}"))?;
    }
    let written = records(&qa);
    drop(writer);
    println!("   A writer created queue `orders` on node a and appended {MESSAGES} messages.");
    let (qb, qc) = (members[1].queue(), members[2].queue());
    wait_for("replication to b and c", || {
        (records(&qb) == written && records(&qc) == written).then_some(())
    })?;
    println!(
        "   It was registered in the catalog; b and c hold all {MESSAGES} {} ms after the daemons started.",
        started.elapsed().as_millis()
    );
    members[0].kill();
    let killed = Instant::now();
    println!("   Now node a, the queue's leader, is killed with SIGKILL.");
    let (leader, dir) = wait_for("a new leader", || {
        for (name, dir) in [("b", &qb), ("c", &qc)] {
            let ok = Store::open(dir, &StoreOptions::open().skip_recovery())
                .and_then(|s| s.append(b"first order after the failover"))
                .is_ok();
            if ok {
                return Some((name, dir.clone()));
            }
        }
        None
    })?;
    let after = records(&dir);
    let kept = written.iter().filter(|r| after.contains(r)).count();
    println!(
        "   After {} ms (failover timeout {FAILOVER_MS} ms) node {leader} leads epoch {} and takes appends.",
        killed.elapsed().as_millis(),
        after.last().map_or(0, |r| r.1)
    );
    println!("   Of the {MESSAGES} messages a had replicated, {kept} are on the new leader.");
    if kept != MESSAGES {
        return Err(format!("{} replicated messages lost", MESSAGES - kept));
    }
    members[0].start()?;
    let t = Instant::now();
    // Watched through the catalog (a's reports), not by opening a's queue:
    // a handle held here would keep a's daemon from recovering it alone.
    let leader_tail = Store::open(&dir, &StoreOptions::open().skip_recovery())
        .map_err(|e| format!("open the new leader's queue: {e}"))?
        .tail_position();
    wait_for("a rejoining", || {
        let v = crate::top::get_json(&members[0].http, "/api/v1/cluster").ok()?;
        let q = v["catalog"]["queues"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == "orders")?
            .clone();
        let tail_of =
            |n: &str| q["replicas"].as_array()?.iter().find(|r| r["node"] == n)?["tail"].as_u64();
        (tail_of("a")? == leader_tail && tail_of(leader)? == leader_tail).then_some(())
    })?;
    if records(&qa) != records(&dir) {
        return Err("a's log differs from the new leader's after it rejoined".into());
    }
    println!(
        "   Node a restarted and follows {leader} within {} ms: its log is the new leader's, record for record.",
        t.elapsed().as_millis()
    );
    println!("   (`repliq cluster status` shows members, leaders and epochs; docs/operations.md,");
    println!("   \"Cluster mode\", says what each failure does.)");
    println!();
    Ok(())
}
