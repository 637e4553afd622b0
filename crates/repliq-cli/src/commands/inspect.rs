//! `repliq dump`, `repliq stat` and `repliq verify`: inspection without
//! recovery (see `open_inspect`), so the files are shown as they are.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use repliq::store::layout::align_frame;
use repliq::store::{segment, CursorStat, FrameInfo, FrameKind, LatencyStat, PeerLink, Store};

use super::exit::{CliError, CmdResult, OK};
use super::json::{Json, Obj};
use super::output::Out;

/// Arguments of `repliq dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// One JSON object per line: control, then segments, then frames, then end.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `repliq stat`.
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `repliq verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

fn groups_json(v: &[CursorStat]) -> Json {
    Json::Arr(
        v.iter()
            .map(|g| {
                Obj::new()
                    .put("name", g.name.as_str())
                    .put("position", g.position)
                    .put("dequeued", g.count)
                    .into()
            })
            .collect(),
    )
}

fn cursors_json(v: &[CursorStat]) -> Json {
    Json::Arr(
        v.iter()
            .map(|t| {
                Obj::new()
                    .put("name", t.name.as_str())
                    .put("position", t.position)
                    .into()
            })
            .collect(),
    )
}

fn peers_json(v: &[PeerLink]) -> Json {
    Json::Arr(
        v.iter()
            .map(|p| {
                Obj::new()
                    .put("name", p.node.as_str())
                    .put("position", p.acked)
                    .put("connected", p.connected)
                    .put("sessions", p.sessions)
                    .put("acked_at_unix_ns", p.acked_at_unix_ns)
                    .into()
            })
            .collect(),
    )
}

fn peer_text(p: &PeerLink) -> String {
    let link = if p.connected {
        "connected"
    } else {
        "disconnected"
    };
    format!(
        "peer {:?} position={} link={link} sessions={}",
        p.node, p.acked, p.sessions
    )
}

fn latency_json(l: &LatencyStat) -> Json {
    let q = |x: f64| l.quantile_bound(x).map_or(Json::Null, Json::from);
    Obj::new()
        .put("samples", l.count)
        .put("sum_ns", l.sum_ns)
        .put("p50_below_ns", q(0.5))
        .put("p99_below_ns", q(0.99))
        .put("max_below_ns", q(1.0))
        .into()
}

fn latency_text(l: &LatencyStat) -> String {
    let q = |x: f64| match l.quantile_bound(x) {
        Some(u64::MAX) => "inf".to_string(),
        Some(b) => format!("<{b}ns"),
        None => "-".to_string(),
    };
    format!(
        "samples={} p50{} p99{} max{}",
        l.count,
        q(0.5),
        q(0.99),
        q(1.0)
    )
}

/// One segment file.
struct SegFile {
    index: u64,
    path: PathBuf,
    size: u64,
}

fn segments(store: &Store) -> Result<Vec<SegFile>, CliError> {
    let dir = store.dir();
    let mut v = Vec::new();
    for index in segment::list_segments(dir)? {
        let path = segment::segment_path(dir, index);
        let size = std::fs::metadata(&path)
            .map_err(|e| repliq::store::StoreError::io(&path, e))?
            .len();
        v.push(SegFile { index, path, size });
    }
    Ok(v)
}

/// Allocated bytes of every file in the queue directory.
fn bytes_on_disk(dir: &Path) -> Result<u64, CliError> {
    let mut total = 0u64;
    let rd = std::fs::read_dir(dir).map_err(|e| repliq::store::StoreError::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| repliq::store::StoreError::io(dir, e))?;
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                total += m.blocks() * 512;
            }
        }
    }
    Ok(total)
}

fn frame_crc(f: &FrameInfo) -> &'static str {
    match f.crc_ok {
        Some(true) => "ok",
        Some(false) => "bad",
        None => "-",
    }
}

fn frame_json(f: &FrameInfo) -> String {
    Obj::new()
        .put("type", "frame")
        .put("id", f.id)
        .put("segment", f.segment)
        .put("offset", f.offset)
        .put("len", f.len)
        .put("flags", u32::from(f.flags))
        .put("kind", f.kind.as_str())
        .put("epoch", f.epoch)
        .put("crc", f.crc_ok.map(|ok| if ok { "ok" } else { "bad" }))
        .put("problem", f.problem.clone())
        .render()
}

fn frame_text(f: &FrameInfo) -> String {
    let mut s = format!(
        "frame id={} segment={} offset={} len={} flags={:#06x} kind={} epoch={} crc={}",
        f.id,
        f.segment,
        f.offset,
        f.len,
        f.flags,
        f.kind.as_str(),
        f.epoch,
        frame_crc(f)
    );
    if let Some(p) = &f.problem {
        s.push_str(&format!(" problem={p:?}"));
    }
    s
}

/// How a frame scan ended.
#[derive(Default)]
struct ScanEnd {
    frames: u64,
    records: u64,
    bad: Vec<(u64, String)>,
    /// Position after the last frame scanned.
    end: u64,
    /// "empty" (clean end), "pending" (a writer in flight or dead),
    /// "corrupt" (a header fails its check) or "error" (a file cannot be read).
    stopped: &'static str,
    error: Option<CliError>,
}

/// Scans every frame from the first retained one, calling `each` on each.
fn scan_all(
    store: &Store,
    mut each: impl FnMut(&FrameInfo) -> Result<(), CliError>,
) -> Result<ScanEnd, CliError> {
    let geo = store.geometry();
    let first = store.first_position();
    let mut r = ScanEnd {
        end: first,
        stopped: "empty",
        ..Default::default()
    };
    for item in store.scan(first) {
        let f = match item {
            Ok(f) => f,
            Err(e) => {
                let why = match &e {
                    repliq::store::StoreError::Corrupt { reason, .. } => reason.clone(),
                    e => e.to_string(),
                };
                r.bad.push((e.corrupt_id().unwrap_or(r.end), why));
                r.stopped = "error";
                r.error = Some(e.into());
                break;
            }
        };
        each(&f)?;
        r.frames += 1;
        match f.kind {
            FrameKind::Data | FrameKind::Metadata => {
                if f.kind == FrameKind::Data {
                    r.records += 1;
                }
                if f.crc_ok == Some(false) {
                    let why = f
                        .problem
                        .clone()
                        .unwrap_or_else(|| "payload CRC32C mismatch".into());
                    r.bad.push((f.id, why));
                }
                r.end = geo.advance(f.id, align_frame(u64::from(f.len)));
            }
            FrameKind::Padding => r.end = geo.advance(f.id, u64::from(f.len)),
            FrameKind::Pending => {
                r.end = f.id;
                r.stopped = "pending";
            }
            FrameKind::Corrupt => {
                r.end = f.id;
                r.stopped = "corrupt";
                let why = f
                    .problem
                    .clone()
                    .unwrap_or_else(|| "bad frame header".into());
                r.bad.push((f.id, why));
            }
        }
    }
    Ok(r)
}

pub fn dump(a: DumpArgs) -> CmdResult {
    let store = super::open_inspect(&a.dir)?;
    let cfg = store.config();
    let st = store.stats();
    let committed_raw = store.committed_mark();
    let version = store.format_version();
    let created = store.created_unix_ns();
    let role = store.role().name();
    let queue_id = format!("{:#018x}", store.queue_id());
    let first = store.first_position();
    let peers = store.peer_links();
    let segs = segments(&store)?;
    let mut out = Out::stdout();
    let dir = store.dir().display().to_string();
    if a.json {
        let o = Obj::new()
            .put("type", "control")
            .put("dir", dir.as_str())
            .put("version", version)
            .put("queue_id", queue_id.as_str())
            .put("created_unix_ns", created)
            .put("capacity", cfg.capacity)
            .put("segment_size", cfg.segment_size)
            .put("durability", cfg.durability.as_str())
            .put("recovery_timeout_ms", cfg.recovery_timeout_ms)
            .put("tail", st.tail)
            .put("committed", committed_raw)
            .put("reserved", st.reserved)
            .put("depth", st.depth)
            .put("epoch", st.epoch)
            .put("role", role.as_str())
            .put("replicated", st.replicated)
            .put("sync_acks", store.sync_acks())
            .put("low_segment", st.low_segment)
            .put("first_id", first)
            .put("unblocked", st.unblocked)
            .put("truncated_records", st.truncated_records)
            .put("recoveries", st.recoveries)
            .put("flushed", st.flushed)
            .put("full_rejections", st.full_rejections)
            .put("enqueue_latency", latency_json(&st.enqueue_latency))
            .put("sync_wait", latency_json(&st.sync_wait))
            .put("groups", groups_json(&st.groups))
            .put("named_tailers", cursors_json(&st.tailers))
            .put("peers", peers_json(&peers));
        out.line(&o.render())?;
        for s in &segs {
            out.line(
                &Obj::new()
                    .put("type", "segment")
                    .put("index", s.index)
                    .put("path", s.path.display().to_string())
                    .put("size", s.size)
                    .put("first_id", store.geometry().first_position(s.index))
                    .render(),
            )?;
        }
    } else {
        let kv: Vec<(&str, String)> = vec![
            ("queue", dir.clone()),
            ("version", version.to_string()),
            ("queue_id", queue_id.clone()),
            ("created_unix_ns", created.to_string()),
            ("capacity", cfg.capacity.to_string()),
            ("segment_size", cfg.segment_size.to_string()),
            ("durability", cfg.durability.to_string()),
            ("recovery_timeout_ms", cfg.recovery_timeout_ms.to_string()),
            ("tail", st.tail.to_string()),
            ("committed", committed_raw.to_string()),
            ("reserved", st.reserved.to_string()),
            ("depth", st.depth.to_string()),
            ("epoch", st.epoch.to_string()),
            ("role", role.clone()),
            ("replicated", st.replicated.to_string()),
            ("sync_acks", store.sync_acks().to_string()),
            ("low_segment", st.low_segment.to_string()),
            ("first_id", first.to_string()),
            ("unblocked", st.unblocked.to_string()),
            ("truncated_records", st.truncated_records.to_string()),
            ("recoveries", st.recoveries.to_string()),
            ("flushed", st.flushed.to_string()),
            ("full_rejections", st.full_rejections.to_string()),
            ("enqueue_latency", latency_text(&st.enqueue_latency)),
            ("sync_wait", latency_text(&st.sync_wait)),
        ];
        for (k, v) in kv {
            out.line(&format!("{k:<20} {v}"))?;
        }
        for g in &st.groups {
            out.line(&format!(
                "group {:?} position={} dequeued={}",
                g.name, g.position, g.count
            ))?;
        }
        for t in &st.tailers {
            out.line(&format!(
                "named_tailer {:?} position={}",
                t.name, t.position
            ))?;
        }
        for p in &peers {
            out.line(&peer_text(p))?;
        }
        for s in &segs {
            out.line(&format!(
                "segment {} path={} size={} first_id={}",
                s.index,
                s.path.display(),
                s.size,
                store.geometry().first_position(s.index)
            ))?;
        }
    }
    let json = a.json;
    let end = scan_all(&store, |f| {
        out.line(&if json { frame_json(f) } else { frame_text(f) })
    })?;
    let bad = end.bad.len() as u64;
    if json {
        out.line(
            &Obj::new()
                .put("type", "end")
                .put("frames", end.frames)
                .put("records", end.records)
                .put("bad", bad)
                .put("end", end.end)
                .put("tail", st.tail)
                .put("stopped", end.stopped)
                .render(),
        )?;
    } else {
        out.line(&format!(
            "end frames={} records={} bad={} end={} tail={} stopped={}",
            end.frames, end.records, bad, end.end, st.tail, end.stopped
        ))?;
    }
    out.flush()?;
    match end.error {
        Some(e) => Err(e),
        None => Ok(OK),
    }
}

pub fn stat(a: StatArgs) -> CmdResult {
    let store = super::open_inspect(&a.dir)?;
    let cfg = store.config();
    let st = store.stats();
    let segs = segments(&store)?;
    let disk = bytes_on_disk(store.dir())?;
    let first = store.first_position();
    let mut out = Out::stdout();
    let dir = store.dir().display().to_string();
    if a.json {
        let o = Obj::new()
            .put("dir", dir.as_str())
            .put("durability", cfg.durability.as_str())
            .put("capacity", cfg.capacity)
            .put("segment_size", cfg.segment_size)
            .put("depth", st.depth)
            .put("appended", st.reserved)
            .put("first_id", first)
            .put("tail", st.tail)
            .put("committed", st.committed)
            .put("flushed", st.flushed)
            .put("replicated", st.replicated)
            .put("sync_acks", store.sync_acks())
            .put("epoch", st.epoch)
            .put("segments", segs.len())
            .put("low_segment", st.low_segment)
            .put("bytes_on_disk", disk)
            .put("recoveries", st.recoveries)
            .put("unblocked", st.unblocked)
            .put("truncated_records", st.truncated_records)
            .put("full_rejections", st.full_rejections)
            .put("enqueue_latency", latency_json(&st.enqueue_latency))
            .put("sync_wait", latency_json(&st.sync_wait))
            .put("groups", groups_json(&st.groups))
            .put("named_tailers", cursors_json(&st.tailers))
            .put("peers", peers_json(&store.peer_links()));
        out.line(&o.render())?;
    } else {
        let kv: Vec<(&str, String)> = vec![
            ("queue", dir.clone()),
            ("durability", cfg.durability.to_string()),
            ("capacity", cfg.capacity.to_string()),
            ("segment_size", cfg.segment_size.to_string()),
            ("depth", st.depth.to_string()),
            ("appended", st.reserved.to_string()),
            ("first_id", first.to_string()),
            ("tail", st.tail.to_string()),
            ("committed", st.committed.to_string()),
            ("flushed", st.flushed.to_string()),
            ("replicated", st.replicated.to_string()),
            ("sync_acks", store.sync_acks().to_string()),
            ("epoch", st.epoch.to_string()),
            ("segments", segs.len().to_string()),
            ("low_segment", st.low_segment.to_string()),
            ("bytes_on_disk", disk.to_string()),
            ("recoveries", st.recoveries.to_string()),
            ("unblocked", st.unblocked.to_string()),
            ("truncated_records", st.truncated_records.to_string()),
            ("full_rejections", st.full_rejections.to_string()),
            ("enqueue_latency", latency_text(&st.enqueue_latency)),
            ("sync_wait", latency_text(&st.sync_wait)),
        ];
        for (k, v) in kv {
            out.line(&format!("{k:<14} {v}"))?;
        }
        for g in &st.groups {
            out.line(&format!(
                "group {:?} position={} dequeued={}",
                g.name, g.position, g.count
            ))?;
        }
        for t in &st.tailers {
            out.line(&format!(
                "named_tailer {:?} position={}",
                t.name, t.position
            ))?;
        }
        for p in &store.peer_links() {
            out.line(&peer_text(p))?;
        }
    }
    out.flush()?;
    Ok(OK)
}

pub fn verify(a: VerifyArgs) -> CmdResult {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let store = super::open_inspect(&a.dir)?;
    let first = store.first_position();
    let tail = store.tail_position();
    let pb = ProgressBar::with_draw_target(
        Some(tail.saturating_sub(first)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template(
        "verifying {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style);
    }
    let mut n = 0u64;
    let end = scan_all(&store, |f| {
        n += 1;
        if n % 4096 == 0 {
            pb.set_position(f.id.saturating_sub(first));
        }
        Ok(())
    });
    pb.finish_and_clear();
    let mut end = end?;
    if let Some(e) = end.error.take() {
        if e.code() != super::exit::CORRUPT {
            return Err(e);
        }
    }
    if end.stopped == "empty" && end.end < tail {
        end.bad.push((
            end.end,
            format!("the log ends at {} but the write position is {tail} (frames zeroed or a segment missing)", end.end),
        ));
    }
    let mut out = Out::stdout();
    for (id, why) in &end.bad {
        out.line(&format!("bad id={id}: {}", super::exit::one_line(why)))?;
    }
    if end.stopped == "pending" && !a.quiet {
        out.line(&format!(
            "note: stopped at a pending frame at id {} (a writer in flight, or dead: the next exclusive open pads it); frames after it were not checked",
            end.end
        ))?;
    }
    out.flush()?;
    if let Some((id, why)) = end.bad.first() {
        let why = super::exit::one_line(why);
        return Err(CliError::Corrupt(format!(
            "corrupt record at id {id}: {why} ({} damaged frame{} found)",
            end.bad.len(),
            if end.bad.len() == 1 { "" } else { "s" }
        )));
    }
    if !a.quiet {
        out.line(&format!(
            "ok: {} records in {} frames verified, ids {}..{}",
            end.records, end.frames, first, end.end
        ))?;
        out.flush()?;
    }
    Ok(OK)
}
