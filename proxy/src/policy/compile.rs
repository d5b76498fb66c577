//! Compilation: from the rules as written (`schema`) to immutable matchers, with every mistake
//! reported as `file:line: rule "name": what is wrong`. Also reads the policy files a config
//! names; that is the only I/O in the policy module besides the reloader's.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use serde_saphyr::Spanned;

use super::schema::{
    Action, PolicyConfig, PolicyFile, Preset, RecordLevel, RuleConfig, ScopeConfig, SubjectsConfig,
};
use super::{MaskChoice, PolicyError};

/// Where a rule or scope was written: a file (or the gateway config) and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: Arc<str>,
    /// 0 when the parser could not tell.
    pub line: u64,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// Resource verbs the classifier can produce, plus the HTTP methods of non-resource requests.
const RESOURCE_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
];
const NON_RESOURCE_VERBS: &[&str] = &["get", "head", "post", "put", "patch", "delete", "options"];

/// One string pattern: everything, a literal, or a glob (`*` also crosses `/`).
#[derive(Debug, Clone)]
pub(crate) enum StrPattern {
    Any,
    Exact(String),
    // Boxed: a matcher is large, and most patterns are literals.
    Glob(String, Box<GlobMatcher>),
}

impl StrPattern {
    fn compile(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(StrPattern::Any);
        }
        if !text.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return Ok(StrPattern::Exact(text.to_owned()));
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("bad glob {text:?}: {}", e.kind()))?;
        Ok(StrPattern::Glob(
            text.to_owned(),
            Box::new(glob.compile_matcher()),
        ))
    }

    pub(crate) fn is_match(&self, s: &str) -> bool {
        match self {
            StrPattern::Any => true,
            StrPattern::Exact(e) => e == s,
            StrPattern::Glob(_, g) => g.is_match(s),
        }
    }

    pub(crate) fn text(&self) -> &str {
        match self {
            StrPattern::Any => "*",
            StrPattern::Exact(e) => e,
            StrPattern::Glob(t, _) => t,
        }
    }

    /// 2 for a literal, 1 for a glob, 0 for `*`: how narrowly the pattern points.
    fn specificity(&self) -> u32 {
        match self {
            StrPattern::Any => 0,
            StrPattern::Glob(..) => 1,
            StrPattern::Exact(_) => 2,
        }
    }
}

/// A list of alternatives; `None` (key absent) matches anything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Patterns(pub(crate) Option<Vec<StrPattern>>);

