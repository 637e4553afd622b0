//! Ports for test servers on loopback, shared by the test binaries of
//! `repliq` and `repliq-cli` (included by path).
//!
//! A port taken by binding port 0 comes from the kernel's ephemeral range,
//! which outgoing connections use too: between the moment a test releases
//! such a port and the moment its daemon binds it, a client connection
//! elsewhere (the cluster tests make many) can take it as its local port,
//! and the daemon fails with "Address already in use" (a CI failure). These
//! ports come from below the ephemeral range instead (10000 to 31999; Linux
//! starts it at 32768), from a base that differs between processes, each
//! handed out once per process and checked free when handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const LOW: u32 = 10_000;
const SPAN: u32 = 22_000;

/// A port that was free on 127.0.0.1 a moment ago, never handed out before
/// by this process, and outside the ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + k) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}
