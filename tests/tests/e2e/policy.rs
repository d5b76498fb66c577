//! Runtime policy end to end (issue #4 section 3): namespace scopes, deny presets, approval
//! rules and hot reload, with real kubectl and provider-style tokens. The double's request log
//! proves that nothing the policy refused was forwarded.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use portcullis_tests::harness::{self, TempDir};

use super::{tail, Stack};

/// An MCP agent confined to `dev`; the devs group reads everything; nobody deletes namespaces;
/// on-call engineers may exec only with approval; agents never exec and never read secrets.
const POLICY: &str = r#"policy:
  scopes:
    - name: agent-lives-in-dev
      subjects: {users: ["oidc:agent"]}
      namespaces: [dev]
  rules:
    - name: agent-works-in-dev
      subjects: {users: ["oidc:agent"]}
      verbs: ["*"]
      resources: ["*"]
      namespaces: [dev]
      action: allow
    - name: agents-never-exec
      subjects: {users: ["oidc:agent"]}
      preset: no-exec
      message: "agents may not exec into pods"
    - name: agents-never-read-secrets
      subjects: {users: ["oidc:agent"]}
      preset: no-secrets
      message: "agents may not touch secrets"
    - name: operator-does-everything
      subjects: {users: ["oidc:operator-bot"]}
      verbs: ["*"]
      resources: ["*"]
      action: allow
    - name: nobody-deletes-namespaces
      subjects: {users: ["*"]}
      preset: no-destructive
      message: "deleting namespaces, CRDs, volumes or nodes is not allowed through portcullis"
    - name: oncall-reads
      subjects: {groups: ["oidc:oncall"]}
      preset: read-only
    - name: oncall-exec-needs-approval
      subjects: {groups: ["oidc:oncall"]}
      verbs: [create, get]
      resources: [pods/exec]
      action: approve
      approvers: ["oidc:sre-leads"]
      message: "exec by on-call needs a second engineer"
"#;

impl Stack {
    /// A kubeconfig for `user` with `groups`, holding a token from the stack's issuer.
    fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let token = self.issuer.mint(user, groups, 3600)?;
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        harness::write_kubeconfig(&path, &self.gateway.url, &self.gateway_ca, &token)?;
        Ok(path)
    }

    /// kubectl as another user; returns (success, stdout, stderr).
    fn kubectl_as(
        &self,
        kubeconfig: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(bool, String, String)> {
        let mut full = vec!["--kubeconfig", kubeconfig.to_str().context("utf-8 path")?];
        full.extend_from_slice(args);
        let out = self.kubectl_output(&full, env, None)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn forwarded(&self, pred: impl Fn(&portcullis_tests::double::LogEntry) -> bool) -> usize {
        self.log().iter().filter(|e| pred(e)).count()
    }
}

fn expect_forbidden(
    s: &Stack,
    kubeconfig: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    message: &str,
) -> Result<()> {
    let (ok, stdout, stderr) = s.kubectl_as(kubeconfig, args, env)?;
    ensure!(
        !ok,
        "kubectl {args:?} should have been refused; stdout:\n{stdout}"
    );
    ensure!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "kubectl {args:?}: expected a Forbidden Status, got:\n{stderr}\ngateway:\n{}",
        tail(&s.gateway.log(), 20)
    );
    ensure!(
        stderr.contains(message),
        "kubectl {args:?}: expected {message:?} in:\n{stderr}"
    );
    Ok(())
}

