//! EKS `k8s-aws-v1.` bearer tokens, verified the way aws-iam-authenticator does: decode the
//! presigned STS URL, check action, version and host, that `x-k8s-aws-id` is signed, that
//! `X-Amz-Date` is within 15 minutes (`X-Amz-Expires` is ignored, as EKS does), recompute the
//! SigV4 query signature with this cluster's name as the `x-k8s-aws-id` value and the secret the
//! STS stand-in (moto) issued, and only then ask STS `GetCallerIdentity` who signed.
//!
//! SigV4 is implemented here with `hmac` + `sha2`, independently of the gateway's `aws-sigv4`, so
//! the two cross-check each other. Must never log or return a token, signature, session token
//! or secret: rejections name only what was wrong.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use super::{UserInfo, AUTHENTICATED_GROUP};

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// EKS accepts a token this long after (and, for clock skew, before) its `X-Amz-Date`.
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(15 * 60);
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// SigV4's URI encoding: everything but `A-Za-z0-9-_.~` is `%XX`.
const SIGV4_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EksRejection {
    #[error("not a k8s-aws-v1 token")]
    NotEksToken,
    #[error("the token is not base64url of an https URL")]
    Malformed,
    #[error("the token names STS host {0:?}, not the expected one")]
    WrongHost(String),
    #[error("the presigned request is not GET /?Action=GetCallerIdentity&Version=2011-06-15")]
    WrongAction,
    #[error("the presigned request lacks {0}")]
    Missing(&'static str),
    #[error("x-k8s-aws-id is not among the signed headers")]
    ClusterNotSigned,
    #[error("signed header {0:?} cannot be reproduced")]
    UnexpectedSignedHeader(String),
    #[error("X-Amz-Date is not a date")]
    BadDate,
    #[error("the token is older than 15 minutes")]
    Expired,
    #[error("the token is dated more than 15 minutes ahead")]
    FromTheFuture,
    #[error("the credential scope is not <date>/<region>/sts/aws4_request for the signing date")]
    BadScope,
    #[error("STS does not know the signing access key")]
    UnknownAccessKey,
    #[error("the session token does not belong to the signing access key")]
    SessionTokenMismatch,
    #[error("the signature does not match (tampered, or signed for another cluster)")]
    SignatureMismatch,
    #[error("STS: {0}")]
    Sts(String),
}

/// The parts of a decoded token that verification needs.
#[derive(Debug, Clone)]
pub struct PresignedRequest {
    pub host: String,
    pub path: String,
    /// Query parameters as decoded (name, value), `X-Amz-Signature` excluded.
    pub params: Vec<(String, String)>,
    pub access_key_id: String,
    pub scope: String,
    pub region: String,
    pub amz_date: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    pub session_token: Option<String>,
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `X-Amz-Date` (`20150830T123600Z`) as a time.
fn parse_amz_date(text: &str) -> Result<SystemTime, EksRejection> {
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ")
        .map_err(|_| EksRejection::BadDate)?;
    let seconds = u64::try_from(parsed.and_utc().timestamp()).map_err(|_| EksRejection::BadDate)?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Decode and check a token's shape, host and date (the checks that need no secret).
pub fn parse_token(
    token: &str,
    expected_host: &str,
    now: SystemTime,
) -> Result<PresignedRequest, EksRejection> {
    let encoded = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(EksRejection::NotEksToken)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| EksRejection::Malformed)?;
    let url = String::from_utf8(bytes).map_err(|_| EksRejection::Malformed)?;
    let uri: http::Uri = url.parse().map_err(|_| EksRejection::Malformed)?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) {
        return Err(EksRejection::Malformed);
    }
    let host = uri
        .authority()
        .ok_or(EksRejection::Malformed)?
        .as_str()
        .to_string();
    if !host.eq_ignore_ascii_case(expected_host) {
        return Err(EksRejection::WrongHost(host));
    }
    let mut params = Vec::new();
    let mut signature = None;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8_lossy().into_owned();
        let v = percent_decode_str(v).decode_utf8_lossy().into_owned();
        if k == "X-Amz-Signature" {
            signature = Some(v);
        } else {
            params.push((k, v));
        }
    }
    if uri.path() != "/"
        || param(&params, "Action") != Some("GetCallerIdentity")
        || param(&params, "Version") != Some("2011-06-15")
    {
        return Err(EksRejection::WrongAction);
    }
    if param(&params, "X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(EksRejection::Missing("X-Amz-Algorithm=AWS4-HMAC-SHA256"));
    }
    let signature = signature.ok_or(EksRejection::Missing("X-Amz-Signature"))?;
    let signed_headers: Vec<String> = param(&params, "X-Amz-SignedHeaders")
        .ok_or(EksRejection::Missing("X-Amz-SignedHeaders"))?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    if !signed_headers.iter().any(|h| h == CLUSTER_ID_HEADER) {
        return Err(EksRejection::ClusterNotSigned);
    }
    if let Some(other) = signed_headers
        .iter()
        .find(|h| *h != "host" && *h != CLUSTER_ID_HEADER)
    {
        return Err(EksRejection::UnexpectedSignedHeader(other.clone()));
    }
    let amz_date = param(&params, "X-Amz-Date")
        .ok_or(EksRejection::Missing("X-Amz-Date"))?
        .to_string();
    let signed_at = parse_amz_date(&amz_date)?;
    match now.duration_since(signed_at) {
        Ok(age) if age > TOKEN_MAX_AGE => return Err(EksRejection::Expired),
        Err(ahead) if ahead.duration() > TOKEN_MAX_AGE => return Err(EksRejection::FromTheFuture),
        _ => {}
    }
    let credential =
        param(&params, "X-Amz-Credential").ok_or(EksRejection::Missing("X-Amz-Credential"))?;
    let (access_key_id, scope) = credential.split_once('/').ok_or(EksRejection::BadScope)?;
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, "sts", "aws4_request"] = scope_parts.as_slice() else {
        return Err(EksRejection::BadScope);
    };
    if !amz_date.starts_with(date) {
        return Err(EksRejection::BadScope);
    }
    Ok(PresignedRequest {
        host,
        path: uri.path().to_string(),
        access_key_id: access_key_id.to_string(),
        scope: scope.to_string(),
        region: region.to_string(),
        amz_date,
        signed_headers,
        signature,
        session_token: param(&params, "X-Amz-Security-Token").map(str::to_owned),
        params,
    })
}

