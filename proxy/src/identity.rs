//! Caller identity: verifying the bearer JWT every request carries and mapping it to the user,
//! groups and extras the gateway impersonates upstream.
//!
//! Owns: issuer selection by `iss`, key sources (a JWKS file, a JWKS URL, or OIDC discovery),
//! the JWKS cache and its refreshes (scheduled, honouring `Cache-Control: max-age`, and on an
//! unknown key, rate-limited per issuer), key selection (by `kid`, or the one key that fits when a
//! token has none), signature and claim checks (iss, aud, exp, nbf, iat, required claims,
//! algorithm allow-list), the cache of verified tokens, and the claim-to-identity mapping (OIDC or
//! Kubernetes service account). Must never: accept `none` or an HMAC algorithm, try keys of an
//! issuer the token does not name, log or return a token, or let a request through when keys are
//! missing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{self, IssuerKind};

/// Tokens larger than this are refused before any parsing (a JWT is a few KiB at most).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verified tokens remembered at most; beyond this, expired entries go first, then arbitrary ones.
const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Refresh interval when the JWKS response carries no usable `Cache-Control: max-age`.
const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// One HTTP fetch (discovery or JWKS) may take this long; a request waiting on an unknown-key
/// refresh waits at most this long too.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A discovery document or JWKS larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The groups every Kubernetes service account belongs to.
const SA_GROUP: &str = "system:serviceaccounts";
const SA_USER_PREFIX: &str = "system:serviceaccount:";

/// Who the caller is, as the gateway will tell the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// Extra attributes (`Impersonate-Extra-<key>`), from the issuer's `extra_claims`.
    pub extra: Vec<(String, Vec<String>)>,
    pub issuer: String,
    /// `exp` of the token, seconds since the epoch.
    pub expires: u64,
}

/// Why a token was refused. Messages are safe to return to the caller: they never contain the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <OIDC token>`")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    NotBearer,
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token issuer is not trusted by this gateway")]
    UnknownIssuer,
    #[error("token algorithm {0} is not allowed for its issuer")]
    AlgorithmNotAllowed(String),
    #[error("no key of the issuer matches the token")]
    NoMatchingKey,
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token has no usable `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` does not have the required value")]
    ClaimMismatch(String),
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityConfigError {
    #[error("issuer {issuer}: cannot read JWKS file {path}: {error}")]
    ReadJwks {
        issuer: String,
        path: String,
        error: std::io::Error,
    },
    #[error("issuer {issuer}: JWKS is not valid: {message}")]
    BadJwks { issuer: String, message: String },
    #[error("issuer {issuer}: algorithm {alg}: {message}")]
    BadAlgorithm {
        issuer: String,
        alg: String,
        message: &'static str,
    },
    #[error("issuer {issuer}: cannot build HTTP client: {message}")]
    Client { issuer: String, message: String },
}

/// Why fetching an issuer's keys failed. Never fatal: the keys already held stay in use.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("fetched less than {0:?} ago (rate limit); not fetched again")]
    RateLimited(Duration),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("discovery document at {url}: {message}")]
    Discovery { url: String, message: String },
    #[error("JWKS at {url}: {message}")]
    Jwks { url: String, message: String },
}

/// Where a remote issuer's keys come from.
#[derive(Debug, Clone)]
enum Remote {
    Jwks(String),
    Discovery(String),
}

/// What `/readyz` reports for one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStatus {
    pub issuer: String,
    pub keys: usize,
    /// The last fetch's error, `None` after a success (or for a JWKS file).
    pub last_error: Option<String>,
}

type Keys = Arc<Vec<(Jwk, DecodingKey)>>;

/// Single-flight state of an issuer's fetches (held across the fetch, so concurrent callers wait
/// for one fetch instead of starting their own).
#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// `jwks_uri` from discovery; re-discovered after a failed JWKS fetch.
    jwks_uri: Option<String>,
}

struct Health {
    next_refresh: Instant,
    last_error: Option<String>,
}

/// One trusted issuer and its current keys.
struct Issuer {
    config: config::Issuer,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Keys>,
    remote: Option<Remote>,
    client: Option<reqwest::Client>,
    fetch: tokio::sync::Mutex<FetchState>,
    health: Mutex<Health>,
    min_interval: Duration,
    max_interval: Duration,
}

struct CachedToken {
    identity: Identity,
    /// Seconds since the epoch after which the entry is dead (`exp` plus the clock skew).
    valid_until: u64,
}

/// All trusted issuers, keyed by their exact `iss`.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    cache: Mutex<HashMap<[u8; 32], CachedToken>>,
}

/// `http://` is accepted for a loopback test provider only; everything else must be `https://`.
pub fn url_allowed(url: &str) -> bool {
    url.starts_with("https://")
        || url.starts_with("http://127.0.0.1:")
        || url.starts_with("http://127.0.0.1/")
        || url == "http://127.0.0.1"
}

