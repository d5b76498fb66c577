//! The gateway's own EKS credential: base AWS credentials from the standard chain, an assumed
//! role (one STS session per caller when the session name template has `{user}`), and the
//! `k8s-aws-v1.` bearer tokens EKS accepts, presigned with that role.
//!
//! Owns: the session-name template, the per-session cache of assumed credentials and tokens
//! (bounded, least recently used evicted), refreshing a token before EKS stops accepting it and
//! after the API server answered 401, with one refresh at a time per session (single flight).
//! The pure core ([`session_name`], [`presign_token`], [`sts_base_url`]) is plain functions.
//!
//! Must never: log, return in an error or otherwise expose a token, an access key's secret or a
//! session token; sign with anything but the SDK's own `aws-sigv4`; hand out a token signed with
//! credentials that expire before the token would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials as _;
/// Re-exported so callers (and tests) can build credentials without naming the SDK crate.
pub use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config;

/// What every EKS bearer token starts with.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The signed header that binds a token to one cluster.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// EKS accepts a token this long after its `X-Amz-Date`, whatever `X-Amz-Expires` says.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// `X-Amz-Expires` as `aws eks get-token` and aws-iam-authenticator send it (EKS ignores it).
pub const PRESIGN_EXPIRES: Duration = Duration::from_secs(60);
/// The query EKS hands to STS to learn who signed the token.
pub const GET_CALLER_IDENTITY_QUERY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// STS accepts at most this many characters in a role session name.
pub const MAX_SESSION_NAME: usize = 64;
/// Stands in for `{user}` when a request has no caller identity (benchmark passthrough).
const NO_CALLER: &str = "gateway";

#[derive(Debug, thiserror::Error)]
pub enum EksError {
    #[error("cannot presign the EKS token request: {0}")]
    Sign(String),
    #[error("AssumeRole of {role_arn} failed: {message}")]
    AssumeRole { role_arn: String, message: String },
    #[error("AssumeRole of {0} answered without credentials")]
    NoCredentials(String),
    #[error("no base AWS credentials from the standard chain: {0}")]
    BaseCredentials(String),
    #[error("`sts_endpoint` {0:?} is not an http(s)://host[:port] URL")]
    BadEndpoint(String),
}

/// The role session name for `user`: the template's `{user}` replaced by the user made safe for
/// STS (`[\w+=,.@-]`, anything else becomes `-`), at most 64 characters. A name that had to be
/// cut keeps a short hash of the whole user, so two long names stay apart.
pub fn session_name(template: &str, user: &str) -> String {
    if !template.contains(config::EKS_USER_PLACEHOLDER) {
        return template.chars().take(MAX_SESSION_NAME).collect();
    }
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = template.replace(config::EKS_USER_PLACEHOLDER, &safe);
    if name.len() > MAX_SESSION_NAME {
        let digest = Sha256::digest(user.as_bytes());
        let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        // Every character is ASCII here, so byte and char positions agree.
        name.truncate(MAX_SESSION_NAME - tag.len() - 1);
        name.push('-');
        name.push_str(&tag);
    }
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// The STS base URL a token names: the override, else the regional endpoint.
pub fn sts_base_url(region: &str, endpoint: Option<&str>) -> Result<String, EksError> {
    let Some(endpoint) = endpoint else {
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        return Ok(format!("https://sts.{region}.{suffix}"));
    };
    let bad = || EksError::BadEndpoint(endpoint.to_string());
    let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("https" | "http"))
        || uri.authority().is_none()
        || !matches!(uri.path(), "" | "/")
        || uri.query().is_some()
    {
        return Err(bad());
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// Presign `GET <url>` with `headers` signed, the signature in the query: SigV4 through the SDK's
/// own `aws-sigv4`. Returns the presigned URL.
pub fn presign_url(
    credentials: &Credentials,
    region: &str,
    service: &str,
    url: &str,
    headers: &[(&str, &str)],
    at: SystemTime,
    expires_in: Duration,
) -> Result<String, EksError> {
    let sign_err = |e: &dyn std::fmt::Display| EksError::Sign(e.to_string());
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| sign_err(&e))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| sign_err(&e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| sign_err(&e))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(url)
        .body(())
        .map_err(|e| sign_err(&e))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// An EKS bearer token for `cluster`: `k8s-aws-v1.` + base64url (no padding) of the presigned
/// `GET <sts>/?Action=GetCallerIdentity&Version=2011-06-15` with `x-k8s-aws-id` signed.
pub fn presign_token(
    credentials: &Credentials,
    cluster: &str,
    region: &str,
    sts_base: &str,
    at: SystemTime,
) -> Result<String, EksError> {
    let url = format!("{sts_base}/?{GET_CALLER_IDENTITY_QUERY}");
    let presigned = presign_url(
        credentials,
        region,
        "sts",
        &url,
        &[(CLUSTER_ID_HEADER, cluster)],
        at,
        PRESIGN_EXPIRES,
    )?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned)
    ))
}

