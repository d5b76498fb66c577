//! End-to-end: real MCP servers (the tools an AI agent calls) act through the gateway against the
//! API double. `kubernetes-mcp-server` (client-go, Table and protobuf) and `mcp-server-kubernetes`
//! (shells out to kubectl) are started over stdio by a small Python MCP client (PyPI `mcp`), each
//! with a kubeconfig whose only credential is the agent's token for the gateway.
//!
//! The double's request log is the witness: every call must arrive with the gateway's credential,
//! never the agent's token, and impersonate exactly the agent's mapped identity. These tests must
//! never leave an MCP server, its kubectl children or the driver running: each driver runs in its
//! own process group, which is killed when the run ends, on timeout, or on panic.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use portcullis_tests::double::{LogEntry, SEED_SECRET_PASSWORD};
use portcullis_tests::harness;
use serde_json::{json, Value};

use super::{impersonated_users, sha256_hex, tail, Stack, GATEWAY_UPSTREAM_TOKEN};

/// Upper bound for one driver run, MCP handshake and all tool calls included.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);
/// The driver's own deadlines sit below `DRIVER_TIMEOUT`, so a stuck call is reported by Python
/// with its traceback rather than cut off by the kill.
const DRIVER_SESSION_SECONDS: u64 = 100;
const DRIVER_CALL_SECONDS: u64 = 45;

/// An MCP client over stdio: starts the server described by the plan (argv[1], JSON), lists its
/// tools, makes the calls in order and prints one JSON object with the text of every result.
/// A tool-level error is data (`is_error`), so the test can say which call failed and why.
const PYTHON_MCP_DRIVER: &str = r#"
import json, sys
import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

async def main(plan):
    params = StdioServerParameters(
        command=plan["command"], args=plan["args"], env=plan["env"], cwd=plan["cwd"])
    out = {"tools": [], "results": []}
    with anyio.fail_after(plan["session_seconds"]):
        async with stdio_client(params, errlog=sys.stderr) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=plan["call_seconds"]) as session:
                await session.initialize()
                out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                for name, arguments in plan["calls"]:
                    result = await session.call_tool(name, arguments)
                    text = "\n".join(
                        c.text for c in result.content if getattr(c, "type", None) == "text")
                    out["results"].append(
                        {"tool": name, "is_error": bool(result.is_error), "text": text})
    print(json.dumps(out))

with open(sys.argv[1]) as f:
    anyio.run(main, json.load(f))
"#;