/// The discovery URL of an issuer: `<issuer>/.well-known/openid-configuration`.
pub fn discovery_url_for(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

pub fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Verifier {
    /// Build the verifier; JWKS files are read now, remote keys are fetched by
    /// [`Verifier::refresh_remote`].
    pub fn new(issuers: &[config::Issuer]) -> Result<Self, IdentityConfigError> {
        let mut map = HashMap::new();
        for cfg in issuers {
            let algorithms = parse_algorithms(cfg)?;
            let keys = match &cfg.jwks_file {
                Some(path) => load_jwks_file(&cfg.issuer, path)?,
                None => Vec::new(),
            };
            let remote = match (&cfg.jwks_file, &cfg.jwks_url, &cfg.discovery_url) {
                (Some(_), _, _) => None,
                (None, Some(url), _) => Some(Remote::Jwks(url.clone())),
                (None, None, Some(url)) => Some(Remote::Discovery(url.clone())),
                (None, None, None) => Some(Remote::Discovery(discovery_url_for(&cfg.issuer))),
            };
            let client = match remote {
                Some(_) => Some(http_client(cfg)?),
                None => None,
            };
            let min_interval = Duration::from_secs(cfg.jwks_min_refresh_interval_seconds);
            let max_interval =
                Duration::from_secs(cfg.jwks_max_refresh_interval_seconds).max(min_interval);
            map.insert(
                cfg.issuer.clone(),
                Arc::new(Issuer {
                    config: cfg.clone(),
                    algorithms,
                    keys: RwLock::new(Arc::new(keys)),
                    remote,
                    client,
                    fetch: tokio::sync::Mutex::new(FetchState::default()),
                    health: Mutex::new(Health {
                        next_refresh: Instant::now(),
                        last_error: None,
                    }),
                    min_interval,
                    max_interval,
                }),
            );
        }
        Ok(Self {
            issuers: map,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Fetch the keys of every remote issuer now (start-up). A failure keeps the keys the issuer
    /// already had (tokens they verify keep working; nothing unverified passes).
    pub async fn refresh_remote(&self) -> Vec<(String, Result<usize, FetchError>)> {
        let mut results = Vec::new();
        for issuer in self.issuers.values().filter(|i| i.remote.is_some()) {
            let outcome = issuer.refresh(false).await;
            results.push((issuer.config.issuer.clone(), outcome));
        }
        results
    }

    /// Refresh the issuers whose scheduled refresh is due.
    pub async fn refresh_due(&self) {
        let now = Instant::now();
        for issuer in self.issuers.values().filter(|i| i.remote.is_some()) {
            let due = issuer
                .health
                .lock()
                .map(|h| h.next_refresh <= now)
                .unwrap_or(true);
            if due {
                let _ = issuer.refresh(false).await;
            }
        }
    }

    /// How long until the next scheduled refresh of any remote issuer (`None`: no remote issuer).
    pub fn until_next_refresh(&self) -> Option<Duration> {
        let now = Instant::now();
        self.issuers
            .values()
            .filter(|i| i.remote.is_some())
            .filter_map(|i| i.health.lock().ok().map(|h| h.next_refresh))
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// True when every issuer has at least one key (for `/readyz`).
    pub fn ready(&self) -> bool {
        self.status().iter().all(|s| s.keys > 0)
    }

    /// Per-issuer key count and last fetch error, sorted by issuer.
    pub fn status(&self) -> Vec<IssuerStatus> {
        let mut all: Vec<IssuerStatus> = self
            .issuers
            .values()
            .map(|i| IssuerStatus {
                issuer: i.config.issuer.clone(),
                keys: i.keys.read().map(|k| k.len()).unwrap_or(0),
                last_error: i.health.lock().ok().and_then(|h| h.last_error.clone()),
            })
            .collect();
        all.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        all
    }

    pub fn has_remote_issuers(&self) -> bool {
        self.issuers.values().any(|i| i.remote.is_some())
    }

    /// Verify the value of an `Authorization` header against the keys held now.
    pub fn verify_header(
        &self,
        authorization: Option<&[u8]>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        self.verify(token, now)
    }

    /// Verify the value of an `Authorization` header; when no held key matches a remote issuer's
    /// token, fetch its keys once (rate-limited per issuer) and try again.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        match self.verify(token, now) {
            Err(e @ (AuthError::NoMatchingKey | AuthError::KeysUnavailable)) => {
                let Some(issuer) = unverified_issuer(token)
                    .ok()
                    .and_then(|iss| self.issuers.get(&iss))
                    .filter(|i| i.remote.is_some())
                else {
                    return Err(e);
                };
                match issuer.refresh(true).await {
                    Ok(_) => self.verify(token, now),
                    Err(fetch) => {
                        tracing::debug!(issuer = %issuer.config.issuer, error = %fetch, "no key refresh for an unmatched token");
                        Err(e)
                    }
                }
            }
            other => other,
        }
    }

    /// Verify a token against the keys held now (no network).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cached(&digest, now) {
            return Ok(identity);
        }
        let iss = unverified_issuer(token)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::UnknownIssuer)?;
        let identity = issuer.verify(token, now)?;
        self.remember(
            digest,
            &identity,
            identity.expires + issuer.config.clock_skew_seconds,
            now,
        );
        Ok(identity)
    }

    fn cached(&self, digest: &[u8; 32], now: u64) -> Option<Identity> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(digest)
            .filter(|c| now <= c.valid_until)
            .map(|c| c.identity.clone())
    }

    fn remember(&self, digest: [u8; 32], identity: &Identity, valid_until: u64, now: u64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= TOKEN_CACHE_CAPACITY {
            cache.retain(|_, c| now <= c.valid_until);
        }
        if cache.len() >= TOKEN_CACHE_CAPACITY {
            // Still full of live tokens: drop a tenth, whichever they are; they are re-verified
            // on their next use, which costs time but never correctness.
            let doomed: Vec<[u8; 32]> = cache
                .keys()
                .take(TOKEN_CACHE_CAPACITY / 10)
                .copied()
                .collect();
            for key in doomed {
                cache.remove(&key);
            }
        }
        cache.insert(
            digest,
            CachedToken {
                identity: identity.clone(),
                valid_until,
            },
        );
    }

    #[cfg(test)]
    fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Issuer {
    fn current_keys(&self) -> Keys {
        self.keys
            .read()
            .map(|k| Arc::clone(&k))
            .unwrap_or_else(|_| Arc::new(Vec::new()))
    }

    fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let keys = self.current_keys();
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        let key = select_key(&keys, header.kid.as_deref(), header.alg)?;

        let skew = self.config.clock_skew_seconds;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&self.config.audiences);
        validation.leeway = skew;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(describe_jwt_error(&e)))?;
        let claims = data.claims;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if exp + skew < now {
            return Err(AuthError::Invalid("token has expired".into()));
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64) {
            if nbf > now + skew {
                return Err(AuthError::Invalid("token is not valid yet (nbf)".into()));
            }
        }
        match claims.get("iat") {
            None => {}
            Some(iat) => match iat.as_u64() {
                Some(iat) if iat <= now + skew => {}
                Some(_) => return Err(AuthError::Invalid("token was issued in the future".into())),
                None => return Err(AuthError::MissingClaim("iat".into())),
            },
        }
        check_required_claims(&self.config, &claims)?;
        map_identity(&self.config, &claims, exp)
    }

    /// Fetch the keys (discovery first when configured). `on_demand` fetches (an unknown key)
    /// are refused within `min_interval` of the last attempt, whatever its outcome, so forged
    /// `kid`s cannot make the gateway hammer the issuer; concurrent callers share one fetch.
    async fn refresh(&self, on_demand: bool) -> Result<usize, FetchError> {
        let (Some(remote), Some(client)) = (&self.remote, &self.client) else {
            return Ok(self.current_keys().len());
        };
        let keys_before = Arc::as_ptr(&self.current_keys()) as usize;
        let mut state = self.fetch.lock().await;
        if on_demand {
            // Someone else fetched while we waited for the lock: use their result.
            if Arc::as_ptr(&self.current_keys()) as usize != keys_before {
                return Ok(self.current_keys().len());
            }
            if let Some(last) = state.last_attempt {
                if last.elapsed() < self.min_interval {
                    return Err(FetchError::RateLimited(self.min_interval));
                }
            }
        }
        state.last_attempt = Some(Instant::now());
        let outcome = self.fetch_keys(remote, client, &mut state).await;
        let issuer = &self.config.issuer;
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok((keys, max_age)) => {
                let count = keys.len();
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
                let next = max_age
                    .unwrap_or(DEFAULT_JWKS_MAX_AGE)
                    .clamp(self.min_interval, self.max_interval);
                health.next_refresh = Instant::now() + next;
                health.last_error = None;
                tracing::info!(%issuer, keys = count, next_refresh_s = next.as_secs(), on_demand, "fetched JWKS");
                Ok(count)
            }
            Err(e) => {
                health.next_refresh = Instant::now() + self.min_interval;
                health.last_error = Some(e.to_string());
                tracing::warn!(%issuer, error = %e, kept_keys = self.current_keys().len(), "JWKS fetch failed; keeping the keys held");
                Err(e)
            }
        }
    }

    async fn fetch_keys(
        &self,
        remote: &Remote,
        client: &reqwest::Client,
        state: &mut FetchState,
    ) -> Result<(Vec<(Jwk, DecodingKey)>, Option<Duration>), FetchError> {
        let jwks_url = match remote {
            Remote::Jwks(url) => url.clone(),
            Remote::Discovery(url) => match &state.jwks_uri {
                Some(uri) => uri.clone(),
                None => {
                    let uri = self.discover(client, url).await?;
                    state.jwks_uri = Some(uri.clone());
                    uri
                }
            },
        };
        let result = async {
            let (bytes, max_age) = get(client, &jwks_url).await?;
            let keys = parse_jwks(&self.config.issuer, &bytes).map_err(|e| FetchError::Jwks {
                url: jwks_url.clone(),
                message: e.to_string(),
            })?;
            if keys.is_empty() {
                return Err(FetchError::Jwks {
                    url: jwks_url.clone(),
                    message: "no usable key".into(),
                });
            }
            Ok((keys, max_age))
        }
        .await;
        if result.is_err() {
            // The issuer may have moved its keys: discover again next time.
            state.jwks_uri = None;
        }
        result
    }

    async fn discover(&self, client: &reqwest::Client, url: &str) -> Result<String, FetchError> {
        let bad = |message: String| FetchError::Discovery {
            url: url.to_string(),
            message,
        };
        let (bytes, _) = get(client, url).await?;
        #[derive(serde::Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: String,
        }
        let meta: Metadata = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer we trust.
        if meta.issuer != self.config.issuer {
            return Err(bad(format!(
                "names issuer {:?}, not {:?}",
                meta.issuer, self.config.issuer
            )));
        }
        if !url_allowed(&meta.jwks_uri) {
            return Err(bad(format!(
                "jwks_uri {:?} is not https (http is accepted for 127.0.0.1 only)",
                meta.jwks_uri
            )));
        }
        Ok(meta.jwks_uri)
    }
}

