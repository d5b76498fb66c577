//! Reading the store for people and SIEMs: audit queries with filters (JSON lines or a table),
//! the session list, one session's frames.
//!
//! Owns: filter semantics and output shapes. Must never: write to the store.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{json, Value};

use super::entry::{
    decode, AuditEntry, ChainEntry, CompletionEntry, Decision, Envelope, NodeEventEntry,
    RequestEntry, SCHEMA_VERSION,
};
use super::session::{FrameRecord, SessionRecord};
use super::store::{seq_key, Store, Tree};
use super::RecordError;

/// Which records a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The gateway's requests, each joined with its completion.
    Request,
    /// The node agent's redirect, reject and drop events.
    Node,
}

impl RecordKind {
    /// `request` or `node`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "request" => Some(RecordKind::Request),
            "node" => Some(RecordKind::Node),
            _ => None,
        }
    }
}

/// Every set field must match (exact, case-sensitive).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub verb: Option<String>,
    /// `pods` or `pods/exec` (resource/subresource).
    pub resource: Option<String>,
    pub namespace: Option<String>,
    /// Nanoseconds since the epoch, inclusive.
    pub since_ns: Option<u64>,
    /// Nanoseconds since the epoch, exclusive.
    pub until_ns: Option<u64>,
    pub decision: Option<Decision>,
    /// Only requests, or only node events.
    pub kind: Option<RecordKind>,
}

impl AuditFilter {
    pub fn matches(&self, r: &RequestEntry) -> bool {
        let user = r.identity.as_ref().map(|i| i.user.as_str());
        let resource_ok = self
            .resource
            .as_deref()
            .is_none_or(|want| match want.split_once('/') {
                Some((res, sub)) => r.request.resource == res && r.request.subresource == sub,
                None => r.request.resource == want,
            });
        self.user.as_deref().is_none_or(|u| user == Some(u))
            && self.verb.as_deref().is_none_or(|v| r.request.verb == v)
            && resource_ok
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| r.request.namespace == n)
            && self.since_ns.is_none_or(|t| r.time_ns >= t)
            && self.until_ns.is_none_or(|t| r.time_ns < t)
            && self.decision.is_none_or(|d| r.decision == d)
            && self.kind.is_none_or(|k| k == RecordKind::Request)
    }

    /// A node event has no user, verb, resource or policy decision: a filter on any of those
    /// leaves node events out. `namespace` is the pod's namespace.
    pub fn matches_node(&self, n: &NodeEventEntry) -> bool {
        self.kind.is_none_or(|k| k == RecordKind::Node)
            && self.user.is_none()
            && self.verb.is_none()
            && self.resource.is_none()
            && self.decision.is_none()
            && self
                .namespace
                .as_deref()
                .is_none_or(|want| n.pod.as_ref().is_some_and(|pod| pod.namespace == want))
            && self.since_ns.is_none_or(|t| n.time_ns >= t)
            && self.until_ns.is_none_or(|t| n.time_ns < t)
    }
}

/// One request with its completion, if one was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub request: RequestEntry,
    pub completion: Option<(u64, CompletionEntry)>,
}

/// One node agent event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub seq: u64,
    pub event: NodeEventEntry,
}

/// A row of a query over every kind of record.
// Rows are built once and printed; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRow {
    Request(AuditRow),
    Node(NodeRow),
}

impl QueryRow {
    pub fn seq(&self) -> u64 {
        match self {
            QueryRow::Request(r) => r.seq,
            QueryRow::Node(n) => n.seq,
        }
    }
}

/// Requests matching `filter`, in log order, each joined with its completion.
pub fn query(store: &dyn Store, filter: &AuditFilter) -> Result<Vec<AuditRow>, RecordError> {
    let filter = AuditFilter {
        kind: Some(RecordKind::Request),
        ..filter.clone()
    };
    Ok(query_rows(store, &filter)?
        .into_iter()
        .filter_map(|row| match row {
            QueryRow::Request(r) => Some(r),
            QueryRow::Node(_) => None,
        })
        .collect())
}

