//! The container backend of [`crate::cluster::Cluster`] (`run --compose`):
//! each node is a pod-like pair of containers of the product image, made by
//! a generated compose file in the run's directory:
//!
//! - `hold<i>` (`sleep infinity` under Docker's init) owns the node's
//!   network namespace (its fixed address on the run's own compose network)
//!   and pid namespace;
//! - `node<i>` runs `repliq daemon` in those namespaces
//!   (`network_mode`/`pid: service:hold<i>`), its data directory a bind
//!   mount of `node<i>/data` in the run's directory, its configuration
//!   `node<i>/config.yaml` (read-only).
//!
//! Killing, pausing or restarting `node<i>` leaves the namespaces, and the
//! workload clients in them, in place: the clients enter `hold<i>`'s network
//! and pid namespaces from the host ([`enter_if_asked`]), as a sidecar
//! would, and see the daemon's files through the same bind mount. They must
//! share its pid namespace: a store reader that waits on a record checks
//! whether the pid that claimed it is alive *in its own namespace*.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{sh, sh_out as out};

/// Prefix of every compose project, container and network this tool makes:
/// `rqchaos-<pid>`.
pub const PROJECT_PREFIX: &str = "rqchaos-";

/// uid and gid of the daemon in the product image (`REPLIQ_UID`).
pub const IMAGE_UID: u32 = 10001;

/// The environment variable that makes this binary enter a node's
/// namespaces first: `<host pid>:<uid>:<gid>:<program>`.
const ENTER_VAR: &str = "REPLIQ_CHAOS_ENTER";

/// The project name of the run with controller pid `pid`.
pub fn project_name(pid: u32) -> String {
    format!("{PROJECT_PREFIX}{pid}")
}

/// The controller pid in a project, container or network name this tool
/// made (`rqchaos-<pid>`, `rqchaos-<pid>-node0`, `rqchaos-<pid>_chaos`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PROJECT_PREFIX)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (digits, tail) = rest.split_at(end);
    if !(tail.is_empty() || tail.starts_with('-') || tail.starts_with('_')) {
        return None;
    }
    digits.parse().ok()
}

/// The name of project `project`'s bridge (`rqchaos<pid>`, at most 15
/// bytes), set in the compose file so that it is recognisable on the host.
pub fn bridge_name(project: &str) -> String {
    project.replace('-', "")
}

/// The run's private subnet, `10.78.<k>.0/24`, and node `i`'s address in
/// it (`.10 + i`).
pub fn subnet(pid: u32) -> (String, impl Fn(usize) -> String) {
    let k = 16 + pid % 224;
    (format!("10.78.{k}.0/24"), move |i| {
        format!("10.78.{k}.{}", 10 + i)
    })
}

/// One node of the compose file.
pub struct NodeSpec {
    /// `node<i>`.
    pub name: String,
    /// Its address on the run's network.
    pub ip: String,
    /// Host directory mounted at the daemon's data directory.
    pub data: PathBuf,
    /// Host file mounted as the daemon's configuration.
    pub config: PathBuf,
}

/// The daemon's data directory inside its container.
pub const DATA_IN_CONTAINER: &str = "/var/lib/repliq/data";
/// The daemon's configuration inside its container.
const CONFIG_IN_CONTAINER: &str = "/etc/repliq/config.yaml";