/// Credentials that stay valid for a whole token lifetime after `now` (or never expire).
fn lasts_a_token(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| expiry > now + TOKEN_LIFETIME)
}

/// Gets role credentials for one session name. STS in production; a counting fake in tests.
#[async_trait]
pub trait RoleAssumer: Send + Sync {
    async fn assume(&self, session_name: &str) -> Result<Credentials, EksError>;
}

/// `sts:AssumeRole` with the base credentials of the standard AWS chain.
pub struct StsRoleAssumer {
    client: aws_sdk_sts::Client,
    role_arn: String,
    external_id: Option<String>,
    duration_seconds: i32,
}

impl StsRoleAssumer {
    /// Loads the standard chain (env, web identity/IRSA, EKS Pod Identity, profile, instance
    /// metadata) and resolves base credentials once, so a gateway without any fails at start.
    pub async fn from_config(cfg: &config::Eks) -> Result<Self, EksError> {
        // The SDK's own hyper client, on rustls with ring (the `default-https-client` feature
        // would pull aws-lc-rs).
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .http_client(http_client)
            .load()
            .await;
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| EksError::BaseCredentials("no credentials provider".into()))?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| EksError::BaseCredentials(e.to_string()))?;
        let mut sts = aws_sdk_sts::config::Builder::from(&sdk);
        if let Some(endpoint) = &cfg.sts_endpoint {
            sts = sts.endpoint_url(sts_base_url(&cfg.region, Some(endpoint))?);
        }
        Ok(Self {
            client: aws_sdk_sts::Client::from_conf(sts.build()),
            role_arn: cfg.role_arn.clone(),
            external_id: cfg.external_id.clone(),
            duration_seconds: i32::try_from(cfg.role_duration_seconds).unwrap_or(3600),
        })
    }
}

#[async_trait]
impl RoleAssumer for StsRoleAssumer {
    async fn assume(&self, session_name: &str) -> Result<Credentials, EksError> {
        let answer = self
            .client
            .assume_role()
            .role_arn(&self.role_arn)
            .role_session_name(session_name)
            .set_external_id(self.external_id.clone())
            .duration_seconds(self.duration_seconds)
            .send()
            .await
            .map_err(|e| EksError::AssumeRole {
                role_arn: self.role_arn.clone(),
                message: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
            })?;
        let issued = answer
            .credentials()
            .ok_or_else(|| EksError::NoCredentials(self.role_arn.clone()))?;
        let expiry = SystemTime::try_from(*issued.expiration()).ok();
        Ok(Credentials::new(
            issued.access_key_id(),
            issued.secret_access_key(),
            Some(issued.session_token().to_string()),
            expiry,
            "portcullis-assume-role",
        ))
    }
}

/// A token handed out, with when it was signed.
#[derive(Clone)]
struct IssuedToken {
    value: Arc<str>,
    signed_at: SystemTime,
}

#[derive(Default)]
struct SessionState {
    token: Option<IssuedToken>,
    credentials: Option<Credentials>,
}

/// One role session (one session name): its credentials and current token.
struct Session {
    state: Mutex<SessionState>,
    /// Held while refreshing, so a burst of requests does one AssumeRole/presign.
    refresh: tokio::sync::Mutex<()>,
    last_used: AtomicU64,
}

