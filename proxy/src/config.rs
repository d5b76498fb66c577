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
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
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
    /// Who may do what (see `policy`). Absent: everything but discovery is denied.
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// Mask profiles (see `mask`); the built-in `default` profile always exists.
    #[serde(default)]
    pub mask: crate::mask::MaskConfig,
    /// The audit log and session recordings (see `record`).
    #[serde(default)]
    pub record: crate::record::RecordConfig,
    /// The node agent's redirect (see `redirect::gateway`): look up where each redirected
    /// connection was going. Absent: off.
    #[serde(default)]
    pub redirect: Option<crate::redirect::RedirectConfig>,
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
    /// An EKS cluster: base AWS credentials from the standard chain, an assumed role, and
    /// `k8s-aws-v1.` tokens presigned with it (see `upstream::eks` and docs/eks.md).
    Eks(Eks),
}

/// `upstream.credential.eks`: how the gateway becomes an IAM principal EKS recognises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eks {
    /// The EKS cluster's name, signed into every token as `x-k8s-aws-id`.
    pub cluster_name: String,
    /// The cluster's AWS region (also the regional STS endpoint the token names).
    pub region: String,
    /// The role the gateway assumes; its access entry (or aws-auth mapping) grants impersonation.
    pub role_arn: String,
    pub external_id: Option<String>,
    /// Role session name; `{user}` becomes the caller's username made safe for STS, so EKS
    /// audit and CloudTrail name who acted. Without `{user}` one fixed session serves everyone.
    #[serde(default = "default_eks_session_name")]
    pub session_name: String,
    /// STS endpoint URL instead of `https://sts.<region>.amazonaws.com` (tests, VPC endpoints).
    pub sts_endpoint: Option<String>,
    /// A token is replaced after this many seconds (EKS accepts one for 15 minutes).
    #[serde(default = "default_eks_token_refresh")]
    pub token_refresh_seconds: u64,
    /// `DurationSeconds` of each AssumeRole.
    #[serde(default = "default_eks_role_duration")]
    pub role_duration_seconds: u32,
    /// At most this many per-caller sessions are cached; the least recently used goes first.
    #[serde(default = "default_eks_max_sessions")]
    pub max_sessions: usize,
}

pub const EKS_USER_PLACEHOLDER: &str = "{user}";

fn default_eks_session_name() -> String {
    format!("portcullis-{EKS_USER_PLACEHOLDER}")
}

fn default_eks_token_refresh() -> u64 {
    600
}

fn default_eks_role_duration() -> u32 {
    3600
}

fn default_eks_max_sessions() -> usize {
    1024
}

