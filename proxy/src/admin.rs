//! The admin port: liveness, readiness and Prometheus metrics, apart from the API listener.
//!
//! Owns: `/healthz`, `/readyz`, `/metrics`. Must never: serve anything of the protected cluster
//! or accept credentials; it is meant for the kubelet's probes and the metrics scraper.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::identity::Verifier;
use crate::metrics::Metrics;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    /// The node agent's pin directory (`redirect.pin_dir`): its counters join `/metrics`.
    pub redirect_pins: Option<PathBuf>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (code, content_type, body) = match path.as_str() {
            "/healthz" | "/livez" => (200, "text/plain", b"ok".to_vec()),
            "/readyz" => readyz(&self.verifier),
            "/metrics" => {
                if let Some(pins) = &self.redirect_pins {
                    crate::redirect::gateway::export_counters(pins, &self.metrics.redirect_events);
                }
                (200, "text/plain; version=0.0.4", self.metrics.render())
            }
            _ => (404, "text/plain", b"not found".to_vec()),
        };
        Response::builder()
            .status(code)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// 200 when every issuer holds keys, else 503 naming the issuers without; one line per issuer
/// either way (key count and the last fetch error, which names URLs but never a token).
fn readyz(verifier: &Verifier) -> (u16, &'static str, Vec<u8>) {
    let status = verifier.status();
    let missing: Vec<&str> = status
        .iter()
        .filter(|s| s.keys == 0)
        .map(|s| s.issuer.as_str())
        .collect();
    let mut body = if missing.is_empty() {
        "ok\n".to_string()
    } else {
        format!("not ready: no keys for issuer(s) {}\n", missing.join(", "))
    };
    for s in &status {
        body.push_str(&format!(
            "issuer {}: {} key(s){}\n",
            s.issuer,
            s.keys,
            s.last_error
                .as_deref()
                .map(|e| format!(", last fetch failed: {e}"))
                .unwrap_or_default()
        ));
    }
    let code = if missing.is_empty() { 200 } else { 503 };
    (code, "text/plain", body.into_bytes())
}
