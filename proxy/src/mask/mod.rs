//! Structural masking of sensitive values in API responses (Secrets, configured ConfigMap keys,
//! field paths, log lines), in every response shape.
//!
//! Owns: mask profiles, JSON rewriting of objects, lists, tables and watch events. Must never:
//! pass through a body it could not parse where a profile applies.

use serde::Deserialize;

/// The `mask:` section of the config. Filled in by the masking work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {}
