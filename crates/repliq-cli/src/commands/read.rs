//! `repliq tail` and `repliq dequeue`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use repliq::store::IdleStrategy;

use super::args::{self, StartAt};
use super::exit::{CliError, CmdResult, OK};
use super::output::{Format, Out};

/// Longest single wait, so a signal is noticed promptly.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Arguments of `repliq tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// Keep waiting for new records until interrupted (Ctrl-C, SIGTERM: exit 0).
    #[arg(short, long)]
    pub follow: bool,
    /// Where to start: "start" (oldest retained record), "end" (only records
    /// appended from now on) or a record id. Default: start, or the saved
    /// position of a --named tailer.
    #[arg(long, value_parser = args::parse_start, value_name = "start|end|ID")]
    pub from: Option<StartAt>,
    /// Read as a named tailer: its position is saved in the queue and the next
    /// `tail --named` with the same name resumes after the last record printed.
    #[arg(long, value_name = "NAME")]
    pub named: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop after printing COUNT records (with -f, wait for them).
    #[arg(short = 'n', long, value_name = "COUNT")]
    pub count: Option<u64>,
}

pub fn tail(a: TailArgs) -> CmdResult {
    let stop = if a.follow {
        Some(super::stop_flag()?)
    } else {
        None
    };
    let store = super::open_existing(&a.dir)?;
    let mut t = match &a.named {
        Some(n) => store.named_tailer(n)?,
        None => store.tailer(),
    };
    match a.from {
        Some(StartAt::Start) => t.seek_start(),
        Some(StartAt::End) => t.seek_end(),
        Some(StartAt::Id(id)) => t.seek(id)?,
        None => {}
    }
    let mut out = Out::stdout();
    let fmt = a.format;
    let mut printed = 0u64;
    loop {
        if a.count.is_some_and(|c| printed >= c) || stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            break;
        }
        let mut got = t.next_with(|r| out.record(fmt, r.id, r.epoch, r.payload))?;
        if got.is_none() {
            if !a.follow {
                break;
            }
            out.flush()?;
            got = t.next_wait_with(IdleStrategy::Block, Some(WAIT_SLICE), |r| {
                out.record(fmt, r.id, r.epoch, r.payload)
            })?;
        }
        if let Some(written) = got {
            written?;
            printed += 1;
        }
    }
    out.flush()?;
    Ok(OK)
}

/// Arguments of `repliq dequeue`.
#[derive(clap::Args, Debug)]
pub struct DequeueArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// Consumer group (created on first use, starting at the oldest retained
    /// record). Default: the default group, whose backlog counts against the
    /// capacity.
    #[arg(long, short, value_name = "NAME")]
    pub group: Option<String>,
    /// Take up to COUNT messages.
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), value_name = "COUNT")]
    pub count: u64,
    /// Block until COUNT messages have been taken. Without it, take what is
    /// there (possibly nothing) and exit 0.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (500ms, 2s, 1.5, 1m); exit 8.
    #[arg(long, requires = "wait", value_parser = args::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn dequeue(a: DequeueArgs) -> CmdResult {
    let stop = if a.wait {
        Some(super::stop_flag()?)
    } else {
        None
    };
    let store = super::open_existing(&a.dir)?;
    let mut c = match &a.group {
        Some(g) => store.group_consumer(g)?,
        None => store.consumer(),
    };
    let deadline = a.timeout.map(|t| Instant::now() + t);
    let mut out = Out::stdout();
    let fmt = a.format;
    let mut taken = 0u64;
    while taken < a.count {
        let mut got = c.dequeue_with(|r| out.record(fmt, r.id, r.epoch, r.payload))?;
        if got.is_none() {
            if !a.wait {
                break;
            }
            out.flush()?;
            let interrupted = stop.is_some_and(|s| s.load(Ordering::SeqCst));
            let now = Instant::now();
            if interrupted || deadline.is_some_and(|d| now >= d) {
                out.flush()?;
                return Err(CliError::Incomplete(format!(
                    "{} after taking {taken} of {} messages",
                    if interrupted {
                        "interrupted"
                    } else {
                        "timed out"
                    },
                    a.count
                )));
            }
            let slice = deadline.map_or(WAIT_SLICE, |d| (d - now).min(WAIT_SLICE));
            got = c.dequeue_wait_with(IdleStrategy::Block, Some(slice), |r| {
                out.record(fmt, r.id, r.epoch, r.payload)
            })?;
        }
        if let Some(written) = got {
            written?;
            taken += 1;
        }
    }
    out.flush()?;
    Ok(OK)
}
