//! Server-side printing: meta.k8s.io/v1 `Table` responses built from stored objects.
//!
//! `kubectl get` and client-go based MCP servers ask for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and print whatever columns and cells the
//! server returns. This module owns choosing those columns and rendering the cells the way the real
//! API server's printers do (same column names, types and priorities, same Age strings, same pod
//! status reasons), so that client output looks like it does against a real cluster.
//!
//! It only reads the objects it is given; it must never change them, look anything up, or fail:
//! a field that is missing or of an unexpected type renders as the real printer's zero value.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};

/// What each Table row carries in `object` (the `includeObject` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parse `includeObject`; anything other than `None` or `Object` means the API server's default, `Metadata`.
    pub fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// true if an Accept header asks for a meta.k8s.io Table (as=Table;v=v1;g=meta.k8s.io, also v1beta1), e.g.
/// "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
///
/// Media ranges are taken in the order the client lists them, as client-go means them: the first one
/// that is either a Table request or a plain type decides. Ranges asking for another `as=` kind
/// (e.g. PartialObjectMetadataList) or with `q=0` are skipped.
pub fn wants_table(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if media.is_empty() {
            continue;
        }
        let (mut as_kind, mut version, mut group, mut refused) = (None, None, None, false);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "as" => as_kind = Some(value),
                "v" => version = Some(value),
                "g" => group = Some(value),
                "q" => refused = value.parse::<f32>().is_ok_and(|q| q <= 0.0),
                _ => {}
            }
        }
        if refused {
            continue;
        }
        match as_kind {
            None => return false,
            Some("Table")
                if group == Some("meta.k8s.io") && matches!(version, Some("v1" | "v1beta1")) =>
            {
                return true
            }
            Some(_) => continue,
        }
    }
    false
}

/// A meta.k8s.io/v1 Table for `resource` (plural, e.g. "pods") built from full objects.
/// `list_metadata` is placed as the Table's metadata (resourceVersion, continue).
/// `with_column_definitions=false` gives an empty columnDefinitions list (used for watch events after the first).
pub fn to_table(
    resource: &str,
    items: &[Value],
    list_metadata: Value,
    include: IncludeObject,
    with_column_definitions: bool,
) -> Value {
    to_table_at(
        resource,
        items,
        list_metadata,
        include,
        with_column_definitions,
        Utc::now(),
    )
}

fn to_table_at(
    resource: &str,
    items: &[Value],
    list_metadata: Value,
    include: IncludeObject,
    with_column_definitions: bool,
    now: DateTime<Utc>,
) -> Value {
    let printer = printer_for(resource);
    let columns: Vec<Value> = if with_column_definitions {
        printer.columns.iter().map(Column::to_json).collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array((printer.cells)(item, now)));
            if let Some(conditions) = printer.conditions.and_then(|f| f(item)) {
                row.insert("conditions".into(), conditions);
            }
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    let metadata = item.get("metadata").cloned().unwrap_or_else(|| json!({}));
                    row.insert(
                        "object".into(),
                        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".into(), item.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    let metadata = if list_metadata.is_object() {
        list_metadata
    } else {
        json!({})
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The age string `kubectl get` shows, exactly as k8s.io/apimachinery's `duration.HumanDuration` renders it:
/// about two significant figures, e.g. "45s", "5m30s", "47m", "5h12m", "3d4h", "400d", "3y20d".
pub fn human_duration(elapsed: TimeDelta) -> String {
    let seconds = elapsed.num_seconds();
    // Up to a second in the future is clock skew between machines, not an error.
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let d = days % 365;
        return if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        };
    }
    format!("{years}y")
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i32,
}