#[test]
fn namespace_scopes_deny_presets_and_approval_rules() -> Result<()> {
    let s = Stack::start_with(POLICY)?;
    let agent = s.kubeconfig_for("agent", &["agents"])?;

    // Inside its namespace the agent reads and writes.
    let (ok, pods, err) = s.kubectl_as(&agent, &["-n", "dev", "get", "pods"], &[])?;
    ensure!(ok && pods.contains("agent-0"), "{pods}{err}");
    let (ok, out, err) = s.kubectl_as(
        &agent,
        &[
            "-n",
            "dev",
            "create",
            "configmap",
            "agent-notes",
            "--from-literal=a=b",
        ],
        &[],
    )?;
    ensure!(ok && out.contains("created"), "{out}{err}");

    // Outside it: another namespace, and lists across all namespaces, are refused, not filtered.
    let before = s.log().len();
    expect_forbidden(&s, &agent, &["-n", "prod", "get", "pods"], &[], "dev")?;
    expect_forbidden(&s, &agent, &["get", "pods", "-A"], &[], "dev")?;
    expect_forbidden(
        &s,
        &agent,
        &["-n", "prod", "delete", "pod", "api-0"],
        &[],
        "dev",
    )?;
    // Deny presets beat the allow rule inside its own namespace.
    expect_forbidden(
        &s,
        &agent,
        &["-n", "dev", "get", "secrets"],
        &[],
        "agents may not touch secrets",
    )?;
    for env in [
        &[][..],
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")][..],
    ] {
        expect_forbidden(
            &s,
            &agent,
            &["-n", "dev", "exec", "agent-0", "--", "echo", "hi"],
            env,
            "agents may not exec into pods",
        )?;
    }
    let after = s.log();
    let leaked: Vec<_> = after[before..]
        .iter()
        .filter(|e| {
            e.path.contains("/namespaces/prod")
                || e.path.contains("/secrets")
                || e.path.ends_with("/exec")
                || e.path == "/api/v1/pods"
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "refused requests were forwarded: {leaked:?}"
    );

    // `kubectl delete namespace prod` by an unscoped automation identity that may otherwise do
    // everything: the no-destructive preset's message, and the namespace survives.
    let operator = s.kubeconfig_for("operator-bot", &["agents"])?;
    expect_forbidden(
        &s,
        &operator,
        &["delete", "namespace", "prod"],
        &[],
        "deleting namespaces, CRDs, volumes or nodes is not allowed",
    )?;
    ensure!(
        s.forwarded(|e| e.method == "DELETE" && e.path == "/api/v1/namespaces/prod") == 0,
        "the namespace delete reached the API server"
    );
    let (ok, out, err) = s.kubectl_as(&operator, &["get", "namespace", "prod"], &[])?;
    ensure!(ok && out.contains("prod"), "{out}{err}");

    // An approve rule: until approvals land, a 403 that says approval is required and names it.
    let oncall = s.kubeconfig_for("dana", &["oncall"])?;
    let (ok, out, err) = s.kubectl_as(&oncall, &["-n", "default", "get", "pods"], &[])?;
    ensure!(ok && out.contains("web-0"), "{out}{err}");
    expect_forbidden(
        &s,
        &oncall,
        &["-n", "default", "exec", "web-0", "--", "id"],
        &[],
        "oncall-exec-needs-approval",
    )?;
    let (_, _, err) = s.kubectl_as(
        &oncall,
        &["-n", "default", "exec", "web-0", "--", "id"],
        &[],
    )?;
    ensure!(err.to_lowercase().contains("approval"), "{err}");

    // Discovery and self-review work for anyone authenticated, even with no rule of their own.
    let nobody = s.kubeconfig_for("nobody", &[])?;
    let (ok, out, err) = s.kubectl_as(&nobody, &["auth", "whoami", "-o", "json"], &[])?;
    ensure!(ok && out.contains("oidc:nobody"), "{out}{err}");
    let (ok, out, err) = s.kubectl_as(&nobody, &["api-resources"], &[])?;
    ensure!(ok && out.contains("pods"), "{out}{err}");
    expect_forbidden(&s, &nobody, &["get", "pods"], &[], "")?;

    ensure!(
        s.forwarded(|e| e.path.ends_with("/exec")) == 0,
        "an exec reached the API server"
    );
    Ok(())
}

/// The admin port's reload counter for `result`.
fn reloads(s: &Stack, result: &str) -> Result<u64> {
    let (code, body) = harness::http_get_plain(s.gateway.admin, "/metrics")?;
    ensure!(code == 200, "metrics: {code}");
    let needle = format!("portcullis_policy_reloads_total{{result=\"{result}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn wait_for_reload(s: &Stack, result: &str, above: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reloads(s, result)? > above {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "no {result} policy reload within 20 s; gateway log:\n{}",
        tail(&s.gateway.log(), 20)
    )
}

const RELOAD_CLIENT: &str = r#"
import http.client, json, ssl, sys
host, port, ca, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection(host, port, context=ctx)
for line in sys.stdin:
    path = line.strip()
    conn.request("GET", path, headers={"Authorization": "Bearer " + token})
    resp = conn.getresponse()
    body = resp.read()
    print(json.dumps({"code": resp.status, "body": body.decode("utf-8", "replace")}), flush=True)
"#;

#[test]
fn policy_file_hot_reload_applies_to_connected_clients_and_rejects_bad_files() -> Result<()> {
    let dir = TempDir::new("portcullis-e2e-reload")?;
    let rules = dir.path().join("rules.yaml");
    let allow_configmaps = "rules:\n  - name: read-configmaps\n    subjects: {users: [\"oidc:alice\"]}\n    verbs: [get, list]\n    resources: [configmaps]\n    action: allow\n";
    std::fs::write(&rules, allow_configmaps)?;
    let extra = format!("policy:\n  files: [{}]\n", rules.display());
    let s = Stack::start_in(dir, &extra, "")?;

    // One client, one connection for the whole test.
    let python = harness::python()?;
    let script = s.dir.path().join("reload_client.py");
    std::fs::write(&script, RELOAD_CLIENT)?;
    let url = s.gateway.url.trim_start_matches("https://").to_string();
    let (host, port) = url.rsplit_once(':').context("host:port")?;
    let mut child = Command::new(&python)
        .arg(&script)
        .args([host, port])
        .arg(&s.gateway_ca)
        .arg(&s.client_token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let lines = super::spawn_lines(&mut child)?;
    let mut ask = |path: &str| -> Result<u64> {
        use std::io::Write as _;
        writeln!(stdin, "{path}")?;
        let line = super::wait_for_line(&lines, Duration::from_secs(20), |_| true)?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        v["code"].as_u64().context("code")
    };
    let run = (|| -> Result<()> {
        let cms = "/api/v1/namespaces/default/configmaps";
        let pods = "/api/v1/namespaces/default/pods";
        ensure!(ask(cms)? == 200, "configmaps should be readable");
        ensure!(ask(pods)? == 403, "pods are not in the policy yet");

        let ok_before = reloads(&s, "success")?;
        std::fs::write(
            &rules,
            allow_configmaps.replace("resources: [configmaps]", "resources: [pods]"),
        )?;
        wait_for_reload(&s, "success", ok_before)?;
        ensure!(ask(pods)? == 200, "the new rule should allow pods");
        ensure!(ask(cms)? == 403, "the new rule no longer allows configmaps");

        let failed_before = reloads(&s, "failure")?;
        std::fs::write(
            &rules,
            "rules:\n  - name: broken\n    subjects: {users: [\"*\"]}\n    verbs: [\"*\"]\n    resources: [\"*\"]\n    action: allow-everything\n",
        )?;
        wait_for_reload(&s, "failure", failed_before)?;
        ensure!(ask(pods)? == 200, "the last good policy stays in force");
        ensure!(
            ask(cms)? == 403,
            "the invalid file must not have taken effect"
        );
        let log = s.gateway.log();
        ensure!(
            log.contains("rules.yaml") && log.contains("line"),
            "the rejected file should be reported with its line:\n{}",
            tail(&log, 20)
        );
        Ok(())
    })();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    run
}
