//! The hidden `client` and `reader` subcommands, run inside a node's
//! namespace with `ip netns exec`. They print one JSON [`Event`] per line.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use repliq::replication::sync;
use repliq::store::{Role, Store, StoreError, StoreOptions};
use repliq::{QueueError, ReplicatedQueue, ReplicationMode, RepliqQueue};
use repliq_chaos::history::{decode_value, encode_value, Event, EventType, Mode, OpFn};

/// CLOCK_MONOTONIC in ns: one clock shared by every network namespace.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Arguments of `repliq-chaos client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Queue directory on this node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Queue name (for the history).
    #[arg(long)]
    pub queue: String,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// The secondaries' names.
    #[arg(long, value_delimiter = ',')]
    pub secondaries: Vec<String>,
    /// Port of this process's own (idle) replication listener.
    #[arg(long)]
    pub port: u16,
    /// Unique process number; values are `process << 32 | sequence`.
    #[arg(long)]
    pub process: u64,
    /// sync or async.
    #[arg(long)]
    pub mode: String,
    /// Acknowledgements a sync enqueue waits for.
    #[arg(long)]
    pub min_acks: usize,
    /// Operations per second.
    #[arg(long)]
    pub rate: f64,
    /// Sync timeout in ms (then the outcome is unknown: info).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Stop when this file exists.
    #[arg(long)]
    pub stop_file: PathBuf,
}

fn emit(out: &mut impl Write, e: &Event) -> bool {
    match serde_json::to_string(e) {
        Ok(s) => writeln!(out, "{s}").and_then(|_| out.flush()).is_ok(),
        Err(_) => false,
    }
}

/// Runs the writer: enqueues unique values through the founding API.
pub fn client(a: ClientArgs) -> i32 {
    let mode = match a.mode.as_str() {
        "sync" => Mode::Sync,
        "async" => Mode::Async,
        m => {
            eprintln!("repliq-chaos client: unknown mode {m:?} (sync or async)");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("repliq-chaos client: cannot start the runtime: {e}");
            return 1;
        }
    };
    let Some(dir) = a.dir.to_str() else {
        eprintln!("repliq-chaos client: the queue path is not UTF-8");
        return 2;
    };
    rt.block_on(async {
        let q = match RepliqQueue::<u64>::open(dir) {
            Ok(q) => q,
            Err(e) => {
                eprintln!("repliq-chaos client: cannot open {dir}: {e}");
                return 1;
            }
        };
        let mut q = q
            .with_node_name(&a.node)
            .with_sync_timeout(Duration::from_millis(a.timeout_ms))
            .with_min_acks(a.min_acks);
        let primary = format!("{}:{}", a.node, a.port);
        let secs: Vec<String> = a
            .secondaries
            .iter()
            .map(|s| format!("{s}:{}", a.port))
            .collect();
        let rm = match mode {
            Mode::Sync => ReplicationMode::Synchronous,
            Mode::Async => ReplicationMode::Asynchronous,
        };
        if let Err(e) = q.with_replication(&primary, secs.iter().map(String::as_str).collect(), rm)
        {
            eprintln!("repliq-chaos client: with_replication: {e}");
            return 1;
        }
        let mut out = std::io::stdout().lock();
        let period = Duration::from_secs_f64(1.0 / a.rate.max(0.01));
        let mut seq: u64 = 0;
        while !a.stop_file.exists() {
            seq += 1;
            let value = (a.process << 32) | seq;
            let mut e = Event {
                kind: EventType::Invoke,
                f: OpFn::Enqueue,
                process: a.process,
                node: a.node.clone(),
                queue: a.queue.clone(),
                mode,
                value,
                group: None,
                id: None,
                epoch: None,
                term: None,
                time_ns: now_ns(),
                error: None,
            };
            if !emit(&mut out, &e) {
                return 1;
            }
            let r = match mode {
                Mode::Sync => q.enqueue(value).await.map(|()| None),
                Mode::Async => q.enqueue_id(&value).map(Some),
            };
            e.time_ns = now_ns();
            match r {
                Ok(id) => {
                    e.kind = EventType::Ok;
                    e.id = id;
                }
                // A sync timeout leaves the record in the log: unknown.
                Err(QueueError::Replication(m)) => {
                    e.kind = EventType::Info;
                    e.error = Some(m);
                }
                Err(err) => {
                    e.kind = EventType::Fail;
                    e.error = Some(err.to_string());
                }
            }
            if !emit(&mut out, &e) {
                return 1;
            }
            tokio::time::sleep(period).await;
        }
        0
    })
}

