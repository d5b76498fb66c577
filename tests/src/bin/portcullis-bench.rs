//! `portcullis-bench`: the driver behind `cargo xtask bench`. Starts a trivial upstream, the
//! gateway three ways (full pipeline, bare passthrough, full pipeline with jemalloc) and nginx as
//! a TLS reverse proxy, then loads each with `wrk` in interleaved rounds and prints requests/s,
//! latency percentiles and the proxy's CPU time per request, plus the ratios that matter.
//! Two further comparisons run in the same invocation:
//! - masking (issue #4): a list of 500 Secrets through the full pipeline, masked by the default
//!   profile (target f) vs the same gateway with a policy rule `mask: none` (target g), told
//!   apart by the caller's token;
//! - session recording (issue #5): one exec streaming 100 MB to stdout over WebSocket
//!   (`v5.channel.k8s.io`) through a gateway with a `record:` store to the API double, with the
//!   default `record: full` vs a rule `record: metadata`, a few interleaved runs each, median.
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
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis_tests::harness::{free_port, http_get_plain, TempDir};
use portcullis_tests::issuer::DevIssuer;
use portcullis_tests::pki::{ServerCertFiles, TestCa};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const INSTALL_HINT: &str =
    "install the load generator and the reference proxy with: sudo apt-get install wrk nginx-light";
/// A path the upstream answers and the gateway classifies as an ordinary `get pods`.
const REQUEST_PATH: &str = "/api/v1/namespaces/default/pods/bench";
/// The upstream answers this with a SecretList of `SECRET_COUNT` items (see bench-upstream).
const SECRETS_PATH: &str = "/api/v1/namespaces/bench/secrets";
const SECRET_COUNT: usize = 500;
/// What the default mask profile puts in place of a Secret's values (docs/masking.md).
const MASK_MARKER: &str = "[masked-by-portcullis]";
/// Callers, by token subject: the policy gives each its own obligations.
const AGENT: &str = "bench-agent";
const UNMASKED_AGENT: &str = "bench-unmasked";
const UNRECORDED_AGENT: &str = "bench-unrecorded";
/// A pod the API double seeds; its exec runs the double's imaginary `stream N` command.
const EXEC_POD_PATH: &str = "/api/v1/namespaces/default/pods/web-0/exec";
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
    /// Which targets to run, by letter: a direct, b gateway, c passthrough, d nginx, e jemalloc,
    /// f 500 Secrets masked, g 500 Secrets under `mask: none`.
    #[arg(long, default_value = "abcdefg")]
    targets: String,
    /// The `kube-double` binary (the exec benchmark's upstream); default: next to this one.
    #[arg(long)]
    kube_double: Option<PathBuf>,
    /// Runs per variant of the exec benchmark (recording on, off; interleaved); 0 skips it.
    #[arg(long, default_value_t = 5)]
    exec_runs: u32,
    /// Bytes the exec'd command writes to stdout.
    #[arg(long, default_value_t = 100_000_000)]
    exec_bytes: u64,
    /// Upper bound of one exec run, connection to exit status.
    #[arg(long, default_value_t = 120)]
    exec_timeout_seconds: u64,
    /// `record.session_queue_max_bytes` of the exec benchmark's gateway; default: the
    /// gateway's own default. A session that outruns this queue is ended by the gateway.
    #[arg(long)]
    exec_session_queue_bytes: Option<u64>,
    /// Runs only one variant of the exec benchmark (no ratios then): to profile each alone,
    /// e.g. under `perf record -a`, and compare the two profiles per byte.
    #[arg(long, value_enum)]
    exec_only: Option<ExecOnly>,
    /// Who runs the exec: a WebSocket client in this process (the gateway's own cost, the
    /// worst case) or real kubectl, as users run it (its stdout read through a pipe).
    #[arg(long, value_enum, default_value = "in-process")]
    exec_client: ExecClient,
    /// kubectl for `--exec-client kubectl` (`cargo xtask peers` puts one in .peers/bin/).
    #[arg(long, default_value = ".peers/bin/kubectl")]
    kubectl: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecClient {
    InProcess,
    Kubectl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecOnly {
    Recorded,
    Unrecorded,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted: Vec<char> = args.targets.chars().collect();
    if wanted.is_empty() && args.exec_runs == 0 {
        bail!("nothing to measure: --targets is empty and --exec-runs is 0");
    }
    let wrk = if wanted.is_empty() {
        None
    } else {
        Some(
            find_program(&args.wrk)
                .with_context(|| format!("`{}` not found; {INSTALL_HINT}", args.wrk))?,
        )
    };
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
    let double_bin = match &args.kube_double {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kube-double"),
    };
    for bin in [
        Some(&args.portcullis),
        args.portcullis_jemalloc.as_ref(),
        (!wanted.is_empty()).then_some(&upstream_bin),
        (args.exec_runs > 0).then_some(&double_bin),
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
    if args.exec_runs > 0 && (args.exec_bytes == 0 || args.exec_timeout_seconds == 0) {
        bail!("--exec-bytes and --exec-timeout-seconds must be positive");
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let clk_tck = clock_ticks_per_second();
    print_machine(
        &args,
        cores,
        wrk.as_deref(),
        nginx.as_deref(),
        &upstream_bin,
    );

    let dir = TempDir::new("portcullis-bench")?;
    let fixture = Fixture::create(dir.path())?;
    if let Some(wrk) = &wrk {
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
        run_http(&mut bench, wrk, &args, clk_tck)?;
    }
    if args.exec_runs > 0 {
        // The HTTP targets are stopped by now: the exec runs get the machine to themselves.
        let report = exec_bench::run(&args, dir.path(), &fixture, &double_bin, clk_tck)?;
        print!("{report}");
    }
    Ok(())
}

/// The wrk phase: warm-up, interleaved rounds, the table and the ratios.
fn run_http(bench: &mut Bench, wrk: &Path, args: &Args, clk_tck: f64) -> anyhow::Result<()> {
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
        let run = bench.measure(i, wrk, args, max_connections, WARMUP)?;
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
                let sample = bench.measure(i, wrk, args, connections, duration)?;
                samples.entry((i, connections)).or_default().push(sample);
            }
        }
        eprintln!(
            "round {round}/{} done ({:.0} s)",
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }

    let foreign = MachineShare::between(
        machine_before,
        machine_ticks()?,
        bench.own_ticks()? - own_before,
    );
    let report = Report {
        bench,
        samples: &samples,
        clk_tck,
        connections: &args.connections,
    };
    print!("{}", report.render());
    println!("{}", foreign.describe("the measurements"));
    Ok(())
}

/// Machine-wide jiffies from /proc/stat. Busy is user + nice + system: interrupt time is left
/// out because the benchmark's own loopback traffic causes most of it. Steal is time the
/// hypervisor gave this machine's virtual CPUs to someone else.
#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

fn machine_ticks() -> anyhow::Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(stat.lines().next().context("empty /proc/stat")?)
}

