//! The `mask:` section of the config file, as written. Deserializing it also compiles every
//! profile once, so a bad glob, regex or field path is reported by `check-config` with the key
//! path, not at the first request.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::profile::MaskProfile;
use super::MaskError;

pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_LOG_LINE_BYTES: usize = 1024 * 1024;

/// The `mask:` section. Every profile masks Secrets; the `default` profile exists even when not
/// configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawMaskConfig")]
pub struct MaskConfig {
    /// Largest non-streaming response body (object, list, Table) the masker buffers; a larger
    /// one is answered 502, never passed unmasked.
    pub max_body_bytes: usize,
    /// Largest single watch event.
    pub max_event_bytes: usize,
    /// Longest `pods/log` line (only when a profile masks logs).
    pub max_log_line_bytes: usize,
    pub profiles: BTreeMap<String, ProfileConfig>,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_log_line_bytes: DEFAULT_MAX_LOG_LINE_BYTES,
            profiles: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaskConfig {
    #[serde(default = "default_body")]
    max_body_bytes: usize,
    #[serde(default = "default_event")]
    max_event_bytes: usize,
    #[serde(default = "default_line")]
    max_log_line_bytes: usize,
    #[serde(default)]
    profiles: BTreeMap<String, ProfileConfig>,
}

fn default_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_event() -> usize {
    DEFAULT_MAX_EVENT_BYTES
}
fn default_line() -> usize {
    DEFAULT_MAX_LOG_LINE_BYTES
}

impl TryFrom<RawMaskConfig> for MaskConfig {
    type Error = MaskError;

    fn try_from(raw: RawMaskConfig) -> Result<Self, MaskError> {
        let config = MaskConfig {
            max_body_bytes: raw.max_body_bytes,
            max_event_bytes: raw.max_event_bytes,
            max_log_line_bytes: raw.max_log_line_bytes,
            profiles: raw.profiles,
        };
        config.validate()?;
        Ok(config)
    }
}

impl MaskConfig {
    /// Checks the limits and compiles every profile (the compiled forms are dropped).
    pub fn validate(&self) -> Result<(), MaskError> {
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_event_bytes", self.max_event_bytes),
            ("max_log_line_bytes", self.max_log_line_bytes),
        ] {
            if value == 0 {
                return Err(MaskError::Limits(format!("{key} must be at least 1")));
            }
        }
        for (name, profile) in &self.profiles {
            MaskProfile::compile(name, profile)?;
        }
        Ok(())
    }
}

/// One named profile: what it masks beyond Secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// ConfigMap `data`/`binaryData` keys whose values are masked.
    pub configmaps: Option<ConfigMapKeysConfig>,
    /// Field paths per resource.
    #[serde(default)]
    pub fields: Vec<FieldRuleConfig>,
    /// Opt-in masking of `pods/log` lines.
    pub logs: Option<LogMaskConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapKeysConfig {
    /// Globs, matched case-insensitively against the whole key (`*password*`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Regexes (Rust `regex` syntax), matched anywhere in the key unless anchored.
    #[serde(default)]
    pub key_regexes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRuleConfig {
    /// The resource's plural name (`pods`, `deployments`).
    pub resource: String,
    /// Its API group; "" (the default) for the core group.
    #[serde(default)]
    pub group: String,
    /// Its kind; needed only for resources the gateway does not know (custom resources).
    pub kind: Option<String>,
    /// Dotted field paths from the object's root: `name`, `name[*]` (every element of a list),
    /// `*` (every value of a map), `["key.with.dots"]`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Mask only where a sibling field of the masked field matches.
    pub when: Option<WhenConfig>,
    /// Table columns (by name, case-insensitive) whose cells are masked in `as=Table` responses.
    #[serde(default)]
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenConfig {
    /// The sibling field to test (`name` for env vars).
    pub field: String,
    /// Globs, case-insensitive, against the whole value.
    #[serde(default)]
    pub matches: Vec<String>,
    /// Regexes against the value.
    #[serde(default)]
    pub regexes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMaskConfig {
    /// Regexes applied to every log line; a match is replaced by the marker, or only its
    /// `secret` named group if the pattern has one (`password=(?P<secret>\S+)`).
    pub patterns: Vec<String>,
}
