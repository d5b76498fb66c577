//! The policy's decision at the edge of the data path: either the obligations a forwarded request
//! carries, or the `Status` the caller gets instead.
//!
//! Owns: the mapping from [`Decision`] to an outcome and the wording of refusals. Must never:
//! forward on anything but an explicit allow (an approval is a refusal until approvals exist).

use crate::policy::{Decision, Obligations};
use crate::status::Status;

/// What the gateway does with a decided request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward {
        rule: Option<String>,
        obligations: Obligations,
    },
    Refuse {
        rule: Option<String>,
        status: Status,
        /// The request needs a human's approval (the caller may ask for one).
        held: bool,
    },
}

/// Turns a policy decision into a verdict. Refusals are 403 `Forbidden` Status objects whose
/// message is the policy's, prefixed so the caller knows the gateway (not RBAC) refused.
pub fn verdict(decision: Decision) -> Verdict {
    match decision {
        Decision::Allow { rule, obligations } => Verdict::Forward { rule, obligations },
        Decision::Deny { rule, message } => Verdict::Refuse {
            status: Status::forbidden(refusal_message(&message, rule.as_deref())),
            rule,
            held: false,
        },
        Decision::NeedsApproval { rule, message, .. } => Verdict::Refuse {
            status: Status::forbidden(refusal_message(&message, Some(&rule))),
            rule: Some(rule),
            held: true,
        },
    }
}

fn refusal_message(message: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) if !message.contains(rule) => {
            format!("forbidden by portcullis: {message} (rule {rule:?})")
        }
        _ => format!("forbidden by portcullis: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MaskChoice, RecordLevel};

    fn obligations() -> Obligations {
        Obligations {
            mask: MaskChoice::Profile("default".into()),
            record: RecordLevel::Metadata,
        }
    }

    #[test]
    fn only_an_allow_forwards() {
        let allow = verdict(Decision::Allow {
            rule: Some("r".into()),
            obligations: obligations(),
        });
        assert!(matches!(allow, Verdict::Forward { rule: Some(ref r), .. } if r == "r"));

        let deny = verdict(Decision::Deny {
            rule: Some("no-secrets".into()),
            message: "agents may not touch secrets".into(),
        });
        let Verdict::Refuse { status, held, rule } = deny else {
            panic!("deny forwarded")
        };
        assert_eq!(
            (status.code, status.reason, held),
            (403, "Forbidden", false)
        );
        assert_eq!(rule.as_deref(), Some("no-secrets"));
        assert_eq!(
            status.message,
            "forbidden by portcullis: agents may not touch secrets (rule \"no-secrets\")"
        );

        let held = verdict(Decision::NeedsApproval {
            rule: "exec-needs-approval".into(),
            approvers: vec!["sre".into()],
            message:
                "approval required: create pods/exec is held by policy rule \"exec-needs-approval\""
                    .into(),
            obligations: obligations(),
        });
        let Verdict::Refuse { status, held, .. } = held else {
            panic!("approval forwarded")
        };
        assert!(held);
        assert_eq!(status.code, 403);
        // The rule is named once, by the policy's own message.
        assert_eq!(status.message.matches("exec-needs-approval").count(), 1);
        assert!(status.message.contains("approval required"));
    }

    #[test]
    fn default_deny_has_no_rule_suffix() {
        let Verdict::Refuse { status, rule, .. } = verdict(Decision::Deny {
            rule: None,
            message: "no policy rule allows \"bob\" to list pods".into(),
        }) else {
            panic!("forwarded")
        };
        assert_eq!(rule, None);
        assert_eq!(
            status.message,
            "forbidden by portcullis: no policy rule allows \"bob\" to list pods"
        );
    }
}
