//! Semantics tests of the policy: table-driven over real classified requests, compile errors
//! with their lines, the explanation text, hot reload, and property tests.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::Method;

use super::compile::parse_yaml;
use super::*;
use crate::classify::{classify, RequestInfo};

fn compile(yaml: &str) -> Result<Policy, PolicyError> {
    let file: PolicyFile = parse_yaml(yaml, Path::new("test.yaml"))?;
    let cfg = PolicyConfig {
        rules: file.rules,
        scopes: file.scopes,
        files: Vec::new(),
    };
    Policy::from_config_named(&cfg, Path::new("."), "test.yaml")
}

fn policy(yaml: &str) -> Policy {
    match compile(yaml) {
        Ok(p) => p,
        Err(e) => panic!("policy does not compile: {e}"),
    }
}

fn compile_error(yaml: &str) -> String {
    match compile(yaml) {
        Ok(_) => panic!("policy compiled but should not have:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn request(method: &str, target: &str) -> RequestInfo {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    classify(&method, path, query).expect("classifies")
}

fn decide_as(p: &Policy, user: &str, groups: &[&str], method: &str, target: &str) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let subject = Subject {
        user,
        groups: &groups,
        issuer: "https://idp.example",
    };
    p.decide(&subject, &request(method, target), SystemTime::now())
}

/// The short form of a decision the tables compare: `allow:RULE`, `allow:-` (built-in),
/// `deny:RULE`, `deny:-` (default), `approve:RULE`.
fn short(d: &Decision) -> String {
    match d {
        Decision::Allow { rule, .. } => format!("allow:{}", rule.as_deref().unwrap_or("-")),
        Decision::Deny { rule, .. } => format!("deny:{}", rule.as_deref().unwrap_or("-")),
        Decision::NeedsApproval { rule, .. } => format!("approve:{rule}"),
    }
}

type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, &'a str);

fn run_table(p: &Policy, cases: &[Case]) {
    for (user, groups, method, target, want) in cases {
        let got = short(&decide_as(p, user, groups, method, target));
        assert_eq!(&got, want, "{user} {groups:?} {method} {target}");
    }
}

#[test]
fn empty_policy_denies_all_but_discovery_and_self_reviews() {
    let p = Policy::default();
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("alice", &[], "GET", "/api", "allow:-"),
        ("alice", &[], "GET", "/api/v1", "allow:-"),
        ("alice", &[], "GET", "/api/v1/", "allow:-"),
        ("alice", &[], "GET", "/apis", "allow:-"),
        ("alice", &[], "GET", "/apis/apps", "allow:-"),
        ("alice", &[], "GET", "/apis/apps/v1", "allow:-"),
        ("alice", &[], "GET", "/version", "allow:-"),
        ("alice", &[], "GET", "/version/", "allow:-"),
        ("alice", &[], "GET", "/openapi/v2", "allow:-"),
        ("alice", &[], "GET", "/openapi/v3/apis/apps/v1?hash=abc", "allow:-"),
        ("alice", &[], "GET", "/healthz", "allow:-"),
        ("alice", &[], "GET", "/livez", "allow:-"),
        ("alice", &[], "HEAD", "/readyz", "allow:-"),
        ("alice", &[], "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", "allow:-"),
        ("alice", &[], "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "allow:-"),
        ("alice", &[], "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", "allow:-"),
        // Not discovery: default deny.
        ("alice", &[], "GET", "/api/v1/namespaces/dev/pods", "deny:-"),
        ("alice", &[], "GET", "/api/v1/pods", "deny:-"),
        ("alice", &[], "GET", "/metrics", "deny:-"),
        ("alice", &[], "GET", "/logs/kube-apiserver.log", "deny:-"),
        ("alice", &[], "GET", "/healthz/etcd", "deny:-"),
        ("alice", &[], "POST", "/apis", "deny:-"),
        ("alice", &[], "GET", "/", "deny:-"),
        ("alice", &[], "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "deny:-"),
        ("alice", &[], "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "deny:-"),
        ("alice", &[], "DELETE", "/apis/authentication.k8s.io/v1/selfsubjectreviews", "deny:-"),
        ("alice", &[], "POST", "/apis/authorization.k8s.io/v1/namespaces/a/selfsubjectaccessreviews", "deny:-"),
    ];
    run_table(&p, cases);
    let Decision::Deny { message, .. } =
        decide_as(&p, "alice", &[], "DELETE", "/api/v1/namespaces/prod")
    else {
        panic!("default deny expected");
    };
    assert_eq!(
        message,
        "no policy rule allows \"alice\" to delete namespaces \"prod\""
    );
}

const LAYERED: &str = r#"
rules:
  - name: devs-everything
    subjects: {groups: [devs]}
    verbs: ["*"]
    resources: ["*"]
    action: allow
  - name: deletes-need-approval
    subjects: {groups: [devs]}
    verbs: [delete, deletecollection]
    resources: ["*"]
    action: approve
    approvers: [leads]
  - name: no-secrets-in-prod
    subjects: {users: ["*"]}
    verbs: ["*"]
    resources: [secrets]
    namespaces: [prod]
    action: deny
    message: secrets in prod are off limits
"#;

#[test]
fn deny_beats_approve_beats_allow() {
    let p = policy(LAYERED);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("alice", &["devs"], "GET", "/api/v1/namespaces/dev/pods", "allow:devs-everything"),
        ("alice", &["devs"], "DELETE", "/api/v1/namespaces/dev/pods/p", "approve:deletes-need-approval"),
        ("alice", &["devs"], "DELETE", "/api/v1/namespaces/dev/pods", "approve:deletes-need-approval"),
        ("alice", &["devs"], "GET", "/api/v1/namespaces/prod/secrets/s", "deny:no-secrets-in-prod"),
        // All three match a delete of a prod secret: deny wins.
        ("alice", &["devs"], "DELETE", "/api/v1/namespaces/prod/secrets/s", "deny:no-secrets-in-prod"),
        ("alice", &["devs"], "GET", "/api/v1/namespaces/dev/secrets/s", "allow:devs-everything"),
        // Not a dev: only the deny rule applies to them, and nothing allows.
        ("bob", &["ops"], "GET", "/api/v1/namespaces/dev/pods", "deny:-"),
        ("bob", &["ops"], "GET", "/api/v1/namespaces/prod/secrets", "deny:no-secrets-in-prod"),
    ];
    run_table(&p, cases);
    let Decision::Deny { message, .. } =
        decide_as(&p, "bob", &[], "GET", "/api/v1/namespaces/prod/secrets")
    else {
        panic!("deny expected");
    };
    assert_eq!(message, "secrets in prod are off limits");
    let Decision::NeedsApproval {
        approvers, message, ..
    } = decide_as(
        &p,
        "alice",
        &["devs"],
        "DELETE",
        "/api/v1/namespaces/dev/pods/p",
    )
    else {
        panic!("approval expected");
    };
    assert_eq!(approvers, vec!["leads".to_string()]);
    assert!(message.starts_with("approval required"), "{message}");
    assert!(message.contains("\"deletes-need-approval\""), "{message}");
}

#[test]
fn unknown_top_level_key_in_policy_file_is_an_error() {
    let err = compile_error(&format!("{LAYERED}rules_end: x\n"));
    assert!(err.contains("rules_end"), "{err}");
    assert!(err.contains("line 21"), "{err}");
}

#[test]
fn the_most_specific_rule_reports_its_message() {
    let p = policy(
        r#"
rules:
  - name: broad
    subjects: {users: ["*"]}
    verbs: ["*"]
    resources: ["*"]
    namespaces: [prod]
    action: deny
    message: prod is read by humans only
  - name: narrow
    subjects: {users: [alice]}
    verbs: [delete]
    resources: [namespaces]
    namespaces: [prod]
    action: deny
    message: do not delete prod, alice
  - name: tie-first
    subjects: {users: ["*"]}
    verbs: ["*"]
    resources: ["*"]
    namespaces: [staging]
    action: deny
    message: first of two equally specific rules
  - name: tie-second
    subjects: {users: ["*"]}
    verbs: ["*"]
    resources: ["*"]
    namespaces: [staging]
    action: deny
    message: second of two equally specific rules
"#,
    );
    let message =
        |user: &str, method: &str, target: &str| match decide_as(&p, user, &[], method, target) {
            Decision::Deny { message, .. } => message,
            other => panic!("deny expected, got {other:?}"),
        };
    assert_eq!(
        message("alice", "DELETE", "/api/v1/namespaces/prod"),
        "do not delete prod, alice"
    );
    assert_eq!(
        message("bob", "DELETE", "/api/v1/namespaces/prod"),
        "prod is read by humans only"
    );
    assert_eq!(
        message("alice", "GET", "/api/v1/namespaces/prod/pods"),
        "prod is read by humans only"
    );
    assert_eq!(
        message("alice", "GET", "/api/v1/namespaces/staging/pods"),
        "first of two equally specific rules"
    );
}

const AGENTS: &str = r#"
scopes:
  - name: mcp-agents-dev-only
    subjects: {groups: [mcp-agents]}
    namespaces: [dev]
rules:
  - name: agents-read
    subjects: {groups: [mcp-agents]}
    preset: read-only
  - name: agents-write-dev
    subjects: {groups: [mcp-agents]}
    verbs: ["*"]
    resources: ["*"]
    namespaces: [dev]
    action: allow
  - name: agents-metrics
    subjects: {groups: [mcp-agents]}
    verbs: [get]
    non_resource_urls: ["/metrics"]
    action: allow
  - name: everyone-no-destructive
    subjects: {users: ["*"]}
    preset: no-destructive
    message: deleting namespaces, CRDs, volumes or nodes is not allowed through the gateway
"#;

#[test]
fn a_namespace_scope_denies_everything_outside_it() {
    let p = policy(AGENTS);
    let agent: &[&str] = &["mcp-agents"];
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // Both allow rules match and score the same (literal verbs vs literal namespace): the
        // one written first is reported.
        ("agent", agent, "GET", "/api/v1/namespaces/dev/pods", "allow:agents-read"),
        ("agent", agent, "POST", "/api/v1/namespaces/dev/configmaps", "allow:agents-write-dev"),
        ("agent", agent, "DELETE", "/api/v1/namespaces/dev/pods/p", "allow:agents-write-dev"),
        // Outside the scope: denied though `agents-read` matches.
        ("agent", agent, "GET", "/api/v1/namespaces/prod/pods", "deny:mcp-agents-dev-only"),
        ("agent", agent, "GET", "/api/v1/pods", "deny:mcp-agents-dev-only"),
        ("agent", agent, "GET", "/api/v1/pods?watch=1", "deny:mcp-agents-dev-only"),
        ("agent", agent, "GET", "/api/v1/nodes", "deny:mcp-agents-dev-only"),
        ("agent", agent, "GET", "/apis/apps/v1/deployments", "deny:mcp-agents-dev-only"),
        ("agent", agent, "GET", "/metrics", "deny:mcp-agents-dev-only"),
        // Built-ins still work for a scoped caller.
        ("agent", agent, "GET", "/apis/apps/v1", "allow:-"),
        ("agent", agent, "GET", "/version", "allow:-"),
        ("agent", agent, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "allow:-"),
        // Explicit deny beats the scope (and the allow inside it).
        ("agent", agent, "DELETE", "/api/v1/namespaces/prod", "deny:everyone-no-destructive"),
        ("agent", agent, "DELETE", "/api/v1/namespaces/dev", "deny:everyone-no-destructive"),
        // Not scoped: the same rules do not apply, nothing else allows.
        ("alice", &["devs"], "GET", "/api/v1/namespaces/prod/pods", "deny:-"),
    ];
    run_table(&p, cases);
    let Decision::Deny { message, .. } = decide_as(&p, "agent", agent, "GET", "/api/v1/pods")
    else {
        panic!("deny expected");
    };
    assert!(message.contains("[dev]"), "{message}");
    assert!(message.contains("list pods cluster-wide"), "{message}");
}

#[test]
fn a_scope_limits_but_does_not_grant() {
    let p = policy(
        r#"
scopes:
  - subjects: {users: ["system:serviceaccount:agents:*"]}
    namespaces: [dev, "team-*", cluster]
rules:
  - name: sa-read-dev
    subjects: {users: ["system:serviceaccount:agents:*"]}
    verbs: [get, list]
    resources: [pods]
    namespaces: [dev]
    action: allow
"#,
    );
    let sa = "system:serviceaccount:agents:bot";
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (sa, &[], "GET", "/api/v1/namespaces/dev/pods", "allow:sa-read-dev"),
        (sa, &[], "GET", "/api/v1/namespaces/team-a/pods", "deny:-"),
        // `cluster` in a scope lets cluster-wide requests through to the rules (none allows).
        (sa, &[], "GET", "/api/v1/pods", "deny:-"),
        (sa, &[], "GET", "/api/v1/namespaces/prod/pods", "deny:scope #1"),
        ("system:serviceaccount:other:bot", &[], "GET", "/api/v1/namespaces/dev/pods", "deny:-"),
    ];
    run_table(&p, cases);
}

