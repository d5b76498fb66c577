//! The gateway's configuration file: one YAML document, deserialized into typed structs.
//!
//! Owns: the schema (every key, its default), loading it from disk, and reporting a bad file with
//! the path of the offending key and its line. Must never: start anything, read credentials, or
//! accept a key it does not know (`deny_unknown_fields` everywhere).
//!
//! YAML crate: `serde-saphyr` (pure Rust, maintained, panic-free parser, errors with line, column
//! and a source snippet). `serde_yaml` is archived; `serde_yaml_ng` still wraps the C-derived
//! `unsafe-libyaml`. `serde_path_to_error` adds the dotted path of the key.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: at `{key}`: {message}")]
    Parse {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The TLS listener that API clients connect to.
    pub listen: Option<Listen>,
    /// A plain-HTTP listener, for tests only. Never on by default.
    pub insecure_listen: Option<SocketAddr>,
    /// Health, readiness and metrics on their own port.
    pub admin: Option<Admin>,
    pub upstream: Upstream,
    pub identity: Identity,
    #[serde(default)]
    pub streams: Streams,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub logging: Logging,
    /// Turn off authentication, classification and impersonation: bare passthrough with the
    /// gateway's credential. Only for the benchmark's baseline; refused unless set explicitly.
    #[serde(default)]
    pub benchmark_passthrough: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub address: SocketAddr,
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `https://host:port` of the API server. Optional when the credential is a kubeconfig or
    /// in-cluster config, which carry it.
    pub url: Option<String>,
    /// PEM bundle to verify the API server with. Optional like `url`.
    pub ca_file: Option<PathBuf>,
    pub credential: Credential,
    /// Allow an `http://` upstream URL. Only for benchmarks and tests: the API server must be
    /// reached over verified TLS in any real deployment.
    #[serde(default)]
    pub insecure_plaintext: bool,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
}

fn default_connect_timeout() -> u64 {
    5
}

/// The gateway's own credential for the API server. Exactly one form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Credential {
    /// A bearer token file, re-read when it changes (like a projected service-account token).
    TokenFile(PathBuf),
    /// A kubeconfig file and optional context, loaded with the `kube` crate's loader.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The pod's own service account (KUBERNETES_SERVICE_HOST and the mounted token and CA).
    InCluster,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub issuers: Vec<Issuer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// The token's `aud` (string or array) must contain one of these.
    pub audiences: Vec<String>,
    /// Where the issuer's keys are: a JWKS file, or a URL fetched at start and refreshed.
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// CA bundle for `jwks_url` when it is not publicly trusted.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default)]
    pub username_prefix: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default)]
    pub groups_prefix: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
}

fn default_username_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_clock_skew() -> u64 {
    60
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Close a watch, log follow or exec stream after this long with no bytes either way.
    /// Absent: no idle timeout (the API server's own timeouts apply).
    pub idle_timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads; absent: the number of cores this process may use (cgroup-aware).
    pub threads: Option<usize>,
    /// How long to keep serving after SIGTERM before stopping to accept, and then how long
    /// in-flight requests (including watches and exec sessions) may take to finish.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
}

fn default_grace() -> u64 {
    0
}
fn default_shutdown_timeout() -> u64 {
    10
}

impl Default for Server {
    fn default() -> Self {
        Self {
            threads: None,
            grace_period_seconds: default_grace(),
            graceful_shutdown_timeout_seconds: default_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let key = RefCell::new(String::new());
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                *key.borrow_mut() = e.path().to_string();
                e.into_inner()
            })
        });
        let config: Config = parsed.map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            key: key.into_inner(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            file: file.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.listen.is_none() && self.insecure_listen.is_none() {
            return Err("no listener: set `listen` (TLS)".into());
        }
        if self.identity.issuers.is_empty() && !self.benchmark_passthrough {
            return Err("`identity.issuers` is empty: no caller could ever authenticate".into());
        }
        for (i, issuer) in self.identity.issuers.iter().enumerate() {
            match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "identity.issuers[{i}] ({}): set exactly one of `jwks_file` or `jwks_url`",
                        issuer.issuer
                    ))
                }
            }
            if issuer.audiences.is_empty() {
                return Err(format!(
                    "identity.issuers[{i}] ({}): `audiences` must name at least one audience",
                    issuer.issuer
                ));
            }
        }
        if let Credential::TokenFile(_) = self.upstream.credential {
            if self.upstream.url.is_none() {
                return Err("upstream.url is required with a token_file credential".into());
            }
        }
        if self.server.threads == Some(0) {
            return Err("server.threads must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen:
  address: 127.0.0.1:8443
  tls:
    cert_file: /tmp/cert.pem
    key_file: /tmp/key.pem
admin:
  address: 127.0.0.1:9090
upstream:
  url: https://127.0.0.1:6443
  ca_file: /tmp/ca.pem
  credential:
    token_file: /tmp/token
identity:
  issuers:
    - issuer: https://issuer.example
      audiences: [portcullis]
      jwks_file: /tmp/jwks.json
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("c.yaml")).unwrap();
        assert_eq!(c.identity.issuers[0].username_claim, "sub");
        assert_eq!(c.identity.issuers[0].clock_skew_seconds, 60);
        assert!(matches!(c.upstream.credential, Credential::TokenFile(_)));
        assert_eq!(c.streams.idle_timeout_seconds, None);
        assert!(c.insecure_listen.is_none());
        assert!(!c.benchmark_passthrough);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let bad = GOOD.replace(
            "  ca_file: /tmp/ca.pem",
            "  ca_file: /tmp/ca.pem\n  cafile: x",
        );
        let err = Config::parse(&bad, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream"), "{err}");
        assert!(err.contains("cafile"), "{err}");
        assert!(err.contains("line 12"), "{err}");
    }

    #[test]
    fn wrong_type_names_nested_path() {
        let bad = GOOD.replace(
            "      audiences: [portcullis]",
            "      audiences: [portcullis]\n      clock_skew_seconds: soon",
        );
        let err = Config::parse(&bad, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("identity.issuers[0].clock_skew_seconds"),
            "{err}"
        );
        assert!(err.contains("line 18"), "{err}");
    }

    #[test]
    fn semantic_errors_are_reported() {
        let both = GOOD.replace(
            "jwks_file: /tmp/jwks.json",
            "jwks_file: /tmp/jwks.json\n      jwks_url: https://x/jwks",
        );
        let err = Config::parse(&both, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let no_listener = GOOD.replace(
            "listen:\n  address: 127.0.0.1:8443\n",
            "x_listen:\n  address: 127.0.0.1:8443\n",
        );
        assert!(Config::parse(&no_listener, Path::new("c.yaml")).is_err());
    }
}
