//! Structural masking end to end (issue #4 sections 2 and 3): every response shape a real client
//! asks for (object, list, Table, watch, YAML/JSON/jsonpath output, the Python client, raw HTTP
//! asking for protobuf or gzip) shows which keys a Secret has and never a value.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use portcullis::mask::{MARKER, MARKER_BASE64};
use portcullis_tests::double::SEED_SECRET_PASSWORD;
use portcullis_tests::harness;

use super::{spawn_lines, tail, wait_for_line, Stack};

/// Everyone may do anything, under a profile that also masks password-like ConfigMap keys and
/// token-like container env values.
const MASKING: &str = r#"policy:
  rules:
    - name: everything-masked
      subjects: {users: ["*"]}
      verbs: ["*"]
      resources: ["*"]
      action: allow
      mask: agents
    - name: urls
      subjects: {users: ["*"]}
      verbs: ["*"]
      non_resource_urls: ["*"]
      action: allow
mask:
  profiles:
    agents:
      configmaps:
        keys: ["*password*"]
      fields:
        - resource: pods
          paths: ["spec.containers[*].env[*].value"]
          when: {field: name, matches: ["*TOKEN*", "*PASSWORD*"]}
"#;

const APPLIED_VALUE: &str = "applied-plaintext-hunter2";
const CREATED_VALUE: &str = "created-through-gateway-42";
const WATCHED_VALUE: &str = "watched-value-swordfish";
const CM_VALUE: &str = "cm-password-value-77";
const ENV_VALUE: &str = "env-token-value-99";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// No form of any secret value used in this test appears in `text`.
fn assert_no_values(what: &str, text: &str) -> Result<()> {
    for value in [
        SEED_SECRET_PASSWORD,
        APPLIED_VALUE,
        CREATED_VALUE,
        WATCHED_VALUE,
        CM_VALUE,
        ENV_VALUE,
    ] {
        ensure!(
            !text.contains(value) && !text.contains(&b64(value)),
            "{what} leaks {value:?}:\n{text}"
        );
    }
    Ok(())
}

const PYTHON_SHAPES: &str = r#"
import http.client, json, ssl, sys
from kubernetes import client, config
kubeconfig, host, port, ca, token = sys.argv[1:6]
config.load_kube_config(config_file=kubeconfig)
v1 = client.CoreV1Api()
out = {}
s = v1.read_namespaced_secret("db-credentials", "default")
out["read"] = s.data
out["list"] = [x.data for x in v1.list_secret_for_all_namespaces().items]
ctx = ssl.create_default_context(cafile=ca)
def raw(path, headers):
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    c.putrequest("GET", path, skip_accept_encoding=True)
    c.putheader("Authorization", "Bearer " + token)
    for k, v in headers:
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    return {"code": r.status, "type": r.getheader("Content-Type"), "encoding": r.getheader("Content-Encoding"), "body": body.decode("latin-1")}
path = "/api/v1/namespaces/default/secrets/db-credentials"
out["protobuf"] = raw(path, [("Accept", "application/vnd.kubernetes.protobuf")])
out["gzip"] = raw(path, [("Accept", "application/json"), ("Accept-Encoding", "gzip")])
out["table"] = raw("/api/v1/namespaces/default/secrets?includeObject=Object", [("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")])
out["metadata"] = raw("/api/v1/namespaces/default/secrets", [("Accept", "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")])
print(json.dumps(out))
"#;

