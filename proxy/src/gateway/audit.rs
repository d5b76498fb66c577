//! The audit entries of one request, built from what the data path knows at each phase.
//!
//! Owns: which request counts as mutating for the durability rule, and the mapping from the
//! request's state to [`RequestEntry`] / [`CompletionEntry`]. Must never: put a token or a
//! credential into an entry (identities carry names and groups only).

use serde_json::{Map, Value};

use crate::classify::{RequestInfo, Verb};
use crate::gateway::headers::{EXTRA_CLIENT_IP, EXTRA_SESSION};
use crate::identity::Identity;
use crate::mask::MaskProfile;
use crate::record::{
    now_unix_nanos, AuditEntry, AuditIdentity, AuditRequest, CompletionEntry, Decision,
    ImpersonatedIdentity, RequestEntry,
};
use crate::redirect::OriginalDestination;

/// Requests whose audit record must be on disk before the upstream sees them: every verb that
/// can change state, and the start of every exec/attach/port-forward session (which can,
/// whatever its HTTP method).
pub fn needs_durable_record(info: &RequestInfo) -> bool {
    info.is_mutating() || info.is_streaming_upgrade()
}

/// What the gateway knows about a request when it decides.
pub struct Decided<'a> {
    pub id: &'a str,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub identity: Option<&'a Identity>,
    pub info: &'a RequestInfo,
    pub allowed: bool,
    pub reason: Option<String>,
    pub rule: Option<String>,
    /// The status the gateway answered itself; `None` when it forwards.
    pub status: Option<u16>,
    /// Where the node agent redirected the connection from; `None` when it did not.
    pub original: Option<OriginalDestination>,
}

pub fn request_entry(d: Decided<'_>) -> AuditEntry {
    let impersonated = if d.allowed {
        d.identity
            .map(|i| impersonated(i, d.id, d.client_addr.as_deref()))
    } else {
        None
    };
    AuditEntry::Request(RequestEntry {
        id: d.id.to_owned(),
        time_ns: now_unix_nanos(),
        node: String::new(),
        client_addr: d.client_addr,
        user_agent: d.user_agent,
        identity: d.identity.map(AuditIdentity::from),
        request: AuditRequest::from(d.info),
        decision: if d.allowed {
            Decision::Allow
        } else {
            Decision::Deny
        },
        reason: d.reason,
        rule: d.rule,
        approval_id: None,
        impersonated,
        status: d.status,
        original_destination: d.original.map(|o| o.destination.to_string()),
        client_cgroup_id: d.original.map(|o| o.cgroup_id),
    })
}

/// The identity `gateway::headers` impersonates upstream, extras included.
fn impersonated(identity: &Identity, id: &str, client_ip: Option<&str>) -> ImpersonatedIdentity {
    let mut extra = identity.extra.clone();
    extra.push((EXTRA_SESSION.to_owned(), vec![id.to_owned()]));
    if let Some(ip) = client_ip {
        extra.push((EXTRA_CLIENT_IP.to_owned(), vec![ip.to_owned()]));
    }
    ImpersonatedIdentity {
        user: identity.user.clone(),
        groups: identity.groups.clone(),
        extra,
    }
}

/// What the gateway knows when a forwarded request ends.
pub struct Finished<'a> {
    pub id: &'a str,
    pub request_seq: u64,
    pub status: Option<u16>,
    pub latency_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub error: Option<String>,
    /// What [`recorded_body`] decided about the request body.
    pub body: RecordedBody,
}

pub fn completion_entry(f: Finished<'_>) -> AuditEntry {
    AuditEntry::Completion(CompletionEntry {
        id: f.id.to_owned(),
        time_ns: now_unix_nanos(),
        node: String::new(),
        request_seq: f.request_seq,
        status: f.status,
        latency_us: f.latency_us,
        request_bytes: f.request_bytes,
        response_bytes: f.response_bytes,
        error: f.error,
        body: f.body.body,
        body_truncated: f.body.truncated,
        body_omitted: f.body.omitted,
    })
}

// --- Request bodies (issue #5) -----------------------------------------------------------------

