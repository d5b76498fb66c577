//! The network side: TLS accept loop, one hyper-util auto (HTTP/2 + HTTP/1.1 with upgrades) connection per client,
//! authentication and impersonation in front of every request, and one request-log line per request.
//! It must never accept a request without a configured token, and never outlive a shutdown signal.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::api;
use super::auth::{self, Authenticators, Credentials};
use super::reqlog::{self, LogEntry, RequestLog};
use super::respond::{self, Body};
use super::store::Store;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after a shutdown signal before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything request handlers share.
pub(crate) struct State {
    pub store: Store,
    pub authenticators: Authenticators,
    pub impersonators: HashSet<String>,
    pub log: RequestLog,
    pub shutdown: watch::Receiver<bool>,
    /// host:port clients use to reach the double (reported by /api).
    pub server_address: String,
}

/// Accepts connections until `shutdown` turns true, then drains and cuts the remaining ones.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    let mut shutdown = state.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, acceptor.clone(), state.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
) {
    let mut shutdown = state.shutdown.clone();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// Authenticates, applies impersonation, answers, and logs one request.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers();
    let credentials = Credentials::from_headers(headers);
    let mut entry = LogEntry {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        http_version: format!("{:?}", req.version()),
        auth_scheme: credentials.scheme.clone(),
        token_sha256: credentials.sha256.clone(),
        token_user: None,
        user: None,
        groups: Vec::new(),
        headers: reqlog::logged_headers(headers),
        accept: reqlog::header_text(headers, header::ACCEPT),
        content_type: reqlog::header_text(headers, header::CONTENT_TYPE),
        upgrade: reqlog::header_text(headers, header::UPGRADE),
        status: 0,
    };
    let response = match state.authenticators.authenticate(&credentials).await {
        Err(err) => respond::error(&err),
        Ok(authenticated) => {
            entry.token_user = Some(authenticated.username.clone());
            match auth::impersonate(&authenticated, req.headers(), &state.impersonators) {
                Err(err) => respond::error(&err),
                Ok(effective) => {
                    entry.user = Some(effective.username.clone());
                    entry.groups = effective.groups.clone();
                    api::handle(&state, req, &effective).await
                }
            }
        }
    };
    entry.status = response.status().as_u16();
    tracing::debug!(
        method = %entry.method,
        path = %entry.path,
        user = entry.user.as_deref().unwrap_or("-"),
        status = entry.status,
        "request"
    );
    state.log.append(&entry);
    response
}
