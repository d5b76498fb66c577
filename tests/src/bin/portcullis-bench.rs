//! `portcullis-bench`: the driver behind `cargo xtask bench`. Starts a trivial upstream, the
//! gateway three ways (full pipeline, bare passthrough, full pipeline with jemalloc) and nginx as
//! a TLS reverse proxy, then loads each with `wrk` in interleaved rounds and prints requests/s,
//! latency percentiles and the proxy's CPU time per request, plus the ratios that matter.
//!
//! It is a measurement, not a test: it fails only when a target cannot be started or answers
//! wrongly. Must never: bind or connect anywhere but 127.0.0.1, leave a process it started
//! running (every child is stopped when its handle drops, also on error), or touch anything
//! outside its own temporary directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use portcullis_tests::harness::{free_port, http_get_plain, TempDir};
use portcullis_tests::issuer::DevIssuer;
use portcullis_tests::pki::{ServerCertFiles, TestCa};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL_HINT: &str =
    "install the load generator and the reference proxy with: sudo apt-get install wrk nginx-light";
/// A path the upstream answers and the gateway classifies as an ordinary `get pods`.
const REQUEST_PATH: &str = "/api/v1/namespaces/default/pods/bench";
const WARMUP: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "portcullis-bench",
    about = "Compare Portcullis with a direct connection and with nginx (run via `cargo xtask bench`)"
)]
struct Args {
    /// The gateway binary, built with the system allocator.
    #[arg(long)]
    portcullis: PathBuf,
    /// The gateway binary built with `--features jemalloc`; target (e) is skipped without it.
    #[arg(long)]
    portcullis_jemalloc: Option<PathBuf>,
    /// The `bench-upstream` binary; default: next to this one.
    #[arg(long)]
    upstream: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    nginx: String,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Interleaved rounds; every target is measured once per round and concurrency.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Length of one measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// wrk connections (one measurement series each).
    #[arg(long, value_delimiter = ',', default_values_t = [8u32, 64])]
    connections: Vec<u32>,
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// Which targets to run, by letter: a direct, b gateway, c passthrough, d nginx, e jemalloc.
    #[arg(long, default_value = "abcde")]
    targets: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wrk = find_program(&args.wrk)
        .with_context(|| format!("`{}` not found; {INSTALL_HINT}", args.wrk))?;
    let wanted: Vec<char> = args.targets.chars().collect();
    let nginx = if wanted.contains(&'d') {
        Some(
            find_program(&args.nginx)
                .with_context(|| format!("`{}` not found; {INSTALL_HINT}", args.nginx))?,
        )
    } else {
        None
    };
    let upstream_bin = match &args.upstream {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("bench-upstream"),
    };
    for bin in [
        Some(&args.portcullis),
        args.portcullis_jemalloc.as_ref(),
        Some(&upstream_bin),
    ]
    .into_iter()
    .flatten()
    {
        if !bin.is_file() {
            bail!(
                "{} does not exist (build it first, or run `cargo xtask bench`)",
                bin.display()
            );
        }
    }
    if args.rounds == 0 || args.seconds == 0 || args.connections.is_empty() {
        bail!("--rounds, --seconds and --connections must be positive");
    }
    if args.connections.iter().any(|&c| c < args.wrk_threads) {
        bail!(
            "wrk needs at least as many connections as threads (--wrk-threads {})",
            args.wrk_threads
        );
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let clk_tck = clock_ticks_per_second();
    print_machine(&args, cores, &wrk, nginx.as_deref(), &upstream_bin);

    let dir = TempDir::new("portcullis-bench")?;
    let fixture = Fixture::create(dir.path())?;
    let mut bench = Bench::start(
        &args,
        dir.path(),
        &fixture,
        &upstream_bin,
        nginx.as_deref(),
        cores,
        &wanted,
    )?;
    bench.check_targets(&fixture)?;

    let per_run =
        (args.rounds as u64) * (args.connections.len() as u64) * (bench.targets.len() as u64);
    println!(
        "plan: {} targets x {} concurrencies x {} rounds x {} s (+{} s warm-up) = about {} s",
        bench.targets.len(),
        args.connections.len(),
        args.rounds,
        args.seconds,
        bench.targets.len() as u64 * WARMUP.as_secs(),
        per_run * args.seconds as u64 + bench.targets.len() as u64 * WARMUP.as_secs(),
    );
    let max_connections = args.connections.iter().copied().max().unwrap_or(8);
    for i in 0..bench.targets.len() {
        // Connection pools, page cache and branch predictors: the first seconds are not steady.
        let run = bench.measure(i, &wrk, &args, max_connections, WARMUP, &fixture.token)?;
        if run.wrk.requests == 0 || run.wrk.non_2xx > 0 {
            bail!(
                "warm-up of {} failed: {} requests, {} non-2xx\n{}",
                bench.targets[i].label,
                run.wrk.requests,
                run.wrk.non_2xx,
                bench.target_log(i)
            );
        }
    }

    let mut samples: BTreeMap<(usize, u32), Vec<Sample>> = BTreeMap::new();
    let started = Instant::now();
    let machine_before = machine_ticks()?;
    let own_before = bench.own_ticks()?;
    for round in 1..=args.rounds {
        for &connections in &args.connections {
            for i in 0..bench.targets.len() {
                let duration = Duration::from_secs(args.seconds as u64);
                let sample =
                    bench.measure(i, &wrk, &args, connections, duration, &fixture.token)?;
                samples.entry((i, connections)).or_default().push(sample);
            }
        }
        eprintln!(
            "round {round}/{} done ({:.0} s)",
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }

    let foreign = foreign_share(
        machine_before,
        machine_ticks()?,
        bench.own_ticks()? - own_before,
    );
    let report = Report {
        bench: &bench,
        samples: &samples,
        clk_tck,
        connections: &args.connections,
    };
    print!("{}", report.render());
    println!(
        "CPU used by other processes during the measurements: {:.1}% of the machine",
        foreign * 100.0
    );
    if foreign > 0.1 {
        println!("warning: something else was busy on this machine; the numbers are unreliable");
    }
    Ok(())
}

/// Machine-wide (busy, total) jiffies from /proc/stat. Busy is user + nice + system: interrupt
/// time is left out because the benchmark's own loopback traffic causes most of it.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if v.len() < 8 {
        bail!("short /proc/stat cpu line");
    }
    Ok((v[0] + v[1] + v[2], v.iter().sum()))
}

