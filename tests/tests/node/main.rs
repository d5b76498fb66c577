//! The node agent against the real kernel: `portcullis node run` attaches its eBPF programs to
//! a "pod" cgroup, and processes in that cgroup (in the pod's own network namespace, behind a
//! veth pair) are tried against a fake API endpoint on TEST-NET addresses the test serves
//! itself. Needs root (CI runs as root); without it, or without cgroup v2 / bpffs, each test
//! prints why and returns.
//!
//! Layout (all created here, all removed by Drop guards):
//! ```text
//!  netns pod  ── veth 198.51.100.2 / 2001:db8:1::2 ──┐
//!  netns pod2 ── veth 192.0.2.2 ─────────────────────┤  netns node
//!                                                    │   endpoint [::]:443,6443 tcp, 443 udp
//!                                                    │     on 203.0.113.10, .11, 2001:db8::10 (lo)
//!                                                    │   gateway stand-in [::]:15443 (198.51.100.1)
//!                                                    │   or the real `portcullis serve` there,
//!                                                    │     with the API double on 127.0.0.1
//!  cgroups: <mount>/<base>/pod/app (selected: `pod`), <mount>/<base>/outside
//! ```

mod bypass_more;
mod dns;
mod events;
mod kube_watch;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use portcullis_tests::harness;
use serde_json::Value;

const ENDPOINT: &str = "203.0.113.10:443";
const SECOND_ENDPOINT: &str = "203.0.113.11:443";
const ENDPOINT_OTHER_PORT: &str = "203.0.113.10:6443";
const ENDPOINT_V6: &str = "[2001:db8::10]:443";
const ENDPOINT_MAPPED: &str = "[::ffff:203.0.113.10]:443";
const GATEWAY: &str = "198.51.100.1:15443";