/// The compose file (JSON, which compose reads as YAML) of project
/// `project`: a network with `subnet`, and per node a holder and a daemon
/// container of `image` (see the module documentation).
pub fn compose_file(project: &str, image: &str, subnet: &str, nodes: &[NodeSpec]) -> String {
    let mut services = serde_json::Map::new();
    for n in nodes {
        let hold = format!("hold{}", n.name.trim_start_matches("node"));
        services.insert(
            hold.clone(),
            serde_json::json!({
                "image": image,
                "container_name": format!("{project}-{hold}"),
                "hostname": n.name,
                "entrypoint": ["sleep", "infinity"],
                // Docker's init as pid 1 of the node's pid namespace: it
                // reaps the clients killed in it (writer-kill).
                "init": true,
                "read_only": true,
                "restart": "no",
                "stop_grace_period": "1s",
                "healthcheck": {"disable": true},
                // The image's VOLUME, so that no anonymous volume is made.
                "tmpfs": ["/var/lib/repliq"],
                "networks": {"chaos": {"ipv4_address": n.ip}},
            }),
        );
        services.insert(
            n.name.clone(),
            serde_json::json!({
                "image": image,
                "container_name": format!("{project}-{}", n.name),
                "read_only": true,
                "restart": "no",
                "stop_grace_period": "10s",
                "network_mode": format!("service:{hold}"),
                "pid": format!("service:{hold}"),
                "depends_on": [hold],
                "command": ["daemon", "--config", CONFIG_IN_CONTAINER],
                "environment": {"REPLIQ_LOG": "info,openraft=warn"},
                "volumes": [
                    format!("{}:{DATA_IN_CONTAINER}", n.data.display()),
                    format!("{}:{CONFIG_IN_CONTAINER}:ro", n.config.display()),
                ],
            }),
        );
    }
    let doc = serde_json::json!({
        "version": "2.4",
        "services": services,
        "networks": {"chaos": {
            "driver": "bridge",
            "driver_opts": {"com.docker.network.bridge.name": bridge_name(project)},
            "ipam": {"config": [{"subnet": subnet}]},
        }},
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The compose command of this machine: `docker compose` or
/// `docker-compose`.
fn compose_cmd() -> Result<Vec<String>, String> {
    let ok = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(&["docker", "compose", "version"]) {
        Ok(vec!["docker".into(), "compose".into()])
    } else if ok(&["docker-compose", "version"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        Err("neither `docker compose` nor `docker-compose` works".into())
    }
}

/// Fails clearly unless docker, compose and `image` are there.
pub fn preflight(image: &str) -> Result<(), String> {
    out(&["docker", "info", "--format", "{{.ServerVersion}}"])
        .map_err(|e| format!("{e}; is the docker daemon running?"))?;
    compose_cmd()?;
    out(&["docker", "image", "inspect", "--format", "{{.Id}}", image]).map_err(|_| {
        format!(
            "no image {image}: build it (bash .ci/docker.sh, or docker build -f \
             deploy/docker/Dockerfile -t {image} .)"
        )
    })?;
    Ok(())
}

/// A running compose project; [`Compose::down`] removes it.
pub struct Compose {
    /// Project name.
    pub project: String,
    /// The generated compose file.
    pub file: PathBuf,
    cmd: Vec<String>,
    /// Host pid of each node's holder (its namespaces).
    pub holders: Vec<u32>,
    /// Whether each daemon container should be running.
    pub running: Vec<bool>,
    up: bool,
}

impl Compose {
    /// Writes the compose file into `dir`, creates the network and all
    /// containers, and starts the holders (not the daemons).
    pub fn up(
        dir: &Path,
        image: &str,
        subnet: &str,
        nodes: &[NodeSpec],
    ) -> Result<Compose, String> {
        let project = project_name(std::process::id());
        let file = dir.join("compose.yaml");
        fs::write(&file, compose_file(&project, image, subnet, nodes))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        for n in nodes {
            prepare_data(&n.data)?;
        }
        let mut c = Compose {
            project,
            file,
            cmd: compose_cmd()?,
            holders: Vec::new(),
            running: vec![false; nodes.len()],
            up: false,
        };
        c.up = true;
        // The holders first: compose resolves `service:hold<i>` when it
        // creates a daemon's container, and creates a container with the
        // default network and pid namespace if the holder is not there yet.
        let holds: Vec<String> = (0..nodes.len()).map(|i| format!("hold{i}")).collect();
        let daemons: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let mut args = vec!["up", "-d"];
        args.extend(holds.iter().map(String::as_str));
        c.compose(&args)?;
        let mut args = vec!["up", "--no-start", "--no-deps"];
        args.extend(&daemons);
        c.compose(&args)?;
        for i in 0..nodes.len() {
            let name = c.holder(i);
            let pid: u32 = out(&["docker", "inspect", "-f", "{{.State.Pid}}", &name])?
                .parse()
                .map_err(|e| format!("pid of {name}: {e}"))?;
            if pid == 0 {
                return Err(format!("{name} is not running"));
            }
            c.holders.push(pid);
        }
        Ok(c)
    }

    fn compose(&self, args: &[&str]) -> Result<(), String> {
        let file = self.file.display().to_string();
        let mut v: Vec<&str> = self.cmd.iter().map(String::as_str).collect();
        v.extend_from_slice(&["-p", &self.project, "-f", &file]);
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Container name of node `i`'s daemon.
    pub fn daemon(&self, i: usize) -> String {
        format!("{}-node{i}", self.project)
    }

    /// Container name of node `i`'s holder.
    pub fn holder(&self, i: usize) -> String {
        format!("{}-hold{i}", self.project)
    }

    /// A command that runs `program` in node `i`'s network and pid
    /// namespaces as the image's user, on the host's filesystem.
    pub fn enter(&self, i: usize, program: &Path) -> Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let mut cmd = Command::new(exe);
        cmd.env(
            ENTER_VAR,
            format!(
                "{}:{IMAGE_UID}:{IMAGE_UID}:{}",
                self.holders[i],
                program.display()
            ),
        );
        cmd
    }

    /// Starts node `i`'s daemon container.
    pub fn start(&mut self, i: usize, data: &Path) -> Result<(), String> {
        prepare_data(data)?;
        sh(&["docker", "start", &self.daemon(i)])?;
        self.running[i] = true;
        // The daemon must be in its holder's namespaces, or partitions and
        // the clients would miss it.
        let pid = self
            .pid(i)
            .ok_or_else(|| format!("{} stopped at once", self.daemon(i)))?;
        for ns in ["net", "pid"] {
            let a = fs::read_link(format!("/proc/{pid}/ns/{ns}"));
            let b = fs::read_link(format!("/proc/{}/ns/{ns}", self.holders[i]));
            if a.is_err() || a.ok() != b.ok() {
                return Err(format!(
                    "{} is not in {}'s {ns} namespace",
                    self.daemon(i),
                    self.holder(i)
                ));
            }
        }
        Ok(())
    }

    /// Host pid of node `i`'s daemon, if its container runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        if !self.running[i] {
            return None;
        }
        out(&["docker", "inspect", "-f", "{{.State.Pid}}", &self.daemon(i)])
            .ok()?
            .parse()
            .ok()
            .filter(|p| *p != 0)
    }

    /// `docker kill -s KILL` node `i`'s daemon; returns when it is down.
    pub fn kill(&mut self, i: usize) -> Result<(), String> {
        if let Some(pid) = self.pid(i) {
            let _ = crate::cluster::signal(pid, libc::SIGCONT);
        }
        let name = self.daemon(i);
        let _ = sh(&["docker", "kill", "-s", "KILL", &name]);
        self.running[i] = false;
        self.wait_stopped(&name, Duration::from_secs(20))
    }

    /// `docker stop` node `i`'s daemon (SIGTERM, SIGKILL after `grace`).
    pub fn stop(&mut self, i: usize, grace: Duration) -> Result<(), String> {
        if !self.running[i] {
            return Ok(());
        }
        if let Some(pid) = self.pid(i) {
            let _ = crate::cluster::signal(pid, libc::SIGCONT);
        }
        self.running[i] = false;
        sh(&[
            "docker",
            "stop",
            "-t",
            &grace.as_secs().max(1).to_string(),
            &self.daemon(i),
        ])
    }

    fn wait_stopped(&self, name: &str, limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            if out(&["docker", "inspect", "-f", "{{.State.Running}}", name]).as_deref()
                == Ok("false")
            {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "{name} still runs {} s after SIGKILL",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Daemon containers that stopped on their own, with their exit codes.
    pub fn reap_dead(&mut self) -> Vec<(usize, String)> {
        let mut dead = Vec::new();
        for i in 0..self.running.len() {
            if !self.running[i] {
                continue;
            }
            let name = self.daemon(i);
            if let Ok(s) = out(&[
                "docker",
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &name,
            ]) {
                if let Some(code) = s.strip_prefix("false ") {
                    self.running[i] = false;
                    dead.push((i, format!("container {name} exited with code {code}")));
                }
            }
        }
        dead
    }

    /// Writes each daemon container's log to `logs[i]`, then removes the
    /// project: containers, network, volumes.
    pub fn down(&mut self, logs: &[PathBuf]) {
        if !self.up {
            return;
        }
        for (i, log) in logs.iter().enumerate() {
            if let Some(pid) = self.pid(i) {
                let _ = crate::cluster::signal(pid, libc::SIGCONT);
            }
            if let Ok(f) = fs::File::create(log) {
                let e = f.try_clone();
                let mut cmd = Command::new("docker");
                cmd.args(["logs", &self.daemon(i)])
                    .stdin(Stdio::null())
                    .stdout(f);
                if let Ok(e) = e {
                    cmd.stderr(e);
                }
                let _ = cmd.status();
            }
        }
        if let Err(e) = self.compose(&["down", "-v", "-t", "1"]) {
            eprintln!("repliq-chaos: cleanup: {e}");
        }
        self.up = false;
    }
}

/// `compose down -v` of project `project` with file `file`, for a project
/// whose [`Compose::up`] failed half-way.
pub fn down_by_name(project: &str, file: &Path) -> Result<(), String> {
    let f = file.display().to_string();
    let mut v: Vec<String> = compose_cmd()?;
    v.extend(["-p", project, "-f", &f, "down", "-v", "-t", "1"].map(String::from));
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    sh(&v)
}

/// Makes `data` (and its parents) and hands it to the image's user.
fn prepare_data(data: &Path) -> Result<(), String> {
    fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let d = data.display().to_string();
    let owner = format!("{IMAGE_UID}:{IMAGE_UID}");
    sh(&["chown", "-R", &owner, &d])
}

/// Removes containers and networks of chaos projects whose controller is
/// gone; `alive` says whether a pid is. Returns what was removed.
pub fn cleanup_stale(alive: &dyn Fn(u32) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    let filter = format!("name={PROJECT_PREFIX}");
    let list = |args: &[&str]| -> Vec<String> {
        out(args)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    };
    for name in list(&[
        "docker",
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        "{{.Names}}",
    ]) {
        if owner_pid(&name).is_some_and(|p| !alive(p))
            && sh(&["docker", "rm", "-f", "-v", &name]).is_ok()
        {
            removed.push(format!("container {name}"));
        }
    }
    for name in list(&[
        "docker",
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ]) {
        if owner_pid(&name).is_some_and(|p| !alive(p))
            && sh(&["docker", "network", "rm", &name]).is_ok()
        {
            removed.push(format!("network {name}"));
        }
    }
    removed
}

/// If this process was started by [`Compose::enter`]: enters the node's
/// network and pid namespaces, forks, and in the child (killed with SIGKILL
/// if this parent dies) drops to the image's user and execs the program
/// with this process's arguments; the parent exits with the child's status.
/// Returns without doing anything otherwise. Call first in `main`, while
/// the process has one thread.
pub fn enter_if_asked() {
    let Ok(spec) = std::env::var(ENTER_VAR) else {
        return;
    };
    std::env::remove_var(ENTER_VAR);
    let code = match enter(&spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("repliq-chaos: enter: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Parses `<pid>:<uid>:<gid>:<program>`.
pub fn parse_enter_spec(spec: &str) -> Result<(u32, u32, u32, PathBuf), String> {
    let mut it = spec.splitn(4, ':');
    let mut num = |what: &str| -> Result<u32, String> {
        it.next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad {ENTER_VAR} {spec:?}: no {what}"))
    };
    let (pid, uid, gid) = (num("pid")?, num("uid")?, num("gid")?);
    let program = it
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("bad {ENTER_VAR} {spec:?}: no program"))?;
    Ok((pid, uid, gid, PathBuf::from(program)))
}

fn enter(spec: &str) -> Result<i32, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (pid, uid, gid, program) = parse_enter_spec(spec)?;
    for (ns, flag) in [("net", libc::CLONE_NEWNET), ("pid", libc::CLONE_NEWPID)] {
        let path = format!("/proc/{pid}/ns/{ns}");
        let f = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: setns(2) on a valid, open namespace fd; no memory is shared.
        if unsafe { libc::setns(f.as_raw_fd(), flag) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: fork(2) while this process has a single thread (the caller's
    // contract): the child may run arbitrary code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // The image's user first: a change of credentials clears the
        // parent-death signal, so it is set after.
        // SAFETY: setgroups(0, NULL), setgid and setuid read no memory.
        let creds = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0
        };
        if !creds {
            eprintln!(
                "repliq-chaos: cannot become {uid}:{gid}: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(126);
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; no memory.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // The parent may have died before the line above: then this child
        // was handed to the namespace's init. The parent, outside this pid
        // namespace, shows as 0 while it lives.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != 0 {
            std::process::exit(1);
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        let err = Command::new(&program).args(&args).exec();
        eprintln!("repliq-chaos: exec {}: {err}", program.display());
        std::process::exit(127);
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    let r = unsafe { libc::waitpid(child, &mut status, 0) };
    if r < 0 {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeSpec> {
        let (_, ip) = subnet(4321);
        (0..3)
            .map(|i| NodeSpec {
                name: format!("node{i}"),
                ip: ip(i),
                data: PathBuf::from(format!("/out/node{i}/data")),
                config: PathBuf::from(format!("/out/node{i}/config.yaml")),
            })
            .collect()
    }

    #[test]
    fn each_daemon_joins_its_own_holders_namespaces_and_mounts_its_own_dirs() {
        let (net, _) = subnet(4321);
        let doc: serde_json::Value =
            serde_json::from_str(&compose_file("rqchaos-4321", "repliq:ci", &net, &nodes()))
                .expect("the compose file is JSON");
        let s = &doc["services"];
        let mut ips = Vec::new();
        for i in 0..3 {
            let d = &s[format!("node{i}")];
            let h = &s[format!("hold{i}")];
            assert_eq!(d["network_mode"], format!("service:hold{i}"));
            assert_eq!(d["pid"], format!("service:hold{i}"));
            assert_eq!(h["init"], true, "a reaper for the clients");
            assert_eq!(d["container_name"], format!("rqchaos-4321-node{i}"));
            assert_eq!(h["container_name"], format!("rqchaos-4321-hold{i}"));
            assert_eq!(
                d["volumes"][0],
                format!("/out/node{i}/data:{DATA_IN_CONTAINER}")
            );
            assert!(d["volumes"][1].as_str().is_some_and(|v| v
                .starts_with(&format!("/out/node{i}/config.yaml:"))
                && v.ends_with(":ro")));
            assert!(
                d.get("networks").is_none(),
                "the daemon has no network of its own"
            );
            let ip = h["networks"]["chaos"]["ipv4_address"]
                .as_str()
                .expect("an address")
                .to_string();
            assert!(
                ip.starts_with("10.78.")
                    && net.starts_with(ip.rsplit_once('.').map_or("", |p| p.0))
            );
            ips.push(ip);
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3, "distinct addresses");
        assert_eq!(doc["networks"]["chaos"]["ipam"]["config"][0]["subnet"], net);
        let bridge = &doc["networks"]["chaos"]["driver_opts"]["com.docker.network.bridge.name"];
        assert_eq!(bridge, "rqchaos4321");
    }

    #[test]
    fn the_bridge_name_fits_a_linux_interface_name() {
        let b = bridge_name(&project_name(4_194_304));
        assert_eq!(b, "rqchaos4194304");
        assert!(b.len() <= 15, "a Linux interface name has at most 15 bytes");
    }

    #[test]
    fn only_names_of_chaos_projects_have_an_owner_pid() {
        assert_eq!(owner_pid("rqchaos-77"), Some(77));
        assert_eq!(owner_pid("rqchaos-77-node2"), Some(77));
        assert_eq!(owner_pid("rqchaos-77_chaos"), Some(77));
        assert_eq!(owner_pid("rqchaos-77x"), None);
        assert_eq!(owner_pid("rqchaos-"), None);
        assert_eq!(owner_pid("repliq-1"), None);
        assert_eq!(owner_pid("bridge"), None);
    }

    #[test]
    fn an_enter_spec_names_pid_uid_gid_and_program() {
        assert_eq!(
            parse_enter_spec("12:10001:10002:/a/b:c").expect("valid"),
            (12, 10001, 10002, PathBuf::from("/a/b:c"))
        );
        assert!(parse_enter_spec("12:10001:10002:").is_err());
        assert!(parse_enter_spec("x:1:1:/p").is_err());
        assert!(parse_enter_spec("12:1").is_err());
    }
}