impl Session {
    fn new(tick: u64) -> Self {
        Self {
            state: Mutex::new(SessionState::default()),
            refresh: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(tick),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_token(&self, now: SystemTime, refresh_after: Duration) -> Option<Arc<str>> {
        let state = self.lock();
        let token = state.token.as_ref()?;
        // A clock that went backwards makes the age unknown: treat the token as stale.
        let age = now.duration_since(token.signed_at).ok()?;
        (age < refresh_after).then(|| Arc::clone(&token.value))
    }
}

/// What stays fixed for every token this credential makes.
#[derive(Debug, Clone)]
pub struct EksSettings {
    pub cluster_name: String,
    pub region: String,
    pub sts_base: String,
    pub session_name_template: String,
    pub token_refresh: Duration,
    pub max_sessions: usize,
}

impl EksSettings {
    pub fn from_config(cfg: &config::Eks) -> Result<Self, EksError> {
        Ok(Self {
            cluster_name: cfg.cluster_name.clone(),
            region: cfg.region.clone(),
            sts_base: sts_base_url(&cfg.region, cfg.sts_endpoint.as_deref())?,
            session_name_template: cfg.session_name.clone(),
            token_refresh: Duration::from_secs(cfg.token_refresh_seconds),
            max_sessions: cfg.max_sessions.max(1),
        })
    }
}

/// The gateway's EKS credential: tokens per caller, cached and refreshed.
pub struct EksCredential {
    settings: EksSettings,
    assumer: Box<dyn RoleAssumer>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tick: AtomicU64,
}

impl EksCredential {
    pub fn new(settings: EksSettings, assumer: Box<dyn RoleAssumer>) -> Self {
        Self {
            settings,
            assumer,
            sessions: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    /// Base credentials resolved, STS client ready; no role is assumed until the first request.
    pub async fn from_config(cfg: &config::Eks) -> Result<Self, EksError> {
        let settings = EksSettings::from_config(cfg)?;
        let assumer = StsRoleAssumer::from_config(cfg).await?;
        Ok(Self::new(settings, Box::new(assumer)))
    }

    /// The role session name requests of `user` use.
    pub fn session_name_for(&self, user: Option<&str>) -> String {
        session_name(
            &self.settings.session_name_template,
            user.unwrap_or(NO_CALLER),
        )
    }

    /// A token for requests made on behalf of `user`.
    pub async fn token_for(&self, user: Option<&str>) -> Result<Arc<str>, EksError> {
        self.token_at(user, SystemTime::now()).await
    }

    /// [`Self::token_for`] as if the clock read `now` (tests move time without sleeping).
    pub async fn token_at(
        &self,
        user: Option<&str>,
        now: SystemTime,
    ) -> Result<Arc<str>, EksError> {
        let name = self.session_name_for(user);
        let session = self.session(&name);
        if let Some(token) = session.fresh_token(now, self.settings.token_refresh) {
            return Ok(token);
        }
        let _refreshing = session.refresh.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(token) = session.fresh_token(now, self.settings.token_refresh) {
            return Ok(token);
        }
        let cached = session
            .lock()
            .credentials
            .clone()
            .filter(|c| lasts_a_token(c, now));
        let credentials = match cached {
            Some(c) => c,
            None => {
                let fresh = self.assumer.assume(&name).await?;
                tracing::info!(session_name = %name, expires = ?fresh.expiry(), "assumed the upstream role");
                session.lock().credentials = Some(fresh.clone());
                fresh
            }
        };
        let token: Arc<str> = Arc::from(presign_token(
            &credentials,
            &self.settings.cluster_name,
            &self.settings.region,
            &self.settings.sts_base,
            now,
        )?);
        session.lock().token = Some(IssuedToken {
            value: Arc::clone(&token),
            signed_at: now,
        });
        tracing::debug!(session_name = %name, "new EKS token");
        Ok(token)
    }

    /// The API server refused `token` (401): forget it and its credentials so the next request
    /// re-assumes the role and signs anew. A token already replaced is ignored, so a burst of
    /// 401s for one token causes one refresh.
    pub fn rejected(&self, user: Option<&str>, token: &Arc<str>) {
        let name = self.session_name_for(user);
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned();
        let Some(session) = session else { return };
        let mut state = session.lock();
        if state
            .token
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(&current.value, token))
        {
            state.token = None;
            state.credentials = None;
            tracing::warn!(session_name = %name, "the API server refused the gateway's EKS token: it will be renewed");
        }
    }

    /// The session for `name`, created if new; the least recently used one makes room.
    fn session(&self, name: &str) -> Arc<Session> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get(name) {
            session.last_used.store(tick, Ordering::Relaxed);
            return Arc::clone(session);
        }
        if sessions.len() >= self.settings.max_sessions {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        let session = Arc::new(Session::new(tick));
        sessions.insert(name.to_string(), Arc::clone(&session));
        session
    }

    /// How many sessions are cached (for tests and metrics).
    pub fn cached_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;

    /// 2015-08-30T12:36:00Z, the time of the published SigV4 test suite.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_credentials(session_token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token.map(str::to_owned),
            None,
            "test",
        )
    }

    fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
        url.split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    /// Presigned (query) variants of the AWS SigV4 test suite: the CRT suite
    /// (github.com/awslabs/aws-c-auth, tests/aws-signing-test-suite/v4/<name>/query-signature.txt,
    /// as vendored in the aws-sigv4 crate's aws-signing-test-suite). Credentials AKIDEXAMPLE,
    /// us-east-1, service "service", 2015-08-30T12:36:00Z, expires 3600 s, empty body.
    #[test]
    fn presigning_matches_the_published_sigv4_query_vectors() {
        let session_token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let vectors = [
            (
                "get-vanilla-query",
                "https://example.amazonaws.com/",
                None,
                "e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d",
            ),
            (
                "get-vanilla-query-order-key-case",
                "https://example.amazonaws.com/?Param2=value2&Param1=value1",
                None,
                "86012e2c9ad4d77369f5d81c11f75158aae4f895a085212cc6d3f923d300bed5",
            ),
            (
                "get-vanilla-query-unreserved",
                "https://example.amazonaws.com/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                None,
                "8e76a88a7433637b12778d5592799b29ad21ecd6cf6325051c21d86f0acda2bf",
            ),
            (
                "get-vanilla-with-session-token",
                "https://example.amazonaws.com/",
                Some(session_token),
                "7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c",
            ),
        ];
        for (name, url, token, expected) in vectors {
            let presigned = presign_url(
                &suite_credentials(token),
                "us-east-1",
                "service",
                url,
                &[],
                suite_time(),
                Duration::from_secs(3600),
            )
            .unwrap();
            assert_eq!(
                query_param(&presigned, "X-Amz-Signature"),
                Some(expected),
                "{name}: {presigned}"
            );
            assert_eq!(
                query_param(&presigned, "X-Amz-Credential"),
                Some("AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request"),
                "{name}"
            );
            assert_eq!(query_param(&presigned, "X-Amz-SignedHeaders"), Some("host"));
            assert_eq!(query_param(&presigned, "X-Amz-Expires"), Some("3600"));
        }
    }

    /// HMAC-SHA256 (RFC 2104) written out here so the known-answer test below does not trust
    /// the signer it checks.
    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The EKS token, decoded, is the presigned GetCallerIdentity URL that aws-iam-authenticator
    /// expects, and its signature is the one the SigV4 specification gives for the canonical
    /// request written out below.
    #[test]
    fn eks_token_known_answer() {
        let token = presign_token(
            &suite_credentials(Some("session-token-example")),
            "test-cluster",
            "us-east-1",
            &sts_base_url("us-east-1", None).unwrap(),
            suite_time(),
        )
        .unwrap();
        let encoded = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert!(!encoded.contains('=') && !encoded.contains('+') && !encoded.contains('/'));
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap();
        assert!(
            url.starts_with(
                "https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        for (name, value) in [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            (
                "X-Amz-Credential",
                "AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fsts%2Faws4_request",
            ),
            ("X-Amz-Date", "20150830T123600Z"),
            ("X-Amz-Expires", "60"),
            ("X-Amz-SignedHeaders", "host%3Bx-k8s-aws-id"),
            ("X-Amz-Security-Token", "session-token-example"),
        ] {
            assert_eq!(query_param(&url, name), Some(value), "{name} in {url}");
        }
        let canonical_request = "GET\n/\nAction=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-Security-Token=session-token-example&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id\nhost:sts.us-east-1.amazonaws.com\nx-k8s-aws-id:test-cluster\n\nhost;x-k8s-aws-id\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/sts/aws4_request\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_vec();
        for part in ["20150830", "us-east-1", "sts", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        assert_eq!(
            query_param(&url, "X-Amz-Signature"),
            Some(expected.as_str())
        );

        // Another cluster, another signature: the cluster name is bound by the signature.
        let other = presign_token(
            &suite_credentials(Some("session-token-example")),
            "other-cluster",
            "us-east-1",
            &sts_base_url("us-east-1", None).unwrap(),
            suite_time(),
        )
        .unwrap();
        assert_ne!(other, token);
    }

    #[test]
    fn session_names_are_safe_for_sts() {
        let allowed = |name: &str| {
            (2..=MAX_SESSION_NAME).contains(&name.len())
                && name.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
                })
        };
        let default = format!("portcullis-{}", config::EKS_USER_PLACEHOLDER);
        assert_eq!(
            session_name(&default, "oidc:alice@example.com"),
            "portcullis-oidc-alice@example.com"
        );
        assert_eq!(
            session_name(&default, "system:serviceaccount:dev:agent"),
            "portcullis-system-serviceaccount-dev-agent"
        );
        assert_eq!(session_name("portcullis", "anyone"), "portcullis");
        assert_eq!(session_name("{user}", "a"), "a-");
        let long_a = format!("{}a", "x".repeat(80));
        let long_b = format!("{}b", "x".repeat(80));
        let (a, b) = (
            session_name(&default, &long_a),
            session_name(&default, &long_b),
        );
        assert_eq!(a.len(), MAX_SESSION_NAME);
        assert_ne!(a, b, "two long users must not share a session");
        for name in [
            a,
            b,
            session_name(&default, "ünïcode user/with spaces\n"),
            session_name(&default, ""),
        ] {
            assert!(allowed(&name), "{name:?}");
        }
    }

