//! The node agent (`portcullis node run|uninstall`): loads the eBPF programs that send selected
//! pods' connections to protected API endpoints through the gateway, and drop every other way
//! to those endpoints; plus the lookup the gateway uses to learn where a redirected connection
//! was going.
//!
//! Owns: the eBPF object embedded at build time (see `proxy/build.rs`), everything pinned under
//! the configured bpffs directory (`maps/<NAME>`, `cgroups/<cgroup id>/<program>`,
//! `gateway/<cgroup id>/<program>`), the contents of the `PROTECTED` and `GATEWAY` maps, the
//! pod selection (pods file) and hostname re-resolution.
//!
//! Must never: detach or unpin anything on exit or on error (enforcement has to outlive the
//! agent: a selected pod fails closed while the agent or the gateway restarts); remove a
//! protected address because a DNS lookup failed; touch a cgroup that was not selected; write
//! the maps from the gateway side (`lookup` only reads).
//!
//! Pure cores: `entries` (address ↔ map key, the `PROTECTED` update plan) and `cgroup` (the
//! kubelet's cgroup paths), unit-tested without a kernel. `tests/tests/node` exercises the
//! whole agent against the real kernel.

mod agent;
pub mod cgroup;
pub mod config;
pub mod entries;
pub mod events;
pub mod gateway;
pub mod kube_pods;
mod lookup;

use std::path::PathBuf;

pub use agent::{read_counters, run, uninstall, Counters};
pub use config::NodeConfig;
pub use gateway::{RedirectConfig, Redirects, Routing};
pub use lookup::{original_destination, MatchedBy, OriginalDestination, OriginalDestinations};

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "this portcullis binary was built without the eBPF object; run `cargo xtask build-ebpf`, \
         then rebuild portcullis"
    )]
    NotBuilt,
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{what}: {}", chain(error.as_ref()))]
    Ebpf {
        what: String,
        error: Box<aya::EbpfError>,
    },
    #[error("{what}: {}", chain(error.as_ref()))]
    Program {
        what: String,
        error: Box<aya::programs::ProgramError>,
    },
    #[error("{what}: {}", chain(error.as_ref()))]
    Map {
        what: String,
        error: Box<aya::maps::MapError>,
    },
    #[error("{what}: {}", chain(error.as_ref()))]
    Pin {
        what: String,
        error: Box<aya::pin::PinError>,
    },
    #[error("{what}: {}", chain(error.as_ref()))]
    Link {
        what: String,
        error: Box<aya::programs::links::LinkError>,
    },
    #[error("{what}: {}", chain(error.as_ref()))]
    Kube {
        what: String,
        error: Box<kube::Error>,
    },
    #[error("pods.kubernetes: the environment variable {var} (this node's name) is not set")]
    NodeName { var: String },
    #[error("{path} is not on a bpffs mount (mount -t bpf bpf <dir>)")]
    NotBpffs { path: PathBuf },
}

/// Logs for `portcullis node`: human-readable lines, `RUST_LOG` to filter (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// An error with its sources, `a: b: c`: aya's errors keep the errno in their source.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
