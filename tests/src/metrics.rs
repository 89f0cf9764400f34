//! Scraping a test server's Prometheus endpoint as an operator would: curl
//! over HTTPS with the server's certificate as CA.

use std::process::Command;

use crate::{TestServer, stderr};

/// HTTP status and body of a GET of `path` on `server`'s metrics endpoint
/// (the server must run with `TANDEM_SERVER_METRICS_LISTEN`), sending
/// `token` when given; status 0 and curl's message when no answer came.
pub fn metrics_get(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let data = server.data.path();
    let addr = std::fs::read_to_string(data.join("metrics.addr")).expect("metrics.addr");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(data.join("tls").join("cert.pem"))
        .args(["-w", "\n%{http_code}"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl
        .arg(format!("https://{}{path}", addr.trim()))
        .output()
        .expect("run curl");
    if !out.status.success() {
        // No HTTP answer at all (refused, cut): status 0.
        return (0, stderr(&out));
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// The metrics text of `server`, read with its own token.
pub fn metrics_text(server: &TestServer) -> String {
    let token = std::fs::read_to_string(server.data.path().join("metrics.token")).unwrap();
    let (status, body) = metrics_get(server, "/metrics", Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name{labels}` (exactly as printed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
