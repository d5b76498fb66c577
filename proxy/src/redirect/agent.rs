//! The running agent: load the embedded object with its maps pinned, keep `PROTECTED`,
//! `GATEWAY` and the per-cgroup links in line with the config, and report events.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use portcullis_ebpf_common::{event_kind, map_names, program_names, Endpoint, Event, Gateway};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::cgroup::{self, SelectedPod};
use super::config::{split_host_port, NodeConfig};
use super::entries::{desired_protected, gateway, plan_protected, socket_addr};
use super::events::{NodeAudit, Observed};
use super::kube_pods::PodWatch;
use super::RedirectError;
use crate::record::{NodeEventKind, NodePod, NodeProtocol};

/// Attached to every selected pod's cgroup. The packet drop goes first and the rewrite last,
/// so a pod being attached is refused, never let through, until the set is complete.
const POD_PROGRAMS: [&str; 6] = [
    program_names::EGRESS,
    program_names::SOCK_OPS,
    program_names::GETPEERNAME4,
    program_names::GETPEERNAME6,
    program_names::CONNECT4,
    program_names::CONNECT6,
];
const GATEWAY_PROGRAMS: [&str; 1] = [program_names::SOCK_OPS];

/// How often coalesced events whose window has closed are appended to the audit log.
const AUDIT_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn object() -> Result<&'static [u8], RedirectError> {
    #[cfg(portcullis_ebpf_object)]
    {
        static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_EBPF_OBJECT_PATH"));
        Ok(OBJECT)
    }
    #[cfg(not(portcullis_ebpf_object))]
    {
        Err(RedirectError::NotBuilt)
    }
}

/// Totals of `COUNTERS` over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub redirects: u64,
    pub rejects: u64,
    pub drops: u64,
}

/// Reads the pinned counters (the gateway's admin port can expose them as metrics).
pub fn read_counters(pin_dir: &Path) -> Result<Counters, RedirectError> {
    let path = pin_dir.join("maps").join(map_names::COUNTERS);
    let map_error = |error: aya::maps::MapError| RedirectError::Map {
        what: format!("read counters {}", path.display()),
        error: error.into(),
    };
    let data = MapData::from_pin(&path).map_err(map_error)?;
    let map = Map::from_map_data(data).map_err(map_error)?;
    let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map).map_err(map_error)?;
    let total = |kind: u32| -> Result<u64, RedirectError> {
        Ok(counters.get(&kind, 0).map_err(map_error)?.iter().sum())
    };
    Ok(Counters {
        redirects: total(event_kind::REDIRECT)?,
        rejects: total(event_kind::REJECT)?,
        drops: total(event_kind::DROP)?,
    })
}

/// Removes everything the agent pinned: links (so the programs detach) and maps.
pub fn uninstall(config: &NodeConfig) -> Result<(), RedirectError> {
    let dir = &config.bpffs;
    if !dir.exists() {
        tracing::info!(dir = %dir.display(), "nothing pinned");
        return Ok(());
    }
    let links = pinned_link_ids(dir);
    std::fs::remove_dir_all(dir).map_err(|error| RedirectError::Io {
        what: format!("remove {}", dir.display()),
        error,
    })?;
    // The kernel frees an unpinned link (and so detaches its program) asynchronously; wait
    // for it, so "uninstalled" means the pods are really free when this returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = aya::programs::loaded_links()
            .flatten()
            .filter(|info| links.contains(&info.id()))
            .count();
        if remaining == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(remaining, "links still being released by the kernel");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(dir = %dir.display(), links = links.len(), "removed every pin; programs detached");
    Ok(())
}

/// Kernel ids of the links pinned under `<dir>/cgroups/*/` and `<dir>/gateway/*/`.
fn pinned_link_ids(dir: &Path) -> HashSet<u32> {
    let mut ids = HashSet::new();
    for group in ["cgroups", "gateway"] {
        let Ok(cgroups) = std::fs::read_dir(dir.join(group)) else {
            continue;
        };
        for pins in cgroups.flatten() {
            let Ok(files) = std::fs::read_dir(pins.path()) else {
                continue;
            };
            for pin in files.flatten() {
                let info = aya::programs::links::PinnedLink::from_pin(pin.path())
                    .map(FdLink::from)
                    .and_then(|link| link.info());
                if let Ok(info) = info {
                    ids.insert(info.id());
                }
            }
        }
    }
    ids
}

