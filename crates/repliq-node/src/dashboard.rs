//! The built-in web dashboard: a few static files compiled into the binary
//! (no CDN, works offline), reading `/api/v1/*` every second.
//!
//! Chart.js is vendored from Debian's `libjs-chart.js` (MIT/Expat), its
//! copyright file beside it.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `(path, content type, body)` of every file served.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../dashboard/index.html"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../dashboard/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../dashboard/dashboard.js"),
    ),
    (
        "vendor/chart.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../dashboard/vendor/chart.min.js"),
    ),
    (
        "vendor/chart.js.copyright",
        "text/plain; charset=utf-8",
        include_bytes!("../dashboard/vendor/chart.js.copyright"),
    ),
];

/// Everything the page loads comes from this server.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; frame-ancestors 'none'";

fn serve(path: &str) -> Response {
    match FILES.iter().find(|f| f.0 == path) {
        Some((_, ty, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, *ty),
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{*file}`: the page's scripts, styles and vendored library.
pub async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_references_is_served() {
        let html = std::str::from_utf8(FILES[0].2).unwrap();
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let url = part.split('"').next().unwrap();
                assert!(
                    !url.contains("://") && !url.starts_with('/'),
                    "{url}: only relative references (the page may sit under a prefix)"
                );
                if let Some(f) = url.strip_prefix("ui/") {
                    assert!(FILES.iter().any(|x| x.0 == f), "{url} is not served");
                    refs += 1;
                }
            }
        }
        assert!(
            refs >= 3,
            "the page loads its script, style and chart library"
        );
        assert_eq!(serve("missing.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("dashboard.js").status(), StatusCode::OK);
    }
}
