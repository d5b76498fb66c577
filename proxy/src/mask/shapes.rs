//! Response shapes end to end through `ResponseMasker`, with bodies shaped like the real API
//! server's (and the API double's) answers.

use std::sync::Arc;

use base64::Engine;
use http::Method;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::classify::{classify, RequestInfo};

const PLAIN: &str = "hunter2-plain";
const JSON: &str = "application/json";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn info(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    classify(&method, path, query).expect("classified")
}

fn config(yaml: &str) -> MaskConfig {
    serde_saphyr::from_str(yaml).expect("valid mask config")
}

/// The profile the e2e tests are given (see docs/masking.md), plus a custom resource rule.
const E2E_YAML: &str = r#"
profiles:
  e2e:
    configmaps:
      keys: ["*password*", "*token*"]
    fields:
      - resource: pods
        paths: ["spec.containers[*].env[*].value", "spec.initContainers[*].env[*].value"]
        when: { field: name, matches: ["*PASSWORD*", "*TOKEN*"] }
      - resource: deployments
        group: apps
        paths: ["spec.template.spec.containers[*].env[*].value"]
        when: { field: name, matches: ["*PASSWORD*", "*TOKEN*"] }
      - resource: databases
        group: example.com
        kind: Database
        paths: ["spec.password"]
        columns: ["Password"]
    logs:
      patterns: ['(?i)password=(?P<secret>\S+)', 'AKIA[0-9A-Z]{16}']
"#;

fn masker() -> Masker {
    Masker::from_config(&config(E2E_YAML)).expect("compiles")
}

fn default_profile() -> Arc<MaskProfile> {
    masker().profile(DEFAULT_PROFILE).expect("default")
}

fn e2e_profile() -> Arc<MaskProfile> {
    masker().profile("e2e").expect("e2e")
}

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    status: u16,
    content_type: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn get(path: &'a str) -> Self {
        Self {
            method: "GET",
            path,
            query: None,
            status: 200,
            content_type: Some(JSON),
        }
    }

    fn masker(&self, profile: Arc<MaskProfile>) -> Result<ResponseMasker, MaskError> {
        let info = info(self.method, self.path, self.query);
        assert!(profile.applies_to(&info), "{} {}", self.method, self.path);
        ResponseMasker::new(
            profile,
            &info,
            self.query,
            self.status,
            self.content_type,
            None,
        )
    }

    /// Runs a body through in chunks of `chunk` bytes; returns the output and the mode used.
    fn run(
        &self,
        profile: Arc<MaskProfile>,
        body: &[u8],
        chunk: usize,
    ) -> Result<(Vec<u8>, Mode), MaskError> {
        let mut masker = self.masker(profile)?;
        let mut out = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            out.extend_from_slice(&masker.push(piece)?);
        }
        out.extend_from_slice(&masker.finish()?);
        Ok((out, masker.mode()))
    }

    fn json(&self, profile: Arc<MaskProfile>, body: &Value) -> Value {
        let mut bytes = serde_json::to_vec(body).expect("serializes");
        bytes.push(b'\n');
        let (out, mode) = self.run(profile, &bytes, 7).expect("masks");
        assert_eq!(mode, Mode::Whole);
        assert!(out.ends_with(b"\n"), "the trailing newline is kept");
        serde_json::from_slice(&out).expect("JSON out")
    }
}

fn last_applied_secret() -> String {
    format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{{\"annotations\":{{}},\"name\":\"db-credentials\",\"namespace\":\"dev\"}},\"stringData\":{{\"password\":\"{PLAIN}\"}},\"type\":\"Opaque\"}}\n"
    )
}

/// A Secret as `GET /api/v1/namespaces/dev/secrets/db-credentials` returns it after
/// `kubectl apply` of a manifest with stringData.
fn secret(with_kind: bool) -> Value {
    let mut s = json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db-credentials",
            "namespace": "dev",
            "uid": "6c4b3f0e-2f8a-4d38-9f0e-5b1e2f3a4c5d",
            "resourceVersion": "1234",
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "labels": {"app": "db"},
            "annotations": {
                LAST_APPLIED_ANNOTATION: last_applied_secret(),
                "team": "payments"
            },
            "managedFields": [{
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-01-02T03:04:05Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:password": {}, "f:username": {}}, "f:type": {}}
            }]
        },
        "data": {"password": b64(PLAIN), "username": b64("admin-user")},
        "type": "Opaque"
    });
    if !with_kind {
        if let Value::Object(m) = &mut s {
            m.remove("kind");
            m.remove("apiVersion");
        }
    }
    s
}

