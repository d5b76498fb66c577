//! Decoding of Kubernetes protobuf request bodies into the JSON form the API server works with.
//!
//! client-go (kubectl, client-go based MCP servers) sends typed objects as
//! `application/vnd.kubernetes.protobuf`: the magic prefix `k8s\0` followed by a `runtime.Unknown`
//! envelope whose `raw` field holds the typed object. This module owns turning such a body into the
//! same JSON value a JSON client would have sent (camelCase names, empty fields omitted, bytes as
//! base64, timestamps as RFC 3339), with `apiVersion` and `kind` taken from the envelope.
//!
//! It must never guess: a kind it has no decoder for, or a field of a supported kind that it would
//! otherwise drop, is an error naming the kind, so the double answers 415/400 instead of silently
//! storing a different object than the client sent. It never panics on hostile input.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::authentication::v1 as authn;
use k8s_pb::api::authorization::v1 as authz;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value};

/// The media type of the Kubernetes protobuf encoding.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf-encoded Kubernetes object starts with these four bytes.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("protobuf body does not start with the Kubernetes magic prefix \"k8s\\x00\"")]
    MissingMagic,
    #[error("malformed runtime.Unknown envelope: {0}")]
    Envelope(#[source] prost::DecodeError),
    #[error("protobuf envelope carries no apiVersion/kind")]
    MissingTypeMeta,
    #[error("unsupported protobuf content encoding {0:?}")]
    ContentEncoding(String),
    #[error("the test double cannot decode protobuf objects of apiVersion {api_version:?} kind {kind:?}")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("malformed protobuf {api_version} {kind}: {source}")]
    Object {
        api_version: String,
        kind: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{kind}: fields of {message} that the test double does not decode from protobuf are set; send JSON instead")]
    UnsupportedFields {
        kind: &'static str,
        message: &'static str,
    },
    #[error("{kind}: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// true if a Content-Type header value names the Kubernetes protobuf encoding.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .map(str::trim)
        .is_some_and(|media| media.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE))
}

/// Decode a Kubernetes protobuf request body (the 4-byte magic "k8s\0" + runtime.Unknown envelope) into the JSON
/// form the API server would have received, with apiVersion and kind set.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::MissingMagic)?;
    let unknown = Unknown::decode(envelope).map_err(ProtobufError::Envelope)?;
    if let Some(encoding) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ProtobufError::ContentEncoding(encoding));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let raw = unknown.raw.unwrap_or_default();
    let body = decode_typed(&api_version, &kind, &raw)?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    object.extend(body);
    Ok(Value::Object(object))
}

fn decode_typed(
    api_version: &str,
    kind: &str,
    raw: &[u8],
) -> Result<Map<String, Value>, ProtobufError> {
    fn parse<M: Message + Default>(
        api_version: &str,
        kind: &str,
        raw: &[u8],
    ) -> Result<M, ProtobufError> {
        M::decode(raw).map_err(|source| ProtobufError::Object {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            source,
        })
    }
    macro_rules! typed {
        ($ty:ty, $convert:ident) => {
            $convert(parse::<$ty>(api_version, kind, raw)?)
        };
    }
    match (api_version, kind) {
        ("v1", "Namespace") => typed!(core::Namespace, namespace),
        ("v1", "ConfigMap") => typed!(core::ConfigMap, config_map),
        ("v1", "Secret") => typed!(core::Secret, secret),
        ("v1", "ServiceAccount") => typed!(core::ServiceAccount, service_account),
        ("v1", "Pod") => typed!(core::Pod, pod),
        ("apps/v1", "Deployment") => typed!(apps::Deployment, deployment),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            typed!(authz::SelfSubjectAccessReview, self_subject_access_review)
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            typed!(authz::SubjectAccessReview, subject_access_review)
        }
        ("authorization.k8s.io/v1", "LocalSubjectAccessReview") => {
            typed!(authz::LocalSubjectAccessReview, local_subject_access_review)
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            typed!(authz::SelfSubjectRulesReview, self_subject_rules_review)
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            typed!(authn::SelfSubjectReview, self_subject_review)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => typed!(authn::TokenRequest, token_request),
        ("rbac.authorization.k8s.io/v1", "Role") => typed!(rbac::Role, role),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed!(rbac::ClusterRole, cluster_role),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed!(rbac::RoleBinding, role_binding),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed!(rbac::ClusterRoleBinding, cluster_role_binding)
        }
        // DeleteOptions is registered in every group version, so typed clients label it with the
        // group version of the resource they delete.
        (_, "DeleteOptions") => typed!(meta::DeleteOptions, delete_options),
        _ => Err(ProtobufError::UnsupportedKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }),
    }
}

/// Builds a JSON object following Go's `encoding/json` conventions of the Kubernetes API types.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Self::default()
    }

    fn put(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.to_owned(), value);
        self
    }

    /// A string with `omitempty`.
    fn str(self, key: &str, value: Option<String>) -> Self {
        match value {
            Some(v) if !v.is_empty() => self.put(key, Value::String(v)),
            _ => self,
        }
    }

    /// A string without `omitempty` (always present once the protobuf carried it).
    fn str_always(self, key: &str, value: Option<String>) -> Self {
        self.put(key, Value::String(value.unwrap_or_default()))
    }

    /// A pointer field (`*bool`, `*int32`, ...): present exactly when set.
    fn opt<T: Into<Value>>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.put(key, v.into()),
            None => self,
        }
    }

    /// A `bool` with `omitempty`.
    fn flag(self, key: &str, value: Option<bool>) -> Self {
        if value == Some(true) {
            self.put(key, Value::Bool(true))
        } else {
            self
        }
    }

    /// An integer with `omitempty`.
    fn int<T: Into<i64>>(self, key: &str, value: Option<T>) -> Self {
        match value.map(Into::into) {
            Some(v) if v != 0 => self.put(key, v.into()),
            _ => self,
        }
    }

    fn strs(self, key: &str, values: Vec<String>) -> Self {
        if values.is_empty() {
            self
        } else {
            self.put(key, values.into())
        }
    }

    fn str_map(self, key: &str, map: BTreeMap<String, String>) -> Self {
        if map.is_empty() {
            self
        } else {
            self.put(
                key,
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                ),
            )
        }
    }

    /// `map[string][]byte`: Go's JSON encoding writes each value as standard base64.
    fn bytes_map(self, key: &str, map: BTreeMap<String, Vec<u8>>) -> Self {
        if map.is_empty() {
            return self;
        }
        let engine = &base64::engine::general_purpose::STANDARD;
        let map = map
            .into_iter()
            .map(|(k, v)| (k, Value::String(engine.encode(v))))
            .collect();
        self.put(key, Value::Object(map))
    }

    fn list(self, key: &str, values: Vec<Value>) -> Self {
        if values.is_empty() {
            self
        } else {
            self.put(key, Value::Array(values))
        }
    }

    fn obj(self, key: &str, value: Option<Value>) -> Self {
        self.opt(key, value)
    }

    fn time(self, key: &str, value: Option<meta::Time>) -> Self {
        let rendered = value.and_then(|t| rfc3339(t.seconds, t.nanos, chrono::SecondsFormat::Secs));
        self.opt(key, rendered)
    }

    fn build(self) -> Value {
        Value::Object(self.0)
    }

    fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// metav1.Time marshals a zero time as an empty message, so a missing `seconds` means "unset".