static FIXTURES: AtomicUsize = AtomicUsize::new(0);

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("start {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Undoes one piece of set-up when dropped.
struct Cleanup(Option<Box<dyn FnOnce()>>);

impl Cleanup {
    fn new(f: impl FnOnce() + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A TCP or UDP server thread in the node namespace; stops (and closes its socket) on drop.
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, handle: Arc<dyn Fn(TcpStream) + Send + Sync>) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let _ = listener.set_nonblocking(true);
    let handle = std::thread::spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

fn serve_udp(socket: UdpSocket, received: Arc<Mutex<Vec<String>>>) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stopping.load(Ordering::SeqCst) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Ok(mut log) = received.lock() {
                    log.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                let _ = socket.send_to(b"endpoint-udp", from);
            }
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

/// Runs `f` on a thread that has entered the network namespace `ns`; sockets created there
/// stay in that namespace wherever they are used later.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: valid fd; only this short-lived thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

struct Fixture {
    // Drop order matters: processes and servers first, then pins, cgroups, namespaces, mounts.
    agent: Option<Child>,
    gateway: Option<Server>,
    _endpoint: Vec<Server>,
    endpoint_lines: Arc<Mutex<Vec<String>>>,
    udp_received: Arc<Mutex<Vec<String>>>,
    _cleanups: Vec<Cleanup>,
    dir: PathBuf,
    config: PathBuf,
    pins: PathBuf,
    pod_cgroup: PathBuf,
    app_cgroup: PathBuf,
    outside_cgroup: PathBuf,
    /// Set when the agent bridges the gateway's cgroup (lookup by accepted socket cookie).
    gateway_cgroup: Option<PathBuf>,
    cgroup_mount: PathBuf,
    pod_ns: String,
    pod2_ns: String,
    node_ns: String,
    log: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ---\n{}--- end of agent log ---",
                self.agent_log()
            );
        }
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        self.gateway.take();
        self._endpoint.clear();
        // The remaining guards run in reverse order of creation.
        while let Some(cleanup) = self._cleanups.pop() {
            drop(cleanup);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip(reason: &str) -> Option<Fixture> {
    eprintln!("SKIPPED: node agent tests: {reason}");
    None
}

impl Fixture {
    /// `None` (with a printed reason) where this machine cannot run the test.
    /// `bridge_gateway`: put the gateway stand-in's listener in its own cgroup and give that
    /// cgroup to the agent as `gateway_cgroup`.
    fn new(bridge_gateway: bool) -> Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(skip("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"));
        }
        let n = FIXTURES.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("portcullis-node-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let mut cleanups = Vec::new();
        let remove_dir = dir.clone();
        cleanups.push(Cleanup::new(move || {
            let _ = std::fs::remove_dir_all(&remove_dir);
        }));

        let cgroup_mount = dir.join("cgroup");
        std::fs::create_dir_all(&cgroup_mount)?;
        if run(
            "mount",
            &["-t", "cgroup2", "none", &cgroup_mount.to_string_lossy()],
        )
        .is_err()
        {
            return Ok(skip("cannot mount cgroup v2 (kernel without cgroup2?)"));
        }
        let unmount = cgroup_mount.clone();
        cleanups.push(Cleanup::new(move || {
            let _ = run("umount", &["-l", &unmount.to_string_lossy()]);
        }));
        let bpffs = dir.join("bpf");
        std::fs::create_dir_all(&bpffs)?;
        if run("mount", &["-t", "bpf", "bpf", &bpffs.to_string_lossy()]).is_err() {
            return Ok(skip(
                "cannot mount bpffs (kernel without BPF syscall support?)",
            ));
        }
        let unmount = bpffs.clone();
        // Unmounting bpffs releases every pin under it, so a failed test cannot leave
        // programs attached.
        cleanups.push(Cleanup::new(move || {
            let _ = run("umount", &["-l", &unmount.to_string_lossy()]);
        }));

        let base = cgroup_mount.join(format!("portcullis-test-{tag}"));
        let pod_cgroup = base.join("pod");
        let app_cgroup = pod_cgroup.join("app");
        let outside_cgroup = base.join("outside");
        let gateway_cg = base.join("gateway");
        for cg in [
            &base,
            &pod_cgroup,
            &app_cgroup,
            &outside_cgroup,
            &gateway_cg,
        ] {
            std::fs::create_dir(cg).with_context(|| format!("create cgroup {}", cg.display()))?;
            let cg = cg.clone();
            cleanups.push(Cleanup::new(move || {
                let _ = std::fs::remove_dir(&cg);
            }));
        }

        let node_ns = format!("pcn{tag}");
        let pod_ns = format!("pcp{tag}");
        let pod2_ns = format!("pcq{tag}");
        for ns in [&node_ns, &pod_ns, &pod2_ns] {
            ip(&["netns", "add", ns])?;
            let ns = ns.clone();
            cleanups.push(Cleanup::new(move || {
                let _ = ip(&["netns", "del", &ns]);
            }));
        }
        wire_network(&node_ns, &pod_ns, &pod2_ns)?;

        let endpoint_lines = Arc::new(Mutex::new(Vec::new()));
        let udp_received = Arc::new(Mutex::new(Vec::new()));
        let lines = endpoint_lines.clone();
        let received = udp_received.clone();
        let endpoint = in_netns(&node_ns, move || {
            let mut servers = Vec::new();
            for port in [443, 6443] {
                let listener = TcpListener::bind(("::", port))?;
                let lines = lines.clone();
                servers.push(serve_tcp(
                    listener,
                    Arc::new(move |stream| endpoint_connection(stream, &lines)),
                ));
            }
            servers.push(serve_udp(UdpSocket::bind(("::", 443))?, received));
            Ok(servers)
        })?;

        let pins = bpffs.join("portcullis");
        let pods_file = dir.join("pods.yaml");
        std::fs::write(
            &pods_file,
            format!(
                "pods:\n  - name: mcp\n    namespace: agents\n    cgroup: {}\n",
                pod_cgroup.display()
            ),
        )?;
        let config = dir.join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "gateway:\n  ipv4: \"{GATEWAY}\"\nprotected:\n  endpoints: [\"{ENDPOINT}\", \"{SECOND_ENDPOINT}\", \"{ENDPOINT_V6}\"]\npods:\n  file: {}\n  cgroup_root: {}\nbpffs: {}\nreconcile_interval_seconds: 1\n",
                pods_file.display(),
                cgroup_mount.display(),
                pins.display()
            ) + &if bridge_gateway {
                format!("gateway_cgroup: {}\n", gateway_cg.display())
            } else {
                String::new()
            },
        )?;

        let mut fixture = Self {
            agent: None,
            gateway: None,
            _endpoint: endpoint,
            endpoint_lines,
            udp_received,
            _cleanups: cleanups,
            log: dir.join("agent.log"),
            dir,
            config,
            pins,
            pod_cgroup,
            app_cgroup,
            outside_cgroup,
            gateway_cgroup: bridge_gateway.then_some(gateway_cg),
            cgroup_mount,
            pod_ns,
            pod2_ns,
            node_ns,
        };
        fixture.start_gateway()?;
        Ok(Some(fixture))
    }

    /// The gateway stand-in: answers `gateway <original destination> <cgroup id>` using the
    /// same lookup the real gateway calls.
    fn start_gateway(&mut self) -> Result<()> {
        let pins = self.pins.clone();
        // A socket's cgroup is fixed at creation and accepted sockets inherit the listener's,
        // so the listener is created while this process sits in the gateway cgroup.
        let moved = match &self.gateway_cgroup {
            Some(cgroup) => Some(self.move_self_to(cgroup)?),
            None => None,
        };
        let server = in_netns(&self.node_ns, move || {
            let listener = TcpListener::bind(("::", 15443))?;
            Ok(serve_tcp(
                listener,
                Arc::new(move |stream| gateway_connection(stream, &pins)),
            ))
        });
        if let Some(original) = moved {
            self.move_self_to(&original)?;
        }
        self.gateway = Some(server?);
        Ok(())
    }

    /// Moves this whole process to `cgroup`; returns the cgroup it was in.
    fn move_self_to(&self, cgroup: &Path) -> Result<PathBuf> {
        let current = std::fs::read_to_string("/proc/self/cgroup")?;
        let relative = current
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        let original = self.cgroup_mount.join(relative.trim_start_matches('/'));
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("move to {}", cgroup.display()))?;
        Ok(original)
    }

    fn stop_gateway(&mut self) {
        self.gateway.take();
    }

    fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with_env(&[])
    }

    /// `start_agent` with extra environment variables for the agent (e.g. `KUBECONFIG`).
    fn start_agent_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
        let mut command = Command::new(harness::portcullis_bin());
        command
            .args(["node", "run", "--config"])
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        self.start_agent_with_command(command)
    }

    /// `start_agent` through `command`, which must become the agent in its own process (`exec`),
    /// so that killing the child stops the agent. Output goes to the agent log as usual.
    fn start_agent_with_command(&mut self, mut command: Command) -> Result<()> {
        ensure!(self.agent.is_none(), "agent already running");
        let log = File::options().create(true).append(true).open(&self.log)?;
        let before = std::fs::read_to_string(&self.log).unwrap_or_default().len();
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start `portcullis node run` (PORTCULLIS_BIN)")?;
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text[before.min(text.len())..].contains("node agent ready") {
                return Ok(());
            }
            if let Some(agent) = self.agent.as_mut() {
                if let Some(status) = agent.try_wait()? {
                    self.agent = None;
                    bail!("the agent exited ({status}) before it was ready:\n{text}");
                }
            }
            ensure!(
                Instant::now() < deadline,
                "agent not ready after 30s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the harshest restart; nothing gets a chance to clean up.
    fn kill_agent(&mut self) -> Result<()> {
        let mut agent = self.agent.take().context("agent not running")?;
        agent.kill()?;
        agent.wait()?;
        Ok(())
    }

    fn uninstall(&self) -> Result<()> {
        let out = Command::new(harness::portcullis_bin())
            .args(["node", "uninstall", "--config"])
            .arg(&self.config)
            .output()?;
        ensure!(
            out.status.success(),
            "uninstall failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn probe(&self, cgroup: &Path, ns: &str, args: &[&str]) -> Result<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_netprobe"))
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--netns", &format!("/run/netns/{ns}")])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "netprobe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("netprobe output {text:?}"))
    }

    fn pod_tcp(&self, addr: &str) -> Result<Value> {
        self.probe(&self.app_cgroup, &self.pod_ns, &["tcp", addr])
    }

    fn pod_cgroup_id(&self) -> u64 {
        portcullis::redirect::cgroup::cgroup_id(&self.app_cgroup).unwrap_or(0)
    }

    fn pod_pins(&self) -> PathBuf {
        let id = portcullis::redirect::cgroup::cgroup_id(&self.pod_cgroup).unwrap_or(0);
        self.pins.join("cgroups").join(id.to_string())
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn wire_network(node: &str, pod: &str, pod2: &str) -> Result<()> {
    for ns in [node, pod, pod2] {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", node, "link", "add", "vh", "type", "veth", "peer", "name", "vp", "netns", pod,
    ])?;
    ip(&[
        "-n", node, "link", "add", "vh2", "type", "veth", "peer", "name", "vp2", "netns", pod2,
    ])?;
    for (ns, dev, addr) in [
        (node, "vh", "198.51.100.1/24"),
        (pod, "vp", "198.51.100.2/24"),
        (node, "vh2", "192.0.2.1/24"),
        (pod2, "vp2", "192.0.2.2/24"),
        (node, "lo", "203.0.113.10/32"),
        (node, "lo", "203.0.113.11/32"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
    }
    for (ns, dev, addr) in [
        (node, "vh", "2001:db8:1::1/64"),
        (pod, "vp", "2001:db8:1::2/64"),
        (node, "lo", "2001:db8::10/128"),
    ] {
        ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])?;
    }
    for (ns, dev) in [(node, "vh"), (pod, "vp"), (node, "vh2"), (pod2, "vp2")] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    ip(&["-n", pod, "route", "add", "default", "via", "198.51.100.1"])?;
    ip(&[
        "-n",
        pod,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1::1",
    ])?;
    ip(&["-n", pod2, "route", "add", "default", "via", "192.0.2.1"])?;
    Ok(())
}