/// The `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal (guest time is
/// already counted in user).
fn parse_machine_ticks(line: &str) -> anyhow::Result<MachineTicks> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if v.len() < 8 {
        bail!("short /proc/stat cpu line");
    }
    Ok(MachineTicks {
        busy: v[0] + v[1] + v[2],
        steal: v[7],
        total: v.iter().sum(),
    })
}

/// What else took this machine's CPU while the benchmark ran.
#[derive(Clone, Copy)]
struct MachineShare {
    /// Processes this benchmark did not start.
    foreign: f64,
    /// The hypervisor (steal time): invisible to every process's own CPU time, it slows runs
    /// unevenly, so throughput ratios from a run with much of it are unreliable.
    steal: f64,
}

impl MachineShare {
    fn between(before: MachineTicks, after: MachineTicks, own: u64) -> Self {
        let total = after.total.saturating_sub(before.total).max(1) as f64;
        let busy = after.busy.saturating_sub(before.busy);
        MachineShare {
            foreign: busy.saturating_sub(own) as f64 / total,
            steal: after.steal.saturating_sub(before.steal) as f64 / total,
        }
    }

    fn describe(&self, during: &str) -> String {
        let mut text = format!(
            "CPU used by other processes during {during}: {:.1}% of the machine; taken by the \
             hypervisor (steal): {:.1}%",
            self.foreign * 100.0,
            self.steal * 100.0
        );
        if self.foreign > 0.1 {
            text.push_str(
                "\nwarning: something else was busy on this machine; the numbers are unreliable",
            );
        }
        if self.steal > 0.05 {
            text.push_str(
                "\nwarning: the hypervisor took more than 5% of the CPU; ratios are unreliable",
            );
        }
        text
    }
}

/// Keys, certificates and tokens every target shares, written into the temp dir.
struct Fixture {
    certs: ServerCertFiles,
    upstream_token_file: PathBuf,
    jwks_file: PathBuf,
    issuer: String,
    audience: String,
    /// Callers of the policy's default rule (mask: default; recording: full for exec).
    token: String,
    /// The caller whose rule says `mask: none`.
    unmasked_token: String,
    /// The caller whose rule says `record: metadata`.
    unrecorded_token: String,
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
        // Outlive any run; the gateway verifies one on every request, which is what (b) measures.
        let token = issuer.mint(AGENT, &["bench-agents"], 3600)?;
        let unmasked_token = issuer.mint(UNMASKED_AGENT, &["bench-agents"], 3600)?;
        let unrecorded_token = issuer.mint(UNRECORDED_AGENT, &["bench-agents"], 3600)?;
        Ok(Self {
            certs,
            upstream_token_file,
            jwks_file,
            issuer: issuer.issuer.clone(),
            audience: issuer.audience.clone(),
            token,
            unmasked_token,
            unrecorded_token,
        })
    }
}

/// One load target: what wrk hits, and whose CPU time is charged to it.
struct Target {
    id: char,
    label: &'static str,
    addr: SocketAddr,
    path: &'static str,
    /// The bearer token wrk sends (it selects the policy rule, and so the mask profile).
    token: String,
    /// Index into `Bench::procs` of the proxy; `None` for the direct baseline.
    proxy: Option<usize>,
    expect: Expect,
}

/// What a target must answer before its numbers mean anything.
#[derive(Clone, Copy)]
enum Expect {
    /// The Pod; with `authenticates`, a request without a token must be refused (401).
    Pod { authenticates: bool },
    /// The SecretList of `SECRET_COUNT` items, every value masked or every value as sent.
    Secrets { masked: bool },
}