/// Parameters in SigV4 canonical form: each name and value encoded, sorted, joined with `&`.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            (
                utf8_percent_encode(k, SIGV4_ENCODE).to_string(),
                utf8_percent_encode(v, SIGV4_ENCODE).to_string(),
            )
        })
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so the error arm is never taken; were it taken, an empty
    // MAC matches no signature (fails closed).
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map(|mut mac| {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SigV4 signature of `canonical_request` (scope `date/region/service/aws4_request`).
pub fn sigv4_signature(
    secret: &str,
    amz_date: &str,
    scope: &str,
    canonical_request: &str,
) -> String {
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac_sha256(&key, part.as_bytes());
    }
    hex(&hmac_sha256(&key, string_to_sign.as_bytes()))
}

/// The canonical request of a presigned GET: headers are the signed ones, with `x-k8s-aws-id`
/// set to *this* cluster's name (a token signed for another cluster does not verify).
pub fn presigned_canonical_request(request: &PresignedRequest, cluster_name: &str) -> String {
    let headers: BTreeMap<&str, &str> = request
        .signed_headers
        .iter()
        .map(|name| {
            let value = if name == CLUSTER_ID_HEADER {
                cluster_name
            } else {
                request.host.as_str()
            };
            (name.as_str(), value)
        })
        .collect();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    format!(
        "GET\n{}\n{}\n{canonical_headers}\n{}\n{EMPTY_SHA256}",
        request.path,
        canonical_query(&request.params),
        request.signed_headers.join(";"),
    )
}

/// Recompute the presigned request's signature with `secret` and compare.
pub fn check_signature(
    request: &PresignedRequest,
    cluster_name: &str,
    secret: &str,
) -> Result<(), EksRejection> {
    let expected = sigv4_signature(
        secret,
        &request.amz_date,
        &request.scope,
        &presigned_canonical_request(request, cluster_name),
    );
    // Both are lowercase hex of fixed length; compare without early exit anyway.
    let same = expected.len() == request.signature.len()
        && expected
            .bytes()
            .zip(request.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(EksRejection::SignatureMismatch)
    }
}

/// Who STS says signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

/// The text of `<tag>` in an STS XML answer (a fixed, flat shape from a trusted test peer).
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_string())
}

