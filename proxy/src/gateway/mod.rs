//! The data path: a pingora `ProxyHttp` in front of one Kubernetes API server, one phase per hook.
//!
//! - `request_filter`: validate and classify the request, verify the caller's token; answer a
//!   Kubernetes `Status` and stop on any failure (nothing reaches the upstream).
//! - `upstream_peer`: the API server over verified TLS; HTTP/2 for ordinary requests, HTTP/1.1 for
//!   upgrades (exec/attach/port-forward), no read timeout for streams unless configured.
//! - `upstream_request_filter`: strip what the client may not send, add the gateway's credential
//!   and the impersonation headers ([`headers`]).
//! - `fail_to_proxy`: every error the gateway itself produces becomes a `Status`.
//! - `logging`: metrics and one structured log line per request.
//!
//! Must never: forward a request without a verified identity (except in the explicit benchmark
//! passthrough mode), forward the client's credential, or log a token.

pub mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::{HttpUpstreamRequestPolicy, ALPN};

use crate::classify::{self, RequestInfo};
use crate::identity::{Identity, Verifier};
use crate::metrics::{Metrics, StreamGuard};
use crate::status::Status;
use crate::upstream::Upstream;

pub struct Gateway {
    pub verifier: Arc<Verifier>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    /// Benchmark baseline only: no authentication, classification or impersonation.
    pub passthrough: bool,
    pub connect_timeout: Duration,
    pub stream_idle_timeout: Option<Duration>,
}

/// Per-request state shared between the phases.
pub struct RequestCtx {
    started: Instant,
    info: Option<RequestInfo>,
    identity: Option<Identity>,
    /// This request's id: logged, and sent upstream as extra `portcullis.dev/session`.
    session_id: String,
    upgrade: Option<HeaderValue>,
    streaming: bool,
    _stream: Option<StreamGuard>,
}

impl Gateway {
    fn now_epoch() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Write a `Status` as the whole response.
async fn respond_status(session: &mut Session, status: &Status) -> Result<()> {
    let body = status.to_json();
    let mut resp = ResponseHeader::build(status.code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache, private")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// A request id unique to this process run and unguessable across runs: a random per-process
/// prefix (std's hasher keys come from the OS RNG) and a counter. It only correlates logs; it
/// grants nothing.
fn new_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}-{n:08x}")
}

fn is_streaming(info: &RequestInfo, query: Option<&str>, upgrade: bool) -> bool {
    upgrade
        || info.verb == classify::Verb::Watch
        || (info.subresource == "log"
            && query.is_some_and(|q| {
                q.split('&')
                    .any(|kv| matches!(kv, "follow=true" | "follow=1"))
            }))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            info: None,
            identity: None,
            session_id: new_session_id(),
            upgrade: None,
            streaming: false,
            _stream: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        // Only HTTP/1.1 can upgrade; an `Upgrade` header on h2 is meaningless and dropped later.
        ctx.upgrade = if req.version == http::Version::HTTP_11 {
            req.headers.get(http::header::UPGRADE).cloned()
        } else {
            None
        };
        if self.passthrough {
            return Ok(false);
        }

        if let Some(name) = headers::nominated_protected_header(&req.headers) {
            let message =
                format!("the Connection header may not nominate the protected header {name:?}");
            respond_status(session, &Status::bad_request(message)).await?;
            return Ok(true);
        }
        let info = match classify::classify(&req.method, req.uri.path(), req.uri.query()) {
            Ok(info) => info,
            Err(e) => {
                respond_status(session, &Status::bad_request(e.to_string())).await?;
                return Ok(true);
            }
        };
        ctx.streaming = is_streaming(&info, req.uri.query(), ctx.upgrade.is_some());
        ctx.info = Some(info);

        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self
            .verifier
            .authenticate(authorization, Self::now_epoch())
            .await
        {
            Ok(identity) => ctx.identity = Some(identity),
            Err(e) => {
                tracing::info!(session = %ctx.session_id, reason = %e, "request refused: authentication failed");
                respond_status(session, &Status::unauthorized(e.to_string())).await?;
                return Ok(true);
            }
        }
        if ctx.streaming {
            ctx._stream = Some(StreamGuard::open(&self.metrics.active_streams));
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(
            self.upstream.address.as_str(),
            self.upstream.tls,
            self.upstream.sni.clone(),
        );
        peer.options.ca = self.upstream.ca.clone();
        peer.options.connection_timeout = Some(self.connect_timeout);
        if ctx.upgrade.is_some() || !self.upstream.tls {
            // pingora turns an upgrade sent over h2 into a plain request: upgrades go over HTTP/1.1.
            peer.options.alpn = ALPN::H1;
        } else {
            peer.options.alpn = ALPN::H2H1;
            peer.options.max_h2_streams = 100;
        }
        if ctx.upgrade.is_some() {
            // SPDY/3.1 is not a WebSocket: keep the upgrade; `headers` already sanitized every
            // hop-by-hop header itself.
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        if ctx.streaming {
            peer.options.read_timeout = self.stream_idle_timeout;
            peer.options.idle_timeout = self.stream_idle_timeout;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let token = self.upstream.credential.current().map_err(|e| {
            tracing::error!(error = %e, "upstream credential unavailable");
            Error::explain(
                ErrorType::HTTPStatus(503),
                "the gateway's upstream credential is unavailable",
            )
        })?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let forwarding = headers::Forwarding {
            authority: &self.upstream.authority,
            upstream_token: &token,
            identity: ctx.identity.as_ref(),
            upgrade: ctx.upgrade.clone(),
            session_id: &ctx.session_id,
            client_ip: client_ip.as_deref(),
        };
        headers::prepare_upstream_request(upstream_request, &forwarding)
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(400), e.to_string()))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // Once the response has started there is nothing more to say to the client.
        if code > 0 && session.response_written().is_none() {
            let message = match (code, e.esource()) {
                (502, _) => format!(
                    "the gateway cannot reach the Kubernetes API server ({})",
                    e.etype().as_str()
                ),
                // Our own explained errors carry a message meant for the client.
                (503, _) | (400, _) if matches!(e.etype(), ErrorType::HTTPStatus(_)) => e
                    .context
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| e.etype().as_str().to_string()),
                (400, _) => format!(
                    "the gateway could not read or forward the request ({})",
                    e.etype().as_str()
                ),
                _ => format!("gateway error ({})", e.etype().as_str()),
            };
            if let Err(write_err) = respond_status(session, &Status::from_code(code, message)).await
            {
                tracing::debug!(error = %write_err, "could not write error status to the client");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let code = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let (verb, resource) = ctx
            .info
            .as_ref()
            .map(|i| (i.verb.as_str().to_string(), i.resource.clone()))
            .unwrap_or_else(|| ("unknown".into(), String::new()));
        let code_label = code.to_string();
        self.metrics
            .requests
            .with_label_values(&[verb.as_str(), resource.as_str(), code_label.as_str()])
            .inc();
        let elapsed = ctx.started.elapsed();
        if !ctx.streaming {
            self.metrics
                .latency
                .with_label_values(&[verb.as_str()])
                .observe(elapsed.as_secs_f64());
        }
        let req = session.req_header();
        tracing::info!(
            method = %req.method,
            path = %req.uri.path(),
            verb = %verb,
            resource = %resource,
            user = ctx.identity.as_ref().map(|i| i.user.as_str()).unwrap_or("-"),
            session = %ctx.session_id,
            code,
            elapsed_ms = elapsed.as_millis() as u64,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
            "request"
        );
    }
}