/// Runs the agent until SIGTERM/SIGINT. Leaves everything pinned when it stops.
pub fn run(config: NodeConfig) -> Result<(), RedirectError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| RedirectError::Io {
            what: "start the async runtime".into(),
            error,
        })?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: NodeConfig) -> Result<(), RedirectError> {
    let mut agent = Agent::start(config)?;
    if let Some(settings) = &agent.config.pods.kubernetes {
        agent.pod_watch = Some(PodWatch::start(settings).await?);
    }
    agent.audit = NodeAudit::start(&agent.config.record);
    // Installed before "ready", so a SIGTERM from then on stops the agent cleanly (audit log
    // flushed) instead of killing it.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| RedirectError::Io {
            what: "install the SIGTERM handler".into(),
            error,
        })?;
    agent.reconcile(true);
    tracing::info!(pods = agent.pods.len(), "node agent ready");
    let result = event_loop(&mut agent, terminate).await;
    // Whatever ended the loop, what was coalesced so far goes into the audit log.
    if let Some(audit) = agent.audit.take() {
        audit.finish();
    }
    result
}

async fn event_loop(
    agent: &mut Agent,
    mut terminate: tokio::signal::unix::Signal,
) -> Result<(), RedirectError> {
    let events = agent.take_events()?;
    // SAFETY: the ring buffer owns its map fd and keeps returning that same fd until dropped,
    // which only happens together with the AsyncFd.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|error| RedirectError::Io {
            what: "watch the event ring buffer".into(),
            error: error.into(),
        })?;
    let mut tick =
        tokio::time::interval(Duration::from_secs(agent.config.reconcile_interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_tick = tokio::time::interval(AUDIT_WRITE_INTERVAL);
    audit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let resolve = Instant::now() >= agent.next_resolve;
                agent.reconcile(resolve);
            }
            _ = audit_tick.tick(), if agent.audit.is_some() => {
                if let Some(audit) = agent.audit.as_mut() {
                    audit.write_due();
                }
            }
            ready = events.readable_mut() => {
                let mut guard = ready.map_err(|error| RedirectError::Io {
                    what: "wait for events".into(),
                    error,
                })?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(event) = parse_event(&item) {
                        agent.report(&event);
                    }
                }
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    // Events already in the ring buffer still belong in the audit log.
    let ring = events.get_mut();
    while let Some(item) = ring.next() {
        if let Some(event) = parse_event(&item) {
            agent.report(&event);
        }
    }
    tracing::info!(
        dir = %agent.config.bpffs.display(),
        "stopping; programs and maps stay pinned, selected pods stay redirected"
    );
    Ok(())
}

fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; `Event` is plain `repr(C)` integers, valid for any bytes, and
    // read_unaligned copes with the ring buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

struct Agent {
    config: NodeConfig,
    ebpf: Ebpf,
    protected: HashMap<MapData, Endpoint, u8>,
    /// Last good resolution per hostname; a failed lookup keeps it (never unprotect on error).
    resolved: StdHashMap<String, Vec<SocketAddr>>,
    next_resolve: Instant,
    pods: Vec<SelectedPod>,
    /// Which selected pod a cgroup id belongs to (`None`: none), filled as events arrive.
    pod_names: StdHashMap<u64, Option<NodePod>>,
    last_counters: Counters,
    /// Why pods were skipped at the last reconcile (each is warned about once).
    last_skipped: HashSet<String>,
    pod_watch: Option<PodWatch>,
    /// The agent's own audit log (`record:`), when configured.
    audit: Option<NodeAudit>,
}

impl Agent {
    fn start(config: NodeConfig) -> Result<Self, RedirectError> {
        let object = object()?;
        let maps_dir = config.bpffs.join("maps");
        prepare_pin_dir(&config.bpffs)?;
        for dir in [
            &maps_dir,
            &config.bpffs.join("cgroups"),
            &config.bpffs.join("gateway"),
        ] {
            create_dir(dir)?;
        }
        let adopting = maps_dir.join(map_names::PROTECTED).exists();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(object)
            .map_err(|error| RedirectError::Ebpf {
                what: "load the eBPF object".into(),
                error: error.into(),
            })?;
        for name in POD_PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        let mut gateway_map: Array<MapData, Gateway> = take_map(&mut ebpf, map_names::GATEWAY)?;
        gateway_map
            .set(0, gateway(config.gateway.ipv4, config.gateway.ipv6), 0)
            .map_err(|error| RedirectError::Map {
                what: "write the gateway address".into(),
                error: error.into(),
            })?;
        let protected = take_map(&mut ebpf, map_names::PROTECTED)?;
        tracing::info!(
            dir = %config.bpffs.display(),
            gateway = %config.gateway.ipv4,
            adopting,
            "eBPF object loaded; maps pinned"
        );
        Ok(Self {
            config,
            ebpf,
            protected,
            resolved: StdHashMap::new(),
            next_resolve: Instant::now(),
            pods: Vec::new(),
            pod_names: StdHashMap::new(),
            last_counters: Counters::default(),
            last_skipped: HashSet::new(),
            pod_watch: None,
            audit: None,
        })
    }

