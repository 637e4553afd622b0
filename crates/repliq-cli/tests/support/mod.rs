//! Helpers shared by the test binaries that run `repliq` processes.
//! Each binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a test waits for a condition that normally holds within a
/// second or two. Generous on purpose: a loaded 2-core machine must never
/// fail a test by being slow, only by the condition never holding.
pub const PATIENCE: Duration = Duration::from_secs(60);

#[path = "../../../repliq/tests/mp_support/ports.rs"]
mod ports;
/// A port that was free on 127.0.0.1 a moment ago, outside the ephemeral
/// range (see `ports.rs`).
#[allow(unused_imports)]
pub use ports::free_port;

/// Writes to `cfg` the smallest standalone daemon config: free replication
/// and HTTP ports on 127.0.0.1 and queues under `data`. Returns the HTTP
/// address.
pub fn write_minimal_daemon_config(cfg: &std::path::Path, data: &std::path::Path) -> String {
    let http = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        cfg,
        format!(
            "replication:\n  listen: 127.0.0.1:{}\nhttp:\n  listen: {http}\n\
             queue:\n  persistence:\n    path: {}\n",
            free_port(),
            data.display()
        ),
    )
    .expect("write the daemon config");
    http
}

/// `repliq daemon --config cfg` as node `t`, its output discarded; the
/// caller adds what else it needs and spawns it.
pub fn daemon_command(cfg: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_repliq"));
    c.args(["daemon", "--config"])
        .arg(cfg)
        .env("NODE_NAME", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// `GET path` over HTTP/1.1: status, lower-cased head and body; `None` if
/// nothing answers or the answer is not HTTP.
pub fn http_get_full(addr: &str, path: &str) -> Option<(u16, String, String)> {
    http_get_with(addr, path, "")
}

/// `GET path` with `headers` (each line ending in `\r\n`): status,
/// lower-cased head and body.
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    // A daemon answers in milliseconds; the bound only keeps a hung server
    // from hanging the test.
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let buf = String::from_utf8_lossy(&buf).to_string();
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// `GET path`: status and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_full(addr, path).map(|(status, _, body)| (status, body))
}

// ---------------------------------------------------------------- processes

/// A child process that is killed (SIGKILL) and reaped when dropped, so that
/// a failing test leaves no process behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `within` for `c` to exit; kills it and returns `None` if it
/// did not.
pub fn wait_exit(c: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The signals the tests send, with their Linux numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Int = 2,
    Term = 15,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Int => "INT",
            Sig::Term => "TERM",
        }
    }
}

/// True once process `pid` catches `sig`: its bit is set in the `SigCgt`
/// mask of `/proc/<pid>/status`.
fn catches(pid: u32, sig: Sig) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig as u32 - 1)) != 0)
}

/// Waits until `c` has installed its handler for `sig`, so that the signal
/// tests the handler instead of killing a process that is still starting.
/// The CLI installs its handler with the `ctrlc` crate (`sigaction`, then the
/// `ctrl-c` thread); the daemon with tokio's signal support, once it has
/// started serving.
pub fn wait_until_catches(c: &mut Child, sig: Sig) {
    let deadline = Instant::now() + PATIENCE;
    while !catches(c.id(), sig) {
        if let Some(s) = c.try_wait().unwrap() {
            panic!(
                "pid {} exited ({s}) before it caught SIG{}",
                c.id(),
                sig.name()
            );
        }
        assert!(
            Instant::now() < deadline,
            "pid {} did not install a SIG{} handler within {PATIENCE:?}",
            c.id(),
            sig.name()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` to `c` once `c` catches it (see [`wait_until_catches`]).
pub fn signal(c: &mut Child, sig: Sig) {
    wait_until_catches(c, sig);
    let s = Command::new("kill")
        .args(["-s", sig.name(), &c.id().to_string()])
        .status()
        .unwrap();
    assert!(s.success(), "kill -s {} {}", sig.name(), c.id());
}

/// `(id, epoch, payload)` of every record of the queue at `dir`, as
/// `repliq tail` (the binary `bin`) prints them; empty while there is no
/// queue there yet.
pub fn records(bin: &str, dir: &std::path::Path) -> Vec<(u64, u32, String)> {
    if !dir.join("control.rq").is_file() {
        return Vec::new();
    }
    let out = Command::new(bin)
        .arg("tail")
        .arg(dir)
        .output()
        .expect("run repliq tail");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
            ))
        })
        .collect()
}