fn rfc3339(
    seconds: Option<i64>,
    nanos: Option<i32>,
    format: chrono::SecondsFormat,
) -> Option<String> {
    let seconds = seconds?;
    let nanos = u32::try_from(nanos.unwrap_or(0)).unwrap_or(0);
    chrono::DateTime::from_timestamp(seconds, nanos).map(|t| t.to_rfc3339_opts(format, true))
}

/// Fails when `rest` (a message whose supported fields were taken out) still carries data.
///
/// gogo-protobuf writes every non-pointer field even when it holds its zero value, so "empty" here
/// means "every field is zero", not "no field present".
fn ensure_consumed<M: Message>(
    kind: &'static str,
    message: &'static str,
    rest: &M,
) -> Result<(), ProtobufError> {
    if wire_is_zero(&rest.encode_to_vec()) {
        Ok(())
    } else {
        Err(ProtobufError::UnsupportedFields { kind, message })
    }
}

fn wire_is_zero(mut buf: &[u8]) -> bool {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn take<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        if buf.len() < len {
            return None;
        }
        let (head, rest) = buf.split_at(len);
        *buf = rest;
        Some(head)
    }
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return false;
        };
        let zero = match key & 0x7 {
            0 => varint(&mut buf) == Some(0),
            1 => take(&mut buf, 8).is_some_and(|b| b.iter().all(|&x| x == 0)),
            5 => take(&mut buf, 4).is_some_and(|b| b.iter().all(|&x| x == 0)),
            2 => usize::try_from(varint(&mut buf).unwrap_or(u64::MAX))
                .ok()
                .and_then(|len| take(&mut buf, len))
                .is_some_and(|payload| payload.is_empty() || wire_is_zero(payload)),
            _ => false,
        };
        if !zero || key >> 3 == 0 {
            return false;
        }
    }
    true
}

fn object_meta(
    kind: &'static str,
    m: Option<meta::ObjectMeta>,
) -> Result<Option<Value>, ProtobufError> {
    let Some(m) = m else { return Ok(None) };
    let owner_references = m
        .owner_references
        .into_iter()
        .map(owner_reference)
        .collect();
    let managed_fields = m
        .managed_fields
        .into_iter()
        .map(|e| managed_fields_entry(kind, e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        Obj::new()
            .str("name", m.name)
            .str("generateName", m.generate_name)
            .str("namespace", m.namespace)
            .str("selfLink", m.self_link)
            .str("uid", m.uid)
            .str("resourceVersion", m.resource_version)
            .int("generation", m.generation)
            .time("creationTimestamp", m.creation_timestamp)
            .time("deletionTimestamp", m.deletion_timestamp)
            .opt(
                "deletionGracePeriodSeconds",
                m.deletion_grace_period_seconds,
            )
            .str_map("labels", m.labels)
            .str_map("annotations", m.annotations)
            .list("ownerReferences", owner_references)
            .strs("finalizers", m.finalizers)
            .list("managedFields", managed_fields)
            .build(),
    ))
}

fn owner_reference(r: meta::OwnerReference) -> Value {
    Obj::new()
        .str_always("apiVersion", r.api_version)
        .str_always("kind", r.kind)
        .str_always("name", r.name)
        .str_always("uid", r.uid)
        .opt("controller", r.controller)
        .opt("blockOwnerDeletion", r.block_owner_deletion)
        .build()
}

fn managed_fields_entry(
    kind: &'static str,
    e: meta::ManagedFieldsEntry,
) -> Result<Value, ProtobufError> {
    let fields = match e.fields_v1.and_then(|f| f.raw) {
        Some(raw) if !raw.is_empty() => Some(serde_json::from_slice::<Value>(&raw).map_err(
            |err| ProtobufError::Invalid {
                kind,
                reason: format!("managedFields fieldsV1 is not JSON: {err}"),
            },
        )?),
        _ => None,
    };
    Ok(Obj::new()
        .str("manager", e.manager)
        .str("operation", e.operation)
        .str("apiVersion", e.api_version)
        .time("time", e.time)
        .str("fieldsType", e.fields_type)
        .obj("fieldsV1", fields)
        .str("subresource", e.subresource)
        .build())
}

fn label_selector(s: meta::LabelSelector) -> Value {
    let expressions = s
        .match_expressions
        .into_iter()
        .map(|r| {
            Obj::new()
                .str_always("key", r.key)
                .str_always("operator", r.operator)
                .strs("values", r.values)
                .build()
        })
        .collect();
    Obj::new()
        .str_map("matchLabels", s.match_labels)
        .list("matchExpressions", expressions)
        .build()
}

fn quantity(q: Quantity) -> Value {
    Value::String(q.string.unwrap_or_default())
}

fn quantity_map(map: BTreeMap<String, Quantity>) -> Value {
    Value::Object(map.into_iter().map(|(k, q)| (k, quantity(q))).collect())
}

