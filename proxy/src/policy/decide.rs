//! The decision: one pass over the compiled rules, the same for `decide` and `explain` (explain
//! only passes a trace to fill). Pure: no I/O, no logging, no allocation beyond the messages of
//! the answer unless tracing.
//!
//! Order, first that applies wins:
//! 1. an explicit `deny` rule matches: Deny (the most specific deny rule's message);
//! 2. a built-in allowance (discovery, `/version`, health, self reviews): Allow;
//! 3. the caller is under a namespace scope and the request is not inside it: Deny;
//! 4. an `approve` rule matches: NeedsApproval;
//! 5. an `allow` rule matches: Allow, with that rule's obligations;
//! 6. otherwise Deny (default deny).

use std::time::SystemTime;

use crate::classify::{RequestInfo, Verb};

use super::compile::{Compiled, Rule, Scope, SubjectMatcher, Target};
use super::schema::{Action, Preset};
use super::{Decision, Obligations, Subject};

/// Which step of the order above produced the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidingStep {
    DenyRule,
    BuiltIn(&'static str),
    Scope,
    ApproveRule,
    AllowRule,
    DefaultDeny,
}

/// The caller's namespace scopes, when any apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeTrace {
    /// Names of the scopes whose subjects include the caller.
    pub scopes: Vec<String>,
    /// The namespaces they allow, as written.
    pub namespaces: Vec<String>,
    /// Whether the request is inside one of them.
    pub within: bool,
}

/// Whether a rule matched and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    /// One reason per field, e.g. `verb delete matches "delete"`.
    Matched(Vec<String>),
    /// The first field that did not match.
    NotMatched(String),
}

/// One rule as the decision saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    pub name: String,
    pub action: Action,
    pub preset: Option<Preset>,
    /// `file:line`.
    pub source: String,
    pub specificity: u32,
    pub outcome: RuleOutcome,
}

/// Everything `policy explain` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub request: RequestInfo,
    pub user: String,
    pub groups: Vec<String>,
    pub issuer: String,
    pub decision: Decision,
    pub step: DecidingStep,
    pub scope: Option<ScopeTrace>,
    pub rules: Vec<RuleTrace>,
}

#[derive(Debug, Default)]
pub(crate) struct Trace {
    rules: Vec<RuleTrace>,
    scope: Option<ScopeTrace>,
    step: Option<DecidingStep>,
}

impl Trace {
    pub(crate) fn into_explanation(
        self,
        subject: &Subject,
        info: &RequestInfo,
        decision: Decision,
    ) -> Explanation {
        Explanation {
            request: info.clone(),
            user: subject.user.to_owned(),
            groups: subject.groups.to_vec(),
            issuer: subject.issuer.to_owned(),
            decision,
            step: self.step.unwrap_or(DecidingStep::DefaultDeny),
            scope: self.scope,
            rules: self.rules,
        }
    }
}

/// The field of a rule that did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Subject,
    Verb,
    NotResource,
    NotNonResource,
    Resource,
    Namespace,
    ResourceName,
    Url,
}

fn subject_matches(m: &SubjectMatcher, s: &Subject) -> bool {
    let who = match (&m.users.0, &m.groups.0) {
        (None, None) => true,
        (users, groups) => {
            (users.is_some() && m.users.is_match(s.user))
                || (groups.is_some() && s.groups.iter().any(|g| m.groups.is_match(g)))
        }
    };
    who && m.issuers.is_match(s.issuer)
}

fn match_rule(rule: &Rule, s: &Subject, info: &RequestInfo) -> Result<(), Miss> {
    if !subject_matches(&rule.subjects, s) {
        return Err(Miss::Subject);
    }
    if !rule.verbs.is_match(info.verb.as_str()) {
        return Err(Miss::Verb);
    }
    match &rule.target {
        Target::NonResource { urls } => {
            if info.is_resource_request {
                return Err(Miss::NotNonResource);
            }
            if !urls.is_match(&info.path) {
                return Err(Miss::Url);
            }
        }
        Target::Resources {
            sets,
            namespaces,
            resource_names,
        } => {
            if !info.is_resource_request {
                return Err(Miss::NotResource);
            }
            if !sets.iter().any(|set| {
                set.find(&info.api_group, &info.resource, &info.subresource)
                    .is_some()
            }) {
                return Err(Miss::Resource);
            }
            if let Some(ns) = namespaces {
                if ns.find(&info.namespace).is_none() {
                    return Err(Miss::Namespace);
                }
            }
            if !resource_names.is_match(&info.name) {
                return Err(Miss::ResourceName);
            }
        }
    }
    Ok(())
}

