//! The gateway's side of the node agent (`redirect:` in the `portcullis serve` config): for each
//! request, where its connection was really going before the agent redirected it, and whether
//! this gateway's single upstream is the cluster that destination belongs to.
//!
//! Owns: the `redirect` config section, the handle on the agent's pinned lookup maps (opened at
//! start, re-tried while the agent has not pinned them yet, re-opened when the agent was
//! reinstalled and pinned new ones), the routing rule ([`route`]) and
//! the export of the agent's kernel counters as gauges.
//!
//! Must never: write the agent's maps; let a failed or missing lookup skip any check of the data
//! path (the connection reached the gateway, so every control still applies; a lookup only adds
//! what the audit record says about it); forward a request whose original destination belongs
//! to a cluster this gateway does not serve.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use prometheus::IntGaugeVec;
use serde::Deserialize;

use super::{read_counters, OriginalDestination, OriginalDestinations, RedirectError};

/// While the agent's maps are missing, every lookup tries to open them again (a failed open is
/// one path lookup in bpffs); this only spaces out the warnings.
const MISSING_MAPS_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// How often a lookup checks that the pinned maps are still the ones it holds open (`node
/// uninstall` then a new agent pins new maps under the same names).
const PIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `redirect:` in the gateway config. Absent: the gateway does not look connections up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The node agent's pin directory (its `bpffs` setting), on the host's bpffs mount.
    pub pin_dir: PathBuf,
    /// The protected endpoints (`ip:port`) that stand for this gateway's upstream. A request
    /// redirected from any other protected endpoint is refused (421). Empty: every redirected
    /// destination is this gateway's upstream (one cluster per node).
    #[serde(default)]
    pub upstream_endpoints: Vec<SocketAddr>,
}

impl RedirectConfig {
    /// The cross-key rules `Config::validate` applies (messages without the `redirect.` prefix).
    pub fn validate(&self) -> Result<(), String> {
        if !self.pin_dir.is_absolute() {
            return Err(format!(
                "`pin_dir` {} must be an absolute path (the node agent's `bpffs` directory)",
                self.pin_dir.display()
            ));
        }
        for (i, endpoint) in self.upstream_endpoints.iter().enumerate() {
            if endpoint.port() == 0 || endpoint.ip().is_unspecified() {
                return Err(format!(
                    "`upstream_endpoints[{i}]` {endpoint} must be a concrete ip:port"
                ));
            }
            if self.upstream_endpoints[..i]
                .iter()
                .any(|earlier| same_endpoint(*earlier, *endpoint))
            {
                return Err(format!(
                    "`upstream_endpoints[{i}]` {endpoint} is listed twice"
                ));
            }
        }
        Ok(())
    }
}

/// What the gateway makes of a request's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The agent did not redirect it (a client that dialled the gateway itself).
    Direct,
    /// Redirected from a destination this gateway's upstream answers for.
    Upstream(OriginalDestination),
    /// Redirected from a protected endpoint of another cluster: refused, never forwarded to
    /// this gateway's upstream under the caller's identity.
    Misdirected(OriginalDestination),
}

/// The routing rule, over plain data: `upstream_endpoints` empty means every redirected
/// destination is this gateway's upstream. IPv4 and its IPv4-mapped IPv6 form are the same
/// endpoint.
pub fn route(original: Option<OriginalDestination>, upstream_endpoints: &[SocketAddr]) -> Routing {
    match original {
        None => Routing::Direct,
        Some(found)
            if upstream_endpoints.is_empty()
                || upstream_endpoints
                    .iter()
                    .any(|e| same_endpoint(*e, found.destination)) =>
        {
            Routing::Upstream(found)
        }
        Some(found) => Routing::Misdirected(found),
    }
}

fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the node agent's maps under {} are not pinned (yet)", .0.display())]
    NotOpen(PathBuf),
    #[error(transparent)]
    Map(#[from] RedirectError),
}

/// The gateway's handle on the agent's maps; one per process, shared by every worker.
pub struct Redirects {
    config: RedirectConfig,
    maps: ArcSwapOption<OpenMaps>,
    last_warning: Mutex<Instant>,
}

/// Open map handles and which pinned files they came from.
struct OpenMaps {
    maps: OriginalDestinations,
    pinned: Option<(u64, u64)>,
    opened: Instant,
    /// Milliseconds after `opened` of the last check: an atomic, not a lock, because every
    /// request's lookup reads it.
    checked_ms: AtomicU64,
}

impl OpenMaps {
    /// Whether the pin still names the map these handles read, checked at most once per
    /// [`PIN_CHECK_INTERVAL`].
    fn still_pinned(&self, pin_dir: &Path) -> bool {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.checked_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(PIN_CHECK_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < interval {
            return true;
        }
        // One worker checks; the others go on with the handles they have.
        if self
            .checked_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return true;
        }
        pinned_identity(pin_dir) == self.pinned
    }
}

