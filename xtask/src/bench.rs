//! `cargo xtask bench`: builds the gateway twice in release mode (system allocator and
//! jemalloc), the benchmark's upstream and driver, then runs the driver, which prints the
//! numbers. Owns the build steps only; what is measured lives in
//! `tests/src/bin/portcullis-bench.rs`. Must never install system packages (it says how) or
//! build into any target directory but cargo's own.

use std::ffi::OsString;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::process;

/// Debian package names of the tools the driver needs besides the workspace's own binaries.
const TOOLS: [(&str, &str); 2] = [("wrk", "wrk"), ("nginx", "nginx-light")];

pub fn run(root: &Path, driver_args: &[OsString]) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(binary, _)| find_tool(binary).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the benchmark needs {} (install with: sudo apt-get install {})",
            missing.join(" and "),
            missing.join(" ")
        );
    }

    let release = crate::target_dir(root).join("release");
    // Both gateway variants share cargo's target dir: build the jemalloc one first and copy it
    // aside, so the plain build that follows leaves `release/portcullis` as everyone expects.
    // Cargo keeps one artifact per crate whatever its features, so every switch recompiles the
    // gateway (minutes on a small machine): the copy is reused while no input is newer.
    let jemalloc = release.join("portcullis-jemalloc");
    if modified(&jemalloc).is_some_and(|built| newest_input(root).is_some_and(|n| n < built)) {
        eprintln!(
            "{} is newer than every gateway source: not rebuilt",
            jemalloc.display()
        );
    } else {
        process::run(crate::cargo(root).args([
            "build",
            "--release",
            "-p",
            "portcullis",
            "--features",
            "jemalloc",
        ]))?;
        std::fs::copy(release.join("portcullis"), &jemalloc)
            .with_context(|| format!("copying the jemalloc build to {}", jemalloc.display()))?;
    }
    process::run(crate::cargo(root).args(["build", "--release", "-p", "portcullis"]))?;
    process::run(crate::cargo(root).args([
        "build",
        "--release",
        "-p",
        "portcullis-tests",
        "--bin",
        "bench-upstream",
        "--bin",
        "portcullis-bench",
        // The exec benchmark's upstream; the driver finds it next to itself.
        "--bin",
        "kube-double",
    ]))?;

    let mut driver = std::process::Command::new(release.join("portcullis-bench"));
    driver
        .current_dir(root)
        .arg("--portcullis")
        .arg(release.join("portcullis"))
        .arg("--portcullis-jemalloc")
        .arg(&jemalloc)
        .arg("--upstream")
        .arg(release.join("bench-upstream"))
        .args(driver_args);
    process::run(&mut driver)
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// The newest modification time among the gateway's inputs: the proxy crate and the
/// workspace manifest and lock file. `None` if any cannot be read (then: rebuild).
fn newest_input(root: &Path) -> Option<SystemTime> {
    fn walk(path: &Path, newest: &mut SystemTime) -> Option<()> {
        let meta = path.metadata().ok()?;
        *newest = (*newest).max(meta.modified().ok()?);
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).ok()? {
                walk(&entry.ok()?.path(), newest)?;
            }
        }
        Some(())
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for input in ["proxy", "Cargo.toml", "Cargo.lock"] {
        walk(&root.join(input), &mut newest)?;
    }
    Some(newest)
}

/// nginx lives in /usr/sbin, which is not on every user's PATH.
fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    process::find_on_path(name).or_else(|| {
        ["/usr/sbin", "/usr/local/sbin", "/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| process::is_executable(p))
    })
}