    fn take_events(&mut self) -> Result<RingBuf<MapData>, RedirectError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| missing_map(map_names::EVENTS))?;
        RingBuf::try_from(map).map_err(|error| RedirectError::Map {
            what: "open the event ring buffer".into(),
            error: error.into(),
        })
    }

    /// One pass: protected addresses first (so a pod attached below is never attached to an
    /// empty set), then pods, then the gateway's cgroup. Each step logs its own failures and
    /// leaves what is already in place.
    fn reconcile(&mut self, resolve: bool) {
        if resolve {
            self.resolve_hostnames();
            self.next_resolve = Instant::now()
                + Duration::from_secs(self.config.protected.resolve_interval_seconds);
        }
        if let Err(err) = self.sync_protected() {
            tracing::error!(error = %err, "updating protected endpoints failed; previous set stays");
        }
        if let Err(err) = self.sync_pods() {
            tracing::error!(error = %err, "updating pod attachments failed; existing ones stay");
        }
        if let Err(err) = self.sync_gateway_cgroup() {
            tracing::error!(error = %err, "attaching to the gateway's cgroup failed");
        }
        match read_counters(&self.config.bpffs) {
            Ok(counters) if counters != self.last_counters => {
                tracing::info!(
                    redirects = counters.redirects,
                    rejects = counters.rejects,
                    drops = counters.drops,
                    "counters"
                );
                self.last_counters = counters;
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "reading counters failed"),
        }
    }

    fn resolve_hostnames(&mut self) {
        for host in &self.config.protected.hostnames {
            let Some((name, port)) = split_host_port(host) else {
                continue;
            };
            match (name, port).to_socket_addrs() {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    if addrs.is_empty() {
                        tracing::warn!(host = %host, "resolved to nothing; keeping the previous addresses");
                        continue;
                    }
                    if self.resolved.get(host) != Some(&addrs) {
                        tracing::info!(host = %host, addresses = ?addrs, "protected hostname resolved");
                    }
                    self.resolved.insert(host.clone(), addrs);
                }
                Err(err) => {
                    tracing::warn!(host = %host, error = %err, "resolution failed; keeping the previous addresses")
                }
            }
        }
    }

    fn sync_protected(&mut self) -> Result<(), RedirectError> {
        let mut wanted: Vec<SocketAddr> = self.config.protected.endpoints.clone();
        wanted.extend(self.resolved.values().flatten().copied());
        let desired = desired_protected(&wanted);
        let mut current = StdHashMap::new();
        for entry in self.protected.iter() {
            let (key, value) = entry.map_err(|error| RedirectError::Map {
                what: "read the protected set".into(),
                error: error.into(),
            })?;
            current.insert(key, value);
        }
        let plan = plan_protected(&current, &desired);
        for (key, kind) in &plan.upserts {
            self.protected
                .insert(key, kind, 0)
                .map_err(|error| RedirectError::Map {
                    what: format!("protect {}", socket_addr(key)),
                    error: error.into(),
                })?;
            tracing::info!(endpoint = %socket_addr(key), "protected");
        }
        for key in &plan.removals {
            match self.protected.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    tracing::info!(endpoint = %socket_addr(key), "no longer protected")
                }
                Err(error) => {
                    return Err(RedirectError::Map {
                        what: format!("unprotect {}", socket_addr(key)),
                        error: error.into(),
                    })
                }
            }
        }
        Ok(())
    }

    fn sync_pods(&mut self) -> Result<(), RedirectError> {
        let mut entries = match &self.config.pods.file {
            Some(file) => cgroup::read_pods_file(file)?,
            None => Vec::new(),
        };
        // Until the watch has listed once, its silence is not "no pods": keep what is attached.
        let complete = match &self.pod_watch {
            Some(watch) => {
                entries.extend(watch.entries());
                watch.ready()
            }
            None => true,
        };
        let (pods, skipped) = cgroup::resolve_entries(&entries, &self.config.pods.cgroup_root);
        // A pod waiting for its cgroup (Pending) is skipped at every reconcile: warn once.
        let skipped: HashSet<String> = skipped.into_iter().collect();
        for reason in skipped.difference(&self.last_skipped) {
            tracing::warn!(pod = %reason, "selected pod skipped");
        }
        self.last_skipped = skipped;
        let dir = self.config.bpffs.join("cgroups");
        let mut wanted = HashSet::new();
        for pod in &pods {
            wanted.insert(pod.cgroup_id);
            let pins = dir.join(pod.cgroup_id.to_string());
            match ensure_attached(&mut self.ebpf, &pins, &pod.cgroup, &POD_PROGRAMS) {
                Ok((0, _)) => {}
                Ok((attached, adopted)) => tracing::info!(
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    cgroup = %pod.cgroup.display(),
                    attached,
                    adopted,
                    "pod redirected"
                ),
                Err(err) => tracing::error!(
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    error = %err,
                    "attaching to the pod failed"
                ),
            }
        }
        if complete {
            remove_unwanted(&dir, &wanted)?;
        }
        self.pod_names.clear();
        for pod in &pods {
            self.pod_names.insert(pod.cgroup_id, Some(node_pod(pod)));
        }
        self.pods = pods;
        Ok(())
    }

    fn sync_gateway_cgroup(&mut self) -> Result<(), RedirectError> {
        let dir = self.config.bpffs.join("gateway");
        let mut wanted = HashSet::new();
        if let Some(path) = self.config.gateway_cgroup.clone() {
            let id = cgroup::cgroup_id(&path).map_err(|error| RedirectError::Io {
                what: format!("gateway cgroup {}", path.display()),
                error,
            })?;
            wanted.insert(id);
            let (attached, _) = ensure_attached(
                &mut self.ebpf,
                &dir.join(id.to_string()),
                &path,
                &GATEWAY_PROGRAMS,
            )?;
            if attached > 0 {
                tracing::info!(cgroup = %path.display(), "gateway cgroup bridged");
            }
        }
        remove_unwanted(&dir, &wanted)
    }

    fn report(&mut self, event: &Event) {
        let identity = self.pod_of(event.cgroup_id);
        let pod = match &identity {
            Some(pod) => format!("{}/{}", pod.namespace, pod.name),
            None => format!("cgroup {}", event.cgroup_id),
        };
        let destination = socket_addr(&event.dest);
        let kind = match event.kind {
            event_kind::REDIRECT => Some(NodeEventKind::Redirect),
            event_kind::REJECT => Some(NodeEventKind::Reject),
            event_kind::DROP => Some(NodeEventKind::Drop),
            _ => None,
        };
        if let (Some(kind), Some(audit)) = (kind, self.audit.as_mut()) {
            audit.observe(Observed {
                kind,
                cgroup_id: event.cgroup_id,
                destination,
                protocol: NodeProtocol::from_ipproto(event.protocol),
                pod: identity,
            });
        }
        match event.kind {
            event_kind::REDIRECT => tracing::info!(
                pod = %pod,
                destination = %destination,
                "connection redirected to the gateway"
            ),
            event_kind::REJECT => tracing::warn!(
                pod = %pod,
                destination = %destination,
                protocol = event.protocol,
                "connection to a protected address refused"
            ),
            event_kind::DROP => tracing::warn!(
                pod = %pod,
                destination = %destination,
                protocol = event.protocol,
                "packet to a protected address dropped"
            ),
            other => tracing::debug!(kind = other, "unknown event"),
        }
    }

    /// Which selected pod a (possibly container-level) cgroup id belongs to.
    fn pod_of(&mut self, cgroup_id: u64) -> Option<NodePod> {
        if let Some(pod) = self.pod_names.get(&cgroup_id) {
            return pod.clone();
        }
        let found = self
            .pods
            .iter()
            .find(|pod| contains_cgroup(&pod.cgroup, cgroup_id, 4))
            .map(node_pod);
        self.pod_names.insert(cgroup_id, found.clone());
        found
    }
}