fn int_or_string(v: IntOrString) -> Value {
    // intstr.Type: 0 = Int, 1 = String.
    if v.r#type == Some(1) {
        Value::String(v.str_val.unwrap_or_default())
    } else {
        Value::from(v.int_val.unwrap_or(0))
    }
}

fn local_name(r: Option<core::LocalObjectReference>) -> Option<String> {
    r.and_then(|r| r.name)
}

// ---- core/v1 -------------------------------------------------------------------------------------

fn namespace(ns: core::Namespace) -> Result<Map<String, Value>, ProtobufError> {
    const KIND: &str = "Namespace";
    let spec = ns
        .spec
        .map(|s| Obj::new().strs("finalizers", s.finalizers).build());
    let status = match ns.status {
        Some(mut s) => {
            let phase = s.phase.take();
            ensure_consumed(KIND, "NamespaceStatus", &s)?;
            Some(Obj::new().str("phase", phase).build())
        }
        None => None,
    };
    Ok(Obj::new()
        .obj("metadata", object_meta(KIND, ns.metadata)?)
        .obj("spec", spec)
        .obj("status", status)
        .into_map())
}

fn config_map(cm: core::ConfigMap) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("ConfigMap", cm.metadata)?)
        .opt("immutable", cm.immutable)
        .str_map("data", cm.data)
        .bytes_map("binaryData", cm.binary_data)
        .into_map())
}

fn secret(s: core::Secret) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("Secret", s.metadata)?)
        .opt("immutable", s.immutable)
        .bytes_map("data", s.data)
        .str_map("stringData", s.string_data)
        .str("type", s.r#type)
        .into_map())
}

fn object_reference(r: core::ObjectReference) -> Value {
    Obj::new()
        .str("kind", r.kind)
        .str("namespace", r.namespace)
        .str("name", r.name)
        .str("uid", r.uid)
        .str("apiVersion", r.api_version)
        .str("resourceVersion", r.resource_version)
        .str("fieldPath", r.field_path)
        .build()
}

fn local_object_reference(r: core::LocalObjectReference) -> Value {
    Obj::new().str("name", r.name).build()
}

fn service_account(sa: core::ServiceAccount) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("ServiceAccount", sa.metadata)?)
        .list(
            "secrets",
            sa.secrets.into_iter().map(object_reference).collect(),
        )
        .list(
            "imagePullSecrets",
            sa.image_pull_secrets
                .into_iter()
                .map(local_object_reference)
                .collect(),
        )
        .opt(
            "automountServiceAccountToken",
            sa.automount_service_account_token,
        )
        .into_map())
}

fn pod(p: core::Pod) -> Result<Map<String, Value>, ProtobufError> {
    const KIND: &str = "Pod";
    let spec = p.spec.map(|s| pod_spec(KIND, s)).transpose()?;
    let status = p.status.map(|s| pod_status(KIND, s)).transpose()?;
    Ok(Obj::new()
        .obj("metadata", object_meta(KIND, p.metadata)?)
        .obj("spec", spec)
        .obj("status", status)
        .into_map())
}

/// The parts of a PodSpec that `kubectl run`, `kubectl create deployment` and typical manifests use.
fn pod_spec(kind: &'static str, mut s: core::PodSpec) -> Result<Value, ProtobufError> {
    let containers = std::mem::take(&mut s.containers)
        .into_iter()
        .map(|c| container(kind, c))
        .collect::<Result<Vec<_>, _>>()?;
    let init_containers = std::mem::take(&mut s.init_containers)
        .into_iter()
        .map(|c| container(kind, c))
        .collect::<Result<Vec<_>, _>>()?;
    let volumes = std::mem::take(&mut s.volumes)
        .into_iter()
        .map(|v| volume(kind, v))
        .collect::<Result<Vec<_>, _>>()?;
    let tolerations = std::mem::take(&mut s.tolerations)
        .into_iter()
        .map(|t| {
            Obj::new()
                .str("key", t.key)
                .str("operator", t.operator)
                .str("value", t.value)
                .str("effect", t.effect)
                .opt("tolerationSeconds", t.toleration_seconds)
                .build()
        })
        .collect();
    let image_pull_secrets = std::mem::take(&mut s.image_pull_secrets)
        .into_iter()
        .map(local_object_reference)
        .collect();
    let json = Obj::new()
        .list("volumes", volumes)
        .list("initContainers", init_containers)
        .put("containers", Value::Array(containers))
        .str("restartPolicy", s.restart_policy.take())
        .opt(
            "terminationGracePeriodSeconds",
            s.termination_grace_period_seconds.take(),
        )
        .opt("activeDeadlineSeconds", s.active_deadline_seconds.take())
        .str("dnsPolicy", s.dns_policy.take())
        .str_map("nodeSelector", std::mem::take(&mut s.node_selector))
        .str("serviceAccountName", s.service_account_name.take())
        .str("serviceAccount", s.service_account.take())
        .opt(
            "automountServiceAccountToken",
            s.automount_service_account_token.take(),
        )
        .str("nodeName", s.node_name.take())
        .flag("hostNetwork", s.host_network.take())
        .flag("hostPID", s.host_pid.take())
        .flag("hostIPC", s.host_ipc.take())
        .opt("shareProcessNamespace", s.share_process_namespace.take())
        .list("imagePullSecrets", image_pull_secrets)
        .str("hostname", s.hostname.take())
        .str("subdomain", s.subdomain.take())
        .str("schedulerName", s.scheduler_name.take())
        .list("tolerations", tolerations)
        .str("priorityClassName", s.priority_class_name.take())
        .opt("priority", s.priority.take())
        .opt("runtimeClassName", s.runtime_class_name.take())
        .opt("enableServiceLinks", s.enable_service_links.take())
        .opt("preemptionPolicy", s.preemption_policy.take())
        .build();
    // An empty securityContext is what kubectl's generators leave behind; it carries nothing.
    if s.security_context
        .as_ref()
        .is_some_and(|c| wire_is_zero(&c.encode_to_vec()))
    {
        s.security_context = None;
    }
    ensure_consumed(kind, "PodSpec", &s)?;
    Ok(json)
}

