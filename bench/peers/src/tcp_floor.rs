//! The loopback TCP floor: a ping-pong of `size`-byte messages between two
//! threads pinned to the two benchmark CPUs, over one 127.0.0.1 connection
//! with `TCP_NODELAY`, the way the replication stream and its
//! acknowledgements cross the loopback interface.
//!
//! Two ways of waiting, as the issue that asked for it (#16) names them:
//!
//! - `blocking`: a plain blocking `read`, so every message wakes a sleeping
//!   thread (what a tokio worker parked in `epoll_wait` pays);
//! - `busy`: the socket is non-blocking and the reader spins on `read`
//!   until bytes arrive, so no wake-up is paid (the cost a busy-polling
//!   sender or receiver could reach).
//!
//! The round trip is measured on one thread's clock; the one-way figure is
//! half of it, as for the cross-core ping-pong in `limits`. Every
//! replication figure in the report is shown as a ratio to these.
//!
//! ```text
//! peers tcp-floor --size 64 --wait blocking --rounds 50000
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use serde_json::json;

use crate::common::*;

/// How a side waits for the other's message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    Blocking,
    Busy,
}

impl Wait {
    fn parse(s: &str) -> Result<Wait, String> {
        match s {
            "blocking" => Ok(Wait::Blocking),
            "busy" => Ok(Wait::Busy),
            o => Err(format!("--wait must be blocking or busy, got {o:?}")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Wait::Blocking => "blocking",
            Wait::Busy => "busy",
        }
    }
}

/// Reads exactly `buf.len()` bytes, spinning on `WouldBlock` when the socket
/// is non-blocking. An end of stream is an error.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err("the other side closed the connection".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(())
}

/// Writes all of `buf`, spinning on `WouldBlock` (a non-blocking socket
/// whose send buffer is full; never the case for one message in flight).
fn write_full(s: &mut TcpStream, buf: &[u8]) -> Result<(), String> {
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

fn prepare(s: &TcpStream, wait: Wait) -> Result<(), String> {
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    s.set_nonblocking(wait == Wait::Busy)
        .map_err(|e| format!("O_NONBLOCK: {e}"))
}

/// `peers tcp-floor`: prints one JSON line with the round-trip and one-way
/// percentiles.
pub fn run(a: &Args) -> Result<(), String> {
    let size = a.u64("size", 64)? as usize;
    if size == 0 || size > 1 << 20 {
        return Err(format!("--size must be 1 B to 1 MiB, got {size}"));
    }
    let rounds = a.u64("rounds", 50_000)?;
    if rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let wait = Wait::parse(&a.str("wait", "blocking"))?;
    let warm = rounds / 10;
    let total = warm + rounds;
    let (ca, cb) = cpu_pair();

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let hist = std::thread::scope(|s| -> Result<_, String> {
        let echo = s.spawn(move || -> Result<(), String> {
            if let Some(c) = cb {
                pin_to(c);
            }
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            prepare(&conn, wait)?;
            let mut buf = vec![0u8; size];
            for _ in 0..total {
                read_full(&mut conn, &mut buf)?;
                write_full(&mut conn, &buf)?;
            }
            Ok(())
        });
        if let Some(c) = ca {
            pin_to(c);
        }
        let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        prepare(&conn, wait)?;
        let mut out = vec![0x5au8; size];
        let mut back = vec![0u8; size];
        let mut h = new_histogram();
        for i in 0..total {
            out[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
            let t0 = now_ns();
            write_full(&mut conn, &out)?;
            read_full(&mut conn, &mut back)?;
            let rtt = now_ns() - t0;
            if back != out {
                return Err(format!("round {i}: the echo differs from what was sent"));
            }
            if i >= warm {
                let _ = h.record(rtt.max(1));
            }
        }
        drop(conn);
        echo.join()
            .map_err(|_| "the echo thread panicked".to_string())??;
        Ok(h)
    })?;
    let rtt = Percentiles::of(&hist);
    println!(
        "{}",
        json!({
            "kind": "tcp_floor", "size": size, "wait": wait.name(), "rounds": rounds,
            "cpus": [ca, cb],
            "rtt_p50": rtt.p50, "rtt_p90": rtt.p90, "rtt_p99": rtt.p99,
            "rtt_p99_9": rtt.p99_9, "rtt_max": rtt.max,
            "oneway_p50": rtt.p50 / 2, "oneway_p99": rtt.p99 / 2,
        })
    );
    Ok(())
}