impl Eks {
    fn validate(&self) -> Result<(), String> {
        let is_session_char = |c: char| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
        };
        if self.cluster_name.is_empty() || self.region.is_empty() {
            return Err("`cluster_name` and `region` must not be empty".into());
        }
        if !self.role_arn.starts_with("arn:") || !self.role_arn.contains(":role/") {
            return Err(format!(
                "`role_arn` {:?} is not an IAM role ARN",
                self.role_arn
            ));
        }
        let fixed = self.session_name.replace(EKS_USER_PLACEHOLDER, "");
        if !fixed.chars().all(is_session_char) {
            return Err(format!(
                "`session_name` {:?}: besides {EKS_USER_PLACEHOLDER} only letters, digits and _+=,.@- are allowed",
                self.session_name
            ));
        }
        if fixed.len() > 48 {
            return Err("`session_name` leaves no room for the user: keep the fixed part within 48 characters".into());
        }
        if !self.session_name.contains(EKS_USER_PLACEHOLDER) && fixed.len() < 2 {
            return Err("`session_name` must be at least 2 characters".into());
        }
        if !(60..=840).contains(&self.token_refresh_seconds) {
            return Err(
                "`token_refresh_seconds` must be between 60 and 840 (tokens live 15 minutes)"
                    .into(),
            );
        }
        if !(900..=43200).contains(&self.role_duration_seconds) {
            return Err(
                "`role_duration_seconds` must be between 900 and 43200 (STS limits)".into(),
            );
        }
        if self.max_sessions == 0 {
            return Err("`max_sessions` must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub issuers: Vec<Issuer>,
}

/// How an issuer's verified claims become a Kubernetes identity.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKind {
    /// `username_claim`/`groups_claim` with their prefixes.
    #[default]
    Oidc,
    /// A Kubernetes service-account token issuer: `sub` `system:serviceaccount:<ns>:<name>` is the
    /// user, groups `system:serviceaccounts` and `system:serviceaccounts:<ns>`; no prefixes.
    ServiceAccount,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Must equal the token's `iss` exactly. `https://`, or `http://127.0.0.1[:port]` (a test
    /// provider on loopback; never anything else over plain HTTP).
    pub issuer: String,
    #[serde(default)]
    pub kind: IssuerKind,
    /// The token's `aud` (string or array) must contain one of these.
    pub audiences: Vec<String>,
    /// Where the issuer's keys are: a JWKS file, a JWKS URL, or an OIDC discovery document
    /// (`discovery_url`, or when none of the three is set `<issuer>/.well-known/openid-configuration`).
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub discovery_url: Option<String>,
    /// CA bundle for the issuer's URLs when they are not publicly trusted (replaces the platform roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// A fetch triggered by a token whose key is unknown happens at most once per this interval.
    #[serde(default = "default_min_refresh")]
    pub jwks_min_refresh_interval_seconds: u64,
    /// Upper bound of the scheduled refresh interval (the JWKS response's `Cache-Control: max-age`,
    /// else 300 s, clamped to [min, max]).
    #[serde(default = "default_max_refresh")]
    pub jwks_max_refresh_interval_seconds: u64,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default)]
    pub username_prefix: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default)]
    pub groups_prefix: String,
    /// Claims that must be present with exactly this string value (booleans as "true"/"false").
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// Extra attributes to impersonate: extra key (lowercase, e.g. `example.com/email`) -> claim.
    #[serde(default)]
    pub extra_claims: BTreeMap<String, String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
}

/// Extra keys the gateway sets itself on every request; no issuer may map a claim onto them.
pub const RESERVED_EXTRA_KEYS: &[&str] = &["portcullis.dev/session", "portcullis.dev/client-ip"];

fn default_min_refresh() -> u64 {
    30
}
fn default_max_refresh() -> u64 {
    3600
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
    /// Close a watch, log follow or exec/attach/port-forward stream after this long without a
    /// byte from the API server (applied as the upstream read timeout; note that an idle
    /// interactive shell sends nothing either). Absent: no idle timeout, the API server's own
    /// timeouts apply.
    pub idle_timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads; absent: the number of cores this process may use (cgroup-aware).
    pub threads: Option<usize>,
    /// After SIGTERM the listeners stop accepting at once; in-flight requests (including
    /// watches and exec sessions) then get this long to finish. pingora always waits it in full.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// After the grace period, how long to wait for the worker runtimes to wind down before
    /// the process exits anyway.
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
}