#[test]
fn presets_do_what_they_say() {
    let p = policy(
        r#"
rules:
  - name: all
    subjects: {users: ["*"]}
    verbs: ["*"]
    resources: ["*"]
    action: allow
  - name: no-destructive
    subjects: {users: ["*"]}
    preset: no-destructive
  - name: no-exec
    subjects: {groups: [agents]}
    preset: no-exec
  - name: no-secrets
    subjects: {groups: [agents]}
    preset: no-secrets
  - name: readers
    subjects: {groups: [readers]}
    preset: read-only
"#,
    );
    let a: &[&str] = &["agents"];
    let r: &[&str] = &["readers"];
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("u", &[], "DELETE", "/api/v1/namespaces/prod", "deny:no-destructive"),
        ("u", &[], "DELETE", "/api/v1/nodes/n1", "deny:no-destructive"),
        ("u", &[], "DELETE", "/api/v1/nodes", "deny:no-destructive"),
        ("u", &[], "DELETE", "/api/v1/persistentvolumes/pv1", "deny:no-destructive"),
        ("u", &[], "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example.com", "deny:no-destructive"),
        ("u", &[], "DELETE", "/api/v1/namespaces/prod/pods/p", "allow:all"),
        ("u", &[], "DELETE", "/api/v1/namespaces/prod/persistentvolumeclaims/c", "allow:all"),
        ("u", &[], "PATCH", "/api/v1/namespaces/prod", "allow:all"),
        ("u", &[], "POST", "/api/v1/namespaces/prod/pods/p/exec?command=sh", "allow:all"),
        // Exec and attach, on both transports: SPDY is a POST, WebSocket a GET; both are `create`.
        ("u", a, "POST", "/api/v1/namespaces/dev/pods/p/exec?command=sh", "deny:no-exec"),
        ("u", a, "GET", "/api/v1/namespaces/dev/pods/p/exec?command=sh&stdin=true", "deny:no-exec"),
        ("u", a, "GET", "/api/v1/namespaces/dev/pods/p/attach", "deny:no-exec"),
        ("u", a, "POST", "/api/v1/namespaces/dev/pods/p/portforward", "allow:all"),
        ("u", a, "GET", "/api/v1/namespaces/dev/pods/p/log", "allow:all"),
        ("u", a, "GET", "/api/v1/namespaces/dev/secrets", "deny:no-secrets"),
        ("u", a, "GET", "/api/v1/secrets?watch=1", "deny:no-secrets"),
        ("u", a, "GET", "/api/v1/namespaces/dev/secrets/s", "deny:no-secrets"),
        ("u", a, "POST", "/api/v1/namespaces/dev/secrets", "deny:no-secrets"),
        ("u", a, "GET", "/api/v1/namespaces/dev/configmaps/c", "allow:all"),
        ("u", a, "GET", "/apis/example.com/v1/namespaces/dev/secrets", "allow:all"),
    ];
    run_table(&p, cases);

    let only_readers = policy(
        "rules:\n  - name: readers\n    subjects: {groups: [readers]}\n    preset: read-only\n",
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("u", r, "GET", "/api/v1/namespaces/dev/pods", "allow:readers"),
        ("u", r, "GET", "/api/v1/pods?watch=1", "allow:readers"),
        ("u", r, "GET", "/apis/apps/v1/namespaces/dev/deployments/d", "allow:readers"),
        ("u", r, "GET", "/apis/apps/v1/namespaces/dev/deployments/d/scale", "allow:readers"),
        ("u", r, "GET", "/api/v1/namespaces/dev/pods/p/log", "allow:readers"),
        ("u", r, "GET", "/api/v1/namespaces/dev/pods/p/status", "allow:readers"),
        ("u", r, "GET", "/api/v1/namespaces/dev/secrets/s", "allow:readers"),
        ("u", r, "GET", "/api/v1/nodes", "allow:readers"),
        ("u", r, "GET", "/api/v1/namespaces/dev/pods/p/exec?command=sh", "deny:-"),
        ("u", r, "GET", "/api/v1/namespaces/dev/pods/p/proxy/x", "deny:-"),
        ("u", r, "GET", "/api/v1/namespaces/dev/services/s/proxy", "deny:-"),
        ("u", r, "GET", "/api/v1/proxy/nodes/n", "deny:-"),
        ("u", r, "POST", "/api/v1/namespaces/dev/pods", "deny:-"),
        ("u", r, "PATCH", "/api/v1/namespaces/dev/pods/p", "deny:-"),
        ("u", r, "GET", "/metrics", "deny:-"),
    ];
    run_table(&only_readers, cases);
}

