//! The upstream request's headers: what of the client's request may reach the API server, and
//! what the gateway adds (its own credential and the caller's impersonated identity, with the
//! request's session id and client address as extras).
//!
//! Owns: stripping client credentials, client-sent `Impersonate-*`, `X-Remote-*`, `X-Forwarded-*`
//! and hop-by-hop headers (including any the client nominates in `Connection`, so a client cannot
//! make a proxy drop the gateway's own impersonation headers), then setting `Host`,
//! `Authorization` and the impersonation headers. Must never: forward the client's token, or let a
//! client-sent impersonation header survive.

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::identity::Identity;

/// Header names no client may send upstream, compared lowercase.
const STRIPPED_PREFIXES: &[&str] = &["impersonate-", "x-remote-", "x-forwarded-"];
const STRIPPED_NAMES: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-real-ip",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the caller's identity contains characters that cannot be sent in a header")]
    UnencodableIdentity,
    #[error("the upstream credential cannot be sent in a header")]
    UnencodableCredential,
    #[error("upstream authority {0:?} is not a valid Host header")]
    BadAuthority(String),
}

/// The first header a client's `Connection` field nominates as hop-by-hop that the gateway
/// protects (credentials, identity, forwarding and framing headers). Such a request is refused:
/// no legitimate client needs it, and it is the classic way to make a proxy drop a header.
pub fn nominated_protected_header(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .find(|name| {
            matches!(
                name.as_str(),
                "host" | "authorization" | "content-length" | "transfer-encoding" | "forwarded"
            ) || STRIPPED_PREFIXES.iter().any(|p| name.starts_with(p))
        })
}

/// What to put on the upstream request besides the client's own (sanitized) headers.
pub struct Forwarding<'a> {
    pub authority: &'a str,
    pub upstream_token: &'a str,
    /// `None` only in the benchmark's bare-passthrough mode.
    pub identity: Option<&'a Identity>,
    /// An HTTP/1.1 upgrade (exec/attach/port-forward): keep `Upgrade` and the protocol's own headers.
    pub upgrade: Option<HeaderValue>,
    /// The gateway's id of this request, sent as extra `portcullis.dev/session` so the API
    /// server's audit log correlates with ours.
    pub session_id: &'a str,
    /// The downstream peer's address, sent as extra `portcullis.dev/client-ip`.
    pub client_ip: Option<&'a str>,
}

/// Extra keys the gateway itself sets with every impersonated identity.
pub const EXTRA_SESSION: &str = "portcullis.dev/session";
pub const EXTRA_CLIENT_IP: &str = "portcullis.dev/client-ip";

/// Header name for an impersonated extra: the key is percent-encoded (the API server decodes it),
/// so `/` and other characters that cannot appear in a header name survive.
fn extra_header_name(key: &str) -> Result<HeaderName, HeaderError> {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(key, KEEP).to_string();
    HeaderName::from_bytes(format!("impersonate-extra-{encoded}").as_bytes())
        .map_err(|_| HeaderError::UnencodableIdentity)
}

/// Rewrite `req` in place for the upstream.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    fwd: &Forwarding<'_>,
) -> Result<(), HeaderError> {
    // Names the client nominated as hop-by-hop go too: otherwise `Connection: Impersonate-User`
    // could make an HTTP/1.1 hop drop the gateway's own header.
    let mut doomed: Vec<HeaderName> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    doomed.extend(
        req.headers
            .keys()
            .filter(|name| {
                let n = name.as_str();
                STRIPPED_NAMES.contains(&n) || STRIPPED_PREFIXES.iter().any(|p| n.starts_with(p))
            })
            .cloned(),
    );
    for name in doomed {
        // `Host` is replaced below; framing headers are pingora's business.
        if name == http::header::HOST
            || name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
        {
            continue;
        }
        while req.remove_header(&name).is_some() {}
    }

    // Origin-form URI, so an HTTP/2 upstream takes `:authority` from our Host, not the client's.
    if let Some(pq) = req.uri.path_and_query().cloned() {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            req.set_uri(uri);
        }
    }
    let host = HeaderValue::from_str(fwd.authority)
        .map_err(|_| HeaderError::BadAuthority(fwd.authority.to_string()))?;
    set(req, http::header::HOST, host)?;

    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", fwd.upstream_token))
        .map_err(|_| HeaderError::UnencodableCredential)?;
    // pingora logs whole request headers at debug level; a sensitive value prints as "Sensitive".
    bearer.set_sensitive(true);
    set(req, http::header::AUTHORIZATION, bearer)?;

    if let Some(upgrade) = &fwd.upgrade {
        set(
            req,
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )?;
        set(req, http::header::UPGRADE, upgrade.clone())?;
    }

    if let Some(identity) = fwd.identity {
        let user = HeaderValue::from_bytes(identity.user.as_bytes())
            .map_err(|_| HeaderError::UnencodableIdentity)?;
        set(req, HeaderName::from_static("impersonate-user"), user)?;
        for group in &identity.groups {
            let value = HeaderValue::from_bytes(group.as_bytes())
                .map_err(|_| HeaderError::UnencodableIdentity)?;
            req.append_header(HeaderName::from_static("impersonate-group"), value)
                .map_err(|_| HeaderError::UnencodableIdentity)?;
        }
        let ours = [
            (EXTRA_SESSION, Some(fwd.session_id)),
            (EXTRA_CLIENT_IP, fwd.client_ip),
        ];
        let carried = identity
            .extra
            .iter()
            .flat_map(|(k, values)| values.iter().map(move |v| (k.as_str(), Some(v.as_str()))));
        for (key, value) in ours.into_iter().chain(carried) {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| HeaderError::UnencodableIdentity)?;
            req.append_header(extra_header_name(key)?, value)
                .map_err(|_| HeaderError::UnencodableIdentity)?;
        }
    }
    Ok(())
}