fn node_pod(pod: &SelectedPod) -> NodePod {
    NodePod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

fn contains_cgroup(dir: &Path, cgroup_id: u64, depth: usize) -> bool {
    if depth == 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        path.is_dir()
            && (cgroup::cgroup_id(&path).ok() == Some(cgroup_id)
                || contains_cgroup(&path, cgroup_id, depth - 1))
    })
}

/// Attaches and pins each program that has no pin yet; an existing pin is adopted as is (it
/// was left by a previous run and is still enforcing). Returns (attached, adopted).
fn ensure_attached(
    ebpf: &mut Ebpf,
    pins: &Path,
    cgroup: &Path,
    programs: &[&str],
) -> Result<(usize, usize), RedirectError> {
    create_dir(pins)?;
    let mut attached = 0;
    let mut adopted = 0;
    let mut cgroup_dir: Option<File> = None;
    for name in programs {
        let pin = pins.join(name);
        if pin.exists() {
            adopted += 1;
            continue;
        }
        let dir = match &cgroup_dir {
            Some(dir) => dir,
            None => cgroup_dir.insert(File::open(cgroup).map_err(|error| RedirectError::Io {
                what: format!("open cgroup {}", cgroup.display()),
                error,
            })?),
        };
        attach_and_pin(ebpf, name, dir, &pin)?;
        attached += 1;
    }
    Ok((attached, adopted))
}