fn assert_secret_masked(s: &Value) {
    assert_eq!(s["data"]["password"], MARKER_BASE64);
    assert_eq!(s["data"]["username"], MARKER_BASE64);
    assert_eq!(
        s["data"].as_object().map(|m| m.len()),
        Some(2),
        "keys are kept"
    );
    assert_eq!(
        s["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
        MARKER
    );
    assert_eq!(s["metadata"]["annotations"]["team"], "payments");
    assert_eq!(s["metadata"]["name"], "db-credentials");
    assert_eq!(
        s["metadata"]["managedFields"][0]["manager"],
        "kubectl-client-side-apply"
    );
    assert_eq!(s["type"], "Opaque");
}

fn assert_no_plaintext(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for leaked in [PLAIN, &b64(PLAIN), "admin-user", &b64("admin-user")] {
        assert!(!text.contains(leaked), "{leaked:?} leaked: {text}");
    }
}

#[test]
fn single_secret() {
    let out = Call::get("/api/v1/namespaces/dev/secrets/db-credentials")
        .json(default_profile(), &secret(true));
    assert_secret_masked(&out);
    assert_no_plaintext(out.to_string().as_bytes());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(out["data"]["password"].as_str().expect("string"))
        .expect("the data marker is valid base64");
    assert_eq!(decoded, MARKER.as_bytes());
}

#[test]
fn string_data_in_a_create_response_and_other_verbs() {
    let mut created = secret(true);
    created["stringData"] = json!({"token": "plain-token-value"});
    for (method, path) in [
        ("POST", "/api/v1/namespaces/dev/secrets"),
        ("PUT", "/api/v1/namespaces/dev/secrets/db-credentials"),
        ("PATCH", "/api/v1/namespaces/dev/secrets/db-credentials"),
        ("DELETE", "/api/v1/namespaces/dev/secrets/db-credentials"),
    ] {
        let call = Call {
            method,
            status: if method == "POST" { 201 } else { 200 },
            ..Call::get(path)
        };
        let out = call.json(default_profile(), &created);
        assert_secret_masked(&out);
        assert_eq!(out["stringData"]["token"], MARKER, "{method}");
        assert!(!out.to_string().contains("plain-token-value"));
    }
}

#[test]
fn secret_list_without_item_kinds() {
    let list = json!({
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1240"},
        "items": [secret(false), secret(false)]
    });
    for path in ["/api/v1/namespaces/dev/secrets", "/api/v1/secrets"] {
        let out = Call::get(path).json(default_profile(), &list);
        assert_eq!(out["kind"], "SecretList");
        assert_eq!(out["metadata"]["resourceVersion"], "1240");
        for item in out["items"].as_array().expect("items") {
            assert_secret_masked(item);
        }
        assert_no_plaintext(out.to_string().as_bytes());
    }
    // deletecollection answers the deleted items as a list too.
    let call = Call {
        method: "DELETE",
        ..Call::get("/api/v1/namespaces/dev/secrets")
    };
    let out = call.json(default_profile(), &list);
    assert_no_plaintext(out.to_string().as_bytes());
}

fn pod() -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "web-0", "namespace": "dev"},
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox", "env": [
                {"name": "INIT_TOKEN", "value": "init-token-value"}
            ]}],
            "containers": [{"name": "web", "image": "nginx", "env": [
                {"name": "DB_PASSWORD", "value": "pod-password-value"},
                {"name": "LOG_LEVEL", "value": "debug"},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "db-credentials", "key": "password"}}}
            ]}]
        },
        "status": {"phase": "Running"}
    })
}

fn config_map() -> Value {
    let data =
        json!({"db_password": "cm-password-value", "API_TOKEN": "cm-token-value", "mode": "prod"});
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "dev"}, "data": data});
    json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "app", "namespace": "dev", "annotations": {
            LAST_APPLIED_ANNOTATION: applied.to_string()
        }},
        "data": data,
        "binaryData": {"token.bin": b64("cm-binary-token"), "logo.png": b64("png")}
    })
}

