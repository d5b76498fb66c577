//! Embeds the kernel-side eBPF object into the gateway binary when `cargo xtask build-ebpf` has
//! built it, so a plain stable `cargo build` never needs nightly or bpf-linker. Without the
//! object the binary still builds; `portcullis node run` then says how to get one.
//!
//! The object is `target/ebpf/bpfel-unknown-none/release/portcullis-ebpf` under the workspace
//! root, or the file named by `PORTCULLIS_EBPF_OBJECT`. `cargo xtask build-ebpf` refreshes this
//! script's mtime after building, which is how cargo learns that a new object appeared.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(portcullis_ebpf_object)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PORTCULLIS_EBPF_OBJECT");

    let object = match std::env::var_os("PORTCULLIS_EBPF_OBJECT") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            let manifest_dir =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest_dir
                .join("..")
                .join("target")
                .join("ebpf")
                .join("bpfel-unknown-none")
                .join("release")
                .join("portcullis-ebpf")
        }
    };
    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        println!(
            "cargo::rustc-env=PORTCULLIS_EBPF_OBJECT_PATH={}",
            object.display()
        );
        println!("cargo::rustc-cfg=portcullis_ebpf_object");
    }
}