/// Share of the machine's CPU time that went to processes this benchmark did not start.
fn foreign_share(before: (u64, u64), after: (u64, u64), own: u64) -> f64 {
    let busy = after.0.saturating_sub(before.0);
    let total = after.1.saturating_sub(before.1).max(1);
    busy.saturating_sub(own) as f64 / total as f64
}

/// Keys, certificates and tokens every target shares, written into the temp dir.
struct Fixture {
    certs: ServerCertFiles,
    upstream_token_file: PathBuf,
    jwks_file: PathBuf,
    issuer: String,
    audience: String,
    token: String,
}

impl Fixture {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let ca = TestCa::new("portcullis bench CA")?;
        let certs = ca.write_server(dir, "server", &["127.0.0.1", "localhost"])?;
        let upstream_token_file = dir.join("upstream-token");
        std::fs::write(&upstream_token_file, "bench-upstream-credential\n")?;
        let issuer = DevIssuer::new("https://bench-issuer.portcullis.test", "portcullis")?;
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, issuer.jwks_json())?;
        // Outlives any run; the gateway verifies it on every request, which is what (b) measures.
        let token = issuer.mint("bench-agent", &["bench-agents"], 3600)?;
        Ok(Self {
            certs,
            upstream_token_file,
            jwks_file,
            issuer: issuer.issuer.clone(),
            audience: issuer.audience.clone(),
            token,
        })
    }
}

/// One load target: what wrk hits, and whose CPU time is charged to it.
struct Target {
    id: char,
    label: &'static str,
    addr: SocketAddr,
    /// Index into `Bench::procs` of the proxy; `None` for the direct baseline.
    proxy: Option<usize>,
    /// Whether requests without a token must be refused (the full pipeline).
    authenticates: bool,
}