/// Requests (joined with their completions) and node events matching `filter`, in log order.
/// Records of another schema are skipped with a warning (this build cannot read them); a
/// record of this schema that does not decode is an error, never silently left out.
pub fn query_rows(store: &dyn Store, filter: &AuditFilter) -> Result<Vec<QueryRow>, RecordError> {
    let mut rows: Vec<QueryRow> = Vec::new();
    let mut by_seq: HashMap<u64, usize> = HashMap::new();
    let mut other_schema: u64 = 0;
    for item in store.range_from(Tree::Audit, &seq_key(0)) {
        let (_, v) = item?;
        let env: Envelope = decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        if env.schema != SCHEMA_VERSION {
            other_schema += 1;
            continue;
        }
        let entry = env.decode_entry().map_err(|e| {
            RecordError::Corrupt(format!(
                "audit record {} does not decode ({e}); run `portcullis audit verify`",
                env.seq
            ))
        })?;
        match entry {
            ChainEntry::Audit(AuditEntry::Request(r)) => {
                if filter.matches(&r) {
                    by_seq.insert(env.seq, rows.len());
                    rows.push(QueryRow::Request(AuditRow {
                        seq: env.seq,
                        request: r,
                        completion: None,
                    }));
                }
            }
            ChainEntry::Audit(AuditEntry::Completion(c)) => {
                if let Some(QueryRow::Request(row)) =
                    by_seq.get(&c.request_seq).and_then(|&i| rows.get_mut(i))
                {
                    row.completion = Some((env.seq, c));
                }
            }
            ChainEntry::Audit(AuditEntry::Node(n)) => {
                if filter.matches_node(&n) {
                    rows.push(QueryRow::Node(NodeRow {
                        seq: env.seq,
                        event: n,
                    }));
                }
            }
            ChainEntry::Tombstone(_) => {}
        }
    }
    if other_schema > 0 {
        tracing::warn!(
            records = other_schema,
            "records written with another schema were left out: query them with the portcullis that wrote them"
        );
    }
    Ok(rows)
}

pub fn format_time(ns: u64) -> String {
    let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ns.to_string())
}

/// Parses RFC 3339 or Unix seconds into nanoseconds since the epoch.
pub fn parse_time(text: &str) -> Option<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return secs.checked_mul(1_000_000_000);
    }
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_nanos_opt()?).ok()
}

fn body_json(body: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(body) {
        Ok(s) => ("request_body", Value::String(s.to_owned())),
        Err(_) => (
            "request_body_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    }
}

/// One JSON object per row (for JSON lines).
pub fn row_json(row: &AuditRow) -> Value {
    let r = &row.request;
    let mut v = json!({
        "type": "request",
        "seq": row.seq,
        "id": r.id,
        "time": format_time(r.time_ns),
        "node": r.node,
        "client_addr": r.client_addr,
        "user_agent": r.user_agent,
        "user": r.identity.as_ref().map(|i| &i.user),
        "groups": r.identity.as_ref().map(|i| &i.groups),
        "issuer": r.identity.as_ref().map(|i| &i.issuer),
        "verb": r.request.verb,
        "api_group": r.request.api_group,
        "api_version": r.request.api_version,
        "resource": r.request.resource,
        "subresource": r.request.subresource,
        "namespace": r.request.namespace,
        "name": r.request.name,
        "path": r.request.path,
        "decision": r.decision.as_str(),
        "reason": r.reason,
        "rule": r.rule,
        "approval_id": r.approval_id,
        "impersonated_user": r.impersonated.as_ref().map(|i| &i.user),
        "impersonated_groups": r.impersonated.as_ref().map(|i| &i.groups),
        "status": r.status,
        "original_destination": r.original_destination,
        "client_cgroup_id": r.client_cgroup_id,
    });
    if let Some((seq, c)) = &row.completion {
        v["completion_seq"] = json!(seq);
        v["status"] = json!(c.status);
        v["latency_ms"] = json!(c.latency_us as f64 / 1000.0);
        v["request_bytes"] = json!(c.request_bytes);
        v["response_bytes"] = json!(c.response_bytes);
        if let Some(e) = &c.error {
            v["error"] = json!(e);
        }
        if let Some(body) = &c.body {
            let (key, value) = body_json(body);
            v[key] = value;
        }
        if c.body.is_some() || c.body_truncated {
            v["request_body_truncated"] = Value::Bool(c.body_truncated);
        }
        if let Some(why) = &c.body_omitted {
            v["request_body_omitted"] = json!(why);
        }
    }
    v
}

/// One JSON object per node event (for JSON lines). `namespace` is the pod's, like the
/// request rows' `namespace` is the resource's.
pub fn node_row_json(row: &NodeRow) -> Value {
    let n = &row.event;
    json!({
        "type": "node",
        "seq": row.seq,
        "time": format_time(n.time_ns),
        "node": n.node,
        "kind": n.kind.as_str(),
        "namespace": n.pod.as_ref().map(|p| &p.namespace),
        "pod": n.pod.as_ref().map(|p| &p.name),
        "pod_uid": n.pod.as_ref().and_then(|p| p.uid.as_ref()),
        "cgroup_id": n.cgroup_id,
        "destination": n.destination,
        "protocol": n.protocol.name(),
        "count": n.count,
        "first": format_time(n.first_ns),
        "last": format_time(n.last_ns),
    })
}

pub fn query_row_json(row: &QueryRow) -> Value {
    match row {
        QueryRow::Request(r) => row_json(r),
        QueryRow::Node(n) => node_row_json(n),
    }
}

fn table_header(out: &mut String) {
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  {:<24}  {:<16}  {:<22}  {:<16}  {:<24}  {:<5}  {:>6}",
        "SEQ", "TIME", "USER", "VERB", "RESOURCE", "NAMESPACE", "NAME", "DEC", "STATUS"
    );
}

/// A fixed-column table for a terminal.
pub fn format_table(rows: &[AuditRow]) -> String {
    let mut out = String::new();
    table_header(&mut out);
    for row in rows {
        request_line(&mut out, row);
    }
    out
}

/// The table with node events too: one free-form line each, after the same SEQ and TIME.
pub fn format_query_rows(rows: &[QueryRow]) -> String {
    let mut out = String::new();
    table_header(&mut out);
    for row in rows {
        match row {
            QueryRow::Request(r) => request_line(&mut out, r),
            QueryRow::Node(n) => node_line(&mut out, n),
        }
    }
    out
}

fn node_line(out: &mut String, row: &NodeRow) {
    let n = &row.event;
    let pod = n
        .pod
        .as_ref()
        .map_or("-".to_string(), |p| format!("{}/{}", p.namespace, p.name));
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  node event: {} {} (cgroup {}) to {} {}, {} time(s), on {}",
        row.seq,
        format_time(n.time_ns),
        n.kind.as_str(),
        pod,
        n.cgroup_id,
        n.destination,
        n.protocol.name(),
        n.count,
        n.node
    );
}