const FULL_LABEL: &str = "portcullis (auth+classify+policy+impersonate)";

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
        let upstream_yaml = format!("  url: http://{upstream_plain}\n  insecure_plaintext: true\n");
        // (b), (f) and (g) share one gateway: they differ only in path and caller.
        let mut full_gateway: Option<(usize, SocketAddr)> = None;

        for &id in wanted {
            let target = match id {
                'a' => Target {
                    id,
                    label: "direct to upstream (TLS)",
                    addr: upstream_tls,
                    path: REQUEST_PATH,
                    token: fixture.token.clone(),
                    proxy: None,
                    expect: Expect::Pod {
                        authenticates: false,
                    },
                },
                'b' | 'f' | 'g' => {
                    let (proxy, addr) = match full_gateway {
                        Some(started) => started,
                        None => {
                            let spec = GatewaySpec {
                                upstream: &upstream_yaml,
                                passthrough: false,
                                record_dir: None,
                                record_extra: "",
                            };
                            let started = bench.spawn_gateway(
                                dir,
                                fixture,
                                'b',
                                FULL_LABEL,
                                &args.portcullis,
                                &spec,
                            )?;
                            full_gateway = Some(started);
                            started
                        }
                    };
                    let (label, path, token, expect) = match id {
                        'b' => (
                            FULL_LABEL,
                            REQUEST_PATH,
                            &fixture.token,
                            Expect::Pod {
                                authenticates: true,
                            },
                        ),
                        'f' => (
                            "portcullis, 500 Secrets, masked (default profile)",
                            SECRETS_PATH,
                            &fixture.token,
                            Expect::Secrets { masked: true },
                        ),
                        _ => (
                            "portcullis, 500 Secrets, rule with mask: none",
                            SECRETS_PATH,
                            &fixture.unmasked_token,
                            Expect::Secrets { masked: false },
                        ),
                    };
                    Target {
                        id,
                        label,
                        addr,
                        path,
                        token: token.clone(),
                        proxy: Some(proxy),
                        expect,
                    }
                }
                'c' | 'e' => {
                    let (label, binary, passthrough) = match id {
                        'c' => ("portcullis benchmark_passthrough", &args.portcullis, true),
                        _ => match &args.portcullis_jemalloc {
                            Some(bin) => (
                                "portcullis+jemalloc (auth+classify+policy+impersonate)",
                                bin,
                                false,
                            ),
                            None => {
                                eprintln!("skipping (e): no --portcullis-jemalloc binary");
                                continue;
                            }
                        },
                    };
                    let spec = GatewaySpec {
                        upstream: &upstream_yaml,
                        passthrough,
                        record_dir: None,
                        record_extra: "",
                    };
                    let (proxy, addr) =
                        bench.spawn_gateway(dir, fixture, id, label, binary, &spec)?;
                    Target {
                        id,
                        label,
                        addr,
                        path: REQUEST_PATH,
                        token: fixture.token.clone(),
                        proxy: Some(proxy),
                        expect: Expect::Pod {
                            authenticates: !passthrough,
                        },
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
                        path: REQUEST_PATH,
                        token: fixture.token.clone(),
                        proxy: Some(bench.procs.len() - 1),
                        expect: Expect::Pod {
                            authenticates: false,
                        },
                    }
                }
                other => bail!("unknown target `{other}` (use letters a to g)"),
            };
            bench.targets.push(target);
        }
        if bench.targets.is_empty() {
            bail!("no targets selected");
        }
        Ok(bench)
    }

    /// Starts a gateway and waits until it is healthy; returns its index in `procs` and its
    /// API address.
    fn spawn_gateway(
        &mut self,
        dir: &Path,
        fixture: &Fixture,
        id: char,
        label: &str,
        binary: &Path,
        spec: &GatewaySpec,
    ) -> anyhow::Result<(usize, SocketAddr)> {
        let process = start_gateway(dir, fixture, id, label, binary, spec)?;
        self.procs.push(process.proc);
        Ok((self.procs.len() - 1, process.api))
    }

    /// Every target must answer correctly over TLS before its numbers mean anything: the Pod,
    /// or the SecretList masked (f) or not (g), so that the masking ratio compares what it
    /// claims to. The full pipeline must also refuse a request without a token (else it would
    /// measure nothing).
    fn check_targets(&self, fixture: &Fixture) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connector = tls_connector(&fixture.certs.ca)?;
        for i in 0..self.targets.len() {
            let target = &self.targets[i];
            let mut checks: Vec<(Option<&str>, u16)> = vec![(Some(target.token.as_str()), 200)];
            if let Expect::Pod {
                authenticates: true,
            } = target.expect
            {
                checks.push((None, 401));
            }
            for (token, expected) in checks {
                let got = runtime.block_on(https_get(&connector, target.addr, target.path, token));
                let problem = match &got {
                    Ok((code, _)) if *code != expected => Some(format!("status {code}")),
                    Ok((200, body)) => check_body(target.expect, body)
                        .err()
                        .map(|e| format!("{e:#}")),
                    Ok(_) => None,
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(problem) = problem {
                    let body: String = got
                        .map(|(_, b)| String::from_utf8_lossy(&b).chars().take(300).collect())
                        .unwrap_or_default();
                    bail!(
                        "({}) {}: expected {expected}{}: {problem}: {body}\n{}",
                        target.id,
                        target.label,
                        if token.is_some() {
                            " with a token"
                        } else {
                            " without a token"
                        },
                        self.target_log(i)
                    );
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
    ) -> anyhow::Result<Sample> {
        let target = &self.targets[i];
        let proxy = target.proxy.map(|p| &self.procs[p]);
        let proxy_before = proxy.map(Proc::cpu_ticks).transpose()?;
        let upstream_before = self.upstream.cpu_ticks()?;
        let url = format!("https://{}{}", target.addr, target.path);
        let result = run_wrk(
            wrk,
            &url,
            connections,
            args.wrk_threads,
            duration,
            &target.token,
        )
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

/// How one gateway process differs from the others.
struct GatewaySpec<'a> {
    /// The `upstream:` keys besides the credential, indented by two spaces.
    upstream: &'a str,
    passthrough: bool,
    /// Where its `record:` store goes; `None` leaves recording off.
    record_dir: Option<&'a Path>,
    /// Further `record:` keys, each line indented by two spaces.
    record_extra: &'a str,
}

struct StartedGateway {
    proc: Proc,
    api: SocketAddr,
    admin: SocketAddr,
}

fn start_gateway(
    dir: &Path,
    fixture: &Fixture,
    id: char,
    label: &str,
    binary: &Path,
    spec: &GatewaySpec,
) -> anyhow::Result<StartedGateway> {
    let api = loopback(free_port()?);
    let admin = loopback(free_port()?);
    let config = dir.join(format!("gateway-{id}.yaml"));
    std::fs::write(&config, gateway_yaml(fixture, api, admin, spec))?;
    let mut cmd = Command::new(binary);
    cmd.arg("serve").arg("--config").arg(&config);
    let mut process = Proc::spawn(label, cmd, dir.join(format!("gateway-{id}.log")), false)?;
    process.wait_healthy(api, admin)?;
    Ok(StartedGateway {
        proc: process,
        api,
        admin,
    })
}

/// Every authenticated caller may do anything, under the default obligations (mask profile
/// `default`; recording `full` for exec); two callers have a more specific rule (a rule naming
/// users beats `*`) that switches one obligation off, so one gateway serves both variants of
/// the masking and of the recording comparison.
fn bench_policy() -> String {
    format!(
        r#"policy:
  rules:
    - name: bench-allow-all
      subjects: {{users: ["*"]}}
      verbs: ["*"]
      resources: ["*"]
      action: allow
    - name: bench-unmasked
      subjects: {{users: ["oidc:{UNMASKED_AGENT}"]}}
      verbs: ["*"]
      resources: ["*"]
      action: allow
      mask: none
    - name: bench-unrecorded
      subjects: {{users: ["oidc:{UNRECORDED_AGENT}"]}}
      verbs: ["*"]
      resources: ["*"]
      action: allow
      record: metadata
    - name: bench-urls
      subjects: {{users: ["*"]}}
      verbs: ["*"]
      non_resource_urls: ["*"]
      action: allow
"#
    )
}

fn gateway_yaml(f: &Fixture, api: SocketAddr, admin: SocketAddr, spec: &GatewaySpec) -> String {
    let record = match spec.record_dir {
        Some(dir) => format!(
            "record:\n  path: {}\n  signing_key_file: {}\n  generate_signing_key: true\n{}",
            dir.join("store").display(),
            dir.join("signing-key.pem").display(),
            spec.record_extra
        ),
        None => String::new(),
    };
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
{upstream}  credential:
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
{policy}{record}"#,
        cert = f.certs.cert.display(),
        key = f.certs.key.display(),
        upstream = spec.upstream,
        token = f.upstream_token_file.display(),
        issuer = f.issuer,
        audience = f.audience,
        jwks = f.jwks_file.display(),
        passthrough = spec.passthrough,
        policy = bench_policy(),
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

/// On-CPU nanoseconds of a process's threads (`/proc/<pid>/task/*/schedstat`, first field),
/// split into the recorder's threads (named `record-*`) and all the others. A thread that
/// ended between the listing and the read is left out.
fn thread_cpu_ns(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut recorder, mut other) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(schedstat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let ns: u64 = schedstat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse()?;
        if comm.starts_with("record-") {
            recorder += ns;
        } else {
            other += ns;
        }
    }
    Ok((recorder, other))
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

/// One verified HTTPS GET; returns the status code and the (de-chunked) body.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = connector.connect(name, tcp).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::get(path).header(hyper::header::HOST, addr.to_string());
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("timed out")?
}

/// Checks a 200 body against what the target must serve.
fn check_body(expect: Expect, body: &[u8]) -> anyhow::Result<()> {
    match expect {
        Expect::Pod { .. } => {
            let pod: serde_json::Value = serde_json::from_slice(body).context("not JSON")?;
            if pod["kind"] != "Pod" {
                bail!("not a Pod");
            }
            Ok(())
        }
        Expect::Secrets { masked } => check_secret_list(body, SECRET_COUNT, masked),
    }
}

/// Every data value of every item masked (or none), and the last-applied annotation (which
/// holds the plaintext) replaced (or kept).
fn check_secret_list(body: &[u8], count: usize, masked: bool) -> anyhow::Result<()> {
    let list: serde_json::Value = serde_json::from_slice(body).context("not JSON")?;
    let items = list["items"].as_array().context("no items")?;
    if list["kind"] != "SecretList" || items.len() != count {
        bail!("expected a SecretList of {count} items");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut values = 0;
    let mut masked_values = 0;
    let mut plaintext_annotations = 0;
    for item in items {
        for value in item["data"]
            .as_object()
            .context("an item without data")?
            .values()
        {
            values += 1;
            let decoded = b64.decode(value.as_str().context("a non-string data value")?)?;
            if decoded == MASK_MARKER.as_bytes() {
                masked_values += 1;
            }
        }
        let applied =
            &item["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"];
        if applied.as_str().is_some_and(|a| a.contains("stringData")) {
            plaintext_annotations += 1;
        }
    }
    let expected_masked = if masked { values } else { 0 };
    if values == 0 || masked_values != expected_masked {
        bail!("{masked_values} of {values} data values masked, expected {expected_masked}");
    }
    if masked && plaintext_annotations > 0 {
        bail!("{plaintext_annotations} last-applied annotations still hold the plaintext");
    }
    if !masked && plaintext_annotations == 0 {
        bail!("the last-applied annotations were changed under `mask: none`");
    }
    Ok(())
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

/// The `q` quantile (0..=1) of sorted values, interpolated between neighbours.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
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
            ('f', 'g', "(f)/(g) 500 Secrets masked vs mask: none"),
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
fn version_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
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

fn print_machine(
    args: &Args,
    cores: usize,
    wrk: Option<&Path>,
    nginx: Option<&Path>,
    upstream: &Path,
) {
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
        version_of(&args.portcullis, &["--version"])
    );
    if let Some(j) = &args.portcullis_jemalloc {
        println!(
            "portcullis: {} (jemalloc, tikv-jemallocator)",
            version_of(j, &["--version"])
        );
    }
    if let Some(nginx) = nginx {
        println!("nginx: {}", version_of(nginx, &["-v"]));
    }
    if let Some(wrk) = wrk {
        println!("wrk: {}", version_of(wrk, &["-v"]));
    }
    if let Some(rustc) = find_program("rustc") {
        println!("rustc: {}", version_of(&rustc, &["--version"]));
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

/// The exec benchmark (issue #5): one gateway with a `record:` store in front of the API
/// double; the same exec, a command writing `--exec-bytes` to stdout, run by a caller whose
/// sessions are recorded in full (the default for exec) and by one whose rule says `record:
/// metadata`, alternately, `--exec-runs` times each. The client is in this process: WebSocket
/// (`v5.channel.k8s.io`, as kubectl 1.35 speaks it) over TLS, counting stdout bytes, so it
/// measures the data path rather than a terminal.
mod exec_bench {
    use super::*;

    /// stdout (channel 1), stderr (2) and the exit status (3) of the Kubernetes channel protocol.
    const STDOUT: u8 = 1;
    const STDERR: u8 = 2;
    const STATUS: u8 = 3;
    /// Attempts per run: pingora can drop an upgraded connection right after its 101
    /// (cloudflare/pingora#946, README "Known issues"), before any output or after the first
    /// 64–128 KiB of it; such a run is retried. Under load the drops come in bursts (three in a
    /// row ended a 40-round run), hence five.
    const ATTEMPTS: u32 = 5;
    const CHECK_BYTES: u64 = 1_000_000;
    /// Rounds whose runs lost less than this share of the machine to the hypervisor (steal)
    /// get a ratio of their own: steal slows a run without showing in any process's CPU time.
    const CALM_STEAL: f64 = 0.02;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Variant {
        Recorded,
        Unrecorded,
    }

    impl Variant {
        fn label(self) -> &'static str {
            match self {
                Variant::Recorded => "(x) record: full (default for exec)",
                Variant::Unrecorded => "(y) rule with record: metadata",
            }
        }

        fn token(self, fixture: &Fixture) -> &str {
            match self {
                Variant::Recorded => &fixture.token,
                Variant::Unrecorded => &fixture.unrecorded_token,
            }
        }

        fn user(self) -> String {
            match self {
                Variant::Recorded => format!("oidc:{AGENT}"),
                Variant::Unrecorded => format!("oidc:{UNRECORDED_AGENT}"),
            }
        }
    }

    struct ExecSample {
        seconds: f64,
        gateway_ticks: u64,
        /// On-CPU time of the gateway's recorder threads (`record-*`) and of the others.
        recorder_ns: u64,
        other_ns: u64,
        /// On-CPU time of the whole path: this process (the client), the gateway and the double.
        path_ns: u64,
        retries: u32,
        stdout_bytes: u64,
        /// False when the gateway ended the session before the command's exit status.
        complete: bool,
        /// Share of the machine's CPU the hypervisor took during the run (steal time).
        steal: f64,
    }

    /// What one exec saw: the stdout byte count, the exit status, and when the status came.
    struct ExecRun {
        stdout_bytes: u64,
        stderr: String,
        status: Option<serde_json::Value>,
        elapsed: Duration,
        /// How the stream ended, when it ended without an exit status.
        end: String,
    }

    pub(super) fn run(
        args: &Args,
        dir: &Path,
        fixture: &Fixture,
        double_bin: &Path,
        clk_tck: f64,
    ) -> anyhow::Result<String> {
        let double_dir = dir.join("double");
        let record_dir = dir.join("record");
        std::fs::create_dir_all(&double_dir)?;
        std::fs::create_dir_all(&record_dir)?;
        let double_addr = loopback(free_port()?);
        let mut cmd = Command::new(double_bin);
        cmd.arg("--listen")
            .arg(double_addr.to_string())
            .arg("--dir")
            .arg(&double_dir)
            .arg("--token-file")
            .arg(&fixture.upstream_token_file)
            .env("RUST_LOG", "warn");
        let mut double = Proc::spawn("kube-double", cmd, dir.join("double.log"), false)?;
        double.wait_listening(&[double_addr])?;
        let upstream_yaml = format!(
            "  url: https://{double_addr}\n  ca_file: {}\n",
            double_dir.join("ca.pem").display()
        );
        let record_extra = args
            .exec_session_queue_bytes
            .map(|n| format!("  session_queue_max_bytes: {n}\n"))
            .unwrap_or_default();
        let spec = GatewaySpec {
            upstream: &upstream_yaml,
            passthrough: false,
            record_dir: Some(&record_dir),
            record_extra: &record_extra,
        };
        let mut gateway = start_gateway(
            dir,
            fixture,
            'x',
            "portcullis with a record: store",
            &args.portcullis,
            &spec,
        )?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connector = tls_connector(&fixture.certs.ca)?;
        let limit = Duration::from_secs(args.exec_timeout_seconds);
        let kubectl = match args.exec_client {
            ExecClient::InProcess => None,
            ExecClient::Kubectl => Some(Kubectl::prepare(args, dir, fixture, gateway.api)?),
        };
        let exec = |variant: Variant, bytes: u64, gateway: &mut StartedGateway| {
            // A recorded session that outruns the recorder is ended by the gateway
            // (`on_session_overflow: terminate`): a result to report, not a broken benchmark.
            // Only a cut the gateway counted as an overflow is one; any other early end is
            // retried like in the unrecorded variant. (Read before the CPU ticks: the scrape
            // is not the run's work.)
            let admin = gateway.admin;
            let overflows_before = overflow_total(admin);
            let before = gateway.proc.cpu_ticks()?;
            let threads_before = thread_cpu_ns(gateway.proc.child.id())?;
            let path_before = path_cpu_ns(gateway, &double)?;
            let machine_before = machine_ticks()?;
            let cut_by_recorder =
                || variant == Variant::Recorded && overflow_total(admin) > overflows_before;
            let client = match &kubectl {
                None => Client::InProcess {
                    connector: &connector,
                    addr: gateway.api,
                    token: variant.token(fixture),
                },
                Some(kubectl) => Client::Kubectl {
                    program: &kubectl.program,
                    kubeconfig: kubectl.kubeconfig(variant),
                },
            };
            let (run, retries) =
                runtime.block_on(exec_checked(&client, bytes, limit, &cut_by_recorder));
            let run = run.with_context(|| {
                format!(
                    "exec through the gateway, {}\n{}\n{}",
                    variant.label(),
                    gateway.proc.log_tail(),
                    double.log_tail()
                )
            })?;
            let steal = MachineShare::between(machine_before, machine_ticks()?, 0).steal;
            gateway.proc.check_alive()?;
            let threads_after = thread_cpu_ns(gateway.proc.child.id())?;
            let path_after = path_cpu_ns(gateway, &double)?;
            anyhow::Ok(ExecSample {
                seconds: run.elapsed.as_secs_f64(),
                gateway_ticks: gateway.proc.cpu_ticks()?.saturating_sub(before),
                recorder_ns: threads_after.0.saturating_sub(threads_before.0),
                other_ns: threads_after.1.saturating_sub(threads_before.1),
                path_ns: path_after.saturating_sub(path_before),
                retries,
                stdout_bytes: run.stdout_bytes,
                complete: run.status.is_some(),
                steal,
            })
        };

        for variant in [Variant::Recorded, Variant::Unrecorded] {
            exec(variant, CHECK_BYTES, &mut gateway)?;
        }
        println!(
            "\nexec plan: {} runs x 2 variants of {} MB each, at most {} s per run",
            args.exec_runs,
            args.exec_bytes as f64 / 1e6,
            args.exec_timeout_seconds
        );
        let mut samples: BTreeMap<bool, Vec<ExecSample>> = BTreeMap::new();
        let started = Instant::now();
        let machine_before = machine_ticks()?;
        let own_before = exec_own_ticks(&gateway, &double, clk_tck)?;
        for round in 0..args.exec_runs {
            // Alternating which goes first keeps a drift of the machine out of the ratio.
            let order = if round % 2 == 0 {
                [Variant::Recorded, Variant::Unrecorded]
            } else {
                [Variant::Unrecorded, Variant::Recorded]
            };
            for variant in order {
                let skipped = match args.exec_only {
                    Some(ExecOnly::Recorded) => variant != Variant::Recorded,
                    Some(ExecOnly::Unrecorded) => variant != Variant::Unrecorded,
                    None => false,
                };
                if skipped {
                    continue;
                }
                let sample = exec(variant, args.exec_bytes, &mut gateway)?;
                samples
                    .entry(variant == Variant::Recorded)
                    .or_default()
                    .push(sample);
            }
            eprintln!(
                "exec round {}/{} done ({:.0} s)",
                round + 1,
                args.exec_runs,
                started.elapsed().as_secs_f64()
            );
        }
        let foreign = MachineShare::between(
            machine_before,
            machine_ticks()?,
            exec_own_ticks(&gateway, &double, clk_tck)? - own_before,
        );
        let metrics = http_get_plain(gateway.admin, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        // sled holds the store's lock while the gateway runs.
        drop(gateway);
        let sessions = list_sessions(&args.portcullis, &record_dir.join("store"));
        let store_bytes = disk_usage(&record_dir.join("store"));

        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nexec throughput: `stream {}` in pod web-0 (stdout only), WebSocket v5.channel.k8s.io over TLS,\n\
             gateway -> kube-double over TLS; {} runs {}; MB = 10^6 bytes; {};\n\
             record.session_queue_max_bytes: {}",
            args.exec_bytes,
            args.exec_runs,
            match args.exec_only {
                None => "per variant, interleaved",
                Some(ExecOnly::Recorded) => "of the recorded variant only (--exec-only)",
                Some(ExecOnly::Unrecorded) => "of the unrecorded variant only (--exec-only)",
            },
            match &kubectl {
                None => "client: this process; time from TCP connect to the exit status\n\
                     (TLS, token check, the durable audit record included)"
                    .to_string(),
                Some(kubectl) => format!(
                    "client: {} ({}), stdout through a pipe;\n\
                     time from the first stdout byte to the last (kubectl's start left out)",
                    kubectl.program.display(),
                    version_of(&kubectl.program, &["version", "--client"])
                ),
            },
            args.exec_session_queue_bytes
                .map(|n| n.to_string())
                .unwrap_or_else(|| "gateway default".into())
        );
        let _ = writeln!(
            out,
            "{:<40} {:>11} {:>17} {:>14} {:>18} {:>11} {:>8} {:>9}",
            "variant",
            "MB/s median",
            "(min..max)",
            "gateway CPU s",
            "recorder/other s",
            "path CPU s",
            "retries",
            "complete"
        );
        let mut medians = BTreeMap::new();
        for variant in [Variant::Recorded, Variant::Unrecorded] {
            let Some(runs) = samples.get(&(variant == Variant::Recorded)) else {
                continue;
            };
            // Throughput and CPU only of runs that delivered everything: a cut run is faster.
            let complete: Vec<&ExecSample> = runs.iter().filter(|r| r.complete).collect();
            let rates: Vec<f64> = complete
                .iter()
                .map(|r| args.exec_bytes as f64 / 1e6 / r.seconds)
                .collect();
            let cpu = median(
                complete
                    .iter()
                    .map(|r| r.gateway_ticks as f64 / clk_tck)
                    .collect(),
            );
            let rate = median(rates.clone());
            let threads = format!(
                "{:.3}/{:.3}",
                median(
                    complete
                        .iter()
                        .map(|r| r.recorder_ns as f64 / 1e9)
                        .collect()
                ),
                median(complete.iter().map(|r| r.other_ns as f64 / 1e9).collect())
            );
            let path_cpu = median(complete.iter().map(|r| r.path_ns as f64 / 1e9).collect());
            if !complete.is_empty() {
                medians.insert(variant == Variant::Recorded, (rate, cpu, path_cpu));
            }
            let (rate, range, cpu) = if complete.is_empty() {
                ("-".to_string(), "-".to_string(), "-".to_string())
            } else {
                (
                    format!("{rate:.1}"),
                    format!(
                        "({:.1}..{:.1})",
                        rates.iter().copied().fold(f64::INFINITY, f64::min),
                        rates.iter().copied().fold(0.0, f64::max)
                    ),
                    format!("{cpu:.2}"),
                )
            };
            let _ = writeln!(
                out,
                "{:<40} {:>11} {:>17} {:>14} {:>18} {:>11.2} {:>8} {:>9}",
                variant.label(),
                rate,
                range,
                cpu,
                threads,
                path_cpu,
                runs.iter().map(|r| r.retries).sum::<u32>(),
                format!("{}/{}", complete.len(), runs.len())
            );
            let cut: Vec<f64> = runs
                .iter()
                .filter(|r| !r.complete)
                .map(|r| r.stdout_bytes as f64 / 1e6)
                .collect();
            if !cut.is_empty() {
                let _ = writeln!(
                    out,
                    "    {} runs ended by the gateway before the exit status, after {:.1} MB of stdout (median; {:.1}..{:.1})",
                    cut.len(),
                    median(cut.clone()),
                    cut.iter().copied().fold(f64::INFINITY, f64::min),
                    cut.iter().copied().fold(0.0, f64::max)
                );
            }
        }
        if let (Some((on, on_cpu, on_path)), Some((off, off_cpu, off_path))) =
            (medians.get(&true), medians.get(&false))
        {
            let all_complete = samples.values().flatten().all(|r| r.complete);
            let _ = writeln!(
                out,
                "ratio (x)/(y): MB/s {:.3} (recording costs {:.1}% of throughput; target < 10%), gateway CPU per run {:.2}{}",
                on / off,
                (1.0 - on / off) * 100.0,
                on_cpu / off_cpu,
                if all_complete {
                    ""
                } else {
                    "\n    (over the complete runs only: not a fair comparison while runs are cut)"
                }
            );
            let paired = paired_ratios(&samples, args.exec_bytes, f64::INFINITY);
            if !paired.is_empty() {
                let _ = writeln!(
                    out,
                    "ratio per round (the two runs of a round are back to back, so a drift of the machine\n\
                     cancels out): {}, over {} rounds",
                    spread(&paired),
                    paired.len()
                );
                let calm = paired_ratios(&samples, args.exec_bytes, CALM_STEAL);
                let _ = writeln!(
                    out,
                    "  over the {} rounds in which the hypervisor took under {:.0}% of the machine in both runs: {}",
                    calm.len(),
                    CALM_STEAL * 100.0,
                    if calm.is_empty() {
                        "none".to_string()
                    } else {
                        spread(&calm)
                    }
                );
            }
            let _ = writeln!(
                out,
                "CPU of the whole path (client + gateway + double) per run: (y)/(x) {:.3}, the throughput\n\
                 ratio when these cores are the limit (recording costs {:.1}% of the path's CPU)",
                off_path / on_path,
                (on_path / off_path - 1.0) * 100.0
            );
        }
        for name in [OVERFLOWS, "portcullis_record_session_dropped_bytes_total"] {
            let _ = writeln!(out, "{name}: {:.0}", metric_total(&metrics, name));
        }
        let _ = writeln!(
            out,
            "portcullis_record_backpressure_seconds_total: {:.3} (streams held so the disk keeps up)",
            metric_total(&metrics, "portcullis_record_backpressure_seconds_total")
        );
        match sessions {
            Ok(sessions) => {
                for variant in [Variant::Recorded, Variant::Unrecorded] {
                    let _ = writeln!(
                        out,
                        "recorded sessions of {}: {}",
                        variant.user(),
                        summarize_sessions(&sessions, &variant.user())
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "recorded sessions: could not list them: {e:#}");
            }
        }
        let _ = writeln!(
            out,
            "record store on disk after {} recorded runs (+1 check of {} MB): {:.0} MB",
            args.exec_runs,
            CHECK_BYTES as f64 / 1e6,
            store_bytes as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "notes: the client, the gateway and the double share this machine's cores; gateway CPU s is\n\
             utime+stime of the gateway process per run."
        );
        let _ = writeln!(out, "{}", foreign.describe("the exec runs"));
        drop(double);
        Ok(out)
    }

    /// Median and quartiles of sorted ratios.
    fn spread(sorted: &[f64]) -> String {
        format!(
            "median {:.3}, quartiles {:.3}..{:.3}",
            quantile(sorted, 0.5),
            quantile(sorted, 0.25),
            quantile(sorted, 0.75)
        )
    }

    /// Recorded over unrecorded throughput of each round in which both runs delivered
    /// everything and the hypervisor took less than `max_steal` of the machine in each.
    fn paired_ratios(
        samples: &BTreeMap<bool, Vec<ExecSample>>,
        bytes: u64,
        max_steal: f64,
    ) -> Vec<f64> {
        let (Some(on), Some(off)) = (samples.get(&true), samples.get(&false)) else {
            return Vec::new();
        };
        let rate = |r: &ExecSample| bytes as f64 / r.seconds;
        let mut ratios: Vec<f64> = on
            .iter()
            .zip(off)
            .filter(|(a, b)| a.complete && b.complete)
            .filter(|(a, b)| a.steal < max_steal && b.steal < max_steal)
            .map(|(a, b)| rate(a) / rate(b))
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    }

    /// On-CPU nanoseconds so far of this process (the client), the gateway and the double.
    fn path_cpu_ns(gateway: &StartedGateway, double: &Proc) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in [
            std::process::id(),
            gateway.proc.child.id(),
            double.child.id(),
        ] {
            let (recorder, other) = thread_cpu_ns(pid)?;
            total += recorder + other;
        }
        Ok(total + children_cpu_ns())
    }

    /// User + system CPU of this process's children that have exited and been waited for: the
    /// kubectl runs of `--exec-client kubectl` (the gateway and the double run to the end).
    fn children_cpu_ns() -> u64 {
        // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid `who` and a pointer to a live rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
            return 0;
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        ns(usage.ru_utime) + ns(usage.ru_stime)
    }

    /// CPU ticks of this process (the client) and the servers of the exec benchmark.
    fn exec_own_ticks(
        gateway: &StartedGateway,
        double: &Proc,
        clk_tck: f64,
    ) -> anyhow::Result<u64> {
        let children_ticks = children_cpu_ns() as f64 / 1e9 * clk_tck;
        Ok(process_cpu_ticks(std::process::id())?
            + gateway.proc.cpu_ticks()?
            + double.cpu_ticks()?
            + children_ticks as u64)
    }

    const OVERFLOWS: &str = "portcullis_record_session_overflows_total";

    /// The sum of a counter's series in a Prometheus text exposition.
    fn metric_total(metrics: &str, name: &str) -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    }

    /// Sessions the gateway ended because the recorder fell behind, so far (0 if unreadable).
    fn overflow_total(admin: SocketAddr) -> f64 {
        http_get_plain(admin, "/metrics")
            .map(|(_, body)| metric_total(&body, OVERFLOWS))
            .unwrap_or(0.0)
    }

    /// One exec that must deliver exactly `bytes` and exit successfully; retried (up to
    /// `ATTEMPTS`) when the connection ended before any output, or without a status unless
    /// `cut_by_recorder` says the gateway ended it. Returns the run and how many retries it took.
    async fn exec_checked(
        client: &Client<'_>,
        bytes: u64,
        limit: Duration,
        cut_by_recorder: &dyn Fn() -> bool,
    ) -> (anyhow::Result<ExecRun>, u32) {
        let mut last_error = None;
        for attempt in 0..ATTEMPTS {
            let result = match tokio::time::timeout(limit, client.run(bytes)).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "no exit status within {} s",
                    limit.as_secs()
                )),
            };
            match result {
                Ok(run) if run.stdout_bytes == 0 && run.status.is_none() => {
                    last_error = Some(anyhow::anyhow!(
                        "the connection ended before any output (stderr: {:?})",
                        run.stderr
                    ));
                }
                Ok(run) if run.status.is_none() && cut_by_recorder() => return (Ok(run), attempt),
                Ok(run) => {
                    let success = run
                        .status
                        .as_ref()
                        .is_some_and(|s| s["status"] == "Success");
                    if run.status.is_none() && attempt + 1 < ATTEMPTS {
                        // Cut short without a status where nothing may cut it: retried like
                        // an early teardown, and shown, since it is a finding too.
                        eprintln!(
                            "exec: retrying a run that ended after {} bytes without a status ({})",
                            run.stdout_bytes, run.end
                        );
                        last_error = Some(anyhow::anyhow!("ended early: {}", run.end));
                        continue;
                    }
                    if run.stdout_bytes != bytes || !success {
                        let problem = anyhow::anyhow!(
                            "got {} of {bytes} stdout bytes, status {}, stderr {:?}, end: {}",
                            run.stdout_bytes,
                            run.status
                                .as_ref()
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "none".into()),
                            run.stderr,
                            run.end
                        );
                        return (Err(problem), attempt);
                    }
                    return (Ok(run), attempt);
                }
                Err(e) => last_error = Some(e),
            }
        }
        let error = last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
        (
            Err(error.context(format!("{ATTEMPTS} attempts failed"))),
            ATTEMPTS - 1,
        )
    }

    /// Who runs an exec (`--exec-client`).
    enum Client<'a> {
        InProcess {
            connector: &'a tokio_rustls::TlsConnector,
            addr: SocketAddr,
            token: &'a str,
        },
        Kubectl {
            program: &'a Path,
            kubeconfig: &'a Path,
        },
    }

    /// A kubeconfig for `--exec-client kubectl`: the gateway at `addr`, the bench CA, `token`.
    /// JSON, which kubectl reads as YAML.
    fn write_kubeconfig(
        path: &Path,
        addr: SocketAddr,
        ca: &Path,
        token: &str,
    ) -> anyhow::Result<()> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "bench", "cluster": {
                "server": format!("https://{addr}"),
                "certificate-authority": ca,
            }}],
            "users": [{"name": "agent", "user": {"token": token}}],
            "contexts": [{"name": "bench", "context": {
                "cluster": "bench", "user": "agent", "namespace": "default",
            }}],
            "current-context": "bench",
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    impl Client<'_> {
        async fn run(&self, bytes: u64) -> anyhow::Result<ExecRun> {
            match self {
                Client::InProcess {
                    connector,
                    addr,
                    token,
                } => exec_once(connector, *addr, token, bytes).await,
                Client::Kubectl {
                    program,
                    kubeconfig,
                } => exec_kubectl(program, kubeconfig, bytes).await,
            }
        }
    }

    /// `--exec-client kubectl`: the program and a kubeconfig per variant.
    struct Kubectl {
        program: PathBuf,
        recorded: PathBuf,
        unrecorded: PathBuf,
    }

    impl Kubectl {
        fn prepare(
            args: &Args,
            dir: &Path,
            fixture: &Fixture,
            gateway: SocketAddr,
        ) -> anyhow::Result<Self> {
            let program = find_program(&args.kubectl).with_context(|| {
                format!(
                    "--exec-client kubectl: no kubectl at {} (cargo xtask peers, or --kubectl)",
                    args.kubectl
                )
            })?;
            let kubeconfig = |variant: Variant, name: &str| {
                let path = dir.join(name);
                write_kubeconfig(&path, gateway, &fixture.certs.ca, variant.token(fixture))
                    .map(|()| path)
            };
            Ok(Kubectl {
                program,
                recorded: kubeconfig(Variant::Recorded, "kubeconfig-recorded")?,
                unrecorded: kubeconfig(Variant::Unrecorded, "kubeconfig-unrecorded")?,
            })
        }

        fn kubeconfig(&self, variant: Variant) -> &Path {
            match variant {
                Variant::Recorded => &self.recorded,
                Variant::Unrecorded => &self.unrecorded,
            }
        }
    }

    /// `kubectl exec web-0 -- stream BYTES` through the gateway, its stdout read through a pipe
    /// and counted. The time is from the first stdout byte to the last: the stream's throughput,
    /// without kubectl's start (process start, the pod lookup, TLS), which would dilute the ratio.
    async fn exec_kubectl(
        program: &Path,
        kubeconfig: &Path,
        bytes: u64,
    ) -> anyhow::Result<ExecRun> {
        use tokio::io::AsyncReadExt;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["exec", "web-0", "--", "stream"])
            .arg(bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A run cut by the timeout drops this future: kubectl goes with it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let mut stdout = child.stdout.take().context("kubectl's stdout")?;
        let mut stderr = child.stderr.take().context("kubectl's stderr")?;
        let count = async {
            let mut buf = vec![0u8; 256 << 10];
            let (mut total, mut first, mut last) = (0u64, None, started);
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                total += n as u64;
            }
            anyhow::Ok((total, first, last))
        };
        let errors = async {
            let mut text = Vec::new();
            stderr.read_to_end(&mut text).await.map(|_| text)
        };
        let (counted, errors) = tokio::join!(count, errors);
        let (stdout_bytes, first, last) = counted?;
        let status = child.wait().await?;
        let mut stderr = String::from_utf8_lossy(&errors.unwrap_or_default()).into_owned();
        stderr.truncate(4096);
        Ok(ExecRun {
            stdout_bytes,
            stderr,
            // kubectl exits 0 only when the remote command did (after its status came).
            status: status
                .success()
                .then(|| serde_json::json!({"status": "Success"})),
            elapsed: match first {
                Some(first) => last.duration_since(first),
                None => started.elapsed(),
            },
            end: format!("kubectl {status}"),
        })
    }

    async fn exec_once(
        connector: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        token: &str,
        bytes: u64,
    ) -> anyhow::Result<ExecRun> {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let url = format!("wss://{addr}{EXEC_POD_PATH}?command=stream&command={bytes}&stdout=true");
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse()?);
        headers.insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
        let (mut ws, _response) = tokio_tungstenite::client_async(request, tls).await?;
        let mut run = ExecRun {
            stdout_bytes: 0,
            stderr: String::new(),
            status: None,
            elapsed: Duration::ZERO,
            end: "the stream ended".into(),
        };
        while let Some(message) = ws.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(frame)) => {
                    run.end = format!("close frame {frame:?}");
                    break;
                }
                Ok(_) => continue,
                // An abrupt end after output is reported as a short count by the caller.
                Err(e) if run.stdout_bytes == 0 => return Err(e.into()),
                Err(e) => {
                    run.end = format!("error: {e}");
                    break;
                }
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDOUT => run.stdout_bytes += payload.len() as u64,
                STDERR if run.stderr.len() < 4096 => {
                    run.stderr.push_str(&String::from_utf8_lossy(payload));
                }
                STATUS => {
                    run.elapsed = started.elapsed();
                    run.status = serde_json::from_slice(payload).ok();
                    break;
                }
                _ => {}
            }
        }
        if run.status.is_none() {
            run.elapsed = started.elapsed();
        }
        // The session is over; a close handshake that does not finish promptly changes nothing.
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        Ok(run)
    }

    /// `portcullis sessions list --output json` on the stopped gateway's store.
    fn list_sessions(portcullis: &Path, store: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
        let output = Command::new(portcullis)
            .args(["sessions", "list", "--output", "json", "--store"])
            .arg(store)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!(
                "portcullis sessions list failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("a session line that is not JSON"))
            .collect()
    }

    /// Count, frames and stdout bytes of one user's sessions, and whether any overflowed.
    pub(super) fn summarize_sessions(sessions: &[serde_json::Value], user: &str) -> String {
        let mine: Vec<&serde_json::Value> = sessions.iter().filter(|s| s["user"] == user).collect();
        let sum = |key: &str| -> u64 { mine.iter().filter_map(|s| s[key].as_u64()).sum() };
        let overflowed = mine.iter().filter(|s| s["overflowed"] == true).count();
        format!(
            "{} sessions, {} frames stored, {:.1} MB stdout counted, {} overflowed, {} bytes dropped",
            mine.len(),
            sum("frames"),
            sum("stdout_bytes") as f64 / 1e6,
            overflowed,
            sum("dropped_bytes")
        )
    }

    fn disk_usage(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rounds_with_steal_are_left_out_of_the_calm_ratio() {
            let sample = |seconds: f64, steal: f64| ExecSample {
                seconds,
                gateway_ticks: 0,
                recorder_ns: 0,
                other_ns: 0,
                path_ns: 0,
                retries: 0,
                stdout_bytes: 100,
                complete: true,
                steal,
            };
            let mut samples = BTreeMap::new();
            samples.insert(
                true,
                vec![sample(2.0, 0.0), sample(4.0, 0.3), sample(5.0, 0.0)],
            );
            samples.insert(
                false,
                vec![sample(1.0, 0.0), sample(1.0, 0.0), sample(4.0, 0.01)],
            );
            assert_eq!(
                paired_ratios(&samples, 100, f64::INFINITY),
                vec![0.25, 0.5, 0.8]
            );
            assert_eq!(paired_ratios(&samples, 100, 0.02), vec![0.5, 0.8]);
        }
    }
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

    fn secret_list(values: &[&str], annotation: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let data: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i}"), serde_json::json!(b64.encode(v))))
            .collect();
        let item = serde_json::json!({
            "metadata": {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": annotation
            }},
            "data": data
        });
        serde_json::json!({"kind": "SecretList", "items": [item.clone(), item]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn secret_list_check_tells_masked_from_plain() {
        let masked = secret_list(&[MASK_MARKER, MASK_MARKER], MASK_MARKER);
        let plain = secret_list(&["pw", "user"], r#"{"stringData":{"k0":"pw"}}"#);
        let half = secret_list(&[MASK_MARKER, "user"], MASK_MARKER);
        let leaky = secret_list(&[MASK_MARKER, MASK_MARKER], r#"{"stringData":{}}"#);
        check_secret_list(&masked, 2, true).unwrap();
        check_secret_list(&plain, 2, false).unwrap();
        assert!(check_secret_list(&masked, 2, false).is_err());
        assert!(check_secret_list(&plain, 2, true).is_err());
        assert!(check_secret_list(&half, 2, true).is_err());
        assert!(check_secret_list(&half, 2, false).is_err());
        assert!(check_secret_list(&leaky, 2, true).is_err());
        assert!(check_secret_list(&masked, 3, true).is_err());
    }

    #[test]
    fn sessions_are_summarized_per_user() {
        let sessions: Vec<serde_json::Value> = [
            r#"{"user":"oidc:a","frames":10,"stdout_bytes":2000000,"overflowed":false,"dropped_bytes":0}"#,
            r#"{"user":"oidc:a","frames":5,"stdout_bytes":1000000,"overflowed":true,"dropped_bytes":7}"#,
            r#"{"user":"oidc:b","frames":1,"stdout_bytes":1,"overflowed":false,"dropped_bytes":0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert_eq!(
            exec_bench::summarize_sessions(&sessions, "oidc:a"),
            "2 sessions, 15 frames stored, 3.0 MB stdout counted, 1 overflowed, 7 bytes dropped"
        );
        assert!(
            exec_bench::summarize_sessions(&sessions, "oidc:c").starts_with("0 sessions, 0 frames")
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn quantiles_interpolate_between_sorted_values() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn steal_and_foreign_shares_come_from_proc_stat_deltas() {
        let before = parse_machine_ticks("cpu  100 0 50 800 10 5 5 30 0 0").unwrap();
        let after = parse_machine_ticks("cpu  400 0 150 1000 10 5 5 230 0 0").unwrap();
        // 800 ticks in all: 400 busy (100 of them ours), 200 stolen.
        let share = MachineShare::between(before, after, 100);
        assert_eq!((share.foreign, share.steal), (0.375, 0.25));
        let text = share.describe("the runs");
        assert!(text.contains("steal): 25.0%"), "{text}");
        assert!(text.contains("the hypervisor took more than 5%"), "{text}");
        let calm = MachineShare::between(before, before, 0).describe("the runs");
        assert!(!calm.contains("warning"), "{calm}");
        assert!(parse_machine_ticks("cpu  1 2 3").is_err());
    }
}