fn assert_pod_masked(p: &Value) {
    let env = &p["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["value"], MARKER);
    assert_eq!(env[1]["value"], "debug");
    assert_eq!(env[2]["valueFrom"]["secretKeyRef"]["key"], "password");
    assert_eq!(p["spec"]["initContainers"][0]["env"][0]["value"], MARKER);
}

fn assert_config_map_masked(c: &Value) {
    assert_eq!(c["data"]["db_password"], MARKER);
    assert_eq!(c["data"]["API_TOKEN"], MARKER);
    assert_eq!(c["data"]["mode"], "prod");
    assert_eq!(c["binaryData"]["token.bin"], MARKER_BASE64);
    assert_eq!(c["binaryData"]["logo.png"], b64("png"));
    let applied: Value = serde_json::from_str(
        c["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
            .as_str()
            .expect("still a string"),
    )
    .expect("still JSON: masked structurally");
    assert_eq!(applied["data"]["db_password"], MARKER);
    assert_eq!(applied["data"]["mode"], "prod");
}

#[test]
fn configmap_keys_and_pod_env() {
    let out = Call::get("/api/v1/namespaces/dev/configmaps/app").json(e2e_profile(), &config_map());
    assert_config_map_masked(&out);
    let text = out.to_string();
    for leaked in [
        "cm-password-value",
        "cm-token-value",
        &b64("cm-binary-token"),
    ] {
        assert!(!text.contains(leaked), "{leaked}");
    }

    let out = Call::get("/api/v1/namespaces/dev/pods/web-0").json(e2e_profile(), &pod());
    assert_pod_masked(&out);

    let deployment = json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "namespace": "dev"},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": pod()["spec"].clone()}}
    });
    let out =
        Call::get("/apis/apps/v1/namespaces/dev/deployments/web").json(e2e_profile(), &deployment);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        MARKER
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"],
        "debug"
    );
    assert_eq!(out["spec"]["replicas"], 1);
}

#[test]
fn v1_list_with_mixed_kinds() {
    let service = json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"},
                         "spec": {"ports": [{"port": 80}], "clusterIP": "10.0.0.1"}});
    let list = json!({
        "kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": ""},
        "items": [secret(true), config_map(), pod(), service.clone()]
    });
    // The default profile masks the Secret and leaves the rest alone.
    let out = Call::get("/api/v1/namespaces/dev/secrets").json(default_profile(), &list);
    assert_secret_masked(&out["items"][0]);
    assert_eq!(out["items"][1], config_map());
    assert_eq!(out["items"][2], pod());
    // The e2e profile masks every kind it covers.
    let out = Call::get("/api/v1/namespaces/dev/secrets").json(e2e_profile(), &list);
    assert_secret_masked(&out["items"][0]);
    assert_config_map_masked(&out["items"][1]);
    assert_pod_masked(&out["items"][2]);
    assert_eq!(out["items"][3], service);
}

fn column(name: &str, format: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": format!("{name} column"), "priority": 0})
}

fn secret_columns() -> Value {
    json!([
        column("Name", "name"),
        column("Type", ""),
        column("Data", ""),
        column("Age", "")
    ])
}

#[test]
fn table_rows_with_metadata_or_full_objects() {
    let metadata_row = |s: &Value| {
        json!({"cells": ["db-credentials", "Opaque", 2, "5m"],
               "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": s["metadata"]}})
    };
    let table = json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1240"},
        "columnDefinitions": secret_columns(),
        "rows": [metadata_row(&secret(true)), {"cells": ["db-credentials", "Opaque", 2, "5m"], "object": secret(true)}]
    });
    let call = Call {
        content_type: Some(TABLE),
        query: Some("includeObject=Object"),
        ..Call::get("/api/v1/namespaces/dev/secrets")
    };
    let out = call.json(default_profile(), &table);
    assert_eq!(out["kind"], "Table");
    assert_eq!(out["columnDefinitions"], secret_columns());
    let rows = out["rows"].as_array().expect("rows");
    assert_eq!(
        rows[0]["object"]["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
        MARKER
    );
    assert_eq!(
        rows[0]["cells"],
        json!(["db-credentials", "Opaque", 2, "5m"])
    );
    assert_secret_masked(&rows[1]["object"]);
    assert_no_plaintext(out.to_string().as_bytes());
}

fn database(password: &str) -> Value {
    json!({"kind": "Database", "apiVersion": "example.com/v1", "metadata": {"name": "orders"},
           "spec": {"engine": "postgres", "password": password}})
}

