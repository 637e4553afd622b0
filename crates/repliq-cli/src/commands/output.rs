//! Record formats (`text`, `json`, `hex`) and buffered standard output.

use std::io::{self, BufWriter, StdoutLock, Write};

use base64::Engine as _;

use super::exit::CliError;
use super::json::{Json, Obj};

/// How `tail` and `dequeue` print a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `ID EPOCH PAYLOAD`, the payload escaped (`\n`, `\t`, `\\`, `\xNN`, ...).
    #[default]
    Text,
    /// One JSON object per line: id, epoch, len, payload (UTF-8 or null), payload_base64.
    Json,
    /// `ID EPOCH HEX`, the payload in lower-case hexadecimal.
    Hex,
}

/// Standard output, buffered; errors become [`CliError::Stdout`].
pub struct Out {
    w: BufWriter<StdoutLock<'static>>,
}

impl Out {
    /// Locks and buffers standard output.
    pub fn stdout() -> Out {
        Out {
            w: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, s: &str) -> Result<(), CliError> {
        self.w
            .write_all(s.as_bytes())
            .and_then(|()| self.w.write_all(b"\n"))
            .map_err(CliError::Stdout)
    }

    /// Writes one record in `fmt`, followed by a newline.
    pub fn record(
        &mut self,
        fmt: Format,
        id: u64,
        epoch: u32,
        payload: &[u8],
    ) -> Result<(), CliError> {
        let s = format_record(fmt, id, epoch, payload);
        self.line(&s)
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(CliError::Stdout)
    }
}

/// Renders one record in `fmt` (without the newline).
pub fn format_record(fmt: Format, id: u64, epoch: u32, payload: &[u8]) -> String {
    match fmt {
        Format::Text => format!("{id} {epoch} {}", escape(payload)),
        Format::Hex => format!("{id} {epoch} {}", hex(payload)),
        Format::Json => {
            let text = std::str::from_utf8(payload).ok();
            Obj::new()
                .put("id", id)
                .put("epoch", epoch)
                .put("len", payload.len())
                .put("payload", text.map(Json::from).unwrap_or(Json::Null))
                .put_opt(
                    "payload_base64",
                    text.is_none()
                        .then(|| base64::engine::general_purpose::STANDARD.encode(payload)),
                )
                .render()
        }
    }
}

/// Escapes a payload for one line of text: valid UTF-8 passes except
/// backslash and control characters; invalid bytes become `\xNN`.
pub fn escape(payload: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x80 && c.is_control() => {
                    let _ = write!(s, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// Lower-case hexadecimal.
pub fn hex(payload: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(payload.len() * 2);
    for &b in payload {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\nb\tc\\d\x00\x7f"), "a\\nb\\tc\\\\d\\x00\\x7f");
        assert_eq!(escape("é".as_bytes()), "é");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape("\u{85}".as_bytes()), "\\u{85}");
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_record(Format::Text, 64, 1, b"hi there"),
            "64 1 hi there"
        );
        assert_eq!(format_record(Format::Hex, 64, 1, b"\x01\xab"), "64 1 01ab");
        assert_eq!(
            format_record(Format::Json, 64, 1, b"hi"),
            r#"{"id":64,"epoch":1,"len":2,"payload":"hi"}"#
        );
        assert_eq!(
            format_record(Format::Json, 64, 1, b"\xff"),
            r#"{"id":64,"epoch":1,"len":1,"payload":null,"payload_base64":"/w=="}"#
        );
    }
}
