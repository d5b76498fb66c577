//! A development token issuer: an ES256 key generated at start, its JWKS, and freshly minted
//! ID-token-shaped JWTs. Used by the demo and by tests that need many (and malformed) tokens.
//! The real-provider tests use a real OIDC provider process instead (see ../shared/peers.md).
//!
//! Must never: be configured as an issuer of a real deployment (its key lives in memory and in
//! the test directory only).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub struct DevIssuer {
    pub issuer: String,
    pub audience: String,
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DevIssuer {
    pub fn new(issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        let kid = format!("dev-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        jwk.common.key_id = Some(kid.clone());
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            kid,
            key,
            jwk,
        })
    }

    /// The JWKS document to configure the gateway with.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .unwrap_or_default()
    }

    /// Standard claims for `sub` in `groups`, valid for `ttl_seconds`.
    pub fn claims(&self, sub: &str, groups: &[&str], ttl_seconds: u64) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "aud": [self.audience],
            "sub": sub,
            "groups": groups,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl_seconds,
        })
    }

    pub fn mint(&self, sub: &str, groups: &[&str], ttl_seconds: u64) -> anyhow::Result<String> {
        self.sign(&self.claims(sub, groups, ttl_seconds))
    }

    /// Sign arbitrary claims with the issuer's key (for tests of refused tokens).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}
