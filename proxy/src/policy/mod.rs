//! Runtime policy: who may do what, where. A pure function from (identity, `RequestInfo`, time)
//! to a `Decision` plus obligations (mask profile, record level).
//!
//! Owns: the rule language (`schema`), presets and compilation with line-numbered errors
//! (`compile`), the decision and its explanation (`decide`, `explain`), and the hot-reload
//! handle (`reload`). Must never: do I/O in the decision, or allow anything on an error (fail
//! closed: a policy that does not compile is never used, and an empty policy denies everything
//! but discovery).
//!
//! The semantics are documented in `docs/policy.md`; in short: default deny; an explicit deny
//! beats everything; built-in discovery beats scopes; a scope's deny beats approve, which beats
//! allow; the most specific matching rule of the winning action is reported.

mod compile;
mod decide;
mod explain;
mod reload;
mod schema;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use compile::{policy_files, SourceLocation};
pub use decide::{DecidingStep, Explanation, RuleOutcome, RuleTrace, ScopeTrace};
pub use explain::render_explanation;
pub use reload::{
    spawn_reloader, spawn_reloader_thread, PolicyHandle, PolicyReloader, ReloadOutcome,
    ReloaderThread, RELOAD_POLL_INTERVAL,
};
pub use schema::{
    Action, PolicyConfig, PolicyFile, Preset, RecordLevel, RuleConfig, ScopeConfig, SubjectsConfig,
};

use crate::classify::RequestInfo;

/// Why a policy could not be loaded. Every variant names the file; rule errors also the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: at `{key}`: {message}")]
    Parse {
        file: PathBuf,
        key: String,
        message: String,
    },
    /// `at` is `file:line`.
    #[error("{at}: {what}: {message}")]
    Invalid {
        at: String,
        what: String,
        message: String,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Who is asking: the verified identity, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    pub issuer: &'a str,
}

/// Which mask profile applies to the responses of an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskChoice {
    Profile(String),
    None,
}

/// What the gateway must do with an allowed (or approved) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligations {
    pub mask: MaskChoice,
    pub record: RecordLevel,
}

/// The mask profile every allowed request gets unless its rule names another or `none`.
pub const DEFAULT_MASK_PROFILE: &str = "default";

impl Obligations {
    /// The defaults: the `default` mask profile; full recording for exec/attach/port-forward
    /// sessions, metadata for everything else.
    pub fn defaults_for(info: &RequestInfo) -> Self {
        Obligations {
            mask: MaskChoice::Profile(DEFAULT_MASK_PROFILE.into()),
            record: if info.is_streaming_upgrade() {
                RecordLevel::Full
            } else {
                RecordLevel::Metadata
            },
        }
    }
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `rule` is `None` for the built-in allowances (discovery, self reviews).
    Allow {
        rule: Option<String>,
        obligations: Obligations,
    },
    /// `rule` is `None` when no rule allowed the request (default deny); a scope's name when the
    /// request left the caller's namespace scope. `message` is for the caller.
    Deny {
        rule: Option<String>,
        message: String,
    },
    /// Hold for a human in one of `approvers` (groups). Until approvals exist the gateway answers
    /// 403 with `message`, which says approval is required and names the rule.
    NeedsApproval {
        rule: String,
        approvers: Vec<String>,
        message: String,
        obligations: Obligations,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::Deny { .. })
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { rule, .. } | Decision::Deny { rule, .. } => rule.as_deref(),
            Decision::NeedsApproval { rule, .. } => Some(rule),
        }
    }
}

/// A compiled, immutable policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    compiled: compile::Compiled,
}

impl Policy {
    /// Compiles the `policy:` section and the files it names (relative to `base_dir`, the
    /// directory of the gateway config). Inline rules are reported as coming from `config`.
    pub fn from_config(cfg: &PolicyConfig, base_dir: &Path) -> Result<Policy, PolicyError> {
        Self::from_config_named(cfg, base_dir, "config")
    }

    /// As [`Policy::from_config`], naming inline rules' source `inline_source` in errors and
    /// explanations (the gateway config's path).
    pub fn from_config_named(
        cfg: &PolicyConfig,
        base_dir: &Path,
        inline_source: &str,
    ) -> Result<Policy, PolicyError> {
        Ok(Policy {
            compiled: compile::compile_config(cfg, base_dir, inline_source)?,
        })
    }

    /// Loads what `portcullis policy check|explain` is given: a whole gateway config (it has a
    /// top-level `upstream`, `identity` or `policy` key) or a policy file (`rules:`/`scopes:`).
    pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let keys: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            compile::parse_yaml(&text, path)?;
        let is_gateway_config = ["upstream", "identity", "policy", "listen"]
            .iter()
            .any(|k| keys.contains_key(*k));
        let label = path.display().to_string();
        if is_gateway_config {
            let config = crate::config::Config::parse(&text, path)?;
            Self::from_config_named(&config.policy, base_dir, &label)
        } else {
            let file: PolicyFile = compile::parse_yaml(&text, path)?;
            let cfg = PolicyConfig {
                rules: file.rules,
                scopes: file.scopes,
                files: Vec::new(),
            };
            Self::from_config_named(&cfg, base_dir, &label)
        }
    }

    /// The decision for one request. `now` is reserved for time-bound grants; no rule uses it yet.
    pub fn decide(&self, subject: &Subject, info: &RequestInfo, now: SystemTime) -> Decision {
        decide::evaluate(&self.compiled, subject, info, now, None)
    }

    /// The decision with every rule considered and why it did or did not match. Same code path
    /// as [`Policy::decide`].
    pub fn explain(&self, subject: &Subject, info: &RequestInfo, now: SystemTime) -> Explanation {
        let mut trace = decide::Trace::default();
        let decision = decide::evaluate(&self.compiled, subject, info, now, Some(&mut trace));
        trace.into_explanation(subject, info, decision)
    }

    /// One line for `policy check` and the reload log: counts of rules by action and scopes.
    pub fn summary(&self) -> String {
        let count = |a: Action| self.compiled.rules.iter().filter(|r| r.action == a).count();
        format!(
            "{} rules ({} allow, {} deny, {} approve), {} scopes, from {}",
            self.compiled.rules.len(),
            count(Action::Allow),
            count(Action::Deny),
            count(Action::Approve),
            self.compiled.scopes.len(),
            if self.compiled.sources.is_empty() {
                "nothing".to_owned()
            } else {
                self.compiled.sources.join(", ")
            }
        )
    }

    /// Rule names in the order written.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.rules.iter().map(|r| r.name.as_str())
    }

    /// Fails on the first rule whose `mask:` names a profile `exists` does not know, so a typo
    /// is caught when the policy loads rather than by a request (which would be refused).
    pub fn check_mask_profiles(&self, exists: impl Fn(&str) -> bool) -> Result<(), PolicyError> {
        for rule in &self.compiled.rules {
            if let Some(MaskChoice::Profile(name)) = &rule.mask {
                if !exists(name) {
                    return Err(PolicyError::Invalid {
                        at: rule.source.to_string(),
                        what: format!("rule {:?}", rule.name),
                        message: format!(
                            "`mask: {name}` names no mask profile (define it under `mask.profiles`)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
