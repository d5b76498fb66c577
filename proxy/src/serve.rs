//! `portcullis serve`: turns a loaded [`Config`] into a running pingora server.
//!
//! Owns: start-up order (credential and keys first, then listeners), worker count, graceful
//! shutdown settings, and the background JWKS refresher. Must never: open a plaintext listener
//! that the config did not ask for, or start serving before the upstream credential resolved.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, LogFormat};
use crate::gateway::Gateway;
use crate::identity::Verifier;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityConfigError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("cannot start the start-up runtime: {0}")]
    Runtime(std::io::Error),
}

/// How often keys behind a JWKS URL are re-fetched.
const JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Worker threads: the configured count, else what this process may really use (std's
/// `available_parallelism` honours cgroup CPU quotas and the affinity mask).
pub fn worker_threads(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(config.logging.level.as_deref().unwrap_or("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = match config.logging.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Build everything and run until a signal stops the server. Returns only on start-up errors.
pub fn run(config: Config) -> Result<(), ServeError> {
    let startup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let upstream = Arc::new(startup.block_on(Upstream::from_config(&config.upstream))?);
    let verifier = Arc::new(Verifier::new(&config.identity.issuers)?);
    if verifier.has_remote_issuers() {
        // Unreachable issuers are not fatal: their tokens are refused until keys arrive, and
        // /readyz says so.
        startup.block_on(verifier.refresh_remote());
    }
    drop(startup);
    let metrics = Arc::new(Metrics::new()?);

    let mut conf = ServerConf {
        threads: worker_threads(config.server.threads),
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    // Two gateways on one host (tests) must not share pingora's hot-upgrade socket.
    conf.upgrade_sock = std::env::temp_dir()
        .join(format!("portcullis-upgrade-{}.sock", std::process::id()))
        .display()
        .to_string();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    if config.benchmark_passthrough {
        tracing::warn!(
            "benchmark_passthrough is on: NO authentication, classification or impersonation"
        );
    }
    let gateway = Gateway {
        verifier: Arc::clone(&verifier),
        upstream,
        metrics: Arc::clone(&metrics),
        passthrough: config.benchmark_passthrough,
        connect_timeout: Duration::from_secs(config.upstream.connect_timeout_seconds),
        stream_idle_timeout: config.streams.idle_timeout_seconds.map(Duration::from_secs),
    };
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "portcullis");
    if let Some(listen) = &config.listen {
        let mut tls = TlsSettings::intermediate(
            &path_str(&listen.tls.cert_file),
            &path_str(&listen.tls.key_file),
        )
        .map_err(|e| ServeError::Tls(e.to_string()))?;
        tls.enable_h2();
        proxy.add_tls_with_settings(&listen.address.to_string(), None, tls);
        tracing::info!(address = %listen.address, "API listener (TLS, h2 + http/1.1)");
    }
    if let Some(addr) = config.insecure_listen {
        tracing::warn!(address = %addr, "insecure plaintext listener enabled (tests only)");
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "portcullis admin".to_string(),
            HttpServer::new_app(AdminApp {
                metrics,
                verifier: Arc::clone(&verifier),
            }),
        );
        service.add_tcp(&admin.address.to_string());
        server.add_service(service);
        tracing::info!(address = %admin.address, "admin listener (healthz, readyz, metrics)");
    }
    if verifier.has_remote_issuers() {
        server.add_service(background_service(
            "jwks refresh",
            JwksRefresher { verifier },
        ));
    }
    server.run_forever()
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

struct JwksRefresher {
    verifier: Arc<Verifier>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(JWKS_REFRESH) => {
                    self.verifier.refresh_remote().await;
                }
            }
        }
    }
}