#[test]
fn resource_patterns_follow_rbac() {
    let p = policy(
        r#"
rules:
  - name: pods-only
    subjects: {users: [a]}
    verbs: ["*"]
    resources: [pods]
    action: allow
  - name: pod-subresources
    subjects: {users: [b]}
    verbs: ["*"]
    resources: ["pods/*"]
    action: allow
  - name: any-status
    subjects: {users: [c]}
    verbs: ["*"]
    resources: ["*/status"]
    action: allow
  - name: core-configmaps-named
    subjects: {users: [d]}
    verbs: [get]
    api_groups: [core]
    resources: [configmaps]
    resource_names: ["app-*"]
    action: allow
  - name: cluster-only
    subjects: {users: [e]}
    verbs: [list]
    resources: [pods, nodes]
    namespaces: [cluster]
    action: allow
  - name: team-globs
    subjects: {users: [f]}
    verbs: [get]
    api_groups: ["*.k8s.io", apps]
    resources: ["*"]
    namespaces: ["team-*"]
    action: allow
"#,
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("a", &[], "GET", "/api/v1/namespaces/x/pods/p", "allow:pods-only"),
        ("a", &[], "GET", "/api/v1/namespaces/x/pods/p/log", "deny:-"),
        ("a", &[], "POST", "/api/v1/namespaces/x/pods/p/exec", "deny:-"),
        ("b", &[], "POST", "/api/v1/namespaces/x/pods/p/exec", "allow:pod-subresources"),
        ("b", &[], "GET", "/api/v1/namespaces/x/pods/p", "deny:-"),
        ("c", &[], "PUT", "/apis/apps/v1/namespaces/x/deployments/d/status", "allow:any-status"),
        ("c", &[], "PUT", "/apis/apps/v1/namespaces/x/deployments/d", "deny:-"),
        ("d", &[], "GET", "/api/v1/namespaces/x/configmaps/app-config", "allow:core-configmaps-named"),
        ("d", &[], "GET", "/api/v1/namespaces/x/configmaps/other", "deny:-"),
        ("d", &[], "GET", "/api/v1/namespaces/x/configmaps", "deny:-"),
        ("d", &[], "GET", "/api/v1/namespaces/x/configmaps?fieldSelector=metadata.name%3Dapp-1", "deny:-"),
        ("d", &[], "GET", "/apis/example.com/v1/namespaces/x/configmaps/app-config", "deny:-"),
        ("e", &[], "GET", "/api/v1/pods", "allow:cluster-only"),
        ("e", &[], "GET", "/api/v1/nodes", "allow:cluster-only"),
        ("e", &[], "GET", "/api/v1/namespaces/x/pods", "deny:-"),
        ("f", &[], "GET", "/apis/apps/v1/namespaces/team-a/deployments/d", "allow:team-globs"),
        ("f", &[], "GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles/r", "allow:team-globs"),
        ("f", &[], "GET", "/api/v1/namespaces/team-a/pods/p", "deny:-"),
        ("f", &[], "GET", "/apis/apps/v1/namespaces/prod/deployments/d", "deny:-"),
        ("f", &[], "GET", "/apis/apps/v1/deployments", "deny:-"),
    ];
    run_table(&p, cases);
}

