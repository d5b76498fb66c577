//! Rendering an [`Explanation`] as the text `portcullis policy explain` prints. Pure.

use std::fmt::Write;

use super::decide::{DecidingStep, Explanation, RuleOutcome};
use super::{Decision, MaskChoice, Obligations, RecordLevel};

fn step_text(step: &DecidingStep) -> String {
    match step {
        DecidingStep::DenyRule => "an explicit deny rule matched (deny beats everything)".into(),
        DecidingStep::BuiltIn(reason) => format!("built-in allowance: {reason}"),
        DecidingStep::Scope => "the request is outside the caller's namespace scope".into(),
        DecidingStep::ApproveRule => "an approve rule matched and no deny rule did".into(),
        DecidingStep::AllowRule => "an allow rule matched and no deny or approve rule did".into(),
        DecidingStep::DefaultDeny => "no rule matched: default deny".into(),
    }
}

fn obligations_text(o: &Obligations) -> String {
    let mask = match &o.mask {
        MaskChoice::Profile(p) => format!("mask profile {p:?}"),
        MaskChoice::None => "no masking".into(),
    };
    let record = match o.record {
        RecordLevel::Metadata => "record metadata",
        RecordLevel::Full => "record in full",
    };
    format!("{mask}, {record}")
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The explanation as text. With `show_unmatched` the rules that did not match are listed too,
/// each with the first field that failed.
pub fn render_explanation(e: &Explanation, show_unmatched: bool) -> String {
    let mut out = String::new();
    let r = &e.request;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "Request");
    if r.is_resource_request {
        let _ = writeln!(out, "  kind:        resource request");
        let _ = writeln!(out, "  verb:        {}", r.verb);
        let _ = writeln!(
            out,
            "  api group:   {}",
            if r.api_group.is_empty() {
                "\"\" (core)"
            } else {
                &r.api_group
            }
        );
        let _ = writeln!(out, "  api version: {}", or_dash(&r.api_version));
        let _ = writeln!(out, "  resource:    {}", r.resource);
        let _ = writeln!(out, "  subresource: {}", or_dash(&r.subresource));
        let _ = writeln!(
            out,
            "  namespace:   {}",
            if r.namespace.is_empty() {
                "- (cluster-scoped, or across all namespaces)"
            } else {
                &r.namespace
            }
        );
        let _ = writeln!(out, "  name:        {}", or_dash(&r.name));
    } else {
        let _ = writeln!(out, "  kind:        non-resource request");
        let _ = writeln!(out, "  verb:        {}", r.verb);
    }
    let _ = writeln!(out, "  path:        {}", r.path);

    let _ = writeln!(out, "Subject");
    let _ = writeln!(out, "  user:   {}", e.user);
    let _ = writeln!(
        out,
        "  groups: {}",
        if e.groups.is_empty() {
            "-".to_owned()
        } else {
            e.groups.join(", ")
        }
    );
    let _ = writeln!(out, "  issuer: {}", or_dash(&e.issuer));

    let _ = writeln!(out, "Decision");
    match &e.decision {
        Decision::Allow { rule, obligations } => {
            let by = match rule {
                Some(rule) => format!("rule {rule:?}"),
                None => "built-in".into(),
            };
            let _ = writeln!(out, "  ALLOW by {by}");
            let _ = writeln!(out, "  obligations: {}", obligations_text(obligations));
        }
        Decision::Deny { rule, message } => {
            let by = match rule {
                Some(rule) => format!("rule {rule:?}"),
                None => "default".into(),
            };
            let _ = writeln!(out, "  DENY by {by}");
            let _ = writeln!(out, "  message: {message}");
        }
        Decision::NeedsApproval {
            rule,
            approvers,
            message,
            obligations,
        } => {
            let _ = writeln!(out, "  NEEDS APPROVAL by rule {rule:?}");
            let _ = writeln!(out, "  approvers: {}", approvers.join(", "));
            let _ = writeln!(out, "  message: {message}");
            let _ = writeln!(
                out,
                "  obligations once approved: {}",
                obligations_text(obligations)
            );
        }
    }
    let _ = writeln!(out, "  because: {}", step_text(&e.step));

    if let Some(scope) = &e.scope {
        let _ = writeln!(out, "Namespace scope");
        let _ = writeln!(out, "  scopes:     {}", scope.scopes.join(", "));
        let _ = writeln!(out, "  namespaces: {}", scope.namespaces.join(", "));
        let _ = writeln!(
            out,
            "  request:    {}",
            if scope.within {
                "inside the scope"
            } else {
                "OUTSIDE the scope"
            }
        );
    }

    let matched = e
        .rules
        .iter()
        .filter(|t| matches!(t.outcome, RuleOutcome::Matched(_)))
        .count();
    let _ = writeln!(
        out,
        "Rules ({} considered, {matched} matched)",
        e.rules.len()
    );
    for t in &e.rules {
        let preset = t
            .preset
            .map(|p| format!(", preset {}", p.as_str()))
            .unwrap_or_default();
        match &t.outcome {
            RuleOutcome::Matched(reasons) => {
                let _ = writeln!(
                    out,
                    "  MATCH     {} {:?} ({}, specificity {}{preset})",
                    t.action.as_str(),
                    t.name,
                    t.source,
                    t.specificity
                );
                for reason in reasons {
                    let _ = writeln!(out, "      {reason}");
                }
            }
            RuleOutcome::NotMatched(why) if show_unmatched => {
                let _ = writeln!(
                    out,
                    "  no match  {} {:?} ({}{preset}): {why}",
                    t.action.as_str(),
                    t.name,
                    t.source
                );
            }
            RuleOutcome::NotMatched(_) => {}
        }
    }
    if !show_unmatched && matched < e.rules.len() {
        let _ = writeln!(
            out,
            "  ({} rules did not match; --show-unmatched lists them)",
            e.rules.len() - matched
        );
    }
    out
}