fn http_client(cfg: &config::Issuer) -> Result<reqwest::Client, IdentityConfigError> {
    let err = |message: String| IdentityConfigError::Client {
        issuer: cfg.issuer.clone(),
        message,
    };
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        // A redirect could lead a fetch off the configured host; issuers do not need it.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.jwks_ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| err(format!("cannot read {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
        // A private CA replaces the platform roots: only it may vouch for this issuer.
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| err(e.to_string()))
}

/// GET a small JSON document; returns its bytes and `Cache-Control: max-age`.
async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(bytes::Bytes, Option<Duration>), FetchError> {
    let http = |message: String| FetchError::Http {
        url: url.to_string(),
        message,
    };
    if !url_allowed(url) {
        return Err(http(
            "not https (http is accepted for 127.0.0.1 only)".into(),
        ));
    }
    let response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("answered {}", response.status())));
    }
    let max_age = response
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(http("document is too large".into()));
    }
    let bytes = response.bytes().await.map_err(|e| http(e.to_string()))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(http("document is too large".into()));
    }
    Ok((bytes, max_age))
}

/// `max-age=N` from one `Cache-Control` value (`no-store`/`no-cache` mean "as soon as allowed").
fn max_age(value: &str) -> Option<Duration> {
    let mut result = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            result = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    result
}