#[test]
fn table_cells_of_masked_columns() {
    let table = json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": [column("Name", "name"), column("Engine", ""), column("Password", "")],
        "rows": [
            {"cells": ["orders", "postgres", "db-pass-1"], "object": database("db-pass-1")},
            {"cells": ["users", "mysql", "db-pass-2"], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "users"}}},
            {"cells": ["audit", "sqlite", "db-pass-3"]}
        ]
    });
    let call = Call {
        content_type: Some(TABLE),
        ..Call::get("/apis/example.com/v1/namespaces/dev/databases")
    };
    let out = call.json(e2e_profile(), &table);
    for (i, name) in ["orders", "users", "audit"].iter().enumerate() {
        assert_eq!(out["rows"][i]["cells"][0], *name);
        assert_eq!(out["rows"][i]["cells"][2], MARKER, "row {i}");
    }
    assert_eq!(out["rows"][0]["object"]["spec"]["password"], MARKER);
    assert_eq!(out["rows"][0]["object"]["spec"]["engine"], "postgres");
    assert!(!out.to_string().contains("db-pass-"));
}

#[test]
fn partial_object_metadata_and_list() {
    let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": secret(true)["metadata"]});
    let call = Call {
        content_type: Some("application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"),
        ..Call::get("/api/v1/namespaces/dev/secrets/db-credentials")
    };
    let out = call.json(default_profile(), &partial);
    assert_eq!(
        out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
        MARKER
    );
    assert_eq!(out["metadata"]["name"], "db-credentials");

    let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                      "metadata": {"resourceVersion": "9"},
                      "items": [{"metadata": secret(true)["metadata"]}, partial]});
    let call = Call {
        content_type: Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"),
        ..Call::get("/api/v1/secrets")
    };
    let out = call.json(default_profile(), &list);
    for item in out["items"].as_array().expect("items") {
        assert_eq!(
            item["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
            MARKER
        );
    }
    assert_no_plaintext(out.to_string().as_bytes());
}

#[test]
fn status_bodies_pass() {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "secrets \"nope\" not found", "reason": "NotFound",
        "details": {"name": "nope", "kind": "secrets"}, "code": 404});
    let call = Call {
        status: 404,
        ..Call::get("/api/v1/namespaces/dev/secrets/nope")
    };
    assert_eq!(call.json(default_profile(), &status), status);
    // A watch or a log request that fails answers a Status too: read whole.
    for (path, query) in [
        ("/api/v1/namespaces/dev/secrets", Some("watch=true")),
        ("/api/v1/namespaces/dev/pods/web-0/log", None),
    ] {
        let call = Call {
            status: 403,
            query,
            ..Call::get(path)
        };
        assert_eq!(call.json(e2e_profile(), &status), status);
    }
}

#[test]
fn empty_bodies_pass() {
    let call = Call {
        method: "HEAD",
        content_type: None,
        ..Call::get("/api/v1/namespaces/dev/secrets/db-credentials")
    };
    let (out, _) = call.run(default_profile(), b"", 1).expect("empty is fine");
    assert!(out.is_empty());
}

fn watch_event(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

#[test]
fn watch_events_one_by_one() {
    let mut modified = secret(true);
    modified["metadata"]["resourceVersion"] = json!("1250");
    let bookmark = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"resourceVersion": "1260",
        "annotations": {"k8s.io/initial-events-end": "true"}}});
    let error = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (1240)", "reason": "Expired", "code": 410});
    let events = [
        watch_event("ADDED", secret(true)),
        watch_event("MODIFIED", modified),
        watch_event("BOOKMARK", bookmark.clone()),
        watch_event("DELETED", secret(true)),
        watch_event("ERROR", error.clone()),
    ];
    let call = Call {
        query: Some("watch=true&allowWatchBookmarks=true"),
        ..Call::get("/api/v1/namespaces/dev/secrets")
    };
    let mut masker = call.masker(default_profile()).expect("watch");
    assert_eq!(masker.mode(), Mode::WatchStream);
    // Each event is released as soon as it is complete, not at the end.
    let first = &events[0].as_bytes();
    let (head, tail) = first.split_at(first.len() / 2);
    assert!(masker.push(head).expect("ok").is_empty());
    let out = masker.push(tail).expect("ok");
    let event: Value = serde_json::from_slice(&out).expect("one event");
    assert_eq!(event["type"], "ADDED");
    assert_secret_masked(&event["object"]);

    let mut rest = Vec::new();
    for e in &events[1..] {
        rest.extend_from_slice(&masker.push(e.as_bytes()).expect("ok"));
    }
    rest.extend_from_slice(&masker.finish().expect("ends between events"));
    assert_no_plaintext(&rest);
    let lines: Vec<Value> = rest
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("one event per line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["type"], "MODIFIED");
    assert_secret_masked(&lines[0]["object"]);
    assert_eq!(lines[1], json!({"type": "BOOKMARK", "object": bookmark}));
    assert_secret_masked(&lines[2]["object"]);
    assert_eq!(lines[3], json!({"type": "ERROR", "object": error}));
    assert!(masker.masked_values() >= 9);
}

