//! What the audit chain stores: the entries callers append, the tombstones retention writes, and
//! the envelope that chains them.
//!
//! Owns: the record types, their binary encoding (postcard) and the chain hash. Must never: hold
//! a token or a secret value (bodies arrive already masked), or hash anything but the exact bytes
//! that are stored, so verification never depends on re-encoding being stable.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::classify::RequestInfo;
use crate::identity::Identity;

/// The schema of audit envelopes, checkpoints, sessions and frames written by this build. Stored
/// in every record so a later build can pick the decoder.
pub const SCHEMA_VERSION: u16 = 1;

/// SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the very first record of a chain.
pub const GENESIS_HASH: Hash = [0; 32];

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Who made a request, as verified (no token, no expiry: only what identifies the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditIdentity {
    pub user: String,
    pub groups: Vec<String>,
    pub issuer: String,
    pub extra: Vec<(String, Vec<String>)>,
}

impl From<&Identity> for AuditIdentity {
    fn from(identity: &Identity) -> Self {
        Self {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            issuer: identity.issuer.clone(),
            extra: identity.extra.clone(),
        }
    }
}

/// The identity the gateway impersonated upstream (`Impersonate-User/Group/Extra-*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpersonatedIdentity {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: Vec<(String, Vec<String>)>,
}

/// The classified request ([`RequestInfo`]), verb as the API server spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    pub is_resource_request: bool,
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

impl From<&RequestInfo> for AuditRequest {
    fn from(info: &RequestInfo) -> Self {
        Self {
            is_resource_request: info.is_resource_request,
            verb: info.verb.as_str().to_owned(),
            api_group: info.api_group.clone(),
            api_version: info.api_version.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            path: info.path.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Written when the gateway has decided. For an allowed request it precedes forwarding (durable
/// first when the request mutates); a denied request gets this entry only, with `status` set to
/// what the gateway answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// The request/session id (the one impersonated as `portcullis.dev/session`).
    pub id: String,
    /// Nanoseconds since the epoch.
    pub time_ns: u64,
    /// Filled in by the recorder from `record.node_name` when left empty.
    pub node: String,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// `None` when the caller could not be authenticated.
    pub identity: Option<AuditIdentity>,
    pub request: AuditRequest,
    pub decision: Decision,
    /// Why (for a deny: the message the client got).
    pub reason: Option<String>,
    /// The policy rule that decided.
    pub rule: Option<String>,
    pub approval_id: Option<String>,
    pub impersonated: Option<ImpersonatedIdentity>,
    /// The status the gateway answered itself (denied requests); `None` when forwarded.
    pub status: Option<u16>,
    /// The request body of a mutating verb, already masked by the caller. Cut to
    /// `record.max_body_bytes`, `body_truncated` then set.
    pub body: Option<Vec<u8>>,
    pub body_truncated: bool,
    /// The `ip:port` the client dialled when the node agent redirected its connection to the
    /// gateway (the protected API endpoint); `None` when it dialled the gateway itself.
    pub original_destination: Option<String>,
    /// The cgroup v2 id of the redirected client's socket (a container cgroup of the pod),
    /// as the node agent recorded it; `None` when not redirected.
    pub client_cgroup_id: Option<u64>,
}

/// Written when a forwarded request finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionEntry {
    pub id: String,
    pub time_ns: u64,
    pub node: String,
    /// The sequence number of the [`RequestEntry`] this completes.
    pub request_seq: u64,
    /// Upstream status; `None` when the upstream never answered.
    pub status: Option<u16>,
    pub latency_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub error: Option<String>,
}

/// What callers append.
// Built once per request and moved straight into the recorder: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEntry {
    Request(RequestEntry),
    Completion(CompletionEntry),
}

impl AuditEntry {
    pub fn time_ns(&self) -> u64 {
        match self {
            AuditEntry::Request(r) => r.time_ns,
            AuditEntry::Completion(c) => c.time_ns,
        }
    }
}

/// Retention deleted every record before `first_kept_seq`; the last deleted one hashed to
/// `last_deleted_hash`, which is the `prev_hash` of record `first_kept_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub time_ns: u64,
    pub node: String,
    pub first_kept_seq: u64,
    pub last_deleted_hash: Hash,
    pub deleted_records: u64,
    pub reason: String,
}

/// Everything that can sit in the chain.
// Built once per request and moved straight into the recorder: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainEntry {
    Audit(AuditEntry),
    Tombstone(Tombstone),
}