fn bearer_token(header: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(header).map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    Ok(token)
}

/// Read `iss` from the payload without trusting it: it only chooses which issuer's keys to try.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    #[derive(serde::Deserialize)]
    struct IssOnly {
        iss: Option<String>,
    }
    let claims: IssOnly = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    claims.iss.ok_or(AuthError::MissingClaim("iss".into()))
}

fn select_key<'k>(
    keys: &'k [(Jwk, DecodingKey)],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k DecodingKey, AuthError> {
    let fits = |jwk: &Jwk| key_fits(jwk, alg);
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(jwk, _)| jwk.common.key_id.as_deref() == Some(kid) && fits(jwk))
            .map(|(_, key)| key)
            .ok_or(AuthError::NoMatchingKey),
        None => {
            // Some providers issue tokens without `kid`: accept only when exactly one key fits, so
            // the choice is never ambiguous.
            let mut fitting = keys.iter().filter(|(jwk, _)| fits(jwk));
            match (fitting.next(), fitting.next()) {
                (Some((_, key)), None) => Ok(key),
                _ => Err(AuthError::NoMatchingKey),
            }
        }
    }
}

/// A key fits an algorithm when its type matches the algorithm's family and its own `alg` (if the
/// JWKS names one) is that algorithm.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let family_ok = matches!(
        (&jwk.algorithm, alg),
        (
            P::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
            | (P::OctetKeyPair(_), Algorithm::EdDSA)
    );
    let alg_ok = match jwk.common.key_algorithm {
        Some(key_alg) => format!("{key_alg:?}") == format!("{alg:?}"),
        None => true,
    };
    // A key published for encryption only must not verify signatures.
    let use_ok = !matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    );
    family_ok && alg_ok && use_ok
}