/// Why a body collected past `record.max_body_bytes` is not kept: only a whole body can be
/// parsed, and only a parsed body can be masked.
pub const OMITTED_TOO_LARGE: &str = "larger than record.max_body_bytes";

/// Subresources whose bodies are streams or another server's protocol, never API objects.
const OPAQUE_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Whether the gateway collects this request's body for its completion entry: create, update
/// and patch of a resource (their subresources included), never an upgraded or relayed stream.
pub fn wants_request_body(info: &RequestInfo) -> bool {
    info.is_resource_request
        && matches!(info.verb, Verb::Create | Verb::Update | Verb::Patch)
        && !OPAQUE_SUBRESOURCES.contains(&info.subresource.as_str())
        && !info.is_streaming_upgrade()
        && !info.is_proxy()
}

/// A request body collected as it passes to the upstream (never delayed or altered), bounded
/// by `record.max_body_bytes`: past the bound it stops collecting and drops what it had.
#[derive(Default)]
pub struct BodyCapture {
    limit: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

impl std::fmt::Debug for BodyCapture {
    // Deliberately without the bytes: they are not masked yet.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCapture")
            .field("limit", &self.limit)
            .field("len", &self.bytes.len())
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl BodyCapture {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            bytes: Vec::new(),
            truncated: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.truncated {
            return;
        }
        if self.bytes.len().saturating_add(chunk.len()) > self.limit {
            self.truncated = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// What the completion entry keeps of a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedBody {
    /// Masked (or, where the profile masks nothing for the resource, as sent).
    pub body: Option<Vec<u8>>,
    pub truncated: bool,
    pub omitted: Option<String>,
}

impl RecordedBody {
    fn omitted(why: impl Into<String>) -> Self {
        Self {
            omitted: Some(why.into()),
            ..Self::default()
        }
    }

    fn kept(body: Vec<u8>) -> Self {
        Self {
            body: Some(body),
            ..Self::default()
        }
    }
}

/// Whether `profile` masks anything in objects of the request's resource (every profile masks
/// Secrets). Rules are keyed by group and resource, so this holds for every kind the profile
/// knows, custom resources included.
pub fn profile_masks_resource(profile: &MaskProfile, info: &RequestInfo) -> bool {
    profile
        .rules_for_resource(&info.api_group, &info.resource)
        .is_some()
}

/// The media type without parameters, lowercase.
fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

/// Decides what the audit record keeps of a collected request body; pure. JSON objects of
/// create/update and JSON merge / strategic-merge patches (the object's shape, usually without
/// `kind`) are masked like a response object of the request's resource and kept; any other body
/// (JSON patch, apply YAML, protobuf, binary) is kept as sent only when `profile` masks nothing
/// for the resource, and omitted otherwise; compressed bodies and bodies past
/// `record.max_body_bytes` are omitted. An omitted body has the reason. Never keeps a value the
/// profile masks.
pub fn recorded_body(
    info: &RequestInfo,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    capture: &BodyCapture,
    profile: &MaskProfile,
) -> RecordedBody {
    if capture.truncated() {
        return RecordedBody {
            truncated: true,
            ..RecordedBody::omitted(OMITTED_TOO_LARGE)
        };
    }
    let bytes = capture.bytes();
    if bytes.is_empty() {
        return RecordedBody::default();
    }
    if content_encoding.is_some_and(|e| {
        let e = e.trim();
        !e.is_empty() && !e.eq_ignore_ascii_case("identity")
    }) {
        return RecordedBody::omitted("compressed (Content-Encoding)");
    }
    let media = media_type(content_type);
    let media = media.as_deref();
    let binary = media.is_some_and(|m| m.contains("protobuf") || m.contains("cbor"))
        || std::str::from_utf8(bytes).is_err();
    let object_shaped = !binary
        && match info.verb {
            // Without a content type the API server reads JSON.
            Verb::Create | Verb::Update => media.is_none_or(|m| m == "application/json"),
            Verb::Patch => matches!(
                media,
                Some("application/merge-patch+json" | "application/strategic-merge-patch+json")
            ),
            _ => false,
        };
    if object_shaped {
        if let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(bytes) {
            mask_request_object(profile, info, &mut object);
            // Always re-serialized: what is stored is exactly what was inspected.
            return match serde_json::to_vec(&Value::Object(object)) {
                Ok(masked) => RecordedBody::kept(masked),
                Err(_) => RecordedBody::omitted("the masked body could not be serialized"),
            };
        }
    }
    if profile_masks_resource(profile, info) {
        RecordedBody::omitted(format!(
            "{} the mask profile {:?} masks {}",
            if binary {
                "not JSON (protobuf or binary), and".to_owned()
            } else {
                format!(
                    "a {} body, which cannot be masked, and",
                    media.unwrap_or("untyped")
                )
            },
            profile.name(),
            if info.api_group.is_empty() {
                info.resource.clone()
            } else {
                format!("{}.{}", info.resource, info.api_group)
            }
        ))
    } else {
        RecordedBody::kept(bytes.to_vec())
    }
}

/// Masks a request object with the rules of the request's resource (a patch usually names no
/// `kind`), and with those of the kind it names when that is another one: a body that claims
/// another kind is masked as both.
fn mask_request_object(profile: &MaskProfile, info: &RequestInfo, object: &mut Map<String, Value>) {
    let by_resource = profile.rules_for_resource(&info.api_group, &info.resource);
    let by_kind = object
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .and_then(|kind| {
            let api_version = object.get("apiVersion").and_then(Value::as_str);
            profile.rules_for_kind(api_version, kind)
        });
    if let Some(rules) = by_resource.and_then(|at| profile.kind(at)) {
        rules.mask_object(object);
    }
    if by_kind != by_resource {
        if let Some(rules) = by_kind.and_then(|at| profile.kind(at)) {
            rules.mask_object(object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn info(method: &str, path: &str) -> RequestInfo {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        classify(&method, path, query).unwrap()
    }

    #[test]
    fn mutations_and_session_starts_are_durable_reads_are_not() {
        for (method, path, durable) in [
            ("GET", "/api/v1/namespaces/dev/pods", false),
            ("GET", "/api/v1/namespaces/dev/pods?watch=true", false),
            ("POST", "/api/v1/namespaces/dev/configmaps", true),
            ("DELETE", "/api/v1/namespaces/prod", true),
            ("PATCH", "/api/v1/namespaces/dev/pods/a", true),
            // kubectl's WebSocket exec is a GET; it still starts a session.
            ("GET", "/api/v1/namespaces/dev/pods/a/exec?command=sh", true),
            ("POST", "/api/v1/namespaces/dev/pods/a/portforward", true),
        ] {
            assert_eq!(
                needs_durable_record(&info(method, path)),
                durable,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn entries_carry_identity_and_impersonation_but_no_credential() {
        let identity = Identity {
            user: "oidc:alice".into(),
            groups: vec!["oidc:devs".into()],
            extra: vec![],
            issuer: "https://issuer.test".into(),
            expires: 1,
        };
        let i = info("DELETE", "/api/v1/namespaces/dev/pods/a");
        let AuditEntry::Request(allowed) = request_entry(Decided {
            id: "s-1",
            client_addr: Some("127.0.0.1".into()),
            user_agent: None,
            identity: Some(&identity),
            info: &i,
            allowed: true,
            reason: None,
            rule: Some("r".into()),
            status: None,
            original: None,
        }) else {
            panic!("not a request entry")
        };
        assert_eq!(allowed.decision, Decision::Allow);
        assert_eq!(allowed.request.verb, "delete");
        let imp = allowed.impersonated.expect("impersonated");
        assert_eq!(imp.user, "oidc:alice");
        assert!(imp
            .extra
            .iter()
            .any(|(k, v)| k == EXTRA_SESSION && v == &["s-1".to_string()]));

        let AuditEntry::Request(denied) = request_entry(Decided {
            id: "s-2",
            client_addr: None,
            user_agent: None,
            identity: Some(&identity),
            info: &i,
            allowed: false,
            reason: Some("no".into()),
            rule: None,
            status: Some(403),
            original: None,
        }) else {
            panic!("not a request entry")
        };
        assert_eq!(denied.decision, Decision::Deny);
        assert_eq!(denied.impersonated, None, "nothing was sent upstream");
        assert_eq!(denied.status, Some(403));
        assert_eq!(denied.original_destination, None, "not redirected");
    }

    #[test]
    fn a_redirected_request_records_its_original_destination_and_cgroup() {
        let i = info("GET", "/api/v1/namespaces/default/pods");
        let original = OriginalDestination {
            destination: "203.0.113.10:443".parse().unwrap(),
            cgroup_id: 4242,
            netns_cookie: 0,
            matched_by: crate::redirect::MatchedBy::Addresses,
        };
        let AuditEntry::Request(entry) = request_entry(Decided {
            id: "s-3",
            client_addr: Some("198.51.100.2".into()),
            user_agent: None,
            identity: None,
            info: &i,
            allowed: false,
            reason: Some("no".into()),
            rule: None,
            status: Some(403),
            original: Some(original),
        }) else {
            panic!("not a request entry")
        };
        assert_eq!(
            entry.original_destination.as_deref(),
            Some("203.0.113.10:443")
        );
        assert_eq!(entry.client_cgroup_id, Some(4242));
    }

    // --- request bodies -----------------------------------------------------------------------

    use crate::mask::{
        ConfigMapKeysConfig, MaskConfig, Masker, ProfileConfig, MARKER, MARKER_BASE64,
    };
    use std::sync::Arc;

    fn profiles() -> (Arc<MaskProfile>, Arc<MaskProfile>) {
        let mut config = MaskConfig::default();
        config.profiles.insert(
            "envs".into(),
            ProfileConfig {
                configmaps: Some(ConfigMapKeysConfig {
                    keys: vec!["*password*".into()],
                    key_regexes: Vec::new(),
                }),
                ..ProfileConfig::default()
            },
        );
        let masker = Masker::from_config(&config).unwrap();
        (masker.default_profile(), masker.profile("envs").unwrap())
    }

    fn capture(body: &[u8]) -> BodyCapture {
        let mut c = BodyCapture::new(64 * 1024);
        // In two chunks, as a body arrives.
        let (a, b) = body.split_at(body.len() / 2);
        c.push(a);
        c.push(b);
        c
    }

    fn kept_json(r: &RecordedBody) -> Value {
        assert_eq!(r.omitted, None);
        assert!(!r.truncated);
        serde_json::from_slice(r.body.as_deref().expect("kept")).unwrap()
    }

    fn assert_no_secret(r: &RecordedBody, secrets: &[&str]) {
        let body = r.body.as_deref().unwrap_or_default();
        let text = String::from_utf8_lossy(body);
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} kept in {text}");
        }
    }

    #[test]
    fn only_create_update_and_patch_bodies_are_collected() {
        for (method, path, wanted) in [
            ("POST", "/api/v1/namespaces/dev/secrets", true),
            ("PUT", "/api/v1/namespaces/dev/secrets/s", true),
            ("PATCH", "/api/v1/namespaces/dev/secrets/s", true),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/dev/deployments/d/scale",
                true,
            ),
            ("DELETE", "/api/v1/namespaces/dev/secrets/s", false),
            ("DELETE", "/api/v1/namespaces/dev/secrets", false),
            ("GET", "/api/v1/namespaces/dev/secrets", false),
            (
                "POST",
                "/api/v1/namespaces/dev/pods/a/exec?command=sh",
                false,
            ),
            ("POST", "/api/v1/namespaces/dev/pods/a/attach", false),
            ("POST", "/api/v1/namespaces/dev/pods/a/portforward", false),
            ("POST", "/api/v1/namespaces/dev/pods/a/proxy/x", false),
            ("POST", "/api/v1/namespaces/dev/services/a/proxy/x", false),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                true,
            ),
        ] {
            assert_eq!(
                wants_request_body(&info(method, path)),
                wanted,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn a_secret_create_keeps_its_keys_and_never_its_values() {
        let (default, _) = profiles();
        // "hunter2" and "stringval", the first base64-encoded as Secret data is.
        let body = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s1","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"stringData\":{\"password\":\"stringval\"}}"}},"data":{"password":"aHVudGVyMg=="},"stringData":{"token":"stringval"}}"#;
        let r = recorded_body(
            &info("POST", "/api/v1/namespaces/dev/secrets"),
            Some("application/json"),
            None,
            &capture(body),
            &default,
        );
        let v = kept_json(&r);
        assert_eq!(v["data"]["password"], MARKER_BASE64);
        assert_eq!(v["stringData"]["token"], MARKER);
        assert_eq!(v["metadata"]["name"], "s1");
        assert_no_secret(&r, &["aHVudGVyMg==", "hunter2", "stringval"]);
    }

    #[test]
    fn merge_and_strategic_patches_are_masked_as_the_resource_kind() {
        let (default, envs) = profiles();
        for media in [
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ] {
            let r = recorded_body(
                &info("PATCH", "/api/v1/namespaces/dev/secrets/s1"),
                Some(media),
                None,
                &capture(br#"{"stringData":{"password":"patched"},"data":{"k":"cGF0Y2hlZA=="}}"#),
                &default,
            );
            let v = kept_json(&r);
            assert_eq!(v["stringData"]["password"], MARKER, "{media}");
            assert_eq!(v["data"]["k"], MARKER_BASE64, "{media}");
            assert_no_secret(&r, &["patched", "cGF0Y2hlZA=="]);
        }
        // A ConfigMap key under a profile that masks it; other keys are kept.
        let r = recorded_body(
            &info("PATCH", "/api/v1/namespaces/dev/configmaps/c1"),
            Some("application/strategic-merge-patch+json"),
            None,
            &capture(br#"{"data":{"db_password":"cm-secret","mode":"fast"}}"#),
            &envs,
        );
        let v = kept_json(&r);
        assert_eq!(v["data"]["db_password"], MARKER);
        assert_eq!(v["data"]["mode"], "fast");
        assert_no_secret(&r, &["cm-secret"]);
        // The same patch under the default profile masks nothing: kept as it is.
        let r = recorded_body(
            &info("PATCH", "/api/v1/namespaces/dev/configmaps/c1"),
            Some("application/merge-patch+json"),
            None,
            &capture(br#"{"data":{"db_password":"plain"}}"#),
            &default,
        );
        assert_eq!(kept_json(&r)["data"]["db_password"], "plain");
    }

    #[test]
    fn a_body_that_claims_another_kind_is_masked_as_that_kind_too() {
        let (default, envs) = profiles();
        let r = recorded_body(
            &info("POST", "/api/v1/namespaces/dev/configmaps"),
            Some("application/json"),
            None,
            &capture(br#"{"kind":"Secret","apiVersion":"v1","stringData":{"a":"sneaky"}}"#),
            &default,
        );
        assert_eq!(kept_json(&r)["stringData"]["a"], MARKER);
        let r = recorded_body(
            &info("PUT", "/api/v1/namespaces/dev/configmaps/c1"),
            None,
            None,
            &capture(br#"{"kind":"ConfigMap","data":{"password":"cm-value"}}"#),
            &envs,
        );
        assert_eq!(kept_json(&r)["data"]["password"], MARKER);
    }

    #[test]
    fn bodies_the_profile_cannot_mask_are_omitted_unless_it_masks_nothing_there() {
        let (default, envs) = profiles();
        let json_patch = br#"[{"op":"replace","path":"/data/password","value":"jp-secret"}]"#;
        let apply = b"apiVersion: v1\nkind: Secret\nstringData:\n  password: yaml-secret\n";
        for (path, media, body, profile, kept) in [
            (
                "/api/v1/namespaces/dev/secrets/s",
                "application/json-patch+json",
                &json_patch[..],
                &default,
                false,
            ),
            (
                "/api/v1/namespaces/dev/secrets/s",
                "application/apply-patch+yaml",
                &apply[..],
                &default,
                false,
            ),
            (
                "/api/v1/namespaces/dev/configmaps/c",
                "application/json-patch+json",
                &json_patch[..],
                &envs,
                false,
            ),
            (
                "/api/v1/namespaces/dev/configmaps/c",
                "application/json-patch+json",
                &json_patch[..],
                &default,
                true,
            ),
            (
                "/apis/apps/v1/namespaces/dev/deployments/d",
                "application/apply-patch+yaml",
                &b"kind: Deployment\n"[..],
                &envs,
                true,
            ),
        ] {
            let r = recorded_body(
                &info("PATCH", path),
                Some(media),
                None,
                &capture(body),
                profile,
            );
            assert!(!r.truncated);
            if kept {
                assert_eq!(r.body.as_deref(), Some(body), "{path} {media}");
                assert_eq!(r.omitted, None);
            } else {
                assert_eq!(r.body, None, "{path} {media}");
                let why = r.omitted.expect("a reason");
                assert!(why.contains(media) && why.contains(profile.name()), "{why}");
            }
        }
        // An update whose JSON is not an object follows the same rule.
        let r = recorded_body(
            &info("PUT", "/api/v1/namespaces/dev/secrets/s"),
            Some("application/json"),
            None,
            &capture(br#"["hunter2"]"#),
            &default,
        );
        assert_eq!(r.body, None);
        assert!(r.omitted.is_some());
        // Invalid JSON for a resource nothing masks is kept as sent.
        let r = recorded_body(
            &info("POST", "/api/v1/namespaces/dev/configmaps"),
            Some("application/json"),
            None,
            &capture(b"{not json"),
            &default,
        );
        assert_eq!(r.body.as_deref(), Some(&b"{not json"[..]));
    }

    #[test]
    fn binary_bodies_are_kept_only_where_nothing_is_masked() {
        let (default, envs) = profiles();
        let proto = b"k8s\x00\x0a\x02v1\x12\x06Secret";
        let secrets = info("POST", "/api/v1/namespaces/dev/secrets");
        let configmaps = info("POST", "/api/v1/namespaces/dev/configmaps");
        let protobuf = Some("application/vnd.kubernetes.protobuf");
        let r = recorded_body(&secrets, protobuf, None, &capture(proto), &default);
        assert_eq!(r.body, None);
        assert!(r.omitted.as_deref().unwrap().contains("not JSON"));
        let r = recorded_body(&configmaps, protobuf, None, &capture(proto), &envs);
        assert_eq!(r.body, None);
        // Not UTF-8, whatever the content type says.
        let r = recorded_body(&secrets, None, None, &capture(b"\xff\xfe{}"), &default);
        assert!(r.omitted.as_deref().unwrap().contains("not JSON"));
        // Nothing in ConfigMaps is masked by the default profile: kept as sent.
        let r = recorded_body(&configmaps, protobuf, None, &capture(proto), &default);
        assert_eq!(r.body.as_deref(), Some(&proto[..]));
        assert_eq!(r.omitted, None);
    }

    #[test]
    fn compressed_and_oversized_bodies_are_omitted() {
        let (default, _) = profiles();
        let create = info("POST", "/api/v1/namespaces/dev/configmaps");
        let r = recorded_body(
            &create,
            Some("application/json"),
            Some("gzip"),
            &capture(b"{}"),
            &default,
        );
        assert!(r.omitted.as_deref().unwrap().contains("compressed"));

        // Past the bound nothing is kept, not even the part that fitted.
        let mut big = BodyCapture::new(16);
        big.push(br#"{"data":{"#);
        big.push(br#""a":"b"}}"#);
        assert!(big.truncated());
        assert!(big.bytes().is_empty());
        big.push(b"}");
        let r = recorded_body(&create, Some("application/json"), None, &big, &default);
        assert_eq!(
            r,
            RecordedBody {
                body: None,
                truncated: true,
                omitted: Some(OMITTED_TOO_LARGE.into()),
            }
        );
        let mut exact = BodyCapture::new(2);
        exact.push(b"{}");
        assert!(!exact.truncated());
        // No body at all: nothing to say.
        let r = recorded_body(&create, None, None, &BodyCapture::new(8), &default);
        assert_eq!(r, RecordedBody::default());
    }

    #[test]
    fn the_completion_entry_carries_the_decision() {
        let AuditEntry::Completion(c) = completion_entry(Finished {
            id: "s-9",
            request_seq: 4,
            status: Some(201),
            latency_us: 1,
            request_bytes: 2,
            response_bytes: 3,
            error: None,
            body: RecordedBody::omitted(OMITTED_TOO_LARGE),
        }) else {
            panic!("not a completion entry")
        };
        assert_eq!(c.body, None);
        assert_eq!(c.body_omitted.as_deref(), Some(OMITTED_TOO_LARGE));
    }
}