/// The fake API endpoint: answers `endpoint` to every line and remembers the lines.
fn endpoint_connection(stream: TcpStream, lines: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if let Ok(mut log) = lines.lock() {
            log.push(line);
        }
        if writer.write_all(b"endpoint\n").is_err() {
            return;
        }
    }
}

fn gateway_connection(mut stream: TcpStream, pins: &Path) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let answer = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(peer), Ok(local)) => {
            let by_fd =
                portcullis::redirect::original_destination(pins, stream.as_fd(), peer, local);
            // What pingora can offer instead of the fd: SO_COOKIE and the two addresses.
            let by_cookie = portcullis::redirect::OriginalDestinations::open(pins).and_then(|l| {
                l.lookup_by_cookie_and_addresses(socket_cookie(&stream), peer, local)
            });
            match (by_fd, by_cookie) {
                (Ok(a), Ok(b)) if a != b => format!("gateway mismatch {a:?} {b:?}"),
                (Ok(Some(original)), Ok(_)) => format!(
                    "gateway {} {} {:?}",
                    original.destination, original.cgroup_id, original.matched_by
                ),
                (Ok(None), Ok(_)) => "gateway none".to_string(),
                (Err(err), _) | (_, Err(err)) => format!("gateway error {err}"),
            }
        }
        _ => "gateway no-addresses".to_string(),
    };
    let mut byte = [0u8; 1];
    // Read the client's line before answering, like a real server.
    while stream
        .read(&mut byte)
        .map(|n| n == 1 && byte[0] != b'\n')
        .unwrap_or(false)
    {}
    let _ = stream.write_all(format!("{answer}\n").as_bytes());
}

