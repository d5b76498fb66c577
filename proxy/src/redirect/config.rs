//! The node agent's own YAML file (`portcullis node run --config FILE`), separate from the
//! gateway's: the agent is a privileged DaemonSet whose settings share nothing with `serve`.
//!
//! ```yaml
//! gateway:
//!   ipv4: "198.51.100.1:15443"          # where redirected connections go (required)
//!   ipv6: "[2001:db8:1::1]:15443"       # optional; without it IPv6 sockets go to ::ffff:<ipv4>
//! protected:
//!   endpoints: ["203.0.113.10:443", "[2001:db8::10]:443"]
//!   hostnames: ["ABCDEF.gr7.eu-west-1.eks.amazonaws.com:443"]   # re-resolved on a schedule
//!   resolve_interval_seconds: 30
//! pods:
//!   file: /etc/portcullis/pods.yaml     # static pod list (tests, or an external selector)
//!   kubernetes:                         # and/or this node's pods from the API server
//!     cgroup_driver: systemd            # or cgroupfs
//!     label_selector: "portcullis.dev/intercept=true"   # default
//!     node_name_env: NODE_NAME          # default
//!   cgroup_root: /sys/fs/cgroup         # the host's cgroup v2 mount
//! gateway_cgroup: /sys/fs/cgroup/kubepods.slice/...   # optional, see docs/node-agent.md
//! bpffs: /sys/fs/bpf/portcullis         # everything the agent pins lives here
//! reconcile_interval_seconds: 5
//! record:                               # optional: the agent's own audit log of its events
//!   path: /var/lib/portcullis/node-audit
//!   signing_key_file: /etc/portcullis/node-audit.pem
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cgroup::CgroupDriver;
use super::RedirectError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub gateway: GatewayAddresses,
    pub protected: Protected,
    pub pods: PodSource,
    /// A cgroup whose sockets accept redirected connections (the gateway's); `sock_ops` there
    /// files each accepted connection under its socket cookie. Optional: without it the
    /// gateway looks connections up by their addresses.
    #[serde(default)]
    pub gateway_cgroup: Option<PathBuf>,
    /// Directory on a bpffs mount; created if missing.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval_seconds: u64,
    /// The agent's own audit log of redirects, rejects and drops (the gateway's `record:`
    /// section; session settings do not apply). Without `path` events are only logged.
    #[serde(default)]
    pub record: crate::record::RecordConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddresses {
    pub ipv4: SocketAddr,
    #[serde(default)]
    pub ipv6: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protected {
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// `host:port`; every address the name resolves to is protected on that port.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSource {
    /// YAML list of pods (see `cgroup::PodsFile`), re-read at every reconcile.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Pods of this node from the API server, by label.
    #[serde(default)]
    pub kubernetes: Option<KubernetesPods>,
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesPods {
    /// Environment variable holding this node's name (the DaemonSet sets it from
    /// `spec.nodeName` with the downward API).
    #[serde(default = "default_node_name_env")]
    pub node_name_env: String,
    #[serde(default = "default_label_selector")]
    pub label_selector: String,
    /// The kubelet's cgroup driver on this node.
    pub cgroup_driver: CgroupDriver,
}

impl KubernetesPods {
    pub fn node_name(&self) -> Result<String, RedirectError> {
        std::env::var(&self.node_name_env)
            .ok()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| RedirectError::NodeName {
                var: self.node_name_env.clone(),
            })
    }
}

fn default_node_name_env() -> String {
    "NODE_NAME".into()
}

fn default_label_selector() -> String {
    "portcullis.dev/intercept=true".into()
}

fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/portcullis")
}

fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

fn default_reconcile_interval() -> u64 {
    5
}