#[test]
fn table_watch_remembers_columns() {
    // kubectl get -w: Table events, column definitions only in the first.
    let first = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "5"},
        "columnDefinitions": [column("Name", "name"), column("Engine", ""), column("Password", "")],
        "rows": [{"cells": ["orders", "postgres", "db-pass-1"], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "orders"}}}]});
    let later = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "6"},
        "columnDefinitions": [],
        "rows": [{"cells": ["orders", "postgres", "db-pass-2"], "object": database("db-pass-2")}]});
    let stream = format!(
        "{}{}",
        watch_event("ADDED", first),
        watch_event("MODIFIED", later)
    );
    let call = Call {
        query: Some("watch=1"),
        content_type: Some(TABLE),
        ..Call::get("/apis/example.com/v1/namespaces/dev/databases")
    };
    let (out, mode) = call
        .run(e2e_profile(), stream.as_bytes(), 5)
        .expect("masks");
    assert_eq!(mode, Mode::WatchStream);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("db-pass-"), "{text}");
    assert!(text.contains("postgres"), "unmasked columns stay: {text}");

    // A Table watch seen from the middle (no column definitions): every cell is masked.
    let call = Call {
        query: Some("watch=1"),
        content_type: Some(TABLE),
        ..Call::get("/apis/example.com/v1/namespaces/dev/databases")
    };
    let later_only = watch_event(
        "MODIFIED",
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": [],
               "rows": [{"cells": ["orders", "postgres", "db-pass-3"]}]}),
    );
    let (out, _) = call
        .run(e2e_profile(), later_only.as_bytes(), 64)
        .expect("masks");
    let event: Value = serde_json::from_slice(&out).expect("event");
    assert_eq!(
        event["object"]["rows"][0]["cells"],
        json!([MARKER, MARKER, MARKER])
    );
}

#[test]
fn legacy_watch_path_and_named_watch() {
    for (path, query) in [
        ("/api/v1/watch/namespaces/dev/secrets/db-credentials", None),
        (
            "/api/v1/namespaces/dev/secrets",
            Some("fieldSelector=metadata.name%3Ddb-credentials&watch=true"),
        ),
        // A named GET with ?watch: read as a stream, which also reads a plain object.
        (
            "/api/v1/namespaces/dev/secrets/db-credentials",
            Some("watch=true"),
        ),
    ] {
        let call = Call {
            query,
            ..Call::get(path)
        };
        let body = watch_event("ADDED", secret(true));
        let (out, mode) = call
            .run(default_profile(), body.as_bytes(), 3)
            .expect("masks");
        assert_eq!(mode, Mode::WatchStream, "{path}");
        assert_no_plaintext(&out);
        let plain = format!("{}\n", secret(true));
        let (out, _) = call
            .run(default_profile(), plain.as_bytes(), 11)
            .expect("masks");
        assert_secret_masked(&serde_json::from_slice(&out).expect("object"));
    }
}

