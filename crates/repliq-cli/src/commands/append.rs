//! `repliq append`.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use repliq::replication::sync;
use repliq::store::{Durability, Store};

use super::args;
use super::exit::{CliError, CmdResult, OK};
use super::output::Out;

/// Arguments of `repliq append`.
#[derive(clap::Args, Debug)]
pub struct AppendArgs {
    /// Queue directory (must exist; see `repliq create`).
    pub dir: PathBuf,
    /// Messages to append, one per argument. Without any (and without
    /// --file), one message per line of standard input is appended, the line
    /// ending ("\n" or "\r\n") removed.
    #[arg(conflicts_with = "file")]
    pub messages: Vec<String>,
    /// Append the whole content of this file as one message ("-" for standard input).
    #[arg(long, short = 'F', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the id of each appended message, one per line.
    #[arg(long)]
    pub print_ids: bool,
    /// On a queue its daemon replicates synchronously: how long to wait for
    /// the replicas' acknowledgements of the last message before exiting 1
    /// (500ms, 2s, 1m). The messages stay in the log either way.
    #[arg(long, value_parser = args::parse_duration, value_name = "DURATION", default_value = "5s")]
    pub sync_timeout: Duration,
}

pub fn run(a: AppendArgs) -> CmdResult {
    let store = super::open_existing(&a.dir)?;
    let mut out = Out::stdout();
    let mut n = 0u64;
    let mut last: Option<(u64, usize)> = None;
    let mut put = |payload: &[u8], out: &mut Out| -> Result<(), CliError> {
        let id = store.append(payload).map_err(|e| {
            if n > 0 {
                CliError::Coded {
                    msg: format!("{e} (after appending {n} messages)"),
                    code: super::exit::store_code(&e),
                }
            } else {
                CliError::Store(e)
            }
        })?;
        n += 1;
        last = Some((id, payload.len()));
        if a.print_ids {
            out.line(&id.to_string())?;
        }
        Ok(())
    };
    let r = (|| {
        if let Some(f) = &a.file {
            let data = if f.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut v)
                    .map_err(|e| CliError::Input {
                        what: "standard input".into(),
                        source: e,
                    })?;
                v
            } else {
                std::fs::read(f).map_err(|e| CliError::Input {
                    what: f.display().to_string(),
                    source: e,
                })?
            };
            put(&data, &mut out)?;
        } else if !a.messages.is_empty() {
            for m in &a.messages {
                put(m.as_bytes(), &mut out)?;
            }
        } else {
            let mut stdin = std::io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                let got = stdin
                    .read_until(b'\n', &mut line)
                    .map_err(|e| CliError::Input {
                        what: "standard input".into(),
                        source: e,
                    })?;
                if got == 0 {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                put(&line, &mut out)?;
            }
        }
        Ok::<(), CliError>(())
    })();
    let flushed = out.flush();
    finish(&store)?;
    r?;
    flushed?;
    if let Some((id, len)) = last {
        acknowledged(&store, id, len, a.sync_timeout)?;
    }
    Ok(OK)
}

/// On a queue its daemon replicates synchronously (the control file says how
/// many acknowledgements), waits until the replicas acknowledged the record
/// `id` (and so every record before it), as the founding API's `enqueue`
/// does.
fn acknowledged(store: &Store, id: u64, len: usize, timeout: Duration) -> Result<(), CliError> {
    let acks = store.sync_acks();
    if acks == 0 {
        return Ok(());
    }
    let end = sync::record_end(store, id, len);
    sync::wait_replicated_blocking(store, end, timeout).map_err(|e| CliError::Coded {
        msg: format!(
            "appended up to id {id}, but not acknowledged by {acks} replica(s) besides the \
             leader: {e}; the messages stay in the log"
        ),
        code: 1,
    })
}

/// Pushes what was appended to disk unless the queue is in `none` durability.
fn finish(store: &Store) -> Result<(), CliError> {
    if store.config().durability != Durability::None {
        store.flush()?;
    }
    Ok(())
}