#[test]
fn subjects_users_or_groups_and_issuers() {
    let p = policy(
        r#"
rules:
  - name: alice-or-devs
    subjects: {users: [alice], groups: [devs]}
    verbs: [get]
    resources: [pods]
    action: allow
  - name: from-corp-idp
    subjects: {groups: [ops], issuers: ["https://idp.*"]}
    verbs: [get]
    resources: [services]
    action: allow
  - name: anyone-from-other
    subjects: {issuers: ["https://other.example"]}
    verbs: [get]
    resources: [configmaps]
    action: allow
"#,
    );
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let check = |user: &str, g: &[&str], issuer: &str, target: &str, want: &str| {
        let g = groups(g);
        let s = Subject {
            user,
            groups: &g,
            issuer,
        };
        let got = short(&p.decide(&s, &request("GET", target), SystemTime::now()));
        assert_eq!(got, want, "{user} {g:?} {issuer} {target}");
    };
    check(
        "alice",
        &[],
        "x",
        "/api/v1/namespaces/a/pods/p",
        "allow:alice-or-devs",
    );
    check(
        "bob",
        &["devs"],
        "x",
        "/api/v1/namespaces/a/pods/p",
        "allow:alice-or-devs",
    );
    check(
        "bob",
        &["ops"],
        "x",
        "/api/v1/namespaces/a/pods/p",
        "deny:-",
    );
    check(
        "bob",
        &["ops"],
        "https://idp.example",
        "/api/v1/namespaces/a/services/s",
        "allow:from-corp-idp",
    );
    check(
        "bob",
        &["ops"],
        "https://evil.example",
        "/api/v1/namespaces/a/services/s",
        "deny:-",
    );
    check(
        "bob",
        &["devs"],
        "https://idp.example",
        "/api/v1/namespaces/a/services/s",
        "deny:-",
    );
    check(
        "x",
        &[],
        "https://other.example",
        "/api/v1/namespaces/a/configmaps/c",
        "allow:anyone-from-other",
    );
    check(
        "x",
        &[],
        "https://idp.example",
        "/api/v1/namespaces/a/configmaps/c",
        "deny:-",
    );
}

#[test]
fn obligations_default_and_per_rule() {
    let p = policy(
        r#"
rules:
  - name: read
    subjects: {users: ["*"]}
    verbs: [get, list]
    resources: ["*"]
    action: allow
  - name: admins-unmasked
    subjects: {groups: [admins]}
    verbs: [get, list]
    resources: [secrets]
    action: allow
    mask: none
  - name: strict-profile
    subjects: {groups: [auditors]}
    verbs: [get, list]
    resources: [configmaps]
    action: allow
    mask: strict
    record: full
  - name: exec-approval
    subjects: {groups: [oncall]}
    verbs: [create]
    resources: [pods/exec]
    action: approve
    approvers: [oncall-leads]
"#,
    );
    let obligations = |user: &str, g: &[&str], method: &str, target: &str| match decide_as(
        &p, user, g, method, target,
    ) {
        Decision::Allow { obligations, .. } | Decision::NeedsApproval { obligations, .. } => {
            obligations
        }
        other => panic!("allow expected, got {other:?}"),
    };
    let default = Obligations {
        mask: MaskChoice::Profile("default".into()),
        record: RecordLevel::Metadata,
    };
    assert_eq!(
        obligations("u", &[], "GET", "/api/v1/namespaces/a/secrets/s"),
        default
    );
    assert_eq!(
        obligations("u", &["admins"], "GET", "/api/v1/namespaces/a/secrets/s"),
        Obligations {
            mask: MaskChoice::None,
            record: RecordLevel::Metadata
        }
    );
    // The rule that decides is the most specific allow rule: `admins-unmasked` does not cover
    // configmaps, so the general rule's defaults apply.
    assert_eq!(
        obligations("u", &["admins"], "GET", "/api/v1/namespaces/a/configmaps"),
        default
    );
    assert_eq!(
        obligations("u", &["auditors"], "GET", "/api/v1/namespaces/a/configmaps"),
        Obligations {
            mask: MaskChoice::Profile("strict".into()),
            record: RecordLevel::Full
        }
    );
    assert_eq!(
        obligations("u", &["oncall"], "POST", "/api/v1/namespaces/a/pods/p/exec"),
        Obligations {
            mask: MaskChoice::Profile("default".into()),
            record: RecordLevel::Full
        }
    );
    // Built-in allowances carry the defaults too.
    assert_eq!(obligations("u", &[], "GET", "/api"), default);
}