fn container(kind: &'static str, mut c: core::Container) -> Result<Value, ProtobufError> {
    let ports = std::mem::take(&mut c.ports)
        .into_iter()
        .map(|p| {
            Obj::new()
                .str("name", p.name)
                .int("hostPort", p.host_port)
                .put("containerPort", p.container_port.unwrap_or(0).into())
                .str("protocol", p.protocol)
                .str("hostIP", p.host_ip)
                .build()
        })
        .collect();
    let env = std::mem::take(&mut c.env)
        .into_iter()
        .map(|e| env_var(kind, e))
        .collect::<Result<Vec<_>, _>>()?;
    let env_from = std::mem::take(&mut c.env_from)
        .into_iter()
        .map(|e| {
            let config_map_ref = e.config_map_ref.map(|r| {
                Obj::new()
                    .str("name", local_name(r.local_object_reference))
                    .opt("optional", r.optional)
                    .build()
            });
            let secret_ref = e.secret_ref.map(|r| {
                Obj::new()
                    .str("name", local_name(r.local_object_reference))
                    .opt("optional", r.optional)
                    .build()
            });
            Obj::new()
                .str("prefix", e.prefix)
                .obj("configMapRef", config_map_ref)
                .obj("secretRef", secret_ref)
                .build()
        })
        .collect();
    let resources = c
        .resources
        .take()
        .map(|r| resource_requirements(kind, r))
        .transpose()?;
    let volume_mounts = std::mem::take(&mut c.volume_mounts)
        .into_iter()
        .map(|m| {
            Obj::new()
                .str_always("name", m.name)
                .flag("readOnly", m.read_only)
                .opt("recursiveReadOnly", m.recursive_read_only)
                .str_always("mountPath", m.mount_path)
                .str("subPath", m.sub_path)
                .opt("mountPropagation", m.mount_propagation)
                .str("subPathExpr", m.sub_path_expr)
                .build()
        })
        .collect();
    let json = Obj::new()
        .str_always("name", c.name.take())
        .str("image", c.image.take())
        .strs("command", std::mem::take(&mut c.command))
        .strs("args", std::mem::take(&mut c.args))
        .str("workingDir", c.working_dir.take())
        .list("ports", ports)
        .list("envFrom", env_from)
        .list("env", env)
        .obj("resources", resources)
        .opt("restartPolicy", c.restart_policy.take())
        .list("volumeMounts", volume_mounts)
        .str("terminationMessagePath", c.termination_message_path.take())
        .str(
            "terminationMessagePolicy",
            c.termination_message_policy.take(),
        )
        .str("imagePullPolicy", c.image_pull_policy.take())
        .flag("stdin", c.stdin.take())
        .flag("stdinOnce", c.stdin_once.take())
        .flag("tty", c.tty.take())
        .build();
    if c.security_context
        .as_ref()
        .is_some_and(|sc| wire_is_zero(&sc.encode_to_vec()))
    {
        c.security_context = None;
    }
    ensure_consumed(kind, "Container", &c)?;
    Ok(json)
}

fn env_var(kind: &'static str, e: core::EnvVar) -> Result<Value, ProtobufError> {
    let value_from = match e.value_from {
        Some(mut src) => {
            let field_ref = src.field_ref.take().map(|f| {
                Obj::new()
                    .str("apiVersion", f.api_version)
                    .str_always("fieldPath", f.field_path)
                    .build()
            });
            let resource_field_ref = src.resource_field_ref.take().map(|r| {
                Obj::new()
                    .str("containerName", r.container_name)
                    .str_always("resource", r.resource)
                    .obj("divisor", r.divisor.map(quantity))
                    .build()
            });
            let config_map_key_ref = src.config_map_key_ref.take().map(|r| {
                Obj::new()
                    .str("name", local_name(r.local_object_reference))
                    .str_always("key", r.key)
                    .opt("optional", r.optional)
                    .build()
            });
            let secret_key_ref = src.secret_key_ref.take().map(|r| {
                Obj::new()
                    .str("name", local_name(r.local_object_reference))
                    .str_always("key", r.key)
                    .opt("optional", r.optional)
                    .build()
            });
            ensure_consumed(kind, "EnvVarSource", &src)?;
            Some(
                Obj::new()
                    .obj("fieldRef", field_ref)
                    .obj("resourceFieldRef", resource_field_ref)
                    .obj("configMapKeyRef", config_map_key_ref)
                    .obj("secretKeyRef", secret_key_ref)
                    .build(),
            )
        }
        None => None,
    };
    Ok(Obj::new()
        .str_always("name", e.name)
        .str("value", e.value)
        .obj("valueFrom", value_from)
        .build())
}

fn resource_requirements(
    kind: &'static str,
    mut r: core::ResourceRequirements,
) -> Result<Value, ProtobufError> {
    let limits = std::mem::take(&mut r.limits);
    let requests = std::mem::take(&mut r.requests);
    ensure_consumed(kind, "ResourceRequirements", &r)?;
    let mut json = Obj::new();
    if !limits.is_empty() {
        json = json.put("limits", quantity_map(limits));
    }
    if !requests.is_empty() {
        json = json.put("requests", quantity_map(requests));
    }
    Ok(json.build())
}

fn key_to_paths(items: Vec<core::KeyToPath>) -> Vec<Value> {
    items
        .into_iter()
        .map(|k| {
            Obj::new()
                .str_always("key", k.key)
                .str_always("path", k.path)
                .opt("mode", k.mode)
                .build()
        })
        .collect()
}

fn volume(kind: &'static str, v: core::Volume) -> Result<Value, ProtobufError> {
    let mut json = Obj::new().str_always("name", v.name);
    if let Some(mut src) = v.volume_source {
        if let Some(dir) = src.empty_dir.take() {
            json = json.put(
                "emptyDir",
                Obj::new()
                    .str("medium", dir.medium)
                    .obj("sizeLimit", dir.size_limit.map(quantity))
                    .build(),
            );
        }
        if let Some(cm) = src.config_map.take() {
            json = json.put(
                "configMap",
                Obj::new()
                    .str("name", local_name(cm.local_object_reference))
                    .list("items", key_to_paths(cm.items))
                    .opt("defaultMode", cm.default_mode)
                    .opt("optional", cm.optional)
                    .build(),
            );
        }
        if let Some(secret) = src.secret.take() {
            json = json.put(
                "secret",
                Obj::new()
                    .str("secretName", secret.secret_name)
                    .list("items", key_to_paths(secret.items))
                    .opt("defaultMode", secret.default_mode)
                    .opt("optional", secret.optional)
                    .build(),
            );
        }
        ensure_consumed(kind, "VolumeSource", &src)?;
    }
    Ok(json.build())
}

