//! The audit entries of one request, built from what the data path knows at each phase.
//!
//! Owns: which request counts as mutating for the durability rule, and the mapping from the
//! request's state to [`RequestEntry`] / [`CompletionEntry`]. Must never: put a token or a
//! credential into an entry (identities carry names and groups only).

use crate::classify::RequestInfo;
use crate::gateway::headers::{EXTRA_CLIENT_IP, EXTRA_SESSION};
use crate::identity::Identity;
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
        body: None,
        body_truncated: false,
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
    })
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
}
