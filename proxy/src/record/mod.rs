//! Recording: the hash-chained audit log of every API call and exec/attach/port-forward session
//! recordings, on a local store (sled) behind a trait.
//!
//! Owns: the store, record encoding, the chain and its checkpoints, sessions and frames. Must
//! never: forward a mutating request whose audit record is not durable, or store a secret value.

pub mod frames;

use serde::Deserialize;

/// The `record:` section of the config. Filled in by the recording work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {}