impl Patterns {
    fn compile(field: &str, list: Option<&Vec<String>>) -> Result<Self, String> {
        let Some(list) = list else {
            return Ok(Patterns(None));
        };
        if list.is_empty() {
            return Err(format!(
                "`{field}` is an empty list, which matches nothing; omit the key to match anything"
            ));
        }
        list.iter()
            .map(|p| StrPattern::compile(p).map_err(|e| format!("`{field}`: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Patterns(Some(v)))
    }

    /// The pattern that matches `s`: `Some("*")`-like text for an absent key.
    pub(crate) fn find(&self, s: &str) -> Option<&str> {
        match &self.0 {
            None => Some("(any)"),
            Some(list) => list.iter().find(|p| p.is_match(s)).map(StrPattern::text),
        }
    }

    pub(crate) fn is_match(&self, s: &str) -> bool {
        match &self.0 {
            None => true,
            Some(list) => list.iter().any(|p| p.is_match(s)),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match &self.0 {
            None => "(any)".into(),
            Some(list) => list
                .iter()
                .map(StrPattern::text)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The least specific alternative decides: a list holding `*` is as broad as `*`.
    fn specificity(&self) -> u32 {
        match &self.0 {
            None => 0,
            Some(list) => list.iter().map(StrPattern::specificity).min().unwrap_or(0),
        }
    }
}

/// Who a rule or scope applies to.
#[derive(Debug, Clone)]
pub(crate) struct SubjectMatcher {
    pub(crate) users: Patterns,
    pub(crate) groups: Patterns,
    pub(crate) issuers: Patterns,
}

impl SubjectMatcher {
    fn compile(s: &SubjectsConfig) -> Result<Self, String> {
        if s.users.is_none() && s.groups.is_none() && s.issuers.is_none() {
            return Err("`subjects` names no users, groups or issuers (write `users: [\"*\"]` to mean every caller)".into());
        }
        Ok(Self {
            users: Patterns::compile("subjects.users", s.users.as_ref())?,
            groups: Patterns::compile("subjects.groups", s.groups.as_ref())?,
            issuers: Patterns::compile("subjects.issuers", s.issuers.as_ref())?,
        })
    }

    fn specificity(&self) -> u32 {
        // A user is narrower than a group; naming the issuer narrows further.
        let who = match (&self.users.0, &self.groups.0) {
            (Some(_), None) => 1 + self.users.specificity(),
            (None, Some(_)) => self.groups.specificity(),
            (Some(_), Some(_)) => self.groups.specificity().min(1 + self.users.specificity()),
            (None, None) => 0,
        };
        who + self.issuers.specificity()
    }
}

/// A `resources` entry: `*` (everything, subresources included), `res` (the resource itself,
/// not its subresources, as in RBAC), `res/sub`, `res/*`, `*/sub`; each part may be a glob.
#[derive(Debug, Clone)]
pub(crate) enum ResourcePattern {
    Any,
    Resource {
        text: String,
        resource: StrPattern,
        /// `None`: only requests without a subresource.
        subresource: Option<StrPattern>,
    },
}

impl ResourcePattern {
    fn compile(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(ResourcePattern::Any);
        }
        if text.is_empty() {
            return Err("`resources` holds an empty name".into());
        }
        let (resource, subresource) = match text.split_once('/') {
            Some((r, s)) => {
                if r.is_empty() || s.is_empty() || s.contains('/') {
                    return Err(format!(
                        "`resources`: {text:?} is not `resource`, `resource/subresource` or `*`"
                    ));
                }
                (r, Some(StrPattern::compile(s)?))
            }
            None => (text, None),
        };
        Ok(ResourcePattern::Resource {
            text: text.to_owned(),
            resource: StrPattern::compile(resource)?,
            subresource,
        })
    }

    fn internal(resource: &str, subresource: Option<&str>) -> Self {
        let text = match subresource {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_owned(),
        };
        // Internal patterns are literals or `*`, which always compile.
        let part = |p: &str| {
            if p == "*" {
                StrPattern::Any
            } else {
                StrPattern::Exact(p.to_owned())
            }
        };
        ResourcePattern::Resource {
            text,
            resource: part(resource),
            subresource: subresource.map(part),
        }
    }

    pub(crate) fn is_match(&self, resource: &str, subresource: &str) -> bool {
        match self {
            ResourcePattern::Any => true,
            ResourcePattern::Resource {
                resource: r,
                subresource: s,
                ..
            } => {
                r.is_match(resource)
                    && match s {
                        None => subresource.is_empty(),
                        Some(s) => !subresource.is_empty() && s.is_match(subresource),
                    }
            }
        }
    }

    pub(crate) fn text(&self) -> &str {
        match self {
            ResourcePattern::Any => "*",
            ResourcePattern::Resource { text, .. } => text,
        }
    }

    fn specificity(&self) -> u32 {
        match self {
            ResourcePattern::Any => 0,
            ResourcePattern::Resource {
                resource,
                subresource,
                ..
            } => {
                let sub = subresource.as_ref().map_or(2, StrPattern::specificity);
                resource.specificity().min(sub)
            }
        }
    }
}

/// One (API groups x resources) product; a rule holds one or several (presets).
#[derive(Debug, Clone)]
pub(crate) struct ResourceSet {
    pub(crate) api_groups: Patterns,
    pub(crate) resources: Vec<ResourcePattern>,
}

impl ResourceSet {
    pub(crate) fn find(
        &self,
        group: &str,
        resource: &str,
        subresource: &str,
    ) -> Option<(&str, &str)> {
        let g = self.api_groups.find(group)?;
        let r = self
            .resources
            .iter()
            .find(|p| p.is_match(resource, subresource))?;
        Some((g, r.text()))
    }

    pub(crate) fn describe(&self) -> String {
        let groups = match &self.api_groups.0 {
            None => "(any)".to_owned(),
            Some(list) => list
                .iter()
                .map(|p| match p.text() {
                    "" => "\"\" (core)",
                    t => t,
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let resources = self
            .resources
            .iter()
            .map(ResourcePattern::text)
            .collect::<Vec<_>>()
            .join(", ");
        format!("groups [{groups}] resources [{resources}]")
    }

    fn specificity(&self) -> u32 {
        let resources = self
            .resources
            .iter()
            .map(ResourcePattern::specificity)
            .min()
            .unwrap_or(0);
        self.api_groups.specificity() + resources
    }
}

/// The `namespaces` of a rule or scope: globs over namespace names, and `cluster` for requests
/// that carry no namespace (cluster-scoped resources, lists and watches across all namespaces).
#[derive(Debug, Clone)]
pub(crate) struct NamespaceMatcher {
    pub(crate) cluster: bool,
    pub(crate) names: Vec<StrPattern>,
}

impl NamespaceMatcher {
    fn compile(field: &str, list: &[String]) -> Result<Self, String> {
        if list.is_empty() {
            return Err(format!("`{field}` is an empty list, which matches nothing"));
        }
        let mut m = NamespaceMatcher {
            cluster: false,
            names: Vec::new(),
        };
        for text in list {
            match text.as_str() {
                "cluster" => m.cluster = true,
                "" => return Err(format!("`{field}` holds an empty name")),
                t => m
                    .names
                    .push(StrPattern::compile(t).map_err(|e| format!("`{field}`: {e}"))?),
            }
        }
        Ok(m)
    }

    pub(crate) fn find(&self, namespace: &str) -> Option<&str> {
        if namespace.is_empty() {
            return self.cluster.then_some("cluster");
        }
        self.names
            .iter()
            .find(|p| p.is_match(namespace))
            .map(StrPattern::text)
    }

    pub(crate) fn describe(&self) -> String {
        let mut parts: Vec<&str> = self.names.iter().map(StrPattern::text).collect();
        if self.cluster {
            parts.push("cluster");
        }
        parts.join(", ")
    }

    fn specificity(&self) -> u32 {
        // Only `cluster` is as narrow as a literal name.
        self.names
            .iter()
            .map(StrPattern::specificity)
            .min()
            .unwrap_or(2)
    }
}

/// What a rule applies to besides its subjects.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Resources {
        sets: Vec<ResourceSet>,
        namespaces: Option<NamespaceMatcher>,
        resource_names: Patterns,
    },
    NonResource {
        urls: Patterns,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) source: SourceLocation,
    pub(crate) preset: Option<Preset>,
    pub(crate) action: Action,
    pub(crate) subjects: SubjectMatcher,
    pub(crate) verbs: Patterns,
    pub(crate) target: Target,
    pub(crate) message: Option<String>,
    pub(crate) approvers: Vec<String>,
    pub(crate) mask: Option<MaskChoice>,
    pub(crate) record: Option<RecordLevel>,
    /// Higher is narrower; ties go to the rule written first.
    pub(crate) specificity: u32,
}

/// A compiled namespace scope.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) name: String,
    pub(crate) source: SourceLocation,
    pub(crate) subjects: SubjectMatcher,
    pub(crate) namespaces: NamespaceMatcher,
}

/// Everything compiled, in the order written: inline first, then files in the order listed
/// (a directory's files by name).
#[derive(Debug, Clone, Default)]
pub(crate) struct Compiled {
    pub(crate) rules: Vec<Rule>,
    pub(crate) scopes: Vec<Scope>,
    pub(crate) sources: Vec<String>,
}

fn location<T>(file: &Arc<str>, spanned: &Spanned<T>) -> SourceLocation {
    SourceLocation {
        file: Arc::clone(file),
        line: spanned.referenced.line(),
    }
}

fn invalid(at: &SourceLocation, what: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        at: at.to_string(),
        what: what.to_owned(),
        message: message.into(),
    }
}

fn check_verbs(list: &[String], allowed: &[&str], kind: &str) -> Result<(), String> {
    for verb in list {
        if verb != "*" && !allowed.contains(&verb.as_str()) {
            return Err(format!(
                "`verbs`: {verb:?} is not a {kind} verb (one of {}, or \"*\")",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn preset_body(preset: Preset) -> (Action, Vec<&'static str>, Vec<ResourceSet>) {
    let core = || Patterns(Some(vec![StrPattern::Exact(String::new())]));
    match preset {
        Preset::ReadOnly => (
            Action::Allow,
            vec!["get", "list", "watch"],
            vec![ResourceSet {
                api_groups: Patterns(None),
                resources: vec![
                    ResourcePattern::internal("*", None),
                    ResourcePattern::internal("*", Some("log")),
                    ResourcePattern::internal("*", Some("status")),
                    ResourcePattern::internal("*", Some("scale")),
                ],
            }],
        ),
        Preset::NoSecrets => (
            Action::Deny,
            vec!["*"],
            vec![ResourceSet {
                api_groups: core(),
                resources: vec![ResourcePattern::internal("secrets", None)],
            }],
        ),
        Preset::NoExec => (
            Action::Deny,
            vec!["*"],
            vec![ResourceSet {
                api_groups: core(),
                resources: vec![
                    ResourcePattern::internal("pods", Some("exec")),
                    ResourcePattern::internal("pods", Some("attach")),
                ],
            }],
        ),
        Preset::NoDestructive => (
            Action::Deny,
            vec!["delete", "deletecollection"],
            vec![
                ResourceSet {
                    api_groups: core(),
                    resources: vec![
                        ResourcePattern::internal("namespaces", None),
                        ResourcePattern::internal("persistentvolumes", None),
                        ResourcePattern::internal("nodes", None),
                    ],
                },
                ResourceSet {
                    api_groups: Patterns(Some(vec![StrPattern::Exact(
                        "apiextensions.k8s.io".into(),
                    )])),
                    resources: vec![ResourcePattern::internal("customresourcedefinitions", None)],
                },
            ],
        ),
    }
}

fn compile_api_groups(list: Option<&Vec<String>>) -> Result<Patterns, String> {
    // `core` is accepted for the group whose name is "" (YAML makes `""` easy to get wrong).
    let normalized = list.map(|l| {
        l.iter()
            .map(|g| {
                if g == "core" {
                    String::new()
                } else {
                    g.clone()
                }
            })
            .collect::<Vec<_>>()
    });
    Patterns::compile("api_groups", normalized.as_ref())
}

fn compile_rule(r: &RuleConfig, at: &SourceLocation) -> Result<Rule, PolicyError> {
    let name = r.name.trim();
    if name.is_empty() {
        return Err(invalid(at, "rule", "`name` is empty"));
    }
    let what = format!("rule {name:?}");
    let err = |m: String| invalid(at, &what, m);
    let subjects = SubjectMatcher::compile(&r.subjects).map_err(err)?;

    let (action, verbs, target) = if let Some(preset) = r.preset {
        for (key, set) in [
            ("action", r.action.is_some()),
            ("verbs", r.verbs.is_some()),
            ("api_groups", r.api_groups.is_some()),
            ("resources", r.resources.is_some()),
            ("non_resource_urls", r.non_resource_urls.is_some()),
            ("approvers", r.approvers.is_some()),
        ] {
            if set {
                return Err(err(format!(
                    "`{key}` cannot be combined with `preset: {}`, which sets verbs, resources and action itself",
                    preset.as_str()
                )));
            }
        }
        let (action, verbs, sets) = preset_body(preset);
        let verbs = verbs.into_iter().map(String::from).collect::<Vec<_>>();
        let target = Target::Resources {
            sets,
            namespaces: r
                .namespaces
                .as_deref()
                .map(|n| NamespaceMatcher::compile("namespaces", n))
                .transpose()
                .map_err(err)?,
            resource_names: Patterns::compile("resource_names", r.resource_names.as_ref())
                .map_err(err)?,
        };
        (
            action,
            Patterns::compile("verbs", Some(&verbs)).map_err(err)?,
            target,
        )
    } else {
        let Some(action) = r.action else {
            return Err(err(
                "`action` is missing (allow, deny or approve), and no `preset` supplies it".into(),
            ));
        };
        let Some(verb_list) = r.verbs.as_ref() else {
            return Err(err(
                "`verbs` is missing (write [\"*\"] to mean every verb)".into()
            ));
        };
        let target = match (&r.resources, &r.non_resource_urls) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "a rule has either `resources` or `non_resource_urls`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "a rule needs `resources`, `non_resource_urls` or a `preset`".into(),
                ))
            }
            (Some(resources), None) => {
                check_verbs(verb_list, RESOURCE_VERBS, "resource").map_err(err)?;
                if resources.is_empty() {
                    return Err(err(
                        "`resources` is an empty list, which matches nothing".into()
                    ));
                }
                let resources = resources
                    .iter()
                    .map(|t| ResourcePattern::compile(t))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                Target::Resources {
                    sets: vec![ResourceSet {
                        api_groups: compile_api_groups(r.api_groups.as_ref()).map_err(err)?,
                        resources,
                    }],
                    namespaces: r
                        .namespaces
                        .as_deref()
                        .map(|n| NamespaceMatcher::compile("namespaces", n))
                        .transpose()
                        .map_err(err)?,
                    resource_names: Patterns::compile("resource_names", r.resource_names.as_ref())
                        .map_err(err)?,
                }
            }
            (None, Some(urls)) => {
                check_verbs(verb_list, NON_RESOURCE_VERBS, "non-resource").map_err(err)?;
                for (key, set) in [
                    ("api_groups", r.api_groups.is_some()),
                    ("namespaces", r.namespaces.is_some()),
                    ("resource_names", r.resource_names.is_some()),
                ] {
                    if set {
                        return Err(err(format!(
                            "`{key}` does not apply to a `non_resource_urls` rule"
                        )));
                    }
                }
                for url in urls {
                    if !url.starts_with('/') && url != "*" {
                        return Err(err(format!(
                            "`non_resource_urls`: {url:?} must start with '/'"
                        )));
                    }
                }
                Target::NonResource {
                    urls: Patterns::compile("non_resource_urls", Some(urls)).map_err(err)?,
                }
            }
        };
        (
            action,
            Patterns::compile("verbs", Some(verb_list)).map_err(err)?,
            target,
        )
    };

    let approvers = match (action, &r.approvers) {
        (Action::Approve, Some(list))
            if !list.is_empty() && list.iter().all(|g| !g.trim().is_empty()) =>
        {
            list.clone()
        }
        (Action::Approve, _) => {
            return Err(err(
                "`action: approve` needs `approvers`: the groups whose members may approve".into(),
            ))
        }
        (_, Some(_)) => {
            return Err(err("`approvers` only applies to `action: approve`".into()));
        }
        (_, None) => Vec::new(),
    };
    if action == Action::Allow && r.message.is_some() {
        return Err(err(
            "`message` is what a denied or held caller sees; an allow rule has none".into(),
        ));
    }
    if action == Action::Deny && (r.mask.is_some() || r.record.is_some()) {
        return Err(err(
            "`mask` and `record` are obligations of allowed requests; a deny rule has none".into(),
        ));
    }
    let mask = match r.mask.as_deref() {
        None => None,
        Some("none") => Some(MaskChoice::None),
        Some(p) if p.trim().is_empty() => {
            return Err(err("`mask` is empty (name a profile or `none`)".into()))
        }
        Some(p) => Some(MaskChoice::Profile(p.to_owned())),
    };

    let target_specificity = match &target {
        Target::Resources {
            sets,
            namespaces,
            resource_names,
        } => {
            sets.iter().map(ResourceSet::specificity).min().unwrap_or(0)
                + namespaces.as_ref().map_or(0, NamespaceMatcher::specificity)
                + resource_names.specificity()
        }
        Target::NonResource { urls } => urls.specificity() * 2,
    };
    let specificity = subjects.specificity() + verbs.specificity() + target_specificity;

    Ok(Rule {
        name: name.to_owned(),
        source: at.clone(),
        preset: r.preset,
        action,
        subjects,
        verbs,
        target,
        message: r.message.clone(),
        approvers,
        mask,
        record: r.record,
        specificity,
    })
}

fn compile_scope(s: &ScopeConfig, at: &SourceLocation, index: usize) -> Result<Scope, PolicyError> {
    let name = match s.name.as_deref().map(str::trim) {
        Some("") => return Err(invalid(at, "scope", "`name` is empty")),
        Some(n) => n.to_owned(),
        None => format!("scope #{index}"),
    };
    let what = format!("scope {name:?}");
    let err = |m: String| invalid(at, &what, m);
    Ok(Scope {
        subjects: SubjectMatcher::compile(&s.subjects).map_err(err)?,
        namespaces: NamespaceMatcher::compile("namespaces", &s.namespaces).map_err(err)?,
        name,
        source: at.clone(),
    })
}

impl Compiled {
    fn add(
        &mut self,
        file: &Arc<str>,
        rules: &[Spanned<RuleConfig>],
        scopes: &[Spanned<ScopeConfig>],
        names: &mut HashMap<String, SourceLocation>,
        is_inline: bool,
    ) -> Result<(), PolicyError> {
        for r in rules {
            let at = location(file, r);
            let rule = compile_rule(&r.value, &at)?;
            if let Some(first) = names.get(&rule.name) {
                return Err(invalid(
                    &at,
                    &format!("rule {:?}", rule.name),
                    format!("the name is already used by the rule at {first}"),
                ));
            }
            names.insert(rule.name.clone(), at);
            self.rules.push(rule);
        }
        for s in scopes {
            let at = location(file, s);
            let index = self.scopes.len() + 1;
            self.scopes.push(compile_scope(&s.value, &at, index)?);
        }
        if !(is_inline && rules.is_empty() && scopes.is_empty()) {
            self.sources.push(file.to_string());
        }
        Ok(())
    }
}

/// Parses YAML text with the key path of a bad key and the parser's line in the error.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, PolicyError> {
    let key = std::cell::RefCell::new(String::new());
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned` wrappers show up as a `.value` segment; the user never wrote it.
            *key.borrow_mut() = e.path().to_string().replace("].value", "]");
            e.into_inner()
        })
    });
    parsed.map_err(|e| PolicyError::Parse {
        file: file.to_path_buf(),
        key: key.into_inner(),
        message: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// The files a `files:` list stands for, in load order: each file as listed, each directory's
/// `*.yaml` and `*.yml` files by name. These are also what the reloader watches.
pub fn policy_files(cfg: &PolicyConfig, base_dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out = Vec::new();
    for entry in &cfg.files {
        let path = base_dir.join(entry);
        if path.is_dir() {
            let listing = std::fs::read_dir(&path).map_err(|error| PolicyError::Read {
                path: path.clone(),
                error,
            })?;
            let mut found = Vec::new();
            for item in listing {
                let item = item.map_err(|error| PolicyError::Read {
                    path: path.clone(),
                    error,
                })?;
                let p = item.path();
                let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
                if yaml && p.is_file() {
                    found.push(p);
                }
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Compiles inline rules (reported as coming from `inline_source`) and every policy file.
pub(crate) fn compile_config(
    cfg: &PolicyConfig,
    base_dir: &Path,
    inline_source: &str,
) -> Result<Compiled, PolicyError> {
    let mut compiled = Compiled::default();
    let mut names = HashMap::new();
    let inline: Arc<str> = Arc::from(inline_source);
    compiled.add(&inline, &cfg.rules, &cfg.scopes, &mut names, true)?;
    for path in policy_files(cfg, base_dir)? {
        let text = read(&path)?;
        let file: PolicyFile = parse_yaml(&text, &path)?;
        let label: Arc<str> = Arc::from(path.display().to_string());
        compiled.add(&label, &file.rules, &file.scopes, &mut names, false)?;
    }
    Ok(compiled)
}
