//! Small files written atomically: write a temporary file, fsync it, rename it over the
//! target and fsync the directory. Content is `crc32c: u32 LE | postcard body`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// fsyncs a directory, so that creations and renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Writes `value` to `path` atomically and durably.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let body = postcard::to_stdvec(value)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(StoreError::io("create", &tmp))?;
    f.write_all(&buf).map_err(StoreError::io("write", &tmp))?;
    f.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(StoreError::io("rename", path))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    sync_dir(dir)
}

/// Reads a file written by [`write_atomic`]; `Ok(None)` if it does not exist.
pub fn read_atomic<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    if buf.len() < 4 {
        return Err(corrupt(format!(
            "{} bytes, shorter than a header",
            buf.len()
        )));
    }
    let (head, body) = buf.split_at(4);
    let crc = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("crc mismatch".into()));
    }
    postcard::from_bytes(body)
        .map(Some)
        .map_err(|e| corrupt(format!("decode: {e}")))
}