fn attach_and_pin(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &File,
    pin: &Path,
) -> Result<(), RedirectError> {
    let what = || format!("attach {name}");
    let program_error = |error: aya::programs::ProgramError| RedirectError::Program {
        what: what(),
        error: error.into(),
    };
    let link_error = |error: aya::programs::links::LinkError| RedirectError::Link {
        what: what(),
        error: error.into(),
    };
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| missing_program(name))?;
    // aya attaches through bpf_link (kernel >= 5.7), which the kernel always treats as
    // multi-attach (other programs, e.g. Cilium's at the root, keep running) and for which it
    // refuses any flag: `Single` is the one mode that passes no flag.
    let mode = CgroupAttachMode::Single;
    let link: FdLink = if name == program_names::EGRESS {
        let program: &mut CgroupSkb = program.try_into().map_err(program_error)?;
        let id = program
            .attach(cgroup, CgroupSkbAttachType::Egress, mode)
            .map_err(program_error)?;
        program
            .take_link(id)
            .map_err(program_error)?
            .try_into()
            .map_err(link_error)?
    } else if name == program_names::SOCK_OPS {
        let program: &mut SockOps = program.try_into().map_err(program_error)?;
        let id = program.attach(cgroup, mode).map_err(program_error)?;
        program
            .take_link(id)
            .map_err(program_error)?
            .try_into()
            .map_err(link_error)?
    } else {
        let program: &mut CgroupSockAddr = program.try_into().map_err(program_error)?;
        let id = program.attach(cgroup, mode).map_err(program_error)?;
        program
            .take_link(id)
            .map_err(program_error)?
            .try_into()
            .map_err(link_error)?
    };
    // Dropping the returned handle closes our fd; the pin keeps the link (and the program).
    link.pin(pin).map_err(|error| RedirectError::Pin {
        what: format!("pin {}", pin.display()),
        error: error.into(),
    })?;
    Ok(())
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<(), RedirectError> {
    let program_error = |error: aya::programs::ProgramError| RedirectError::Program {
        what: format!("load {name}"),
        error: error.into(),
    };
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| missing_program(name))?;
    if name == program_names::EGRESS {
        let program: &mut CgroupSkb = program.try_into().map_err(program_error)?;
        program.load().map_err(program_error)
    } else if name == program_names::SOCK_OPS {
        let program: &mut SockOps = program.try_into().map_err(program_error)?;
        program.load().map_err(program_error)
    } else {
        let program: &mut CgroupSockAddr = program.try_into().map_err(program_error)?;
        program.load().map_err(program_error)
    }
}

/// Detaches cgroups that are no longer selected by removing their pin directories.
fn remove_unwanted(dir: &Path, wanted: &HashSet<u64>) -> Result<(), RedirectError> {
    let entries = std::fs::read_dir(dir).map_err(|error| RedirectError::Io {
        what: format!("list {}", dir.display()),
        error,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if wanted.contains(&id) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(cgroup_id = id, "no longer selected; detached"),
            Err(err) => tracing::error!(path = %path.display(), error = %err, "detaching failed"),
        }
    }
    Ok(())
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M, RedirectError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
    M::try_from(map).map_err(|error| RedirectError::Map {
        what: format!("open map {name}"),
        error: error.into(),
    })
}

fn missing_map(name: &str) -> RedirectError {
    RedirectError::Map {
        what: format!("the eBPF object has no map {name}"),
        error: Box::new(aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        }),
    }
}

fn missing_program(name: &str) -> RedirectError {
    RedirectError::Program {
        what: format!("the eBPF object has no program {name}"),
        error: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

fn create_dir(dir: &Path) -> Result<(), RedirectError> {
    std::fs::create_dir_all(dir).map_err(|error| RedirectError::Io {
        what: format!("create {}", dir.display()),
        error,
    })
}

/// The pin directory must be on bpffs: pins elsewhere fail, and a tmpfs would silently lose
/// them. Checked on the nearest existing ancestor before anything is created.
fn prepare_pin_dir(dir: &Path) -> Result<(), RedirectError> {
    let mut probe: PathBuf = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent.to_path_buf(),
            None => break,
        }
    }
    if !is_bpffs(&probe) {
        return Err(RedirectError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    create_dir(dir)
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain integers; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and `stat` is a valid out-parameter.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}
