//! The writer and reader of every system.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use crate::{is_server, Cfg, Mode};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A reader gives up after this long without a message.
const IDLE_TIMEOUT_NS: u64 = 30_000_000_000;

fn ready_path(c: &Cfg) -> PathBuf {
    c.rdv.join("reader-ready")
}

/// How each reader waits, for the report.
pub fn reader_kind(system: &str, mode: Mode) -> &'static str {
    match (system, mode) {
        ("uds" | "pipe", Mode::Lat) => "busy-poll (O_NONBLOCK read)",
        ("uds" | "pipe", Mode::Tput) => "blocking read, 256 KiB BufReader",
        ("iceoryx2", _) => "busy-poll (receive)",
        ("crossbeam", _) => "busy-poll (try_recv)",
        ("redis", _) => "blocking XREAD BLOCK",
        ("nats", _) => "pull consumer stream (async)",
        _ => "?",
    }
}

/// Delay between the writer's connect and its first scheduled send.
fn start_after_connect() -> u64 {
    now_ns() + 20_000_000
}

// ---------------------------------------------------------------- writers

/// A sink of whole messages.
trait Sink {
    fn send(&mut self, buf: &[u8]) -> Result<(), String>;
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

struct WriteSink<W: Write>(W);
impl<W: Write> Sink for WriteSink<W> {
    #[inline]
    fn send(&mut self, buf: &[u8]) -> Result<(), String> {
        self.0.write_all(buf).map_err(|e| format!("write: {e}"))
    }
}

#[cfg(feature = "iceoryx2")]
struct IceSink {
    _node: iceoryx2::prelude::Node<iceoryx2::prelude::ipc::Service>,
    publisher: iceoryx2::port::publisher::Publisher<iceoryx2::prelude::ipc::Service, [u8], ()>,
}
#[cfg(feature = "iceoryx2")]
impl Sink for IceSink {
    #[inline]
    fn send(&mut self, buf: &[u8]) -> Result<(), String> {
        // send() returns the number of subscribers reached; with a full
        // used-chunk list it can be 0 even under RetryUntilDelivered: resend.
        for _ in 0..10_000_000 {
            let s = self
                .publisher
                .loan_slice_uninit(buf.len())
                .map_err(|e| format!("iceoryx2 loan: {e:?}"))?;
            let s = s.write_from_slice(buf);
            if s.send().map_err(|e| format!("iceoryx2 send: {e:?}"))? > 0 {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        Err("iceoryx2: the subscriber took no message for 10M attempts".into())
    }
}

/// Redis: one XADD per message (latency), or pipelined batches (throughput).
struct RedisSink {
    con: redis::Connection,
    key: String,
    batch: usize,
    pipe: redis::Pipeline,
    queued: usize,
}
impl RedisSink {
    fn xadd(cmd: &mut redis::Cmd, key: &str, buf: &[u8]) {
        cmd.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("d")
            .arg(buf);
    }
}
impl Sink for RedisSink {
    fn send(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.batch <= 1 {
            let mut c = redis::cmd("XADD");
            Self::xadd(&mut c, &self.key, buf);
            c.query::<redis::Value>(&mut self.con)
                .map_err(|e| format!("XADD: {e}"))?;
            return Ok(());
        }
        let c = self.pipe.cmd("XADD");
        c.arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("d")
            .arg(buf);
        c.ignore();
        self.queued += 1;
        if self.queued >= self.batch {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        if self.queued > 0 {
            self.pipe
                .query::<()>(&mut self.con)
                .map_err(|e| format!("XADD pipeline: {e}"))?;
            self.pipe.clear();
            self.queued = 0;
        }
        Ok(())
    }
}

fn open_sink(c: &Cfg) -> Result<Box<dyn Sink>, String> {
    match c.system.as_str() {
        "uds" => {
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            let s = UnixStream::connect(c.rdv.join("sock")).map_err(|e| format!("connect: {e}"))?;
            Ok(Box::new(WriteSink(s)))
        }
        "pipe" => {
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(c.rdv.join("fifo"))
                .map_err(|e| format!("open fifo: {e}"))?;
            Ok(Box::new(WriteSink(f)))
        }
        #[cfg(feature = "iceoryx2")]
        "iceoryx2" => {
            let (node, svc) = ice_service(c)?;
            let publisher = svc
                .publisher_builder()
                .initial_max_slice_len(c.size)
                .backpressure_strategy(iceoryx2::port::backpressure_strategy::BackpressureStrategy::RetryUntilDelivered)
                .create()
                .map_err(|e| format!("iceoryx2 publisher: {e:?}"))?;
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            // Connect to the subscriber now, not lazily on the first send.
            use iceoryx2::port::update_connections::UpdateConnections;
            publisher
                .update_connections()
                .map_err(|e| format!("iceoryx2 connect: {e:?}"))?;
            Ok(Box::new(IceSink {
                _node: node,
                publisher,
            }))
        }
        "redis" => {
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            let con = redis_con(c)?;
            Ok(Box::new(RedisSink {
                con,
                key: c.name.clone(),
                batch: if c.mode == Mode::Tput { 64 } else { 1 },
                pipe: redis::pipe(),
                queued: 0,
            }))
        }
        s => Err(format!("unknown system {s}")),
    }
}

pub fn writer_lat(c: &Cfg) -> Result<WriterOut, String> {
    if c.system == "nats" {
        return nats::writer(c);
    }
    let mut sink = open_sink(c)?;
    let mut buf = vec![0u8; c.size];
    let mut sch = Schedule::new(
        start_after_connect(),
        c.warmup_ns,
        c.duration_ns,
        c.rate,
        !is_server(&c.system),
    );
    while let Some((stamp, tag)) = sch.next() {
        fill(&mut buf, stamp, tag);
        sink.send(&buf)?;
    }
    fill(&mut buf, 0, DONE);
    sink.send(&buf)?;
    sink.flush()?;
    linger(c);
    Ok(sch.out())
}

pub fn writer_tput(c: &Cfg) -> Result<TputOut, String> {
    if c.system == "nats" {
        return nats::writer_tput(c);
    }
    let mut sink = open_sink(c)?;
    let mut buf = vec![0x5au8; c.size];
    let start = now_ns();
    let end = start + c.duration_ns;
    let mut seq = 0u64;
    'outer: loop {
        for _ in 0..64 {
            buf[8..16].copy_from_slice(&seq.to_le_bytes());
            sink.send(&buf)?;
            seq += 1;
        }
        if now_ns() >= end {
            break 'outer;
        }
    }
    fill(&mut buf, 0, DONE);
    sink.send(&buf)?;
    sink.flush()?;
    linger(c);
    Ok(TputOut {
        received: seq,
        bytes: seq * c.size as u64,
        first_ns: start,
        end_ns: now_ns(),
    })
}

/// iceoryx2 drops undelivered samples when the publisher goes away: wait for
/// the reader to say it is done before exiting.
fn linger(c: &Cfg) {
    if c.system == "iceoryx2" {
        let _ = wait_file(&c.rdv.join("reader-done"), Duration::from_secs(30));
    }
}

// ---------------------------------------------------------------- readers

/// Reads exactly one message into `buf`, busy-polling a non-blocking fd.
/// `eof_ok_before_data`: a FIFO opened O_NONBLOCK reads 0 before any writer.
#[inline]
fn read_msg_spin(r: &mut impl Read, buf: &mut [u8], started: &mut bool) -> Result<(), String> {
    let mut off = 0;
    let mut idle_since = 0u64;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) if !*started => spin_idle(&mut idle_since)?,
            Ok(0) => return Err("unexpected end of stream".into()),
            Ok(n) => {
                off += n;
                *started = true;
                idle_since = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                spin_idle(&mut idle_since)?
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(())
}

#[inline]
fn spin_idle(since: &mut u64) -> Result<(), String> {
    std::hint::spin_loop();
    if *since == 0 {
        *since = now_ns();
    } else if now_ns() - *since > IDLE_TIMEOUT_NS {
        return Err("no message for 30 s".into());
    }
    Ok(())
}

fn open_stream_reader(c: &Cfg, nonblocking: bool) -> Result<Box<dyn Read>, String> {
    match c.system.as_str() {
        "uds" => {
            let l = UnixListener::bind(c.rdv.join("sock")).map_err(|e| format!("bind: {e}"))?;
            touch(&ready_path(c));
            let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            s.set_nonblocking(nonblocking).map_err(|e| e.to_string())?;
            Ok(Box::new(s))
        }
        "pipe" => {
            let p = c.rdv.join("fifo");
            let cp = std::ffi::CString::new(p.display().to_string()).map_err(|e| e.to_string())?;
            // SAFETY: valid C string.
            if unsafe { libc::mkfifo(cp.as_ptr(), 0o600) } != 0 {
                return Err(format!("mkfifo: {}", std::io::Error::last_os_error()));
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = std::fs::OpenOptions::new();
            o.read(true);
            if nonblocking {
                o.custom_flags(libc::O_NONBLOCK);
                let f = o.open(&p).map_err(|e| format!("open fifo: {e}"))?;
                touch(&ready_path(c));
                Ok(Box::new(f))
            } else {
                touch(&ready_path(c));
                let f: File = o.open(&p).map_err(|e| format!("open fifo: {e}"))?;
                Ok(Box::new(f))
            }
        }
        s => Err(format!("{s} is not a stream system")),
    }
}

pub fn reader_lat(c: &Cfg) -> Result<ReaderOut, String> {
    let mut rec = LatRecorder::new();
    match c.system.as_str() {
        "uds" | "pipe" => {
            let mut r = open_stream_reader(c, true)?;
            let mut buf = vec![0u8; c.size];
            let mut started = false;
            loop {
                read_msg_spin(&mut r, &mut buf, &mut started)?;
                let now = now_ns();
                let (s, t) = decode(&buf);
                if !rec.record(s, t, now) {
                    break;
                }
            }
        }
        #[cfg(feature = "iceoryx2")]
        "iceoryx2" => {
            let (_node, svc) = ice_service(c)?;
            let sub = svc
                .subscriber_builder()
                .buffer_size(ICE_BUFFER)
                .create()
                .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))?;
            touch(&ready_path(c));
            let mut idle_since = 0u64;
            loop {
                match sub
                    .receive()
                    .map_err(|e| format!("iceoryx2 receive: {e:?}"))?
                {
                    Some(sample) => {
                        let now = now_ns();
                        let (s, t) = decode(sample.payload());
                        drop(sample);
                        idle_since = 0;
                        if !rec.record(s, t, now) {
                            break;
                        }
                    }
                    None => spin_idle(&mut idle_since)?,
                }
            }
            touch(&c.rdv.join("reader-done"));
        }
        "redis" => redis_read(c, |s, t, now| rec.record(s, t, now))?,
        "nats" => return nats::reader(c),
        s => return Err(format!("unknown system {s}")),
    }
    Ok(rec.out())
}

pub fn reader_tput(c: &Cfg) -> Result<TputOut, String> {
    let mut o = TputOut::default();
    let size = c.size as u64;
    let mut on_msg = |tag: u64, now: u64| -> bool {
        if tag == DONE {
            o.end_ns = now;
            return false;
        }
        if o.received == 0 {
            o.first_ns = now;
        }
        o.received += 1;
        o.bytes += size;
        true
    };
    match c.system.as_str() {
        "uds" | "pipe" => {
            let r = open_stream_reader(c, false)?;
            let mut r = BufReader::with_capacity(256 << 10, r);
            let mut buf = vec![0u8; c.size];
            loop {
                r.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
                let (_, t) = decode(&buf);
                if !on_msg(t, now_ns()) {
                    break;
                }
            }
        }
        #[cfg(feature = "iceoryx2")]
        "iceoryx2" => {
            let (_node, svc) = ice_service(c)?;
            let sub = svc
                .subscriber_builder()
                .buffer_size(ICE_BUFFER)
                .create()
                .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))?;
            touch(&ready_path(c));
            let mut idle_since = 0u64;
            loop {
                match sub
                    .receive()
                    .map_err(|e| format!("iceoryx2 receive: {e:?}"))?
                {
                    Some(sample) => {
                        let (_, t) = decode(sample.payload());
                        drop(sample);
                        idle_since = 0;
                        if !on_msg(t, now_ns()) {
                            break;
                        }
                    }
                    None => spin_idle(&mut idle_since)?,
                }
            }
            touch(&c.rdv.join("reader-done"));
        }
        "redis" => {
            redis_read(c, |_, t, now| on_msg(t, now))?;
        }
        "nats" => return nats::reader_tput(c),
        s => return Err(format!("unknown system {s}")),
    }
    Ok(o)
}