#[test]
fn secrets_are_masked_in_every_response_shape() -> Result<()> {
    let s = Stack::start_with(MASKING)?;

    // Objects written through the gateway: a Secret via `apply` (its last-applied annotation
    // holds the plaintext), one via `create`, a ConfigMap and a pod with sensitive values.
    let manifest = s.dir.path().join("objects.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: default\nstringData:\n  api-key: {APPLIED_VALUE}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  db_password: {CM_VALUE}\n  color: blue\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: envpod\n  namespace: default\nspec:\n  containers:\n  - name: main\n    image: busybox\n    env:\n    - name: API_TOKEN\n      value: {ENV_VALUE}\n    - name: PLAIN\n      value: visible-value\n"
        ),
    )?;
    let applied = s.kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        manifest.to_str().context("utf-8")?,
    ])?;
    assert_no_values("kubectl apply output", &applied)?;
    let created = s.kubectl(&[
        "create",
        "secret",
        "generic",
        "created",
        &format!("--from-literal=token={CREATED_VALUE}"),
        "-o",
        "json",
    ])?;
    assert_no_values("the object `create` returned", &created)?;
    ensure!(created.contains(MARKER_BASE64), "{created}");

    // Single object in each output format kubectl offers.
    let yaml = s.kubectl(&["get", "secret", "db-credentials", "-o", "yaml"])?;
    ensure!(
        yaml.contains("password:") && yaml.contains(MARKER_BASE64),
        "{yaml}"
    );
    assert_no_values("get -o yaml", &yaml)?;
    let json: serde_json::Value =
        serde_json::from_str(&s.kubectl(&["get", "secret", "applied", "-o", "json"])?)?;
    ensure!(json["data"]["api-key"] == MARKER_BASE64, "{json}");
    let last_applied = json["metadata"]["annotations"]
        ["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .context("the last-applied annotation is kept (masked)")?;
    ensure!(
        last_applied.contains(MARKER) || last_applied == MARKER,
        "{json}"
    );
    assert_no_values("get -o json", &json.to_string())?;
    let jsonpath = s.kubectl(&[
        "get",
        "secret",
        "db-credentials",
        "-o",
        "jsonpath={.data.password}",
    ])?;
    ensure!(jsonpath == MARKER_BASE64, "{jsonpath}");

    // Lists (JSON), tables (kubectl's default output), and describe.
    let list = s.kubectl(&["get", "secrets", "-A", "-o", "json"])?;
    ensure!(list.contains("db-credentials") && list.contains("created"));
    assert_no_values("get secrets -A -o json", &list)?;
    let table = s.kubectl(&["get", "secrets", "-A"])?;
    ensure!(table.contains("applied"), "{table}");
    assert_no_values("get secrets (table)", &table)?;
    let describe = s.kubectl(&["describe", "secret", "applied"])?;
    ensure!(describe.contains("api-key"), "{describe}");
    assert_no_values("describe secret", &describe)?;

    // Profile extras: password-like ConfigMap keys and token-like env values; the rest intact.
    let cm: serde_json::Value =
        serde_json::from_str(&s.kubectl(&["get", "configmap", "settings", "-o", "json"])?)?;
    ensure!(
        cm["data"]["db_password"] == MARKER && cm["data"]["color"] == "blue",
        "{cm}"
    );
    let pod: serde_json::Value =
        serde_json::from_str(&s.kubectl(&["get", "pod", "envpod", "-o", "json"])?)?;
    let env = &pod["spec"]["containers"][0]["env"];
    ensure!(
        env[0]["value"] == MARKER && env[1]["value"] == "visible-value",
        "{env}"
    );

    // kubectl asks for protobuf first; what reached the API server asked for JSON only.
    let secret_gets: Vec<_> = s
        .log()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.contains("/secrets"))
        .collect();
    ensure!(!secret_gets.is_empty());
    for e in &secret_gets {
        let accept = e.accept.as_deref().unwrap_or_default();
        ensure!(
            !accept.contains("protobuf"),
            "a masked request still asked for protobuf: {e:?}"
        );
    }

    // A watch: events masked one by one as they happen.
    let mut watch = s
        .kubectl_cmd(&[
            "get",
            "secrets",
            "-w",
            "-o",
            "json",
            "--output-watch-events",
        ])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = spawn_lines(&mut watch)?;
    let watched = (|| -> Result<String> {
        wait_for_line(&lines, Duration::from_secs(20), |l| {
            l.contains("db-credentials")
        })?;
        s.kubectl(&[
            "create",
            "secret",
            "generic",
            "watched",
            &format!("--from-literal=k={WATCHED_VALUE}"),
        ])?;
        let mut seen = String::new();
        // The event arrives as pretty JSON over several lines; read until its data key shows.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline && !seen.contains("\"watched\"") {
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            seen.push_str(&line);
            seen.push('\n');
        }
        Ok(seen)
    })();
    let _ = watch.kill();
    let _ = watch.wait();
    let watched = watched?;
    ensure!(
        watched.contains("\"watched\"") && watched.contains("ADDED"),
        "the watch did not deliver the new secret:\n{watched}"
    );
    ensure!(watched.contains(MARKER_BASE64), "{watched}");
    assert_no_values("watch events", &watched)?;

    // The Python client, and raw HTTP asking for what the masker cannot read.
    let python = harness::python()?;
    let script = s.dir.path().join("shapes.py");
    std::fs::write(&script, PYTHON_SHAPES)?;
    let url = s.gateway.url.trim_start_matches("https://").to_string();
    let (host, port) = url.rsplit_once(':').context("host:port")?;
    let out = Command::new(&python)
        .arg(&script)
        .arg(&s.kubeconfig)
        .args([host, port])
        .arg(&s.gateway_ca)
        .arg(&s.client_token)
        .output()?;
    ensure!(
        out.status.success(),
        "python failed: {}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&s.gateway.log(), 20)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_no_values("python client and raw HTTP", &text)?;
    let r: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(r["read"]["password"] == MARKER_BASE64, "{}", r["read"]);
    ensure!(
        r["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["password"] == MARKER_BASE64)),
        "{}",
        r["list"]
    );
    for case in ["protobuf", "gzip"] {
        let c = &r[case];
        ensure!(c["code"] == 200, "{case}: {c}");
        ensure!(
            c["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("application/json"))
                && c["encoding"].is_null(),
            "{case}: the gateway must answer JSON, uncompressed: {c}"
        );
        ensure!(
            c["body"]
                .as_str()
                .is_some_and(|b| b.contains(MARKER_BASE64)),
            "{case}: {c}"
        );
    }
    let table: serde_json::Value =
        serde_json::from_str(r["table"]["body"].as_str().context("table body")?)?;
    ensure!(table["kind"] == "Table", "{table}");
    let rows = table["rows"].as_array().context("rows")?;
    ensure!(
        rows.iter()
            .any(|row| row["object"]["data"]["password"] == MARKER_BASE64),
        "Table rows[].object not masked: {table}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(r["metadata"]["body"].as_str().context("metadata body")?)?;
    ensure!(
        meta["kind"] == "PartialObjectMetadataList",
        "{}",
        r["metadata"]
    );

    // The API server stored the real values: the gateway masked what it returned, it did not
    // rewrite what it forwarded.
    let secrets =
        portcullis_tests::double::resources::lookup("", "v1", "secrets").context("secrets")?;
    let stored = s
        .double()
        .store()
        .get(secrets, "default", "created")
        .context("the created secret is stored")?;
    ensure!(
        stored["data"]["token"] == b64(CREATED_VALUE).as_str(),
        "the upstream got a changed secret: {stored}"
    );
    Ok(())
}