fn reply(v: &Value) -> &str {
    v["reply"].as_str().unwrap_or_default()
}

fn expect_gateway(v: &Value, original: &str, cgroup_id: u64, what: &str) {
    expect_gateway_via(v, original, cgroup_id, "Addresses", what);
}

fn expect_gateway_via(v: &Value, original: &str, cgroup_id: u64, matched_by: &str, what: &str) {
    assert_eq!(
        reply(v),
        format!("gateway {original} {cgroup_id} {matched_by}"),
        "{what}: expected the gateway to see {original}; probe said {v}"
    );
}

#[test]
fn selected_pod_goes_through_the_gateway_and_every_bypass_fails() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    // Before the agent: the pod reaches the endpoint directly, and opens a connection that
    // will still be open when the agent attaches.
    let direct = fx.pod_tcp(ENDPOINT)?;
    assert_eq!(reply(&direct), "endpoint", "baseline: {direct}");
    let mut held = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_netprobe"))
            .arg("--cgroup")
            .arg(&fx.app_cgroup)
            .args(["--netns", &format!("/run/netns/{}", fx.pod_ns)])
            .args(["hold", ENDPOINT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut held_out = BufReader::new(held.0.stdout.take().context("held stdout")?);
    let mut first = String::new();
    held_out.read_line(&mut first)?;
    assert!(
        first.contains("connected"),
        "pre-attach connection: {first}"
    );

    fx.start_agent()?;
    let cgroup_id = fx.pod_cgroup_id();

    // Redirected, the gateway learns the original destination, the app sees what it dialled.
    let v = fx.pod_tcp(ENDPOINT)?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "IPv4");
    assert_eq!(
        v["peer"], ENDPOINT,
        "getpeername must show the dialled address: {v}"
    );

    // Outside the selection (same netns, other cgroup): untouched.
    let v = fx.probe(&fx.outside_cgroup, &fx.pod_ns, &["tcp", ENDPOINT])?;
    assert_eq!(reply(&v), "endpoint", "unselected process: {v}");

    // Bypass: IPv4-mapped IPv6 on an AF_INET6 socket (connect6, not connect4).
    let v = fx.pod_tcp(ENDPOINT_MAPPED)?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "v4-mapped");
    assert_eq!(v["peer"], ENDPOINT_MAPPED, "{v}");

    // Bypass: native IPv6 address of the endpoint.
    let v = fx.pod_tcp(ENDPOINT_V6)?;
    expect_gateway(&v, ENDPOINT_V6, cgroup_id, "IPv6");
    assert_eq!(v["peer"], ENDPOINT_V6, "{v}");

    // Bypass: the second protected IP.
    let v = fx.pod_tcp(SECOND_ENDPOINT)?;
    expect_gateway(&v, SECOND_ENDPOINT, cgroup_id, "second IP");

    // Bypass: the protected IP on another port (served, as the outside process shows).
    let control = fx.probe(
        &fx.outside_cgroup,
        &fx.pod_ns,
        &["tcp", ENDPOINT_OTHER_PORT],
    )?;
    assert_eq!(reply(&control), "endpoint", "control: {control}");
    let v = fx.pod_tcp(ENDPOINT_OTHER_PORT)?;
    assert_eq!(v["ok"], false, "other port must be refused: {v}");
    assert_eq!(v["errno"], libc::EPERM, "refused at connect(): {v}");

    // Bypass: UDP to the endpoint (the outside process shows it would answer).
    let control = fx.probe(&fx.outside_cgroup, &fx.pod_ns, &["udp", ENDPOINT])?;
    assert_eq!(reply(&control), "endpoint-udp", "control: {control}");
    let udp_before = fx.udp_received.lock().map(|l| l.len()).unwrap_or(0);
    let v = fx.probe(&fx.app_cgroup, &fx.pod_ns, &["udp", ENDPOINT])?;
    eprintln!("UDP from the pod: {v}");
    assert_eq!(v["ok"], false, "UDP must not get through: {v}");
    let udp_after = fx.udp_received.lock().map(|l| l.len()).unwrap_or(0);
    assert_eq!(
        udp_before, udp_after,
        "the endpoint received the pod's datagram"
    );

    // Bypass: a raw IP socket carrying a hand-made UDP datagram (no connect(), no UDP hooks).
    let raw_received = |fx: &Fixture| {
        fx.udp_received
            .lock()
            .map(|l| l.iter().filter(|m| *m == "raw-ping").count())
            .unwrap_or(0)
    };
    let control = fx.probe(&fx.outside_cgroup, &fx.pod_ns, &["raw-udp", ENDPOINT])?;
    assert_eq!(control["ok"], true, "control: {control}");
    wait_until(
        || raw_received(&fx) == 1,
        "the outside raw datagram to arrive",
    )?;
    let v = fx.probe(&fx.app_cgroup, &fx.pod_ns, &["raw-udp", ENDPOINT])?;
    eprintln!("raw UDP from the pod: {v}");
    // sendto() itself succeeds or fails with EPERM depending on where the drop lands; either
    // way nothing may arrive.
    let sent_by_pod = fx.probe(&fx.outside_cgroup, &fx.pod_ns, &["raw-udp", ENDPOINT])?;
    assert_eq!(sent_by_pod["ok"], true, "{sent_by_pod}");
    wait_until(|| raw_received(&fx) == 2, "the second outside raw datagram")?;
    assert_eq!(
        raw_received(&fx),
        2,
        "the pod's raw datagram reached the endpoint: {v}"
    );

    // Bypass: a new network namespace, still in the pod's cgroup: the hook follows the
    // cgroup, so it is redirected too.
    let v = fx.probe(&fx.app_cgroup, &fx.pod2_ns.clone(), &["tcp", ENDPOINT])?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "new netns in the pod cgroup");

    // A connection opened before the agent attached is not redirected (connect() already
    // happened); its packets to the protected address are dropped from now on.
    held.0
        .stdin
        .take()
        .context("held stdin")?
        .write_all(b"go\n")?;
    let mut result = String::new();
    held_out.read_line(&mut result)?;
    let _ = held.0.wait();
    let result: Value = serde_json::from_str(result.trim())?;
    assert_eq!(
        result["ok"], false,
        "pre-attach connection must be cut off: {result}"
    );
    let lines = fx
        .endpoint_lines
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    assert!(
        !lines.iter().any(|l| l == "after"),
        "the endpoint received data on the pre-attach connection: {lines:?}"
    );

    let counters = portcullis::redirect::read_counters(&fx.pins)?;
    assert!(counters.redirects >= 5, "{counters:?}");
    assert!(counters.rejects >= 1, "{counters:?}");
    assert!(counters.drops >= 1, "{counters:?}");
    let log = fx.agent_log();
    assert!(log.contains("agents/mcp"), "events name the pod:\n{log}");
    assert!(
        log.contains("packet to a protected address dropped"),
        "{log}"
    );
    Ok(())
}