fn default_grace() -> u64 {
    5
}
fn default_shutdown_timeout() -> u64 {
    5
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

impl Issuer {
    fn validate(&self) -> Result<(), String> {
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.discovery_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err("set exactly one of `jwks_file`, `jwks_url` or `discovery_url` (or none of them: discovery at the issuer)".into());
        }
        let https = |url: &str| {
            url.starts_with("https://")
                || url == "http://127.0.0.1"
                || url.starts_with("http://127.0.0.1:")
                || url.starts_with("http://127.0.0.1/")
        };
        for url in [
            Some(&self.issuer),
            self.jwks_url.as_ref(),
            self.discovery_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !https(url) {
                return Err(format!(
                    "{url:?} must be https:// (plain http is accepted for 127.0.0.1 only, for a local test provider)"
                ));
            }
        }
        if self.kind == IssuerKind::ServiceAccount
            && (!self.username_prefix.is_empty() || !self.groups_prefix.is_empty())
        {
            return Err("a service_account issuer maps to system:serviceaccount:<ns>:<name> and takes no prefixes".into());
        }
        for key in self.extra_claims.keys() {
            if key.is_empty()
                || key
                    .bytes()
                    .any(|b| b.is_ascii_uppercase() || b.is_ascii_control() || b == b' ')
            {
                return Err(format!("extra_claims key {key:?} must be non-empty lowercase without spaces (the API server lowercases extra keys)"));
            }
            if RESERVED_EXTRA_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "extra_claims key {key:?} is set by the gateway itself"
                ));
            }
        }
        if self.jwks_min_refresh_interval_seconds == 0 {
            return Err(
                "jwks_min_refresh_interval_seconds must be at least 1 (it rate-limits fetches)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let key = RefCell::new(String::new());
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                // Spanned values (policy rules) add a `.value` step that is not in the file.
                *key.borrow_mut() = e.path().to_string().replace("].value", "]");
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
        let mut seen = std::collections::HashSet::new();
        for (i, issuer) in self.identity.issuers.iter().enumerate() {
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(format!(
                    "identity.issuers[{i}]: issuer {} is configured twice",
                    issuer.issuer
                ));
            }
            issuer
                .validate()
                .map_err(|m| format!("identity.issuers[{i}] ({}): {m}", issuer.issuer))?;
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
        if let Credential::Eks(eks) = &self.upstream.credential {
            if self.upstream.url.is_none() {
                return Err("upstream.url is required with an eks credential".into());
            }
            eks.validate()
                .map_err(|m| format!("upstream.credential.eks: {m}"))?;
        }
        if self.server.threads == Some(0) {
            return Err("server.threads must be at least 1".into());
        }
        self.record.validate()?;
        if let Some(redirect) = &self.redirect {
            redirect.validate().map_err(|m| format!("redirect: {m}"))?;
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
    fn the_shipped_example_is_valid_and_its_policy_compiles() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/portcullis.yaml"
        ));
        let config = Config::load(path).expect("examples/portcullis.yaml must stay valid");
        let masker = crate::mask::Masker::from_config(&config.mask).expect("mask profiles");
        let policy = crate::policy::Policy::from_config(&config.policy, Path::new("."))
            .expect("the example policy compiles");
        policy
            .check_mask_profiles(|name| masker.profile(name).is_some())
            .expect("the example's rules name existing mask profiles");
        assert!(config.record.enabled());
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
    fn issuer_keys_and_their_checks() {
        let full = GOOD.replace(
            "      jwks_file: /tmp/jwks.json\n",
            "      jwks_file: /tmp/jwks.json\n    - issuer: http://127.0.0.1:9400\n      audiences: [portcullis]\n      required_claims:\n        email_verified: \"true\"\n      extra_claims:\n        example.com/email: email\n    - issuer: https://oidc.eks.test/id/X\n      kind: service_account\n      audiences: [portcullis]\n      discovery_url: https://oidc.eks.test/id/X/.well-known/openid-configuration\n",
        );
        let c = Config::parse(&full, Path::new("c.yaml")).unwrap();
        let op = &c.identity.issuers[1];
        assert_eq!(op.kind, IssuerKind::Oidc);
        assert_eq!(op.required_claims["email_verified"], "true");
        assert_eq!(op.extra_claims["example.com/email"], "email");
        assert_eq!(op.jwks_min_refresh_interval_seconds, 30);
        assert_eq!(c.identity.issuers[2].kind, IssuerKind::ServiceAccount);

        for (bad, expect) in [
            ("http://127.0.0.1:9400", "http://localhost:9400"),
            ("http://127.0.0.1:9400", "http://issuer.example"),
        ] {
            let text = full.replace(bad, expect);
            let err = Config::parse(&text, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("must be https://"), "{err}");
        }
        let reserved = full.replace("example.com/email: email", "portcullis.dev/session: sid");
        assert!(Config::parse(&reserved, Path::new("c.yaml"))
            .unwrap_err()
            .to_string()
            .contains("set by the gateway"));
        let prefixed = full.replace(
            "      kind: service_account\n",
            "      kind: service_account\n      username_prefix: \"x:\"\n",
        );
        assert!(Config::parse(&prefixed, Path::new("c.yaml"))
            .unwrap_err()
            .to_string()
            .contains("no prefixes"));
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
