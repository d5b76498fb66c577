//! The data path: a pingora `ProxyHttp` in front of one Kubernetes API server, one phase per hook.
//!
//! - `request_filter`: with `redirect` configured, first look up where the node agent redirected
//!   the connection from (refusing another cluster's endpoint); then validate and classify the
//!   request, verify the caller's token; answer a Kubernetes `Status` and stop on any failure
//!   (nothing reaches the upstream).
//! - `upstream_peer`: the API server over verified TLS; HTTP/2 for ordinary requests, HTTP/1.1 for
//!   upgrades (exec/attach/port-forward), no read timeout for streams unless configured.
//! - `upstream_request_filter`: strip what the client may not send, add the gateway's credential
//!   and the impersonation headers ([`headers`]).
//! - `fail_to_proxy`: every error the gateway itself produces becomes a `Status`.
//! - `logging`: metrics and one structured log line per request.
//!
//! Must never: forward a request without a verified identity (except in the explicit benchmark
//! passthrough mode), forward the client's credential, or log a token.

pub mod audit;
pub mod enforce;
pub mod headers;
pub mod recording;

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
use crate::mask::{MaskProfile, Masker, ResponseMasker};
use crate::metrics::{Metrics, StreamGuard};
use crate::policy::{MaskChoice, PolicyHandle, RecordLevel, Subject};
use crate::record::frames::{Direction, StreamProtocol};
use crate::record::Recorder;
use crate::redirect::gateway::LookupError;
use crate::redirect::{OriginalDestination, Redirects, Routing};
use crate::status::Status;
use crate::upstream::Upstream;
use enforce::Verdict;
use recording::SessionRecording;

pub struct Gateway {
    pub verifier: Arc<Verifier>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    /// The policy in force (hot-reloaded elsewhere); taken once per request.
    pub policy: PolicyHandle,
    pub masker: Arc<Masker>,
    /// The audit log and session recordings; `None` only when `record.path` is not configured.
    pub recorder: Option<Recorder>,
    /// The node agent's lookup maps (`redirect` configured): see [`Gateway::refuse_misdirected`].
    pub redirects: Option<Arc<Redirects>>,
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
    /// The mask profile responses to this request go through, if one applies.
    mask: Option<Arc<MaskProfile>>,
    response_masker: Option<ResponseMasker>,
    /// Record exec/attach/port-forward contents (the rule's `record` obligation).
    /// How much of an exec/attach/port-forward session to record (policy obligation).
    record_level: RecordLevel,
    session: Option<SessionRecording>,
    /// The audit seq of this request's decision entry, for its completion entry.
    audit_seq: Option<u64>,
    upstream_status: Option<u16>,
    request_bytes: u64,
    response_bytes: u64,
    /// The gateway's token sent upstream, so a 401 can retire exactly that token.
    upstream_token: Option<Arc<str>>,
    /// Where the node agent redirected this connection from, when it did.
    original: Option<OriginalDestination>,
    /// The body of a create/update/patch as it passes, for the completion entry.
    request_body: Option<audit::BodyCapture>,
    /// The profile that masks that body: the request's profile (even where its responses need
    /// none), the default one when the policy says `none`; never unmasked.
    body_profile: Option<Arc<MaskProfile>>,
}

/// A session that cannot be decoded or recorded ends; the client sees the connection close.
fn end_session(e: recording::RecordingError, session_id: &str) -> Box<Error> {
    tracing::warn!(session = %session_id, error = %e, "ending a session that cannot be recorded");
    Error::explain(ErrorType::HTTPStatus(502), "session recording failed")
}

fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

