//! The fixed objects a fresh double starts with (namespaces default/kube-system/dev/prod, a few pods, a deployment,
//! a secret, a configmap, events), so clients have something real to list. Fixture data only: no secrets beyond
//! the well-known test value, and nothing that depends on the machine.

use base64::Engine;
use chrono::{Duration, Utc};
use serde_json::{json, Value};

use super::resources::{self, lookup};
use super::store::Store;

/// The clear-text value of `default/db-credentials` `password`; tests check that it is masked.
pub const SEED_SECRET_PASSWORD: &str = "s3cr3t-value";

fn ago(d: Duration) -> String {
    (Utc::now() - d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pod(namespace: &str, name: &str, app: &str, image: &str, node: &str, age: Duration) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "creationTimestamp": ago(age),
            "labels": {"app": app},
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "main", "image": image,
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
        },
    })
}

/// Fills `store` with the seed objects. Fails only if the seed itself is inconsistent (a bug).
pub fn seed(store: &Store) -> Result<(), super::status::ApiError> {
    let ns = resources::namespaces();
    for (name, days) in [
        ("default", 30),
        ("kube-system", 30),
        ("dev", 7),
        ("prod", 7),
    ] {
        store.seed(
            ns,
            "",
            json!({"metadata": {"name": name, "creationTimestamp": ago(Duration::days(days))}}),
        )?;
    }
    let pods = resources::pods();
    store.seed(
        pods,
        "default",
        pod(
            "default",
            "web-0",
            "web",
            "nginx:1.27",
            "double-node-1",
            Duration::hours(5),
        ),
    )?;
    store.seed(
        pods,
        "dev",
        pod(
            "dev",
            "agent-0",
            "agent",
            "python:3.13-slim",
            "double-node-1",
            Duration::hours(3),
        ),
    )?;
    store.seed(
        pods,
        "prod",
        pod(
            "prod",
            "db-0",
            "db",
            "postgres:17",
            "double-node-2",
            Duration::days(2),
        ),
    )?;

    let deployments = lookup("apps", "v1", "deployments").expect("catalogued");
    store.seed(
        deployments,
        "default",
        json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": ago(Duration::hours(5))},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "main", "image": "nginx:1.27",
                                             "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
                },
            },
        }),
    )?;

    let secrets = lookup("", "v1", "secrets").expect("catalogued");
    store.seed(
        secrets,
        "default",
        json!({
            "metadata": {"name": "db-credentials", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": ago(Duration::hours(5))},
            "type": "Opaque",
            "data": {"password": b64(SEED_SECRET_PASSWORD), "username": b64("app")},
        }),
    )?;

    let configmaps = lookup("", "v1", "configmaps").expect("catalogued");
    store.seed(
        configmaps,
        "default",
        json!({
            "metadata": {"name": "app-config", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": ago(Duration::hours(5))},
            "data": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "search,export"},
        }),
    )?;

    let sas = resources::serviceaccounts();
    for namespace in ["default", "kube-system", "dev", "prod"] {
        if store.get(sas, namespace, "default").is_none() {
            store.seed(
                sas,
                namespace,
                json!({"metadata": {"name": "default", "namespace": namespace}}),
            )?;
        }
    }

    let events = lookup("", "v1", "events").expect("catalogued");
    let web = store.get(pods, "default", "web-0");
    let web_uid = web
        .as_ref()
        .and_then(|p| p.pointer("/metadata/uid"))
        .cloned()
        .unwrap_or(Value::Null);
    for (suffix, reason, message, age_min) in [
        (
            "scheduled",
            "Scheduled",
            "Successfully assigned default/web-0 to double-node-1",
            300,
        ),
        ("started", "Started", "Started container main", 299),
    ] {
        let at = ago(Duration::minutes(age_min));
        store.seed(
            events,
            "default",
            json!({
                "metadata": {"name": format!("web-0.{suffix}"), "namespace": "default", "creationTimestamp": at},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-0", "uid": web_uid,
                                   "apiVersion": "v1"},
                "reason": reason,
                "message": message,
                "type": "Normal",
                "source": {"component": if reason == "Scheduled" { "default-scheduler" } else { "kubelet" }},
                "firstTimestamp": at,
                "lastTimestamp": at,
                "count": 1,
                "reportingComponent": if reason == "Scheduled" { "default-scheduler" } else { "kubelet" },
                "reportingInstance": "",
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_contents() {
        let s = Store::default();
        seed(&s).unwrap();
        let (ns, _) = s.list(resources::namespaces(), None);
        let names: Vec<&str> = ns
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["default", "dev", "kube-system", "prod"]);
        let web = s.get(resources::pods(), "default", "web-0").unwrap();
        assert_eq!(web["status"]["phase"], "Running");
        assert_eq!(web["spec"]["containers"][0]["name"], "main");
        assert!(web["status"]["podIP"].is_string());
        let secret = s
            .get(
                lookup("", "v1", "secrets").unwrap(),
                "default",
                "db-credentials",
            )
            .unwrap();
        assert_eq!(secret["data"]["password"], b64(SEED_SECRET_PASSWORD));
        for ns in ["default", "kube-system", "dev", "prod"] {
            assert!(
                s.get(resources::serviceaccounts(), ns, "default").is_some(),
                "{ns}"
            );
        }
        let (events, _) = s.list(lookup("", "v1", "events").unwrap(), Some("default"));
        assert_eq!(events.len(), 2);
    }
}
