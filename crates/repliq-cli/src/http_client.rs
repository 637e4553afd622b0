//! The CLI's HTTP/1.1 client for the daemon's API (`repliq top`,
//! `repliq cluster`): one request per connection, the bearer token of a
//! daemon with `http.auth_token_file` taken from `REPLIQ_HTTP_TOKEN` or the
//! file named by `REPLIQ_HTTP_TOKEN_FILE`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The `Authorization` header line to send, if a token is configured.
fn auth_header() -> Result<String, String> {
    let token = match std::env::var("REPLIQ_HTTP_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => match std::env::var_os("REPLIQ_HTTP_TOKEN_FILE") {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| format!("REPLIQ_HTTP_TOKEN_FILE {}: {e}", p.to_string_lossy()))?;
                text.trim().to_string()
            }
            None => return Ok(String::new()),
        },
    };
    if token.is_empty() || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the HTTP token is empty or not one word".into());
    }
    Ok(format!("Authorization: Bearer {token}\r\n"))
}

/// Sends `METHOD path` to `addr` with an empty body and returns the status
/// code and the (de-chunked) body. `read_timeout` bounds the wait for the
/// answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    read_timeout: Duration,
) -> Result<(String, String), String> {
    let auth = auth_header()?;
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: bad address: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(read_timeout));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{auth}\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: cannot send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer (is it the daemon's http.listen?)"))?;
    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).ok_or_else(|| format!("{addr}: malformed chunked answer"))?
    } else {
        body.to_string()
    };
    if status == "401" {
        return Err(format!(
            "{addr}: HTTP 401: the daemon needs its http.auth_token_file token \
             (set REPLIQ_HTTP_TOKEN or REPLIQ_HTTP_TOKEN_FILE)"
        ));
    }
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("zz\r\n"), None);
    }
}