impl Gateway {
    /// Policy, then the audit record: `Ok(true)` to forward. Refusals are answered here.
    async fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let (Some(info), Some(identity)) = (ctx.info.as_ref(), ctx.identity.as_ref()) else {
            respond_status(session, &Status::from_code(500, "request state lost")).await?;
            return Ok(false);
        };
        let subject = Subject {
            user: &identity.user,
            groups: &identity.groups,
            issuer: &identity.issuer,
        };
        let decision = self
            .policy
            .current()
            .decide(&subject, info, SystemTime::now());
        // Only the audit entry needs these: no allocations when recording is off.
        let (client_addr, agent) = match self.recorder {
            Some(_) => (client_ip(session), user_agent(session)),
            None => (None, None),
        };
        let decided = |allowed, reason, rule, status| audit::Decided {
            id: &ctx.session_id,
            client_addr: client_addr.clone(),
            user_agent: agent.clone(),
            identity: Some(identity),
            info,
            allowed,
            reason,
            rule,
            status,
            original: ctx.original,
        };
        let (rule, obligations) = match enforce::verdict(decision) {
            Verdict::Forward { rule, obligations } => (rule, obligations),
            Verdict::Refuse { rule, status, held } => {
                tracing::info!(session = %ctx.session_id, user = %identity.user, rule = rule.as_deref().unwrap_or("-"), held, "request refused by policy");
                if let Some(recorder) = &self.recorder {
                    let entry = audit::request_entry(decided(
                        false,
                        Some(status.message.clone()),
                        rule,
                        Some(status.code),
                    ));
                    // A refusal forwards nothing, so a failed record cannot let anything
                    // through; it is logged loudly instead of turning a 403 into a 503.
                    if let Err(e) = recorder.append(entry) {
                        tracing::error!(session = %ctx.session_id, error = %e, "cannot append the audit record of a refused request");
                    }
                }
                respond_status(session, &status).await?;
                return Ok(false);
            }
        };
        let mut body_profile = None;
        if let MaskChoice::Profile(name) = &obligations.mask {
            let Some(profile) = self.masker.profile(name) else {
                tracing::error!(session = %ctx.session_id, profile = %name, "the policy names a mask profile that does not exist");
                respond_status(
                    session,
                    &Status::from_code(500, "the gateway's policy names an unknown mask profile"),
                )
                .await?;
                return Ok(false);
            };
            if profile.applies_to(info) {
                ctx.mask = Some(profile.clone());
            }
            body_profile = Some(profile);
        }
        ctx.record_level = obligations.record;
        if let Some(recorder) = &self.recorder {
            if audit::wants_request_body(info) {
                ctx.request_body = Some(audit::BodyCapture::new(recorder.max_body_bytes()));
                ctx.body_profile =
                    Some(body_profile.unwrap_or_else(|| self.masker.default_profile()));
            }
            let entry = audit::request_entry(decided(true, None, rule, None));
            let appended = if audit::needs_durable_record(info) {
                recorder.append_durable(entry).await
            } else {
                recorder.append(entry)
            };
            match appended {
                Ok(seq) => ctx.audit_seq = Some(seq),
                Err(e) => {
                    tracing::error!(session = %ctx.session_id, error = %e, "audit log unavailable: refusing the request");
                    respond_status(
                        session,
                        &Status::from_code(
                            503,
                            "the gateway cannot record this request in its audit log, so it does not forward it",
                        ),
                    )
                    .await?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// A 101: decode and record the upgraded stream, or refuse it if it cannot be decoded.
    fn start_session_recording(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(recorder), Some(info)) = (&self.recorder, ctx.info.as_ref()) else {
            return Ok(());
        };
        if !info.is_streaming_upgrade() {
            return Ok(());
        }
        let req = session.req_header();
        let Some(protocol) =
            StreamProtocol::negotiated(&req.headers, &upstream_response.headers, &info.subresource)
        else {
            tracing::warn!(session = %ctx.session_id, "refusing an upgraded stream the gateway cannot decode");
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "the session's stream protocol cannot be recorded by the gateway",
            ));
        };
        let mut meta = recording::session_meta(
            info,
            req.uri.query(),
            ctx.identity.as_ref(),
            protocol,
            &ctx.session_id,
            ctx.audit_seq,
        );
        meta.frames_recorded = ctx.record_level == RecordLevel::Full;
        let recording = SessionRecording::start(recorder, protocol, meta).map_err(|e| {
            tracing::error!(session = %ctx.session_id, error = %e, "cannot open the session recording");
            Error::explain(
                ErrorType::HTTPStatus(503),
                "the gateway cannot record this session, so it does not open it",
            )
        })?;
        ctx.session = Some(recording);
        Ok(())
    }

