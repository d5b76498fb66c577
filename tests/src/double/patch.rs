//! PATCH bodies: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386) and a strategic merge patch that knows the merge
//! keys of the list fields clients patch in practice (containers, env, volumes, ports, conditions, ...), falling back
//! to merge-patch semantics elsewhere. Pure functions; this module must never touch the store.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    /// Server-side apply; treated as "create if missing, else strategic merge" by the server.
    Apply,
}

impl PatchType {
    /// The patch type a PATCH request's Content-Type names, if any.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not valid JSON of the expected shape (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well-formed but cannot be applied to the object (HTTP 422).
    #[error("{0}")]
    NotApplicable(String),
}

/// Applies `body` of type `kind` to `original` and returns the patched document.
pub fn apply(kind: PatchType, original: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::Malformed(format!("error decoding patch: {e}")))?;
    let mut doc = original.clone();
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| PatchError::Malformed(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| PatchError::NotApplicable(e.to_string()))?;
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut doc, &patch);
        }
        PatchType::StrategicMerge | PatchType::Apply => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "strategic merge patch must be a JSON object".into(),
                ));
            }
            strategic_merge(&mut doc, &patch)?;
        }
    }
    Ok(doc)
}

/// The merge key of a list field (by field name), as in the Kubernetes OpenAPI `x-kubernetes-patch-merge-key`.
/// `None` means the list is replaced wholesale, as merge patch does.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "ports" => {
            // Container ports merge on containerPort, Service ports on port.
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    };
    Some(key)
}

/// Lists of scalars that strategic merge treats as sets (union) rather than replacing.
fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strategic_merge(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *doc = Value::Object(strip_directives(replacement));
        return Ok(());
    }
    if patch_map.get("$patch").and_then(Value::as_str) == Some("delete") {
        *doc = Value::Object(Map::new());
        return Ok(());
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("just made an object");
    let retain: Option<Vec<String>> =
        patch_map
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
    for (key, value) in patch_map {
        if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(existing)), Some(remove)) =
                (target.get_mut(list_field), value.as_array())
            {
                existing.retain(|v| !remove.contains(v));
            }
            continue;
        }
        // Other directives ($setElementOrder/..., $retainKeys, $patch) only order or scope the merge.
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => {
                let entry = target.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(entry, value)?;
            }
            Value::Array(items) => {
                let merged = merge_list(target.get(key), items, key)?;
                target.insert(key.clone(), merged);
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(retain) = retain {
        target.retain(|k, _| retain.contains(k));
    }
    Ok(())
}

fn merge_list(existing: Option<&Value>, items: &[Value], field: &str) -> Result<Value, PatchError> {
    let existing = existing.and_then(Value::as_array);
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let kept = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .map(strip_value)
            .collect();
        return Ok(Value::Array(kept));
    }
    if is_set_list(field) {
        let mut out: Vec<Value> = existing.cloned().unwrap_or_default();
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let all_items: Vec<Value> = existing.cloned().unwrap_or_default();
    let Some(key) = merge_key(field, items) else {
        return Ok(Value::Array(
            items.iter().cloned().map(strip_value).collect(),
        ));
    };
    let mut out = all_items;
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(PatchError::NotApplicable(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let position = out.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(p), true) => {
                out.remove(p);
            }
            (None, true) => {}
            (Some(p), false) => strategic_merge(&mut out[p], item)?,
            (None, false) => out.push(strip_value(item.clone())),
        }
    }
    Ok(Value::Array(out))
}

fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        other => other,
    }
}

/// Removes `$patch`, `$setElementOrder/...` and other directive keys from a value being inserted as-is.
fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "busybox"}
            ]}}}
        })
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let p = br#"{"metadata":{"labels":{"tier":null,"x":"y"}},"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:2"}]}}}}"#;
        let out = apply(PatchType::Merge, &deployment(), p).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "x": "y"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx:2"}])
        );
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let p = br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"add","path":"/metadata/labels/new","value":"v"}]"#;
        let out = apply(PatchType::Json, &deployment(), p).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(out["metadata"]["labels"]["new"], "v");
        let failing = br#"[{"op":"test","path":"/spec/replicas","value":9}]"#;
        assert!(matches!(
            apply(PatchType::Json, &deployment(), failing),
            Err(PatchError::NotApplicable(_))
        ));
        assert!(matches!(
            apply(PatchType::Json, &deployment(), b"{}"),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply(PatchType::Merge, &deployment(), b"not json"),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn strategic_merge_by_name() {
        let p = br#"{"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"web"},{"name":"sidecar"}],
            "containers":[{"name":"web","image":"nginx:2","env":[{"name":"B","value":"3"},{"name":"C","value":"4"}]}]}}}}"#;
        let out = apply(PatchType::StrategicMerge, &deployment(), p).unwrap();
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(containers[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(containers[1]["name"], "sidecar");
    }

    #[test]
    fn strategic_merge_directives() {
        let p = br#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}},
                     "metadata":{"finalizers":["b"],"labels":{"$patch":"replace","only":"this"}}}"#;
        let out = apply(PatchType::StrategicMerge, &deployment(), p).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));
        let p = br#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}"#;
        let out = apply(PatchType::StrategicMerge, &deployment(), p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let p = br#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#;
        assert!(apply(PatchType::StrategicMerge, &deployment(), p).is_err());
    }

    #[test]
    fn strategic_merge_unknown_lists_replace() {
        let orig = json!({"spec": {"args": ["a", "b"]}});
        let out = apply(
            PatchType::StrategicMerge,
            &orig,
            br#"{"spec":{"args":["c"]}}"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["args"], json!(["c"]));
    }
}