impl Column {
    const fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Self {
            name,
            kind,
            format: "",
            description,
            priority: 0,
        }
    }

    const fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }

    const fn format(mut self, format: &'static str) -> Self {
        self.format = format;
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

type Cells = fn(&Value, DateTime<Utc>) -> Vec<Value>;
type Conditions = fn(&Value) -> Option<Value>;

struct Printer {
    columns: &'static [Column],
    cells: Cells,
    conditions: Option<Conditions>,
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const NAME: Column = Column::new("Name", "string", NAME_DOC).format("name");
const AGE: Column = Column::new("Age", "string", CREATED_DOC);

static DEFAULT_COLUMNS: [Column; 2] = [NAME, Column::new("Created At", "date", CREATED_DOC)];
static NAMESPACE_COLUMNS: [Column; 3] = [
    NAME,
    Column::new("Status", "string", "The status of the namespace"),
    AGE,
];
static POD_COLUMNS: [Column; 9] = [
    NAME,
    Column::new("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    Column::new("Status", "string", "The aggregate status of the containers in this pod."),
    Column::new(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    Column::new("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.").wide(),
    Column::new("Node", "string", "NodeName indicates in which node this pod is scheduled.").wide(),
    Column::new("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node.").wide(),
    Column::new("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness.").wide(),
];
static SECRET_COLUMNS: [Column; 4] = [
    NAME,
    Column::new(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    Column::new("Data", "string", "Data contains the secret data."),
    AGE,
];
static CONFIG_MAP_COLUMNS: [Column; 3] = [
    NAME,
    Column::new("Data", "string", "Data contains the configuration data."),
    AGE,
];
static SERVICE_ACCOUNT_COLUMNS: [Column; 3] = [
    NAME,
    Column::new("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
    AGE,
];
static EVENT_COLUMNS: [Column; 10] = [
    Column::new("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    Column::new("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    Column::new("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    Column::new("Object", "string", "The object that this event is about."),
    Column::new("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.").wide(),
    Column::new("Source", "string", "The component reporting this event. Should be a short machine understandable string.").wide(),
    Column::new("Message", "string", "A human-readable description of the status of this operation."),
    Column::new("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)").wide(),
    Column::new("Count", "string", "The number of times this event has occurred.").wide(),
    Column::new("Name", "string", NAME_DOC).format("name").wide(),
];
static DEPLOYMENT_COLUMNS: [Column; 8] = [
    NAME,
    Column::new("Ready", "string", "Number of the pod with ready state"),
    Column::new("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    Column::new("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    Column::new("Containers", "string", "Names of each container in the template.").wide(),
    Column::new("Images", "string", "Images referenced by each container in the template.").wide(),
    Column::new("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.").wide(),
];

fn printer_for(resource: &str) -> Printer {
    let (columns, cells, conditions): (&'static [Column], Cells, Option<Conditions>) =
        match resource {
            "namespaces" => (&NAMESPACE_COLUMNS, namespace_cells, None),
            "pods" => (&POD_COLUMNS, pod_cells, Some(pod_conditions)),
            "secrets" => (&SECRET_COLUMNS, secret_cells, None),
            "configmaps" => (&CONFIG_MAP_COLUMNS, config_map_cells, None),
            "serviceaccounts" => (&SERVICE_ACCOUNT_COLUMNS, service_account_cells, None),
            "events" => (&EVENT_COLUMNS, event_cells, None),
            "deployments" => (&DEPLOYMENT_COLUMNS, deployment_cells, None),
            _ => (&DEFAULT_COLUMNS, default_cells, None),
        };
    Printer {
        columns,
        cells,
        conditions,
    }
}

// ---- field access ---------------------------------------------------------------------------------

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn text(value: &Value, path: &[&str]) -> String {
    at(value, path)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn int(value: &Value, path: &[&str]) -> Option<i64> {
    at(value, path).and_then(Value::as_i64)
}

fn array<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn map_len(value: &Value, path: &[&str]) -> usize {
    at(value, path)
        .and_then(Value::as_object)
        .map_or(0, Map::len)
}

fn timestamp(value: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    let raw = at(value, path)?.as_str()?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `translateTimestampSince`: the age of a timestamp, "<unknown>" when it is unset.
fn since(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn name(item: &Value) -> Value {
    Value::String(text(item, &["metadata", "name"]))
}

fn age(item: &Value, now: DateTime<Utc>) -> Value {
    Value::String(since(
        timestamp(item, &["metadata", "creationTimestamp"]),
        now,
    ))
}

fn or_none(s: String) -> Value {
    Value::String(if s.is_empty() { "<none>".into() } else { s })
}

// ---- printers ------------------------------------------------------------------------------------

fn default_cells(item: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    // The generic printer formats the Go zero time for objects that have none.
    let created = timestamp(item, &["metadata", "creationTimestamp"]).map_or_else(
        || "0001-01-01T00:00:00Z".to_owned(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    vec![name(item), Value::String(created)]
}

fn namespace_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(item),
        Value::String(text(item, &["status", "phase"])),
        age(item, now),
    ]
}

fn secret_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // The API server defaults an empty type to Opaque and merges stringData into data on write;
    // objects here may not have been through that, so do the same for printing.
    let mut secret_type = text(item, &["type"]);
    if secret_type.is_empty() {
        secret_type = "Opaque".into();
    }
    let mut keys: Vec<&String> = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(map) = item.get(field).and_then(Value::as_object) {
            keys.extend(map.keys());
        }
    }
    keys.sort();
    keys.dedup();
    vec![
        name(item),
        Value::String(secret_type),
        Value::from(keys.len()),
        age(item, now),
    ]
}

fn config_map_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let count = map_len(item, &["data"]) + map_len(item, &["binaryData"]);
    vec![name(item), Value::from(count), age(item, now)]
}

fn service_account_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(item),
        Value::from(array(item, &["secrets"]).len()),
        age(item, now),
    ]
}

fn deployment_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // An unset spec.replicas is defaulted to 1 by the API server.
    let desired = int(item, &["spec", "replicas"]).unwrap_or(1);
    let ready = int(item, &["status", "readyReplicas"]).unwrap_or(0);
    let updated = int(item, &["status", "updatedReplicas"]).unwrap_or(0);
    let available = int(item, &["status", "availableReplicas"]).unwrap_or(0);
    let containers = array(item, &["spec", "template", "spec", "containers"]);
    let join = |field: &str| {
        containers
            .iter()
            .map(|c| text(c, &[field]))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        name(item),
        Value::String(format!("{ready}/{desired}")),
        Value::from(updated),
        Value::from(available),
        age(item, now),
        Value::String(join("name")),
        Value::String(join("image")),
        Value::String(
            at(item, &["spec", "selector"])
                .map(selector_string)
                .unwrap_or_default(),
        ),
    ]
}

/// A LabelSelector the way `labels.Selector.String()` prints it: requirements sorted by key.
fn selector_string(selector: &Value) -> String {
    let mut requirements: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in labels {
            let value = value.as_str().unwrap_or_default();
            requirements.push((key.clone(), format!("{key}={value}")));
        }
    }
    for expression in array(selector, &["matchExpressions"]) {
        let key = text(expression, &["key"]);
        let mut values: Vec<String> = array(expression, &["values"])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        values.sort();
        let rendered = match text(expression, &["operator"]).as_str() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<invalid>".into(),
        };
        requirements.push((key, rendered));
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    requirements
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(",")
}

fn event_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // events.k8s.io/v1 objects carry the same data under other names.
    let field = |core: &str, events: &str| {
        item.get(core)
            .or_else(|| item.get(events))
            .unwrap_or(&Value::Null)
    };
    let first_timestamp = timestamp(field("firstTimestamp", "deprecatedFirstTimestamp"), &[]);
    let last_timestamp = timestamp(field("lastTimestamp", "deprecatedLastTimestamp"), &[]);
    let event_time = timestamp(item, &["eventTime"]);
    let first_seen = since(first_timestamp.or(event_time), now);
    let mut last_seen = match last_timestamp {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = field("count", "deprecatedCount").as_i64().unwrap_or(0);
    if let Some(series) = item.get("series").filter(|s| s.is_object()) {
        last_seen = since(timestamp(series, &["lastObservedTime"]), now);
        count = int(series, &["count"]).unwrap_or(0);
    } else if count == 0 {
        // Events written through the new API have no count; each one is a single occurrence.
        count = 1;
    }
    let involved = field("involvedObject", "regarding");
    let kind = text(involved, &["kind"]).to_lowercase();
    let involved_name = text(involved, &["name"]);
    let target = if involved_name.is_empty() {
        kind
    } else {
        format!("{kind}/{involved_name}")
    };
    let source = field("source", "deprecatedSource");
    let component = first_non_empty(text(source, &["component"]), || {
        first_non_empty(text(item, &["reportingComponent"]), || {
            text(item, &["reportingController"])
        })
    });
    let instance = first_non_empty(text(source, &["host"]), || {
        text(item, &["reportingInstance"])
    });
    let source = match (component.is_empty(), instance.is_empty()) {
        (true, true) => String::new(),
        (_, true) => component,
        _ => format!("{component}, {instance}"),
    };
    let message = field("message", "note")
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned();
    vec![
        Value::String(last_seen),
        Value::String(text(item, &["type"])),
        Value::String(text(item, &["reason"])),
        Value::String(target),
        Value::String(text(involved, &["fieldPath"])),
        Value::String(source),
        Value::String(message),
        Value::String(first_seen),
        Value::from(count),
        name(item),
    ]
}

fn first_non_empty(first: String, otherwise: impl FnOnce() -> String) -> String {
    if first.is_empty() {
        otherwise()
    } else {
        first
    }
}

/// Completed and failed pods carry a row condition that clients use to tell them apart.
fn pod_conditions(item: &Value) -> Option<Value> {
    let (reason, message) = match text(item, &["status", "phase"]).as_str() {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

fn is_restartable_init_container(container: Option<&Value>) -> bool {
    container.is_some_and(|c| text(c, &["restartPolicy"]) == "Always")
}

fn condition_true(item: &Value, condition_type: &str) -> bool {
    array(item, &["status", "conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == condition_type && text(c, &["status"]) == "True")
}

/// The reason shown for a container that stopped: its reason, or the signal / exit code.
fn terminated_reason(terminated: &Value) -> String {
    let reason = text(terminated, &["reason"]);
    if !reason.is_empty() {
        return reason;
    }
    match int(terminated, &["signal"]).filter(|s| *s != 0) {
        Some(signal) => format!("Signal:{signal}"),
        None => format!("ExitCode:{}", int(terminated, &["exitCode"]).unwrap_or(0)),
    }
}

fn pod_cells(item: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let init_specs = array(item, &["spec", "initContainers"]);
    let init_spec = |name: &str| init_specs.iter().find(|c| text(c, &["name"]) == name);
    let containers = array(item, &["spec", "containers"]);
    let statuses = array(item, &["status", "containerStatuses"]);
    let mut total = if containers.is_empty() {
        statuses.len()
    } else {
        containers.len()
    };
    total += init_specs
        .iter()
        .filter(|c| is_restartable_init_container(Some(c)))
        .count();

    let phase = text(item, &["status", "phase"]);
    let status_reason = text(item, &["status", "reason"]);
    let mut reason = if status_reason.is_empty() {
        phase.clone()
    } else {
        status_reason.clone()
    };
    let gated = array(item, &["status", "conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated");
    if gated {
        reason = "SchedulingGated".into();
    }

    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut sidecar_restarts = 0i64;
    let mut last_sidecar_restart: Option<DateTime<Utc>> = None;
    let finished = |status: &Value| timestamp(status, &["lastState", "terminated", "finishedAt"]);

    let mut initializing = false;
    let init_statuses = array(item, &["status", "initContainerStatuses"]);
    for (index, status) in init_statuses.iter().enumerate() {
        let restart_count = int(status, &["restartCount"]).unwrap_or(0);
        restarts += restart_count;
        last_restart = last_restart.max(finished(status));
        let sidecar = is_restartable_init_container(init_spec(&text(status, &["name"])));
        if sidecar {
            sidecar_restarts += restart_count;
            last_sidecar_restart = last_sidecar_restart.max(finished(status));
        }
        let terminated = at(status, &["state", "terminated"]).filter(|t| t.is_object());
        let waiting_reason = text(status, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]).unwrap_or(0) == 0) {
            continue;
        }
        if sidecar && at(status, &["started"]).and_then(Value::as_bool) == Some(true) {
            if at(status, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(terminated) = terminated {
            format!("Init:{}", terminated_reason(terminated))
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{index}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(item, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for status in statuses.iter().rev() {
            restarts += int(status, &["restartCount"]).unwrap_or(0);
            last_restart = last_restart.max(finished(status));
            let waiting_reason = text(status, &["state", "waiting", "reason"]);
            let terminated = at(status, &["state", "terminated"]).filter(|t| t.is_object());
            let running = at(status, &["state", "running"]).is_some_and(Value::is_object);
            if !waiting_reason.is_empty() {
                reason = waiting_reason;
            } else if let Some(terminated) = terminated {
                reason = terminated_reason(terminated);
            } else if running && at(status, &["ready"]).and_then(Value::as_bool) == Some(true) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(item, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }

    let deleting = at(item, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null());
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };
    let pod_ip = array(item, &["status", "podIPs"])
        .first()
        .map(|ip| text(ip, &["ip"]))
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| text(item, &["status", "podIP"]));
    let gates = array(item, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = array(item, &["status", "conditions"]);
        let passing = gates
            .iter()
            .filter(|gate| {
                let wanted = text(gate, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| text(c, &["type"]) == wanted)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{passing}/{}", gates.len())
    };
    vec![
        name(item),
        Value::String(format!("{ready}/{total}")),
        Value::String(reason),
        Value::String(restarts),
        age(item, now),
        or_none(pod_ip),
        or_none(text(item, &["spec", "nodeName"])),
        or_none(text(item, &["status", "nominatedNodeName"])),
        Value::String(readiness_gates),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ago(seconds: i64) -> String {
        (now() - TimeDelta::seconds(seconds))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    fn d(seconds: i64) -> String {
        human_duration(TimeDelta::seconds(seconds))
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        const MIN: i64 = 60;
        const HOUR: i64 = 3600;
        const DAY: i64 = 24 * HOUR;
        const YEAR: i64 = 365 * DAY;
        assert_eq!(d(-5), "<invalid>");
        assert_eq!(human_duration(TimeDelta::milliseconds(-1500)), "0s");
        assert_eq!(d(0), "0s");
        assert_eq!(d(45), "45s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(2 * MIN), "2m");
        assert_eq!(d(5 * MIN + 30), "5m30s");
        assert_eq!(d(9 * MIN + 59), "9m59s");
        assert_eq!(d(10 * MIN + 30), "10m");
        assert_eq!(d(179 * MIN), "179m");
        assert_eq!(d(3 * HOUR), "3h");
        assert_eq!(d(5 * HOUR + 12 * MIN), "5h12m");
        assert_eq!(d(8 * HOUR + 59 * MIN), "8h");
        assert_eq!(d(47 * HOUR), "47h");
        assert_eq!(d(2 * DAY), "2d");
        assert_eq!(d(3 * DAY + 4 * HOUR), "3d4h");
        assert_eq!(d(8 * DAY + 4 * HOUR), "8d");
        assert_eq!(d(400 * DAY), "400d");
        assert_eq!(d(2 * YEAR), "2y");
        assert_eq!(d(3 * YEAR + 20 * DAY), "3y20d");
        assert_eq!(d(9 * YEAR + 20 * DAY), "9y");
    }

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(wants_table(Some(kubectl)));
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        )));
        assert!(wants_table(Some(
            "application/json; as=Table; g=meta.k8s.io; v=v1"
        )));
        assert!(!wants_table(None));
        assert!(!wants_table(Some("application/json")));
        assert!(!wants_table(Some(
            "application/vnd.kubernetes.protobuf,application/json"
        )));
        assert!(!wants_table(Some(
            "application/json,application/json;as=Table;v=v1;g=meta.k8s.io"
        )));
        assert!(!wants_table(Some(
            "application/json;as=Table;v=v2;g=meta.k8s.io"
        )));
        assert!(!wants_table(Some(
            "application/json;as=Table;v=v1;g=other.io"
        )));
        assert!(wants_table(Some(
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io"
        )));
        assert!(!wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io;q=0,application/json"
        )));
    }

    #[test]
    fn include_object_parsing() {
        assert_eq!(IncludeObject::from_query(None), IncludeObject::Metadata);
        assert_eq!(IncludeObject::from_query(Some("None")), IncludeObject::None);
        assert_eq!(
            IncludeObject::from_query(Some("Object")),
            IncludeObject::Object
        );
        assert_eq!(
            IncludeObject::from_query(Some("Metadata")),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("bogus")),
            IncludeObject::Metadata
        );
    }

    #[test]
    fn namespace_table_shape() {
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "creationTimestamp": ago(5 * 60), "resourceVersion": "7"},
            "status": {"phase": "Active"}
        });
        let list_meta = json!({"resourceVersion": "42"});
        let table = to_table_at(
            "namespaces",
            std::slice::from_ref(&ns),
            list_meta,
            IncludeObject::Metadata,
            true,
            now(),
        );
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"], json!({"resourceVersion": "42"}));
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Status", "Age"]);
        assert_eq!(table["columnDefinitions"][0]["format"], "name");
        assert_eq!(table["columnDefinitions"][0]["priority"], 0);
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["default", "Active", "5m"])
        );
        assert_eq!(
            table["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": ns["metadata"]})
        );

        let table = to_table_at(
            "namespaces",
            std::slice::from_ref(&ns),
            Value::Null,
            IncludeObject::Object,
            false,
            now(),
        );
        assert_eq!(table["columnDefinitions"], json!([]));
        assert_eq!(table["metadata"], json!({}));
        assert_eq!(table["rows"][0]["object"], ns);

        let table = to_table_at(
            "namespaces",
            &[ns],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert!(table["rows"][0].get("object").is_none());
    }

    #[test]
    fn running_pod() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": ago(2 * 86400 + 3 * 3600)},
            "spec": {"nodeName": "node-a", "containers": [{"name": "web"}, {"name": "sidecar"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "web", "ready": true, "restartCount": 2, "state": {"running": {}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(90)}}},
                    {"name": "sidecar", "ready": true, "restartCount": 1, "state": {"running": {}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(600)}}}
                ]
            }
        });
        let table = to_table_at("pods", &[pod], json!({}), IncludeObject::None, true, now());
        let columns: Vec<(&str, i64)> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1)
            ]
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "web-1",
                "2/2",
                "Running",
                "3 (90s ago)",
                "2d3h",
                "10.0.0.5",
                "node-a",
                "<none>",
                "<none>"
            ])
        );
    }

    #[test]
    fn pod_statuses() {
        let cells = |pod: Value| {
            to_table_at("pods", &[pod], json!({}), IncludeObject::None, true, now())["rows"][0]
                ["cells"]
                .clone()
        };
        // No status yet: counts come from the spec.
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(
            cells(pending),
            json!([
                "p",
                "0/1",
                "Pending",
                "0",
                "<unknown>",
                "<none>",
                "<none>",
                "<none>",
                "<none>"
            ])
        );
        let crashing = json!({
            "metadata": {"name": "c"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        assert_eq!(
            cells(crashing).as_array().unwrap()[1..4],
            [json!("0/1"), json!("CrashLoopBackOff"), json!("4")]
        );
        let killed = json!({
            "metadata": {"name": "k"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}
            ]}
        });
        assert_eq!(cells(killed)[2], "Signal:9");
        let init = json!({
            "metadata": {"name": "i"}, "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "setup", "state": {"running": {}}}
            ]}
        });
        assert_eq!(cells(init)[2], "Init:0/1");
        let terminating = json!({
            "metadata": {"name": "t", "deletionTimestamp": ago(1)}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running"}
        });
        assert_eq!(cells(terminating)[2], "Terminating");
        let done = json!({"metadata": {"name": "d"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded"}});
        let table = to_table_at("pods", &[done], json!({}), IncludeObject::None, true, now());
        assert_eq!(table["rows"][0]["conditions"][0]["reason"], "Succeeded");
    }

    #[test]
    fn secrets_configmaps_serviceaccounts() {
        let secret = json!({
            "metadata": {"name": "s", "creationTimestamp": ago(30)},
            "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}
        });
        let table = to_table_at(
            "secrets",
            &[secret],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["s", "kubernetes.io/tls", 2, "30s"])
        );
        let fresh = json!({"metadata": {"name": "f"}, "data": {"a": ""}, "stringData": {"a": "x", "b": "y"}});
        let table = to_table_at(
            "secrets",
            &[fresh],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["f", "Opaque", 2, "<unknown>"])
        );

        let cm = json!({"metadata": {"name": "c", "creationTimestamp": ago(3600)}, "data": {"a": "1"}, "binaryData": {"b": "AA=="}});
        let table = to_table_at(
            "configmaps",
            &[cm],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(table["rows"][0]["cells"], json!(["c", 2, "60m"]));

        let sa = json!({"metadata": {"name": "default", "creationTimestamp": ago(10 * 86400)}});
        let table = to_table_at(
            "serviceaccounts",
            &[sa],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(table["rows"][0]["cells"], json!(["default", 0, "10d"]));
    }

    #[test]
    fn deployments() {
        let deployment = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(7 * 60)},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}, {"name": "log", "image": "busybox"}]}}
            },
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let table = to_table_at(
            "deployments",
            &[deployment],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "web",
                "2/3",
                3,
                2,
                "7m",
                "web,log",
                "nginx:1,busybox",
                "app=web,tier in (a,b)"
            ])
        );
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"] == 0)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Up-to-date", "Available", "Age"]);
    }

    #[test]
    fn events() {
        let event = json!({
            "metadata": {"name": "web.17a"},
            "type": "Warning", "reason": "BackOff", "message": " Back-off restarting \n",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{web}"},
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": ago(600), "lastTimestamp": ago(30), "count": 5
        });
        let table = to_table_at(
            "events",
            &[event],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "30s",
                "Warning",
                "BackOff",
                "pod/web",
                "spec.containers{web}",
                "kubelet, node-a",
                "Back-off restarting",
                "10m",
                5,
                "web.17a"
            ])
        );
        let modern = json!({
            "metadata": {"name": "e"}, "type": "Normal", "reason": "Scheduled", "note": "assigned",
            "regarding": {"kind": "Pod", "name": "web"}, "reportingController": "scheduler",
            "eventTime": "2026-01-10T11:59:00.000000Z"
        });
        let table = to_table_at(
            "events",
            &[modern],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "60s",
                "Normal",
                "Scheduled",
                "pod/web",
                "",
                "scheduler",
                "assigned",
                "60s",
                1,
                "e"
            ])
        );
    }

    #[test]
    fn other_resources_use_the_default_columns() {
        let node =
            json!({"metadata": {"name": "node-a", "creationTimestamp": "2025-03-04T05:06:07Z"}});
        let table = to_table_at(
            "nodes",
            &[node, json!({})],
            json!({}),
            IncludeObject::None,
            true,
            now(),
        );
        assert_eq!(table["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(table["columnDefinitions"][1]["type"], "date");
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["node-a", "2025-03-04T05:06:07Z"])
        );
        assert_eq!(
            table["rows"][1]["cells"],
            json!(["", "0001-01-01T00:00:00Z"])
        );
    }

    #[test]
    fn odd_objects_do_not_panic() {
        for resource in [
            "namespaces",
            "pods",
            "secrets",
            "configmaps",
            "serviceaccounts",
            "events",
            "deployments",
            "x",
        ] {
            for item in [
                json!(null),
                json!(7),
                json!({"metadata": "x", "spec": [], "status": {"containerStatuses": {}}}),
            ] {
                let table = to_table(resource, &[item], json!({}), IncludeObject::Metadata, true);
                assert_eq!(
                    table["rows"][0]["cells"].as_array().unwrap().len(),
                    table["columnDefinitions"].as_array().unwrap().len()
                );
            }
        }
    }
}
