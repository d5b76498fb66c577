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
///
/// 2: request entries carry the node agent's original destination and client cgroup; node
/// events; session frames moved from a sled tree to per-session files (`frame_files`); the
/// masked request body moved from request to completion entries.
pub const SCHEMA_VERSION: u16 = 2;

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
    /// The request body of a create/update/patch, masked like a response object by the
    /// gateway before it gets here (never a secret value); `None` when there was none or it was
    /// not kept (`body_omitted` says why). The recorder cuts it to `record.max_body_bytes`.
    #[serde(with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
    /// The body was longer than `record.max_body_bytes`.
    pub body_truncated: bool,
    /// Why a request body was not kept (too large, not JSON, a patch the mask profile cannot
    /// mask, ...).
    pub body_omitted: Option<String>,
}

/// What the node agent's eBPF programs did to a selected pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeEventKind {
    /// connect() to a protected `ip:port` was sent to the gateway.
    Redirect,
    /// connect() to a protected IP was refused (another port, UDP, or no gateway).
    Reject,
    /// A packet to a protected IP that did not go through connect() was dropped.
    Drop,
}

impl NodeEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEventKind::Redirect => "redirect",
            NodeEventKind::Reject => "reject",
            NodeEventKind::Drop => "drop",
        }
    }
}

/// The IP protocol of the socket or packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeProtocol {
    Tcp,
    Udp,
    /// Any other IPPROTO_* number (0: unknown).
    Other(u32),
}

impl NodeProtocol {
    /// From the kernel's IPPROTO_* number.
    pub fn from_ipproto(number: u32) -> Self {
        match number {
            6 => NodeProtocol::Tcp,
            17 => NodeProtocol::Udp,
            other => NodeProtocol::Other(other),
        }
    }

    /// `tcp`, `udp`, or `ipproto-<n>`.
    pub fn name(self) -> String {
        match self {
            NodeProtocol::Tcp => "tcp".into(),
            NodeProtocol::Udp => "udp".into(),
            NodeProtocol::Other(n) => format!("ipproto-{n}"),
        }
    }
}

/// The selected pod an event came from, as the node agent knows it (pods file or pod watch).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    /// Known when the pod was selected by UID (the pod watch, or a `uid:` pods-file entry).
    pub uid: Option<String>,
}

/// Written by the node agent (`portcullis node run`) into its own audit log: one or more
/// identical eBPF events (same kind, cgroup, destination and protocol) coalesced over a short
/// window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEventEntry {
    /// When the record was made (nanoseconds since the epoch).
    pub time_ns: u64,
    /// Filled in by the recorder from `record.node_name` when left empty.
    pub node: String,
    pub kind: NodeEventKind,
    /// `None` when the cgroup belongs to no selected pod the agent knows (any more).
    pub pod: Option<NodePod>,
    /// The cgroup v2 id of the socket or packet (often a container cgroup inside the pod's).
    pub cgroup_id: u64,
    /// The protected `ip:port` that was dialled; port 0 for a dropped packet (the packet
    /// filter matches the IP only).
    pub destination: String,
    pub protocol: NodeProtocol,
    /// How many events this record stands for (at least 1).
    pub count: u64,
    /// When the agent read the first and the last of them.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// What callers append.
// Built once per request and moved straight into the recorder: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEntry {
    Request(RequestEntry),
    Completion(CompletionEntry),
    // postcard encodes the variant's index: new variants go at the end.
    Node(NodeEventEntry),
}

impl AuditEntry {
    pub fn time_ns(&self) -> u64 {
        match self {
            AuditEntry::Request(r) => r.time_ns,
            AuditEntry::Completion(c) => c.time_ns,
            AuditEntry::Node(n) => n.time_ns,
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
    /// Encoded as bytes (postcard writes the same as for a sequence of u8, only faster).
    #[serde(with = "serde_bytes")]
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

    pub fn sample_node_event(kind: NodeEventKind, namespace: &str) -> NodeEventEntry {
        NodeEventEntry {
            time_ns: 1_700_000_001_000_000_000,
            node: String::new(),
            kind,
            pod: Some(NodePod {
                namespace: namespace.into(),
                name: "mcp-0".into(),
                uid: Some("8f0e3c1a-5b2d-4c6e-9a7f-0123456789ab".into()),
            }),
            cgroup_id: 4242,
            destination: "203.0.113.10:443".into(),
            protocol: NodeProtocol::Tcp,
            count: 3,
            first_ns: 1_700_000_000_000_000_000,
            last_ns: 1_700_000_000_900_000_000,
        }
    }

    #[test]
    fn node_events_are_a_new_variant_after_the_existing_ones() {
        // postcard writes the variant index first: records written before node events
        // existed must keep decoding, so Request stays 0, Completion 1, and Node is 2.
        let node = sample_node_event(NodeEventKind::Drop, "agents");
        let bytes = encode(&ChainEntry::Audit(AuditEntry::Node(node.clone()))).unwrap();
        assert_eq!(
            &bytes[..2],
            &[0, 2],
            "ChainEntry::Audit, then AuditEntry::Node"
        );
        let request = encode(&ChainEntry::Audit(AuditEntry::Request(sample_request(
            "a", "get", "n",
        ))))
        .unwrap();
        assert_eq!(&request[..2], &[0, 0]);
        let back: ChainEntry = decode(&bytes).unwrap();
        assert_eq!(back, ChainEntry::Audit(AuditEntry::Node(node)));
        assert_eq!(back.time_ns(), 1_700_000_001_000_000_000);
    }

    #[test]
    fn completion_bodies_round_trip_as_bytes() {
        let completion = CompletionEntry {
            id: "c".into(),
            time_ns: 1,
            node: "n".into(),
            request_seq: 3,
            status: Some(201),
            latency_us: 4,
            request_bytes: 5,
            response_bytes: 6,
            error: None,
            body: Some(b"{\"data\":{}}".to_vec()),
            body_truncated: false,
            body_omitted: None,
        };
        let bytes = encode(&ChainEntry::Audit(AuditEntry::Completion(
            completion.clone(),
        )))
        .unwrap();
        // serde_bytes: one length prefix, then the bytes as they are.
        let expected: &[u8] = b"\x0b{\"data\":{}}";
        assert!(bytes.windows(expected.len()).any(|w| w == expected));
        let omitted = CompletionEntry {
            body: None,
            body_omitted: Some("larger than record.max_body_bytes".into()),
            body_truncated: true,
            ..completion.clone()
        };
        for entry in [completion, omitted] {
            let bytes = encode(&ChainEntry::Audit(AuditEntry::Completion(entry.clone()))).unwrap();
            let back: ChainEntry = decode(&bytes).unwrap();
            assert_eq!(back, ChainEntry::Audit(AuditEntry::Completion(entry)));
        }
    }

    #[test]
    fn protocols_map_from_ipproto_numbers() {
        assert_eq!(NodeProtocol::from_ipproto(6), NodeProtocol::Tcp);
        assert_eq!(NodeProtocol::from_ipproto(17), NodeProtocol::Udp);
        assert_eq!(NodeProtocol::from_ipproto(1).name(), "ipproto-1");
        assert_eq!(NodeProtocol::Udp.name(), "udp");
        assert_eq!(NodeEventKind::Reject.as_str(), "reject");
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
