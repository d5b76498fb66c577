//! Test support for Portcullis: the Kubernetes API test double (`double`) that end-to-end tests and the demo run
//! the gateway against. Nothing here is part of the gateway itself.

pub mod double;
pub mod harness;
pub mod issuer;
pub mod pki;