#[test]
fn pod_log_lines() {
    let call = Call {
        content_type: Some("text/plain"),
        query: Some("follow=true&container=web"),
        ..Call::get("/api/v1/namespaces/dev/pods/web-0/log")
    };
    assert!(!default_profile().applies_to(&info("GET", call.path, None)));
    let mut masker = call.masker(e2e_profile()).expect("log");
    assert_eq!(masker.mode(), Mode::LogLines);
    let mut out = Vec::new();
    out.extend_from_slice(
        &masker
            .push(b"2025-01-02T03:04:05Z starting\n2025-01-02T03:04:06Z db pass")
            .expect("ok"),
    );
    assert_eq!(
        out, b"2025-01-02T03:04:05Z starting\n",
        "complete lines go out at once"
    );
    out.extend_from_slice(
        &masker
            .push(b"word=s3cr3t-value ok\nkey AKIAABCDEFGHIJKLMNOP")
            .expect("ok"),
    );
    out.extend_from_slice(&masker.finish().expect("ok"));
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("2025-01-02T03:04:05Z starting\n2025-01-02T03:04:06Z db password={MARKER} ok\nkey {MARKER}")
    );
    assert_eq!(masker.masked_values(), 2);
}

#[test]
fn fail_closed() {
    let secret_path = "/api/v1/namespaces/dev/secrets/db-credentials";
    let new = |status: u16, ct: Option<&str>, ce: Option<&str>, query: Option<&str>| {
        ResponseMasker::new(
            default_profile(),
            &info("GET", secret_path, query),
            query,
            status,
            ct,
            ce,
        )
        .map(|m| m.mode())
    };
    assert_eq!(
        new(200, Some(JSON), Some("gzip"), None),
        Err(MaskError::ContentEncoding("gzip".into()))
    );
    assert!(matches!(
        new(200, Some("application/vnd.kubernetes.protobuf"), None, None),
        Err(MaskError::ContentType(_))
    ));
    assert!(matches!(
        new(200, Some("application/yaml"), None, None),
        Err(MaskError::ContentType(_))
    ));
    assert!(matches!(
        new(
            200,
            Some("application/vnd.kubernetes.protobuf;stream=watch"),
            None,
            Some("watch=1")
        ),
        Err(MaskError::ContentType(_))
    ));
    assert!(matches!(
        new(500, Some("text/plain"), None, None),
        Err(MaskError::ContentType(_))
    ));
    assert_eq!(
        new(200, Some(JSON), Some("identity"), None),
        Ok(Mode::Whole)
    );

    // Not JSON, or JSON cut short.
    let call = Call::get(secret_path);
    assert!(matches!(
        call.run(default_profile(), b"kind: Secret\n", 4),
        Err(MaskError::InvalidJson { .. })
    ));
    let body = secret(true).to_string();
    assert!(matches!(
        call.run(default_profile(), &body.as_bytes()[..body.len() - 1], 4),
        Err(MaskError::InvalidJson { .. })
    ));

    // Over the body limit: an error, never the body.
    let small = Masker::from_config(&config("max_body_bytes: 100\nmax_event_bytes: 50\nmax_log_line_bytes: 10\nprofiles: {logs: {logs: {patterns: [x]}}}"))
        .expect("compiles");
    let err = call.run(small.default_profile(), body.as_bytes(), 30);
    assert_eq!(err, Err(MaskError::BodyTooLarge { limit: 100 }));

    let watch = Call {
        query: Some("watch=true"),
        ..Call::get("/api/v1/secrets")
    };
    let event = watch_event("ADDED", secret(true));
    assert_eq!(
        watch.run(small.default_profile(), event.as_bytes(), 30),
        Err(MaskError::EventTooLarge { limit: 50 })
    );
    // A stream that stops inside an event.
    assert_eq!(
        watch.run(default_profile(), &event.as_bytes()[..event.len() / 2], 30),
        Err(MaskError::TruncatedEvent)
    );
    assert_eq!(
        watch.run(
            default_profile(),
            b"{\"type\":\"ADDED\",\"object\":{}}\n\"x\"",
            30
        ),
        Err(MaskError::NotAnEvent)
    );

    let log = Call {
        content_type: Some("text/plain"),
        ..Call::get("/api/v1/namespaces/dev/pods/p/log")
    };
    let logs = small.profile("logs").expect("logs");
    assert_eq!(
        log.run(logs.clone(), b"0123456789abc\n", 3),
        Err(MaskError::LogLineTooLong { limit: 10 })
    );
    assert_eq!(
        log.run(logs.clone(), b"0123456789\nok\n", 4).map(|r| r.0),
        Ok(b"0123456789\nok\n".to_vec())
    );

    // Once failed, always failed.
    let mut masker = call.masker(default_profile()).expect("whole");
    assert!(masker.push(b"not json").is_ok());
    assert!(masker.finish().is_err());
    assert_eq!(masker.push(b"{}"), Err(MaskError::Failed));
    assert_eq!(masker.finish(), Err(MaskError::Failed));
}

