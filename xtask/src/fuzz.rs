//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target of `fuzz/` (the stream
//! decoders of `record::frames`) for a share of N seconds, on the nightly toolchain that
//! libFuzzer's sanitizer flags need. Installs what is missing first (nightly via rustup,
//! cargo-fuzz via `cargo install`), and does nothing when both are present.
//!
//! Owns orchestration only; corpora and crash artifacts stay in `fuzz/corpus` and
//! `fuzz/artifacts` (ignored by git). It must never leave a fuzzer running past its time.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::process;

const TOOLCHAIN: &str = "nightly";

/// `rustup run nightly <program>`: the toolchain picked explicitly, whatever launched xtask.
fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, program]);
    // Set by the cargo that runs xtask; they would point the child at the stable toolchain.
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        cmd.env_remove(var);
    }
    cmd
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the nightly toolchain and cargo-fuzz if either is missing.
fn ensure_tools() -> Result<()> {
    if !succeeds(nightly("rustc").arg("--version")) {
        eprintln!("xtask: installing the {TOOLCHAIN} toolchain (cargo-fuzz needs it)");
        process::run(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    if !succeeds(nightly("cargo").args(["fuzz", "--version"])) {
        eprintln!("xtask: installing cargo-fuzz");
        process::run(nightly("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    ensure_tools()?;
    let fuzz_dir = root.join("fuzz");
    let listed = process::output(
        nightly("cargo")
            .args(["fuzz", "list"])
            .current_dir(&fuzz_dir),
    )
    .context("listing the fuzz targets")?;
    let targets: Vec<&str> = listed.split_whitespace().collect();
    if targets.is_empty() {
        bail!("no fuzz targets in {}", fuzz_dir.display());
    }
    // Build once, so compile time does not eat into any target's share.
    process::run(
        nightly("cargo")
            .args(["fuzz", "build"])
            .current_dir(&fuzz_dir),
    )?;
    let share = (seconds / targets.len() as u64).max(1);
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        process::run(
            nightly("cargo")
                .args(["fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={share}"))
                // A decoder step is microseconds; a second means a hang.
                .arg("-timeout=10")
                .arg("-rss_limit_mb=2048")
                .current_dir(&fuzz_dir),
        )
        .with_context(|| {
            format!("fuzz target `{target}` failed: its input is under fuzz/artifacts/{target}/")
        })?;
    }
    eprintln!(
        "xtask: fuzzed {} targets for {share}s each, no failures",
        targets.len()
    );
    Ok(())
}