#[test]
fn enforcement_survives_restarts_and_uninstall_removes_it() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    fx.start_agent()?;
    let cgroup_id = fx.pod_cgroup_id();
    let pins = fx.pod_pins();
    let pinned = pin_inodes(&pins)?;
    assert_eq!(pinned.len(), 6, "six links pinned for the pod: {pinned:?}");

    // Agent gone (SIGKILL): the pins keep enforcing.
    fx.kill_agent()?;
    let v = fx.pod_tcp(ENDPOINT)?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "agent down");

    // Gateway gone too: the pod fails closed (refused), it does not reach the endpoint.
    fx.stop_gateway();
    let v = fx.pod_tcp(ENDPOINT)?;
    assert_eq!(
        v["ok"], false,
        "gateway down must not fall back to direct: {v}"
    );
    assert_eq!(v["errno"], libc::ECONNREFUSED, "{v}");
    fx.start_gateway()?;

    // Restart: the existing links are adopted, not replaced.
    fx.start_agent()?;
    assert_eq!(
        pin_inodes(&pins)?,
        pinned,
        "restart must adopt the pins, not re-create them"
    );
    assert!(
        fx.agent_log().contains("adopting=true"),
        "{}",
        fx.agent_log()
    );
    let v = fx.pod_tcp(ENDPOINT)?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "after restart");

    // Uninstall removes everything; the pod is back to direct access.
    fx.kill_agent()?;
    fx.uninstall()?;
    assert!(!fx.pins.exists(), "pins left after uninstall");
    let v = fx.pod_tcp(ENDPOINT)?;
    assert_eq!(reply(&v), "endpoint", "after uninstall: {v}");
    Ok(())
}