fn pod_status(kind: &'static str, mut s: core::PodStatus) -> Result<Value, ProtobufError> {
    let conditions = std::mem::take(&mut s.conditions)
        .into_iter()
        .map(|c| {
            Obj::new()
                .str_always("type", c.r#type)
                .int("observedGeneration", c.observed_generation)
                .str_always("status", c.status)
                .time("lastProbeTime", c.last_probe_time)
                .time("lastTransitionTime", c.last_transition_time)
                .str("reason", c.reason)
                .str("message", c.message)
                .build()
        })
        .collect();
    let json = Obj::new()
        .int("observedGeneration", s.observed_generation.take())
        .str("phase", s.phase.take())
        .list("conditions", conditions)
        .str("message", s.message.take())
        .str("reason", s.reason.take())
        .str("nominatedNodeName", s.nominated_node_name.take())
        .str("hostIP", s.host_ip.take())
        .str("podIP", s.pod_ip.take())
        .time("startTime", s.start_time.take())
        .str("qosClass", s.qos_class.take())
        .build();
    ensure_consumed(kind, "PodStatus", &s)?;
    Ok(json)
}

// ---- apps/v1 -------------------------------------------------------------------------------------

fn deployment(d: apps::Deployment) -> Result<Map<String, Value>, ProtobufError> {
    const KIND: &str = "Deployment";
    let spec = match d.spec {
        Some(s) => {
            let template = match s.template {
                Some(t) => Some(
                    Obj::new()
                        .obj("metadata", object_meta(KIND, t.metadata)?)
                        .obj("spec", t.spec.map(|p| pod_spec(KIND, p)).transpose()?)
                        .build(),
                ),
                None => None,
            };
            let strategy = s.strategy.map(|st| {
                let rolling = st.rolling_update.map(|r| {
                    Obj::new()
                        .obj("maxUnavailable", r.max_unavailable.map(int_or_string))
                        .obj("maxSurge", r.max_surge.map(int_or_string))
                        .build()
                });
                Obj::new()
                    .str("type", st.r#type)
                    .obj("rollingUpdate", rolling)
                    .build()
            });
            Some(
                Obj::new()
                    .opt("replicas", s.replicas)
                    .obj("selector", s.selector.map(label_selector))
                    .obj("template", template)
                    .obj("strategy", strategy)
                    .int("minReadySeconds", s.min_ready_seconds)
                    .opt("revisionHistoryLimit", s.revision_history_limit)
                    .flag("paused", s.paused)
                    .opt("progressDeadlineSeconds", s.progress_deadline_seconds)
                    .build(),
            )
        }
        None => None,
    };
    let status = match d.status {
        Some(mut s) => {
            let json = Obj::new()
                .int("observedGeneration", s.observed_generation.take())
                .int("replicas", s.replicas.take())
                .int("updatedReplicas", s.updated_replicas.take())
                .int("readyReplicas", s.ready_replicas.take())
                .int("availableReplicas", s.available_replicas.take())
                .int("unavailableReplicas", s.unavailable_replicas.take())
                .opt("terminatingReplicas", s.terminating_replicas.take())
                .opt("collisionCount", s.collision_count.take())
                .build();
            ensure_consumed(KIND, "DeploymentStatus", &s)?;
            Some(json)
        }
        None => None,
    };
    Ok(Obj::new()
        .obj("metadata", object_meta(KIND, d.metadata)?)
        .obj("spec", spec)
        .obj("status", status)
        .into_map())
}

// ---- authorization.k8s.io/v1 ---------------------------------------------------------------------

fn selector_requirements(requirements: Vec<meta::FieldSelectorRequirement>) -> Vec<Value> {
    requirements
        .into_iter()
        .map(|r| {
            Obj::new()
                .str_always("key", r.key)
                .str_always("operator", r.operator)
                .strs("values", r.values)
                .build()
        })
        .collect()
}

fn resource_attributes(a: authz::ResourceAttributes) -> Value {
    let field_selector = a.field_selector.map(|f| {
        Obj::new()
            .str("rawSelector", f.raw_selector)
            .list("requirements", selector_requirements(f.requirements))
            .build()
    });
    let label_selector = a.label_selector.map(|l| {
        let requirements = l
            .requirements
            .into_iter()
            .map(|r| {
                Obj::new()
                    .str_always("key", r.key)
                    .str_always("operator", r.operator)
                    .strs("values", r.values)
                    .build()
            })
            .collect();
        Obj::new()
            .str("rawSelector", l.raw_selector)
            .list("requirements", requirements)
            .build()
    });
    Obj::new()
        .str("namespace", a.namespace)
        .str("verb", a.verb)
        .str("group", a.group)
        .str("version", a.version)
        .str("resource", a.resource)
        .str("subresource", a.subresource)
        .str("name", a.name)
        .obj("fieldSelector", field_selector)
        .obj("labelSelector", label_selector)
        .build()
}

fn non_resource_attributes(a: authz::NonResourceAttributes) -> Value {
    Obj::new().str("path", a.path).str("verb", a.verb).build()
}

fn access_review_status(s: authz::SubjectAccessReviewStatus) -> Value {
    Obj::new()
        .put("allowed", s.allowed.unwrap_or(false).into())
        .flag("denied", s.denied)
        .str("reason", s.reason)
        .str("evaluationError", s.evaluation_error)
        .build()
}

fn extra_map(extra: BTreeMap<String, authz::ExtraValue>) -> Value {
    Value::Object(
        extra
            .into_iter()
            .map(|(k, v)| (k, Value::from(v.items)))
            .collect(),
    )
}

fn self_subject_access_review(
    r: authz::SelfSubjectAccessReview,
) -> Result<Map<String, Value>, ProtobufError> {
    let spec = r.spec.map(|s| {
        Obj::new()
            .obj(
                "resourceAttributes",
                s.resource_attributes.map(resource_attributes),
            )
            .obj(
                "nonResourceAttributes",
                s.non_resource_attributes.map(non_resource_attributes),
            )
            .build()
    });
    Ok(Obj::new()
        .obj(
            "metadata",
            object_meta("SelfSubjectAccessReview", r.metadata)?,
        )
        .obj("spec", spec)
        .obj("status", r.status.map(access_review_status))
        .into_map())
}

fn subject_access_review_spec(s: authz::SubjectAccessReviewSpec) -> Value {
    let mut json = Obj::new()
        .obj(
            "resourceAttributes",
            s.resource_attributes.map(resource_attributes),
        )
        .obj(
            "nonResourceAttributes",
            s.non_resource_attributes.map(non_resource_attributes),
        )
        .str("user", s.user)
        .strs("groups", s.groups);
    if !s.extra.is_empty() {
        json = json.put("extra", extra_map(s.extra));
    }
    json.str("uid", s.uid).build()
}

fn subject_access_review(
    r: authz::SubjectAccessReview,
) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("SubjectAccessReview", r.metadata)?)
        .obj("spec", r.spec.map(subject_access_review_spec))
        .obj("status", r.status.map(access_review_status))
        .into_map())
}