/// `required_claims`: each named claim must be a string equal to the value (a boolean claim
/// compares as `"true"`/`"false"`, e.g. `email_verified`).
fn check_required_claims(
    cfg: &config::Issuer,
    claims: &serde_json::Map<String, Value>,
) -> Result<(), AuthError> {
    for (name, required) in &cfg.required_claims {
        let ok = match claims.get(name) {
            Some(Value::String(s)) => s == required,
            Some(Value::Bool(b)) => b.to_string() == *required,
            None => return Err(AuthError::MissingClaim(name.clone())),
            Some(_) => false,
        };
        if !ok {
            return Err(AuthError::ClaimMismatch(name.clone()));
        }
    }
    Ok(())
}

fn string_list(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(g)) => Ok(vec![g.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AuthError::MissingClaim(name.into())),
        Some(_) => Err(AuthError::MissingClaim(name.into())),
    }
}

fn map_identity(
    cfg: &config::Issuer,
    claims: &serde_json::Map<String, Value>,
    expires: u64,
) -> Result<Identity, AuthError> {
    let mut extra = Vec::new();
    for (key, claim) in &cfg.extra_claims {
        let values = string_list(claims, claim)?;
        if !values.is_empty() {
            extra.push((key.clone(), values));
        }
    }
    let (user, groups) = match cfg.kind {
        IssuerKind::Oidc => {
            let user = claims
                .get(&cfg.username_claim)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| AuthError::MissingClaim(cfg.username_claim.clone()))?;
            let groups = string_list(claims, &cfg.groups_claim)?;
            (
                format!("{}{}", cfg.username_prefix, user),
                groups
                    .into_iter()
                    .map(|g| format!("{}{}", cfg.groups_prefix, g))
                    .collect(),
            )
        }
        IssuerKind::ServiceAccount => {
            let (namespace, name) = service_account(claims)?;
            (
                format!("{SA_USER_PREFIX}{namespace}:{name}"),
                vec![SA_GROUP.to_string(), format!("{SA_GROUP}:{namespace}")],
            )
        }
    };
    Ok(Identity {
        user,
        groups,
        extra,
        issuer: cfg.issuer.clone(),
        expires,
    })
}

/// Namespace and name of a Kubernetes service-account token: `sub` is
/// `system:serviceaccount:<ns>:<name>`; the `kubernetes.io` claim, when present, must agree.
fn service_account(claims: &serde_json::Map<String, Value>) -> Result<(String, String), AuthError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
    let rest = sub
        .strip_prefix(SA_USER_PREFIX)
        .ok_or_else(|| AuthError::ClaimMismatch("sub".into()))?;
    let (namespace, name) = rest
        .split_once(':')
        .filter(|(ns, n)| valid_dns_label(ns) && valid_sa_name(n))
        .ok_or_else(|| AuthError::ClaimMismatch("sub".into()))?;
    if let Some(k8s) = claims.get("kubernetes.io") {
        let claimed_ns = k8s.get("namespace").and_then(Value::as_str);
        let claimed_name = k8s
            .get("serviceaccount")
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str);
        if claimed_ns != Some(namespace) || claimed_name != Some(name) {
            return Err(AuthError::ClaimMismatch("kubernetes.io".into()));
        }
    }
    Ok((namespace.to_string(), name.to_string()))
}

fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_sa_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token has expired".into(),
        K::ImmatureSignature => "token is not valid yet (nbf)".into(),
        K::InvalidAudience => "token audience is not accepted".into(),
        K::InvalidIssuer => "token issuer does not match".into(),
        K::InvalidSignature => "signature does not verify".into(),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        K::MissingRequiredClaim(c) => format!("token has no `{c}` claim"),
        _ => "token could not be verified".into(),
    }
}

fn parse_algorithms(cfg: &config::Issuer) -> Result<Vec<Algorithm>, IdentityConfigError> {
    cfg.algorithms
        .iter()
        .map(|name| {
            let bad = |message| IdentityConfigError::BadAlgorithm {
                issuer: cfg.issuer.clone(),
                alg: name.clone(),
                message,
            };
            let alg: Algorithm = name.parse().map_err(|_| bad("unknown algorithm"))?;
            match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    Err(bad("HMAC algorithms are never accepted (they would turn a public key into a secret)"))
                }
                _ => Ok(alg),
            }
        })
        .collect()
}