/// `arn:aws:sts::<acct>:assumed-role/<role>/<session>` → `arn:aws:iam::<acct>:role/<role>`,
/// as aws-iam-authenticator canonicalises it.
pub fn canonical_arn(arn: &str) -> String {
    let Some((prefix, resource)) = arn.split_once(":assumed-role/") else {
        return arn.to_string();
    };
    let role = resource.split('/').next().unwrap_or(resource);
    format!("{}:role/{role}", prefix.replacen(":sts:", ":iam:", 1))
}

/// Verifies EKS tokens for one cluster against the STS stand-in.
#[derive(Debug, Clone)]
pub struct EksTokenVerifier {
    pub cluster_name: String,
    /// `host[:port]` tokens must name: `sts.<region>.amazonaws.com`, or the stand-in's.
    pub sts_host: String,
    /// The STS stand-in (moto): `http://127.0.0.1:PORT`.
    pub sts_url: String,
    client: reqwest::Client,
}

impl EksTokenVerifier {
    pub fn new(cluster_name: &str, sts_url: &str) -> Self {
        let sts_url = sts_url.trim_end_matches('/').to_string();
        let sts_host = sts_url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&sts_url)
            .to_string();
        Self {
            cluster_name: cluster_name.to_string(),
            sts_host,
            sts_url,
            client: reqwest::Client::new(),
        }
    }

    /// The whole check; `Ok(None)` for a token that is not an EKS token at all.
    pub async fn verify(&self, token: &str) -> Result<Option<UserInfo>, EksRejection> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let request = parse_token(token, &self.sts_host, SystemTime::now())?;
        let (secret, session_token) = self.issued_secret(&request.access_key_id).await?;
        if request.session_token != session_token {
            return Err(EksRejection::SessionTokenMismatch);
        }
        check_signature(&request, &self.cluster_name, &secret)?;
        let caller = self.get_caller_identity(&request, &secret).await?;
        let session_name = caller
            .arn
            .rsplit_once('/')
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        let mut extra = BTreeMap::new();
        extra.insert(
            "accessKeyId".to_string(),
            vec![request.access_key_id.clone()],
        );
        extra.insert("arn".to_string(), vec![caller.arn.clone()]);
        extra.insert("canonicalArn".to_string(), vec![canonical_arn(&caller.arn)]);
        extra.insert("principalId".to_string(), vec![caller.user_id.clone()]);
        extra.insert("sessionName".to_string(), vec![session_name]);
        Ok(Some(UserInfo {
            username: caller.arn.clone(),
            uid: Some(format!(
                "aws-iam-authenticator:{}:{}",
                caller.account, caller.user_id
            )),
            groups: vec![AUTHENTICATED_GROUP.to_string()],
            extra,
        }))
    }

    /// The secret and session token moto issued with `access_key_id` (`/moto-api/data.json`).
    async fn issued_secret(
        &self,
        access_key_id: &str,
    ) -> Result<(String, Option<String>), EksRejection> {
        let url = format!("{}/moto-api/data.json", self.sts_url);
        let sts_err = |e: &dyn std::fmt::Display| EksRejection::Sts(e.to_string());
        let body = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| sts_err(&e))?
            .bytes()
            .await
            .map_err(|e| sts_err(&e))?;
        let data: serde_json::Value = serde_json::from_slice(&body).map_err(|e| sts_err(&e))?;
        let roles = data["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let issued = roles
            .iter()
            .find(|r| r["access_key_id"].as_str() == Some(access_key_id))
            .ok_or(EksRejection::UnknownAccessKey)?;
        let secret = issued["secret_access_key"]
            .as_str()
            .ok_or(EksRejection::UnknownAccessKey)?
            .to_string();
        Ok((secret, issued["session_token"].as_str().map(str::to_owned)))
    }

    /// A normal header-signed `GetCallerIdentity` with the token's credentials.
    async fn get_caller_identity(
        &self,
        request: &PresignedRequest,
        secret: &str,
    ) -> Result<CallerIdentity, EksRejection> {
        let body = "Action=GetCallerIdentity&Version=2011-06-15";
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let scope = format!("{}/{}/sts/aws4_request", &amz_date[..8], request.region);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut headers: BTreeMap<&str, String> = BTreeMap::new();
        headers.insert("content-type", content_type.to_string());
        headers.insert("host", self.sts_host.clone());
        headers.insert("x-amz-date", amz_date.clone());
        if let Some(token) = &request.session_token {
            headers.insert("x-amz-security-token", token.clone());
        }
        let signed: Vec<&str> = headers.keys().copied().collect();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "POST\n/\n\n{canonical_headers}\n{}\n{}",
            signed.join(";"),
            hex(&Sha256::digest(body.as_bytes()))
        );
        let signature = sigv4_signature(secret, &amz_date, &scope, &canonical);
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
            request.access_key_id,
            signed.join(";")
        );
        let mut call = self
            .client
            .post(format!("{}/", self.sts_url))
            .header("authorization", authorization)
            .header("x-amz-date", &amz_date)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = &request.session_token {
            call = call.header("x-amz-security-token", token);
        }
        let sts_err = |e: &dyn std::fmt::Display| EksRejection::Sts(e.to_string());
        let answer = call.send().await.map_err(|e| sts_err(&e))?;
        let status = answer.status();
        let text = answer.text().await.map_err(|e| sts_err(&e))?;
        if !status.is_success() {
            return Err(EksRejection::Sts(format!(
                "GetCallerIdentity answered {status}"
            )));
        }
        let field = |tag| {
            xml_text(&text, tag)
                .ok_or_else(|| EksRejection::Sts(format!("no <{tag}> in GetCallerIdentity")))
        };
        Ok(CallerIdentity {
            arn: field("Arn")?,
            account: field("Account")?,
            user_id: field("UserId")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// The published SigV4 suite (github.com/awslabs/aws-c-auth tests/aws-signing-test-suite/v4,
    /// as vendored in the aws-sigv4 crate): canonical requests and signatures for
    /// `get-vanilla-query` and `get-vanilla-with-session-token` (query form) and `post-vanilla`
    /// (header form). AKIDEXAMPLE, us-east-1, service "service", 2015-08-30T12:36:00Z.
    #[test]
    fn sigv4_matches_the_published_test_suite() {
        let scope = "20150830/us-east-1/service/aws4_request";
        let cases = [
            (
                "get-vanilla-query (query)",
                "GET\n/\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\nhost:example.amazonaws.com\n\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d",
            ),
            (
                "get-vanilla-with-session-token (query)",
                "GET\n/\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-Security-Token=6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267&X-Amz-SignedHeaders=host\nhost:example.amazonaws.com\n\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c",
            ),
            (
                "post-vanilla (header)",
                "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ];
        for (name, canonical, expected) in cases {
            assert_eq!(
                sigv4_signature(SECRET, "20150830T123600Z", scope, canonical),
                expected,
                "{name}"
            );
        }
        // The canonical query builder sorts and encodes as the suite's get-vanilla-query-order-key-case.
        let params = vec![
            ("Param2".to_string(), "value2".to_string()),
            ("Param1".to_string(), "value1".to_string()),
            (
                "X-Amz-Credential".to_string(),
                "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request".to_string(),
            ),
        ];
        assert_eq!(
            canonical_query(&params),
            "Param1=value1&Param2=value2&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request"
        );
    }

    fn token_for(url: &str) -> String {
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
        )
    }

    const GOOD_URL: &str = "https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20150830%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Security-Token=tok&X-Amz-Signature=00";

    fn at(seconds_after_signing: i64) -> SystemTime {
        let signed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        if seconds_after_signing >= 0 {
            signed + Duration::from_secs(seconds_after_signing.unsigned_abs())
        } else {
            signed - Duration::from_secs(seconds_after_signing.unsigned_abs())
        }
    }

    #[test]
    fn token_shape_host_and_date_are_checked() {
        let host = "sts.us-east-1.amazonaws.com";
        let ok = parse_token(&token_for(GOOD_URL), host, at(60)).unwrap();
        assert_eq!(ok.access_key_id, "ASIAEXAMPLE");
        assert_eq!(ok.region, "us-east-1");
        assert_eq!(ok.signed_headers, ["host", "x-k8s-aws-id"]);
        assert_eq!(ok.session_token.as_deref(), Some("tok"));
        // X-Amz-Expires=60 is ignored: 14 minutes later the token is still in date.
        assert!(parse_token(&token_for(GOOD_URL), host, at(14 * 60)).is_ok());
        let cases = [
            (
                "k8s-aws-v2.abc".to_string(),
                at(0),
                EksRejection::NotEksToken,
            ),
            (format!("{TOKEN_PREFIX}!!!"), at(0), EksRejection::Malformed),
            (token_for(GOOD_URL), at(15 * 60 + 1), EksRejection::Expired),
            (
                token_for(GOOD_URL),
                at(-(15 * 60 + 1)),
                EksRejection::FromTheFuture,
            ),
            (
                token_for(&GOOD_URL.replace("sts.us-east-1.amazonaws.com", "sts.evil.example")),
                at(0),
                EksRejection::WrongHost("sts.evil.example".into()),
            ),
            (
                token_for(&GOOD_URL.replace("GetCallerIdentity", "AssumeRole")),
                at(0),
                EksRejection::WrongAction,
            ),
            (
                token_for(&GOOD_URL.replace("2011-06-15", "2012-01-01")),
                at(0),
                EksRejection::WrongAction,
            ),
            (
                token_for(&GOOD_URL.replace("host%3Bx-k8s-aws-id", "host")),
                at(0),
                EksRejection::ClusterNotSigned,
            ),
            (
                token_for(&GOOD_URL.replace("%2Fsts%2F", "%2Fs3%2F")),
                at(0),
                EksRejection::BadScope,
            ),
        ];
        for (token, now, expected) in cases {
            assert_eq!(parse_token(&token, host, now).unwrap_err(), expected);
        }
    }

    #[test]
    fn signature_binds_the_cluster_and_every_parameter() {
        let host = "sts.us-east-1.amazonaws.com";
        let unsigned = parse_token(&token_for(GOOD_URL), host, at(0)).unwrap();
        let signature = sigv4_signature(
            SECRET,
            &unsigned.amz_date,
            &unsigned.scope,
            &presigned_canonical_request(&unsigned, "test-cluster"),
        );
        let signed_url = GOOD_URL.replace(
            "X-Amz-Signature=00",
            &format!("X-Amz-Signature={signature}"),
        );
        let request = parse_token(&token_for(&signed_url), host, at(0)).unwrap();
        assert_eq!(check_signature(&request, "test-cluster", SECRET), Ok(()));
        assert_eq!(
            check_signature(&request, "other-cluster", SECRET),
            Err(EksRejection::SignatureMismatch)
        );
        assert_eq!(
            check_signature(&request, "test-cluster", "another-secret"),
            Err(EksRejection::SignatureMismatch)
        );
        let tampered = parse_token(
            &token_for(&signed_url.replace("X-Amz-Security-Token=tok", "X-Amz-Security-Token=toc")),
            host,
            at(0),
        )
        .unwrap();
        assert_eq!(
            check_signature(&tampered, "test-cluster", SECRET),
            Err(EksRejection::SignatureMismatch)
        );
    }

    #[test]
    fn assumed_role_arns_canonicalise_to_the_role() {
        assert_eq!(
            canonical_arn("arn:aws:sts::123456789012:assumed-role/portcullis/portcullis-alice"),
            "arn:aws:iam::123456789012:role/portcullis"
        );
        assert_eq!(
            canonical_arn("arn:aws:iam::123456789012:user/bob"),
            "arn:aws:iam::123456789012:user/bob"
        );
        assert_eq!(
            xml_text("<R><Arn> a </Arn><Account>1</Account></R>", "Arn").as_deref(),
            Some("a")
        );
    }
}
