//! The optional bearer token of the HTTP server (`http.auth_token_file`).
//!
//! With a token file configured, every endpoint but `/healthz` and `/readyz`
//! (the probes) needs the token: `Authorization: Bearer TOKEN` (Prometheus'
//! `bearer_token_file`, `curl -H`, the CLI's `REPLIQ_HTTP_TOKEN`), or the
//! `repliq_token` cookie a browser gets by opening the dashboard once as
//! `/?token=TOKEN`. A request without it is answered 401 with
//! `WWW-Authenticate: Bearer`. The file is read again when it changes on
//! disk, so a rotated Kubernetes Secret needs no restart; a file that became
//! unreadable or empty keeps the last token in force (logged).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

/// Name of the cookie the dashboard's requests carry the token in.
pub const COOKIE: &str = "repliq_token";

/// How often the token file's modification time is checked.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The token in force and the file it comes from.
#[derive(Debug)]
pub struct Token {
    path: PathBuf,
    current: RwLock<(Option<SystemTime>, String)>,
}

/// Reads a token file: its content without surrounding white space, which
/// must not be empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ';')
    {
        return Err(format!(
            "{}: the token must be one word without spaces, control characters or ';'",
            path.display()
        ));
    }
    Ok(t.to_string())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Token {
    /// Loads the token from `path`.
    pub fn load(path: &Path) -> Result<Arc<Token>, String> {
        let t = read_token(path)?;
        Ok(Arc::new(Token {
            path: path.to_path_buf(),
            current: RwLock::new((modified(path), t)),
        }))
    }

    /// True if `given` is the token in force (compared in constant time).
    pub fn matches(&self, given: &str) -> bool {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        let (a, b) = (cur.1.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Re-reads the file whenever its modification time changes, until the
    /// task is aborted. File access runs on the blocking pool.
    pub async fn reload(self: Arc<Token>) {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_once()).await;
        }
    }

    /// One check of the file; true if a new token was taken.
    fn reload_once(&self) -> bool {
        let m = modified(&self.path);
        let last = self.current.read().unwrap_or_else(|p| p.into_inner()).0;
        if m == last {
            return false;
        }
        match read_token(&self.path) {
            Ok(t) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (m, t);
                tracing::info!(file = %self.path.display(), "http.auth_token_file changed: new token in force");
                true
            }
            Err(e) => {
                tracing::warn!("http.auth_token_file: {e}; the previous token stays in force");
                false
            }
        }
    }
}

/// The token a request carries: its bearer header, else its cookie.
fn presented(req: &Request) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim());
        }
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `token` query parameter of a request, if any.
fn query_token(req: &Request) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

/// Middleware: lets a request through only with the token. `/?token=T`
/// with the right token sets the cookie and redirects to `/`.
pub async fn require(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    if presented(&req).is_some_and(|t| token.matches(t)) {
        return next.run(req).await;
    }
    if req.uri().path() == "/" {
        if let Some(t) = query_token(&req).filter(|t| token.matches(t)) {
            let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"repliq\"")],
        "401 unauthorized: this daemon needs its http.auth_token_file token \
         (Authorization: Bearer TOKEN; for the dashboard, open /?token=TOKEN once)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_must_hold_one_word() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret\n").expect("write");
        assert_eq!(read_token(&p).as_deref(), Ok("s3cret"));
        std::fs::write(&p, "\n").expect("write");
        assert!(read_token(&p).is_err_and(|e| e.contains("no token")));
        std::fs::write(&p, "two words").expect("write");
        assert!(read_token(&p).is_err_and(|e| e.contains("one word")));
        assert!(read_token(&dir.path().join("missing")).is_err_and(|e| e.contains("cannot read")));
    }

    #[test]
    fn the_token_matches_exactly_and_follows_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        std::fs::write(&p, "first").expect("write");
        let t = Token::load(&p).expect("load");
        assert!(t.matches("first"));
        assert!(!t.matches("firs"));
        assert!(!t.matches("first "));
        assert!(!t.matches(""));
        // A rotation: a new file content with a later modification time.
        std::fs::write(&p, "second").expect("write");
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(later))
            .expect("set mtime");
        assert!(t.reload_once());
        assert!(t.matches("second"));
        assert!(!t.matches("first"));
        // An emptied file keeps the last token.
        std::fs::write(&p, "").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(later + Duration::from_secs(5)))
            .expect("set mtime");
        assert!(!t.reload_once());
        assert!(t.matches("second"));
    }
}
