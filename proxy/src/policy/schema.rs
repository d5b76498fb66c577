//! The policy language as written: the `policy:` section of the gateway config and the policy
//! files it names. Plain serde structs; every check beyond the YAML shape happens in `compile`.
//!
//! Rules and scopes are wrapped in [`Spanned`] so that compile errors can name the line of the
//! rule they are about, in the file it came from.

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The `policy:` section of the gateway config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Rules written inline in the gateway config.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleConfig>>,
    /// Namespace scopes written inline in the gateway config.
    #[serde(default)]
    pub scopes: Vec<Spanned<ScopeConfig>>,
    /// Policy files, or directories whose `*.yaml`/`*.yml` files are loaded in name order.
    /// Relative paths are resolved against the gateway config's directory. Watched for changes.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// One policy file: the same `rules:` and `scopes:` as the config's `policy:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rules: Vec<Spanned<RuleConfig>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<ScopeConfig>>,
}

/// Who a rule or scope applies to. `users` and `groups` are alternatives (either matches);
/// `issuers`, when given, must match as well. Globs throughout.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectsConfig {
    pub users: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub issuers: Option<Vec<String>>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    /// Hold the request for a human in one of `approvers`.
    Approve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }
}

/// Built-in rule bodies a rule can name instead of writing verbs and resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// allow get/list/watch on every resource and its `log`, `status` and `scale` subresources.
    ReadOnly,
    /// deny every verb on core `secrets`.
    NoSecrets,
    /// deny every verb on `pods/exec` and `pods/attach`.
    NoExec,
    /// deny delete and deletecollection on namespaces, CRDs, persistent volumes and nodes.
    NoDestructive,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::ReadOnly => "read-only",
            Preset::NoSecrets => "no-secrets",
            Preset::NoExec => "no-exec",
            Preset::NoDestructive => "no-destructive",
        }
    }
}

/// How much of an allowed request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordLevel {
    /// Who, what, when and the outcome; no bodies or stream contents.
    Metadata,
    /// Metadata plus request bodies and, for exec/attach, the session's streams.
    Full,
}

/// One rule as written. A rule is either a resource rule (`resources`) or a non-resource rule
/// (`non_resource_urls`), or names a `preset` that supplies verbs, resources and action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub subjects: SubjectsConfig,
    pub preset: Option<Preset>,
    pub action: Option<Action>,
    pub verbs: Option<Vec<String>>,
    pub api_groups: Option<Vec<String>>,
    pub resources: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub resource_names: Option<Vec<String>>,
    pub non_resource_urls: Option<Vec<String>>,
    /// What the caller sees when this rule denies or holds the request.
    pub message: Option<String>,
    /// Groups whose members may approve (action `approve` only).
    pub approvers: Option<Vec<String>>,
    /// Mask profile for responses this rule allows, or `none`.
    pub mask: Option<String>,
    pub record: Option<RecordLevel>,
}

/// A namespace scope: the subjects it names may act only inside `namespaces`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    pub name: Option<String>,
    #[serde(default)]
    pub subjects: SubjectsConfig,
    pub namespaces: Vec<String>,
}
