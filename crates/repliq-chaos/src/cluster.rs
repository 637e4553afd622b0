//! The cluster: one network namespace per node on a private bridge, a
//! `repliq daemon` in each, and a guard that tears everything down on drop.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::compose::{self, Compose};

/// Replication port of every daemon.
pub const REPL_PORT: u16 = 31337;

/// HTTP port of every daemon (where `/api/v1/cluster` is served).
pub const HTTP_PORT: u16 = 8080;

/// Runs a command to completion; an error names the command and its stderr.
pub fn sh(args: &[&str]) -> Result<(), String> {
    sh_out(args).map(|_| ())
}

/// Runs `args` like [`sh`] and returns its stdout, trimmed.
pub fn sh_out(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) -> Result<(), String> {
    let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Fails clearly unless we are root and `ip netns` and `iptables` work.
pub fn preflight() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("repliq-chaos needs root (network namespaces, bridges, iptables)".into());
    }
    sh(&["ip", "netns", "list"]).map_err(|e| format!("{e}; install iproute2"))?;
    sh(&["iptables", "-L", "FORWARD", "-n"]).map_err(|e| format!("{e}; install iptables"))?;
    Ok(())
}

/// A daemon's configuration: `name` listening on `listen` (replication on
/// [`REPL_PORT`], HTTP on [`HTTP_PORT`]), data under `data`, `peers` the
/// YAML lines of the static peer list. With `failover_timeout_ms`, cluster
/// mode; without, `node0` is the static primary of `queues` with `min_acks`.
pub fn daemon_config(
    name: &str,
    listen: &str,
    data: &str,
    peers: &str,
    failover_timeout_ms: Option<u64>,
    queues: &[String],
    min_acks: usize,
) -> String {
    match failover_timeout_ms {
        Some(ft) => format!(
            "node:\n  name: {name}\nreplication:\n  mode: sync\n  listen: {listen}:{REPL_PORT}\n  \
             failover_timeout_ms: {ft}\n  timeout_ms: 2000\n  heartbeat_ms: 200\n  \
             discovery:\n    method: static\n    peers:\n{peers}\
             http:\n  listen: {listen}:{HTTP_PORT}\nqueue:\n  capacity: 100000000\n  persistence:\n    path: {data}\n",
        ),
        None => format!(
            "node:\n  name: {name}\nreplication:\n  mode: sync\n  primary: node0\n  listen: {listen}:{REPL_PORT}\n  \
             min_acks: {min_acks}\n  timeout_ms: 2000\n  heartbeat_ms: 200\n  discovery:\n    method: static\n    peers:\n{peers}\
             http:\n  listen: {listen}:{HTTP_PORT}\nqueue:\n  capacity: 100000000\n  names: [{}]\n  persistence:\n    path: {data}\n",
            queues.join(", "),
        ),
    }
}

/// The YAML lines of a static peer list of `(name, ip)`.
pub fn peer_lines<'a>(nodes: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    nodes
        .map(|(name, ip)| format!("      - {{ name: {name}, address: {ip}:{REPL_PORT} }}\n"))
        .collect()
}

/// One node.
pub struct Node {
    /// Node name, `node<i>`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// Its data directory (`queue.persistence.path`).
    pub data: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its daemon log.
    pub log: PathBuf,
    /// The running daemon, if any.
    pub daemon: Option<Child>,
    /// True while SIGSTOPped.
    pub paused: bool,
}

impl Node {
    /// Node `i` of a cluster in `dir`: its directory `dir/node<i>` (made
    /// here), with its data directory, config file and log inside; no daemon.
    fn new(dir: &Path, i: usize, netns: String, ip: String) -> Result<Node, String> {
        let ndir = dir.join(format!("node{i}"));
        fs::create_dir_all(&ndir).map_err(|e| format!("{}: {e}", ndir.display()))?;
        Ok(Node {
            name: format!("node{i}"),
            netns,
            ip,
            data: ndir.join("data"),
            config: ndir.join("config.yaml"),
            log: ndir.join("daemon.log"),
            daemon: None,
            paused: false,
        })
    }
}