impl ChainEntry {
    pub fn time_ns(&self) -> u64 {
        match self {
            ChainEntry::Audit(a) => a.time_ns(),
            ChainEntry::Tombstone(t) => t.time_ns,
        }
    }
}

/// One stored audit record. `entry` is the postcard encoding of a [`ChainEntry`], kept as bytes
/// so the hash covers exactly what is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u16,
    pub seq: u64,
    pub prev_hash: Hash,
    pub entry: Vec<u8>,
    pub hash: Hash,
}

/// SHA-256 over the record's canonical content: domain tag, schema, seq, previous hash, entry.
pub fn chain_hash(schema: u16, seq: u64, prev_hash: &Hash, entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"portcullis-audit-record\0");
    h.update(schema.to_be_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev_hash);
    h.update((entry.len() as u64).to_be_bytes());
    h.update(entry);
    h.finalize().into()
}

impl Envelope {
    /// Seals an entry at `seq` after `prev_hash`.
    pub fn seal(seq: u64, prev_hash: Hash, entry: Vec<u8>) -> Self {
        let hash = chain_hash(SCHEMA_VERSION, seq, &prev_hash, &entry);
        Self {
            schema: SCHEMA_VERSION,
            seq,
            prev_hash,
            entry,
            hash,
        }
    }

    /// Whether the stored hash matches the content.
    pub fn hash_matches(&self) -> bool {
        chain_hash(self.schema, self.seq, &self.prev_hash, &self.entry) == self.hash
    }

    pub fn decode_entry(&self) -> Result<ChainEntry, postcard::Error> {
        postcard::from_bytes(&self.entry)
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_request(user: &str, verb: &str, namespace: &str) -> RequestEntry {
        RequestEntry {
            id: format!("req-{user}-{verb}"),
            time_ns: 1_700_000_000_000_000_000,
            node: String::new(),
            client_addr: Some("127.0.0.1:5555".into()),
            user_agent: Some("kubectl/v1.35.0".into()),
            identity: Some(AuditIdentity {
                user: user.into(),
                groups: vec!["dev".into()],
                issuer: "https://issuer.example".into(),
                extra: vec![],
            }),
            request: AuditRequest {
                is_resource_request: true,
                verb: verb.into(),
                api_group: String::new(),
                api_version: "v1".into(),
                resource: "pods".into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: "web-0".into(),
                path: format!("/api/v1/namespaces/{namespace}/pods/web-0"),
            },
            decision: Decision::Allow,
            reason: None,
            rule: Some("devs-read".into()),
            approval_id: None,
            impersonated: Some(ImpersonatedIdentity {
                user: user.into(),
                groups: vec!["dev".into()],
                extra: vec![],
            }),
            status: None,
            body: None,
            body_truncated: false,
            original_destination: None,
            client_cgroup_id: None,
        }
    }

    #[test]
    fn envelope_round_trips_and_detects_a_changed_byte() {
        let entry = encode(&ChainEntry::Audit(AuditEntry::Request(sample_request(
            "alice", "delete", "prod",
        ))))
        .unwrap();
        let env = Envelope::seal(7, [9; 32], entry);
        assert!(env.hash_matches());
        let bytes = encode(&env).unwrap();
        let back: Envelope = decode(&bytes).unwrap();
        assert_eq!(back, env);
        match back.decode_entry().unwrap() {
            ChainEntry::Audit(AuditEntry::Request(r)) => assert_eq!(r.request.verb, "delete"),
            other => panic!("unexpected {other:?}"),
        }
        let mut edited = back.clone();
        let last = edited.entry.len() - 1;
        edited.entry[last] ^= 1;
        assert!(!edited.hash_matches());
        let mut moved = back;
        moved.seq = 8;
        assert!(!moved.hash_matches(), "the seq is covered by the hash");
    }

    #[test]
    fn request_info_and_identity_convert() {
        let info = crate::classify::classify(
            &http::Method::DELETE,
            "/apis/apps/v1/namespaces/prod/deployments/web",
            None,
        )
        .unwrap();
        let req = AuditRequest::from(&info);
        assert_eq!(req.verb, "delete");
        assert_eq!(req.api_group, "apps");
        assert_eq!(req.resource, "deployments");
        assert_eq!(req.namespace, "prod");
        assert_eq!(req.name, "web");
        let id = Identity {
            user: "alice".into(),
            groups: vec!["g".into()],
            extra: vec![],
            issuer: "https://i".into(),
            expires: 99,
        };
        let a = AuditIdentity::from(&id);
        assert_eq!(a.user, "alice");
        assert_eq!(a.issuer, "https://i");
    }
}