fn request_line(out: &mut String, row: &AuditRow) {
    let r = &row.request;
    let resource = if r.request.subresource.is_empty() {
        if r.request.is_resource_request {
            r.request.resource.clone()
        } else {
            r.request.path.clone()
        }
    } else {
        format!("{}/{}", r.request.resource, r.request.subresource)
    };
    let status = row
        .completion
        .as_ref()
        .and_then(|(_, c)| c.status)
        .or(r.status)
        .map_or("-".to_string(), |s| s.to_string());
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  {:<24}  {:<16}  {:<22}  {:<16}  {:<24}  {:<5}  {:>6}",
        row.seq,
        format_time(r.time_ns),
        r.identity.as_ref().map_or("-", |i| i.user.as_str()),
        r.request.verb,
        resource,
        if r.request.namespace.is_empty() {
            "-"
        } else {
            &r.request.namespace
        },
        if r.request.name.is_empty() {
            "-"
        } else {
            &r.request.name
        },
        r.decision.as_str(),
        status
    );
}

/// Every session record, oldest first.
pub fn list_sessions(store: &dyn Store) -> Result<Vec<SessionRecord>, RecordError> {
    let mut out = Vec::new();
    for item in store.range_from(Tree::Sessions, &seq_key(0)) {
        let (_, v) = item?;
        out.push(decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))?);
    }
    Ok(out)
}

/// A session by id, or by its seq number.
pub fn find_session(store: &dyn Store, id_or_seq: &str) -> Result<SessionRecord, RecordError> {
    let seq = match store.get(Tree::SessionIds, id_or_seq.as_bytes())? {
        Some(v) => super::store::key_seq(&v),
        None => id_or_seq.parse::<u64>().ok(),
    }
    .ok_or_else(|| RecordError::NoSuchSession(id_or_seq.to_owned()))?;
    let v = store
        .get(Tree::Sessions, &seq_key(seq))?
        .ok_or_else(|| RecordError::NoSuchSession(id_or_seq.to_owned()))?;
    decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))
}

/// A session's frames in the order they arrived. A tail cut short by an unclean stop is left
/// out with a warning on stderr (the frames before it are whole); damage anywhere else fails.
pub fn session_frames(store: &dyn Store, seq: u64) -> Result<Vec<FrameRecord>, RecordError> {
    let read = store.frames(seq)?;
    if read.torn_tail_bytes > 0 {
        tracing::warn!(
            session_seq = seq,
            bytes = read.torn_tail_bytes,
            "the session's frames end in bytes that are not a whole frame (an unclean stop: a torn \
             last frame, or the padding of a block synced before the session ended); left out"
        );
    }
    read.records
        .iter()
        .enumerate()
        .map(|(i, v)| {
            decode(v).map_err(|e| RecordError::Corrupt(format!("session {seq} frame {i}: {e}")))
        })
        .collect()
}