fn parse_jwks(issuer: &str, bytes: &[u8]) -> Result<Vec<(Jwk, DecodingKey)>, IdentityConfigError> {
    // Parse key by key: one key of a type this crate does not know must not hide the others.
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let set: RawSet = serde_json::from_slice(bytes).map_err(|e| IdentityConfigError::BadJwks {
        issuer: issuer.into(),
        message: e.to_string(),
    })?;
    let mut keys = Vec::new();
    for raw in set.keys {
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!(%issuer, error = %e, "skipping unparseable JWK");
                continue;
            }
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => keys.push((jwk, key)),
            // A key we cannot use (e.g. a symmetric one) is skipped, not fatal: the others still verify.
            Err(e) => {
                tracing::warn!(%issuer, kid = ?jwk.common.key_id, error = %e, "skipping unusable JWK")
            }
        }
    }
    Ok(keys)
}

fn load_jwks_file(
    issuer: &str,
    path: &Path,
) -> Result<Vec<(Jwk, DecodingKey)>, IdentityConfigError> {
    let bytes = std::fs::read(path).map_err(|error| IdentityConfigError::ReadJwks {
        issuer: issuer.into(),
        path: path.display().to_string(),
        error,
    })?;
    parse_jwks(issuer, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    // A fixed P-256 key pair for tests (generated for this test suite only).
    fn ec_pair() -> (EncodingKey, Jwk) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        (encoding, jwk)
    }

    fn issuer_cfg() -> config::Issuer {
        config::Issuer {
            issuer: "https://issuer.test".into(),
            audiences: vec!["portcullis".into()],
            kind: IssuerKind::Oidc,
            jwks_file: None,
            jwks_url: None,
            discovery_url: None,
            jwks_ca_file: None,
            jwks_min_refresh_interval_seconds: 30,
            jwks_max_refresh_interval_seconds: 3600,
            username_claim: "sub".into(),
            username_prefix: "oidc:".into(),
            groups_claim: "groups".into(),
            groups_prefix: "oidc:".into(),
            required_claims: Default::default(),
            extra_claims: Default::default(),
            algorithms: vec!["ES256".into()],
            clock_skew_seconds: 60,
        }
    }

    fn verifier_with(jwk: Jwk, kid: Option<&str>) -> Verifier {
        verifier_cfg(jwk, kid, issuer_cfg())
    }

    fn verifier_cfg(jwk: Jwk, kid: Option<&str>, cfg: config::Issuer) -> Verifier {
        let mut jwk = jwk;
        jwk.common.key_id = kid.map(String::from);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-identity-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
        let mut cfg = cfg;
        cfg.jwks_file = Some(path);
        let v = Verifier::new(&[cfg]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        v
    }

    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "iss": "https://issuer.test", "aud": ["portcullis", "other"], "sub": "alice",
            "groups": ["devs", "oncall"], "exp": now() + 600, "nbf": now() - 10, "iat": now() - 10,
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(String::from);
        encode(&header, claims, key).unwrap()
    }

    #[test]
    fn valid_token_maps_user_and_groups_with_prefixes() {
        let (enc, jwk) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        // One reading of the clock: two could straddle a second boundary.
        let exp = now() + 600;
        let id = v
            .verify(
                &sign(&enc, Some("k1"), &claims(serde_json::json!({"exp": exp}))),
                now(),
            )
            .unwrap();
        assert_eq!(id.user, "oidc:alice");
        assert_eq!(id.groups, vec!["oidc:devs", "oidc:oncall"]);
        assert_eq!(id.expires, exp);
    }

    #[test]
    fn token_without_kid_uses_the_single_fitting_key() {
        let (enc, jwk) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        assert!(v
            .verify(&sign(&enc, None, &claims(serde_json::json!({}))), now())
            .is_ok());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (enc, jwk) = ec_pair();
        let (other_enc, _) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        let ok = claims(serde_json::json!({}));
        let cases: Vec<(String, &str)> = vec![
            (
                sign(
                    &enc,
                    Some("k1"),
                    &claims(serde_json::json!({"exp": now() - 3600})),
                ),
                "expired",
            ),
            (
                sign(
                    &enc,
                    Some("k1"),
                    &claims(serde_json::json!({"nbf": now() + 3600})),
                ),
                "not yet valid",
            ),
            (
                sign(
                    &enc,
                    Some("k1"),
                    &claims(serde_json::json!({"aud": "someone-else"})),
                ),
                "audience",
            ),
            (
                sign(
                    &enc,
                    Some("k1"),
                    &claims(serde_json::json!({"iss": "https://evil.test"})),
                ),
                "issuer",
            ),
            (sign(&other_enc, Some("k1"), &ok), "other key"),
            (sign(&enc, Some("nope"), &ok), "unknown kid"),
            ("a.b".into(), "malformed"),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "too large"),
        ];
        for (token, what) in cases {
            assert!(v.verify(&token, now()).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn alg_none_and_hmac_with_public_key_are_refused() {
        let (_, jwk) = ec_pair();
        let v = verifier_with(jwk.clone(), Some("k1"));
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let payload = b64(&claims(serde_json::json!({})));
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "kid": "k1"})),
            payload
        );
        assert!(v.verify(&none, now()).is_err());
        let public = serde_json::to_vec(&jwk).unwrap();
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &claims(serde_json::json!({})),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs, now()).unwrap_err(),
            AuthError::AlgorithmNotAllowed("HS256".into())
        );
        let mut cfg = issuer_cfg();
        cfg.algorithms = vec!["HS256".into()];
        assert!(Verifier::new(&[cfg]).is_err());
    }

    #[test]
    fn verified_tokens_are_cached_until_they_expire() {
        let (enc, jwk) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        let exp = now() + 600;
        let t = sign(&enc, Some("k1"), &claims(serde_json::json!({"exp": exp})));
        let first = v.verify(&t, now()).unwrap();
        assert_eq!(v.cache_len(), 1);
        assert_eq!(v.verify(&t, now()).unwrap(), first);
        assert_eq!(v.cache_len(), 1);
        // Past exp + skew the cached entry no longer answers, and the token fails verification.
        assert!(v.verify(&t, exp + 61).is_err());
        // A refused token is never cached.
        let bad = sign(&enc, Some("k1"), &claims(serde_json::json!({"aud": "x"})));
        assert!(v.verify(&bad, now()).is_err());
        assert_eq!(v.cache_len(), 1);
    }

    #[test]
    fn required_and_extra_claims() {
        let (enc, jwk) = ec_pair();
        let mut cfg = issuer_cfg();
        cfg.required_claims = [
            ("email_verified".to_string(), "true".to_string()),
            ("tenant".to_string(), "blue".to_string()),
        ]
        .into();
        cfg.extra_claims = [("example.com/email".to_string(), "email".to_string())].into();
        let v = verifier_cfg(jwk, Some("k1"), cfg);
        let good = serde_json::json!({"email_verified": true, "tenant": "blue", "email": "a@x"});
        let id = v
            .verify(&sign(&enc, Some("k1"), &claims(good)), now())
            .unwrap();
        assert_eq!(
            id.extra,
            vec![("example.com/email".to_string(), vec!["a@x".to_string()])]
        );
        let wrong = serde_json::json!({"email_verified": true, "tenant": "red"});
        assert_eq!(
            v.verify(&sign(&enc, Some("k1"), &claims(wrong)), now()),
            Err(AuthError::ClaimMismatch("tenant".into()))
        );
        let missing = serde_json::json!({"tenant": "blue"});
        assert_eq!(
            v.verify(&sign(&enc, Some("k1"), &claims(missing)), now()),
            Err(AuthError::MissingClaim("email_verified".into()))
        );
    }

    #[test]
    fn issued_in_the_future_is_refused() {
        let (enc, jwk) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        let t = sign(
            &enc,
            Some("k1"),
            &claims(serde_json::json!({"iat": now() + 3600})),
        );
        assert!(v.verify(&t, now()).is_err());
    }

    #[test]
    fn service_account_tokens_map_to_kubernetes_identities() {
        let (enc, jwk) = ec_pair();
        let mut cfg = issuer_cfg();
        cfg.kind = IssuerKind::ServiceAccount;
        cfg.username_prefix.clear();
        cfg.groups_prefix.clear();
        let v = verifier_cfg(jwk, Some("k1"), cfg);
        let sa = serde_json::json!({
            "sub": "system:serviceaccount:agents:runner",
            "groups": ["ignored"],
            "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "runner", "uid": "u"}},
        });
        let id = v
            .verify(&sign(&enc, Some("k1"), &claims(sa)), now())
            .unwrap();
        assert_eq!(id.user, "system:serviceaccount:agents:runner");
        assert_eq!(
            id.groups,
            vec!["system:serviceaccounts", "system:serviceaccounts:agents"]
        );
        for sub in [
            "alice",
            "system:serviceaccount:agents",
            "system:serviceaccount:Agents:runner",
            "system:serviceaccount:a:b:c",
        ] {
            let t = sign(&enc, Some("k1"), &claims(serde_json::json!({ "sub": sub })));
            assert!(v.verify(&t, now()).is_err(), "{sub} accepted");
        }
        let disagree = serde_json::json!({
            "sub": "system:serviceaccount:agents:runner",
            "kubernetes.io": {"namespace": "kube-system", "serviceaccount": {"name": "runner"}},
        });
        assert_eq!(
            v.verify(&sign(&enc, Some("k1"), &claims(disagree)), now()),
            Err(AuthError::ClaimMismatch("kubernetes.io".into()))
        );
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert!(url_allowed("http://127.0.0.1:9400/jwks"));
        assert!(!url_allowed("http://127.0.0.1.evil.test/jwks"));
        assert!(!url_allowed("http://localhost:9400"));
    }

    /// A tiny JWKS/discovery server on loopback counting the JWKS fetches.
    async fn serve_keys(
        jwks: Arc<Mutex<String>>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = base.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if req.starts_with("GET /jwks") {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    jwks.lock().unwrap().clone()
                } else {
                    serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")})
                        .to_string()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        base
    }

    #[tokio::test]
    async fn discovery_unknown_kid_refresh_is_rate_limited() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (enc1, mut jwk1) = ec_pair();
        let (enc2, mut jwk2) = ec_pair();
        jwk1.common.key_id = Some("k1".into());
        jwk2.common.key_id = Some("k2".into());
        let jwks = Arc::new(Mutex::new(
            serde_json::json!({ "keys": [jwk1] }).to_string(),
        ));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let base = serve_keys(Arc::clone(&jwks), Arc::clone(&hits)).await;
        let mut cfg = issuer_cfg();
        cfg.issuer = base.clone();
        cfg.jwks_min_refresh_interval_seconds = 1;
        let v = Verifier::new(&[cfg]).unwrap();
        assert!(!v.ready());
        let results = v.refresh_remote().await;
        assert_eq!(results[0].1, Ok(1));
        assert!(v.ready());
        // Cache-Control max-age=7 schedules the next refresh (within [1 s, 3600 s]).
        let next = v.until_next_refresh().unwrap();
        assert!(next > Duration::from_secs(5) && next <= Duration::from_secs(7));
        let c = |_: &str| {
            let mut c = claims(serde_json::json!({}));
            c["iss"] = serde_json::json!(base.clone());
            c
        };
        let header = |t: String| format!("Bearer {t}");
        let ok = header(sign(&enc1, Some("k1"), &c("k1")));
        assert!(v.authenticate(Some(ok.as_bytes()), now()).await.is_ok());
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Forged kids within the interval: no fetch at all.
        for i in 0..5 {
            let forged = header(sign(&enc2, Some(&format!("forged-{i}")), &c("x")));
            assert!(v
                .authenticate(Some(forged.as_bytes()), now())
                .await
                .is_err());
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The issuer rotates to k2; after the interval one unknown-kid token triggers one fetch.
        *jwks.lock().unwrap() = serde_json::json!({ "keys": [jwk2] }).to_string();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let rotated = header(sign(&enc2, Some("k2"), &c("k2")));
        assert!(v
            .authenticate(Some(rotated.as_bytes()), now())
            .await
            .is_ok());
        for i in 0..5 {
            let forged = header(sign(&enc2, Some(&format!("again-{i}")), &c("x")));
            assert!(v
                .authenticate(Some(forged.as_bytes()), now())
                .await
                .is_err());
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(v.status()[0].keys, 1);
    }

    #[tokio::test]
    async fn unreachable_issuer_keeps_cached_keys_and_fails_closed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (enc, mut jwk) = ec_pair();
        jwk.common.key_id = Some("k1".into());
        let jwks = Arc::new(Mutex::new(serde_json::json!({ "keys": [jwk] }).to_string()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let base = serve_keys(jwks, hits).await;
        let dead = format!(
            "http://127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        );
        let mut good = issuer_cfg();
        good.issuer = base.clone();
        good.jwks_url = Some(format!("{base}/jwks"));
        let mut down = issuer_cfg();
        down.issuer = dead.clone();
        let v = Verifier::new(&[good, down]).unwrap();
        let results = v.refresh_remote().await;
        assert_eq!(results.iter().filter(|(_, r)| r.is_err()).count(), 1);
        assert!(!v.ready());
        let status = v.status();
        let down_status = status.iter().find(|s| s.issuer == dead).unwrap();
        assert_eq!(down_status.keys, 0);
        assert!(down_status.last_error.is_some());
        let mut c = claims(serde_json::json!({}));
        c["iss"] = serde_json::json!(dead);
        let t = format!("Bearer {}", sign(&enc, Some("k1"), &c));
        assert_eq!(
            v.authenticate(Some(t.as_bytes()), now()).await,
            Err(AuthError::KeysUnavailable)
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(b"Bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"Basic abc"), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(b"Bearer "), Err(AuthError::Missing));
        let (enc, jwk) = ec_pair();
        let v = verifier_with(jwk, Some("k1"));
        assert_eq!(v.verify_header(None, now()), Err(AuthError::Missing));
        let t = format!(
            "Bearer {}",
            sign(&enc, Some("k1"), &claims(serde_json::json!({})))
        );
        assert!(v.verify_header(Some(t.as_bytes()), now()).is_ok());
    }
}