    fn now_epoch() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

// --- The node agent's redirect (issue #6): where was this connection really going? ---------

impl Gateway {
    /// Looks the request's connection up in the node agent's maps (when `redirect` is
    /// configured) and keeps the answer for the audit record and the request log. `Ok(true)`:
    /// refused and answered here, because the agent redirected the connection from a protected
    /// endpoint this gateway's upstream does not stand for (`redirect.upstream_endpoints`):
    /// forwarding it would send the caller's request to the wrong cluster.
    ///
    /// A failed lookup is logged and the request goes on without an original destination. That
    /// bypasses nothing: the connection reached the gateway, so authentication, policy and
    /// audit all still apply; refusing would only turn a map error into an outage.
    async fn refuse_misdirected(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(redirects) = &self.redirects else {
            return Ok(false);
        };
        let Some((cookie, peer, local)) = connection_addresses(session) else {
            return Ok(false);
        };
        let found = match redirects.lookup(cookie, peer, local) {
            Ok(found) => found,
            Err(e @ LookupError::NotOpen(_)) => {
                tracing::debug!(session = %ctx.session_id, error = %e, "original destination unknown");
                None
            }
            Err(e) => {
                tracing::warn!(session = %ctx.session_id, error = %e, "original destination lookup failed; the request goes on without it");
                None
            }
        };
        match redirects.route(found) {
            Routing::Direct => Ok(false),
            Routing::Upstream(original) => {
                tracing::debug!(session = %ctx.session_id, original_destination = %original.destination, cgroup_id = original.cgroup_id, matched_by = ?original.matched_by, "redirected connection");
                ctx.original = Some(original);
                Ok(false)
            }
            Routing::Misdirected(original) => {
                tracing::warn!(session = %ctx.session_id, original_destination = %original.destination, cgroup_id = original.cgroup_id, "refusing a connection redirected from an endpoint this gateway does not serve");
                let message = format!(
                    "this gateway does not serve the API endpoint {} (it is not in redirect.upstream_endpoints)",
                    original.destination
                );
                respond_status(session, &Status::from_code(421, message)).await?;
                Ok(true)
            }
        }
    }
}

/// The accepted socket's cookie and its peer and local addresses, from pingora's digest.
fn connection_addresses(
    session: &Session,
) -> Option<(Option<u64>, std::net::SocketAddr, std::net::SocketAddr)> {
    let socket = session.digest()?.socket_digest.as_ref()?;
    let peer = *socket.peer_addr()?.as_inet()?;
    let local = *socket.local_addr()?.as_inet()?;
    Some((socket.socket_cookie().ok(), peer, local))
}

// --- end of the node agent's redirect ---------------------------------------------------

fn user_agent(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect())
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
            mask: None,
            response_masker: None,
            record_level: RecordLevel::Metadata,
            session: None,
            audit_seq: None,
            upstream_status: None,
            request_bytes: 0,
            response_bytes: 0,
            upstream_token: None,
            original: None,
            request_body: None,
            body_profile: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if !self.passthrough && self.refuse_misdirected(session, ctx).await? {
            return Ok(true);
        }
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
        if !self.decide(session, ctx).await? {
            return Ok(true);
        }
        if ctx.streaming {
            ctx._stream = Some(StreamGuard::open(&self.metrics.active_streams));
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body.as_ref() {
            ctx.request_bytes += chunk.len() as u64;
            if let Some(capture) = ctx.request_body.as_mut() {
                capture.push(chunk);
            }
            if let Some(recording) = ctx.session.as_mut() {
                recording
                    .observe(Direction::ClientToServer, chunk)
                    .map_err(|e| end_session(e, &ctx.session_id))?;
                if let Some(delay) = recording.backpressure() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if status == 101 {
            return self.start_session_recording(session, upstream_response, ctx);
        }
        let (Some(profile), Some(info)) = (ctx.mask.clone(), ctx.info.as_ref()) else {
            return Ok(());
        };
        let header = |name: http::header::HeaderName| {
            upstream_response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let masker = ResponseMasker::new(
            profile,
            info,
            session.req_header().uri.query(),
            status,
            header(http::header::CONTENT_TYPE).as_deref(),
            header(http::header::CONTENT_ENCODING).as_deref(),
        )
        .map_err(|e| {
            tracing::warn!(session = %ctx.session_id, error = %e, "refusing a response the masker cannot inspect");
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("the gateway must mask this response but cannot read it: {e}"),
            )
        })?;
        // The masked body has another length; pingora sends headers before the body filter runs.
        upstream_response.remove_header(&http::header::CONTENT_LENGTH);
        let bodiless =
            matches!(status, 204 | 304) || session.req_header().method == http::Method::HEAD;
        if session.req_header().version == http::Version::HTTP_11 && !bodiless {
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        ctx.response_masker = Some(masker);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let mut delay = None;
        if let Some(recording) = ctx.session.as_mut() {
            if let Some(chunk) = body.as_ref() {
                recording
                    .observe(Direction::ServerToClient, chunk)
                    .map_err(|e| end_session(e, &ctx.session_id))?;
                // pingora holds the next write this long: the stream slows to the disk's pace.
                delay = recording.backpressure();
            }
        }
        if let Some(masker) = ctx.response_masker.as_mut() {
            let mut out = match body.take() {
                Some(chunk) => masker.push(&chunk),
                None => Ok(Bytes::new()),
            }
            .and_then(|masked| {
                if end_of_stream {
                    let rest = masker.finish()?;
                    let mut all = Vec::with_capacity(masked.len() + rest.len());
                    all.extend_from_slice(&masked);
                    all.extend_from_slice(&rest);
                    Ok(Bytes::from(all))
                } else {
                    Ok(masked)
                }
            })
            .map_err(|e| {
                // Headers are already out: the only safe answer is to cut the response.
                tracing::warn!(session = %ctx.session_id, error = %e, "masking failed mid-response; closing it");
                Error::explain(ErrorType::HTTPStatus(502), "masking failed")
            })?;
            if !out.is_empty() || end_of_stream {
                *body = Some(std::mem::take(&mut out));
            }
        }
        if let Some(chunk) = body.as_ref() {
            ctx.response_bytes += chunk.len() as u64;
        }
        Ok(delay)
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
        let user = ctx.identity.as_ref().map(|i| i.user.as_str());
        let token = self
            .upstream
            .credential
            .token_for(user)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "upstream credential unavailable");
                Error::explain(
                    ErrorType::HTTPStatus(503),
                    "the gateway's upstream credential is unavailable",
                )
            })?;
        ctx.upstream_token = Some(Arc::clone(&token));
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
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(400), e.to_string()))?;
        if ctx.mask.is_some() {
            // The masker reads JSON only: no protobuf (kubectl asks for it first), no gzip.
            let accept = upstream_request
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            upstream_request.insert_header(
                http::header::ACCEPT,
                crate::mask::rewrite_accept(accept.as_deref()),
            )?;
            upstream_request.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The API server answers 401 only when it rejects the gateway's own credential.
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            if let Some(token) = &ctx.upstream_token {
                let user = ctx.identity.as_ref().map(|i| i.user.as_str());
                self.upstream.credential.rejected(user, token);
            }
        }
        Ok(())
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
        if let Some(recording) = ctx.session.as_mut() {
            recording.finish(e.map(|e| e.etype().as_str().to_string()));
        }
        if let (Some(recorder), Some(request_seq)) = (&self.recorder, ctx.audit_seq) {
            let body = match (&ctx.request_body, &ctx.body_profile, &ctx.info) {
                (Some(capture), Some(profile), Some(info)) => {
                    let headers = &session.req_header().headers;
                    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
                    audit::recorded_body(
                        info,
                        header(http::header::CONTENT_TYPE),
                        header(http::header::CONTENT_ENCODING),
                        capture,
                        profile,
                    )
                }
                _ => audit::RecordedBody::default(),
            };
            let entry = audit::completion_entry(audit::Finished {
                id: &ctx.session_id,
                request_seq,
                status: ctx.upstream_status,
                latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                request_bytes: ctx.request_bytes,
                response_bytes: ctx.response_bytes,
                error: e.map(|e| e.etype().as_str().to_string()),
                body,
            });
            if let Err(err) = recorder.append(entry) {
                tracing::error!(session = %ctx.session_id, error = %err, "cannot append the completion audit record");
            }
        }
        let req = session.req_header();
        tracing::info!(
            method = %req.method,
            path = %req.uri.path(),
            verb = %verb,
            resource = %resource,
            user = ctx.identity.as_ref().map(|i| i.user.as_str()).unwrap_or("-"),
            session = %ctx.session_id,
            redirected_from = ctx.original.map(|o| o.destination.to_string()).unwrap_or_default(),
            code,
            elapsed_ms = elapsed.as_millis() as u64,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
            "request"
        );
    }
}
