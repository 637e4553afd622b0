//! `repliq append`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

use repliq::replication::sync;
use repliq::store::{Durability, Store};

use super::args;
use super::exit::{CliError, CmdResult, OK};
use super::output::Out;

/// Most lines of standard input appended as one batch.
const BATCH_LINES: usize = 256;
/// A batch of standard input's lines stops growing past this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// Standard input's read buffer: the lines a batch can take without waiting.
const STDIN_BUFFER: usize = 64 << 10;

/// Arguments of `repliq append`.
#[derive(clap::Args, Debug)]
pub struct AppendArgs {
    /// Queue directory (must exist; see `repliq create`).
    pub dir: PathBuf,
    /// Messages to append, one per argument. Without any (and without
    /// --file), one message per line of standard input is appended, the line
    /// ending ("\n" or "\r\n") removed; the lines already read in are
    /// appended together as one batch (up to 256 lines or 1 MiB), so a pipe
    /// costs one claim per batch while a terminal's lines land one by one.
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
    // Appends `lines` (the messages `buf[ends[i-1]..ends[i]]`) as one batch.
    let mut put = |buf: &[u8], ends: &[usize], out: &mut Out| -> Result<(), CliError> {
        let start = |i: usize| if i == 0 { 0 } else { ends[i - 1] };
        let lens: Vec<usize> = (0..ends.len()).map(|i| ends[i] - start(i)).collect();
        let ids = store
            .append_many_with(&lens, |i, dst| dst.copy_from_slice(&buf[start(i)..ends[i]]))
            .map_err(|e| {
                if n > 0 {
                    CliError::Coded {
                        msg: format!("{e} (after appending {n} messages)"),
                        code: super::exit::store_code(&e),
                    }
                } else {
                    CliError::Store(e)
                }
            })?;
        n += ids.len() as u64;
        if let (Some(&id), Some(&len)) = (ids.last(), lens.last()) {
            last = Some((id, len));
        }
        if a.print_ids {
            for id in ids {
                out.line(&id.to_string())?;
            }
        }
        Ok(())
    };
    let max_payload = store.geometry().max_payload() as usize;
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
            put(&data, &[data.len()], &mut out)?;
        } else if !a.messages.is_empty() {
            for m in &a.messages {
                put(m.as_bytes(), &[m.len()], &mut out)?;
            }
        } else {
            let mut stdin = BufReader::with_capacity(STDIN_BUFFER, std::io::stdin().lock());
            line_batches(&mut stdin, max_payload, |buf, ends| {
                put(buf, ends, &mut out)
            })?;
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

/// Reads lines from `input` (line endings "\n" or "\r\n" removed) and hands
/// them to `put` in batches, as one buffer and the end offset of each line:
/// one line, waiting for it if need be, then every further whole line
/// already buffered, up to [`BATCH_LINES`] lines or [`BATCH_BYTES`] bytes. A
/// line over `max_payload` bytes goes in a batch after the lines before it,
/// so that they are appended before it fails, as one line at a time would.
fn line_batches<R: Read>(
    input: &mut BufReader<R>,
    max_payload: usize,
    mut put: impl FnMut(&[u8], &[usize]) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    loop {
        let start = buf.len();
        let got = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| CliError::Input {
                what: "standard input".into(),
                source: e,
            })?;
        if got > 0 {
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            if buf.len() - start > max_payload && !ends.is_empty() {
                let line = buf.split_off(start);
                put(&buf, &ends)?;
                (buf, ends) = (line, Vec::new());
            }
            ends.push(buf.len());
        }
        let more = got > 0
            && ends.len() < BATCH_LINES
            && buf.len() < BATCH_BYTES
            && input.buffer().contains(&b'\n');
        if !more && !ends.is_empty() {
            put(&buf, &ends)?;
            buf.clear();
            ends.clear();
        }
        if got == 0 {
            return Ok(());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `line_batches` over `input` with a read buffer of `cap` bytes;
    /// returns the batches as lists of lines.
    fn batches(input: &[u8], cap: usize, max_payload: usize) -> Vec<Vec<Vec<u8>>> {
        let mut r = BufReader::with_capacity(cap, input);
        let mut out = Vec::new();
        line_batches(&mut r, max_payload, |buf, ends| {
            let mut start = 0;
            let mut b = Vec::new();
            for &e in ends {
                b.push(buf[start..e].to_vec());
                start = e;
            }
            out.push(b);
            Ok(())
        })
        .expect("in-memory input");
        out
    }

    fn lines(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn buffered_lines_go_in_one_batch_with_line_endings_removed() {
        let got = batches(b"a\r\nbb\n\nccc\n", 1024, 100);
        assert_eq!(got, vec![lines(&["a", "bb", "", "ccc"])]);
        // A last line without its "\n" is not known whole until read: it
        // comes after the batch before it.
        let got = batches(b"a\nb\nc", 1024, 100);
        assert_eq!(got, vec![lines(&["a", "b"]), lines(&["c"])]);
    }

    #[test]
    fn a_batch_takes_only_the_whole_lines_already_read_in() {
        // A 4-byte buffer holds at most one whole line of "xy\n" at a time.
        let got = batches(b"xy\nzw\nuv\n", 4, 100);
        let all: Vec<Vec<u8>> = got.concat();
        assert_eq!(all, lines(&["xy", "zw", "uv"]));
        assert!(got.len() > 1, "{got:?}");
    }

    #[test]
    fn batches_stop_at_the_line_limit() {
        let input = "m\n".repeat(BATCH_LINES + 3);
        let got = batches(input.as_bytes(), 1 << 16, 100);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![BATCH_LINES, 3]
        );
    }

    #[test]
    fn an_oversized_line_starts_its_own_batch_after_the_lines_before_it() {
        let got = batches(b"ok\ntoolong\nnext\n", 1024, 4);
        assert_eq!(got, vec![lines(&["ok"]), lines(&["toolong", "next"])]);
    }
}
