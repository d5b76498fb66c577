//! Which cgroups are "selected pods": the static pods file and the kubelet's cgroup v2 naming
//! for both cgroup drivers. Pure except for reading the file and `stat`ing a directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RedirectError;

/// The pods file: `pods: [ {name, namespace, cgroup} | {name, namespace, uid, qos, driver} ]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsFile {
    #[serde(default)]
    pub pods: Vec<PodEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodEntry {
    pub name: String,
    pub namespace: String,
    /// An explicit cgroup directory, absolute or relative to `pods.cgroup_root`.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Or the pod UID, from which the kubelet's path is derived with `qos` and `driver`.
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub qos: Option<QosClass>,
    #[serde(default)]
    pub driver: Option<CgroupDriver>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// A selected pod whose cgroup directory exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPod {
    pub namespace: String,
    pub name: String,
    /// The pod's UID when the entry gave one (the pod watch always does).
    pub uid: Option<String>,
    pub cgroup: PathBuf,
    /// The cgroup v2 id (the directory's inode number), the kernel's name for it.
    pub cgroup_id: u64,
}

/// The pod-level cgroup the kubelet creates, relative to the cgroup v2 root.
///
/// systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice` with
/// the UID's dashes turned into underscores (systemd reserves `-` as the slice separator);
/// Guaranteed pods sit directly under `kubepods.slice`. cgroupfs driver:
/// `kubepods/<qos>/pod<uid>`, Guaranteed directly under `kubepods`.
pub fn pod_cgroup_path(driver: CgroupDriver, qos: QosClass, uid: &str) -> PathBuf {
    match driver {
        CgroupDriver::Systemd => {
            let escaped = uid.replace('-', "_");
            match qos_segment(qos) {
                None => PathBuf::from(format!("kubepods.slice/kubepods-pod{escaped}.slice")),
                Some(q) => PathBuf::from(format!(
                    "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{escaped}.slice"
                )),
            }
        }
        CgroupDriver::Cgroupfs => match qos_segment(qos) {
            None => PathBuf::from(format!("kubepods/pod{uid}")),
            Some(q) => PathBuf::from(format!("kubepods/{q}/pod{uid}")),
        },
    }
}

fn qos_segment(qos: QosClass) -> Option<&'static str> {
    match qos {
        QosClass::Guaranteed => None,
        QosClass::Burstable => Some("burstable"),
        QosClass::BestEffort => Some("besteffort"),
    }
}

/// Where an entry's cgroup is, or why the entry is unusable. A UID must look like one, so a
/// hostile file cannot point the agent at `../..`.
pub fn entry_cgroup(entry: &PodEntry, cgroup_root: &Path) -> Result<PathBuf, String> {
    match (&entry.cgroup, &entry.uid) {
        (Some(path), None) => Ok(if path.is_absolute() {
            path.clone()
        } else {
            cgroup_root.join(path)
        }),
        (None, Some(uid)) => {
            if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!("uid {uid:?} is not a pod UID"));
            }
            let driver = entry.driver.ok_or("`driver` is required with `uid`")?;
            let qos = entry.qos.ok_or("`qos` is required with `uid`")?;
            Ok(cgroup_root.join(pod_cgroup_path(driver, qos, uid)))
        }
        _ => Err("give exactly one of `cgroup` and `uid`".into()),
    }
}

/// The pods file's entries. Entries whose cgroups do not exist yet are skipped by
/// `resolve_entries` and picked up at a later reconcile.
pub fn read_pods_file(file: &Path) -> Result<Vec<PodEntry>, RedirectError> {
    let text = std::fs::read_to_string(file).map_err(|error| RedirectError::Io {
        what: format!("cannot read pods file {}", file.display()),
        error,
    })?;
    let parsed: PodsFile = super::config::parse_yaml(&text, file)?;
    Ok(parsed.pods)
}

/// The entries whose cgroups exist now, and why each other one was skipped.
pub fn resolve_entries(
    entries: &[PodEntry],
    cgroup_root: &Path,
) -> (Vec<SelectedPod>, Vec<String>) {
    let mut pods = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let who = format!("{}/{}", entry.namespace, entry.name);
        let path = match entry_cgroup(entry, cgroup_root) {
            Ok(path) => path,
            Err(reason) => {
                skipped.push(format!("{who}: {reason}"));
                continue;
            }
        };
        match cgroup_id(&path) {
            Ok(cgroup_id) => pods.push(SelectedPod {
                namespace: entry.namespace.clone(),
                name: entry.name.clone(),
                uid: entry.uid.clone(),
                cgroup: path,
                cgroup_id,
            }),
            Err(error) => skipped.push(format!("{who}: {}: {error}", path.display())),
        }
    }
    (pods, skipped)
}

/// On cgroup v2 a cgroup's id is its directory's inode number.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f0e3c1a-5b2d-4c6e-9a7f-0123456789ab";

    #[test]
    fn systemd_paths_escape_dashes_and_nest_by_qos() {
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Systemd, QosClass::Burstable, UID),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8f0e3c1a_5b2d_4c6e_9a7f_0123456789ab.slice"
            )
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Systemd, QosClass::BestEffort, UID),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f0e3c1a_5b2d_4c6e_9a7f_0123456789ab.slice"
            )
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Systemd, QosClass::Guaranteed, UID),
            PathBuf::from("kubepods.slice/kubepods-pod8f0e3c1a_5b2d_4c6e_9a7f_0123456789ab.slice")
        );
    }

    #[test]
    fn cgroupfs_paths_keep_the_uid() {
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Cgroupfs, QosClass::Burstable, UID),
            PathBuf::from(format!("kubepods/burstable/pod{UID}"))
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Cgroupfs, QosClass::Guaranteed, UID),
            PathBuf::from(format!("kubepods/pod{UID}"))
        );
    }

    fn entry(cgroup: Option<&str>, uid: Option<&str>) -> PodEntry {
        PodEntry {
            name: "p".into(),
            namespace: "n".into(),
            cgroup: cgroup.map(PathBuf::from),
            uid: uid.map(str::to_owned),
            qos: Some(QosClass::BestEffort),
            driver: Some(CgroupDriver::Cgroupfs),
        }
    }

    #[test]
    fn entries_resolve_relative_absolute_and_uid() {
        let root = Path::new("/cg");
        assert_eq!(
            entry_cgroup(&entry(Some("a/b"), None), root).unwrap(),
            PathBuf::from("/cg/a/b")
        );
        assert_eq!(
            entry_cgroup(&entry(Some("/x/y"), None), root).unwrap(),
            PathBuf::from("/x/y")
        );
        assert_eq!(
            entry_cgroup(&entry(None, Some(UID)), root).unwrap(),
            PathBuf::from(format!("/cg/kubepods/besteffort/pod{UID}"))
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        let root = Path::new("/cg");
        assert!(entry_cgroup(&entry(None, Some("../../etc")), root).is_err());
        assert!(entry_cgroup(&entry(Some("a"), Some(UID)), root).is_err());
        assert!(entry_cgroup(&entry(None, None), root).is_err());
        let mut no_driver = entry(None, Some(UID));
        no_driver.driver = None;
        assert!(entry_cgroup(&no_driver, root).is_err());
    }
}
