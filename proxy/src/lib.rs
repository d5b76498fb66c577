//! Portcullis: an identity-aware gateway between AI agents and the Kubernetes API.
//!
//! One module per concept; `ARCHITECTURE.md` at the repository root maps them. The pure cores
//! (`classify`, `status`, `gateway::headers`, the claim mapping in `identity`) have no I/O and
//! are unit-tested without a network; `gateway` wires them into pingora's phases.

pub mod admin;
pub mod classify;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod redirect;
pub mod serve;
pub mod status;
pub mod upstream;