/// Inode numbers of the pinned links: a re-created pin gets a new one.
fn pin_inodes(dir: &Path) -> Result<Vec<(String, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        pins.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.metadata()?.ino(),
        ));
    }
    pins.sort();
    Ok(pins)
}

/// A helper process, killed and reaped if the test ends early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gateway_cgroup_finds_the_original_destination_by_socket_cookie() -> Result<()> {
    let Some(mut fx) = Fixture::new(true)? else {
        return Ok(());
    };
    fx.start_agent()?;
    let cgroup_id = fx.pod_cgroup_id();
    for (addr, original) in [
        (ENDPOINT, ENDPOINT),
        (ENDPOINT_MAPPED, ENDPOINT),
        (ENDPOINT_V6, ENDPOINT_V6),
    ] {
        let v = fx.pod_tcp(addr)?;
        expect_gateway_via(&v, original, cgroup_id, "AcceptedSocketCookie", addr);
    }
    Ok(())
}

/// Polls `done` until it holds; fails after 10 s with `what`.
fn wait_until(mut done: impl FnMut() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn socket_cookie(stream: &TcpStream) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-parameters sized for a u64.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The real gateway (`portcullis serve`) in the node namespace on the agent's gateway address,
/// with the API double as its upstream. Fields drop in order: the gateway process first, then
/// the double, then the double's runtime.
struct RealGateway {
    process: harness::GatewayProcess,
    double: Option<portcullis_tests::double::RunningDouble>,
    _runtime: tokio::runtime::Runtime,
    config: PathBuf,
    ca: PathBuf,
    admin: std::net::SocketAddr,
    token: String,
    node_ns: String,
}

const REAL_GATEWAY_UPSTREAM_TOKEN: &str = "gateway-upstream-credential-node";
const REAL_GATEWAY_ISSUER: &str = "https://issuer.node.test";
const REAL_GATEWAY_AUDIENCE: &str = "portcullis";
/// The in-cluster name of the API server, which a pod's client would use.
const API_NAME: &str = "kubernetes.default.svc";

impl RealGateway {
    /// Everything lives in the fixture's node namespace: sockets created by a thread that has
    /// entered it (the double's listener) and processes forked from one (the gateway) stay there.
    fn start(fx: &Fixture) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = fx.dir.join("real-gateway");
        std::fs::create_dir_all(&dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let double_dir = dir.join("double");
        let double = in_netns(&fx.node_ns, move || {
            Ok(handle.block_on(portcullis_tests::double::start(
                portcullis_tests::double::DoubleConfig::local(
                    &double_dir,
                    REAL_GATEWAY_UPSTREAM_TOKEN,
                    "system:serviceaccount:portcullis:gateway",
                ),
            ))?)
        })?;

        // The transparent case: the pod dials the API server's address or name, so the
        // gateway's certificate must be valid for both, from a CA the pod trusts.
        let ca = portcullis_tests::pki::TestCa::new("portcullis node test gateway CA")?;
        let tls = ca.write_server(&dir, "gateway", &["203.0.113.10", API_NAME])?;
        let issuer =
            portcullis_tests::issuer::DevIssuer::new(REAL_GATEWAY_ISSUER, REAL_GATEWAY_AUDIENCE)?;
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json())?;
        let token_file = dir.join("upstream-token");
        std::fs::write(&token_file, REAL_GATEWAY_UPSTREAM_TOKEN)?;
        let api: std::net::SocketAddr = GATEWAY.parse()?;
        // The node namespace is this fixture's own: any port is free there.
        let admin: std::net::SocketAddr = "127.0.0.1:15444".parse()?;
        let redirect = format!(
            "redirect:\n  pin_dir: {}\n  upstream_endpoints: [\"{ENDPOINT}\", \"{ENDPOINT_V6}\"]\n",
            fx.pins.display()
        );
        let upstream_url = double.url();
        let config = harness::GatewayConfig {
            api,
            admin,
            tls_cert: &tls.cert,
            tls_key: &tls.key,
            upstream_url: &upstream_url,
            upstream_ca: &double.ca_pem_path,
            upstream_token_file: &token_file,
            issuer: REAL_GATEWAY_ISSUER,
            audience: REAL_GATEWAY_AUDIENCE,
            jwks_file: &jwks,
            extra: &redirect,
        };
        let config_path = dir.join("portcullis.yaml");
        std::fs::write(&config_path, config.yaml())?;
        let started = config_path.clone();
        let process = in_netns(&fx.node_ns, move || {
            harness::GatewayProcess::start(&started, api, admin)
        })?;
        Ok(Self {
            process,
            double: Some(double),
            _runtime: runtime,
            config: config_path,
            ca: tls.ca,
            admin,
            token: issuer.mint("alice", &["devs"], 3600)?,
            node_ns: fx.node_ns.clone(),
        })
    }

    fn double_log(&self) -> Vec<portcullis_tests::double::LogEntry> {
        self.double.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// The admin port's `/metrics`, fetched from inside the node namespace.
    fn metrics(&self) -> Result<String> {
        let admin = self.admin;
        let (code, body) = in_netns(&self.node_ns, move || {
            harness::http_get_plain(admin, "/metrics")
        })?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }
}

/// `curl` from inside the pod (its cgroup, then its network namespace), as an unmodified
/// client would: the token in a header file, the operator's CA as the API's CA. Returns the
/// HTTP code and the body.
fn curl_from_pod(
    fx: &Fixture,
    gateway: &RealGateway,
    url: &str,
    extra: &[&str],
) -> Result<(u16, String)> {
    let header = fx.dir.join("curl-auth-header");
    std::fs::write(
        &header,
        format!("Authorization: Bearer {}\n", gateway.token),
    )?;
    let body = fx.dir.join("curl-body");
    let _ = std::fs::remove_file(&body);
    // The shell joins the cgroup, then becomes curl: its sockets are created in the pod.
    let out = Command::new("ip")
        .args(["netns", "exec", &fx.pod_ns, "sh", "-c"])
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&fx.app_cgroup)
        .args(["curl", "-sS", "--max-time", "20", "--cacert"])
        .arg(&gateway.ca)
        .arg("-H")
        .arg(format!("@{}", header.display()))
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .context("run curl in the pod (is curl installed?)")?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "curl {url} failed ({}): {}{}\n--- gateway log ---\n{}",
        out.status,
        code,
        String::from_utf8_lossy(&out.stderr),
        gateway.process.log()
    );
    let code: u16 = code
        .parse()
        .with_context(|| format!("curl's status {code:?}"))?;
    Ok((code, std::fs::read_to_string(&body).unwrap_or_default()))
}

