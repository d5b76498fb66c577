//! In-process end-to-end tests of the double: each test starts a real double on 127.0.0.1 and drives it over TLS
//! with a deliberately small HTTP/1.1 client (and raw HTTP/2 frames for the h2 check), so what is tested is the
//! wire behaviour clients see. Tests only talk to the double they started and stop it at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{start, DoubleConfig, RunningDouble, SEED_SECRET_PASSWORD};

const TOKEN: &str = "gateway-token-0123456789";
const OTHER_TOKEN: &str = "plain-user-token-abcdef";
const STEP: Duration = Duration::from_secs(10);

async fn double() -> (RunningDouble, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kube-double-test-{}", uuid::Uuid::new_v4()));
    let mut cfg = DoubleConfig::local(&dir, TOKEN, "portcullis-gateway");
    cfg.tokens.push((OTHER_TOKEN.into(), "plain-user".into()));
    (start(cfg).await.expect("double starts"), dir)
}

async fn stop(d: RunningDouble, dir: std::path::PathBuf) {
    d.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    h2_config: Arc<rustls::ClientConfig>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 connection: request written, response read head-first so streams can be consumed incrementally.
struct Conn {
    reader: BufReader<TlsStream<TcpStream>>,
    chunked: bool,
    pending: Vec<u8>,
}

impl Conn {
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        self.chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        (status, headers)
    }

    /// The next chunk of a chunked body; None at its end.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        self.reader.read_line(&mut size).await.ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await.ok()?;
        data.truncate(size);
        (size > 0).then_some(data)
    }

    async fn body(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        if self.chunked {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await {
                body.extend(c);
            }
            return body;
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).await.unwrap();
        body
    }

    /// The next complete line of a streamed (chunked) body.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let chunk = self.chunk().await?;
            self.pending.extend(chunk);
        }
    }
}

impl Client {
    fn new(d: &RunningDouble) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(&d.ca_pem_path).expect("ca.pem parses");
        roots.add(ca).unwrap();
        let build = |alpn: &[u8]| {
            let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(c)
        };
        Self {
            addr: d.addr,
            config: build(b"http/1.1"),
            h2_config: build(b"h2"),
        }
    }

    async fn tls(&self, config: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(config.clone())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("TLS handshake with the test CA")
    }

    async fn open(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Conn {
        let mut stream = self.tls(&self.config).await;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.flush().await.unwrap();
        Conn {
            reader: BufReader::new(stream),
            chunked: false,
            pending: Vec::new(),
        }
    }

    async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut conn = self.open(method, path, headers, body).await;
        let (status, headers) = conn.head().await;
        let body = tokio::time::timeout(STEP, conn.body(&headers))
            .await
            .expect("body in time");
        Resp {
            status,
            headers,
            body,
        }
    }

    /// A request with the gateway's token.
    async fn req(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("accept")) {
            headers.push(("Accept", "application/json"));
        }
        headers.extend_from_slice(extra);
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        if body.is_some()
            && !extra
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type", "application/json"));
        }
        self.raw(method, path, &headers, &bytes).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None).await
    }
}

#[tokio::test]
async fn discovery_documents() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let v = c.get("/version").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["gitVersion"], "v1.35.0");
    assert_eq!(v.header("content-type"), Some("application/json"));

    let api = c.get("/api").await.json();
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));

    let core = c.get("/api/v1").await.json();
    assert_eq!(core["kind"], "APIResourceList");
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "pods",
        "pods/exec",
        "pods/log",
        "pods/attach",
        "namespaces",
        "secrets",
    ] {
        assert!(names.contains(&want), "{want}");
    }
    let apis = c.get("/apis").await.json();
    assert_eq!(apis["kind"], "APIGroupList");
    assert_eq!(
        c.get("/apis/apps/v1").await.json()["groupVersion"],
        "apps/v1"
    );
    assert_eq!(c.get("/apis/authorization.k8s.io/v1").await.status, 200);

    // kubectl asks for aggregated discovery first; a plain JSON answer makes it fall back.
    let aggregated = c
        .req(
            "GET",
            "/api",
            &[("Accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")],
            None,
        )
        .await;
    assert_eq!(aggregated.header("content-type"), Some("application/json"));

    let openapi = c.get("/openapi/v3").await;
    assert_eq!(openapi.status, 404);
    assert_eq!(openapi.json()["kind"], "Status");
    assert_eq!(openapi.json()["code"], 404);
    let health = c.get("/readyz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    stop(d, dir).await;
}