/// Field order is drop order: the proxies stop before the upstream they forward to.
struct Bench {
    procs: Vec<Proc>,
    targets: Vec<Target>,
    upstream: Proc,
}

impl Bench {
    #[allow(clippy::too_many_arguments)]
    fn start(
        args: &Args,
        dir: &Path,
        fixture: &Fixture,
        upstream_bin: &Path,
        nginx: Option<&Path>,
        cores: usize,
        wanted: &[char],
    ) -> anyhow::Result<Self> {
        let upstream_plain = loopback(free_port()?);
        let upstream_tls = loopback(free_port()?);
        let mut cmd = Command::new(upstream_bin);
        cmd.arg("--plain")
            .arg(upstream_plain.to_string())
            .arg("--tls")
            .arg(upstream_tls.to_string())
            .arg("--cert")
            .arg(&fixture.certs.cert)
            .arg("--key")
            .arg(&fixture.certs.key);
        let mut upstream = Proc::spawn("bench-upstream", cmd, dir.join("upstream.log"), false)?;
        upstream.wait_listening(&[upstream_plain, upstream_tls])?;
        let mut bench = Self {
            procs: Vec::new(),
            targets: Vec::new(),
            upstream,
        };

        for &id in wanted {
            let target = match id {
                'a' => Target {
                    id,
                    label: "direct to upstream (TLS)",
                    addr: upstream_tls,
                    proxy: None,
                    authenticates: false,
                },
                'b' | 'c' | 'e' => {
                    let (label, binary, passthrough) = match id {
                        'b' => (
                            "portcullis (auth+classify+impersonate)",
                            &args.portcullis,
                            false,
                        ),
                        'c' => ("portcullis benchmark_passthrough", &args.portcullis, true),
                        _ => match &args.portcullis_jemalloc {
                            Some(bin) => (
                                "portcullis+jemalloc (auth+classify+impersonate)",
                                bin,
                                false,
                            ),
                            None => {
                                eprintln!("skipping (e): no --portcullis-jemalloc binary");
                                continue;
                            }
                        },
                    };
                    let api = loopback(free_port()?);
                    let admin = loopback(free_port()?);
                    let config = dir.join(format!("gateway-{id}.yaml"));
                    std::fs::write(
                        &config,
                        gateway_yaml(fixture, api, admin, upstream_plain, passthrough),
                    )?;
                    let mut cmd = Command::new(binary);
                    cmd.arg("serve").arg("--config").arg(&config);
                    let mut process =
                        Proc::spawn(label, cmd, dir.join(format!("gateway-{id}.log")), false)?;
                    process.wait_healthy(api, admin)?;
                    bench.procs.push(process);
                    Target {
                        id,
                        label,
                        addr: api,
                        proxy: Some(bench.procs.len() - 1),
                        authenticates: !passthrough,
                    }
                }
                'd' => {
                    let Some(nginx) = nginx else { continue };
                    let listen = loopback(free_port()?);
                    let prefix = dir.join("nginx");
                    std::fs::create_dir_all(prefix.join("tmp"))?;
                    let config = prefix.join("nginx.conf");
                    std::fs::write(
                        &config,
                        nginx_conf(&prefix, fixture, listen, upstream_plain, cores)?,
                    )?;
                    let mut cmd = Command::new(nginx);
                    cmd.arg("-p")
                        .arg(&prefix)
                        .arg("-c")
                        .arg(&config)
                        .arg("-e")
                        .arg(prefix.join("error.log"));
                    let mut process = Proc::spawn("nginx", cmd, prefix.join("stderr.log"), true)?;
                    process.wait_listening(&[listen])?;
                    bench.procs.push(process);
                    Target {
                        id,
                        label: "nginx TLS reverse proxy",
                        addr: listen,
                        proxy: Some(bench.procs.len() - 1),
                        authenticates: false,
                    }
                }
                other => bail!("unknown target `{other}` (use letters a to e)"),
            };
            bench.targets.push(target);
        }
        if bench.targets.is_empty() {
            bail!("no targets selected");
        }
        Ok(bench)
    }