/// `portcullis audit query --output json` on a store (`--store DIR` or `--config FILE`): its
/// rows, or the command's stderr as the error.
fn audit_query_json(store: &[&std::ffi::OsStr]) -> Result<Vec<Value>> {
    let mut args: Vec<&std::ffi::OsStr> = ["audit", "query", "--output", "json"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    args.extend_from_slice(store);
    let out = harness::run_portcullis(&args)?;
    ensure!(
        out.status.success(),
        "audit query: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    harness::json_lines(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_real_gateway_answers_a_redirected_pod_and_audits_the_original_destination() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    ensure!(
        Command::new("curl").arg("--version").output().is_ok(),
        "this test runs curl inside the pod: install curl (.ci/run does)"
    );
    // The real gateway takes the stand-in's place on the address the agent redirects to. It
    // starts before the agent has pinned anything, and opens the maps once they exist.
    fx.stop_gateway();
    let mut gateway = RealGateway::start(&fx)?;
    fx.start_agent()?;
    let cgroup_id = fx.pod_cgroup_id();
    let path = "/api/v1/namespaces/default/pods";

    // By address and by name (resolved to the endpoint, as cluster DNS would): both reach the
    // gateway, whose certificate the pod trusts for either.
    let (code, body) = curl_from_pod(&fx, &gateway, &format!("https://203.0.113.10{path}"), &[])?;
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    assert_eq!(list["kind"], "PodList", "{body}");
    assert!(body.contains("web-0"), "{body}");
    let (code, body) = curl_from_pod(
        &fx,
        &gateway,
        &format!("https://{API_NAME}{path}"),
        &["--resolve", &format!("{API_NAME}:443:203.0.113.10")],
    )?;
    assert_eq!(code, 200, "{body}");

    // The answers came through the gateway: the API server saw the gateway's impersonation of
    // the caller, never the pod directly.
    let forwarded: Vec<_> = gateway
        .double_log()
        .into_iter()
        .filter(|e| e.path == path)
        .collect();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    for entry in &forwarded {
        assert_eq!(entry.user.as_deref(), Some("oidc:alice"), "{entry:?}");
        assert_eq!(
            entry.token_user.as_deref(),
            Some("system:serviceaccount:portcullis:gateway"),
            "{entry:?}"
        );
    }
    // The endpoint itself (the fake API address) never saw the pod's bytes.
    let endpoint_lines = fx.endpoint_lines.lock().map(|l| l.len()).unwrap_or(0);
    assert_eq!(endpoint_lines, 0, "the pod reached the endpoint directly");

    // A redirected connection from a protected endpoint that is not this gateway's upstream
    // (the second protected IP) is refused, not forwarded to the wrong cluster.
    let (code, body) = curl_from_pod(
        &fx,
        &gateway,
        &format!("https://{API_NAME}{path}"),
        &["--resolve", &format!("{API_NAME}:443:203.0.113.11")],
    )?;
    assert_eq!(
        code,
        421,
        "{body}\n--- gateway log ---\n{}",
        gateway.process.log()
    );
    assert!(body.contains("203.0.113.11:443"), "{body}");
    assert_eq!(
        gateway
            .double_log()
            .iter()
            .filter(|e| e.path == path)
            .count(),
        2,
        "the misdirected request reached the upstream"
    );

    // The kernel counters are on the gateway's /metrics.
    let metrics = gateway.metrics()?;
    let redirects = portcullis::redirect::read_counters(&fx.pins)?.redirects;
    assert!(redirects >= 3, "three redirected connects: {redirects}");
    assert!(
        metrics.contains(&format!(
            "portcullis_redirect_events{{kind=\"redirect\"}} {redirects}"
        )),
        "{metrics}"
    );

    // Uninstall and a new agent pin new maps under the same names: the running gateway notices
    // (it re-checks the pins about once a second) and reads the new ones.
    fx.kill_agent()?;
    fx.uninstall()?;
    fx.start_agent()?;
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = curl_from_pod(&fx, &gateway, &format!("https://203.0.113.10{path}"), &[])?;
    assert_eq!(code, 200, "{body}");

    // The audit log (readable once the gateway has released it) has the original destination
    // and the pod's cgroup on every request, before and after the reinstall.
    gateway.process.terminate(Duration::from_secs(10))?;
    let rows = audit_query_json(&["--config".as_ref(), gateway.config.as_os_str()])?;
    let audited: Vec<&Value> = rows.iter().filter(|r| r["path"] == path).collect();
    assert_eq!(audited.len(), 3, "{rows:#?}");
    for row in audited {
        assert_eq!(row["original_destination"], ENDPOINT, "{row}");
        assert_eq!(row["client_cgroup_id"], cgroup_id, "{row}");
        assert_eq!(row["user"], "oidc:alice", "{row}");
        assert_eq!(row["decision"], "allow", "{row}");
        assert_eq!(row["status"], 200, "{row}");
    }
    Ok(())
}