/// How to start one MCP server.
struct McpServer {
    label: &'static str,
    command: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// What one tool call returned.
#[derive(Debug)]
struct ToolResult {
    tool: String,
    is_error: bool,
    text: String,
}

/// One driver run: the tools the server offered and the results of the calls, in call order.
#[derive(Debug)]
struct McpRun {
    tools: Vec<String>,
    results: Vec<ToolResult>,
}

impl McpRun {
    /// The `index`th result, which must be a success from `tool`.
    fn ok(&self, index: usize, tool: &str) -> Result<&str> {
        let r = self
            .results
            .get(index)
            .with_context(|| format!("no result #{index} ({tool}): {self:?}"))?;
        ensure!(
            r.tool == tool,
            "result #{index} is from {}, not {tool}",
            r.tool
        );
        // pingora 0.9 can tear an upgraded tunnel down right after the 101 when the upstream
        // answers fast (cloudflare/pingora#946); name it, so the failure is not mistaken for a
        // problem of the MCP server or the double.
        let hint = if is_upgrade_teardown(&r.text) {
            " (the gateway dropped the upgraded connection: see cloudflare/pingora#946)"
        } else {
            ""
        };
        ensure!(!r.is_error, "{tool} failed: {}{hint}", r.text);
        Ok(&r.text)
    }
}

/// Kills a whole process group when dropped: the driver, the MCP server it started and anything
/// that server started (kubectl), however the test ends.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // `kill` from the command line keeps this crate free of libc bindings; a group that
        // already exited makes it fail harmlessly.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the driver against `server` with `calls` (tool name, arguments), bounded by
/// `DRIVER_TIMEOUT`. `workdir` holds the plan and serves as the server's HOME and cwd, so no
/// kubeconfig or cache outside the test is read or written.
/// Runs the calls in one driver run, then repeats (alone, at most twice) any call that failed
/// with the signature of cloudflare/pingora#946: the upgraded connection dropped at the 101
/// (`close 1006`, or a bare `EOF` before the client read the 101), saying so on stderr, as
/// `Stack::kubectl_upgrade` does for kubectl. Every other failure stays for the test to judge.
fn drive(workdir: &Path, server: &McpServer, calls: &[(&str, Value)]) -> Result<McpRun> {
    let mut run = drive_once(workdir, server, calls)?;
    for (index, (tool, args)) in calls.iter().enumerate() {
        for attempt in 1..=2 {
            let Some(slot) = run.results.get_mut(index) else {
                break;
            };
            if !(slot.is_error && is_upgrade_teardown(&slot.text)) {
                break;
            }
            eprintln!(
                "{}: {tool} lost its upgraded connection ({}; pingora#946): retry {attempt}",
                server.label, slot.text
            );
            let again = drive_once(
                &workdir.join(format!("retry-{index}-{attempt}")),
                server,
                &[(*tool, args.clone())],
            )?;
            if let Some(result) = again.results.into_iter().next() {
                *slot = result;
            }
        }
    }
    Ok(run)
}

fn is_upgrade_teardown(text: &str) -> bool {
    text.contains("close 1006") || text.trim_end().ends_with(": EOF")
}

/// A retried teardown must not hide a session the gateway ended itself (it logs why).
fn ensure_no_session_was_ended_by_the_recorder(s: &Stack) -> Result<()> {
    let log = s.gateway.log();
    ensure!(
        !log.contains("ending a session that cannot be recorded"),
        "the gateway ended a session it could not record:\n{log}"
    );
    Ok(())
}

fn drive_once(workdir: &Path, server: &McpServer, calls: &[(&str, Value)]) -> Result<McpRun> {
    std::fs::create_dir_all(workdir)?;
    let script = workdir.join("mcp_driver.py");
    std::fs::write(&script, PYTHON_MCP_DRIVER)?;
    let mut env = serde_json::Map::new();
    env.insert("HOME".into(), workdir.display().to_string().into());
    for (name, value) in &server.env {
        env.insert((*name).into(), value.clone().into());
    }
    let plan = json!({
        "command": server.command,
        "args": server.args,
        "env": env,
        "cwd": workdir,
        "session_seconds": DRIVER_SESSION_SECONDS,
        "call_seconds": DRIVER_CALL_SECONDS,
        "calls": calls.iter().map(|(tool, args)| json!([tool, args])).collect::<Vec<_>>(),
    });
    let plan_path = workdir.join("mcp_plan.json");
    std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan)?)?;

    let child = Command::new(harness::python()?)
        .arg(&script)
        .arg(&plan_path)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the Python MCP driver")?;
    let _group = ProcessGroup(child.id());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(DRIVER_TIMEOUT) {
        Ok(out) => out?,
        Err(_) => bail!(
            "{} driver did not finish in {DRIVER_TIMEOUT:?}",
            server.label
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} driver failed ({}):\n{}",
        server.label,
        out.status,
        tail(&stderr, 40)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} driver printed no JSON: {}\n{}",
            server.label,
            String::from_utf8_lossy(&out.stdout),
            tail(&stderr, 20)
        )
    })?;
    let tools = parsed["tools"]
        .as_array()
        .context("tools")?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    let results = parsed["results"]
        .as_array()
        .context("results")?
        .iter()
        .map(|r| ToolResult {
            tool: r["tool"].as_str().unwrap_or_default().to_string(),
            is_error: r["is_error"].as_bool().unwrap_or(true),
            text: r["text"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    Ok(McpRun { tools, results })
}

/// `kubernetes-mcp-server` (client-go) with `kubeconfig` as its only cluster access.
fn k8s_mcp_server(kubeconfig: &Path) -> Result<McpServer> {
    Ok(McpServer {
        label: "kubernetes-mcp-server",
        command: harness::peer(
            "PORTCULLIS_K8S_MCP_SERVER",
            ".peers/npm-mcp/node_modules/kubernetes-mcp-server-linux-amd64/bin/kubernetes-mcp-server-linux-amd64",
        )?,
        args: vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--log-file".into(),
            "stderr".into(),
        ],
        env: vec![],
    })
}

/// `mcp-server-kubernetes` (node), which runs the pinned kubectl from PATH for every tool.
fn mcp_server_kubernetes(kubeconfig: &Path) -> Result<McpServer> {
    let entry = harness::peer(
        "PORTCULLIS_MCP_SERVER_KUBERNETES",
        ".peers/npm-mcp/node_modules/mcp-server-kubernetes/dist/index.js",
    )?;
    let kubectl = harness::kubectl()?;
    let peers_bin = kubectl.parent().context("kubectl has a directory")?;
    let mut path = vec![peers_bin.to_path_buf()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(McpServer {
        label: "mcp-server-kubernetes",
        command: PathBuf::from("node"),
        args: vec![entry.display().to_string()],
        env: vec![
            ("PATH", std::env::join_paths(path)?.to_string_lossy().into()),
            ("KUBECONFIG_PATH", kubeconfig.display().to_string()),
            // The server masks Secret data itself unless told not to; the test wants to see
            // that the real object came back through the gateway.
            ("MASK_SECRETS", "false".into()),
        ],
    })
}

/// Every request the double logged from `from` on carried the gateway's own credential (never
/// `agent_token`) and impersonated exactly `user`; returns those entries.
fn acted_as(s: &Stack, from: usize, agent_token: &str, user: &str) -> Result<Vec<LogEntry>> {
    let ours = sha256_hex(GATEWAY_UPSTREAM_TOKEN);
    let agents = sha256_hex(agent_token);
    ensure!(ours != agents);
    let entries: Vec<LogEntry> = s.log().into_iter().skip(from).collect();
    ensure!(!entries.is_empty(), "the double saw no requests");
    for entry in &entries {
        ensure!(
            entry.token_sha256.as_deref() == Some(ours.as_str()),
            "request without the gateway's credential: {entry:?}"
        );
        ensure!(
            impersonated_users(entry) == vec![user],
            "request not impersonating exactly {user}: {entry:?}"
        );
        ensure!(
            entry.user.as_deref() == Some(user),
            "the double did not act as {user}: {entry:?}"
        );
    }
    Ok(entries)
}

/// The first logged request with `method` on `path`, or an error listing what was seen.
fn find<'a>(entries: &'a [LogEntry], method: &str, path: &str) -> Result<&'a LogEntry> {
    entries
        .iter()
        .find(|e| e.method == method && e.path == path)
        .with_context(|| {
            let seen: Vec<String> = entries
                .iter()
                .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
                .collect();
            format!("no {method} {path} reached the double; it saw: {seen:#?}")
        })
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn kubernetes_mcp_server_tools_act_as_the_agent() -> Result<()> {
    let s = Stack::start()?;
    // A pod of the agent's own making to delete, created through the gateway too.
    s.kubectl(&[
        "run",
        "mcp-doomed",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    let before = s.log().len();

    let server = k8s_mcp_server(&s.kubeconfig)?;
    let run = drive(
        &s.dir.path().join("k8s-mcp"),
        &server,
        &[
            ("pods_list", json!({})),
            (
                "resources_get",
                json!({"apiVersion": "v1", "kind": "Secret", "namespace": "default", "name": "db-credentials"}),
            ),
            ("pods_log", json!({"namespace": "default", "name": "web-0"})),
            (
                "pods_exec",
                json!({"namespace": "default", "name": "web-0", "command": ["whoami"]}),
            ),
            (
                "pods_delete",
                json!({"namespace": "default", "name": "mcp-doomed"}),
            ),
        ],
    )?;
    ensure_no_session_was_ended_by_the_recorder(&s)?;
    for tool in [
        "pods_list",
        "resources_get",
        "pods_log",
        "pods_exec",
        "pods_delete",
    ] {
        ensure!(
            run.tools.iter().any(|t| t == tool),
            "no {tool}: {:?}",
            run.tools
        );
    }

    let pods = run.ok(0, "pods_list")?;
    for pod in ["web-0", "agent-0", "db-0", "mcp-doomed"] {
        ensure!(pods.contains(pod), "pods_list lacks {pod}:\n{pods}");
    }
    // The agent sees which keys the secret has, never a value: the gateway masked them.
    let secret = run.ok(1, "resources_get")?;
    ensure!(
        secret.contains("db-credentials")
            && secret.contains("password")
            && secret.contains(portcullis::mask::MARKER_BASE64)
            && !secret.contains(&base64(SEED_SECRET_PASSWORD))
            && !secret.contains(SEED_SECRET_PASSWORD),
        "resources_get did not return the masked secret:\n{secret}"
    );
    let log = run.ok(2, "pods_log")?;
    ensure!(log.lines().count() >= 3, "pods_log:\n{log}");
    let whoami = run.ok(3, "pods_exec")?;
    ensure!(
        whoami.trim() == "oidc:alice",
        "pods_exec ran as {whoami:?}, not the agent"
    );
    let deleted = run.ok(4, "pods_delete")?;
    ensure!(deleted.contains("deleted"), "pods_delete: {deleted}");

    let entries = acted_as(&s, before, &s.client_token, "oidc:alice")?;
    // client-go asks for Table output: the gateway passes the negotiation through untouched.
    let list = find(&entries, "GET", "/api/v1/pods")?;
    ensure!(
        list.accept
            .as_deref()
            .is_some_and(|a| a.contains("as=Table")),
        "pods_list did not negotiate a Table: {list:?}"
    );
    find(
        &entries,
        "GET",
        "/api/v1/namespaces/default/secrets/db-credentials",
    )?;
    find(&entries, "GET", "/api/v1/namespaces/default/pods/web-0/log")?;
    let exec = entries
        .iter()
        .find(|e| e.path == "/api/v1/namespaces/default/pods/web-0/exec")
        .context("pods_exec never reached the double")?;
    ensure!(
        exec.upgrade.is_some() && exec.status == 101,
        "exec was not streamed: {exec:?}"
    );
    let delete = find(
        &entries,
        "DELETE",
        "/api/v1/namespaces/default/pods/mcp-doomed",
    )?;
    ensure!(delete.status == 200, "delete answered {}", delete.status);

    let gone = s.kubectl_output(&["get", "pod", "mcp-doomed"], &[], None)?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "mcp-doomed survived pods_delete"
    );
    s.assert_only_gateway_credential_upstream()
}

#[test]
fn mcp_server_kubernetes_runs_kubectl_as_the_agent() -> Result<()> {
    let s = Stack::start()?;
    let before = s.log().len();
    let server = mcp_server_kubernetes(&s.kubeconfig)?;
    let run = drive(
        &s.dir.path().join("mcp-server-kubernetes"),
        &server,
        &[
            (
                "kubectl_get",
                json!({"resourceType": "pods", "namespace": "default", "output": "json"}),
            ),
            (
                "kubectl_get",
                json!({"resourceType": "secrets", "name": "db-credentials", "namespace": "default", "output": "json"}),
            ),
        ],
    )?;
    ensure_no_session_was_ended_by_the_recorder(&s)?;
    ensure!(
        run.tools.iter().any(|t| t == "kubectl_get"),
        "{:?}",
        run.tools
    );

    let pods: Value = serde_json::from_str(run.ok(0, "kubectl_get")?)
        .context("kubectl_get pods did not return JSON")?;
    // The server condenses a list to name/namespace/kind/status per item.
    let items = pods["items"].as_array().context("items")?;
    ensure!(
        items
            .iter()
            .any(|p| p["name"] == "web-0" && p["namespace"] == "default"),
        "kubectl_get pods: {pods}"
    );
    let secret: Value = serde_json::from_str(run.ok(1, "kubectl_get")?)
        .context("kubectl_get secret did not return JSON")?;
    ensure!(
        secret["data"]["password"] == portcullis::mask::MARKER_BASE64
            && !secret.to_string().contains(&base64(SEED_SECRET_PASSWORD)),
        "kubectl_get secret is not masked: {secret}"
    );

    let entries = acted_as(&s, before, &s.client_token, "oidc:alice")?;
    find(&entries, "GET", "/api/v1/namespaces/default/pods")?;
    find(
        &entries,
        "GET",
        "/api/v1/namespaces/default/secrets/db-credentials",
    )?;
    s.assert_only_gateway_credential_upstream()
}

#[test]
fn two_agents_in_one_run_keep_their_own_identities() -> Result<()> {
    let s = Stack::start()?;
    let bob_token = s.issuer.mint("bob", &["ops"], 3600)?;
    let bob_kubeconfig = s.dir.path().join("bob-kubeconfig");
    harness::write_kubeconfig(&bob_kubeconfig, &s.gateway.url, &s.gateway_ca, &bob_token)?;
    let before = s.log().len();

    // Both agents at once through one gateway: each reads an object only it asks for, so the
    // log can attribute every request.
    let alice = k8s_mcp_server(&s.kubeconfig)?;
    let bob = k8s_mcp_server(&bob_kubeconfig)?;
    let alice_dir = s.dir.path().join("alice-mcp");
    let bob_dir = s.dir.path().join("bob-mcp");
    let alice_calls = [
        (
            "resources_get",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "default", "name": "app-config"}),
        ),
        (
            "pods_exec",
            json!({"namespace": "default", "name": "web-0", "command": ["whoami"]}),
        ),
    ];
    let bob_calls = [
        (
            "resources_get",
            json!({"apiVersion": "v1", "kind": "Secret", "namespace": "default", "name": "db-credentials"}),
        ),
        (
            "pods_exec",
            json!({"namespace": "default", "name": "web-0", "command": ["whoami"]}),
        ),
    ];
    let (alice_run, bob_run) = std::thread::scope(|scope| {
        let a = scope.spawn(|| drive(&alice_dir, &alice, &alice_calls));
        let b = scope.spawn(|| drive(&bob_dir, &bob, &bob_calls));
        (a.join(), b.join())
    });
    let alice_run = alice_run.map_err(|_| anyhow::anyhow!("alice's driver thread panicked"))??;
    let bob_run = bob_run.map_err(|_| anyhow::anyhow!("bob's driver thread panicked"))??;
    ensure_no_session_was_ended_by_the_recorder(&s)?;

    ensure!(run_whoami(&alice_run)? == "oidc:alice");
    ensure!(run_whoami(&bob_run)? == "oidc:bob");
    ensure!(alice_run.ok(0, "resources_get")?.contains("app-config"));
    ensure!(bob_run.ok(0, "resources_get")?.contains("db-credentials"));

    let entries: Vec<LogEntry> = s.log().into_iter().skip(before).collect();
    let ours = sha256_hex(GATEWAY_UPSTREAM_TOKEN);
    for entry in &entries {
        ensure!(
            entry.token_sha256.as_deref() == Some(ours.as_str()),
            "request without the gateway's credential: {entry:?}"
        );
        let users = impersonated_users(entry);
        ensure!(
            users == vec!["oidc:alice"] || users == vec!["oidc:bob"],
            "request not impersonating exactly one agent: {entry:?}"
        );
        // Groups travel with their user: bob's requests never carry alice's groups, and back.
        let groups = impersonated_groups(entry);
        if users == vec!["oidc:bob"] {
            ensure!(groups == vec!["oidc:ops"], "bob's groups: {entry:?}");
        } else {
            ensure!(
                groups == vec!["oidc:devs", "oidc:agents"],
                "alice's groups: {entry:?}"
            );
        }
    }
    let config = find(
        &entries,
        "GET",
        "/api/v1/namespaces/default/configmaps/app-config",
    )?;
    ensure!(
        config.user.as_deref() == Some("oidc:alice"),
        "alice's read ran as {:?}",
        config.user
    );
    let secret = find(
        &entries,
        "GET",
        "/api/v1/namespaces/default/secrets/db-credentials",
    )?;
    ensure!(
        secret.user.as_deref() == Some("oidc:bob"),
        "bob's read ran as {:?}",
        secret.user
    );
    for user in ["oidc:alice", "oidc:bob"] {
        ensure!(
            entries
                .iter()
                .any(|e| e.path.ends_with("/pods/web-0/exec") && e.user.as_deref() == Some(user)),
            "no exec as {user} reached the double"
        );
    }
    ensure!(sha256_hex(&bob_token) != sha256_hex(&s.client_token));
    ensure!(!entries.iter().any(|e| {
        e.token_sha256.as_deref() == Some(sha256_hex(&bob_token).as_str())
            || e.token_sha256.as_deref() == Some(sha256_hex(&s.client_token).as_str())
    }));
    Ok(())
}

fn run_whoami(run: &McpRun) -> Result<String> {
    Ok(run.ok(1, "pods_exec")?.trim().to_string())
}

fn impersonated_groups(entry: &LogEntry) -> Vec<&str> {
    entry
        .headers
        .iter()
        .filter(|h| h.name == "impersonate-group")
        .map(|h| h.value.as_str())
        .collect()
}
