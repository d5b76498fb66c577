//! Kind-specific behaviour the real control plane would add to stored objects: defaulting (namespace phase, pod
//! status as if scheduled and running, deployment status as if rolled out), Secret `stringData` folding, name and
//! shape validation, and generation bumps. Pure functions over JSON; it must never touch the store itself.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::resources::ResourceDef;
use super::status::ApiError;

/// The node every pod of the double runs on unless its spec names one.
pub const DEFAULT_NODE: &str = "double-node-1";

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata` as a mutable map, creating it (and replacing a non-object) when needed.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("object")
}

fn object_mut<'a>(obj: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let map = obj.as_object_mut().expect("objects are JSON objects");
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("object")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validates a name the way the API server does for this resource (namespaces: DNS label, others: subdomain).
pub fn validate_name(res: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let (ok, what) = if res.plural == "namespaces" {
        (
            is_dns_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
             and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        )
    } else {
        (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
             must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res,
            name,
            "metadata.name",
            format!("Invalid value: {name:?}: {what}"),
        ))
    }
}

/// Folds Secret `stringData` into base64 `data` (stringData wins), as the API server does on every write.
pub fn fold_string_data(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    let data = data.as_object_mut().expect("object");
    for (k, v) in string_data {
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        data.insert(
            k,
            json!(base64::engine::general_purpose::STANDARD.encode(text)),
        );
    }
}

/// Shape checks a real API server would reject with 400 or 422.
pub fn validate(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let name = name_of(obj);
    match res.kind {
        "Secret" => {
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    let decoded = v
                        .as_str()
                        .map(|s| base64::engine::general_purpose::STANDARD.decode(s));
                    if !matches!(decoded, Some(Ok(_))) {
                        return Err(ApiError::bad_request(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in \
                             data[{k:?}]"
                        )));
                    }
                }
            }
        }
        "Pod" => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            match containers {
                Some(list) if !list.is_empty() => {
                    for (i, c) in list.iter().enumerate() {
                        if c.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            return Err(ApiError::invalid(
                                res,
                                name,
                                &format!("spec.containers[{i}].name"),
                                "Required value",
                            ));
                        }
                        if c.get("image")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            return Err(ApiError::invalid(
                                res,
                                name,
                                &format!("spec.containers[{i}].image"),
                                "Required value",
                            ));
                        }
                    }
                }
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        name,
                        "spec.containers",
                        "Required value",
                    ))
                }
            }
        }
        "Deployment" if obj.pointer("/spec/template").is_none() => {
            return Err(ApiError::invalid(
                res,
                name,
                "spec.template",
                "Required value",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Defaults applied when an object is first stored (after metadata is stamped).
pub fn on_create(res: &ResourceDef, obj: &mut Value, ordinal: u64) {
    let now = now_rfc3339();
    match res.kind {
        "Namespace" => {
            let name = name_of(obj).to_string();
            let labels = metadata_mut(obj)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            object_mut(obj, "spec")
                .entry("finalizers")
                .or_insert_with(|| json!(["kubernetes"]));
            object_mut(obj, "status").insert("phase".into(), json!("Active"));
        }
        "Secret" => {
            fold_string_data(obj);
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                obj["type"] = json!("Opaque");
            }
        }
        "Pod" => pod_defaults(obj, ordinal, &now),
        "Deployment" => {
            let spec = object_mut(obj, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            spec.entry("strategy").or_insert(json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            }));
            deployment_status(obj, &now);
        }
        _ => {}
    }
}

fn pod_defaults(obj: &mut Value, ordinal: u64, now: &str) {
    let spec = object_mut(obj, "spec");
    spec.entry("nodeName").or_insert(json!(DEFAULT_NODE));
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec.entry("serviceAccountName").or_insert(json!("default"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    let containers: Vec<(String, String)> = spec
        .get("containers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|c| {
                    (
                        c.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        c.get("image")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let started = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or(now)
        .to_string();
    let status = object_mut(obj, "status");
    if status.contains_key("phase") {
        return;
    }
    let statuses: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, (name, image))| {
            json!({
                "name": name,
                "image": image,
                "imageID": format!("docker.io/library/{image}@sha256:{:064x}", ordinal * 31 + i as u64),
                "containerID": format!("containerd://{:064x}", ordinal * 17 + i as u64),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    let conditions: Vec<Value> = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": started}))
        .collect();
    let ip = format!("10.244.0.{}", 10 + ordinal % 240);
    status.insert("phase".into(), json!("Running"));
    status.insert("conditions".into(), json!(conditions));
    status.insert("hostIP".into(), json!("192.0.2.10"));
    status.insert("hostIPs".into(), json!([{"ip": "192.0.2.10"}]));
    status.insert("podIP".into(), json!(ip));
    status.insert("podIPs".into(), json!([{"ip": ip}]));
    status.insert("startTime".into(), json!(started));
    status.insert("containerStatuses".into(), json!(statuses));
    status.insert("qosClass".into(), json!("BestEffort"));
}

/// A deployment whose controller has finished rolling out `spec.replicas` of the current generation.
fn deployment_status(obj: &mut Value, now: &str) {
    let replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let name = name_of(obj).to_string();
    let mut status = json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"{name}-7d4b9c8f6d\" has successfully progressed."),
             "lastUpdateTime": now, "lastTransitionTime": now},
        ],
    });
    if replicas == 0 {
        for k in ["readyReplicas", "availableReplicas", "updatedReplicas"] {
            status.as_object_mut().expect("object").remove(k);
        }
    }
    obj["status"] = status;
}

/// Adjustments on every update of an existing object. `status_write` is true for writes through the `status`
/// subresource, which keep what the writer sent instead of recomputing controller-owned fields.
pub fn on_update(
    res: &ResourceDef,
    old: &Value,
    new: &mut Value,
    status_write: bool,
) -> Result<(), ApiError> {
    if res.kind == "Secret" {
        fold_string_data(new);
        if new
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            new["type"] = old.get("type").cloned().unwrap_or(json!("Opaque"));
        }
        if new.get("type") != old.get("type") {
            return Err(ApiError::invalid(
                res,
                name_of(old),
                "type",
                "field is immutable",
            ));
        }
    }
    if matches!(res.kind, "Secret" | "ConfigMap") && old.get("immutable") == Some(&json!(true)) {
        let changed = ["data", "binaryData"]
            .iter()
            .any(|k| old.get(*k) != new.get(*k));
        if changed {
            return Err(ApiError::invalid(
                res,
                name_of(old),
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }
    if res.has_generation() {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let bumped = if old.get("spec") != new.get("spec") {
            generation + 1
        } else {
            generation
        };
        metadata_mut(new).insert("generation".into(), json!(bumped));
    }
    if res.kind == "Deployment" && !status_write {
        let replicas = new.pointer("/spec/replicas").cloned();
        if replicas.is_none() {
            object_mut(new, "spec").insert("replicas".into(), json!(1));
        }
        deployment_status(new, &now_rfc3339());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;

    #[test]
    fn secret_string_data_folds() {
        let mut s = json!({"metadata": {"name": "a"}, "data": {"x": "eA=="}, "stringData": {"password": "s3cr3t"}});
        fold_string_data(&mut s);
        assert!(s.get("stringData").is_none());
        assert_eq!(s["data"]["password"], "czNjcjN0");
        assert_eq!(s["data"]["x"], "eA==");
    }

    #[test]
    fn names() {
        let ns = lookup("", "v1", "namespaces").unwrap();
        let cm = lookup("", "v1", "configmaps").unwrap();
        assert!(validate_name(ns, "dev").is_ok());
        assert!(validate_name(ns, "a.b").is_err());
        assert!(validate_name(cm, "a.b").is_ok());
        let err = validate_name(cm, "Bad").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err
            .message
            .starts_with("ConfigMap \"Bad\" is invalid: metadata.name: Invalid value"));
    }

    #[test]
    fn pod_validation_and_defaults() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert!(validate(pods, &json!({"metadata": {"name": "p"}, "spec": {}})).is_err());
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}});
        assert!(validate(pods, &p).is_ok());
        on_create(pods, &mut p, 3);
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["spec"]["nodeName"], DEFAULT_NODE);
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn deployment_generation_and_status() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        let mut old = json!({"metadata": {"name": "web", "generation": 1}, "spec": {"replicas": 1, "template": {}}});
        on_create(d, &mut old, 1);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        on_update(d, &old, &mut new, false).unwrap();
        assert_eq!(new["metadata"]["generation"], 2);
        assert_eq!(new["status"]["observedGeneration"], 2);
        assert_eq!(new["status"]["readyReplicas"], 3);
    }

    #[test]
    fn immutable_secret() {
        let s = lookup("", "v1", "secrets").unwrap();
        let old = json!({"metadata": {"name": "a"}, "type": "Opaque", "immutable": true, "data": {"a": "YQ=="}});
        let mut new = old.clone();
        new["data"]["a"] = json!("Yg==");
        assert_eq!(on_update(s, &old, &mut new, false).unwrap_err().code, 422);
    }
}