#[test]
fn duplicate_keys_cannot_smuggle_a_value() {
    let body = format!(
        "{{\"kind\":\"Secret\",\"apiVersion\":\"v1\",\"data\":{{\"password\":\"{}\"}},\"data\":null}}",
        b64(PLAIN)
    );
    let (out, _) = Call::get("/api/v1/namespaces/dev/secrets/s")
        .run(default_profile(), body.as_bytes(), 8)
        .expect("masks");
    assert_no_plaintext(&out);
}

#[test]
fn config_yaml_errors_name_the_problem() {
    for (yaml, want) in [
        ("profiles: {p: {configmaps: {keys: ['[']}}}", "glob"),
        (
            "profiles: {p: {fields: [{resource: widgets, paths: [spec.x]}]}}",
            "kind",
        ),
        ("profiles: {p: {unknown: 1}}", "unknown"),
        ("max_body_bytes: 0", "max_body_bytes"),
        ("nope: 1", "unknown"),
    ] {
        let err = serde_saphyr::from_str::<MaskConfig>(yaml).expect_err(yaml);
        assert!(err.to_string().contains(want), "{yaml}: {err}");
    }
    let parsed = config("profiles: {}");
    assert_eq!(parsed.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

/// Secret values that cannot occur in the output by accident: plaintext with a prefix no other
/// output text has, base64 of at least 6 random bytes.
fn secret_entries() -> impl Strategy<Value = Vec<(String, Vec<u8>, String)>> {
    prop::collection::vec(
        (
            "[a-z][a-z0-9._-]{0,12}",
            prop::collection::vec(any::<u8>(), 6..40),
            "sv-[A-Za-z0-9 !#$%&()*+,./:;=?@^_{|}~-]{4,24}",
        ),
        1..5,
    )
}

fn stream_for(entries: &[(String, Vec<u8>, String)], events: usize) -> Vec<u8> {
    let engine = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, bytes, _)| (k.clone(), Value::String(engine.encode(bytes))))
        .collect();
    let string_data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, _, plain)| (k.clone(), Value::String(plain.clone())))
        .collect();
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": string_data});
    let object = json!({"kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "s", "namespace": "dev", "resourceVersion": "7",
                     "annotations": {LAST_APPLIED_ANNOTATION: applied.to_string()}},
        "data": data, "stringData": string_data, "type": "Opaque"});
    let table_row = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": secret_columns(),
        "rows": [{"cells": ["s", "Opaque", entries.len(), "1s"], "object": object.clone()}]});
    let mut stream = String::new();
    for i in 0..events {
        let (kind, obj) = match i % 4 {
            0 => ("ADDED", object.clone()),
            1 => ("MODIFIED", table_row.clone()),
            2 => (
                "BOOKMARK",
                json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"resourceVersion": "8"}}),
            ),
            _ => ("DELETED", object.clone()),
        };
        stream.push_str(&watch_event(kind, obj));
    }
    stream.into_bytes()
}

proptest! {
    #[test]
    fn no_secret_value_survives_any_chunking(
        entries in secret_entries(),
        events in 1usize..6,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let stream = stream_for(&entries, events);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let call = Call { query: Some("watch=true"), ..Call::get("/api/v1/namespaces/dev/secrets") };
        let mut masker = call.masker(default_profile()).expect("watch");
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            out.extend_from_slice(&masker.push(&stream[at..cut]).expect("push"));
            at = cut;
        }
        out.extend_from_slice(&masker.finish().expect("finish"));
        let text = String::from_utf8(out).expect("UTF-8 out");
        let engine = base64::engine::general_purpose::STANDARD;
        for (key, bytes, plain) in &entries {
            let encoded = engine.encode(bytes);
            prop_assert!(!text.contains(&encoded), "data value of {} leaked", key);
            prop_assert!(!text.contains(plain.as_str()), "stringData value of {} leaked", key);
        }
        // Every event is still there, whole, with the keys.
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("event")).collect();
        prop_assert_eq!(lines.len(), events);
        let first_key = entries[0].0.as_str();
        prop_assert_eq!(&lines[0]["object"]["data"][first_key], MARKER_BASE64);
        prop_assert_eq!(&lines[0]["object"]["stringData"][first_key], MARKER);
    }
}
