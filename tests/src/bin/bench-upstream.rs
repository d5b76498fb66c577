//! `bench-upstream`: the trivial backend of `cargo xtask bench`. Answers `GET
//! /api/v1/namespaces/bench/secrets` with a fixed SecretList of 500 Secrets (the masking
//! benchmark) and every other GET with the same ~1 KB Pod JSON, over HTTP/1.1 keep-alive, on a
//! plaintext port (behind the proxies under test) and optionally on a TLS port (the "direct"
//! baseline, TLS served by this process itself).
//!
//! It does as little as possible per request so that the proxies' cost dominates what the
//! benchmark sees. Must never: listen anywhere but loopback, or be mistaken for the Kubernetes
//! API double (`kube-double`), which is the thing the end-to-end tests run against.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The list the masking benchmark reads; every other path gets the Pod.
const SECRETS_PATH: &str = "/api/v1/namespaces/bench/secrets";
const SECRET_COUNT: usize = 500;

/// The prepared response bodies; cloning shares the bytes.
#[derive(Clone)]
struct Bodies {
    pod: Bytes,
    secrets: Bytes,
}

#[derive(Parser)]
#[command(
    name = "bench-upstream",
    about = "Trivial HTTP/1.1 backend for `cargo xtask bench`"
)]
struct Args {
    /// Plaintext listener (what the proxies forward to).
    #[arg(long)]
    plain: SocketAddr,
    /// TLS listener for the direct baseline; needs `--cert` and `--key`.
    #[arg(long)]
    tls: Option<SocketAddr>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for addr in std::iter::once(args.plain).chain(args.tls) {
        if !addr.ip().is_loopback() {
            bail!("{addr}: bench-upstream only listens on loopback");
        }
    }
    let tls = match (args.tls, &args.cert, &args.key) {
        (None, _, _) => None,
        (Some(addr), Some(cert), Some(key)) => Some((addr, acceptor(cert, key)?)),
        (Some(_), _, _) => bail!("--tls needs --cert and --key"),
    };
    let bodies = Bodies {
        pod: Bytes::from(pod_json()),
        secrets: Bytes::from(secret_list_json(SECRET_COUNT)),
    };
    eprintln!(
        "bench-upstream: {} byte Pod, {} byte SecretList at {SECRETS_PATH}, on http://{}{}",
        bodies.pod.len(),
        bodies.secrets.len(),
        args.plain,
        tls.as_ref()
            .map(|(a, _)| format!(" and https://{a}"))
            .unwrap_or_default()
    );

    // Default worker count (the cores available), like the gateway and nginx in the benchmark.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let plain = TcpListener::bind(args.plain)
            .await
            .with_context(|| format!("binding {}", args.plain))?;
        let plain_task = tokio::spawn(accept_loop(plain, None, bodies.clone()));
        if let Some((addr, acceptor)) = tls {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tokio::spawn(accept_loop(listener, Some(acceptor), bodies));
        }
        plain_task.await?;
        Ok(())
    })
}

fn acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, bodies: Bodies) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("bench-upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, bodies.clone()));
            // Clients closing mid-request is normal at the end of every load run: not reported.
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    bodies: Bodies,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = if req.method() == Method::GET {
        let body = if req.uri().path() == SECRETS_PATH {
            bodies.secrets
        } else {
            bodies.pod
        };
        Response::new(Full::new(body))
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A Pod shaped like a real API server response (metadata, one container, status), so the
/// proxies move a realistic ~1 KB body.
fn pod_json() -> String {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": "bench",
            "namespace": "default",
            "uid": "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "resourceVersion": "48213",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app": "bench", "tier": "backend"},
            "annotations": {"portcullis.dev/purpose": "benchmark payload"}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/bench/app:1.0.0",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"}
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-1",
            "schedulerName": "default-scheduler"
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ],
            "hostIP": "10.0.0.11",
            "podIP": "10.244.1.23",
            "startTime": "2025-01-01T00:00:00Z",
            "containerStatuses": [{
                "name": "app",
                "ready": true,
                "restartCount": 0,
                "image": "registry.example/bench/app:1.0.0",
                "started": true,
                "state": {"running": {"startedAt": "2025-01-01T00:00:04Z"}}
            }],
            "qosClass": "Burstable"
        }
    })
    .to_string()
}

/// A SecretList as the API server returns it for `kubectl get secrets -o json`: typed items
/// without `kind`, each with managed fields, four data keys, and (every other one, as if created
/// by `kubectl apply`) the last-applied annotation holding the plaintext. The masker has to
/// rewrite every data value and every such annotation, which is the work being measured.
fn secret_list_json(count: usize) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let items: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let name = format!("app-{i:03}-credentials");
            let plain = [
                ("username", format!("svc-app-{i:03}")),
                ("password", format!("pw-{i:03}-Xk9#vL2q!Rt7mZ4w")),
                (
                    "database-url",
                    format!("postgres://svc-app-{i:03}:pw-{i:03}@db.bench.svc:5432/app{i:03}"),
                ),
                (
                    "api-token",
                    format!("tok_{i:03}_4f9c2a7e1b8d6053c4a9e2f7b1d8c6a3e5f0b2d4"),
                ),
            ];
            let data: serde_json::Map<String, serde_json::Value> = plain
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(b64.encode(v))))
                .collect();
            let mut annotations = serde_json::Map::new();
            annotations.insert("portcullis.dev/owner".into(), json!("team-bench"));
            if i % 2 == 0 {
                let string_data: serde_json::Map<String, serde_json::Value> = plain
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), json!(v)))
                    .collect();
                let applied = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": name, "namespace": "bench", "annotations": {}},
                    "stringData": string_data,
                    "type": "Opaque"
                });
                annotations.insert(
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    json!(format!("{applied}\n")),
                );
            }
            json!({
                "metadata": {
                    "name": name,
                    "namespace": "bench",
                    "uid": format!("0b7c{i:04x}-3d2e-4f1a-9b8c-7d6e5f4a3b2c"),
                    "resourceVersion": (50_000 + i).to_string(),
                    "creationTimestamp": "2025-01-01T00:00:00Z",
                    "labels": {"app": format!("app-{i:03}"), "tier": "backend"},
                    "annotations": annotations,
                    "managedFields": [{
                        "manager": "kubectl-client-side-apply",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2025-01-01T00:00:00Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {
                            "f:data": {
                                ".": {}, "f:api-token": {}, "f:database-url": {},
                                "f:password": {}, "f:username": {}
                            },
                            "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                            "f:type": {}
                        }
                    }]
                },
                "data": data,
                "type": "Opaque"
            })
        })
        .collect();
    json!({
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "50500"},
        "items": items
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_list_has_the_requested_items_with_decodable_data() {
        let list: serde_json::Value = serde_json::from_str(&secret_list_json(7)).unwrap();
        assert_eq!(list["kind"], "SecretList");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 7);
        let b64 = base64::engine::general_purpose::STANDARD;
        for item in items {
            let data = item["data"].as_object().unwrap();
            assert_eq!(data.len(), 4);
            for value in data.values() {
                b64.decode(value.as_str().unwrap()).unwrap();
            }
        }
        let applied = items[0]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
        let applied: serde_json::Value = serde_json::from_str(applied.trim_end()).unwrap();
        assert_eq!(applied["stringData"]["username"], "svc-app-000");
        assert!(items[1]["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none());
    }
}
