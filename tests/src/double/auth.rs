//! Who a request is from: bearer-token authentication (a small enum of authenticators: static tokens, and EKS
//! `k8s-aws-v1.` tokens verified against an STS stand-in in [`eks`]) and `Impersonate-*` handling with the API
//! server's rules and messages. It must never log or return a token in clear; only its SHA-256 leaves this module.

pub mod eks;

use std::collections::{BTreeMap, HashMap, HashSet};

use http::HeaderMap;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::status::ApiError;

pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The identity the double authorizes and reports (`authentication.k8s.io/v1` `UserInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The credential part of an `Authorization` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The scheme word as sent (e.g. "Bearer"), if there was an Authorization header.
    pub scheme: Option<String>,
    /// The bearer token when the scheme is Bearer.
    pub bearer: Option<String>,
    /// Hex SHA-256 of whatever followed the scheme, for the request log.
    pub sha256: Option<String>,
}

impl Credentials {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Self::default();
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let text = text.trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        let bearer =
            (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then(|| rest.to_string());
        Self {
            scheme: Some(scheme.to_string()),
            bearer,
            sha256: (!rest.is_empty()).then(|| sha256_hex(rest)),
        }
    }
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A way of turning a bearer token into a user. Variants are tried by `Authenticators` in order.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Fixed tokens, each for one user (like the API server's `--token-auth-file`).
    StaticTokens(HashMap<String, String>),
    /// EKS tokens for one cluster; the user is the signer's (assumed-role) ARN, as EKS maps it.
    Eks(eks::EksTokenVerifier),
}

impl Authenticator {
    /// `Ok(None)` means "not my token"; errors are reserved for verifiers that can fail (network, clock).
    pub async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        match self {
            Authenticator::StaticTokens(tokens) => Ok(tokens.get(token).map(|user| UserInfo {
                username: user.clone(),
                uid: None,
                groups: vec![AUTHENTICATED_GROUP.to_string()],
                extra: BTreeMap::new(),
            })),
            Authenticator::Eks(verifier) => verifier
                .verify(token)
                .await
                .map_err(|rejection| AuthError::Verification(rejection.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token verification failed: {0}")]
    Verification(String),
}

/// Tries each authenticator in turn; a token no authenticator accepts is a 401.
#[derive(Debug, Clone, Default)]
pub struct Authenticators(pub Vec<Authenticator>);

impl Authenticators {
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<UserInfo, ApiError> {
        let Some(token) = credentials.bearer.as_deref() else {
            return Err(ApiError::unauthorized());
        };
        for authenticator in &self.0 {
            match authenticator.authenticate(token).await {
                Ok(Some(user)) => return Ok(user),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "authenticator failed");
                }
            }
        }
        Err(ApiError::unauthorized())
    }
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// Impersonation is granted by username, or (like an EKS access entry for a role) by the canonical role ARN
/// behind an assumed-role session, whatever the session's name.
fn may_impersonate(authenticated: &UserInfo, impersonators: &HashSet<String>) -> bool {
    impersonators.contains(&authenticated.username)
        || authenticated
            .extra
            .get("canonicalArn")
            .is_some_and(|arns| arns.iter().any(|arn| impersonators.contains(arn)))
}

/// Applies `Impersonate-*` headers: returns the effective identity, or the 403/500 the API server would give.
/// Only users named in `impersonators` may impersonate anyone.
pub fn impersonate(
    authenticated: &UserInfo,
    headers: &HeaderMap,
    impersonators: &HashSet<String>,
) -> Result<UserInfo, ApiError> {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let user = headers.get(IMPERSONATE_USER).map(text);
    let uid = headers.get(IMPERSONATE_UID).map(text);
    let groups: Vec<String> = headers
        .get_all(IMPERSONATE_GROUP)
        .iter()
        .map(text)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA) {
            let key = percent_decode_str(key).decode_utf8_lossy().to_lowercase();
            extra.entry(key).or_default().push(text(value));
        }
    }
    let Some(user) = user else {
        if groups.is_empty() && extra.is_empty() && uid.is_none() {
            return Ok(authenticated.clone());
        }
        return Err(ApiError::internal(format!(
            "requested groups {groups:?}, extra {extra:?} without impersonating a user"
        )));
    };
    if !may_impersonate(authenticated, impersonators) {
        let (what, resource, group) = match user.strip_prefix("system:serviceaccount:") {
            Some(sa) => {
                let (ns, name) = sa.split_once(':').unwrap_or(("", sa));
                return Err(ApiError::forbidden(format!(
                    "serviceaccounts \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \
                     \"serviceaccounts\" in API group \"\" in the namespace \"{ns}\"",
                    authenticated.username
                ))
                .with_details(serde_json::json!({"name": name, "kind": "serviceaccounts"})));
            }
            None => (user.as_str(), "users", ""),
        };
        return Err(ApiError::forbidden(format!(
            "{resource} \"{what}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API \
             group \"{group}\" at the cluster scope",
            authenticated.username
        ))
        .with_details(serde_json::json!({"name": what, "kind": resource})));
    }
    let mut effective_groups = groups;
    if let Some(sa) = user.strip_prefix("system:serviceaccount:") {
        if let Some((ns, _)) = sa.split_once(':') {
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !effective_groups.contains(&g) {
                    effective_groups.push(g);
                }
            }
        }
    }
    if user != "system:anonymous" && !effective_groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        effective_groups.push(AUTHENTICATED_GROUP.to_string());
    }
    Ok(UserInfo {
        username: user,
        uid,
        groups: effective_groups,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn gateway() -> UserInfo {
        UserInfo {
            username: "gateway".into(),
            groups: vec![AUTHENTICATED_GROUP.into()],
            ..Default::default()
        }
    }

    fn allowed() -> HashSet<String> {
        ["gateway".to_string()].into_iter().collect()
    }

    #[test]
    fn credentials_are_hashed() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        let c = Credentials::from_headers(&h);
        assert_eq!(c.scheme.as_deref(), Some("Bearer"));
        assert_eq!(c.bearer.as_deref(), Some("abc"));
        assert_eq!(
            c.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        h.insert("authorization", HeaderValue::from_static("Basic dTpw"));
        let c = Credentials::from_headers(&h);
        assert_eq!(c.scheme.as_deref(), Some("Basic"));
        assert!(c.bearer.is_none());
        assert_eq!(
            Credentials::from_headers(&HeaderMap::new()),
            Credentials::default()
        );
    }

    #[tokio::test]
    async fn static_tokens() {
        let a = Authenticators(vec![Authenticator::StaticTokens(
            [("t1".to_string(), "gateway".to_string())]
                .into_iter()
                .collect(),
        )]);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t1"));
        let u = a
            .authenticate(&Credentials::from_headers(&h))
            .await
            .unwrap();
        assert_eq!(u.username, "gateway");
        assert_eq!(u.groups, [AUTHENTICATED_GROUP]);
        h.insert("authorization", HeaderValue::from_static("Bearer t2"));
        assert_eq!(
            a.authenticate(&Credentials::from_headers(&h))
                .await
                .unwrap_err()
                .code,
            401
        );
        assert_eq!(
            a.authenticate(&Credentials::default())
                .await
                .unwrap_err()
                .code,
            401
        );
    }

    #[test]
    fn impersonation_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(impersonate(&gateway(), &h, &allowed()).unwrap(), gateway());
        h.insert(
            "impersonate-user",
            HeaderValue::from_static("alice@example.com"),
        );
        h.append("impersonate-group", HeaderValue::from_static("devs"));
        h.append("impersonate-group", HeaderValue::from_static("ops"));
        h.append(
            "impersonate-extra-portcullis.dev%2fsession",
            HeaderValue::from_static("s-1"),
        );
        h.append("impersonate-extra-scopes", HeaderValue::from_static("a"));
        h.append("impersonate-extra-scopes", HeaderValue::from_static("b"));
        let u = impersonate(&gateway(), &h, &allowed()).unwrap();
        assert_eq!(u.username, "alice@example.com");
        assert_eq!(u.groups, ["devs", "ops", AUTHENTICATED_GROUP]);
        assert_eq!(u.extra["portcullis.dev/session"], ["s-1"]);
        assert_eq!(u.extra["scopes"], ["a", "b"]);

        let other = UserInfo {
            username: "mallory".into(),
            ..Default::default()
        };
        let err = impersonate(&other, &h, &allowed()).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "users \"alice@example.com\" is forbidden: User \"mallory\" cannot impersonate resource \"users\" in \
             API group \"\" at the cluster scope"
        );

        let mut only_group = HeaderMap::new();
        only_group.insert("impersonate-group", HeaderValue::from_static("devs"));
        assert_eq!(
            impersonate(&gateway(), &only_group, &allowed())
                .unwrap_err()
                .code,
            500
        );
    }

    #[test]
    fn service_account_impersonation_groups() {
        let mut h = HeaderMap::new();
        h.insert(
            "impersonate-user",
            HeaderValue::from_static("system:serviceaccount:dev:agent"),
        );
        let u = impersonate(&gateway(), &h, &allowed()).unwrap();
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:dev",
                AUTHENTICATED_GROUP
            ]
        );
    }
}