fn default_resolve_interval() -> u64 {
    30
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, RedirectError> {
        let text = std::fs::read_to_string(path).map_err(|error| RedirectError::Io {
            what: format!("cannot read config file {}", path.display()),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RedirectError> {
        let config: NodeConfig = parse_yaml(text, file)?;
        config.validate().map_err(|message| RedirectError::Config {
            file: file.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.gateway.ipv4.is_ipv4() {
            return Err("gateway.ipv4 must be an IPv4 address:port".into());
        }
        if let Some(v6) = self.gateway.ipv6 {
            if !v6.is_ipv6() {
                return Err("gateway.ipv6 must be an [IPv6]:port".into());
            }
        }
        if self.protected.endpoints.is_empty() && self.protected.hostnames.is_empty() {
            return Err("protected: no endpoints and no hostnames: nothing to protect".into());
        }
        let gateway_ips = [Some(self.gateway.ipv4), self.gateway.ipv6].map(|a| a.map(|a| a.ip()));
        for (i, endpoint) in self.protected.endpoints.iter().enumerate() {
            if endpoint.port() == 0 {
                return Err(format!("protected.endpoints[{i}]: port 0 is not a port"));
            }
            // Every packet to a protected IP is dropped, redirected ones included.
            if gateway_ips.contains(&Some(endpoint.ip())) {
                return Err(format!(
                    "protected.endpoints[{i}]: {endpoint} is the gateway's own IP"
                ));
            }
        }
        for (i, host) in self.protected.hostnames.iter().enumerate() {
            split_host_port(host).ok_or_else(|| {
                format!("protected.hostnames[{i}]: expected host:port, got {host:?}")
            })?;
        }
        if self.pods.file.is_none() && self.pods.kubernetes.is_none() {
            return Err("pods: set `file`, `kubernetes`, or both".into());
        }
        if self.protected.resolve_interval_seconds == 0 || self.reconcile_interval_seconds == 0 {
            return Err("intervals must be at least 1 second".into());
        }
        self.record.validate()?;
        Ok(())
    }
}

/// `host:port` with a non-zero port; IPv6 literals belong in `endpoints`, not here.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && !host.contains(':') && port != 0).then_some((host, port))
}

/// YAML into `T`, errors naming the key path and the file.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, RedirectError> {
    let key = RefCell::new(String::new());
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            *key.borrow_mut() = e.path().to_string();
            e.into_inner()
        })
    });
    parsed.map_err(|e| RedirectError::Config {
        file: file.to_path_buf(),
        message: format!("at `{}`: {e}", key.into_inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway:
  ipv4: "198.51.100.1:15443"
protected:
  endpoints: ["203.0.113.10:443"]
  hostnames: ["api.example.test:443"]
pods:
  file: /tmp/pods.yaml
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = NodeConfig::parse(GOOD, Path::new("node.yaml")).unwrap();
        assert_eq!(config.bpffs, PathBuf::from("/sys/fs/bpf/portcullis"));
        assert_eq!(config.pods.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(config.pods.file, Some(PathBuf::from("/tmp/pods.yaml")));
        assert!(config.pods.kubernetes.is_none());
        assert_eq!(config.protected.resolve_interval_seconds, 30);
        assert!(config.gateway.ipv6.is_none());
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let text = GOOD.replace("  file:", "  fiel:");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("fiel"), "{message}");
        assert!(message.contains("node.yaml"), "{message}");
    }

    #[test]
    fn ipv6_gateway_in_ipv4_slot_is_refused() {
        let text = GOOD.replace("198.51.100.1:15443", "[2001:db8::1]:15443");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("gateway.ipv4"), "{err}");
    }

    #[test]
    fn protecting_the_gateway_ip_is_refused() {
        let text = GOOD.replace("203.0.113.10:443", "198.51.100.1:443");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("gateway's own IP"), "{err}");
    }

    #[test]
    fn nothing_protected_is_refused() {
        let text = GOOD
            .replace("  endpoints: [\"203.0.113.10:443\"]\n", "  endpoints: []\n")
            .replace("  hostnames: [\"api.example.test:443\"]\n", "");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("nothing to protect"), "{err}");
    }

    #[test]
    fn kubernetes_source_gets_defaults_and_needs_a_driver() {
        let text = GOOD.replace(
            "  file: /tmp/pods.yaml",
            "  kubernetes:\n    cgroup_driver: systemd",
        );
        let config = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap();
        let kube = config.pods.kubernetes.unwrap();
        assert_eq!(kube.node_name_env, "NODE_NAME");
        assert_eq!(kube.label_selector, "portcullis.dev/intercept=true");
        assert_eq!(kube.cgroup_driver, CgroupDriver::Systemd);
        let text = GOOD.replace("  file: /tmp/pods.yaml", "  kubernetes: {}");
        assert!(NodeConfig::parse(&text, Path::new("node.yaml")).is_err());
        let text = GOOD.replace("  file: /tmp/pods.yaml\n", "  cgroup_root: /x\n");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("`file`, `kubernetes`"), "{err}");
    }

    #[test]
    fn record_section_is_optional_and_validated() {
        let config = NodeConfig::parse(GOOD, Path::new("node.yaml")).unwrap();
        assert!(!config.record.enabled(), "no record section: logging only");
        let text = format!(
            "{GOOD}record:\n  path: /var/lib/n\n  signing_key_file: /etc/k.pem\n  node_name: node-1\n"
        );
        let config = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap();
        assert!(config.record.enabled());
        assert_eq!(config.record.node_name.as_deref(), Some("node-1"));
        let text = format!("{GOOD}record:\n  path: /var/lib/n\n");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("signing_key_file"), "{err}");
        let text = format!("{GOOD}record:\n  pth: /var/lib/n\n");
        let err = NodeConfig::parse(&text, Path::new("node.yaml")).unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.b:443"), Some(("a.b", 443)));
        assert_eq!(split_host_port("a.b"), None);
        assert_eq!(split_host_port("a.b:0"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("::1:443"), None);
    }
}
