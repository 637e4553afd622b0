//! `http.auth_token_file`: a real daemon whose HTTP server needs a bearer
//! token on everything but the probes, takes the dashboard's token once as
//! `/?token=` (a cookie after that), follows a rotated token file without a
//! restart, and is reached by the CLI with `REPLIQ_HTTP_TOKEN`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, http_get_with, KillOnDrop, PATIENCE};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");

fn config(root: &Path, http: &str, token_file: &Path) -> String {
    format!(
        "node:\n  name: solo\nreplication:\n  mode: async\n  listen: 127.0.0.1:{}\n\
         queue:\n  persistence:\n    path: {}\nhttp:\n  listen: {http}\n  auth_token_file: {}\n",
        free_port(),
        root.join("data").display(),
        token_file.display()
    )
}

/// The status of `GET path` with `headers`.
fn status(http: &str, path: &str, headers: &str) -> u16 {
    http_get_with(http, path, headers).map_or(0, |r| r.0)
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

#[test]
fn every_endpoint_but_the_probes_needs_the_token_which_follows_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let cfg = tmp.path().join("config.yaml");
    std::fs::write(&cfg, config(tmp.path(), &http, &token)).unwrap();
    let _daemon = KillOnDrop(
        Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + PATIENCE;
    while status(&http, "/healthz", "") != 200 {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The probes are open; everything else needs the token.
    assert_eq!(status(&http, "/readyz", ""), 200);
    for path in [
        "/metrics",
        "/api/v1/queues",
        "/api/v1/cluster",
        "/api/v1/node",
        "/",
        "/ui/app.js",
    ] {
        let (code, head, _) = http_get_with(&http, path, "").unwrap();
        assert_eq!(code, 401, "{path} without a token");
        assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
        assert_eq!(
            status(&http, path, &bearer("wrong-token")),
            401,
            "{path}, wrong token"
        );
        assert_eq!(
            status(&http, path, &bearer("first-tok")),
            401,
            "{path}, a prefix"
        );
    }
    assert_eq!(status(&http, "/metrics", &bearer("first-token")), 200);
    assert_eq!(status(&http, "/api/v1/queues", &bearer("first-token")), 200);

    // The dashboard: /?token= sets a cookie and redirects; the cookie then
    // serves the page and the API the page calls.
    assert_eq!(status(&http, "/?token=wrong", ""), 401);
    let (code, head, _) = http_get_with(&http, "/?token=first-token", "").unwrap();
    assert_eq!(code, 303, "{head}");
    assert!(
        head.contains("set-cookie: repliq_token=first-token"),
        "{head}"
    );
    assert!(head.contains("httponly"), "{head}");
    let cookie = "Cookie: theme=dark; repliq_token=first-token\r\n";
    assert_eq!(status(&http, "/", cookie), 200);
    assert_eq!(status(&http, "/api/v1/cluster", cookie), 200);

    // The CLI sends REPLIQ_HTTP_TOKEN; without it, it says what is missing.
    let out = Command::new(BIN)
        .args(["cluster", "status", &http])
        .env_remove("REPLIQ_HTTP_TOKEN")
        .env_remove("REPLIQ_HTTP_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REPLIQ_HTTP_TOKEN"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["cluster", "status", &http, "--json"])
        .env("REPLIQ_HTTP_TOKEN", "first-token")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Rotation: the new token works within a few seconds, the old one stops.
    std::fs::write(&token, "second-token\n").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while status(&http, "/metrics", &bearer("second-token")) != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&http, "/metrics", &bearer("first-token")), 401);
    let out = Command::new(BIN)
        .args(["cluster", "status", &http, "--json"])
        .env_remove("REPLIQ_HTTP_TOKEN")
        .env("REPLIQ_HTTP_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_missing_or_empty_token_file_is_a_config_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let token = tmp.path().join("token");
    for content in [None, Some("   \n")] {
        if let Some(c) = content {
            std::fs::write(&token, c).unwrap();
        }
        let cfg = tmp.path().join("config.yaml");
        std::fs::write(&cfg, config(tmp.path(), &http, &token)).unwrap();
        let out = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{content:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("http.auth_token_file"), "{content:?}: {err}");
    }
}