fn local_subject_access_review(
    r: authz::LocalSubjectAccessReview,
) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj(
            "metadata",
            object_meta("LocalSubjectAccessReview", r.metadata)?,
        )
        .obj("spec", r.spec.map(subject_access_review_spec))
        .obj("status", r.status.map(access_review_status))
        .into_map())
}

fn self_subject_rules_review(
    r: authz::SelfSubjectRulesReview,
) -> Result<Map<String, Value>, ProtobufError> {
    const KIND: &str = "SelfSubjectRulesReview";
    if let Some(status) = &r.status {
        // A client never sends rules; refusing them keeps the double from echoing forged rules.
        ensure_consumed(KIND, "SubjectRulesReviewStatus", status)?;
    }
    let spec = r
        .spec
        .map(|s| Obj::new().str("namespace", s.namespace).build());
    Ok(Obj::new()
        .obj("metadata", object_meta(KIND, r.metadata)?)
        .obj("spec", spec)
        .into_map())
}

// ---- authentication.k8s.io/v1 --------------------------------------------------------------------

fn self_subject_review(r: authn::SelfSubjectReview) -> Result<Map<String, Value>, ProtobufError> {
    let status = r.status.map(|s| {
        let user_info = s.user_info.map(|u| {
            let mut json = Obj::new()
                .str("username", u.username)
                .str("uid", u.uid)
                .strs("groups", u.groups);
            if !u.extra.is_empty() {
                let extra = u
                    .extra
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v.items)))
                    .collect();
                json = json.put("extra", Value::Object(extra));
            }
            json.build()
        });
        Obj::new().obj("userInfo", user_info).build()
    });
    Ok(Obj::new()
        .obj("metadata", object_meta("SelfSubjectReview", r.metadata)?)
        .obj("status", status)
        .into_map())
}

fn token_request(r: authn::TokenRequest) -> Result<Map<String, Value>, ProtobufError> {
    let spec = r.spec.map(|s| {
        let bound = s.bound_object_ref.map(|b| {
            Obj::new()
                .str("kind", b.kind)
                .str("apiVersion", b.api_version)
                .str("name", b.name)
                .str("uid", b.u_id)
                .build()
        });
        Obj::new()
            .put("audiences", Value::from(s.audiences))
            .opt("expirationSeconds", s.expiration_seconds)
            .obj("boundObjectRef", bound)
            .build()
    });
    let status = r.status.map(|s| {
        Obj::new()
            .str_always("token", s.token)
            .time("expirationTimestamp", s.expiration_timestamp)
            .build()
    });
    Ok(Obj::new()
        .obj("metadata", object_meta("TokenRequest", r.metadata)?)
        .obj("spec", spec)
        .obj("status", status)
        .into_map())
}

// ---- rbac.authorization.k8s.io/v1 ----------------------------------------------------------------

fn policy_rules(rules: Vec<rbac::PolicyRule>) -> Value {
    Value::Array(
        rules
            .into_iter()
            .map(|r| {
                Obj::new()
                    .put("verbs", Value::from(r.verbs))
                    .strs("apiGroups", r.api_groups)
                    .strs("resources", r.resources)
                    .strs("resourceNames", r.resource_names)
                    .strs("nonResourceURLs", r.non_resource_ur_ls)
                    .build()
            })
            .collect(),
    )
}

fn subjects(subjects: Vec<rbac::Subject>) -> Vec<Value> {
    subjects
        .into_iter()
        .map(|s| {
            Obj::new()
                .str_always("kind", s.kind)
                .str("apiGroup", s.api_group)
                .str_always("name", s.name)
                .str("namespace", s.namespace)
                .build()
        })
        .collect()
}

fn role_ref(r: rbac::RoleRef) -> Value {
    Obj::new()
        .str_always("apiGroup", r.api_group)
        .str_always("kind", r.kind)
        .str_always("name", r.name)
        .build()
}

fn role(r: rbac::Role) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("Role", r.metadata)?)
        .put("rules", policy_rules(r.rules))
        .into_map())
}

fn cluster_role(r: rbac::ClusterRole) -> Result<Map<String, Value>, ProtobufError> {
    const KIND: &str = "ClusterRole";
    let aggregation_rule = match r.aggregation_rule {
        Some(a) => Some(
            Obj::new()
                .list(
                    "clusterRoleSelectors",
                    a.cluster_role_selectors
                        .into_iter()
                        .map(label_selector)
                        .collect(),
                )
                .build(),
        ),
        None => None,
    };
    Ok(Obj::new()
        .obj("metadata", object_meta(KIND, r.metadata)?)
        .put("rules", policy_rules(r.rules))
        .obj("aggregationRule", aggregation_rule)
        .into_map())
}

fn role_binding(b: rbac::RoleBinding) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("RoleBinding", b.metadata)?)
        .list("subjects", subjects(b.subjects))
        .obj("roleRef", b.role_ref.map(role_ref))
        .into_map())
}

