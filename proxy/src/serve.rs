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
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, LogFormat};
use crate::gateway::Gateway;
use crate::identity::Verifier;
use crate::mask::Masker;
use crate::metrics::Metrics;
use crate::policy::{spawn_reloader_thread, Policy, PolicyHandle, PolicyReloader};
use crate::record::Recorder;
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
    #[error("{0}")]
    Listen(String),
    #[error("cannot start the start-up runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Mask(#[from] crate::mask::MaskError),
    #[error("audit store: {0}")]
    Record(#[from] crate::record::RecordError),
    #[error("cannot start the policy reloader: {0}")]
    Reloader(std::io::Error),
}

/// The refresher looks at its schedule at least this often (and at most once a second), so a
/// refresh that failed is retried as soon as the issuer's rate limit allows.
const JWKS_SCHEDULE_MAX_SLEEP: Duration = Duration::from_secs(60);

/// After the runtimes are down, how long the recorder waits for the sessions their tasks held to
/// be dropped (tokio drops a cancelled task's state on its worker thread, which pingora's fast
/// shutdown does not wait for).
const SESSIONS_GRACE_AT_EXIT: Duration = Duration::from_secs(2);

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

/// Check what pingora would otherwise only discover inside a service task, where a failure
/// panics that task but leaves the process (and its admin port) up: the TLS files load and
/// match, and every listen address can be bound.
fn preflight(config: &Config) -> Result<(), ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if let Some(listen) = &config.listen {
        let tls_err = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            ServeError::Tls(format!("{what} {}: {e}", path.display()))
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&listen.tls.cert_file)
                .map_err(|e| tls_err("cannot read certificate", &listen.tls.cert_file, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err("bad certificate", &listen.tls.cert_file, &e))?;
        if certs.is_empty() {
            return Err(tls_err(
                "no certificate in",
                &listen.tls.cert_file,
                &"empty",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&listen.tls.key_file)
            .map_err(|e| tls_err("cannot read private key", &listen.tls.key_file, &e))?;
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            tls_err(
                "certificate and key do not form a usable pair:",
                &listen.tls.cert_file,
                &e,
            )
        })?;
    }
    let addresses = config
        .listen
        .iter()
        .map(|l| l.address)
        .chain(config.insecure_listen)
        .chain(config.admin.iter().map(|a| a.address));
    for address in addresses {
        std::net::TcpListener::bind(address)
            .map_err(|e| ServeError::Listen(format!("cannot listen on {address}: {e}")))?;
    }
    Ok(())
}

/// Build everything and run until a signal stops the server. Returns only on start-up errors.
/// `config_path` is watched: a valid change to its `policy:` section (or the policy files it
/// names) takes effect without a restart.
pub fn run(config: Config, config_path: &Path) -> Result<(), ServeError> {
    preflight(&config)?;
    let base_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let masker = Arc::new(Masker::from_config(&config.mask)?);
    let initial = Policy::from_config_named(
        &config.policy,
        &base_dir,
        &config_path.display().to_string(),
    )?;
    initial.check_mask_profiles(|name| masker.profile(name).is_some())?;
    let policy = PolicyHandle::new(initial);
    if config.policy.rules.is_empty() && config.policy.files.is_empty() {
        tracing::warn!("no policy rules configured: every request except discovery is denied");
    }
    let startup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let upstream = Arc::new(startup.block_on(Upstream::from_config(&config.upstream))?);
    let verifier = Arc::new(Verifier::new(&config.identity.issuers)?);
    if verifier.has_remote_issuers() {
        // Unreachable issuers are not fatal: their tokens are refused until keys arrive, and
        // /readyz says so.
        for (issuer, outcome) in startup.block_on(verifier.refresh_remote()) {
            if let Err(e) = outcome {
                tracing::error!(%issuer, error = %e, "issuer keys unavailable at start: its tokens are refused until a refresh succeeds");
            }
        }
    }
    drop(startup);
    let metrics = Arc::new(Metrics::new()?);
    let recorder = if config.record.enabled() {
        Some(Recorder::open(&config.record, metrics.recorder.clone())?)
    } else {
        tracing::warn!("record.path is not set: NO audit log and NO session recordings");
        None
    };
    let recorder_at_shutdown = recorder.clone();
    let redirects = config
        .redirect
        .clone()
        .map(|r| Arc::new(crate::redirect::Redirects::open(r)));
    let _reloader = spawn_reloader_thread(
        PolicyReloader::for_config_file(
            policy.clone(),
            config_path.to_path_buf(),
            metrics.policy_reloads.clone(),
        )
        .with_mask_profiles(masker.profile_names().map(str::to_owned).collect()),
    )
    .map_err(ServeError::Reloader)?;

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
        policy,
        masker,
        recorder,
        redirects,
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
    if config.upstream.insecure_plaintext {
        tracing::warn!("upstream.insecure_plaintext is on: the API server is reached WITHOUT TLS (benchmarks only)");
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
                redirect_pins: config.redirect.as_ref().map(|r| r.pin_dir.clone()),
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
    // pingora returns once its runtimes are down: after the grace period on SIGTERM, at once on
    // SIGINT (Ctrl-C). Either way the audit tail is signed here, after the last request ended,
    // so a stopped gateway leaves a store whose every record is covered by a checkpoint.
    server.run(RunArgs::default());
    if let Some(recorder) = recorder_at_shutdown {
        recorder.close(SESSIONS_GRACE_AT_EXIT)?;
        tracing::info!("audit store closed: tail signed and flushed");
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn next_check(verifier: &Verifier) -> Duration {
    verifier
        .until_next_refresh()
        .unwrap_or(JWKS_SCHEDULE_MAX_SLEEP)
        .clamp(Duration::from_secs(1), JWKS_SCHEDULE_MAX_SLEEP)
}

/// Scheduled JWKS refreshes, each issuer when its `Cache-Control: max-age` (bounded) runs out.
struct JwksRefresher {
    verifier: Arc<Verifier>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(next_check(&self.verifier)) => {
                    self.verifier.refresh_due().await;
                }
            }
        }
    }
}