fn quote_list(list: &[String]) -> String {
    list.iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn explain_miss(rule: &Rule, miss: Miss, s: &Subject, info: &RequestInfo) -> String {
    let m = &rule.subjects;
    match miss {
        Miss::Subject => {
            let mut parts = Vec::new();
            if m.users.0.is_some() || m.groups.0.is_some() {
                let mut who = Vec::new();
                if m.users.0.is_some() {
                    who.push(format!("users [{}]", m.users.describe()));
                }
                if m.groups.0.is_some() {
                    who.push(format!("groups [{}]", m.groups.describe()));
                }
                if !subject_matches(
                    &SubjectMatcher {
                        issuers: super::compile::Patterns(None),
                        ..m.clone()
                    },
                    s,
                ) {
                    parts.push(format!(
                        "user {:?} with groups [{}] is not in {}",
                        s.user,
                        quote_list(s.groups),
                        who.join(" or ")
                    ));
                }
            }
            if !m.issuers.is_match(s.issuer) {
                parts.push(format!(
                    "issuer {:?} is not in [{}]",
                    s.issuer,
                    m.issuers.describe()
                ));
            }
            format!("subjects: {}", parts.join("; "))
        }
        Miss::Verb => format!(
            "verb {} is not in [{}]",
            info.verb.as_str(),
            rule.verbs.describe()
        ),
        Miss::NotResource => "a resource rule; this is a non-resource request".into(),
        Miss::NotNonResource => "a non-resource rule; this is a resource request".into(),
        Miss::Resource => {
            let sets = match &rule.target {
                Target::Resources { sets, .. } => sets
                    .iter()
                    .map(|s| s.describe())
                    .collect::<Vec<_>>()
                    .join(" or "),
                Target::NonResource { .. } => String::new(),
            };
            format!(
                "resource {} in group {:?} is not in {sets}",
                resource_text(info),
                info.api_group
            )
        }
        Miss::Namespace => {
            let allowed = match &rule.target {
                Target::Resources {
                    namespaces: Some(ns),
                    ..
                } => ns.describe(),
                _ => String::new(),
            };
            format!("namespace {} is not in [{allowed}]", namespace_text(info))
        }
        Miss::ResourceName => {
            let names = match &rule.target {
                Target::Resources { resource_names, .. } => resource_names.describe(),
                Target::NonResource { .. } => String::new(),
            };
            if info.name.is_empty() {
                format!("the request names no object; resource_names is [{names}]")
            } else {
                format!("name {:?} is not in [{names}]", info.name)
            }
        }
        Miss::Url => match &rule.target {
            Target::NonResource { urls } => {
                format!("path {:?} is not in [{}]", info.path, urls.describe())
            }
            Target::Resources { .. } => String::new(),
        },
    }
}

fn explain_match(rule: &Rule, s: &Subject, info: &RequestInfo) -> Vec<String> {
    let m = &rule.subjects;
    let mut reasons = Vec::new();
    if let Some(p) = m.users.0.as_ref().and(m.users.find(s.user)) {
        reasons.push(format!("user {:?} matches {p:?}", s.user));
    } else if m.groups.0.is_some() {
        if let Some((g, p)) = s
            .groups
            .iter()
            .find_map(|g| m.groups.find(g).map(|p| (g, p)))
        {
            reasons.push(format!("group {g:?} matches {p:?}"));
        }
    }
    if m.issuers.0.is_some() {
        if let Some(p) = m.issuers.find(s.issuer) {
            reasons.push(format!("issuer {:?} matches {p:?}", s.issuer));
        }
    }
    if let Some(p) = rule.verbs.find(info.verb.as_str()) {
        reasons.push(format!("verb {} matches {p:?}", info.verb.as_str()));
    }
    match &rule.target {
        Target::NonResource { urls } => {
            if let Some(p) = urls.find(&info.path) {
                reasons.push(format!("path {:?} matches {p:?}", info.path));
            }
        }
        Target::Resources {
            sets,
            namespaces,
            resource_names,
        } => {
            if let Some((g, r)) = sets
                .iter()
                .find_map(|set| set.find(&info.api_group, &info.resource, &info.subresource))
            {
                let group = if g == "(any)" {
                    "any group".to_owned()
                } else {
                    format!("group {:?} matches {g:?}", info.api_group)
                };
                reasons.push(format!(
                    "resource {} matches {r:?} ({group})",
                    resource_text(info)
                ));
            }
            match namespaces {
                Some(ns) => {
                    if let Some(p) = ns.find(&info.namespace) {
                        reasons.push(format!("namespace {} matches {p:?}", namespace_text(info)));
                    }
                }
                None => reasons.push("any namespace (no `namespaces`)".into()),
            }
            if resource_names.0.is_some() {
                if let Some(p) = resource_names.find(&info.name) {
                    reasons.push(format!("name {:?} matches {p:?}", info.name));
                }
            }
        }
    }
    reasons
}

fn resource_text(info: &RequestInfo) -> String {
    if info.subresource.is_empty() {
        info.resource.clone()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    }
}

fn namespace_text(info: &RequestInfo) -> String {
    if info.namespace.is_empty() {
        "(none: cluster-scoped or across all namespaces)".into()
    } else {
        format!("{:?}", info.namespace)
    }
}

/// The request in words, for messages: `delete namespaces "prod"`, `get pods "p" in namespace
/// "dev"`, `list pods cluster-wide` (cluster-scoped, or across all namespaces), `GET /metrics`.
pub(crate) fn describe_request(info: &RequestInfo) -> String {
    if !info.is_resource_request {
        return format!("{} {}", info.verb.as_str().to_ascii_uppercase(), info.path);
    }
    let mut out = format!("{} {}", info.verb.as_str(), resource_text(info));
    if !info.api_group.is_empty() {
        out.push('.');
        out.push_str(&info.api_group);
    }
    if !info.name.is_empty() {
        out.push_str(&format!(" {:?}", info.name));
    }
    let namespace_itself = info.resource == "namespaces" && info.name == info.namespace;
    if info.namespace.is_empty() {
        out.push_str(" cluster-wide");
    } else if !namespace_itself {
        out.push_str(&format!(" in namespace {:?}", info.namespace));
    }
    out
}

/// What every authenticated caller may do, so that clients can start and introspect
/// (`kubectl version`, API discovery, `kubectl auth whoami`, `kubectl auth can-i`). These are
/// the API server's own `system:discovery`, `system:public-info-viewer` and
/// `system:basic-user` grants.
pub(crate) fn built_in_allowance(info: &RequestInfo) -> Option<&'static str> {
    if info.is_resource_request {
        let self_review = matches!(
            (info.api_group.as_str(), info.resource.as_str()),
            ("authentication.k8s.io", "selfsubjectreviews")
                | ("authorization.k8s.io", "selfsubjectaccessreviews")
                | ("authorization.k8s.io", "selfsubjectrulesreviews")
        );
        let plain_create = info.verb == Verb::Create
            && info.namespace.is_empty()
            && info.subresource.is_empty()
            && info.name.is_empty();
        return (self_review && plain_create)
            .then_some("self review: any caller may ask who it is and what it may do");
    }
    if !matches!(info.verb.as_str(), "get" | "head") {
        return None;
    }
    let path = info.path.strip_suffix('/').unwrap_or(&info.path);
    let discovery = matches!(path, "/api" | "/apis" | "/openapi")
        || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi/");
    if discovery {
        return Some("API discovery: any caller may read it");
    }
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        .then_some("version and health: any caller may read them")
}

