//! Recording end to end (issue #5 section 4): exec and attach sessions over WebSocket and SPDY
//! (and an interactive terminal driven by tmux) are recorded frame by frame, replay and export
//! as asciicast; every API call has an audit record and the chain verifies; and the audit log
//! survives `kill -9` under a load of mutating requests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use portcullis_tests::harness::{self, GatewayProcess};
use serde_json::Value;

use super::{interactive_exec, Stack};

/// Runs `portcullis <args>`; returns (success, stdout, stderr).
fn portcullis(args: &[&str]) -> Result<(bool, String, String)> {
    let out: Output = harness::run_portcullis(args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

use harness::json_lines;

fn config_path(s: &Stack) -> PathBuf {
    s.dir.path().join("portcullis.yaml")
}

/// `sessions list --output json` of a stopped stack's gateway.
pub(crate) fn sessions_of(s: &Stack) -> Result<Vec<Value>> {
    let config = config_path(s);
    let (ok, out, err) = portcullis(&[
        "sessions",
        "list",
        "--config",
        config.to_str().context("utf-8")?,
        "--output",
        "json",
    ])?;
    ensure!(ok, "sessions list: {err}");
    json_lines(&out)
}

/// `audit verify` of a stopped stack's store passes and says the tail is signed (the gateway
/// signs a checkpoint of its newest record when it stops on SIGTERM or SIGINT).
fn ensure_tail_signed(s: &Stack, after: &str) -> Result<()> {
    let config = config_path(s);
    let (ok, out, err) = portcullis(&[
        "audit",
        "verify",
        "--config",
        config.to_str().context("utf-8")?,
    ])?;
    ensure!(
        ok && out.contains("OK") && out.contains("the tail is signed"),
        "audit verify after {after}: {out}{err}"
    );
    Ok(())
}

/// One asciicast event: (time, code, data).
type CastEvent = (f64, String, String);

/// The asciicast's header and its events.
fn asciicast(text: &str) -> Result<(Value, Vec<CastEvent>)> {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().context("empty asciicast")?)?;
    let mut events = Vec::new();
    for line in lines {
        let v: Value = serde_json::from_str(line)?;
        let e = v.as_array().context("event is not an array")?;
        ensure!(e.len() == 3, "event {v}");
        events.push((
            e[0].as_f64().context("time")?,
            e[1].as_str().context("code")?.to_string(),
            e[2].as_str().context("data")?.to_string(),
        ));
    }
    Ok((header, events))
}

fn joined(events: &[CastEvent], code: &str) -> String {
    events
        .iter()
        .filter(|e| e.1 == code)
        .map(|e| e.2.as_str())
        .collect()
}

/// The newest session matching `pred` (a retried exec leaves its torn-down attempt before it).
fn session_with(sessions: &[Value], pred: impl Fn(&Value) -> bool) -> Result<&Value> {
    sessions
        .iter()
        .rev()
        .find(|s| pred(s))
        .with_context(|| format!("no such session among {sessions:#?}"))
}

fn export(config: &Path, session: &Value) -> Result<(Value, Vec<CastEvent>)> {
    let id = session["session_id"].as_str().context("session_id")?;
    let (ok, out, err) = portcullis(&[
        "export",
        id,
        "--config",
        config.to_str().context("utf-8")?,
        "--format",
        "asciicast",
    ])?;
    ensure!(ok, "export {id}: {err}");
    asciicast(&out)
}

#[test]
fn sessions_are_recorded_replayable_and_every_call_is_audited() -> Result<()> {
    let mut s = Stack::start()?;
    let payload = "typed line one\ntyped line two\n";
    for (label, env) in [
        ("websocket", vec![]),
        ("spdy", vec![("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")]),
    ] {
        let out =
            s.kubectl_upgrade(&["exec", "web-0", "--", "echo", "hello", label], &env, None)?;
        ensure!(out.status.success(), "{label} echo");
        let out = s.kubectl_upgrade(&["exec", "web-0", "--", "sh", "-c", "exit 3"], &env, None)?;
        ensure!(out.status.code() == Some(3), "{label} exit 3");
        let out = s.kubectl_upgrade(&["exec", "-i", "web-0", "--", "cat"], &env, Some(payload))?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == payload,
            "{label} cat"
        );
        let out = s.kubectl_upgrade(&["attach", "-i", "web-0"], &env, Some("whoami\nexit 0\n"))?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("oidc:alice"),
            "{label} attach"
        );
    }
    interactive_exec(&s)?;
    s.kubectl(&["create", "configmap", "audited", "--from-literal=a=b"])?;
    s.kubectl(&["delete", "configmap", "audited"])?;

    // The store belongs to the gateway while it runs (sled locks it): stop it first.
    s.gateway.terminate(Duration::from_secs(10))?;
    let config = config_path(&s);
    let cfg = config.to_str().context("utf-8")?;

    let sessions = sessions_of(&s)?;
    let command_is = |s: &Value, cmd: &[&str]| {
        s["command"].as_array().is_some_and(|c| {
            c.iter()
                .map(|x| x.as_str().unwrap_or(""))
                .eq(cmd.iter().copied())
        })
    };
    for (label, protocol) in [("websocket", "websocket/v5"), ("spdy", "spdy/3.1")] {
        let echo = session_with(&sessions, |s| command_is(s, &["echo", "hello", label]))?;
        ensure!(
            echo["protocol"] == protocol
                && echo["exit_code"] == 0
                && echo["user"] == "oidc:alice"
                && echo["pod"] == "web-0"
                && echo["kind"] == "exec",
            "{echo}"
        );
        let (header, events) = export(&config, echo)?;
        ensure!(header["version"] == 2, "{header}");
        ensure!(
            joined(&events, "o") == format!("hello {label}\n"),
            "{label}: replayed stdout differs: {events:?}"
        );

        let failed = session_with(&sessions, |s| {
            command_is(s, &["sh", "-c", "exit 3"]) && s["protocol"] == protocol
        })?;
        ensure!(failed["exit_code"] == 3, "{failed}");

        let cat = session_with(&sessions, |s| {
            command_is(s, &["cat"]) && s["protocol"] == protocol
        })?;
        ensure!(
            cat["stdin"] == true
                && cat["stdin_bytes"] == payload.len()
                && cat["stdout_bytes"] == payload.len(),
            "{cat}"
        );
        let (_, events) = export(&config, cat)?;
        // Keystrokes are recorded as input events: they prove intent.
        ensure!(joined(&events, "i") == payload, "{label} stdin: {events:?}");
        ensure!(
            joined(&events, "o") == payload,
            "{label} stdout: {events:?}"
        );
        ensure!(
            events.windows(2).all(|w| w[0].0 <= w[1].0),
            "event times go backwards"
        );

        let attach = session_with(&sessions, |s| {
            s["kind"] == "attach" && s["protocol"] == protocol
        })?;
        let (_, events) = export(&config, attach)?;
        ensure!(joined(&events, "i") == "whoami\nexit 0\n", "{events:?}");
        ensure!(joined(&events, "o").contains("oidc:alice"), "{events:?}");
    }
    let tty = session_with(&sessions, |s| s["tty"] == true && command_is(s, &["sh"]))?;
    let (header, events) = export(&config, tty)?;
    // The terminal's size (tmux's 100x20 pane, sent on the resize channel) sizes the player.
    ensure!(
        header["width"] == 100 && header["height"] == 20,
        "the terminal's size was not recorded: {header}"
    );
    ensure!(joined(&events, "i").contains("whoami\r"), "{events:?}");
    ensure!(joined(&events, "o").contains("oidc:alice"), "{events:?}");
    let id = tty["session_id"].as_str().context("id")?;
    let (ok, out, err) = portcullis(&["replay", id, "--config", cfg, "--speed", "50"])?;
    ensure!(ok && out.contains("oidc:alice"), "replay: {out}{err}");

    // SIGTERM: the records of the last requests are signed as well.
    ensure_tail_signed(&s, "SIGTERM")?;

    // Every request the API server saw has an allowed audit record with the same path and the
    // status the upstream answered.
    let (ok, out, err) = portcullis(&["audit", "query", "--config", cfg, "--output", "json"])?;
    ensure!(ok, "audit query: {err}");
    let records = json_lines(&out)?;
    let audited: BTreeSet<(String, String)> = records
        .iter()
        .filter(|r| r["decision"] == "allow" && r["completion_seq"].is_u64())
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("").to_string(),
                r["user"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let forwarded = s.log();
    ensure!(
        forwarded.len() > 20,
        "the double saw {} requests",
        forwarded.len()
    );
    for entry in &forwarded {
        ensure!(
            audited.contains(&(entry.path.clone(), "oidc:alice".to_string())),
            "no audit record for {} {}",
            entry.method,
            entry.path
        );
    }
    let create = records
        .iter()
        .find(|r| r["verb"] == "create" && r["resource"] == "configmaps")
        .context("no create record")?;
    ensure!(create["status"] == 201, "{create}");
    ensure!(create["impersonated_user"] == "oidc:alice", "{create}");
    ensure!(
        !out.contains(&s.client_token),
        "a token reached the audit log"
    );
    Ok(())
}