fn cluster_role_binding(b: rbac::ClusterRoleBinding) -> Result<Map<String, Value>, ProtobufError> {
    Ok(Obj::new()
        .obj("metadata", object_meta("ClusterRoleBinding", b.metadata)?)
        .list("subjects", subjects(b.subjects))
        .obj("roleRef", b.role_ref.map(role_ref))
        .into_map())
}

// ---- meta.k8s.io/v1 ------------------------------------------------------------------------------

fn delete_options(o: meta::DeleteOptions) -> Result<Map<String, Value>, ProtobufError> {
    let preconditions = o.preconditions.map(|p| {
        Obj::new()
            .opt("uid", p.uid)
            .opt("resourceVersion", p.resource_version)
            .build()
    });
    Ok(Obj::new()
        .opt("gracePeriodSeconds", o.grace_period_seconds)
        .obj("preconditions", preconditions)
        .opt("orphanDependents", o.orphan_dependents)
        .opt("propagationPolicy", o.propagation_policy)
        .strs("dryRun", o.dry_run)
        .opt(
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            o.ignore_store_read_error_with_cluster_breaking_potential,
        )
        .into_map())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
    use serde_json::json;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    /// ObjectMeta as gogo-protobuf writes it for a fresh object: every non-pointer field present.
    fn meta_named(name: &str, namespace: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(namespace.into()),
            self_link: Some(String::new()),
            uid: Some(String::new()),
            resource_version: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }
    }

    #[test]
    fn content_type_detection() {
        assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(is_protobuf(
            "Application/VND.Kubernetes.Protobuf ; charset=utf-8"
        ));
        assert!(!is_protobuf("application/json"));
        assert!(!is_protobuf("application/vnd.kubernetes.protobuf.extra"));
        assert!(!is_protobuf(""));
    }

    #[test]
    fn namespace_as_kubectl_creates_it() {
        let ns = core::Namespace {
            metadata: Some(meta_named("team-a", "")),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus {
                phase: Some(String::new()),
                conditions: vec![],
            }),
        };
        let got = decode_object(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn config_map_with_binary_data() {
        let mut meta = meta_named("settings", "default");
        meta.labels.insert("app".into(), "web".into());
        meta.annotations.insert("note".into(), "x".into());
        meta.creation_timestamp = Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(0),
        });
        let cm = core::ConfigMap {
            metadata: Some(meta),
            immutable: None,
            data: [("a".to_string(), "1".to_string())].into(),
            binary_data: [("bin".to_string(), vec![0u8, 255, 1])].into(),
        };
        let got = decode_object(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "settings", "namespace": "default",
                    "creationTimestamp": "2023-11-14T22:13:20Z",
                    "labels": {"app": "web"}, "annotations": {"note": "x"}
                },
                "data": {"a": "1"},
                "binaryData": {"bin": "AP8B"}
            })
        );
    }

    #[test]
    fn secret_data_is_base64_in_json() {
        let s = core::Secret {
            metadata: Some(meta_named("creds", "default")),
            immutable: Some(true),
            data: [("password".to_string(), b"s3cr3t".to_vec())].into(),
            string_data: [("user".to_string(), "admin".to_string())].into(),
            r#type: Some("Opaque".into()),
        };
        let got = decode_object(&envelope("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "creds", "namespace": "default"},
                "immutable": true,
                "data": {"password": "czNjcjN0"},
                "stringData": {"user": "admin"},
                "type": "Opaque"
            })
        );
    }

    #[test]
    fn service_account_with_owner_reference() {
        let mut meta = meta_named("robot", "ci");
        meta.owner_references.push(meta::OwnerReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some("owner".into()),
            uid: Some("1234".into()),
            controller: Some(true),
            block_owner_deletion: None,
        });
        let sa = core::ServiceAccount {
            metadata: Some(meta),
            secrets: vec![],
            image_pull_secrets: vec![core::LocalObjectReference {
                name: Some("pull".into()),
            }],
            automount_service_account_token: Some(false),
        };
        let got = decode_object(&envelope("v1", "ServiceAccount", sa.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {
                    "name": "robot", "namespace": "ci",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "1234", "controller": true}]
                },
                "imagePullSecrets": [{"name": "pull"}],
                "automountServiceAccountToken": false
            })
        );
    }

    #[test]
    fn self_subject_access_review_from_can_i() {
        let review = authz::SelfSubjectAccessReview {
            metadata: Some(meta_named("", "")),
            spec: Some(authz::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authz::ResourceAttributes {
                    namespace: Some("default".into()),
                    verb: Some("list".into()),
                    group: Some(String::new()),
                    version: Some(String::new()),
                    resource: Some("pods".into()),
                    subresource: Some(String::new()),
                    name: Some(String::new()),
                    field_selector: None,
                    label_selector: None,
                }),
                non_resource_attributes: None,
            }),
            status: Some(authz::SubjectAccessReviewStatus {
                allowed: Some(false),
                denied: Some(false),
                reason: Some(String::new()),
                evaluation_error: Some(String::new()),
            }),
        };
        let body = envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            review.encode_to_vec(),
        );
        assert_eq!(
            decode_object(&body).unwrap(),
            json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"}},
                "status": {"allowed": false}
            })
        );
    }

    #[test]
    fn self_subject_review_from_whoami() {
        let review = authn::SelfSubjectReview {
            metadata: Some(meta_named("", "")),
            status: Some(authn::SelfSubjectReviewStatus { user_info: None }),
        };
        let body = envelope(
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            review.encode_to_vec(),
        );
        assert_eq!(
            decode_object(&body).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}, "status": {}})
        );
    }

    fn nginx_container() -> core::Container {
        core::Container {
            name: Some("web".into()),
            image: Some("nginx:1.27".into()),
            ports: vec![core::ContainerPort {
                name: Some(String::new()),
                host_port: Some(0),
                container_port: Some(80),
                protocol: Some("TCP".into()),
                host_ip: Some(String::new()),
            }],
            env: vec![core::EnvVar {
                name: Some("MODE".into()),
                value: Some("prod".into()),
                value_from: None,
            }],
            resources: Some(core::ResourceRequirements::default()),
            termination_message_path: Some(String::new()),
            stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        }
    }

    #[test]
    fn pod_from_kubectl_run() {
        let pod = core::Pod {
            metadata: Some(meta_named("web", "default")),
            spec: Some(core::PodSpec {
                containers: vec![nginx_container()],
                restart_policy: Some("Always".into()),
                dns_policy: Some("ClusterFirst".into()),
                host_network: Some(false),
                ..Default::default()
            }),
            status: Some(core::PodStatus::default()),
        };
        let got = decode_object(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "containers": [{
                        "name": "web", "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "env": [{"name": "MODE", "value": "prod"}],
                        "resources": {}
                    }],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst"
                },
                "status": {}
            })
        );
    }

    #[test]
    fn deployment_from_kubectl_create() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let mut template_meta = meta_named("", "");
        template_meta.labels = labels.clone();
        let d = apps::Deployment {
            metadata: Some(meta_named("web", "default")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: labels,
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(template_meta),
                    spec: Some(core::PodSpec {
                        containers: vec![nginx_container()],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some(String::new()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("25%".into()),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: Some(String::new()),
                        }),
                    }),
                }),
                min_ready_seconds: Some(0),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus::default()),
        };
        let got = decode_object(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(got["spec"]["replicas"], json!(2));
        assert_eq!(
            got["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        assert_eq!(
            got["spec"]["template"]["metadata"],
            json!({"labels": {"app": "web"}})
        );
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("nginx:1.27")
        );
        assert_eq!(
            got["spec"]["strategy"],
            json!({"rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}})
        );
        assert_eq!(got["status"], json!({}));
        assert!(got["spec"].get("minReadySeconds").is_none());
    }

    #[test]
    fn role_binding_and_delete_options() {
        let b = rbac::RoleBinding {
            metadata: Some(meta_named("read", "default")),
            subjects: vec![rbac::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("alice".into()),
                namespace: Some(String::new()),
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("Role".into()),
                name: Some("reader".into()),
            }),
        };
        let got = decode_object(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            b.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            got["subjects"][0],
            json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"})
        );
        assert_eq!(got["roleRef"]["name"], json!("reader"));

        let o = meta::DeleteOptions {
            grace_period_seconds: Some(0),
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        let got = decode_object(&envelope("v1", "DeleteOptions", o.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Background"})
        );
    }

    /// Bodies exactly as kubectl 1.33 sent them (`create ns team-a`, `create secret generic s1
    /// --from-literal=password=s3cr3t`, `auth can-i list pods -n default`).
    #[test]
    fn bodies_captured_from_kubectl() {
        let ns = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1e\n\x16\n\x06team-a\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";
        assert_eq!(
            decode_object(ns).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}, "spec": {}, "status": {}})
        );
        let secret = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x121\n\x19\n\x02s1\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00\x12\x12\n\x08password\x12\x06s3cr3t\x1a\x00\x1a\x00\"\x00";
        assert_eq!(
            decode_object(secret).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "default"}, "data": {"password": "czNjcjN0"}})
        );
        let review = b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12=\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x1f\n\x1d\n\x07default\x12\x04list\x1a\x00\"\x00*\x04pods2\x00:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00\"\x00";
        assert_eq!(
            decode_object(review).unwrap(),
            json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"}},
                "status": {"allowed": false}
            })
        );
        // `create deployment web --image=nginx --replicas=2`: every zero-valued PodSpec and Container
        // field is on the wire and must not count as an unsupported field.
        let deployment = b"k8s\x00\n\x15\n\x07apps/v1\x12\nDeployment\x12\xb2\x01\n&\n\x03web\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00Z\n\n\x03app\x12\x03web\x12z\x08\x02\x12\x0c\n\n\n\x03app\x12\x03web\x1a`\n\x1c\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00Z\n\n\x03app\x12\x03web\x12@\x12\"\n\x05nginx\x12\x05nginx*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\"\x02\n\x00(\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00 \x00(\x008\x00\x1a\x00\"\x00";
        assert_eq!(
            decode_object(deployment).unwrap(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
                    },
                    "strategy": {}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn unsupported_fields_are_refused_not_dropped() {
        let pod = core::Pod {
            metadata: Some(meta_named("web", "default")),
            spec: Some(core::PodSpec {
                containers: vec![nginx_container()],
                hostname_override: Some("elsewhere".into()),
                ..Default::default()
            }),
            status: None,
        };
        let err = decode_object(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap_err();
        assert!(
            matches!(
                err,
                ProtobufError::UnsupportedFields {
                    kind: "Pod",
                    message: "PodSpec"
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_kind_names_it() {
        let err = decode_object(&envelope("batch/v1", "CronJob", vec![])).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("batch/v1") && message.contains("CronJob"),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(matches!(
            decode_object(b""),
            Err(ProtobufError::MissingMagic)
        ));
        assert!(matches!(
            decode_object(b"{\"kind\":\"Namespace\"}"),
            Err(ProtobufError::MissingMagic)
        ));
        assert!(matches!(
            decode_object(b"k8s\0\xff\xff\xff"),
            Err(ProtobufError::Envelope(_))
        ));
        assert!(matches!(
            decode_object(b"k8s\0"),
            Err(ProtobufError::MissingTypeMeta)
        ));
        let bad_raw = envelope("v1", "Namespace", vec![0x0a, 0x05, 0x01]);
        assert!(matches!(
            decode_object(&bad_raw),
            Err(ProtobufError::Object { .. })
        ));
        // A deterministic spread of byte soup behind a valid prefix.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..512 {
            let mut raw = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                raw.push(seed as u8);
            }
            for kind in ["Namespace", "Pod", "Secret", "DeleteOptions"] {
                let _ = decode_object(&envelope("v1", kind, raw.clone()));
            }
            let mut body = MAGIC.to_vec();
            body.extend(&raw);
            let _ = decode_object(&body);
        }
    }

    #[test]
    fn compressed_envelopes_are_refused() {
        let mut unknown = Unknown::decode(&envelope("v1", "Namespace", vec![])[4..]).unwrap();
        unknown.content_encoding = Some("gzip".into());
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        assert!(
            matches!(decode_object(&body), Err(ProtobufError::ContentEncoding(e)) if e == "gzip")
        );
    }
}