pub fn format_sessions(sessions: &[SessionRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<24}  {:<11}  {:<24}  {:<32}  {:<20}  {:<24}  {:>4}  {:>10}  COMMAND",
        "SEQ", "START", "KIND", "USER", "POD", "SESSION", "END", "EXIT", "BYTES"
    );
    for s in sessions {
        let m = &s.meta;
        let pod = if m.container.is_empty() {
            format!("{}/{}", m.namespace, m.pod)
        } else {
            format!("{}/{}:{}", m.namespace, m.pod, m.container)
        };
        let end = match (s.end_ns, s.overflowed) {
            (None, _) => "(open or unclean stop)".to_string(),
            (Some(t), false) => format_time(t),
            (Some(t), true) => format!("{} overflow", format_time(t)),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<24}  {:<11}  {:<24}  {:<32}  {:<20}  {:<24}  {:>4}  {:>10}  {}",
            s.seq,
            format_time(m.start_ns),
            m.kind.as_str(),
            m.identity.as_ref().map_or("-", |i| i.user.as_str()),
            pod,
            m.session_id,
            end,
            s.exit_code.map_or("-".to_string(), |c| c.to_string()),
            if m.frames_recorded {
                (s.stdin_bytes + s.stdout_bytes + s.stderr_bytes).to_string()
            } else {
                "metadata".to_string()
            },
            m.command.join(" ")
        );
    }
    out
}