fn set(req: &mut RequestHeader, name: HeaderName, value: HeaderValue) -> Result<(), HeaderError> {
    req.insert_header(name, value)
        .map_err(|_| HeaderError::UnencodableIdentity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            user: "oidc:alice".into(),
            groups: vec!["oidc:devs".into(), "oidc:oncall".into()],
            extra: vec![("example.com/email".into(), vec!["alice@example.com".into()])],
            issuer: "https://issuer.test".into(),
            expires: 0,
        }
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(
            "GET",
            b"https://gateway.local:8443/api/v1/pods?limit=1",
            None,
        )
        .unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn values(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn client_credentials_and_identity_claims_never_survive() {
        let mut req = request(&[
            ("Authorization", "Bearer client-token"),
            ("Impersonate-User", "system:admin"),
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Extra-scopes", "all"),
            ("Impersonate-Uid", "0"),
            ("X-Remote-User", "admin"),
            ("X-Remote-Group", "system:masters"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("Host", "gateway.local"),
            ("Accept", "application/json"),
        ]);
        let id = identity();
        prepare_upstream_request(
            &mut req,
            &Forwarding {
                authority: "127.0.0.1:6443",
                upstream_token: "gateway-token",
                identity: Some(&id),
                upgrade: None,
                session_id: "s-1",
                client_ip: Some("10.0.0.7"),
            },
        )
        .unwrap();
        assert_eq!(values(&req, "authorization"), vec!["Bearer gateway-token"]);
        let credential = req.headers.get("authorization").unwrap();
        assert!(credential.is_sensitive());
        assert!(!format!("{:?}", req.headers).contains("gateway-token"));
        assert_eq!(values(&req, "impersonate-user"), vec!["oidc:alice"]);
        assert_eq!(
            values(&req, "impersonate-group"),
            vec!["oidc:devs", "oidc:oncall"]
        );
        assert!(values(&req, "impersonate-extra-scopes").is_empty());
        assert_eq!(
            values(&req, "impersonate-extra-portcullis.dev%2fsession"),
            vec!["s-1"]
        );
        assert_eq!(
            values(&req, "impersonate-extra-portcullis.dev%2fclient-ip"),
            vec!["10.0.0.7"]
        );
        assert_eq!(
            values(&req, "impersonate-extra-example.com%2femail"),
            vec!["alice@example.com"]
        );
        assert!(values(&req, "impersonate-uid").is_empty());
        assert!(values(&req, "x-remote-user").is_empty());
        assert!(values(&req, "x-remote-group").is_empty());
        assert!(values(&req, "x-forwarded-for").is_empty());
        assert_eq!(values(&req, "host"), vec!["127.0.0.1:6443"]);
        assert_eq!(values(&req, "accept"), vec!["application/json"]);
        assert_eq!(req.uri.to_string(), "/api/v1/pods?limit=1");
    }

    #[test]
    fn connection_nominated_headers_are_removed_and_cannot_hide_ours() {
        let mut req = request(&[
            ("Connection", "keep-alive, Impersonate-User, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
        ]);
        let id = identity();
        prepare_upstream_request(
            &mut req,
            &Forwarding {
                authority: "api:443",
                upstream_token: "t",
                identity: Some(&id),
                upgrade: None,
                session_id: "s-1",
                client_ip: Some("10.0.0.7"),
            },
        )
        .unwrap();
        assert!(values(&req, "connection").is_empty());
        assert!(values(&req, "x-secret-hop").is_empty());
        assert_eq!(values(&req, "impersonate-user"), vec!["oidc:alice"]);
    }

    #[test]
    fn nominating_a_protected_header_is_detected() {
        let req = request(&[("Connection", "keep-alive, Impersonate-User")]);
        assert_eq!(
            nominated_protected_header(&req.headers).as_deref(),
            Some("impersonate-user")
        );
        let req = request(&[("Connection", "X-Forwarded-For")]);
        assert_eq!(
            nominated_protected_header(&req.headers).as_deref(),
            Some("x-forwarded-for")
        );
        let req = request(&[("Connection", "Upgrade"), ("Connection", "keep-alive")]);
        assert_eq!(nominated_protected_header(&req.headers), None);
    }

    #[test]
    fn upgrades_keep_exactly_connection_upgrade() {
        let mut req = request(&[
            ("Connection", "Upgrade, Impersonate-Group"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ]);
        let id = identity();
        prepare_upstream_request(
            &mut req,
            &Forwarding {
                authority: "api:443",
                upstream_token: "t",
                identity: Some(&id),
                upgrade: Some(HeaderValue::from_static("SPDY/3.1")),
                session_id: "s-1",
                client_ip: None,
            },
        )
        .unwrap();
        assert_eq!(values(&req, "connection"), vec!["Upgrade"]);
        assert_eq!(values(&req, "upgrade"), vec!["SPDY/3.1"]);
        assert_eq!(
            values(&req, "x-stream-protocol-version"),
            vec!["v4.channel.k8s.io"]
        );
        assert_eq!(values(&req, "impersonate-group").len(), 2);
    }

    #[test]
    fn identities_that_cannot_be_headers_fail_closed() {
        let mut req = request(&[]);
        let mut id = identity();
        id.user = "alice\r\nImpersonate-Group: system:masters".into();
        let err = prepare_upstream_request(
            &mut req,
            &Forwarding {
                authority: "api:443",
                upstream_token: "t",
                identity: Some(&id),
                upgrade: None,
                session_id: "s-1",
                client_ip: Some("10.0.0.7"),
            },
        )
        .unwrap_err();
        assert_eq!(err, HeaderError::UnencodableIdentity);
    }
}
