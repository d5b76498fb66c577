//! Runtime policy: who may do what, where. A pure function from (identity, `RequestInfo`, time)
//! to a `Decision` plus obligations.
//!
//! Owns: the rule language, presets, compilation with line-numbered errors, the decision and its
//! explanation. Must never: do I/O in the decision, or allow anything on an error (fail closed).

use serde::Deserialize;

/// The `policy:` section of the config. Filled in by the policy work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {}