#[tokio::test]
async fn authentication_and_impersonation() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let anonymous = c.raw("GET", "/api/v1/namespaces", &[], b"").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["reason"], "Unauthorized");
    let wrong = c
        .raw(
            "GET",
            "/api/v1/namespaces",
            &[("Authorization", "Bearer nope")],
            b"",
        )
        .await;
    assert_eq!(wrong.status, 401);

    let other = format!("Bearer {OTHER_TOKEN}");
    let denied = c
        .raw(
            "GET",
            "/api/v1/namespaces",
            &[("Authorization", &other), ("Impersonate-User", "alice")],
            b"",
        )
        .await;
    assert_eq!(denied.status, 403);
    let status = denied.json();
    assert_eq!(status["reason"], "Forbidden");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("cannot impersonate resource \"users\""));
    assert_eq!(
        c.raw(
            "GET",
            "/api/v1/namespaces",
            &[("Authorization", &other)],
            b""
        )
        .await
        .status,
        200
    );

    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let whoami = c
        .req(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[
                ("Impersonate-User", "alice@example.com"),
                ("Impersonate-Group", "devs"),
                ("Impersonate-Group", "ops"),
                ("Impersonate-Extra-portcullis.dev%2Fsession", "s-42"),
            ],
            Some(&review),
        )
        .await;
    assert_eq!(whoami.status, 201);
    let info = &whoami.json()["status"]["userInfo"];
    assert_eq!(info["username"], "alice@example.com");
    assert_eq!(
        info["groups"],
        json!(["devs", "ops", "system:authenticated"])
    );
    assert_eq!(info["extra"]["portcullis.dev/session"], json!(["s-42"]));

    let ssar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}});
    let can_i = c
        .req(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &[],
            Some(&ssar),
        )
        .await;
    assert_eq!(can_i.json()["status"]["allowed"], true);

    // The log has one line per request, with hashed credentials only.
    let log = d.log();
    assert_eq!(log.len(), 6);
    let raw_log = std::fs::read_to_string(&d.log_path).unwrap();
    assert!(
        !raw_log.contains(TOKEN) && !raw_log.contains(OTHER_TOKEN),
        "tokens never appear in clear"
    );
    let first = &log[0];
    assert_eq!(
        (
            first.status,
            first.auth_scheme.as_deref(),
            first.user.as_deref()
        ),
        (401, None, None)
    );
    assert_eq!(log[1].auth_scheme.as_deref(), Some("Bearer"));
    let denied_line = log.iter().find(|e| e.status == 403).unwrap();
    assert_eq!(denied_line.token_user.as_deref(), Some("plain-user"));
    assert_eq!(denied_line.user, None);
    let who = log
        .iter()
        .find(|e| e.path.ends_with("selfsubjectreviews"))
        .unwrap();
    assert_eq!(
        who.token_sha256.as_deref(),
        Some(super::auth::sha256_hex(TOKEN).as_str())
    );
    assert_eq!(who.user.as_deref(), Some("alice@example.com"));
    assert_eq!(who.token_user.as_deref(), Some("portcullis-gateway"));
    assert_eq!(who.method, "POST");
    assert_eq!(who.http_version, "HTTP/1.1");
    assert_eq!(who.content_type.as_deref(), Some("application/json"));
    let groups: Vec<&str> = who
        .headers
        .iter()
        .filter(|h| h.name == "impersonate-group")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(groups, ["devs", "ops"]);
    assert!(who
        .headers
        .iter()
        .any(|h| h.name == "impersonate-extra-portcullis.dev%2fsession"));
    stop(d, dir).await;
}