/// The cluster and its guard: dropping it kills every process it started
/// and deletes its namespaces, bridge and host forwarding rule.
pub struct Cluster {
    /// Nodes; with a static primary, `nodes[0]` is the primary of every
    /// queue.
    pub nodes: Vec<Node>,
    /// The run's directory.
    pub dir: PathBuf,
    /// The `repliq` binary.
    pub repliq: PathBuf,
    bridge: Option<String>,
    forward_rule: bool,
    netns_made: Vec<String>,
    /// Other processes (clients, readers) killed on drop.
    pub others: Vec<Child>,
    /// The container backend (`run --compose`): daemons in containers.
    compose: Option<Compose>,
    /// The clock nemesis: libfaketime, preloaded into every daemon (and
    /// writer) with node `i`'s offset in [`Cluster::clock_file`].
    pub faketime: Option<PathBuf>,
}

impl Cluster {
    /// A cluster in `dir` with no node, network or process yet.
    fn empty(dir: &Path, repliq: &Path) -> Cluster {
        Cluster {
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            repliq: repliq.to_path_buf(),
            bridge: None,
            forward_rule: false,
            netns_made: Vec::new(),
            others: Vec::new(),
            compose: None,
            faketime: None,
        }
    }

    /// Creates the bridge, namespaces and config files (daemons not started).
    ///
    /// With `failover_timeout_ms`, the daemons run in cluster mode (static
    /// peers, no primary: the Raft catalog, per-queue leaders, failover after
    /// that timeout) and the queues are not named in the configuration (the
    /// run creates each on the node meant to lead it first). Without it,
    /// `node0` is the static primary of `queues` with `min_acks`.
    pub fn create(
        n: usize,
        dir: &Path,
        repliq: &Path,
        queues: &[String],
        min_acks: usize,
        failover_timeout_ms: Option<u64>,
    ) -> Result<Cluster, String> {
        let id = std::process::id();
        let bridge = format!("rqcb{id}");
        let mut c = Cluster::empty(dir, repliq);
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        c.bridge = Some(bridge.clone());
        sh(&["ip", "link", "set", &bridge, "up"])?;
        // With br_netfilter loaded, bridged frames cross the host's FORWARD
        // chain (policy DROP under Docker): accept ours, on our bridge only.
        sh(&[
            "iptables", "-I", "FORWARD", "1", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ])?;
        c.forward_rule = true;
        for i in 0..n {
            let ns = format!("rqc-{id}-n{i}");
            sh(&["ip", "netns", "add", &ns])?;
            c.netns_made.push(ns.clone());
            let (vh, vp) = (format!("rqv{id}n{i}"), format!("rqp{id}n{i}"));
            let ip = format!("10.77.0.{}", 10 + i);
            sh(&[
                "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vp,
            ])?;
            sh(&["ip", "link", "set", &vp, "netns", &ns])?;
            sh(&["ip", "link", "set", &vh, "master", &bridge])?;
            sh(&["ip", "link", "set", &vh, "up"])?;
            let x = |a: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns.as_str()];
                v.extend_from_slice(a);
                sh(&v)
            };
            x(&["ip", "link", "set", "lo", "up"])?;
            x(&["ip", "link", "set", &vp, "name", "eth0"])?;
            x(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            x(&["ip", "link", "set", "eth0", "up"])?;
            c.nodes.push(Node::new(dir, i, ns, ip)?);
        }
        let peers = peer_lines(c.nodes.iter().map(|n| (n.name.as_str(), n.ip.as_str())));
        for n in &c.nodes {
            let yaml = daemon_config(
                &n.name,
                &n.ip,
                &n.data.display().to_string(),
                &peers,
                failover_timeout_ms,
                queues,
                min_acks,
            );
            fs::write(&n.config, yaml).map_err(|e| format!("{}: {e}", n.config.display()))?;
        }
        Ok(c)
    }

    /// The container variant: a compose project of the product image
    /// `image` in `dir` (see [`crate::compose`]), in cluster mode with
    /// `failover_timeout_ms`; holders up, daemons not started. Node
    /// directories, configurations and logs are where [`Cluster::create`]
    /// puts them; the daemons listen on all their addresses and see their
    /// data directory at [`compose::DATA_IN_CONTAINER`].
    pub fn create_compose(
        n: usize,
        dir: &Path,
        repliq: &Path,
        failover_timeout_ms: u64,
        image: &str,
    ) -> Result<Cluster, String> {
        let (net, ip) = compose::subnet(std::process::id());
        let mut c = Cluster::empty(dir, repliq);
        for i in 0..n {
            c.nodes.push(Node::new(dir, i, String::new(), ip(i))?);
        }
        let peers = peer_lines(c.nodes.iter().map(|n| (n.name.as_str(), n.ip.as_str())));
        for n in &c.nodes {
            let yaml = daemon_config(
                &n.name,
                "0.0.0.0",
                compose::DATA_IN_CONTAINER,
                &peers,
                Some(failover_timeout_ms),
                &[],
                0,
            );
            fs::write(&n.config, yaml).map_err(|e| format!("{}: {e}", n.config.display()))?;
        }
        let specs: Vec<compose::NodeSpec> = c
            .nodes
            .iter()
            .map(|n| compose::NodeSpec {
                name: n.name.clone(),
                ip: n.ip.clone(),
                data: n.data.clone(),
                config: n.config.clone(),
            })
            .collect();
        // Set before `up` returns, so that a failure half-way is torn down.
        let project = compose::project_name(std::process::id());
        match Compose::up(dir, image, &net, &specs) {
            Ok(x) => c.compose = Some(x),
            Err(e) => {
                let file = dir.join("compose.yaml");
                let _ = compose::down_by_name(&project, &file);
                return Err(e);
            }
        }
        Ok(c)
    }

    /// Node `i`'s HTTP address.
    pub fn http(&self, i: usize) -> String {
        format!("{}:{HTTP_PORT}", self.nodes[i].ip)
    }

    /// A command run inside node `i`'s namespace.
    pub fn in_ns(&self, i: usize, program: &Path) -> Command {
        if let Some(x) = &self.compose {
            return x.enter(i, program);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i].netns])
            .arg(program);
        cmd
    }

    /// Runs `args` inside node `i`'s namespace to completion.
    pub fn ns_sh(&self, i: usize, args: &[&str]) -> Result<(), String> {
        if let Some(x) = &self.compose {
            let pid = x.holders[i].to_string();
            let mut v = vec!["nsenter", "-t", pid.as_str(), "-n", "--"];
            v.extend_from_slice(args);
            return sh(&v);
        }
        let mut v = vec!["ip", "netns", "exec", self.nodes[i].netns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Node `i`'s libfaketime offset file (`+0`, `+3600s`, `-7200s`): the
    /// clock nemesis writes it, the preloaded library re-reads it on every
    /// wall-clock read.
    pub fn clock_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("clock-{}", self.nodes[i].name))
    }

    /// With the clock nemesis, preloads libfaketime into `cmd` with node
    /// `i`'s offset file; only `CLOCK_REALTIME` is moved (monotonic clocks
    /// are left alone). Without it, does nothing.
    pub fn fake_clock(&self, i: usize, cmd: &mut Command) {
        if let Some(lib) = &self.faketime {
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", self.clock_file(i))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
    }

    /// Starts node `i`'s daemon (`ip netns exec` execs it: the child's pid
    /// is the daemon's).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        if let Some(x) = &mut self.compose {
            return x.start(i, &self.nodes[i].data);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .map_err(|e| format!("{}: {e}", self.nodes[i].log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = self.in_ns(i, &self.repliq);
        self.fake_clock(i, &mut cmd);
        let child = cmd
            .arg("daemon")
            .arg("--config")
            .arg(&self.nodes[i].config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.nodes[i].name))?;
        self.nodes[i].daemon = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Pid of node `i`'s daemon, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        if let Some(x) = &self.compose {
            return x.pid(i);
        }
        self.nodes[i].daemon.as_ref().map(Child::id)
    }

    /// kill -9 node `i`'s daemon and reap it.
    pub fn kill(&mut self, i: usize) -> Result<(), String> {
        if let Some(x) = &mut self.compose {
            self.nodes[i].paused = false;
            return x.kill(i);
        }
        if let Some(mut c) = self.nodes[i].daemon.take() {
            let _ = signal(c.id(), libc::SIGCONT);
            signal(c.id(), libc::SIGKILL)?;
            c.wait().map_err(|e| e.to_string())?;
        }
        self.nodes[i].paused = false;
        Ok(())
    }

    /// SIGTERM node `i`'s daemon, SIGKILL after `grace`.
    pub fn stop(&mut self, i: usize, grace: Duration) -> Result<(), String> {
        if let Some(x) = &mut self.compose {
            return x.stop(i, grace);
        }
        let Some(mut c) = self.nodes[i].daemon.take() else {
            return Ok(());
        };
        let _ = signal(c.id(), libc::SIGCONT);
        signal(c.id(), libc::SIGTERM)?;
        let t = Instant::now();
        while t.elapsed() < grace {
            if c.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = signal(c.id(), libc::SIGKILL);
        c.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Reaps daemons that died on their own; returns their names.
    pub fn reap_dead(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        if let Some(x) = &mut self.compose {
            for (i, why) in x.reap_dead() {
                dead.push(format!("{} {why}", self.nodes[i].name));
            }
            return dead;
        }
        for n in &mut self.nodes {
            if let Some(c) = n.daemon.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    dead.push(format!("{} exited: {st}", n.name));
                    n.daemon = None;
                }
            }
        }
        dead
    }

    /// Opens a log file for a helper process's stderr.
    pub fn log_file(&self, name: &str) -> Result<File, String> {
        let p = self.dir.join(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    fn teardown(&mut self) {
        for c in self
            .others
            .iter_mut()
            .chain(self.nodes.iter_mut().filter_map(|n| n.daemon.as_mut()))
        {
            let _ = signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &mut self.nodes {
            n.daemon = None;
        }
        self.others.clear();
        if let Some(mut x) = self.compose.take() {
            let logs: Vec<PathBuf> = self.nodes.iter().map(|n| n.log.clone()).collect();
            x.down(&logs);
        }
        for ns in self.netns_made.drain(..) {
            if let Err(e) = sh(&["ip", "netns", "del", &ns]) {
                eprintln!("repliq-chaos: cleanup: {e}");
            }
        }
        if let Some(b) = self.bridge.take() {
            if self.forward_rule {
                if let Err(e) = sh(&[
                    "iptables", "-D", "FORWARD", "-i", &b, "-o", &b, "-j", "ACCEPT",
                ]) {
                    eprintln!("repliq-chaos: cleanup: {e}");
                }
                self.forward_rule = false;
            }
            if let Err(e) = sh(&["ip", "link", "del", &b]) {
                eprintln!("repliq-chaos: cleanup: {e}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The pid in a name this tool made (`rqc-<pid>-n<i>` or `rqcb<pid>`).
fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("rqc-") {
        return rest.split('-').next()?.parse().ok();
    }
    name.strip_prefix("rqcb")?.parse().ok()
}

/// Removes namespaces, bridges and host rules left by runs whose process is
/// gone (a controller killed with SIGKILL cannot clean up after itself).
/// Only names this tool makes are touched; returns what was removed.
pub fn cleanup_stale() -> Vec<String> {
    // A zombie (killed, not yet reaped) is gone too.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    };
    let mut removed = compose::cleanup_stale(&alive);
    let out = |args: &[&str]| -> String {
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in out(&["ip", "netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_pid(name).is_some_and(|p| !alive(p)) {
            // Its daemons and clients outlived the controller: end them first.
            for pid in out(&["ip", "netns", "pids", name]).split_whitespace() {
                if let Ok(pid) = pid.parse::<u32>() {
                    let _ = signal(pid, libc::SIGCONT);
                    if signal(pid, libc::SIGKILL).is_ok() {
                        removed.push(format!("process {pid} in {name}"));
                    }
                }
            }
            if sh(&["ip", "netns", "del", name]).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    for line in out(&["ip", "-o", "link", "show", "type", "bridge"]).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        if owner_pid(name).is_some_and(|p| !alive(p)) {
            while sh(&[
                "iptables", "-D", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT",
            ])
            .is_ok()
            {
                removed.push(format!("FORWARD rule for {name}"));
            }
            if sh(&["ip", "link", "del", name]).is_ok() {
                removed.push(format!("bridge {name}"));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn only_names_made_by_this_tool_have_an_owner_pid() {
        assert_eq!(owner_pid("rqc-1234-n0"), Some(1234));
        assert_eq!(owner_pid("rqcb99"), Some(99));
        assert_eq!(owner_pid("docker0"), None);
        assert_eq!(owner_pid("rqc-x-n0"), None);
        assert_eq!(owner_pid("rqcbridge"), None);
    }
}