// ---------------------------------------------------------------- iceoryx2

#[cfg(feature = "iceoryx2")]
const ICE_BUFFER: usize = 1024;

#[cfg(feature = "iceoryx2")]
type IceSvc = iceoryx2::service::port_factory::publish_subscribe::PortFactory<
    iceoryx2::prelude::ipc::Service,
    [u8],
    (),
>;

#[cfg(feature = "iceoryx2")]
fn ice_service(
    c: &Cfg,
) -> Result<
    (
        iceoryx2::prelude::Node<iceoryx2::prelude::ipc::Service>,
        IceSvc,
    ),
    String,
> {
    use iceoryx2::prelude::*;
    set_log_level(LogLevel::Error);
    let node = NodeBuilder::new()
        .create::<ipc::Service>()
        .map_err(|e| format!("iceoryx2 node: {e:?}"))?;
    let name: ServiceName = format!("repliq-peers/{}", c.name)
        .as_str()
        .try_into()
        .map_err(|e| format!("iceoryx2 service name: {e:?}"))?;
    // Retry: both processes race to create the service.
    let mut last = String::new();
    for _ in 0..200 {
        match node
            .service_builder(&name)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(ICE_BUFFER)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
        {
            Ok(s) => return Ok((node, s)),
            Err(e) => {
                last = format!("{e:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Err(format!("iceoryx2 service: {last}"))
}

// ---------------------------------------------------------------- redis

fn redis_con(c: &Cfg) -> Result<redis::Connection, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}/", c.port)).map_err(|e| e.to_string())?;
    client
        .get_connection()
        .map_err(|e| format!("redis connect: {e}"))
}

fn bulk(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn items(v: &redis::Value) -> Vec<&redis::Value> {
    match v {
        redis::Value::Array(a) | redis::Value::Set(a) => a.iter().collect(),
        redis::Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// XREAD BLOCK loop: calls `f(stamp, tag, now)` per message until it returns
/// false. `now` is taken once per reply (when the batch arrived).
fn redis_read(c: &Cfg, mut f: impl FnMut(u64, u64, u64) -> bool) -> Result<(), String> {
    let mut con = redis_con(c)?;
    touch(&ready_path(c));
    let mut last = "0-0".to_string();
    let mut idle_since = now_ns();
    loop {
        let v: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&c.name)
            .arg(&last)
            .query(&mut con)
            .map_err(|e| format!("XREAD: {e}"))?;
        let now = now_ns();
        let streams = items(&v);
        if streams.is_empty() {
            if now - idle_since > IDLE_TIMEOUT_NS {
                return Err("redis: no message for 30 s".into());
            }
            continue;
        }
        idle_since = now;
        // RESP2: [[key, [[id, [field, value]], ...]]]; RESP3 map: [key, entries].
        let entries_v: Vec<&redis::Value> = match streams.first() {
            Some(s) if matches!(s, redis::Value::Array(_)) => {
                let kv = items(s);
                kv.get(1).map(|e| items(e)).unwrap_or_default()
            }
            _ => streams.get(1).map(|e| items(e)).unwrap_or_default(),
        };
        for e in entries_v {
            let parts = items(e);
            let (Some(id), Some(fields)) = (parts.first().and_then(|x| bulk(x)), parts.get(1))
            else {
                return Err("redis: unexpected XREAD entry".into());
            };
            last = String::from_utf8_lossy(id).into_owned();
            let fv = items(fields);
            let Some(payload) = fv.get(1).and_then(|x| bulk(x)) else {
                return Err("redis: entry without a payload".into());
            };
            let (s, t) = decode(payload);
            if !f(s, t, now) {
                let _ = redis::cmd("DEL")
                    .arg(&c.name)
                    .query::<redis::Value>(&mut con);
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------- crossbeam

/// Writer and reader threads in this process; returns their JSON lines.
pub fn crossbeam_run(
    c: &Cfg,
    wcpu: Option<usize>,
    rcpu: Option<usize>,
) -> Result<(String, String), String> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(4096);
    let c2 = c.clone();
    std::thread::scope(|s| {
        let w = s.spawn(move || -> Result<String, String> {
            if let Some(cpu) = wcpu {
                pin_to(cpu);
            }
            let send = |v: Vec<u8>| tx.send(v).map_err(|_| "channel closed".to_string());
            if c2.mode == Mode::Lat {
                let mut sch = Schedule::new(
                    start_after_connect(),
                    c2.warmup_ns,
                    c2.duration_ns,
                    c2.rate,
                    true,
                );
                while let Some((stamp, tag)) = sch.next() {
                    let mut b = vec![0u8; c2.size];
                    fill(&mut b, stamp, tag);
                    send(b)?;
                }
                let mut b = vec![0u8; c2.size];
                fill(&mut b, 0, DONE);
                send(b)?;
                serde_json::to_string(&sch.out()).map_err(|e| e.to_string())
            } else {
                let template = vec![0x5au8; c2.size];
                let start = now_ns();
                let end = start + c2.duration_ns;
                let mut seq = 0u64;
                loop {
                    for _ in 0..64 {
                        let mut b = template.clone();
                        b[8..16].copy_from_slice(&seq.to_le_bytes());
                        send(b)?;
                        seq += 1;
                    }
                    if now_ns() >= end {
                        break;
                    }
                }
                let mut b = vec![0u8; c2.size];
                fill(&mut b, 0, DONE);
                send(b)?;
                let o = TputOut {
                    received: seq,
                    bytes: seq * c2.size as u64,
                    first_ns: start,
                    end_ns: now_ns(),
                };
                serde_json::to_string(&o).map_err(|e| e.to_string())
            }
        });
        let mode = c.mode;
        let size = c.size as u64;
        let r = s.spawn(move || -> Result<String, String> {
            if let Some(cpu) = rcpu {
                pin_to(cpu);
            }
            let mut idle_since = 0u64;
            let mut next = || -> Result<Vec<u8>, String> {
                loop {
                    match rx.try_recv() {
                        Ok(v) => {
                            idle_since = 0;
                            return Ok(v);
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => spin_idle(&mut idle_since)?,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            };
            if mode == Mode::Lat {
                let mut rec = LatRecorder::new();
                loop {
                    let v = next()?;
                    let now = now_ns();
                    let (st, t) = decode(&v);
                    drop(v);
                    if !rec.record(st, t, now) {
                        break;
                    }
                }
                serde_json::to_string(&rec.out()).map_err(|e| e.to_string())
            } else {
                let mut o = TputOut::default();
                loop {
                    let v = next()?;
                    let (_, t) = decode(&v);
                    drop(v);
                    if t == DONE {
                        o.end_ns = now_ns();
                        break;
                    }
                    if o.received == 0 {
                        o.first_ns = now_ns();
                    }
                    o.received += 1;
                    o.bytes += size;
                }
                serde_json::to_string(&o).map_err(|e| e.to_string())
            }
        });
        let w = w
            .join()
            .map_err(|_| "writer thread panicked".to_string())??;
        let r = r
            .join()
            .map_err(|_| "reader thread panicked".to_string())??;
        Ok((w, r))
    })
}

// ---------------------------------------------------------------- NATS JetStream

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};
    use futures::StreamExt;

    fn rt() -> Result<tokio::runtime::Runtime, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    }

    async fn connect(c: &Cfg) -> Result<jetstream::Context, String> {
        let client = async_nats::connect(format!("127.0.0.1:{}", c.port))
            .await
            .map_err(|e| format!("nats connect: {e}"))?;
        Ok(jetstream::new(client))
    }

    /// Publishes and waits for each ack (latency).
    pub fn writer(c: &Cfg) -> Result<WriterOut, String> {
        rt()?.block_on(async {
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            let js = connect(c).await?;
            let mut buf = vec![0u8; c.size];
            let mut sch = Schedule::new(
                start_after_connect(),
                c.warmup_ns,
                c.duration_ns,
                c.rate,
                false,
            );
            loop {
                let next = sch.next();
                let (stamp, tag) = next.unwrap_or((0, DONE));
                fill(&mut buf, stamp, tag);
                js.publish(c.name.clone(), bytes::Bytes::copy_from_slice(&buf))
                    .await
                    .map_err(|e| format!("publish: {e}"))?
                    .await
                    .map_err(|e| format!("publish ack: {e}"))?;
                if next.is_none() {
                    break;
                }
            }
            Ok(sch.out())
        })
    }

    /// Publishes as fast as it can with up to 256 acks outstanding.
    pub fn writer_tput(c: &Cfg) -> Result<TputOut, String> {
        rt()?.block_on(async {
            wait_file(&ready_path(c), READY_TIMEOUT)?;
            let js = connect(c).await?;
            let mut buf = vec![0x5au8; c.size];
            let start = now_ns();
            let end = start + c.duration_ns;
            let mut seq = 0u64;
            let mut acks = Vec::with_capacity(256);
            loop {
                let done = now_ns() >= end;
                let tag = if done { DONE } else { seq };
                buf[8..16].copy_from_slice(&tag.to_le_bytes());
                let f = js
                    .publish(c.name.clone(), bytes::Bytes::copy_from_slice(&buf))
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                acks.push(f);
                if acks.len() >= 256 || done {
                    for a in acks.drain(..) {
                        a.await.map_err(|e| format!("publish ack: {e}"))?;
                    }
                }
                if done {
                    break;
                }
                seq += 1;
            }
            Ok(TputOut {
                received: seq,
                bytes: seq * c.size as u64,
                first_ns: start,
                end_ns: now_ns(),
            })
        })
    }

    async fn subscribe(c: &Cfg) -> Result<(jetstream::Context, consumer::pull::Stream), String> {
        let js = connect(c).await?;
        let st = js
            .get_or_create_stream(stream::Config {
                name: c.name.clone(),
                subjects: vec![c.name.clone()],
                storage: stream::StorageType::File,
                max_bytes: 1 << 30,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create stream: {e}"))?;
        let cons = st
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create consumer: {e}"))?;
        let msgs = cons
            .messages()
            .await
            .map_err(|e| format!("consumer messages: {e}"))?;
        Ok((js, msgs))
    }

    async fn next(msgs: &mut consumer::pull::Stream) -> Result<jetstream::Message, String> {
        match tokio::time::timeout(Duration::from_nanos(IDLE_TIMEOUT_NS), msgs.next()).await {
            Err(_) => Err("nats: no message for 30 s".into()),
            Ok(None) => Err("nats: consumer stream ended".into()),
            Ok(Some(Err(e))) => Err(format!("nats: {e}")),
            Ok(Some(Ok(m))) => Ok(m),
        }
    }

    pub fn reader(c: &Cfg) -> Result<ReaderOut, String> {
        rt()?.block_on(async {
            let (js, mut msgs) = subscribe(c).await?;
            touch(&ready_path(c));
            let mut rec = LatRecorder::new();
            loop {
                let m = next(&mut msgs).await?;
                let now = now_ns();
                let (s, t) = decode(&m.payload);
                if !rec.record(s, t, now) {
                    break;
                }
            }
            let _ = js.delete_stream(&c.name).await;
            Ok(rec.out())
        })
    }

    pub fn reader_tput(c: &Cfg) -> Result<TputOut, String> {
        rt()?.block_on(async {
            let (js, mut msgs) = subscribe(c).await?;
            touch(&ready_path(c));
            let mut o = TputOut::default();
            loop {
                let m = next(&mut msgs).await?;
                let (_, t) = decode(&m.payload);
                if t == DONE {
                    o.end_ns = now_ns();
                    break;
                }
                if o.received == 0 {
                    o.first_ns = now_ns();
                }
                o.received += 1;
                o.bytes += c.size as u64;
            }
            let _ = js.delete_stream(&c.name).await;
            Ok(o)
        })
    }
}