/// (device, inode) of the pinned connection map: a reinstall pins a new inode.
fn pinned_identity(pin_dir: &Path) -> Option<(u64, u64)> {
    let path = pin_dir
        .join("maps")
        .join(portcullis_ebpf_common::map_names::ORIG_BY_CONN);
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn open_maps(pin_dir: &Path) -> Result<OpenMaps, RedirectError> {
    let pinned = pinned_identity(pin_dir);
    Ok(OpenMaps {
        maps: OriginalDestinations::open(pin_dir)?,
        pinned,
        opened: Instant::now(),
        checked_ms: AtomicU64::new(0),
    })
}

impl Redirects {
    /// Opens the pinned maps. An agent that has not pinned them yet is not fatal (the two start
    /// in any order on a node): the gateway logs it and tries again on each lookup.
    pub fn open(config: RedirectConfig) -> Self {
        let maps = ArcSwapOption::empty();
        match open_maps(&config.pin_dir) {
            Ok(opened) => {
                maps.store(Some(Arc::new(opened)));
                tracing::info!(pin_dir = %config.pin_dir.display(), "node agent maps open: redirected connections are looked up");
            }
            Err(error) => {
                tracing::error!(pin_dir = %config.pin_dir.display(), %error, "cannot open the node agent's maps yet; retrying on each request");
            }
        }
        Self {
            config,
            maps,
            last_warning: Mutex::new(Instant::now()),
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.config.pin_dir
    }

    /// The original destination of an accepted connection, from its socket cookie and its two
    /// addresses (what pingora's socket digest gives). `Ok(None)`: not redirected.
    pub fn lookup(
        &self,
        socket_cookie: Option<u64>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OriginalDestination>, LookupError> {
        let maps = self.maps()?;
        Ok(maps
            .maps
            .lookup_by_cookie_and_addresses(socket_cookie, peer, local)?)
    }

    /// [`route`] with this gateway's `upstream_endpoints`.
    pub fn route(&self, original: Option<OriginalDestination>) -> Routing {
        route(original, &self.config.upstream_endpoints)
    }

    fn maps(&self) -> Result<Arc<OpenMaps>, LookupError> {
        if let Some(maps) = self.maps.load_full() {
            if maps.still_pinned(&self.config.pin_dir) {
                return Ok(maps);
            }
            tracing::info!(pin_dir = %self.config.pin_dir.display(), "the node agent's maps were re-pinned (agent reinstalled); reopening them");
            self.maps.store(None);
        }
        match open_maps(&self.config.pin_dir) {
            Ok(opened) => {
                tracing::info!(pin_dir = %self.config.pin_dir.display(), "node agent maps open: redirected connections are looked up");
                // Another worker may race us here; either handle reads the same maps.
                let opened = Arc::new(opened);
                self.maps.store(Some(opened.clone()));
                Ok(opened)
            }
            Err(error) => {
                if let Ok(mut last) = self.last_warning.lock() {
                    if last.elapsed() >= MISSING_MAPS_WARNING_INTERVAL {
                        *last = Instant::now();
                        tracing::warn!(pin_dir = %self.config.pin_dir.display(), %error, "the node agent's maps are still unavailable: requests are served without their original destination");
                    }
                }
                Err(LookupError::NotOpen(self.config.pin_dir.clone()))
            }
        }
    }
}

/// Label values of [`export_counters`]' gauge, one per kernel counter.
pub const COUNTER_KINDS: [&str; 3] = ["redirect", "reject", "drop"];

/// Copies the agent's kernel counters (totals since its maps were created) into `gauges`
/// (label `kind`). When they cannot be read the gauges are cleared rather than left stale.
pub fn export_counters(pin_dir: &Path, gauges: &IntGaugeVec) {
    match read_counters(pin_dir) {
        Ok(counters) => {
            for (kind, value) in COUNTER_KINDS.into_iter().zip([
                counters.redirects,
                counters.rejects,
                counters.drops,
            ]) {
                gauges
                    .with_label_values(&[kind])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        Err(error) => {
            tracing::warn!(pin_dir = %pin_dir.display(), %error, "cannot read the node agent's counters");
            gauges.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::MatchedBy;

    fn found(destination: &str) -> OriginalDestination {
        OriginalDestination {
            destination: destination.parse().unwrap(),
            cgroup_id: 42,
            netns_cookie: 0,
            matched_by: MatchedBy::Addresses,
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_connection_the_agent_did_not_redirect_is_direct() {
        assert_eq!(route(None, &[]), Routing::Direct);
        assert_eq!(route(None, &addrs(&["203.0.113.10:443"])), Routing::Direct);
    }

    #[test]
    fn without_a_list_every_redirected_destination_is_the_upstream() {
        let original = found("203.0.113.99:6443");
        assert_eq!(route(Some(original), &[]), Routing::Upstream(original));
    }

    #[test]
    fn a_listed_destination_goes_upstream_and_any_other_is_misdirected() {
        let ours = addrs(&["203.0.113.10:443", "[2001:db8::10]:443"]);
        for dest in ["203.0.113.10:443", "[2001:db8::10]:443"] {
            let original = found(dest);
            assert_eq!(
                route(Some(original), &ours),
                Routing::Upstream(original),
                "{dest}"
            );
        }
        // Another cluster's endpoint, and our IP on another port.
        for dest in [
            "203.0.113.11:443",
            "203.0.113.10:6443",
            "[2001:db8::11]:443",
        ] {
            let original = found(dest);
            assert_eq!(
                route(Some(original), &ours),
                Routing::Misdirected(original),
                "{dest}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_and_plain_ipv4_are_the_same_endpoint() {
        let original = found("[::ffff:203.0.113.10]:443");
        assert_eq!(
            route(Some(original), &addrs(&["203.0.113.10:443"])),
            Routing::Upstream(original)
        );
        let original = found("203.0.113.10:443");
        assert_eq!(
            route(Some(original), &addrs(&["[::ffff:203.0.113.10]:443"])),
            Routing::Upstream(original)
        );
    }

    #[test]
    fn config_rejects_relative_dirs_wildcards_and_duplicates() {
        let config = |dir: &str, endpoints: &[&str]| RedirectConfig {
            pin_dir: PathBuf::from(dir),
            upstream_endpoints: addrs(endpoints),
        };
        assert!(config("/sys/fs/bpf/portcullis", &["203.0.113.10:443"])
            .validate()
            .is_ok());
        assert!(config("/sys/fs/bpf/portcullis", &[]).validate().is_ok());
        let err = config("bpf/portcullis", &[]).validate().unwrap_err();
        assert!(err.contains("absolute"), "{err}");
        let err = config("/p", &["0.0.0.0:443"]).validate().unwrap_err();
        assert!(err.contains("upstream_endpoints[0]"), "{err}");
        let err = config("/p", &["203.0.113.10:0"]).validate().unwrap_err();
        assert!(err.contains("concrete"), "{err}");
        let err = config("/p", &["203.0.113.10:443", "[::ffff:203.0.113.10]:443"])
            .validate()
            .unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn config_refuses_unknown_keys() {
        let parsed: Result<RedirectConfig, _> =
            serde_saphyr::from_str("pin_dir: /sys/fs/bpf/portcullis\npin_path: /x\n");
        assert!(parsed.is_err());
        let parsed: RedirectConfig = serde_saphyr::from_str(
            "pin_dir: /sys/fs/bpf/portcullis\nupstream_endpoints: [\"203.0.113.10:443\"]\n",
        )
        .unwrap();
        assert_eq!(parsed.upstream_endpoints, addrs(&["203.0.113.10:443"]));
    }

    #[test]
    fn the_gateway_config_takes_a_redirect_section_and_validates_it() {
        let base = "listen:\n  address: 127.0.0.1:8443\n  tls: {cert_file: /c, key_file: /k}\nupstream:\n  url: https://127.0.0.1:6443\n  credential: {token_file: /t}\nidentity:\n  issuers:\n    - {issuer: https://i.example, audiences: [a], jwks_file: /j}\n";
        let file = Path::new("c.yaml");
        let config = crate::config::Config::parse(base, file).unwrap();
        assert!(config.redirect.is_none(), "off by default");
        let config = crate::config::Config::parse(
            &format!("{base}redirect:\n  pin_dir: /sys/fs/bpf/portcullis\n"),
            file,
        )
        .unwrap();
        let redirect = config.redirect.unwrap();
        assert_eq!(redirect.pin_dir, Path::new("/sys/fs/bpf/portcullis"));
        assert!(redirect.upstream_endpoints.is_empty());
        let err =
            crate::config::Config::parse(&format!("{base}redirect:\n  pin_dir: pins\n"), file)
                .unwrap_err()
                .to_string();
        assert!(err.contains("redirect: `pin_dir`"), "{err}");
        let err = crate::config::Config::parse(
            &format!("{base}redirect:\n  pin_dir: /p\n  endpoints: []\n"),
            file,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("redirect"), "{err}");
    }

    #[test]
    fn missing_maps_are_reported_not_fatal_and_counters_clear() {
        let dir = std::env::temp_dir().join(format!("portcullis-no-pins-{}", std::process::id()));
        let redirects = Redirects::open(RedirectConfig {
            pin_dir: dir.clone(),
            upstream_endpoints: vec![],
        });
        let peer = "198.51.100.2:40000".parse().unwrap();
        let local = "198.51.100.1:15443".parse().unwrap();
        assert!(matches!(
            redirects.lookup(Some(1), peer, local),
            Err(LookupError::NotOpen(_))
        ));
        let gauges = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["kind"]).unwrap();
        gauges.with_label_values(&["redirect"]).set(5);
        export_counters(&dir, &gauges);
        assert_eq!(
            gauges.with_label_values(&["redirect"]).get(),
            0,
            "stale values are cleared"
        );
    }
}
