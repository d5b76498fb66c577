//! The admin port: liveness, readiness and Prometheus metrics, apart from the API listener.
//!
//! Owns: `/healthz`, `/readyz`, `/metrics`. Must never: serve anything of the protected cluster
//! or accept credentials; it is meant for the kubelet's probes and the metrics scraper.

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
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (code, content_type, body) = match path.as_str() {
            "/healthz" | "/livez" => (200, "text/plain", b"ok".to_vec()),
            "/readyz" => {
                if self.verifier.ready() {
                    (200, "text/plain", b"ok".to_vec())
                } else {
                    (
                        503,
                        "text/plain",
                        b"not ready: an identity issuer has no keys yet".to_vec(),
                    )
                }
            }
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics.render()),
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
