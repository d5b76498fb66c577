//! Reading the store for people and SIEMs: audit queries with filters (JSON lines or a table),
//! the session list, one session's frames.
//!
//! Owns: filter semantics and output shapes. Must never: write to the store.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{json, Value};

use super::entry::{
    decode, AuditEntry, ChainEntry, CompletionEntry, Decision, Envelope, RequestEntry,
};
use super::session::{FrameRecord, SessionRecord};
use super::store::{seq_key, Store, Tree};
use super::RecordError;

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
    }
}

/// One request with its completion, if one was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub request: RequestEntry,
    pub completion: Option<(u64, CompletionEntry)>,
}

/// Requests matching `filter`, in log order, each joined with its completion.
pub fn query(store: &dyn Store, filter: &AuditFilter) -> Result<Vec<AuditRow>, RecordError> {
    let mut rows: Vec<AuditRow> = Vec::new();
    let mut by_seq: HashMap<u64, usize> = HashMap::new();
    for item in store.range_from(Tree::Audit, &seq_key(0)) {
        let (_, v) = item?;
        let env: Envelope = decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        let Ok(entry) = env.decode_entry() else {
            continue;
        };
        match entry {
            ChainEntry::Audit(AuditEntry::Request(r)) => {
                if filter.matches(&r) {
                    by_seq.insert(env.seq, rows.len());
                    rows.push(AuditRow {
                        seq: env.seq,
                        request: r,
                        completion: None,
                    });
                }
            }
            ChainEntry::Audit(AuditEntry::Completion(c)) => {
                if let Some(&i) = by_seq.get(&c.request_seq) {
                    rows[i].completion = Some((env.seq, c));
                }
            }
            ChainEntry::Tombstone(_) => {}
        }
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
        Ok(s) => ("body", Value::String(s.to_owned())),
        Err(_) => (
            "body_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    }
}

/// One JSON object per row (for JSON lines).
pub fn row_json(row: &AuditRow) -> Value {
    let r = &row.request;
    let mut v = json!({
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
    if let Some(body) = &r.body {
        let (key, value) = body_json(body);
        v[key] = value;
        v["body_truncated"] = Value::Bool(r.body_truncated);
    }
    if let Some((seq, c)) = &row.completion {
        v["completion_seq"] = json!(seq);
        v["status"] = json!(c.status);
        v["latency_ms"] = json!(c.latency_us as f64 / 1000.0);
        v["request_bytes"] = json!(c.request_bytes);
        v["response_bytes"] = json!(c.response_bytes);
        if let Some(e) = &c.error {
            v["error"] = json!(e);
        }
    }
    v
}

/// A fixed-column table for a terminal.
pub fn format_table(rows: &[AuditRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  {:<24}  {:<16}  {:<22}  {:<16}  {:<24}  {:<5}  {:>6}",
        "SEQ", "TIME", "USER", "VERB", "RESOURCE", "NAMESPACE", "NAME", "DEC", "STATUS"
    );
    for row in rows {
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
    out
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

/// A session's frames in the order they arrived.
pub fn session_frames(store: &dyn Store, seq: u64) -> Result<Vec<FrameRecord>, RecordError> {
    let mut out = Vec::new();
    for item in store.scan_prefix(Tree::Frames, &seq_key(seq)) {
        let (_, v) = item?;
        out.push(decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))?);
    }
    Ok(out)
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
            s.stdin_bytes + s.stdout_bytes + s.stderr_bytes,
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