/// Where a consumer-group reader takes from: the fields `reader` and
/// `group-reader` share.
#[derive(clap::Args, Debug)]
pub struct GroupOn {
    /// Queue directory on this node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Queue name (for the history).
    #[arg(long)]
    pub queue: String,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// Consumer group.
    #[arg(long)]
    pub group: String,
    /// Unique process number.
    #[arg(long)]
    pub process: u64,
}

/// Arguments of `repliq-chaos reader`.
#[derive(clap::Args, Debug)]
pub struct ReaderArgs {
    /// Queue, node, group and process.
    #[command(flatten)]
    pub on: GroupOn,
    /// Stop when this file exists and the queue is drained.
    #[arg(long)]
    pub stop_file: PathBuf,
}

/// Runs a consumer-group reader: dequeues until stopped and drained.
pub fn reader(a: ReaderArgs) -> i32 {
    let Some(dir) = a.on.dir.to_str() else {
        eprintln!("repliq-chaos reader: the queue path is not UTF-8");
        return 2;
    };
    let q = match RepliqQueue::<u64>::open(dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("repliq-chaos reader: cannot open {dir}: {e}");
            return 1;
        }
    };
    let mut c = match q.store().group_consumer(&a.on.group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("repliq-chaos reader: group {}: {e}", a.on.group);
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut idle_after_stop = 0;
    loop {
        match c.dequeue_with(|r| (r.id, r.epoch, decode_value(r.payload))) {
            Ok(Some((id, epoch, value))) => {
                let t = Taker {
                    process: a.on.process,
                    node: &a.on.node,
                    queue: &a.on.queue,
                    group: &a.on.group,
                    term: None,
                };
                let e = read_event(&t, id, epoch, value);
                if !emit(&mut out, &e) {
                    return 1;
                }
            }
            Ok(None) => {
                if a.stop_file.exists() {
                    idle_after_stop += 1;
                    if idle_after_stop > 20 {
                        return 0;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("repliq-chaos reader: dequeue: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Arguments of `repliq-chaos cluster-client`: a writer on one node of a
/// cluster-mode run.
#[derive(clap::Args, Debug)]
pub struct ClusterClientArgs {
    /// The queue's directory on this node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Queue name (as the catalog knows it).
    #[arg(long)]
    pub queue: String,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// This node's HTTP address, where its view of the catalog is read.
    #[arg(long)]
    pub http: String,
    /// Unique process number; values are `process << 32 | sequence`.
    #[arg(long)]
    pub process: u64,
    /// sync or async.
    #[arg(long)]
    pub mode: String,
    /// Operations per second while this node leads the queue.
    #[arg(long)]
    pub rate: f64,
    /// Sync timeout in ms (then the outcome is unknown: info).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Stop when this file exists.
    #[arg(long)]
    pub stop_file: PathBuf,
    /// The roll-kill nemesis: while `<dir>/roll-kill-<own pid>` exists and
    /// holds a delay in µs, append without pausing until the next append
    /// crosses into a new segment, then SIGKILL this process that long after
    /// starting that append (see [`arm_roll_kill`]).
    #[arg(long)]
    pub roll_kill_dir: Option<PathBuf>,
}

/// The roll-kill request for this process, if the controller wrote one: the
/// delay in µs.
fn roll_kill_request(dir: Option<&PathBuf>) -> Option<u64> {
    let f = dir?.join(format!("roll-kill-{}", std::process::id()));
    std::fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// The first frame position of the segment an append of an aligned frame
/// of `frame` bytes at write position `pos` rolls into, in segments of
/// `size` bytes; `None` if it stays in its segment. Two kinds of roll: the
/// frame does not fit (the old segment is padded to its end, the frame goes
/// to the next), or the previous frame filled the old segment exactly and
/// `pos` already is the next segment's first frame (this append switches
/// the writer's head segment to it).
fn roll_boundary(size: u64, pos: u64, frame: u64) -> Option<u64> {
    use repliq::store::layout::SEGMENT_HEADER_LEN;
    let off = pos & (size - 1);
    if off == SEGMENT_HEADER_LEN && pos >= size {
        Some(pos)
    } else if off + frame > size {
        Some((pos - off) + size + SEGMENT_HEADER_LEN)
    } else {
        None
    }
}

/// If appending `len` payload bytes at the write position rolls into the
/// next segment (it does not fit, or the write position is a segment's first
/// frame), writes what is about to happen to
/// `<dir>/roll-kill-<pid>.armed` (`position boundary frame_len delay_us`:
/// the write position, the first frame position of the next segment, the
/// frame's length) and starts a thread that SIGKILLs this process `delay_us`
/// after the returned flag is set (set it just before `append`); returns
/// once that thread runs. It spins rather than sleeps: the roll lasts
/// microseconds.
fn arm_roll_kill(
    s: &Store,
    len: usize,
    dir: &std::path::Path,
    delay_us: u64,
) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use repliq::store::layout::{FRAME_ALIGN, FRAME_HEADER_LEN};
    use std::sync::atomic::{AtomicBool, Ordering};
    let g = s.geometry();
    let pos = s.tail_position();
    let frame = (FRAME_HEADER_LEN + len as u64).div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
    let boundary = roll_boundary(g.size(), pos, frame)?;
    let armed = dir.join(format!("roll-kill-{}.armed", std::process::id()));
    std::fs::write(&armed, format!("{pos} {boundary} {frame} {delay_us}\n")).ok()?;
    let go = std::sync::Arc::new(AtomicBool::new(false));
    let ready = std::sync::Arc::new(AtomicBool::new(false));
    let (flag, up) = (go.clone(), ready.clone());
    std::thread::spawn(move || {
        up.store(true, Ordering::Release);
        while !flag.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        let d = Duration::from_micros(delay_us);
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
    // Start the append only once the killer runs: a thread that is not yet
    // scheduled would fire milliseconds late, appends later.
    let t = Instant::now();
    while !ready.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(1) {
        std::hint::spin_loop();
    }
    Some(go)
}

/// How often a cluster client re-reads the catalog while nothing fails.
const CATALOG_REFRESH: Duration = Duration::from_millis(300);

/// Runs a cluster-mode writer: appends to this node's copy of the queue
/// whenever this node's view of the catalog names it the queue's leader.
///
/// Sync: append, then wait for the replicated watermark (raised by the
/// daemon as the queue's leader once `min_insync` replicas hold the
/// record). A refused append (the role word says replica: this node does not
/// lead, or lost its lease) is a definite `fail`, after which the catalog is
/// re-read at once. A sync wait that times out, or that ends after the node
/// stopped leading, is `info`: the record is in this node's log and may or
/// may not survive. Each acknowledgement carries the id and the epoch
/// stamped in the record.
pub fn cluster_client(a: ClusterClientArgs) -> i32 {
    let mode = match a.mode.as_str() {
        "sync" => Mode::Sync,
        "async" => Mode::Async,
        m => {
            eprintln!("repliq-chaos cluster-client: unknown mode {m:?} (sync or async)");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("repliq-chaos cluster-client: cannot start the runtime: {e}");
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.01));
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut store: Option<Store> = None;
    let mut view: Option<crate::catalog::CatalogView> = None;
    let mut read_at: Option<Instant> = None;
    let mut seq: u64 = 0;
    while !a.stop_file.exists() {
        if read_at.is_none_or(|t| t.elapsed() >= CATALOG_REFRESH) {
            // An unreachable daemon (killed, paused, or this client cut off
            // from it) leaves the last view in force: the role word in the
            // control file, not this view, is what fences the append.
            if let Some(v) = crate::catalog::fetch(&a.http, Duration::from_millis(500)) {
                view = Some(v);
            }
            read_at = Some(Instant::now());
        }
        let leads = view
            .as_ref()
            .and_then(|v| v.leader(&a.queue))
            .is_some_and(|l| l == a.node);
        if !leads {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if store.is_none() {
            match Store::open(&a.dir, &StoreOptions::open()) {
                Ok(s) => store = Some(s),
                Err(e) => {
                    eprintln!("repliq-chaos cluster-client: open {}: {e}", a.dir.display());
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some(s) = store.as_ref() else { continue };
        seq += 1;
        let value = (a.process << 32) | seq;
        let mut e = Event {
            kind: EventType::Invoke,
            f: OpFn::Enqueue,
            process: a.process,
            node: a.node.clone(),
            queue: a.queue.clone(),
            mode,
            value,
            group: None,
            id: None,
            epoch: None,
            term: None,
            time_ns: now_ns(),
            error: None,
        };
        if !emit(&mut out, &e) {
            return 1;
        }
        let payload = encode_value(value);
        let roll_kill = roll_kill_request(a.roll_kill_dir.as_ref());
        if let (Some(delay), Some(dir)) = (roll_kill, a.roll_kill_dir.as_deref()) {
            if let Some(go) = arm_roll_kill(s, payload.len(), dir, delay) {
                go.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        match s.append(&payload) {
            Ok(id) => {
                e.id = Some(id);
                e.epoch = record_epoch(s, id);
                let waited = match mode {
                    Mode::Async => Ok(()),
                    Mode::Sync => rt.block_on(sync::wait_replicated(
                        s,
                        sync::record_end(s, id, payload.len()),
                        timeout,
                    )),
                };
                e.time_ns = now_ns();
                match waited {
                    Ok(()) => e.kind = EventType::Ok,
                    Err(err) => {
                        e.kind = EventType::Info;
                        e.error = Some(err.to_string());
                        read_at = None;
                    }
                }
            }
            Err(StoreError::ReadOnly(m)) => {
                e.time_ns = now_ns();
                e.kind = EventType::Fail;
                e.error = Some(format!("refused: {m}"));
                read_at = None;
                // Open the queue afresh next time: after a lost disk the
                // daemon made a new directory, and a handle on the old
                // (unlinked) files would be refused for good, as an
                // application that outlived its node's disk would be.
                store = None;
            }
            Err(err) => {
                // Not known to have been refused before writing: unknown.
                e.time_ns = now_ns();
                e.kind = EventType::Info;
                e.error = Some(err.to_string());
                read_at = None;
                store = None;
            }
        }
        if !emit(&mut out, &e) {
            return 1;
        }
        if roll_kill.is_none() {
            std::thread::sleep(period);
        }
    }
    0
}

/// The epoch stamped in record `id`, read back from the log.
fn record_epoch(s: &Store, id: u64) -> Option<u32> {
    let mut t = s.tailer();
    t.seek(id).ok()?;
    t.next_with(|r| r.epoch).ok()?
}

/// Arguments of `repliq-chaos tail-reader`.
#[derive(clap::Args, Debug)]
pub struct TailReaderArgs {
    /// The queue's directory on this node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Queue name (for the history).
    #[arg(long)]
    pub queue: String,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// Unique process number.
    #[arg(long)]
    pub process: u64,
    /// Stop when this file exists and nothing new came for a while.
    #[arg(long)]
    pub stop_file: PathBuf,
}

/// Tails this node's replica of a queue while the faults run, recording
/// every record read as a dequeue in the group `tail-<node>` (with its id
/// and epoch). After an error (e.g. the daemon truncated a divergent
/// suffix) it reopens the queue and goes on after the last id it read, so
/// it never reads a record twice by itself.
pub fn tail_reader(a: TailReaderArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    let group = format!("tail-{}", a.node);
    let mut last: Option<u64> = None;
    let mut idle_after_stop = 0;
    'reopen: loop {
        if a.stop_file.exists() && idle_after_stop > 20 {
            return 0;
        }
        let s = match Store::open(&a.dir, &StoreOptions::open().skip_recovery()) {
            Ok(s) => s,
            Err(_) => {
                if a.stop_file.exists() {
                    idle_after_stop += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut t = s.tailer();
        t.seek_start();
        loop {
            match t.next_with(|r| (r.id, r.epoch, decode_value(r.payload))) {
                Ok(Some((id, epoch, value))) => {
                    if last.is_some_and(|l| id <= l) {
                        continue;
                    }
                    last = Some(id);
                    idle_after_stop = 0;
                    let t = Taker {
                        process: a.process,
                        node: &a.node,
                        queue: &a.queue,
                        group: &group,
                        term: None,
                    };
                    let e = read_event(&t, id, epoch, value);
                    if !emit(&mut out, &e) {
                        return 1;
                    }
                }
                Ok(None) => {
                    if a.stop_file.exists() {
                        idle_after_stop += 1;
                        if idle_after_stop > 20 {
                            return 0;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("repliq-chaos tail-reader: {}: {e}", a.dir.display());
                    std::thread::sleep(Duration::from_millis(200));
                    continue 'reopen;
                }
            }
        }
    }
}

/// Arguments of `repliq-chaos group-reader`: a consumer-group reader on one
/// node of a cluster-mode run.
#[derive(clap::Args, Debug)]
pub struct GroupReaderArgs {
    /// Queue, node, group and process.
    #[command(flatten)]
    pub on: GroupOn,
    /// Written by the controller once the writers stopped and the cluster
    /// settled: then drain while this node leads, and stop.
    #[arg(long)]
    pub end_file: PathBuf,
}

/// Polls of an empty group (20 ms apart) after the end file before a
/// leading reader stops: 0.5 s.
const DRAINED_POLLS: u32 = 25;
/// Polls (20 ms apart) without leading after the end file before a reader
/// stops: 3 s, longer than a lease renewal.
const IDLE_POLLS: u32 = 150;
/// While not leading, the queue is reopened this often: a lost disk leaves
/// a handle on unlinked files whose role word never changes again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Runs a cluster-mode consumer-group reader: takes from `group` on this
/// node's copy of the queue only while the control file's role word says
/// this node leads it (role primary, lease not run out); otherwise waits
/// and re-checks. Each take is recorded with the epoch of this node's
/// current leadership (the store's epoch, which the daemon raises before it
/// sets the role primary; read when the leadership begins). Any error reopens the queue. After the end file it
/// drains: a leading reader stops once the group is empty, the others once
/// they have not led for a while.
pub fn group_reader(a: GroupReaderArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut open: Option<(Store, repliq::store::Consumer)> = None;
    let mut opened_at = Instant::now();
    let mut term: Option<u32> = None;
    let mut empty_polls = 0u32;
    let mut idle_polls = 0u32;
    loop {
        let ended = a.end_file.exists();
        if ended && idle_polls > IDLE_POLLS {
            return 0;
        }
        let stale = term.is_none() && opened_at.elapsed() >= REOPEN_EVERY;
        if open.is_none() || stale {
            open = None;
            opened_at = Instant::now();
            match Store::open(&a.on.dir, &StoreOptions::open().skip_recovery())
                .and_then(|s| s.group_consumer(&a.on.group).map(|c| (s, c)))
            {
                Ok(sc) => open = Some(sc),
                Err(_) => {
                    if ended {
                        idle_polls += 10;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some((s, c)) = open.as_mut() else {
            continue;
        };
        if !(s.role() == Role::Primary && s.takes_appends()) {
            term = None;
            empty_polls = 0;
            if ended {
                idle_polls += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        idle_polls = 0;
        let t = *term.get_or_insert_with(|| s.epoch());
        match c.dequeue_with(|r| (r.id, r.epoch, decode_value(r.payload))) {
            Ok(Some((id, epoch, value))) => {
                empty_polls = 0;
                let taker = Taker {
                    process: a.on.process,
                    node: &a.on.node,
                    queue: &a.on.queue,
                    group: &a.on.group,
                    term: Some(t),
                };
                if !emit(&mut out, &read_event(&taker, id, epoch, value)) {
                    return 1;
                }
            }
            Ok(None) => {
                if ended {
                    empty_polls += 1;
                    if empty_polls > DRAINED_POLLS {
                        return 0;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("repliq-chaos group-reader: {}: {e}", a.on.dir.display());
                open = None;
                term = None;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Where and under which leadership a reader took a record.
#[derive(Clone, Copy)]
struct Taker<'a> {
    process: u64,
    node: &'a str,
    queue: &'a str,
    group: &'a str,
    term: Option<u32>,
}

/// The history event of a record `id` a reader of `group` took: its value,
/// or an error if the payload is not one.
fn read_event(t: &Taker<'_>, id: u64, epoch: u32, value: Option<u64>) -> Event {
    let Taker {
        process,
        node,
        queue,
        group,
        term,
    } = *t;
    Event {
        kind: EventType::Ok,
        f: OpFn::Dequeue,
        process,
        node: node.to_string(),
        queue: queue.to_string(),
        mode: Mode::Sync,
        value: value.unwrap_or(u64::MAX),
        group: Some(group.to_string()),
        id: Some(id),
        epoch: Some(epoch),
        term,
        time_ns: now_ns(),
        error: value
            .is_none()
            .then(|| "payload is not a value".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends to a real store with 64 KiB segments
    /// and checks that `roll_boundary` flags exactly the appends that land
    /// in a new segment, at the position they land at.
    #[test]
    fn roll_boundary_flags_exactly_the_appends_that_enter_a_new_segment() {
        use repliq::store::layout::{FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
        let dir = std::env::temp_dir().join(format!("repliq-chaos-roll-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(
            &dir,
            &StoreOptions::create()
                .capacity(1_000_000)
                .segment_size(1 << 16),
        )
        .expect("create the store");
        let g = s.geometry();
        let (mut exact, mut padded) = (0, 0);
        // The workload's 24-byte frames fill a segment exactly; stretches of
        // 40-byte frames do not, so both kinds of roll occur.
        for seq in 0u64..15_000 {
            let len = if (6000..9000).contains(&seq) { 20 } else { 5 };
            let payload = vec![7u8; len];
            let frame = (FRAME_HEADER_LEN + len as u64).div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
            let pos = s.tail_position();
            let flagged = roll_boundary(g.size(), pos, frame);
            let id = s.append(&payload).expect("append");
            let first_in_segment = g.offset_of(id) == SEGMENT_HEADER_LEN && id >= g.size();
            assert_eq!(
                flagged.is_some(),
                first_in_segment,
                "seq {seq}: pos {pos}, id {id}"
            );
            if let Some(b) = flagged {
                assert_eq!(b, id, "seq {seq}: the frame landed elsewhere");
                if pos == id {
                    exact += 1;
                } else {
                    padded += 1;
                }
            }
        }
        assert!(
            exact >= 1 && padded >= 1,
            "rolls: {exact} exact, {padded} padded"
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
