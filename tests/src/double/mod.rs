//! A Kubernetes API server test double that speaks the real wire protocol (TLS, HTTP/2 and HTTP/1.1 with upgrades,
//! legacy discovery, JSON and protobuf request bodies, Table output, watches, logs, exec/attach) well enough for
//! kubectl, the Python client and client-go based MCP servers, with an in-memory seeded store and a request log for
//! assertions. It is a test fixture: it must never listen beyond the address it is given, hold real credentials,
//! or write a client's token anywhere in clear.

mod api;
pub mod auth;
pub mod discovery;
pub mod exec;
mod logs;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod query;
pub mod reqlog;
pub mod resources;
mod respond;
mod routes;
pub mod seed;
pub mod selectors;
mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use reqlog::{LogEntry, LoggedHeader};
pub use seed::SEED_SECRET_PASSWORD;

use auth::{Authenticator, Authenticators};
use server::State;
use store::Store;

/// How to run a double.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where ca.pem, server.pem, server-key.pem and requests.jsonl are written (created if missing).
    pub dir: PathBuf,
    /// Accepted bearer tokens and the user each authenticates as.
    pub tokens: Vec<(String, String)>,
    /// Users allowed to send `Impersonate-*` headers; anyone else gets 403.
    pub impersonators: Vec<String>,
}

impl DoubleConfig {
    /// A double on 127.0.0.1 (free port) that accepts `token` as `user` and lets that user impersonate.
    pub fn local(dir: impl Into<PathBuf>, token: &str, user: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: dir.into(),
            tokens: vec![(token.to_string(), user.to_string())],
            impersonators: vec![user.to_string()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Log(#[from] reqlog::RequestLogError),
    #[error("seeding the store: {0}")]
    Seed(#[from] status::ApiError),
}

/// A double serving in the background of the current tokio runtime.
pub struct RunningDouble {
    pub addr: SocketAddr,
    pub ca_pem_path: PathBuf,
    pub log_path: PathBuf,
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
    /// The test CA certificate (same as the ca.pem file), for building clients in-process.
    pub ca_pem: String,
    state: Arc<State>,
    shutdown: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningDouble {
    /// `https://ADDR`, e.g. `https://127.0.0.1:43121`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request-log entry so far. An unreadable log is reported and yields what could be read (nothing).
    pub fn log(&self) -> Vec<LogEntry> {
        match reqlog::read_log(&self.log_path) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the request log");
                Vec::new()
            }
        }
    }

    /// The live store, for tests that arrange or inspect state directly.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Stops accepting, ends watches, log streams and exec sessions, and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningDouble {
    fn drop(&mut self) {
        // A double dropped without `shutdown` still stops its tasks.
        let _ = self.shutdown.send(true);
    }
}

/// Generates the TLS files, seeds the store, binds `cfg.listen` and serves in the background.
pub async fn start(cfg: DoubleConfig) -> Result<RunningDouble, DoubleError> {
    start_with_authenticators(cfg, Vec::new()).await
}

/// [`start`], with `extra` authenticators (e.g. EKS tokens) tried after the static tokens.
pub async fn start_with_authenticators(
    cfg: DoubleConfig,
    extra: Vec<Authenticator>,
) -> Result<RunningDouble, DoubleError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|source| DoubleError::Io {
        context: format!("creating {}", cfg.dir.display()),
        source,
    })?;
    let generated = tls::generate()?;
    let files = tls::write_files(&generated, &cfg.dir)?;
    let acceptor = TlsAcceptor::from(tls::server_config(&generated)?);
    let log_path = cfg.dir.join("requests.jsonl");
    let log = reqlog::RequestLog::open(&log_path)?;
    let store = Store::default();
    seed::seed(&store)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DoubleError::Io {
            context: format!("binding {}", cfg.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DoubleError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let (shutdown, shutdown_rx) = signal::channel(false);
    let state = Arc::new(State {
        store,
        authenticators: Authenticators(
            std::iter::once(Authenticator::StaticTokens(
                cfg.tokens.into_iter().collect(),
            ))
            .chain(extra)
            .collect(),
        ),
        impersonators: cfg.impersonators.into_iter().collect::<HashSet<_>>(),
        log,
        shutdown: shutdown_rx,
        server_address: addr.to_string(),
    });
    let task = tokio::spawn(server::serve(listener, acceptor, state.clone()));
    tracing::info!(url = %format!("https://{addr}"), "kube-double listening");
    Ok(RunningDouble {
        addr,
        ca_pem_path: files.ca_pem,
        log_path,
        server_cert_path: files.server_cert_pem,
        server_key_path: files.server_key_pem,
        ca_pem: generated.ca_pem,
        state,
        shutdown,
        task: Some(task),
    })
}