#[test]
fn compile_errors_name_the_line() {
    #[rustfmt::skip]
    let cases: &[(&str, &[&str])] = &[
        // Unknown keys and values are parse errors with the parser's line.
        ("rules:\n  - name: a\n    subjects: {users: [a]}\n    verb: [get]\n", &["at `rules[0].verb`", "line 4"]),
        ("rules:\n  - name: a\n    subjects: {users: [a]}\n    preset: no-deletes\n", &["no-deletes", "line 4"]),
        ("rules:\n  - name: a\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    action: permit\n", &["permit", "line 6"]),
        ("rules:\n  - name: a\n    subjects: {user: [a]}\n", &["user", "line 3"]),
        ("scopes:\n  - subjects: {groups: [a]}\n    namespace: [dev]\n", &["namespace", "line 3"]),
        // Semantic errors carry file:line of the rule.
        ("rules:\n  - name: \"\"\n    subjects: {users: [a]}\n    preset: no-exec\n", &["test.yaml:2", "`name` is empty"]),
        ("rules:\n  - name: a\n    subjects: {users: [a]}\n    preset: no-exec\n  - name: b\n    subjects: {users: [a]}\n    preset: no-secrets\n  - name: a\n    subjects: {users: [b]}\n    preset: no-exec\n", &["test.yaml:8", "rule \"a\"", "already used by the rule at test.yaml:2"]),
        ("rules:\n  - name: g\n    subjects: {users: [\"a[\"]}\n    preset: no-exec\n", &["test.yaml:2", "rule \"g\"", "bad glob", "a["]),
        ("rules:\n  - name: g\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [\"pods/{exec\"]\n    action: allow\n", &["test.yaml:2", "bad glob"]),
        ("rules:\n  - name: g\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    namespaces: [\"[x\"]\n    action: allow\n", &["test.yaml:2", "`namespaces`", "bad glob"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n", &["test.yaml:2", "`action` is missing"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    resources: [pods]\n    action: deny\n", &["`verbs` is missing"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [read]\n    resources: [pods]\n    action: deny\n", &["\"read\" is not a resource verb"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [list]\n    non_resource_urls: [/metrics]\n    action: allow\n", &["\"list\" is not a non-resource verb"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    non_resource_urls: [metrics]\n    action: allow\n", &["must start with '/'"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    non_resource_urls: [/metrics]\n    action: allow\n", &["not both"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    action: allow\n", &["needs `resources`"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: []\n    action: allow\n", &["empty list"]),
        ("rules:\n  - name: n\n    subjects: {users: []}\n    verbs: [get]\n    resources: [pods]\n    action: allow\n", &["`subjects.users` is an empty list"]),
        ("rules:\n  - name: n\n    verbs: [get]\n    resources: [pods]\n    action: allow\n", &["`subjects` names no users"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    action: approve\n", &["needs `approvers`"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    action: allow\n    approvers: [x]\n", &["only applies to `action: approve`"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    action: allow\n    message: hi\n", &["an allow rule has none"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [pods]\n    action: deny\n    mask: none\n", &["a deny rule has none"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    preset: no-exec\n    verbs: [get]\n", &["`verbs` cannot be combined with `preset: no-exec`"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    preset: read-only\n    action: deny\n", &["`action` cannot be combined"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [\"pods/exec/x\"]\n    action: allow\n", &["is not `resource`"]),
        ("rules:\n  - name: n\n    subjects: {users: [a]}\n    verbs: [get]\n    non_resource_urls: [/x]\n    namespaces: [dev]\n    action: allow\n", &["does not apply to a `non_resource_urls` rule"]),
        ("scopes:\n  - name: s\n    subjects: {groups: [a]}\n    namespaces: []\n", &["test.yaml:2", "scope \"s\"", "empty list"]),
    ];
    for (yaml, wants) in cases {
        let err = compile_error(yaml);
        for want in *wants {
            assert!(
                err.contains(want),
                "error {err:?} lacks {want:?} for\n{yaml}"
            );
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-policy-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

const GATEWAY_CONFIG: &str = r#"
insecure_listen: 127.0.0.1:8080
upstream:
  url: https://127.0.0.1:6443
  credential:
    token_file: /tmp/token
identity:
  issuers:
    - issuer: https://issuer.example
      audiences: [portcullis]
      jwks_file: /tmp/jwks.json
policy:
  files: [policies, extra.yaml]
  rules:
    - name: inline-read
      subjects: {groups: [devs]}
      preset: read-only
"#;

#[test]
fn gateway_config_with_inline_rules_and_files() {
    let dir = temp_dir("files");
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir");
    std::fs::write(
        dir.join("policies/10-deny.yaml"),
        "rules:\n  - name: file-no-exec\n    subjects: {users: [\"*\"]}\n    preset: no-exec\n",
    )
    .expect("write");
    std::fs::write(dir.join("policies/README.md"), "not policy").expect("write");
    std::fs::write(
        dir.join("extra.yaml"),
        "scopes:\n  - subjects: {groups: [agents]}\n    namespaces: [dev]\n",
    )
    .expect("write");
    let config_path = dir.join("portcullis.yaml");
    std::fs::write(&config_path, GATEWAY_CONFIG).expect("write");

    let p = Policy::load_file(&config_path).expect("loads");
    assert_eq!(
        p.rule_names().collect::<Vec<_>>(),
        ["inline-read", "file-no-exec"]
    );
    assert!(
        p.summary()
            .contains("2 rules (1 allow, 1 deny, 0 approve), 1 scopes"),
        "{}",
        p.summary()
    );
    // Line numbers of inline rules point into the gateway config.
    let e = p.explain(
        &Subject {
            user: "u",
            groups: &["devs".to_string()],
            issuer: "",
        },
        &request("GET", "/api/v1/namespaces/a/pods"),
        SystemTime::now(),
    );
    assert_eq!(e.rules[0].source, format!("{}:15", config_path.display()));
    assert_eq!(
        e.rules[1].source,
        format!("{}:2", dir.join("policies/10-deny.yaml").display())
    );

    // A policy file on its own, as `policy check` takes it.
    let single = Policy::load_file(&dir.join("policies/10-deny.yaml")).expect("loads");
    assert_eq!(single.rule_names().collect::<Vec<_>>(), ["file-no-exec"]);
    assert!(
        single.summary().ends_with("10-deny.yaml"),
        "{}",
        single.summary()
    );

    // The same through Config::load + from_config, as the gateway does.
    let config = crate::config::Config::load(&config_path).expect("config");
    let q = Policy::from_config(&config.policy, &dir).expect("compiles");
    assert_eq!(q.rule_names().count(), 2);

    // A bad policy file fails the whole load, naming the file and line.
    std::fs::write(
        dir.join("policies/20-bad.yaml"),
        "rules:\n  - name: ok\n    subjects: {users: [a]}\n    preset: no-exec\n  - name: bad\n    subjects: {users: [a]}\n    preset: no-exec\n    resources: [pods]\n",
    )
    .expect("write");
    let err = Policy::load_file(&config_path)
        .expect_err("bad file")
        .to_string();
    assert!(err.contains("20-bad.yaml:5"), "{err}");
    // A missing file too.
    std::fs::remove_file(dir.join("extra.yaml")).expect("rm");
    std::fs::remove_file(dir.join("policies/20-bad.yaml")).expect("rm");
    let err = Policy::load_file(&config_path)
        .expect_err("missing")
        .to_string();
    assert!(err.contains("extra.yaml"), "{err}");
    // An unknown key inside the inline section: the gateway config's parser reports the line.
    std::fs::write(
        &config_path,
        GATEWAY_CONFIG.replace(
            "      preset: read-only\n",
            "      preset: read-only\n      colour: blue\n",
        ),
    )
    .expect("write");
    let err = Policy::load_file(&config_path)
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("colour") && err.contains("line 18"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explanation_lists_matches_and_reasons() {
    let p = policy(AGENTS);
    let groups = vec!["mcp-agents".to_string()];
    let subject = Subject {
        user: "agent",
        groups: &groups,
        issuer: "https://idp.example",
    };
    let info = request("DELETE", "/api/v1/namespaces/prod");
    let e = p.explain(&subject, &info, SystemTime::now());
    assert_eq!(e.decision, p.decide(&subject, &info, SystemTime::now()));
    assert_eq!(e.step, DecidingStep::DenyRule);
    let text = render_explanation(&e, false);
    for want in [
        "  kind:        resource request\n",
        "  verb:        delete\n",
        "  resource:    namespaces\n",
        "  namespace:   prod\n",
        "  name:        prod\n",
        "  user:   agent\n",
        "  groups: mcp-agents\n",
        "  DENY by rule \"everyone-no-destructive\"\n",
        "  message: deleting namespaces, CRDs, volumes or nodes is not allowed through the gateway\n",
        "  because: an explicit deny rule matched (deny beats everything)\n",
        "Rules (4 considered, 1 matched)\n",
        "  MATCH     deny \"everyone-no-destructive\" (test.yaml:21, specificity ",
        ", preset no-destructive)\n",
        "      user \"agent\" matches \"*\"\n",
        "      verb delete matches \"delete\"\n",
        "      resource namespaces matches \"namespaces\" (group \"\" matches \"\")\n",
        "  (3 rules did not match; --show-unmatched lists them)\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("no match"), "{text}");

    let verbose = render_explanation(&e, true);
    for want in [
        "  no match  allow \"agents-read\" (test.yaml:7, preset read-only): verb delete is not in [get, list, watch]\n",
        "  no match  allow \"agents-metrics\" (test.yaml:16): verb delete is not in [get]\n",
    ] {
        assert!(verbose.contains(want), "missing {want:?} in\n{verbose}");
    }

    // A scope denial shows the scope.
    let e = p.explain(
        &subject,
        &request("GET", "/api/v1/namespaces/prod/pods"),
        SystemTime::now(),
    );
    let text = render_explanation(&e, true);
    for want in [
        "  DENY by rule \"mcp-agents-dev-only\"\n",
        "  because: the request is outside the caller's namespace scope\n",
        "Namespace scope\n",
        "  scopes:     \"mcp-agents-dev-only\" (test.yaml:3)\n",
        "  namespaces: dev\n",
        "  request:    OUTSIDE the scope\n",
        "  MATCH     allow \"agents-read\"",
        "      any namespace (no `namespaces`)\n",
        "  no match  allow \"agents-write-dev\" (test.yaml:10): namespace \"prod\" is not in [dev]\n",
        "  no match  allow \"agents-metrics\" (test.yaml:16): verb list is not in [get]\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }

    // Built-in and default deny.
    let e = p.explain(&subject, &request("GET", "/apis"), SystemTime::now());
    let text = render_explanation(&e, false);
    assert!(text.contains("  ALLOW by built-in\n"), "{text}");
    assert!(
        text.contains("  kind:        non-resource request\n"),
        "{text}"
    );
    assert!(
        text.contains("because: built-in allowance: API discovery"),
        "{text}"
    );
    let other = vec![];
    let e = p.explain(
        &Subject {
            user: "bob",
            groups: &other,
            issuer: "",
        },
        &request("GET", "/api/v1/namespaces/dev/pods"),
        SystemTime::now(),
    );
    let text = render_explanation(&e, true);
    assert!(text.contains("  DENY by default\n"), "{text}");
    assert!(
        text.contains("subjects: user \"bob\" with groups [] is not in groups [mcp-agents]"),
        "{text}"
    );
}

#[test]
fn reloader_swaps_valid_policies_and_keeps_the_old_on_errors() {
    let dir = temp_dir("reload");
    let file = dir.join("policy.yaml");
    let allow = "rules:\n  - name: v1\n    subjects: {users: [alice]}\n    preset: read-only\n";
    std::fs::write(&file, allow).expect("write");
    let cfg = PolicyConfig {
        files: vec![PathBuf::from("policy.yaml")],
        ..PolicyConfig::default()
    };
    let handle = PolicyHandle::new(Policy::from_config(&cfg, &dir).expect("compiles"));
    let counter =
        prometheus::IntCounterVec::new(prometheus::Opts::new("reloads", "test"), &["result"])
            .expect("counter");
    let reloader = PolicyReloader::new(handle.clone(), cfg, dir.clone(), counter.clone());
    let get = || {
        short(&decide_as(
            &handle.current(),
            "alice",
            &[],
            "GET",
            "/api/v1/namespaces/a/pods",
        ))
    };

    assert_eq!(reloader.check(), ReloadOutcome::Unchanged);
    assert_eq!(get(), "allow:v1");

    std::fs::write(
        &file,
        allow.replace("v1", "v2").replace("read-only", "no-exec"),
    )
    .expect("write");
    assert!(matches!(reloader.check(), ReloadOutcome::Reloaded(_)));
    assert_eq!(get(), "deny:-");
    assert_eq!(counter.with_label_values(&["success"]).get(), 1);

    std::fs::write(&file, "rules:\n  - name: v3\n    subjects: {users: [alice]}\n    preset: read-only\n    verbs: [get]\n").expect("write");
    let ReloadOutcome::Failed(error) = reloader.check() else {
        panic!("a bad file must fail");
    };
    assert!(error.contains("policy.yaml:2"), "{error}");
    assert_eq!(get(), "deny:-", "the previous policy stays");
    assert_eq!(counter.with_label_values(&["failure"]).get(), 1);
    assert_eq!(
        reloader.check(),
        ReloadOutcome::Unchanged,
        "a failed file is not retried until it changes"
    );

    std::fs::write(&file, allow.replace("v1", "v4")).expect("write");
    assert!(matches!(reloader.check(), ReloadOutcome::Reloaded(_)));
    assert_eq!(get(), "allow:v4");
    assert_eq!(counter.with_label_values(&["success"]).get(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_reloader_sees_inline_rules_and_the_thread_stops() {
    let dir = temp_dir("reload-config");
    let config_path = dir.join("portcullis.yaml");
    let config = GATEWAY_CONFIG.replace("  files: [policies, extra.yaml]\n", "");
    std::fs::write(&config_path, &config).expect("write");
    let handle = PolicyHandle::new(Policy::load_file(&config_path).expect("loads"));
    let counter =
        prometheus::IntCounterVec::new(prometheus::Opts::new("reloads", "test"), &["result"])
            .expect("counter");
    let reloader = PolicyReloader::for_config_file(handle.clone(), config_path.clone(), counter);
    assert_eq!(reloader.check(), ReloadOutcome::Unchanged);
    std::fs::write(&config_path, config.replace("inline-read", "renamed")).expect("write");
    assert!(matches!(reloader.check(), ReloadOutcome::Reloaded(_)));
    assert_eq!(
        handle.current().rule_names().collect::<Vec<_>>(),
        ["renamed"]
    );

    // The thread form starts and stops (dropping it joins the thread).
    let thread = spawn_reloader_thread(reloader).expect("spawns");
    drop(thread);
    let _ = std::fs::remove_dir_all(&dir);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const SUBJECTS: &[&str] = &[
        "{users: [alice]}",
        "{groups: [devs]}",
        "{users: [\"*\"]}",
        "{groups: [\"team-*\"]}",
        "{users: [bob], issuers: [\"https://idp.*\"]}",
    ];
    const VERBS: &[&str] = &[
        "[\"*\"]",
        "[get, list, watch]",
        "[delete, deletecollection]",
        "[create]",
        "[get]",
    ];
    const BODIES: &[&str] = &[
        "resources: [\"*\"]",
        "resources: [pods]",
        "resources: [pods/exec, pods/attach]",
        "resources: [secrets]\n    api_groups: [core]",
        "resources: [namespaces]",
        "resources: [\"*/status\"]",
        "resources: [deployments]\n    resource_names: [\"web-*\"]",
        "NONRESOURCE",
        "PRESET",
    ];
    const NAMESPACES: &[&str] = &["", "[dev]", "[prod, cluster]", "[\"team-*\"]", "[cluster]"];
    const PRESETS: &[&str] = &["read-only", "no-secrets", "no-exec", "no-destructive"];
    const ACTIONS: &[&str] = &["allow", "deny", "approve"];

    fn rule_yaml(
        name: &str,
        (subject, verbs, body, ns, action): (usize, usize, usize, usize, usize),
    ) -> String {
        let mut out = format!("  - name: {name}\n    subjects: {}\n", SUBJECTS[subject]);
        match BODIES[body] {
            "NONRESOURCE" => {
                out.push_str("    verbs: [get, post]\n    non_resource_urls: [\"/metrics\", \"/logs/*\", \"*\"]\n");
            }
            "PRESET" => {
                out.push_str(&format!("    preset: {}\n", PRESETS[verbs % PRESETS.len()]));
                if !NAMESPACES[ns].is_empty() {
                    out.push_str(&format!("    namespaces: {}\n", NAMESPACES[ns]));
                }
                return out;
            }
            resources => {
                out.push_str(&format!("    verbs: {}\n    {resources}\n", VERBS[verbs]));
                if !NAMESPACES[ns].is_empty() {
                    out.push_str(&format!("    namespaces: {}\n", NAMESPACES[ns]));
                }
            }
        }
        out.push_str(&format!("    action: {}\n", ACTIONS[action]));
        if ACTIONS[action] == "approve" {
            out.push_str("    approvers: [leads]\n");
        }
        out
    }

    type RuleChoice = (usize, usize, usize, usize, usize);

    fn rule_choice() -> impl Strategy<Value = RuleChoice> {
        (
            0..SUBJECTS.len(),
            0..VERBS.len(),
            0..BODIES.len(),
            0..NAMESPACES.len(),
            0..ACTIONS.len(),
        )
    }

    fn policy_yaml(rules: &[RuleChoice], scoped: bool, extra: &str) -> String {
        let mut out = String::new();
        if scoped {
            out.push_str(
                "scopes:\n  - subjects: {groups: [devs]}\n    namespaces: [dev, cluster]\n",
            );
        }
        if rules.is_empty() && extra.is_empty() {
            out.push_str("rules: []\n");
            return out;
        }
        out.push_str("rules:\n");
        for (i, r) in rules.iter().enumerate() {
            out.push_str(&rule_yaml(&format!("r{i}"), *r));
        }
        out.push_str(extra);
        out
    }

    fn target() -> impl Strategy<Value = (String, String)> {
        let method = prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]);
        let prefix = prop::sample::select(vec![
            "/api/v1",
            "/apis/apps/v1",
            "/apis/apiextensions.k8s.io/v1",
            "/apis/example.com/v1",
        ]);
        let ns = prop::sample::select(vec![
            "",
            "/namespaces/dev",
            "/namespaces/prod",
            "/namespaces/team-a",
        ]);
        let resource = prop::sample::select(vec![
            "pods",
            "secrets",
            "namespaces",
            "deployments",
            "nodes",
            "customresourcedefinitions",
        ]);
        let name = prop::sample::select(vec!["", "/web-1", "/prod"]);
        let sub = prop::sample::select(vec![
            "",
            "/exec",
            "/status",
            "/attach",
            "/log",
            "/portforward",
        ]);
        let query = prop::sample::select(vec!["", "?watch=1", "?command=sh"]);
        let resource_path =
            (prefix, ns, resource, name, sub, query).prop_map(|(p, ns, r, n, s, q)| {
                let sub = if n.is_empty() { "" } else { s };
                format!("{p}{ns}/{r}{n}{sub}{q}")
            });
        let non_resource = prop::sample::select(vec![
            "/metrics",
            "/logs/x",
            "/version",
            "/api",
            "/apis/apps",
            "/healthz/etcd",
            "/",
        ])
        .prop_map(String::from);
        (method, prop_oneof![resource_path, non_resource]).prop_map(|(m, t)| (m.to_string(), t))
    }

    fn subject_parts() -> impl Strategy<Value = (String, Vec<String>, String)> {
        (
            prop::sample::select(vec!["alice", "bob", "carol"]),
            prop::sample::subsequence(vec!["devs", "team-x", "mcp-agents"], 0..3),
            prop::sample::select(vec!["https://idp.example", "https://other"]),
        )
            .prop_map(|(u, g, i)| {
                (
                    u.to_string(),
                    g.into_iter().map(String::from).collect(),
                    i.to_string(),
                )
            })
    }

    fn classified(method: &str, target: &str) -> Option<RequestInfo> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        classify(&method, path, query).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever else the policy says, a matching deny rule makes the decision a deny.
        #[test]
        fn deny_always_wins(
            rules in prop::collection::vec(rule_choice(), 0..6),
            scoped in any::<bool>(),
            (method, target) in target(),
            (user, groups, issuer) in subject_parts(),
        ) {
            let Some(info) = classified(&method, &target) else { return Ok(()); };
            let deny = "  - name: catch-all-deny\n    subjects: {users: [\"*\"]}\n    verbs: [\"*\"]\n    resources: [\"*\"]\n    action: deny\n  - name: catch-all-deny-urls\n    subjects: {users: [\"*\"]}\n    verbs: [\"*\"]\n    non_resource_urls: [\"*\"]\n    action: deny\n";
            let p = policy(&policy_yaml(&rules, scoped, deny));
            let s = Subject { user: &user, groups: &groups, issuer: &issuer };
            let d = p.decide(&s, &info, SystemTime::now());
            prop_assert!(matches!(&d, Decision::Deny { rule: Some(_), .. }), "{d:?}");
            // A deny rule written from the request's own fields wins as well.
            if info.is_resource_request {
                let resource = if info.subresource.is_empty() { info.resource.clone() } else { format!("{}/{}", info.resource, info.subresource) };
                let ns = if info.namespace.is_empty() { "cluster".to_string() } else { info.namespace.clone() };
                let group = if info.api_group.is_empty() { "core".to_string() } else { info.api_group.clone() };
                let exact = format!("  - name: exact-deny\n    subjects: {{users: [{user}]}}\n    verbs: [{}]\n    api_groups: [{group}]\n    resources: [{resource}]\n    namespaces: [{ns}]\n    action: deny\n    message: exact\n", info.verb);
                let p = policy(&policy_yaml(&rules, scoped, &exact));
                let d = p.decide(&s, &info, SystemTime::now());
                prop_assert!(matches!(&d, Decision::Deny { rule: Some(_), .. }), "{d:?}");
            }
        }

        /// Adding an allow rule never turns an explicit or scope deny into anything else, nor an
        /// approval into an allow.
        #[test]
        fn adding_an_allow_rule_never_widens_a_deny(
            rules in prop::collection::vec(rule_choice(), 0..6),
            extra in rule_choice(),
            scoped in any::<bool>(),
            (method, target) in target(),
            (user, groups, issuer) in subject_parts(),
        ) {
            let Some(info) = classified(&method, &target) else { return Ok(()); };
            let (subject, verbs, body, ns, _) = extra;
            // Force the extra rule to be an allow rule (presets are fixed; skip them).
            prop_assume!(BODIES[body] != "PRESET");
            let allow = rule_yaml("added-allow", (subject, verbs, body, ns, 0));
            let before = policy(&policy_yaml(&rules, scoped, ""));
            let after = policy(&policy_yaml(&rules, scoped, &allow));
            let s = Subject { user: &user, groups: &groups, issuer: &issuer };
            let d1 = before.decide(&s, &info, SystemTime::now());
            let d2 = after.decide(&s, &info, SystemTime::now());
            match &d1 {
                Decision::Deny { rule: Some(_), .. } => prop_assert_eq!(&d1, &d2),
                Decision::NeedsApproval { .. } => prop_assert_eq!(&d1, &d2),
                Decision::Allow { .. } => prop_assert!(d2.is_allow(), "{d2:?}"),
                Decision::Deny { rule: None, .. } => {}
            }
        }

        /// Any path, query, method and identity: no panic in decide, explain or rendering.
        #[test]
        fn never_panics_on_arbitrary_input(
            rules in prop::collection::vec(rule_choice(), 0..6),
            scoped in any::<bool>(),
            method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND"]),
            path in prop_oneof![
                "\\PC*",
                "(/[a-z0-9.*?\\[\\]{}%-]{0,12}){0,8}/?",
                "/apis?(/[a-z0-9*.-]{1,10}){0,7}",
            ],
            query in proptest::option::of("\\PC{0,40}"),
            user in "\\PC{0,20}",
            groups in prop::collection::vec("\\PC{0,12}", 0..4),
            issuer in "\\PC{0,20}",
        ) {
            let p = policy(&policy_yaml(&rules, scoped, ""));
            let Ok(m) = Method::from_bytes(method.as_bytes()) else { return Ok(()); };
            let Ok(info) = classify(&m, &path, query.as_deref()) else { return Ok(()); };
            let s = Subject { user: &user, groups: &groups, issuer: &issuer };
            let d = p.decide(&s, &info, SystemTime::now());
            let e = p.explain(&s, &info, SystemTime::now());
            prop_assert_eq!(&d, &e.decision);
            let _ = render_explanation(&e, true);
        }
    }
}

#[test]
fn mask_profiles_named_by_rules_must_exist() {
    let p = policy(
        "rules:\n  - name: ok\n    subjects: {users: [a]}\n    verbs: [get]\n    resources: [secrets]\n    action: allow\n    mask: agents\n  - name: off\n    subjects: {users: [b]}\n    verbs: [get]\n    resources: [secrets]\n    action: allow\n    mask: none\n",
    );
    assert!(p.check_mask_profiles(|n| n == "agents").is_ok());
    let err = p
        .check_mask_profiles(|n| n == "default")
        .expect_err("an unknown profile must be refused")
        .to_string();
    assert!(
        err.contains("rule \"ok\"") && err.contains("mask: agents") && err.contains("test.yaml:2"),
        "{err}"
    );
}
