//! Caller identity: verifying the bearer JWT every request carries and mapping it to the user and
//! groups the gateway impersonates upstream.
//!
//! Owns: issuer selection by `iss`, key selection (by `kid`, or the one key that fits when a token
//! has none), signature and claim checks (iss, aud, exp, nbf, algorithm allow-list), and the
//! claim-to-identity mapping. Must never: accept `none` or an HMAC algorithm, try keys of an issuer
//! the token does not name, log or return a token, or let a request through when keys are missing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config;

/// Tokens larger than this are refused before any parsing (a JWT is a few KiB at most).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who the caller is, as the gateway will tell the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityConfigError {
    #[error("issuer {issuer}: cannot read JWKS file {path}: {source}")]
    ReadJwks {
        issuer: String,
        path: String,
        source: std::io::Error,
    },
    #[error("issuer {issuer}: JWKS is not valid: {message}")]
    BadJwks { issuer: String, message: String },
    #[error("issuer {issuer}: algorithm {alg}: {message}")]
    BadAlgorithm {
        issuer: String,
        alg: String,
        message: &'static str,
    },
    #[error("issuer {issuer}: cannot build JWKS client: {message}")]
    Client { issuer: String, message: String },
}

/// One trusted issuer and its current keys.
struct Issuer {
    config: config::Issuer,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<Vec<(Jwk, DecodingKey)>>>,
}

/// All trusted issuers, keyed by their exact `iss`.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
}

impl Verifier {
    /// Build the verifier; JWKS files are read now, JWKS URLs are fetched by [`Verifier::refresh_remote`].
    pub fn new(issuers: &[config::Issuer]) -> Result<Self, IdentityConfigError> {
        let mut map = HashMap::new();
        for cfg in issuers {
            let algorithms = parse_algorithms(cfg)?;
            let keys = match &cfg.jwks_file {
                Some(path) => load_jwks_file(&cfg.issuer, path)?,
                None => Vec::new(),
            };
            map.insert(
                cfg.issuer.clone(),
                Arc::new(Issuer {
                    config: cfg.clone(),
                    algorithms,
                    keys: RwLock::new(Arc::new(keys)),
                }),
            );
        }
        Ok(Self { issuers: map })
    }

    /// Fetch the keys of every issuer configured with `jwks_url`. A failure keeps the keys the
    /// issuer already had (tokens they verify keep working; nothing unverified passes).
    pub async fn refresh_remote(&self) -> Vec<(String, Result<usize, String>)> {
        let mut results = Vec::new();
        for issuer in self.issuers.values() {
            let Some(url) = &issuer.config.jwks_url else {
                continue;
            };
            let outcome = fetch_jwks(&issuer.config, url).await.map(|keys| {
                let count = keys.len();
                if let Ok(mut slot) = issuer.keys.write() {
                    *slot = Arc::new(keys);
                }
                count
            });
            match &outcome {
                Ok(n) => tracing::info!(issuer = %issuer.config.issuer, keys = n, "fetched JWKS"),
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.issuer, error = %e, "JWKS fetch failed")
                }
            }
            results.push((issuer.config.issuer.clone(), outcome));
        }
        results
    }

    /// True when every issuer has at least one key (for `/readyz`).
    pub fn ready(&self) -> bool {
        self.issuers
            .values()
            .all(|i| i.keys.read().map(|k| !k.is_empty()).unwrap_or(false))
    }

    pub fn has_remote_issuers(&self) -> bool {
        self.issuers.values().any(|i| i.config.jwks_url.is_some())
    }

    /// Verify the value of an `Authorization` header and map it to an identity.
    pub fn verify_header(
        &self,
        authorization: Option<&[u8]>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        self.verify(token, now)
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let iss = unverified_issuer(token)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::UnknownIssuer)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let keys = issuer
            .keys
            .read()
            .map(|k| Arc::clone(&k))
            .map_err(|_| AuthError::KeysUnavailable)?;
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        let key = select_key(&keys, header.kid.as_deref(), header.alg)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[issuer.config.issuer.as_str()]);
        validation.set_audience(&issuer.config.audiences);
        validation.leeway = issuer.config.clock_skew_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(describe_jwt_error(&e)))?;
        let claims = data.claims;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if exp + issuer.config.clock_skew_seconds < now {
            return Err(AuthError::Invalid("token has expired".into()));
        }
        map_identity(&issuer.config, &claims, exp)
    }
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
    family_ok && alg_ok
}

fn map_identity(
    cfg: &config::Issuer,
    claims: &serde_json::Map<String, Value>,
    expires: u64,
) -> Result<Identity, AuthError> {
    let user = claims
        .get(&cfg.username_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::MissingClaim(cfg.username_claim.clone()))?;
    let groups = match claims.get(&cfg.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AuthError::MissingClaim(cfg.groups_claim.clone()))?,
        Some(_) => return Err(AuthError::MissingClaim(cfg.groups_claim.clone())),
    };
    Ok(Identity {
        user: format!("{}{}", cfg.username_prefix, user),
        groups: groups
            .into_iter()
            .map(|g| format!("{}{}", cfg.groups_prefix, g))
            .collect(),
        issuer: cfg.issuer.clone(),
        expires,
    })
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
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| IdentityConfigError::BadJwks {
        issuer: issuer.into(),
        message: e.to_string(),
    })?;
    let mut keys = Vec::new();
    for jwk in set.keys {
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
    let bytes = std::fs::read(path).map_err(|source| IdentityConfigError::ReadJwks {
        issuer: issuer.into(),
        path: path.display().to_string(),
        source,
    })?;
    parse_jwks(issuer, &bytes)
}

async fn fetch_jwks(cfg: &config::Issuer, url: &str) -> Result<Vec<(Jwk, DecodingKey)>, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .https_only(!url.starts_with("http://127.0.0.1") && !url.starts_with("http://localhost"));
    if let Some(ca) = &cfg.jwks_ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("JWKS endpoint answered {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    parse_jwks(&cfg.issuer, &bytes).map_err(|e| e.to_string())
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
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            username_claim: "sub".into(),
            username_prefix: "oidc:".into(),
            groups_claim: "groups".into(),
            groups_prefix: "oidc:".into(),
            algorithms: vec!["ES256".into()],
            clock_skew_seconds: 60,
        }
    }

    fn verifier_with(jwk: Jwk, kid: Option<&str>) -> Verifier {
        let mut jwk = jwk;
        jwk.common.key_id = kid.map(String::from);
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let cfg = issuer_cfg();
        let issuer = Issuer {
            algorithms: parse_algorithms(&cfg).unwrap(),
            config: cfg.clone(),
            keys: RwLock::new(Arc::new(vec![(jwk, key)])),
        };
        Verifier {
            issuers: HashMap::from([(cfg.issuer.clone(), Arc::new(issuer))]),
        }
    }

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
        let id = v
            .verify(
                &sign(&enc, Some("k1"), &claims(serde_json::json!({}))),
                now(),
            )
            .unwrap();
        assert_eq!(id.user, "oidc:alice");
        assert_eq!(id.groups, vec!["oidc:devs", "oidc:oncall"]);
        assert_eq!(id.expires, now() + 600);
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