    const CONFIG: &str = "listen:\n  address: 127.0.0.1:8443\n  tls:\n    cert_file: /c\n    key_file: /k\nupstream:\n  url: https://eks.example\n  credential:\n    eks:\n      cluster_name: prod\n      region: eu-west-1\n      role_arn: arn:aws:iam::123456789012:role/portcullis\nidentity:\n  issuers:\n    - issuer: https://issuer.example\n      audiences: [portcullis]\n      jwks_file: /j\n";

    #[test]
    fn eks_config_has_defaults_and_is_checked() {
        let parse = |text: &str| config::Config::parse(text, std::path::Path::new("c.yaml"));
        let c = parse(CONFIG).unwrap();
        let config::Credential::Eks(eks) = &c.upstream.credential else {
            panic!("not an eks credential")
        };
        assert_eq!(eks.session_name, "portcullis-{user}");
        assert_eq!(eks.token_refresh_seconds, 600);
        assert_eq!(eks.role_duration_seconds, 3600);
        assert!(eks.external_id.is_none() && eks.sts_endpoint.is_none());
        let settings = EksSettings::from_config(eks).unwrap();
        assert_eq!(settings.sts_base, "https://sts.eu-west-1.amazonaws.com");

        let role = "      role_arn: arn:aws:iam::123456789012:role/portcullis\n";
        for (extra, expect) in [
            ("      session_name: \"a b {user}\"\n", "session_name"),
            ("      session_name: x\n", "at least 2"),
            (
                "      token_refresh_seconds: 900\n",
                "token_refresh_seconds",
            ),
            ("      role_duration_seconds: 60\n", "role_duration_seconds"),
            ("      max_sessions: 0\n", "max_sessions"),
            ("      sts_url: http://x\n", "sts_url"),
        ] {
            let text = CONFIG.replace(role, &format!("{role}{extra}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expect), "{extra}: {err}");
        }
        let user_arn = CONFIG.replace(":role/portcullis", ":user/portcullis");
        assert!(parse(&user_arn)
            .unwrap_err()
            .to_string()
            .contains("role ARN"));
        let no_url = CONFIG.replace("  url: https://eks.example\n", "");
        assert!(parse(&no_url)
            .unwrap_err()
            .to_string()
            .contains("upstream.url is required"));
    }

    #[test]
    fn sts_endpoints() {
        assert_eq!(
            sts_base_url("eu-west-1", None).unwrap(),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            sts_base_url("cn-north-1", None).unwrap(),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            sts_base_url("us-east-1", Some("http://127.0.0.1:5000/")).unwrap(),
            "http://127.0.0.1:5000"
        );
        for bad in [
            "127.0.0.1:5000",
            "ftp://x",
            "https://x/path",
            "https://x/?a=b",
        ] {
            assert!(sts_base_url("us-east-1", Some(bad)).is_err(), "{bad}");
        }
    }

    /// A stand-in for STS that counts AssumeRole calls and can hold them until released.
    struct FakeSts {
        calls: AtomicUsize,
        names: Mutex<Vec<String>>,
        gate: Option<tokio::sync::Semaphore>,
        lifetime: Duration,
        now: SystemTime,
    }

    impl FakeSts {
        fn new(now: SystemTime, gated: bool) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                names: Mutex::new(Vec::new()),
                gate: gated.then(|| tokio::sync::Semaphore::new(0)),
                lifetime: Duration::from_secs(3600),
                now,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(SeqCst)
        }
        fn names(&self) -> Vec<String> {
            self.names.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl RoleAssumer for Arc<FakeSts> {
        async fn assume(&self, session_name: &str) -> Result<Credentials, EksError> {
            let n = self.calls.fetch_add(1, SeqCst);
            self.names.lock().unwrap().push(session_name.to_string());
            if let Some(gate) = &self.gate {
                let _permit = gate.acquire().await;
            }
            Ok(Credentials::new(
                format!("ASIA{n}"),
                format!("secret-{n}"),
                Some(format!("session-{n}")),
                Some(self.now + self.lifetime),
                "fake",
            ))
        }
    }

    fn settings(template: &str, max_sessions: usize) -> EksSettings {
        EksSettings {
            cluster_name: "test-cluster".into(),
            region: "us-east-1".into(),
            sts_base: sts_base_url("us-east-1", None).unwrap(),
            session_name_template: template.into(),
            token_refresh: Duration::from_secs(600),
            max_sessions,
        }
    }

    fn credential(sts: &Arc<FakeSts>, template: &str, max_sessions: usize) -> Arc<EksCredential> {
        Arc::new(EksCredential::new(
            settings(template, max_sessions),
            Box::new(Arc::clone(sts)),
        ))
    }

    #[tokio::test]
    async fn a_burst_of_requests_does_one_refresh() {
        let t0 = suite_time();
        let sts = FakeSts::new(t0, true);
        let eks = credential(&sts, "portcullis-{user}", 16);
        let arrived = Arc::new(AtomicUsize::new(0));
        let burst = 20;
        let mut tasks = Vec::new();
        for _ in 0..burst {
            let (eks, arrived) = (Arc::clone(&eks), Arc::clone(&arrived));
            tasks.push(tokio::spawn(async move {
                arrived.fetch_add(1, SeqCst);
                eks.token_at(Some("alice"), t0).await
            }));
        }
        // On this single-threaded runtime a task that has counted itself has also run up to its
        // first wait: all of them are now waiting for the one refresh.
        while arrived.load(SeqCst) < burst {
            tokio::task::yield_now().await;
        }
        assert_eq!(sts.calls(), 1, "concurrent requests each assumed the role");
        sts.gate.as_ref().unwrap().add_permits(burst);
        let mut tokens = Vec::new();
        for task in tasks {
            tokens.push(task.await.unwrap().unwrap());
        }
        assert_eq!(sts.calls(), 1);
        assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));
    }

    #[tokio::test]
    async fn tokens_are_reused_then_refreshed_before_eks_stops_accepting_them() {
        let t0 = suite_time();
        let sts = FakeSts::new(t0, false);
        let eks = credential(&sts, "portcullis-{user}", 16);
        let first = eks.token_at(Some("alice"), t0).await.unwrap();
        let later = eks
            .token_at(Some("alice"), t0 + Duration::from_secs(599))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &later));
        let renewed = eks
            .token_at(Some("alice"), t0 + Duration::from_secs(600))
            .await
            .unwrap();
        assert_ne!(first, renewed);
        assert_eq!(
            sts.calls(),
            1,
            "credentials still good for a whole token life"
        );
        // 3600 s credentials: from 45 minutes on a token could outlive them, so re-assume.
        let near_expiry = t0 + Duration::from_secs(3600) - TOKEN_LIFETIME;
        let _ = eks.token_at(Some("alice"), near_expiry).await.unwrap();
        assert_eq!(sts.calls(), 2);
    }

    #[tokio::test]
    async fn a_401_retires_that_token_once() {
        let t0 = suite_time();
        let sts = FakeSts::new(t0, false);
        let eks = credential(&sts, "portcullis-{user}", 16);
        let old = eks.token_at(Some("alice"), t0).await.unwrap();
        eks.rejected(Some("alice"), &old);
        let new = eks.token_at(Some("alice"), t0).await.unwrap();
        assert_ne!(old, new);
        assert_eq!(sts.calls(), 2, "a refused token also drops its credentials");
        // Late 401s for the old token do not throw away the new one.
        eks.rejected(Some("alice"), &old);
        let again = eks.token_at(Some("alice"), t0).await.unwrap();
        assert!(Arc::ptr_eq(&new, &again));
        assert_eq!(sts.calls(), 2);
        // Bob's session is not touched by Alice's 401.
        let bob = eks.token_at(Some("bob"), t0).await.unwrap();
        eks.rejected(Some("alice"), &new);
        assert!(Arc::ptr_eq(
            &bob,
            &eks.token_at(Some("bob"), t0).await.unwrap()
        ));
    }

    #[tokio::test]
    async fn callers_get_their_own_bounded_sessions() {
        let t0 = suite_time();
        let sts = FakeSts::new(t0, false);
        let eks = credential(&sts, "portcullis-{user}", 2);
        let alice = eks.token_at(Some("oidc:alice"), t0).await.unwrap();
        let bob = eks.token_at(Some("oidc:bob"), t0).await.unwrap();
        assert_ne!(alice, bob);
        assert_eq!(
            sts.names(),
            ["portcullis-oidc-alice", "portcullis-oidc-bob"]
        );
        // Alice is used again, so Bob is the least recently used when Carol arrives.
        let _ = eks.token_at(Some("oidc:alice"), t0).await.unwrap();
        let _ = eks.token_at(Some("oidc:carol"), t0).await.unwrap();
        assert_eq!(eks.cached_sessions(), 2);
        let _ = eks.token_at(Some("oidc:alice"), t0).await.unwrap();
        assert_eq!(sts.calls(), 3);
        let _ = eks.token_at(Some("oidc:bob"), t0).await.unwrap();
        assert_eq!(sts.calls(), 4, "bob's evicted session is assumed again");
    }

    #[tokio::test]
    async fn a_fixed_session_name_is_shared_by_every_caller() {
        let t0 = suite_time();
        let sts = FakeSts::new(t0, false);
        let eks = credential(&sts, "portcullis-gateway", 16);
        let alice = eks.token_at(Some("alice"), t0).await.unwrap();
        let bob = eks.token_at(Some("bob"), t0).await.unwrap();
        let nobody = eks.token_at(None, t0).await.unwrap();
        assert!(Arc::ptr_eq(&alice, &bob) && Arc::ptr_eq(&alice, &nobody));
        assert_eq!(sts.names(), ["portcullis-gateway"]);
    }
}