pub fn session_json(s: &SessionRecord) -> Value {
    let m = &s.meta;
    json!({
        "seq": s.seq,
        "session_id": m.session_id,
        "kind": m.kind.as_str(),
        "frames_recorded": m.frames_recorded,
        "protocol": m.protocol.as_str(),
        "pod": m.pod,
        "namespace": m.namespace,
        "container": m.container,
        "command": m.command,
        "tty": m.tty,
        "stdin": m.stdin,
        "ports": m.ports,
        "user": m.identity.as_ref().map(|i| &i.user),
        "groups": m.identity.as_ref().map(|i| &i.groups),
        "start": format_time(m.start_ns),
        "end": s.end_ns.map(format_time),
        "exit_code": s.exit_code,
        "error": s.error,
        "frames": s.frames,
        "stdin_bytes": s.stdin_bytes,
        "stdout_bytes": s.stdout_bytes,
        "stderr_bytes": s.stderr_bytes,
        "port_forward": s.port_forward.iter().map(|p| json!({
            "port": p.port, "stream": p.stream,
            "bytes_to_pod": p.bytes_to_pod, "bytes_from_pod": p.bytes_from_pod,
        })).collect::<Vec<_>>(),
        "dropped_bytes": s.dropped_bytes,
        "overflowed": s.overflowed,
        "request_seq": m.request_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RecorderMetrics;
    use crate::record::entry::tests::{sample_node_event, sample_request};
    use crate::record::entry::{NodeEventKind, NodeProtocol};
    use crate::record::{cli, now_unix_nanos, RecordConfig, Recorder};

    const KEY_SEED: [u8; 32] = [7; 32];

    #[tokio::test]
    async fn node_events_are_queried_filtered_and_printed_next_to_requests() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        std::fs::write(&key, KEY_SEED).unwrap();
        let cfg = RecordConfig {
            path: Some(dir.path().join("store")),
            node_name: Some("node-1".into()),
            signing_key_file: Some(key.clone()),
            ..RecordConfig::default()
        };
        let recorder = Recorder::open(&cfg, RecorderMetrics::new().unwrap()).unwrap();
        let seq = recorder
            .append_durable(AuditEntry::Request(sample_request(
                "alice", "create", "agents",
            )))
            .await
            .unwrap();
        recorder
            .append(AuditEntry::Node(sample_node_event(
                NodeEventKind::Redirect,
                "agents",
            )))
            .unwrap();
        recorder
            .append(AuditEntry::Completion(CompletionEntry {
                id: "c".into(),
                time_ns: now_unix_nanos(),
                node: String::new(),
                request_seq: seq,
                status: Some(201),
                latency_us: 10,
                request_bytes: 1,
                response_bytes: 2,
                error: None,
                body: None,
                body_truncated: false,
                body_omitted: None,
            }))
            .unwrap();
        let mut unknown = sample_node_event(NodeEventKind::Drop, "x");
        unknown.pod = None;
        unknown.destination = "203.0.113.10:0".into();
        unknown.protocol = NodeProtocol::Udp;
        unknown.time_ns += 5_000_000_000;
        recorder.append(AuditEntry::Node(unknown)).unwrap();
        recorder
            .append(AuditEntry::Node(sample_node_event(
                NodeEventKind::Reject,
                "other",
            )))
            .unwrap();
        let store = recorder.store();

        let seqs = |f: AuditFilter| -> Vec<u64> {
            query_rows(store.as_ref(), &f)
                .unwrap()
                .iter()
                .map(QueryRow::seq)
                .collect()
        };
        assert_eq!(seqs(AuditFilter::default()), vec![0, 1, 3, 4]);
        let requests = query(store.as_ref(), &AuditFilter::default()).unwrap();
        assert_eq!(requests.len(), 1, "query() keeps returning requests only");
        assert_eq!(requests[0].completion.as_ref().map(|c| c.0), Some(2));
        let namespace = |ns: &str| AuditFilter {
            namespace: Some(ns.into()),
            ..Default::default()
        };
        assert_eq!(seqs(namespace("agents")), vec![0, 1], "the pod's namespace");
        assert_eq!(seqs(namespace("other")), vec![4]);
        for filter in [
            AuditFilter {
                user: Some("alice".into()),
                ..Default::default()
            },
            AuditFilter {
                verb: Some("create".into()),
                ..Default::default()
            },
            AuditFilter {
                resource: Some("pods".into()),
                ..Default::default()
            },
            AuditFilter {
                decision: Some(Decision::Allow),
                ..Default::default()
            },
        ] {
            assert_eq!(
                seqs(filter.clone()),
                vec![0],
                "{filter:?} is about requests"
            );
        }
        let kind = |k: RecordKind| AuditFilter {
            kind: Some(k),
            ..Default::default()
        };
        assert_eq!(seqs(kind(RecordKind::Node)), vec![1, 3, 4]);
        assert_eq!(seqs(kind(RecordKind::Request)), vec![0]);
        assert_eq!(RecordKind::parse("node"), Some(RecordKind::Node));
        assert_eq!(RecordKind::parse("completion"), None);
        assert_eq!(
            seqs(AuditFilter {
                since_ns: Some(1_700_000_002_000_000_000),
                kind: Some(RecordKind::Node),
                ..Default::default()
            }),
            vec![3],
            "time filters apply to node events"
        );

        let rows = query_rows(store.as_ref(), &AuditFilter::default()).unwrap();
        let json = query_row_json(&rows[1]);
        assert_eq!(json["type"], "node");
        assert_eq!(json["kind"], "redirect");
        assert_eq!(json["node"], "node-1", "filled in by the recorder");
        assert_eq!(json["namespace"], "agents");
        assert_eq!(json["pod"], "mcp-0");
        assert_eq!(json["pod_uid"], "8f0e3c1a-5b2d-4c6e-9a7f-0123456789ab");
        assert_eq!(json["cgroup_id"], 4242);
        assert_eq!(json["destination"], "203.0.113.10:443");
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["count"], 3);
        assert_eq!(json["first"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["last"], "2023-11-14T22:13:20.900Z");
        assert_eq!(query_row_json(&rows[0])["type"], "request");
        let unknown = query_row_json(&rows[2]);
        assert!(unknown["pod"].is_null() && unknown["namespace"].is_null());
        assert_eq!(unknown["protocol"], "udp");

        let table = format_query_rows(&rows);
        assert_eq!(table.lines().count(), 5, "{table}");
        let line = table.lines().nth(2).unwrap();
        assert!(
            line.contains(
                "redirect agents/mcp-0 (cgroup 4242) to 203.0.113.10:443 tcp, 3 time(s), on node-1"
            ),
            "{line}"
        );
        assert!(
            table.lines().nth(3).unwrap().contains("drop - (cgroup"),
            "{table}"
        );

        // The offline commands on the closed store: the chain verifies, JSON lines include
        // the node events.
        drop(store);
        drop(recorder);
        let target = cli::Target {
            path: dir.path().join("store"),
            key_file: Some(key),
        };
        let mut out = Vec::new();
        assert!(cli::audit_verify(&target, None, None, &mut out).unwrap());
        let mut out = Vec::new();
        assert_eq!(
            cli::audit_query(&target, &AuditFilter::default(), true, &mut out).unwrap(),
            4
        );
        let types: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].to_string())
            .collect();
        assert_eq!(types, ["\"request\"", "\"node\"", "\"node\"", "\"node\""]);
    }
}