    /// Every target must answer the Pod over TLS before its numbers mean anything; the full
    /// pipeline must also refuse a request without a token (else it would measure nothing).
    fn check_targets(&self, fixture: &Fixture) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connector = tls_connector(&fixture.certs.ca)?;
        for i in 0..self.targets.len() {
            let target = &self.targets[i];
            let checks: &[(Option<&str>, u16)] = if target.authenticates {
                &[(Some(fixture.token.as_str()), 200), (None, 401)]
            } else {
                &[(Some(fixture.token.as_str()), 200)]
            };
            for &(token, expected) in checks {
                let got = runtime.block_on(https_get(&connector, target.addr, token));
                match got {
                    Ok((code, body))
                        if code == expected
                            && (code != 200 || body.contains("\"kind\":\"Pod\"")) => {}
                    Ok((code, body)) => bail!(
                        "({}) {}: expected {expected}{}, got {code}: {}\n{}",
                        target.id,
                        target.label,
                        if token.is_some() {
                            " with a token"
                        } else {
                            " without a token"
                        },
                        body.chars().take(300).collect::<String>(),
                        self.target_log(i)
                    ),
                    Err(e) => bail!(
                        "({}) {}: {e:#}\n{}",
                        target.id,
                        target.label,
                        self.target_log(i)
                    ),
                }
            }
        }
        Ok(())
    }

    fn measure(
        &mut self,
        i: usize,
        wrk: &Path,
        args: &Args,
        connections: u32,
        duration: Duration,
        token: &str,
    ) -> anyhow::Result<Sample> {
        let target = &self.targets[i];
        let proxy = target.proxy.map(|p| &self.procs[p]);
        let proxy_before = proxy.map(Proc::cpu_ticks).transpose()?;
        let upstream_before = self.upstream.cpu_ticks()?;
        let url = format!("https://{}{REQUEST_PATH}", target.addr);
        let result = run_wrk(wrk, &url, connections, args.wrk_threads, duration, token)
            .with_context(|| format!("wrk against ({}) {}", target.id, target.label))?;
        let proxy_ticks = match (proxy, proxy_before) {
            (Some(p), Some(before)) => Some(p.cpu_ticks()?.saturating_sub(before)),
            _ => None,
        };
        let upstream_ticks = self.upstream.cpu_ticks()?.saturating_sub(upstream_before);
        if let Some(p) = target.proxy {
            self.procs[p].check_alive()?;
        }
        self.upstream.check_alive()?;
        Ok(Sample {
            wrk: result,
            proxy_ticks,
            upstream_ticks,
        })
    }

    /// CPU ticks of everything the benchmark runs: the servers, and this process with its
    /// reaped children (every wrk run).
    fn own_ticks(&self) -> anyhow::Result<u64> {
        let own = stat_fields(std::process::id())?;
        let mut total = 0;
        // utime, stime, cutime, cstime (fields 14 to 17).
        for field in own.get(11..15).context("short /proc/self/stat")? {
            total += field.parse::<u64>()?;
        }
        total += self.upstream.cpu_ticks()?;
        for process in &self.procs {
            total += process.cpu_ticks()?;
        }
        Ok(total)
    }

    fn target_log(&self, i: usize) -> String {
        match self.targets[i].proxy {
            Some(p) => self.procs[p].log_tail(),
            None => self.upstream.log_tail(),
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn gateway_yaml(
    f: &Fixture,
    api: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    passthrough: bool,
) -> String {
    // Request logging is off here and in nginx (`access_log off`): both would otherwise spend
    // most of a tiny request's cost on a log line, and the benchmark compares proxying.
    format!(
        r#"listen:
  address: {api}
  tls:
    cert_file: {cert}
    key_file: {key}
admin:
  address: {admin}
upstream:
  url: http://{upstream}
  insecure_plaintext: true
  credential:
    token_file: {token}
identity:
  issuers:
    - issuer: {issuer}
      audiences: [{audience}]
      jwks_file: {jwks}
      username_prefix: "oidc:"
      groups_prefix: "oidc:"
server:
  graceful_shutdown_timeout_seconds: 1
logging:
  level: warn
benchmark_passthrough: {passthrough}
"#,
        cert = f.certs.cert.display(),
        key = f.certs.key.display(),
        token = f.upstream_token_file.display(),
        issuer = f.issuer,
        audience = f.audience,
        jwks = f.jwks_file.display(),
    )
}

fn nginx_conf(
    prefix: &Path,
    f: &Fixture,
    listen: SocketAddr,
    upstream: SocketAddr,
    cores: usize,
) -> anyhow::Result<String> {
    let p = prefix.display();
    // As root, nginx drops its workers to `nobody`, whose default group does not exist on Debian.
    let user = if running_as_root() {
        let group = if std::fs::read_to_string("/etc/group")?
            .lines()
            .any(|l| l.starts_with("nogroup:"))
        {
            "nogroup"
        } else {
            "nobody"
        };
        format!("user nobody {group};\n")
    } else {
        String::new()
    };
    // keepalive_requests are raised on both sides so that neither nginx nor the gateway
    // reconnects (and re-handshakes) mid-run: pingora and hyper keep connections indefinitely.
    Ok(format!(
        r#"{user}worker_processes {cores};
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        cert = f.certs.cert.display(),
        key = f.certs.key.display(),
    ))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A child process that is stopped when dropped: SIGTERM, a short grace, then SIGKILL, for
/// the process and (for nginx) the workers it forked.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Charge and stop the direct children too (nginx's master/worker model).
    tree: bool,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf, tree: bool) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            tree,
        })
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        if self.tree {
            pids.extend(children_of(self.child.id()));
        }
        pids
    }

    /// utime + stime of the process (all its threads) and, for a tree, of its children.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in self.pids() {
            total += process_cpu_ticks(pid)
                .with_context(|| format!("CPU time of {} (pid {pid})", self.name))?;
        }
        Ok(total)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn wait_listening(&mut self, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        self.wait_until(|| addrs.iter().all(|a| TcpStream::connect(a).is_ok()))
    }

    fn wait_healthy(&mut self, api: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
        self.wait_until(|| {
            http_get_plain(admin, "/healthz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
                && TcpStream::connect(api).is_ok()
        })
    }

    fn wait_until(&mut self, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start listening within 20 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if self.tree {
            // nginx writes its errors to the error_log next to its own stderr.
            if let Some(dir) = self.log.parent() {
                text.push_str(&std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- {} log ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let children = if self.tree {
            children_of(self.child.id())
        } else {
            Vec::new()
        };
        if matches!(self.child.try_wait(), Ok(None)) {
            signal("TERM", self.child.id());
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // nginx's master stops its workers on SIGTERM; these are only stragglers (same pids we
        // saw as its children a moment ago).
        for pid in children {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
    }
}

fn signal(name: &str, pid: u32) {
    // The `kill` utility keeps this crate free of libc bindings.
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Fields of /proc/<pid>/stat after the command name (which may contain spaces and parens).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    Ok(rest.split_whitespace().map(String::from).collect())
}

/// utime (field 14) + stime (field 15); `rest` starts at field 3.
fn process_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            // Field 4 (ppid) is index 1 after the command name.
            stat_fields(pid)
                .ok()
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

fn tls_connector(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One verified HTTPS GET of the benchmark path; returns the status code and body.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = connector.connect(name, tcp).await?;
        let mut request =
            format!("GET {REQUEST_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = bearer {
            let _ = write!(request, "Authorization: Bearer {token}\r\n");
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A peer that closes without close_notify still delivered a complete response.
        if let Err(e) = tls.read_to_end(&mut response).await {
            if response.is_empty() {
                return Err(anyhow::Error::from(e));
            }
        }
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("timed out")??;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    socket_errors: u64,
    non_2xx: u64,
}

fn run_wrk(
    wrk: &Path,
    url: &str,
    connections: u32,
    threads: u32,
    duration: Duration,
    token: &str,
) -> anyhow::Result<WrkResult> {
    let output = Command::new(wrk)
        .arg("-t")
        .arg(threads.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{}s", duration.as_secs()))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency")
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&stdout).with_context(|| format!("unexpected wrk output:\n{stdout}"))
}

/// Reads the summary `wrk --latency` prints (wrk 4.x).
fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_total = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = parse_duration_us(v)?,
            ["99%", v] => r.p99_us = parse_duration_us(v)?,
            [n, "requests", "in", d, ..] => {
                r.requests = n.parse()?;
                r.seconds = parse_duration_us(d.trim_end_matches(','))? / 1e6;
                seen_total = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse()?,
            _ => {}
        }
    }
    if !seen_total || r.seconds <= 0.0 {
        bail!("no `N requests in T` line");
    }
    Ok(r)
}

/// wrk prints durations as `512.00us`, `1.23ms`, `5.00s`, `1.00m`, `1.00h`.
fn parse_duration_us(s: &str) -> anyhow::Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .context("duration without a unit")?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        other => bail!("unknown duration unit `{other}`"),
    };
    Ok(value * scale)
}

struct Sample {
    wrk: WrkResult,
    proxy_ticks: Option<u64>,
    upstream_ticks: u64,
}

/// Aggregate of one target at one concurrency over all rounds.
struct Summary {
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    p50_us: f64,
    p99_us: f64,
    proxy_us_per_req: Option<f64>,
    upstream_us_per_req: f64,
    errors: u64,
}

impl Summary {
    fn of(samples: &[Sample], clk_tck: f64) -> Self {
        let requests: u64 = samples.iter().map(|s| s.wrk.requests).sum();
        let seconds: f64 = samples.iter().map(|s| s.wrk.seconds).sum();
        let per_round: Vec<f64> = samples
            .iter()
            .map(|s| s.wrk.requests as f64 / s.wrk.seconds)
            .collect();
        let per_req = |ticks: u64| ticks as f64 / clk_tck * 1e6 / requests.max(1) as f64;
        let proxy_ticks: Option<u64> = samples.iter().map(|s| s.proxy_ticks).sum();
        Self {
            rps: requests as f64 / seconds,
            rps_min: per_round.iter().copied().fold(f64::INFINITY, f64::min),
            rps_max: per_round.iter().copied().fold(0.0, f64::max),
            p50_us: median(samples.iter().map(|s| s.wrk.p50_us).collect()),
            p99_us: median(samples.iter().map(|s| s.wrk.p99_us).collect()),
            proxy_us_per_req: proxy_ticks.map(per_req),
            upstream_us_per_req: per_req(samples.iter().map(|s| s.upstream_ticks).sum()),
            errors: samples
                .iter()
                .map(|s| s.wrk.socket_errors + s.wrk.non_2xx)
                .sum(),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn fmt_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

struct Report<'a> {
    bench: &'a Bench,
    samples: &'a BTreeMap<(usize, u32), Vec<Sample>>,
    clk_tck: f64,
    connections: &'a [u32],
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        let summaries: BTreeMap<(char, u32), Summary> = self
            .samples
            .iter()
            .map(|(&(i, c), s)| ((self.bench.targets[i].id, c), Summary::of(s, self.clk_tck)))
            .collect();
        let _ = writeln!(
            out,
            "\nresults (req/s over all rounds, min..max of rounds; latency: median of rounds)"
        );
        let _ = writeln!(
            out,
            "{:<52} {:>5} {:>9} {:>17} {:>9} {:>9} {:>12} {:>12} {:>6}",
            "target",
            "conns",
            "req/s",
            "(min..max)",
            "p50",
            "p99",
            "proxy us/req",
            "upstr us/req",
            "errors"
        );
        for &c in self.connections {
            for t in &self.bench.targets {
                let Some(s) = summaries.get(&(t.id, c)) else {
                    continue;
                };
                let proxy = s
                    .proxy_us_per_req
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "{:<52} {:>5} {:>9.0} {:>17} {:>9} {:>9} {:>12} {:>12.1} {:>6}",
                    format!("({}) {}", t.id, t.label),
                    c,
                    s.rps,
                    format!("({:.0}..{:.0})", s.rps_min, s.rps_max),
                    fmt_latency(s.p50_us),
                    fmt_latency(s.p99_us),
                    proxy,
                    s.upstream_us_per_req,
                    s.errors
                );
            }
        }
        let _ = writeln!(
            out,
            "\nratios (req/s ratio; CPU us/request ratio of the proxy process)"
        );
        let pairs = [
            ('b', 'c', "(b)/(c) full pipeline vs bare passthrough"),
            ('b', 'd', "(b)/(d) full pipeline vs nginx"),
            ('e', 'b', "(e)/(b) jemalloc vs system allocator"),
        ];
        for &c in self.connections {
            for (x, y, label) in pairs {
                let (Some(sx), Some(sy)) = (summaries.get(&(x, c)), summaries.get(&(y, c))) else {
                    continue;
                };
                let cpu = match (sx.proxy_us_per_req, sy.proxy_us_per_req) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    out,
                    "  c={c:<3} {label:<44} req/s {:>5.2}   CPU/req {cpu:>5}",
                    sx.rps / sy.rps
                );
            }
        }
        let _ = writeln!(
            out,
            "\nnotes: wrk, the proxy and the upstream share this machine's cores, so these are relative\n\
             numbers, not capacity. (a) has no proxy; its TLS is served by the upstream, whose CPU is\n\
             in `upstr us/req`. CPU is utime+stime from /proc/<pid>/stat ({} ticks/s; nginx: master +\n\
             workers). Request logging is off in every proxy.",
            self.clk_tck
        );
        out
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let candidate = Path::new(name);
    if candidate.components().count() > 1 {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    // nginx lives in /usr/sbin, which is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// First line of a program's version output (stdout or stderr, wherever it prints it).
fn version_of(program: &Path, arg: &str) -> String {
    match Command::new(program).arg(arg).stdin(Stdio::null()).output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let line = text.lines().next().unwrap_or("").trim();
            // wrk prints its copyright and usage on the same invocation.
            line.split("Copyright")
                .next()
                .unwrap_or(line)
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn print_machine(args: &Args, cores: usize, wrk: &Path, nginx: Option<&Path>, upstream: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cores} cores available (nproc), {cpu}, Linux {}",
        kernel.trim()
    );
    println!(
        "portcullis: {} (system allocator)",
        version_of(&args.portcullis, "--version")
    );
    if let Some(j) = &args.portcullis_jemalloc {
        println!(
            "portcullis: {} (jemalloc, tikv-jemallocator)",
            version_of(j, "--version")
        );
    }
    if let Some(nginx) = nginx {
        println!("nginx: {}", version_of(nginx, "-v"));
    }
    println!("wrk: {}", version_of(wrk, "-v"));
    if let Some(rustc) = find_program("rustc") {
        println!("rustc: {}", version_of(&rustc, "--version"));
    }
    println!(
        "upstream: {} (hyper 1, HTTP/1.1 keep-alive)",
        upstream.display()
    );
    println!(
        "load: wrk -t {} -c {{{}}} --latency, {} s per run, TLS to every target; gateway and nginx use {cores} workers",
        args.wrk_threads,
        args.connections.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        args.seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_summary() {
        let out = "Running 5s test @ https://127.0.0.1:1/x\n  2 threads and 8 connections\n  \
                   Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    2.00ms\n     \
                   99%    3.50ms\n  123456 requests in 5.01s, 150.00MB read\n  \
                   Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\n\
                   Requests/sec:  24641.92\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 123456);
        assert!((r.seconds - 5.01).abs() < 1e-9);
        assert!((r.p50_us - 512.0).abs() < 1e-9);
        assert!((r.p99_us - 3500.0).abs() < 1e-9);
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.non_2xx, 4);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
