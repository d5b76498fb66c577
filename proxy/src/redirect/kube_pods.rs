//! Pod selection from the Kubernetes API: the pods of this node (`spec.nodeName`) that carry the
//! intercept label, kept current by a watch. Owns only the watch and the pure mapping from a
//! `Pod` to a pods-file entry; must never decide to detach anything itself (the agent only
//! removes attachments once the first full list has arrived, see `PodWatch::ready`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use super::cgroup::{CgroupDriver, PodEntry, QosClass};
use super::config::KubernetesPods;
use super::RedirectError;

/// The watched pods; cloned cheaply, read at every reconcile.
pub struct PodWatch {
    store: Store<Pod>,
    ready: Arc<AtomicBool>,
    driver: CgroupDriver,
}

impl PodWatch {
    /// Starts the watch on the current tokio runtime. The client comes from the environment
    /// (in-cluster service account, or `KUBECONFIG`).
    pub async fn start(settings: &KubernetesPods) -> Result<Self, RedirectError> {
        let node = settings.node_name()?;
        let client = Client::try_default()
            .await
            .map_err(|error| RedirectError::Kube {
                what: "connect to the API server (in-cluster or KUBECONFIG)".into(),
                error: Box::new(error),
            })?;
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default()
            .fields(&format!("spec.nodeName={node}"))
            .labels(&settings.label_selector);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(err) = item {
                    tracing::warn!(error = %err, "pod watch error; retrying with backoff");
                }
            }
        });
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let waiting = store.clone();
        tokio::spawn(async move {
            if waiting.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        tracing::info!(node = %node, selector = %settings.label_selector, "watching pods");
        Ok(Self {
            store,
            ready,
            driver: settings.cgroup_driver,
        })
    }

    /// False until the first complete list arrived: before that, an empty answer means "not
    /// known yet", not "no pods", and nothing may be detached on its account.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn entries(&self) -> Vec<PodEntry> {
        self.store
            .state()
            .iter()
            .filter_map(|pod| pod_entry(pod, self.driver))
            .collect()
    }
}

/// A running pod as a pods-file entry; `None` for pods without a cgroup to attach to (not
/// started yet, finished, or missing the fields the kubelet derives the path from).
pub fn pod_entry(pod: &Pod, driver: CgroupDriver) -> Option<PodEntry> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let qos = match status.qos_class.as_deref()? {
        "Guaranteed" => QosClass::Guaranteed,
        "Burstable" => QosClass::Burstable,
        "BestEffort" => QosClass::BestEffort,
        _ => return None,
    };
    Some(PodEntry {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        cgroup: None,
        uid: Some(pod.metadata.uid.clone()?),
        qos: Some(qos),
        driver: Some(driver),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(phase: &str, qos: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("mcp-0".into()),
                namespace: Some("agents".into()),
                uid: Some("8f0e3c1a-5b2d-4c6e-9a7f-0123456789ab".into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                qos_class: qos.map(str::to_owned),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn running_pod_maps_to_a_uid_entry() {
        let entry = pod_entry(&pod("Running", Some("Burstable")), CgroupDriver::Systemd).unwrap();
        assert_eq!(entry.namespace, "agents");
        assert_eq!(entry.name, "mcp-0");
        assert_eq!(
            entry.uid.as_deref(),
            Some("8f0e3c1a-5b2d-4c6e-9a7f-0123456789ab")
        );
        assert_eq!(entry.qos, Some(QosClass::Burstable));
        assert_eq!(entry.driver, Some(CgroupDriver::Systemd));
    }

    #[test]
    fn finished_or_unclassified_pods_are_left_out() {
        assert!(pod_entry(
            &pod("Succeeded", Some("BestEffort")),
            CgroupDriver::Cgroupfs
        )
        .is_none());
        assert!(pod_entry(&pod("Failed", Some("BestEffort")), CgroupDriver::Cgroupfs).is_none());
        assert!(pod_entry(&pod("Pending", None), CgroupDriver::Cgroupfs).is_none());
        assert!(pod_entry(&pod("Running", Some("Weird")), CgroupDriver::Cgroupfs).is_none());
    }
}