#[tokio::test]
async fn crud_round_trip() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let base = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "settings", "labels": {"team": "a"}}, "data": {"k": "v"}});
    let created = c.req("POST", base, &[], Some(&cm)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(created["metadata"]["uid"].is_string());
    assert_eq!(
        c.req("POST", base, &[], Some(&cm)).await.json()["reason"],
        "AlreadyExists"
    );
    let wrong_ns = json!({"metadata": {"name": "x", "namespace": "dev"}});
    assert_eq!(c.req("POST", base, &[], Some(&wrong_ns)).await.status, 400);

    let got = c.get(&format!("{base}/settings")).await.json();
    assert_eq!(got["data"]["k"], "v");
    assert_eq!(got["kind"], "ConfigMap");

    let list = c
        .get(&format!("{base}?labelSelector=team%3Da"))
        .await
        .json();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["apiVersion"], "v1");
    assert!(list["metadata"]["resourceVersion"].is_string());
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["items"][0].get("kind").is_none());
    let none = c
        .get(&format!("{base}?labelSelector=team+in+%28b%2Cc%29"))
        .await
        .json();
    assert!(none["items"].as_array().unwrap().is_empty());
    let others = c
        .get(&format!("{base}?labelSelector=team+notin+%28a%29"))
        .await
        .json();
    let names: Vec<&str> = others["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app-config"]);
    let bad = c.get(&format!("{base}?fieldSelector=spec.nope%3D1")).await;
    assert_eq!(bad.status, 400);

    let merge = c
        .req(
            "PATCH",
            &format!("{base}/settings"),
            &[("Content-Type", "application/merge-patch+json")],
            Some(&json!({"data": {"k2": "v2"}})),
        )
        .await;
    assert_eq!(merge.status, 200, "{}", merge.text());
    assert_eq!(merge.json()["data"], json!({"k": "v", "k2": "v2"}));
    let jp = c
        .req(
            "PATCH",
            &format!("{base}/settings"),
            &[("Content-Type", "application/json-patch+json")],
            Some(&json!([{"op": "remove", "path": "/data/k"}])),
        )
        .await
        .json();
    assert_eq!(jp["data"], json!({"k2": "v2"}));
    let unsupported = c
        .req(
            "PATCH",
            &format!("{base}/settings"),
            &[("Content-Type", "text/plain")],
            Some(&json!({})),
        )
        .await;
    assert_eq!(unsupported.status, 415);

    let mut stale = created.clone();
    stale["data"] = json!({"x": "y"});
    let conflict = c
        .req("PUT", &format!("{base}/settings"), &[], Some(&stale))
        .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["reason"], "Conflict");
    let mut fresh = jp.clone();
    fresh["data"] = json!({"x": "y"});
    let updated = c
        .req("PUT", &format!("{base}/settings"), &[], Some(&fresh))
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["data"], json!({"x": "y"}));

    let deleted = c
        .req("DELETE", &format!("{base}/settings"), &[], None)
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["metadata"]["name"], "settings");
    let gone = c.get(&format!("{base}/settings")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["message"], "configmaps \"settings\" not found");

    // Secrets fold stringData into data; dry runs store nothing.
    let secret = json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}});
    let s = c
        .req(
            "POST",
            "/api/v1/namespaces/dev/secrets?dryRun=All",
            &[],
            Some(&secret),
        )
        .await
        .json();
    assert_eq!(s["data"]["token"], "YWJj");
    assert!(s.get("stringData").is_none());
    assert_eq!(c.get("/api/v1/namespaces/dev/secrets/s").await.status, 404);
    let seeded = c
        .get("/api/v1/namespaces/default/secrets/db-credentials")
        .await
        .json();
    use base64::Engine;
    let password = base64::engine::general_purpose::STANDARD
        .decode(seeded["data"]["password"].as_str().unwrap());
    assert_eq!(password.unwrap(), SEED_SECRET_PASSWORD.as_bytes());

    // Deployments: generation, scale subresource.
    let scaled = c
        .req(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            &[("Content-Type", "application/merge-patch+json")],
            Some(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .json();
    assert_eq!(scaled["kind"], "Scale");
    assert_eq!(scaled["spec"]["replicas"], 3);
    let web = c
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .await
        .json();
    assert_eq!(web["metadata"]["generation"], 2);
    assert_eq!(web["status"]["readyReplicas"], 3);

    // Deleting a namespace deletes what is in it.
    assert_eq!(
        c.req("DELETE", "/api/v1/namespaces/dev", &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/api/v1/namespaces/dev/pods/agent-0").await.status,
        404
    );
    assert!(
        c.get("/api/v1/pods").await.json()["items"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    stop(d, dir).await;
}

#[tokio::test]
async fn table_and_logs() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let table = c
        .req(
            "GET",
            "/api/v1/namespaces/default/pods",
            &[(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )],
            None,
        )
        .await;
    assert_eq!(
        table.header("content-type"),
        Some("application/json;as=Table;v=v1;g=meta.k8s.io")
    );
    let t = table.json();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["rows"].as_array().unwrap().len(), 1);
    assert!(!t["columnDefinitions"].as_array().unwrap().is_empty());

    let protobuf_only = c
        .req(
            "GET",
            "/api/v1/namespaces/default/pods/web-0",
            &[("Accept", "application/vnd.kubernetes.protobuf")],
            None,
        )
        .await;
    assert_eq!(
        protobuf_only.header("content-type"),
        Some("application/json")
    );
    assert_eq!(protobuf_only.json()["status"]["phase"], "Running");

    let log = c
        .get("/api/v1/namespaces/default/pods/web-0/log?tailLines=2")
        .await;
    assert_eq!(log.status, 200);
    let text = log.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].ends_with("log line 20 from web-0/main"), "{text}");
    assert_eq!(
        c.get("/api/v1/namespaces/default/pods/web-0/log?container=nope")
            .await
            .status,
        400
    );
    assert_eq!(
        c.get("/api/v1/namespaces/default/pods/nope/log")
            .await
            .status,
        404
    );

    let auth = format!("Bearer {TOKEN}");
    let mut follow = c
        .open(
            "GET",
            "/api/v1/namespaces/default/pods/web-0/log?follow=true&tailLines=1",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(follow.head().await.0, 200);
    let first = tokio::time::timeout(STEP, follow.line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.ends_with("log line 20 from web-0/main"), "{first}");
    let next = tokio::time::timeout(STEP, follow.line())
        .await
        .unwrap()
        .unwrap();
    assert!(next.ends_with("log line 21 from web-0/main"), "{next}");
    drop(follow);
    stop(d, dir).await;
}

#[tokio::test]
async fn watch_sees_new_objects() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let auth = format!("Bearer {TOKEN}");
    let rv = c.get("/api/v1/namespaces/default/configmaps").await.json()["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = c
        .open(
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&labelSelector=w%3D1"),
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    let (status, headers) = watch.head().await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "application/json"));
    let cm = json!({"metadata": {"name": "watched", "labels": {"w": "1"}}});
    let skipped = json!({"metadata": {"name": "unlabelled"}});
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[],
            Some(&skipped)
        )
        .await
        .status,
        201
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[],
            Some(&cm)
        )
        .await
        .status,
        201
    );
    let line = tokio::time::timeout(STEP, watch.line())
        .await
        .expect("event in time")
        .unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "watched");
    assert_eq!(event["object"]["kind"], "ConfigMap");
    c.req(
        "DELETE",
        "/api/v1/namespaces/default/configmaps/watched",
        &[],
        None,
    )
    .await;
    let line = tokio::time::timeout(STEP, watch.line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap()["type"],
        "DELETED"
    );
    drop(watch);

    // From "0": synthetic ADDED for what exists; timeoutSeconds ends the stream.
    let mut initial = c
        .open(
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0&timeoutSeconds=1",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    initial.head().await;
    let mut names = Vec::new();
    while let Some(line) = tokio::time::timeout(STEP, initial.line())
        .await
        .expect("stream ends in time")
    {
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["type"], "ADDED");
        names.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(names.contains(&"app-config".to_string()), "{names:?}");

    // A compacted resourceVersion is an ERROR event carrying 410.
    for i in 0..1100 {
        d.store()
            .create(
                super::resources::lookup("", "v1", "configmaps").unwrap(),
                "default",
                json!({"metadata": {"name": format!("bulk-{i}")}}),
                Default::default(),
            )
            .unwrap();
    }
    let mut old = c
        .open(
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(old.head().await.0, 200);
    let line = tokio::time::timeout(STEP, old.line())
        .await
        .unwrap()
        .unwrap();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    stop(d, dir).await;
}

#[tokio::test]
async fn exec_over_websocket() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let missing = c
        .req(
            "GET",
            "/api/v1/namespaces/default/pods/nope/exec?command=whoami&stdout=true",
            &[],
            None,
        )
        .await;
    assert_eq!(missing.status, 404);

    let stream = c.tls(&c.config).await;
    let url = format!(
        "wss://{}/api/v1/namespaces/default/pods/web-0/exec?command=whoami&stdout=true",
        d.addr
    );
    let mut request = url.into_client_request().unwrap();
    let h = request.headers_mut();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    h.insert("impersonate-user", "alice".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket upgrade");
    assert_eq!(response.status(), 101);
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("exec output in time")
    {
        match msg {
            Ok(Message::Binary(data)) if !data.is_empty() => match data[0] {
                1 => stdout.extend_from_slice(&data[1..]),
                3 => status = Some(serde_json::from_slice::<Value>(&data[1..]).unwrap()),
                _ => {}
            },
            Ok(Message::Close(_)) | Err(_) => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "alice");
    assert_eq!(status.unwrap()["status"], "Success");
    let upgrade = d
        .log()
        .into_iter()
        .find(|e| e.status == 101)
        .expect("101 logged");
    assert_eq!(upgrade.upgrade.as_deref(), Some("websocket"));
    stop(d, dir).await;
}

/// HTTP/2 framing by hand (no h2 client in this crate): preface, SETTINGS, one HEADERS request with literal
/// (non-indexed, non-Huffman) fields, then read frames until the response DATA ends the stream.
#[tokio::test]
async fn http2_requests() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let mut stream = c.tls(&c.h2_config).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream_id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut block = Vec::new();
    literal(&mut block, ":method", "GET");
    literal(&mut block, ":scheme", "https");
    literal(&mut block, ":path", "/api/v1/namespaces/default/pods/web-0");
    literal(&mut block, ":authority", "127.0.0.1");
    literal(&mut block, "authorization", &format!("Bearer {TOKEN}"));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x5, 1, &block));
    stream.write_all(&out).await.unwrap();
    stream.flush().await.unwrap();

    let mut status_byte = None;
    let mut body = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.unwrap();
            match kind {
                0x4 if flags & 1 == 0 => stream.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                0x1 if id == 1 => status_byte = payload.first().copied(),
                0x0 if id == 1 => {
                    body.extend(payload);
                    if flags & 1 == 1 {
                        break;
                    }
                }
                0x7 => panic!("GOAWAY from the server"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(STEP, read)
        .await
        .expect("h2 response in time");
    // 0x88 is HPACK's indexed ":status: 200".
    assert_eq!(status_byte, Some(0x88));
    let pod: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(pod["metadata"]["name"], "web-0");
    let entry = d.log().into_iter().last().unwrap();
    assert_eq!(entry.http_version, "HTTP/2.0");
    assert_eq!(entry.status, 200);
    stop(d, dir).await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let (d, dir) = double().await;
    let c = Client::new(&d);
    let auth = format!("Bearer {TOKEN}");
    let mut watch = c
        .open(
            "GET",
            "/api/v1/pods?watch=1",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    watch.head().await;
    for _ in 0..3 {
        assert!(watch.line().await.is_some());
    }
    tokio::time::timeout(STEP, stop(d, dir))
        .await
        .expect("shutdown does not wait for open watches");
    let rest = tokio::time::timeout(STEP, watch.line())
        .await
        .expect("stream closed");
    assert!(rest.is_none());
    let _ = watch.reader.get_mut().shutdown().await;
}
