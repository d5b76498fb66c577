//! The agent's Kubernetes pod source against the API double: `portcullis node run` with
//! `pods.kubernetes` (systemd cgroup driver, default label selector, `NODE_NAME`) lists and
//! watches this node's labelled pods over TLS with the bearer token of its `KUBECONFIG`, and
//! attaches to the pod cgroup the kubelet would have made. A pod without the label and a
//! labelled pod on another node stay untouched although their cgroups exist exactly where the
//! agent would look. Removing the label detaches, adding it back re-attaches, deleting the pod
//! detaches again.
//!
//! The kubelet's tree (`kubepods.slice/...`) is built under the fixture's own test cgroup, which
//! serves as `pods.cgroup_root`, so nothing is created beside the host's real cgroups.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis_tests::double::query::Query;
use portcullis_tests::double::{DoubleConfig, LogEntry, RunningDouble};
use portcullis_tests::harness;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use super::{expect_gateway, reply, wait_until, Cleanup, Fixture, ENDPOINT, GATEWAY};

const NODE: &str = "worker-portcullis-1";
const OTHER_NODE: &str = "worker-other-2";
const LABEL: &str = "portcullis.dev/intercept";
const NAMESPACE: &str = "default";
const AGENT_TOKEN: &str = "node-agent-pod-watch-token";
const AGENT_USER: &str = "system:serviceaccount:portcullis:node-agent";

/// The API double on 127.0.0.1 (free port) with its own runtime, and a kubeconfig for it. The
/// double is shut down when this is dropped.
struct KubeApi {
    double: Option<RunningDouble>,
    runtime: tokio::runtime::Runtime,
    kubeconfig: PathBuf,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(double) = self.double.take() {
            // The timer needs the runtime: it is made inside the future, not before.
            let _ = self.runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(5), double.shutdown()).await
            });
        }
    }
}

impl KubeApi {
    fn start(dir: &Path) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let double = runtime.block_on(portcullis_tests::double::start(DoubleConfig::local(
            dir.join("double"),
            AGENT_TOKEN,
            AGENT_USER,
        )))?;
        let kubeconfig = dir.join("agent-kubeconfig");
        harness::write_kubeconfig(&kubeconfig, &double.url(), &double.ca_pem_path, AGENT_TOKEN)?;
        Ok(Self {
            double: Some(double),
            runtime,
            kubeconfig,
        })
    }

    fn double(&self) -> Result<&RunningDouble> {
        self.double.as_ref().context("the double was stopped")
    }

    /// One request over TLS (trusting only the double's CA) with the agent's token; the answer's
    /// status and JSON body.
    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let double = self.double()?;
        let (addr, ca) = (double.addr, double.ca_pem.clone());
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body)?
        };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {AGENT_TOKEN}"))
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let answer = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(10), send(addr, ca, request)).await
        });
        let (status, bytes) = answer.context("the double did not answer within 10s")??;
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&bytes)))?;
        Ok((status, value))
    }

    /// Creates a pod with one container on `node`, labelled for interception or not; returns the
    /// object as the API server answered it (uid, QoS class, container ids).
    fn create_pod(&self, name: &str, node: &str, intercept: bool) -> Result<Value> {
        let mut labels = json!({"app": name});
        if intercept {
            labels[LABEL] = json!("true");
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.test/app:1"}]},
        });
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let (status, created) = self.call("POST", &path, "application/json", &pod)?;
        ensure!(status == 201, "create pod {name}: {status} {created}");
        Ok(created)
    }

    /// Sets (`Some`) or removes (`None`) the intercept label with a JSON merge patch.
    fn set_label(&self, name: &str, value: Option<&str>) -> Result<()> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}");
        let patch = json!({"metadata": {"labels": {LABEL: value}}});
        let (status, patched) =
            self.call("PATCH", &path, "application/merge-patch+json", &patch)?;
        ensure!(status == 200, "patch pod {name}: {status} {patched}");
        ensure!(
            patched["metadata"]["labels"][LABEL].as_str() == value,
            "the patch did not apply: {patched}"
        );
        Ok(())
    }

    /// Deletes the pod at once (grace period 0: the double has no kubelet to wait for).
    fn delete_pod(&self, name: &str) -> Result<()> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}?gracePeriodSeconds=0");
        let (status, answer) = self.call("DELETE", &path, "application/json", &Value::Null)?;
        ensure!(status == 200, "delete pod {name}: {status} {answer}");
        Ok(())
    }

    /// The agent's pod list and watch requests as the double logged them.
    fn agent_pod_requests(&self) -> Result<Vec<LogEntry>> {
        Ok(self
            .double()?
            .log()
            .into_iter()
            .filter(|e| e.token_user.as_deref() == Some(AGENT_USER) && e.path == "/api/v1/pods")
            .collect())
    }
}