/// Creates then deletes configmaps in a loop until the gateway goes away (or the bound is hit);
/// prints the names whose delete the client saw succeed.
const LOAD_CLIENT: &str = r#"
import http.client, json, ssl, sys, time
host, port, ca, token, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
created, deleted = [], []
deadline = time.time() + 20
def call(conn, method, path, body=None):
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status
try:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    for i in range(400):
        if time.time() > deadline:
            break
        name = "%s-%d" % (prefix, i)
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": str(i)}})
        if call(conn, "POST", "/api/v1/namespaces/default/configmaps", body) == 201:
            created.append(name)
        if call(conn, "DELETE", "/api/v1/namespaces/default/configmaps/" + name) == 200:
            deleted.append(name)
        print("progress", i, flush=True)
except Exception as e:
    pass
print(json.dumps({"created": created, "deleted": deleted}), flush=True)
"#;

#[test]
fn acknowledged_mutations_survive_kill_9_and_the_chain_verifies() -> Result<()> {
    let mut s = Stack::start()?;
    let python = harness::python()?;
    let script = s.dir.path().join("load.py");
    std::fs::write(&script, LOAD_CLIENT)?;
    let url = s.gateway.url.trim_start_matches("https://").to_string();
    let (host, port) = url.rsplit_once(':').context("host:port")?;
    let api: std::net::SocketAddr = url.parse()?;
    let admin = s.gateway.admin;
    let config = config_path(&s);

    let mut acknowledged_deletes = Vec::new();
    let mut acknowledged_creates = 0usize;
    for round in 0..3 {
        let mut child = Command::new(&python)
            .arg(&script)
            .args([host, port])
            .arg(&s.gateway_ca)
            .arg(&s.client_token)
            .arg(format!("crash{round}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let lines = super::spawn_lines(&mut child)?;
        // Let some requests land, then crash the gateway in the middle of the load.
        let killed = super::wait_for_line(&lines, Duration::from_secs(20), |l| l == "progress 25")
            .and_then(|_| s.gateway.kill_hard());
        let result = super::wait_for_line(&lines, Duration::from_secs(30), |l| l.starts_with('{'));
        let _ = child.kill();
        let _ = child.wait();
        killed?;
        let result: Value = serde_json::from_str(&result?)?;
        let deleted: Vec<String> = result["deleted"]
            .as_array()
            .context("deleted")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        ensure!(
            deleted.len() >= 20,
            "round {round}: too little load: {result}"
        );
        acknowledged_creates += result["created"].as_array().map_or(0, Vec::len);
        acknowledged_deletes.extend(deleted);
        // Same config, same store: the restarted gateway recovers the chain tip.
        s.gateway = GatewayProcess::start(&config, api, admin)
            .with_context(|| format!("restart after kill -9 in round {round}"))?;
    }
    s.gateway.terminate(Duration::from_secs(10))?;
    let cfg = config.to_str().context("utf-8")?;
    let (ok, out, err) = portcullis(&["audit", "verify", "--config", cfg])?;
    ensure!(
        ok && out.contains("OK"),
        "audit verify after crashes: {out}{err}"
    );

    let (ok, out, err) = portcullis(&[
        "audit", "query", "--config", cfg, "--verb", "delete", "--output", "json",
    ])?;
    ensure!(ok, "{err}");
    let deleted_records: BTreeSet<String> = json_lines(&out)?
        .iter()
        .filter(|r| r["decision"] == "allow")
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<_> = acknowledged_deletes
        .iter()
        .filter(|n| !deleted_records.contains(*n))
        .collect();
    if !lost.is_empty() {
        bail!(
            "{} acknowledged deletes have no audit record after kill -9: {lost:?}",
            lost.len()
        );
    }
    let (ok, out, err) = portcullis(&[
        "audit",
        "query",
        "--config",
        cfg,
        "--verb",
        "create",
        "--resource",
        "configmaps",
        "--output",
        "json",
    ])?;
    ensure!(ok, "{err}");
    let create_records = json_lines(&out)?.len();
    ensure!(
        create_records >= acknowledged_creates,
        "{acknowledged_creates} acknowledged creates, {create_records} create records"
    );
    Ok(())
}

#[test]
fn a_session_faster_than_the_disk_is_slowed_down_not_cut() -> Result<()> {
    // 100 MB through a 256 KiB session queue (the default is 16 MiB): the recorder keeps up only
    // because the gateway slows the stream to the disk's pace (without that, the session
    // overflows and is ended).
    const BYTES: usize = 100_000_000;
    let dir = portcullis_tests::harness::TempDir::new("portcullis-e2e-backpressure")?;
    let extra = format!(
        "record:\n  path: {}\n  signing_key_file: {}\n  generate_signing_key: true\n  session_queue_max_bytes: 262144\n",
        dir.path().join("store").display(),
        dir.path().join("key.pem").display()
    );
    let mut s = Stack::start_in(dir, &extra, "")?;
    let out = s.kubectl_upgrade(
        &["exec", "web-0", "--", "stream", &BYTES.to_string()],
        &[],
        None,
    )?;
    ensure!(
        out.status.success() && out.stdout.len() == BYTES,
        "exec got {} of {BYTES} bytes ({}): {}",
        out.stdout.len(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The pauses are measured: an operator sees the disk holding streams back.
    let (code, metrics) = harness::http_get_plain(s.gateway.admin, "/metrics")?;
    let held: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_record_backpressure_seconds_total "))
        .context("no backpressure metric")?
        .trim()
        .parse()?;
    ensure!(code == 200 && held > 0.0, "streams held for {held} s");
    s.gateway.terminate(Duration::from_secs(10))?;
    let sessions = sessions_of(&s)?;
    let stream = session_with(&sessions, |s| s["command"][0] == "stream")?;
    ensure!(
        stream["stdout_bytes"] == BYTES
            && stream["overflowed"] == false
            && stream["dropped_bytes"] == 0
            && stream["exit_code"] == 0,
        "{stream}"
    );
    Ok(())
}

#[test]
fn a_metadata_only_session_is_listed_but_has_no_frames() -> Result<()> {
    // The most specific allow rule wins: exec in `default` is recorded as metadata only.
    let policy = format!(
        "{}    - name: exec-metadata-only\n      subjects: {{users: [\"*\"]}}\n      verbs: [\"create\", \"get\"]\n      resources: [\"pods/exec\"]\n      namespaces: [\"default\"]\n      action: allow\n      record: metadata\n",
        harness::ALLOW_ALL_POLICY
    );
    let mut s = Stack::start_with(&policy)?;
    let out = s.kubectl_upgrade(&["exec", "web-0", "--", "echo", "not kept"], &[], None)?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("not kept"),
        "exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ctrl-C is pingora's fast shutdown; the audit tail is signed all the same.
    let status = s.gateway.interrupt(Duration::from_secs(10))?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "the gateway did not exit cleanly on SIGINT: {status:?}"
    );
    ensure_tail_signed(&s, "SIGINT")?;
    let config = config_path(&s);
    let cfg = config.to_str().context("utf-8")?;
    let sessions = sessions_of(&s)?;
    let session = session_with(&sessions, |v| v["command"][1] == "not kept")?;
    ensure!(
        session["frames_recorded"] == false && session["frames"] == 0 && !session["end"].is_null(),
        "{session}"
    );
    let id = session["session_id"].as_str().context("session id")?;
    let (ok, out, err) = portcullis(&["replay", id, "--config", cfg])?;
    ensure!(
        !ok && out.is_empty() && err.contains("metadata only"),
        "replay of a metadata-only session: {out} / {err}"
    );
    Ok(())
}

/// Ctrl-C while an exec runs: the gateway stops at once, yet the session is closed in the store
/// (end time, the frames it had) and the audit log's tail is signed.
#[test]
fn ctrl_c_during_an_exec_closes_its_recording_and_signs_the_tail() -> Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;
    let mut s = Stack::start()?;
    let mut kubectl = None;
    // Retried only for the pingora#946 teardown (nothing echoed), like `kubectl_upgrade`.
    for attempt in 0..3 {
        let mut child = s
            .kubectl_cmd(&["exec", "-i", "web-0", "--", "cat"])?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        stdin.write_all(b"typed before ctrl-c\n")?;
        stdin.flush()?;
        if rx.recv_timeout(Duration::from_secs(20)).as_deref() == Ok("typed before ctrl-c") {
            kubectl = Some((child, stdin));
            break;
        }
        eprintln!(
            "exec -i cat echoed nothing (pingora#946?); retry {}",
            attempt + 1
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut child, stdin) = kubectl.context("exec -i cat never echoed")?;
    let status = s.gateway.interrupt(Duration::from_secs(15))?;
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    ensure!(
        status.is_some_and(|st| st.success()),
        "the gateway did not exit cleanly on SIGINT during an exec: {status:?}\n{}",
        s.gateway.log()
    );
    ensure_tail_signed(&s, "SIGINT during an exec")?;
    let config = config_path(&s);
    let sessions = sessions_of(&s)?;
    // The last `cat` is the one interrupted (earlier ones, if any, were torn-down attempts).
    let cat = session_with(&sessions, |v| v["command"][0] == "cat")?;
    ensure!(
        !cat["end"].is_null(),
        "the interrupted session has no end: {cat}"
    );
    let (_, events) = export(&config, cat)?;
    ensure!(
        joined(&events, "i").contains("typed before ctrl-c")
            && joined(&events, "o").contains("typed before ctrl-c"),
        "the interrupted session's frames: {events:?}"
    );
    Ok(())
}

/// Every file under `dir`, recursively (bounded: the store is a handful of files).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        ensure!(
            files.len() < 10_000,
            "too many files under {}",
            dir.display()
        );
        for entry in std::fs::read_dir(&next)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

#[test]
fn request_bodies_are_recorded_masked_never_with_a_secret_value() -> Result<()> {
    use base64::Engine;
    use portcullis::mask::MARKER;

    let mut s = Stack::start()?;
    // kubectl sends these two as protobuf: the Secret is masked, so its body is omitted; the
    // default profile masks nothing in ConfigMaps, so that one is kept as sent.
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=hunter2-e2e",
    ])?;
    s.kubectl(&["create", "configmap", "c1", "--from-literal=a=b"])?;
    // `create -f` sends JSON: masked and kept.
    let manifests = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Secret","metadata":{"name":"s2"},"stringData":{"password":"hunter2-json"}},
        {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c2"},"data":{"a":"b"}}]}"#;
    let out = s.kubectl_output(
        &["create", "--validate=false", "-f", "-"],
        &[],
        Some(manifests),
    )?;
    ensure!(
        out.status.success(),
        "kubectl create -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.kubectl(&[
        "patch",
        "secret",
        "s1",
        "-p",
        r#"{"stringData":{"password":"patched-e2e"}}"#,
    ])?;
    s.gateway.terminate(Duration::from_secs(10))?;

    let config = config_path(&s);
    let cfg = config.to_str().context("utf-8")?;
    let (ok, out, err) = portcullis(&["audit", "query", "--config", cfg, "--output", "json"])?;
    ensure!(ok, "audit query: {err}");
    let records = json_lines(&out)?;
    let row = |verb: &str, resource: &str, pred: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .find(|r| {
                r["verb"] == verb
                    && r["resource"] == resource
                    && r["decision"] == "allow"
                    && pred(r)
            })
            .with_context(|| format!("no {verb} {resource} record among {records:#?}"))
    };
    // The query shows a body as text when it is UTF-8 (kubectl's protobuf often is), else base64.
    let body_bytes = |r: &Value| -> Option<Vec<u8>> {
        match (
            r["request_body"].as_str(),
            r["request_body_base64"].as_str(),
        ) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            (None, None) => None,
        }
    };
    let json_body = |r: &Value| body_bytes(r).is_some_and(|b| b.starts_with(b"{"));
    let proto_body = |r: &Value| body_bytes(r).is_some_and(|b| b.starts_with(b"k8s\0"));

    let configmap = row("create", "configmaps", &json_body)?;
    let body = configmap["request_body"].as_str().unwrap_or_default();
    ensure!(
        body.contains(r#""a":"b""#) && body.contains(r#""c2""#),
        "{configmap}"
    );
    ensure!(configmap["request_body_truncated"] == false, "{configmap}");
    let configmap = row("create", "configmaps", &proto_body)?;
    let proto = body_bytes(configmap).unwrap_or_default();
    // The protobuf map entry {key: "a", value: "b"}.
    ensure!(
        proto.windows(6).any(|w| w == b"\x0a\x01a\x12\x01b"),
        "{configmap}"
    );
    for verb in ["create", "patch"] {
        let secret = row(verb, "secrets", &json_body)?;
        let body = secret["request_body"].as_str().unwrap_or_default();
        ensure!(
            body.contains(MARKER) && secret["request_body_omitted"].is_null(),
            "{verb} secret: {secret}"
        );
    }
    let omitted = row("create", "secrets", &|r| !json_body(r))?;
    ensure!(
        omitted["request_body_omitted"]
            .as_str()
            .is_some_and(|why| why.contains("not JSON"))
            && body_bytes(omitted).is_none(),
        "{omitted}"
    );

    // Byte by byte through every file of the store: no secret value, plain or base64.
    let store = s.dir.path().join("audit-store");
    ensure!(store.is_dir(), "no audit store at {}", store.display());
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let secrets = [
        "hunter2-e2e".to_string(),
        "patched-e2e".to_string(),
        "hunter2-json".to_string(),
        b64("hunter2-e2e"),
        b64("patched-e2e"),
        b64("hunter2-json"),
    ];
    let files = files_under(&store)?;
    ensure!(!files.is_empty(), "the audit store is empty");
    // The scan can see bodies at all (sled stores values uncompressed): the configmap's is there.
    let mut control_seen = false;
    for file in files {
        let bytes = std::fs::read(&file)?;
        let control = br#""a":"b""#.as_slice();
        control_seen |= bytes.windows(control.len()).any(|w| w == control);
        for secret in &secrets {
            ensure!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret value ({secret})",
                file.display()
            );
        }
    }
    ensure!(
        control_seen,
        "no store file holds the configmap body: the scan proves nothing"
    );
    Ok(())
}
