//! `cargo xtask build-ebpf`: builds the kernel-side eBPF object that the gateway embeds.
//!
//! Owns the eBPF toolchain: the Debian LLVM packages bpf-linker links against (installed with
//! apt-get only when running as root and only if missing), `rust-src` on the nightly toolchain,
//! bpf-linker itself (pinned), and the build of `ebpf/portcullis-ebpf` into
//! `target/ebpf/bpfel-unknown-none/release/portcullis-ebpf`, the path `proxy/build.rs` embeds.
//! Every step is skipped when already satisfied. Must never change the stable toolchain or the
//! root workspace's build: the nightly build runs in its own directory and target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::process;

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Where the object lands; `proxy/build.rs` reads the same path.
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target")
        .join("ebpf")
        .join("bpfel-unknown-none")
        .join("release")
        .join("portcullis-ebpf")
}

pub fn build(root: &Path) -> Result<()> {
    ensure_apt_packages()?;
    ensure_rust_src()?;
    let linker_dir = ensure_bpf_linker()?;

    let crate_dir = root.join("ebpf").join("portcullis-ebpf");
    let mut cmd = nightly_cargo(&crate_dir, &linker_dir)?;
    cmd.args(["build", "--release", "--target-dir"])
        .arg(root.join("target").join("ebpf"));
    process::run(&mut cmd)?;

    let object = object_path(root);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    // proxy/build.rs only learns about a new object through a file it watches; a fresh
    // mtime on build.rs makes cargo re-run it (the content, and so git, is unchanged).
    let build_script = root.join("proxy").join("build.rs");
    std::fs::File::options()
        .append(true)
        .open(&build_script)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .with_context(|| format!("could not refresh the mtime of {}", build_script.display()))?;
    eprintln!("xtask: eBPF object at {}", object.display());
    Ok(())
}

/// A cargo for the nightly crate: the toolchain comes from its rust-toolchain.toml, so the
/// overrides rustup and cargo put into xtask's own environment must not leak into it.
fn nightly_cargo(crate_dir: &Path, linker_dir: &Path) -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(crate_dir);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![linker_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs)?);
    Ok(cmd)
}

fn is_root() -> bool {
    process::output(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

fn ensure_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "bpf-linker needs {}: run `sudo apt-get install -y {}`, then `cargo xtask build-ebpf` again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!(
        "xtask: installing {} (bpf-linker links against LLVM 22)",
        missing.join(" ")
    );
    process::run(Command::new("apt-get").args(["update", "-qq"]))?;
    process::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn dpkg_installed(package: &str) -> bool {
    process::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|status| status.trim() == "install ok installed")
        .unwrap_or(false)
}

fn ensure_rust_src() -> Result<()> {
    let has_nightly =
        process::output(Command::new("rustup").args(["run", "nightly", "rustc", "-V"])).is_ok();
    if !has_nightly {
        eprintln!("xtask: no nightly toolchain: installing one (the eBPF crate needs it)");
        return process::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let installed = process::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "the eBPF build needs rustup with a nightly toolchain (`rustup toolchain install nightly`)",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    process::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// Returns the directory holding a bpf-linker of the pinned version, installing it if needed.
fn ensure_bpf_linker() -> Result<PathBuf> {
    if let Some(found) = process::find_on_path("bpf-linker") {
        if linker_version_matches(&found) {
            return Ok(found.parent().map(Path::to_path_buf).unwrap_or_default());
        }
    }
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
    };
    let installed = cargo_home.join("bin").join("bpf-linker");
    if installed.is_file() && linker_version_matches(&installed) {
        return Ok(cargo_home.join("bin"));
    }
    let mut cmd = Command::new("cargo");
    for var in ["RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    // llvm-sys reads LLVM_SYS_221_PREFIX; bpf-linker's own build script reads LLVM_PREFIX
    // and otherwise trusts the first llvm-config on PATH (Debian's default one is LLVM 14).
    cmd.env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
    process::run(&mut cmd)?;
    Ok(cargo_home.join("bin"))
}

fn linker_version_matches(binary: &Path) -> bool {
    process::output(Command::new(binary).arg("--version"))
        .map(|out| out.contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}