async fn send(
    addr: SocketAddr,
    ca_pem: String,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, Bytes)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::from(addr.ip()), tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    let answer = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map(|body| (status, body.to_bytes()))
                .map_err(anyhow::Error::from)
        }
        Err(err) => Err(err.into()),
    };
    driver.abort();
    answer
}

/// Whether the request had `key=value` among its query parameters (decoded as the API server
/// decodes them: the double's own parser).
fn has_param(entry: &LogEntry, key: &str, value: &str) -> bool {
    Query::parse(entry.query.as_deref())
        .all(key)
        .contains(&value)
}

/// The cgroups the kubelet (systemd driver) and containerd make for a running BestEffort pod
/// under `root`: the pod's slice and one scope per container. Returns (pod slice, container
/// scope); each directory this creates is removed with the fixture.
fn kubelet_cgroups(fx: &mut Fixture, root: &Path, pod: &Value) -> Result<(PathBuf, PathBuf)> {
    let uid = pod["metadata"]["uid"].as_str().context("pod without uid")?;
    ensure!(
        pod["status"]["qosClass"] == "BestEffort",
        "a pod without resources is BestEffort: {pod}"
    );
    let container = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .with_context(|| format!("no containerd container id: {pod}"))?;
    let besteffort = root.join("kubepods.slice/kubepods-besteffort.slice");
    let slice = besteffort.join(format!(
        "kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    ));
    let scope = slice.join(format!("cri-containerd-{container}.scope"));
    for dir in [
        root.join("kubepods.slice"),
        besteffort,
        slice.clone(),
        scope.clone(),
    ] {
        if dir.exists() {
            continue;
        }
        std::fs::create_dir(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
        fx._cleanups.push(Cleanup::new(move || {
            let _ = std::fs::remove_dir(&dir);
        }));
    }
    Ok((slice, scope))
}

fn cgroup_id(path: &Path) -> Result<u64> {
    portcullis::redirect::cgroup::cgroup_id(path).with_context(|| format!("{}", path.display()))
}

/// The cgroup ids the agent has pinned links for.
fn attached(fx: &Fixture) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(fx.pins.join("cgroups"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// What the agent has attached and said, for a failure message.
fn state(fx: &Fixture) -> String {
    format!(
        "attached cgroup ids: {:?}\n--- agent log ---\n{}--- end of agent log ---",
        attached(fx),
        fx.agent_log()
    )
}

/// Whether a connect from `cgroup` (in the pod's netns) to the endpoint reaches the gateway.
fn redirected(fx: &Fixture, cgroup: &Path) -> Result<bool> {
    let v = fx.probe(cgroup, &fx.pod_ns, &["tcp", ENDPOINT])?;
    match reply(&v) {
        "endpoint" => Ok(false),
        r if r.starts_with("gateway ") => Ok(true),
        _ => anyhow::bail!("unexpected probe result: {v}"),
    }
}

/// Waits until the pod's pins are gone and its connects reach the endpoint directly again (the
/// kernel releases an unpinned link asynchronously).
fn wait_detached(fx: &Fixture, slice_id: u64, app: &Path, what: &str) -> Result<()> {
    wait_until(
        || !attached(fx).contains(&slice_id),
        &format!("the agent to unpin the pod's links ({what})"),
    )
    .with_context(|| state(fx))?;
    wait_until(
        || matches!(redirected(fx, app), Ok(false)),
        &format!("the pod to reach the endpoint directly ({what})"),
    )
    .with_context(|| state(fx))?;
    let v = fx.probe(app, &fx.pod_ns, &["tcp", ENDPOINT])?;
    assert_eq!(reply(&v), "endpoint", "{what}: {v}");
    Ok(())
}

#[test]
fn pod_watch_attaches_to_labelled_pods_of_this_node_and_detaches_when_they_go() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    let api = KubeApi::start(&fx.dir)?;
    let root = fx
        .pod_cgroup
        .parent()
        .context("the fixture's pod cgroup has a parent")?
        .to_path_buf();
    std::fs::write(
        &fx.config,
        format!(
            "gateway:\n  ipv4: \"{GATEWAY}\"\nprotected:\n  endpoints: [\"{ENDPOINT}\"]\npods:\n  kubernetes:\n    cgroup_driver: systemd\n  cgroup_root: {}\nbpffs: {}\nreconcile_interval_seconds: 1\n",
            root.display(),
            fx.pins.display()
        ),
    )?;

    // Present before the agent starts (so in its initial list, if it asked for too much), with
    // cgroups where the agent would look for them: only the selectors keep them out.
    let plain = api.create_pod("plain-0", NODE, false)?;
    let (_, plain_app) = kubelet_cgroups(&mut fx, &root, &plain)?;
    let elsewhere = api.create_pod("elsewhere-0", OTHER_NODE, true)?;
    let (_, elsewhere_app) = kubelet_cgroups(&mut fx, &root, &elsewhere)?;

    fx.start_agent_with_env(&[
        ("KUBECONFIG", api.kubeconfig.as_os_str()),
        ("NODE_NAME", OsStr::new(NODE)),
    ])?;

    // Created while the agent watches: it arrives as a watch event.
    let mcp = api.create_pod("mcp-0", NODE, true)?;
    let (slice, app) = kubelet_cgroups(&mut fx, &root, &mcp)?;
    let slice_id = cgroup_id(&slice)?;
    let app_id = cgroup_id(&app)?;
    wait_until(
        || attached(&fx) == [slice_id],
        "the agent to attach to the labelled pod's cgroup",
    )
    .with_context(|| state(&fx))?;
    // The pin directory comes first, the programs one by one after it.
    wait_until(
        || matches!(redirected(&fx, &app), Ok(true)),
        "the labelled pod to be redirected",
    )
    .with_context(|| state(&fx))?;
    let v = fx.probe(&app, &fx.pod_ns, &["tcp", ENDPOINT])?;
    expect_gateway(&v, ENDPOINT, app_id, "labelled pod on this node");
    assert!(
        fx.agent_log().contains("pod=default/mcp-0"),
        "{}",
        fx.agent_log()
    );

    // The other two pods' processes, same netns: untouched, and nothing else attached.
    let v = fx.probe(&plain_app, &fx.pod_ns, &["tcp", ENDPOINT])?;
    assert_eq!(reply(&v), "endpoint", "pod without the label: {v}");
    let v = fx.probe(&elsewhere_app, &fx.pod_ns, &["tcp", ENDPOINT])?;
    assert_eq!(reply(&v), "endpoint", "labelled pod of another node: {v}");
    assert_eq!(
        attached(&fx),
        [slice_id],
        "only the labelled pod is attached"
    );

    // The API server was asked for exactly this node's labelled pods, listed then watched.
    let requests = api.agent_pod_requests()?;
    ensure!(!requests.is_empty(), "the agent never asked for pods");
    for entry in &requests {
        assert!(
            has_param(entry, "fieldSelector", &format!("spec.nodeName={NODE}")),
            "{entry:?}"
        );
        assert!(
            has_param(entry, "labelSelector", &format!("{LABEL}=true")),
            "{entry:?}"
        );
        assert_eq!(entry.status, 200, "{entry:?}");
    }
    assert!(
        requests.iter().any(|e| !has_param(e, "watch", "true")),
        "no list: {requests:?}"
    );
    assert!(
        requests.iter().any(|e| has_param(e, "watch", "true")),
        "no watch: {requests:?}"
    );

    // Label removed: the pod leaves the selection, the agent detaches.
    api.set_label("mcp-0", None)?;
    wait_detached(&fx, slice_id, &app, "label removed")?;

    // Label back: attached again.
    api.set_label("mcp-0", Some("true"))?;
    wait_until(
        || attached(&fx) == [slice_id],
        "the agent to re-attach after the label came back",
    )
    .with_context(|| state(&fx))?;
    wait_until(
        || matches!(redirected(&fx, &app), Ok(true)),
        "the pod to be redirected again",
    )
    .with_context(|| state(&fx))?;
    let v = fx.probe(&app, &fx.pod_ns, &["tcp", ENDPOINT])?;
    expect_gateway(&v, ENDPOINT, app_id, "label back");

    // Pod deleted: detached (its cgroup still exists, as it would while the kubelet tears down).
    api.delete_pod("mcp-0")?;
    wait_detached(&fx, slice_id, &app, "pod deleted")?;
    assert!(attached(&fx).is_empty(), "{:?}", attached(&fx));
    let log = fx.agent_log();
    assert!(log.contains("no longer selected; detached"), "{log}");
    assert!(!log.contains("pod watch error"), "{log}");

    // Stop the agent before the double (`api` is dropped before `fx`).
    fx.kill_agent()?;
    Ok(())
}