fn scope_decision(
    scopes: &[Scope],
    s: &Subject,
    info: &RequestInfo,
    trace: Option<&mut Trace>,
) -> Option<Decision> {
    let mut applying = scopes
        .iter()
        .filter(|sc| subject_matches(&sc.subjects, s))
        .peekable();
    let first = applying.peek().copied()?;
    let applying: Vec<&Scope> = applying.collect();
    let within = info.is_resource_request
        && applying
            .iter()
            .any(|sc| sc.namespaces.find(&info.namespace).is_some());
    let allowed = || {
        applying
            .iter()
            .map(|sc| sc.namespaces.describe())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(t) = trace {
        t.scope = Some(ScopeTrace {
            scopes: applying
                .iter()
                .map(|sc| format!("{:?} ({})", sc.name, sc.source))
                .collect(),
            namespaces: applying.iter().map(|sc| sc.namespaces.describe()).collect(),
            within,
        });
    }
    if within {
        return None;
    }
    Some(Decision::Deny {
        rule: Some(first.name.clone()),
        message: format!(
            "{:?} may act only in namespaces [{}] (scope {:?}); {} is outside them",
            s.user,
            allowed(),
            first.name,
            describe_request(info)
        ),
    })
}

fn obligations(rule: &Rule, info: &RequestInfo) -> Obligations {
    let mut o = Obligations::defaults_for(info);
    if let Some(mask) = &rule.mask {
        o.mask = mask.clone();
    }
    if let Some(record) = rule.record {
        o.record = record;
    }
    o
}

fn set_step(trace: &mut Option<&mut Trace>, step: DecidingStep) {
    if let Some(t) = trace {
        t.step = Some(step);
    }
}

pub(crate) fn evaluate(
    c: &Compiled,
    s: &Subject,
    info: &RequestInfo,
    _now: SystemTime,
    mut trace: Option<&mut Trace>,
) -> Decision {
    // The most specific matching rule per action; on a tie the one written first.
    let mut best: [Option<&Rule>; 3] = [None, None, None];
    for rule in &c.rules {
        let outcome = match_rule(rule, s, info);
        if let Some(t) = trace.as_deref_mut() {
            t.rules.push(RuleTrace {
                name: rule.name.clone(),
                action: rule.action,
                preset: rule.preset,
                source: rule.source.to_string(),
                specificity: rule.specificity,
                outcome: match outcome {
                    Ok(()) => RuleOutcome::Matched(explain_match(rule, s, info)),
                    Err(miss) => RuleOutcome::NotMatched(explain_miss(rule, miss, s, info)),
                },
            });
        }
        if outcome.is_ok() {
            let slot = &mut best[match rule.action {
                Action::Deny => 0,
                Action::Approve => 1,
                Action::Allow => 2,
            }];
            if slot.is_none_or(|b| rule.specificity > b.specificity) {
                *slot = Some(rule);
            }
        }
    }
    let [deny, approve, allow] = best;

    if let Some(rule) = deny {
        set_step(&mut trace, DecidingStep::DenyRule);
        let message = match &rule.message {
            Some(m) => m.clone(),
            None => format!(
                "{} is denied by policy rule {:?}",
                describe_request(info),
                rule.name
            ),
        };
        return Decision::Deny {
            rule: Some(rule.name.clone()),
            message,
        };
    }
    if let Some(reason) = built_in_allowance(info) {
        set_step(&mut trace, DecidingStep::BuiltIn(reason));
        return Decision::Allow {
            rule: None,
            obligations: Obligations::defaults_for(info),
        };
    }
    if let Some(denied) = scope_decision(&c.scopes, s, info, trace.as_deref_mut()) {
        set_step(&mut trace, DecidingStep::Scope);
        return denied;
    }
    if let Some(rule) = approve {
        set_step(&mut trace, DecidingStep::ApproveRule);
        let mut message = format!(
            "approval required: {} is held by policy rule {:?} (approvers: {})",
            describe_request(info),
            rule.name,
            rule.approvers.join(", ")
        );
        if let Some(m) = &rule.message {
            message.push_str(": ");
            message.push_str(m);
        }
        return Decision::NeedsApproval {
            rule: rule.name.clone(),
            approvers: rule.approvers.clone(),
            message,
            obligations: obligations(rule, info),
        };
    }
    if let Some(rule) = allow {
        set_step(&mut trace, DecidingStep::AllowRule);
        return Decision::Allow {
            rule: Some(rule.name.clone()),
            obligations: obligations(rule, info),
        };
    }
    set_step(&mut trace, DecidingStep::DefaultDeny);
    Decision::Deny {
        rule: None,
        message: format!(
            "no policy rule allows {:?} to {}",
            s.user,
            describe_request(info)
        ),
    }
}
