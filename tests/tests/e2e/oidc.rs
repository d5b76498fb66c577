//! End-to-end caller identity with a real OIDC provider process (`oidc-provider-mock`, plain HTTP
//! on 127.0.0.1, found by OIDC discovery) configured next to the dev issuer: kubectl `auth whoami`
//! for two users, the session and client-ip extras upstream, and every kind of bad token refused
//! with a 401 `Status` and nothing forwarded, without letting forged `kid`s hammer the provider.

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_tests::harness::{self, OidcProvider, TempDir};
use portcullis_tests::issuer::{now, DevIssuer};
use serde_json::{json, Value};

use super::Stack;

/// The provider's audience (its ID tokens' `aud` is `[client_id]`).
const CLIENT_ID: &str = "portcullis-e2e";
/// Rate limit of unknown-`kid` JWKS fetches for the provider's issuer in these tests.
const MIN_REFRESH_SECONDS: u64 = 3;

/// A [`Stack`] whose gateway also trusts the provider's issuer (keys found by OIDC discovery at
/// its well-known URL).
fn start_with_provider(provider_issuer_url: &str, dir: TempDir) -> Result<Stack> {
    let provider_issuer = format!(
        r#"    - issuer: {provider_issuer_url}
      audiences: [{CLIENT_ID}]
      username_prefix: "op:"
      groups_prefix: "op:"
      required_claims:
        email_verified: "true"
      extra_claims:
        example.com/email: email
      jwks_min_refresh_interval_seconds: {MIN_REFRESH_SECONDS}
"#
    );
    start_with_issuers(&provider_issuer, dir)
}

/// A [`Stack`] whose gateway trusts `issuers_yaml` (list items of `identity.issuers`) besides the
/// dev issuer.
fn start_with_issuers(issuers_yaml: &str, dir: TempDir) -> Result<Stack> {
    Stack::start_in(dir, "", issuers_yaml)
}

fn whoami(s: &Stack, token: &str, name: &str) -> Result<Value> {
    let cfg = s.dir.path().join(format!("kubeconfig-{name}"));
    harness::write_kubeconfig(&cfg, &s.gateway.url, &s.gateway_ca, token)?;
    let out = Command::new(harness::kubectl()?)
        .arg("--kubeconfig")
        .arg(&cfg)
        .args(["auth", "whoami", "-o", "json"])
        .env_remove("KUBECONFIG")
        .env("HOME", s.dir.path())
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl auth whoami as {name} failed: {}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        super::tail(&s.gateway.log(), 20)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> Result<String> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, claims, key)?)
}

/// Send each `(name, token)` to the gateway from Python's `http.client` (a 1 MiB header is no
/// problem for it) and return `name -> (status, body)`; a connection the gateway closes is -1.
const PYTHON_BAD_TOKENS: &str = r#"
import http.client, json, ssl, sys
spec = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=spec["ca"])
out = {}
for name, token in spec["cases"]:
    try:
        c = http.client.HTTPSConnection(spec["host"], spec["port"], context=ctx, timeout=30)
        c.request("GET", "/api/v1/namespaces/default/pods", headers={"Authorization": "Bearer " + token, "Accept": "application/json"})
        r = c.getresponse()
        out[name] = [r.status, r.read().decode("utf-8", "replace")]
        c.close()
    except Exception as e:
        out[name] = [-1, repr(e)]
print(json.dumps(out))
"#;

fn send_tokens(s: &Stack, cases: &[(&str, String)]) -> Result<serde_json::Map<String, Value>> {
    let script = s.dir.path().join("bad_tokens.py");
    std::fs::write(&script, PYTHON_BAD_TOKENS)?;
    let addr = s.gateway.url.trim_start_matches("https://");
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let spec = json!({
        "ca": s.gateway_ca, "host": host, "port": port.parse::<u16>()?, "cases": cases,
    });
    let mut child = Command::new(harness::python()?)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(spec.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v.as_object().cloned().context("object")
}

fn assert_unauthorized(results: &serde_json::Map<String, Value>, s: &Stack) -> Result<()> {
    for (name, result) in results {
        let body: Value =
            serde_json::from_str(result[1].as_str().unwrap_or("")).unwrap_or(Value::Null);
        ensure!(
            result[0] == 401 && body["kind"] == "Status" && body["code"] == 401,
            "{name}: expected a 401 Status, got {result}\ngateway log:\n{}",
            super::tail(&s.gateway.log(), 10)
        );
    }
    Ok(())
}

#[test]
fn real_oidc_provider_users_are_impersonated_with_session_extras() -> Result<()> {
    let dir = TempDir::new("portcullis-e2e-oidc")?;
    let provider = OidcProvider::start(dir.path())?;
    provider.set_claims(
        "alice",
        &json!({"email": "alice@example.com", "email_verified": true, "groups": ["devs", "oncall"]}),
    )?;
    provider.set_claims(
        "bob",
        &json!({"email": "bob@example.com", "email_verified": true, "groups": ["auditors"]}),
    )?;
    provider.set_claims(
        "eve",
        &json!({"email": "eve@example.com", "groups": ["devs"]}),
    )?;
    let s = start_with_provider(&provider.issuer(), dir)?;
    let (code, body) = harness::http_get_plain(s.gateway.admin, "/readyz")?;
    ensure!(code == 200, "/readyz {code}: {body}");
    ensure!(body.contains(&provider.issuer()), "{body}");

    let alice = provider.id_token("alice", CLIENT_ID)?;
    let bob = provider.id_token("bob", CLIENT_ID)?;
    // What the real provider issues: no `kid`, `aud` an array.
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(alice.split('.').next().context("header")?)?,
    )?;
    ensure!(header.get("kid").is_none(), "{header}");

    let before = s.log().len();
    for (token, user, groups) in [
        (&alice, "op:alice", vec!["op:devs", "op:oncall"]),
        (&bob, "op:bob", vec!["op:auditors"]),
    ] {
        let who = whoami(&s, token, user)?;
        let info = &who["status"]["userInfo"];
        ensure!(info["username"] == user, "{who}");
        let got = strings(&info["groups"]);
        for g in &groups {
            ensure!(got.iter().any(|x| x == g), "{user}: {g} missing in {who}");
        }
        ensure!(
            !got.iter().any(|g| g.starts_with("oidc:")),
            "the dev issuer's mapping leaked: {who}"
        );
        let extra = &info["extra"];
        ensure!(
            strings(&extra["example.com/email"]) == vec![format!("{}@example.com", &user[3..])],
            "{who}"
        );
        ensure!(
            strings(&extra["portcullis.dev/client-ip"]) == vec!["127.0.0.1"],
            "{who}"
        );
        ensure!(
            strings(&extra["portcullis.dev/session"]).len() == 1,
            "{who}"
        );
    }
    let log = s.log();
    let forwarded = &log[before..];
    ensure!(forwarded.len() >= 2, "{forwarded:?}");
    let mut sessions = Vec::new();
    for entry in forwarded {
        let session: Vec<&str> = entry
            .headers
            .iter()
            .filter(|h| h.name == "impersonate-extra-portcullis.dev%2fsession")
            .map(|h| h.value.as_str())
            .collect();
        ensure!(session.len() == 1, "{entry:?}");
        sessions.push(session[0].to_string());
    }
    sessions.sort();
    sessions.dedup();
    ensure!(sessions.len() == forwarded.len(), "session ids repeat");
    // The gateway logs the same session id it sent upstream.
    ensure!(
        s.gateway.log().contains(&sessions[0]),
        "session id not logged"
    );

    // A required claim missing (eve's email is not verified): refused, nothing forwarded.
    let eve = provider.id_token("eve", CLIENT_ID)?;
    let before = s.log().len();
    let results = send_tokens(&s, &[("missing required claim", eve)])?;
    assert_unauthorized(&results, &s)?;
    ensure!(s.log().len() == before, "a refused request was forwarded");
    s.assert_only_gateway_credential_upstream()
}

#[test]
fn bad_tokens_are_refused_and_forged_kids_do_not_hammer_the_provider() -> Result<()> {
    let dir = TempDir::new("portcullis-e2e-oidc-bad")?;
    let provider = OidcProvider::start(dir.path())?;
    provider.set_claims(
        "alice",
        &json!({"email": "alice@example.com", "email_verified": true}),
    )?;
    let s = start_with_provider(&provider.issuer(), dir)?;
    let valid = provider.id_token("alice", CLIENT_ID)?;
    ensure!(whoami(&s, &valid, "alice")?["status"]["userInfo"]["username"] == "op:alice");

    let dev = &s.issuer;
    let claims = |patch: Value| -> Value {
        let mut c = dev.claims("mallory", &["devs"], 600);
        for (k, v) in patch.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let dev_kid: String = serde_json::from_str::<Value>(&dev.jwks_json())?["keys"][0]["kid"]
        .as_str()
        .context("kid")?
        .to_owned();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let other_key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes())?;
    let n = now();
    let mut cases: Vec<(&str, String)> = vec![
        (
            "expired",
            dev.sign(&claims(
                json!({"exp": n - 3600, "iat": n - 7200, "nbf": n - 7200}),
            ))?,
        ),
        (
            "not yet valid",
            dev.sign(&claims(json!({"nbf": n + 3600})))?,
        ),
        (
            "wrong audience",
            dev.sign(&claims(json!({"aud": ["someone-else"]})))?,
        ),
        (
            "wrong issuer",
            dev.sign(&claims(json!({"iss": "https://evil.test"})))?,
        ),
        (
            "other key",
            sign(
                &other_key,
                Algorithm::ES256,
                Some(&dev_kid),
                &claims(json!({})),
            )?,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(json!({})))
            ),
        ),
        (
            "HS256 with the public key",
            sign(
                &EncodingKey::from_secret(dev.jwks_json().as_bytes()),
                Algorithm::HS256,
                Some(&dev_kid),
                &claims(json!({})),
            )?,
        ),
        // pingora's HTTP/1.1 parser refuses a header block over 1 MiB - 1 byte with a bare 400
        // before any gateway code runs; just under that, the gateway's own size check answers.
        ("~1 MiB token over HTTP/1.1", "a".repeat(1024 * 1024 - 4096)),
        (
            // A valid signature (the dev issuer's key) whose `iss` names the provider: only the
            // provider's keys are tried, and they do not verify it.
            "iss names the second issuer",
            dev.sign(&claims(
                json!({"iss": provider.issuer(), "aud": [CLIENT_ID]}),
            ))?,
        ),
    ];
    // Forged kids aimed at the provider's issuer, each of which would need a JWKS fetch.
    let forged: Vec<String> = (0..12)
        .map(|i| {
            sign(
                &other_key,
                Algorithm::ES256,
                Some(&format!("forged-{i}")),
                &claims(json!({"iss": provider.issuer(), "aud": [CLIENT_ID]})),
            )
        })
        .collect::<Result<_>>()?;
    let names: Vec<String> = (0..forged.len())
        .map(|i| format!("unknown kid {i}"))
        .collect();
    for (name, token) in names.iter().zip(&forged) {
        cases.push((name.as_str(), token.clone()));
    }

    // Past the rate-limit interval since the start-up fetch, so the burst may fetch exactly once.
    std::thread::sleep(std::time::Duration::from_secs(MIN_REFRESH_SECONDS));
    let fetches_before = provider.jwks_fetches();
    let started = Instant::now();
    let before = s.log().len();
    let results = send_tokens(&s, &cases)?;
    let elapsed = started.elapsed();
    assert_unauthorized(&results, &s)?;
    ensure!(results.len() == cases.len());
    ensure!(
        s.log().len() == before,
        "a refused request reached the upstream: {:?}",
        &s.log()[before..]
    );
    // At most one fetch per rate-limit interval (plus the one the first forged kid may start).
    let fetched = provider.jwks_fetches() - fetches_before;
    let allowed = 1 + (elapsed.as_secs() / MIN_REFRESH_SECONDS) as usize;
    ensure!(
        (1..=allowed).contains(&fetched),
        "{fetched} JWKS fetches for {} forged kids in {elapsed:?} (allowed {allowed})",
        forged.len()
    );

    // A full 1 MiB token over HTTP/1.1: pingora's bare 400 (or a closed connection).
    let huge = send_tokens(
        &s,
        &[("1 MiB token over HTTP/1.1", "a".repeat(1024 * 1024))],
    )?;
    let status = &huge["1 MiB token over HTTP/1.1"][0];
    ensure!(*status == 400 || *status == -1, "1 MiB token: {huge:?}");

    // Over HTTP/2 (kubectl) pingora bounds the header list at 64 KiB: a 32 KiB token reaches the
    // gateway's own 16 KiB check (401); a full 1 MiB token is refused by the transport (GOAWAY),
    // which is the intended DoS bound. Either way nothing is forwarded.
    for (size, expect) in [
        (32 * 1024, "You must be logged in"),
        (1024 * 1024, "ENHANCE_YOUR_CALM"),
    ] {
        let cfg = s.dir.path().join(format!("kubeconfig-{size}"));
        harness::write_kubeconfig(&cfg, &s.gateway.url, &s.gateway_ca, &"a".repeat(size))?;
        let out = Command::new(harness::kubectl()?)
            .arg("--kubeconfig")
            .arg(&cfg)
            .args(["get", "pods"])
            .env_remove("KUBECONFIG")
            .env("HOME", s.dir.path())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(expect),
            "{size}-byte token over HTTP/2: {stderr}"
        );
    }
    ensure!(
        s.gateway.log().contains("token is larger than"),
        "size check not hit"
    );
    ensure!(
        s.log().len() == before,
        "an oversized token request was forwarded"
    );

    // The real token still works (its verification is cached or uses the held key).
    ensure!(whoami(&s, &valid, "alice-again")?["status"]["userInfo"]["username"] == "op:alice");
    s.assert_only_gateway_credential_upstream()
}

#[test]
fn unreachable_issuer_is_reported_and_fails_closed() -> Result<()> {
    let dir = TempDir::new("portcullis-e2e-oidc-down")?;
    let provider = OidcProvider::start(dir.path())?;
    provider.set_claims(
        "alice",
        &json!({"email": "alice@example.com", "email_verified": true}),
    )?;
    // The token is obtained, then the provider goes away before the gateway starts.
    let token = provider.id_token("alice", CLIENT_ID)?;
    let issuer = provider.issuer();
    drop(provider);
    let s = start_with_provider(&issuer, dir)?;
    let (code, body) = harness::http_get_plain(s.gateway.admin, "/readyz")?;
    ensure!(
        code == 503 && body.contains(&issuer),
        "/readyz {code}: {body}"
    );
    // The dev issuer (a JWKS file) is unaffected.
    ensure!(s.kubectl(&["get", "pods"])?.contains("web-0"));
    let before = s.log().len();
    let results = send_tokens(&s, &[("issuer without keys", token)])?;
    assert_unauthorized(&results, &s)?;
    ensure!(
        s.log().len() == before,
        "an unverified request was forwarded"
    );
    Ok(())
}

#[test]
fn service_account_tokens_map_to_kubernetes_service_accounts() -> Result<()> {
    let dir = TempDir::new("portcullis-e2e-sa")?;
    // Stands for an EKS cluster's OIDC issuer: its keys in a JWKS file, tokens shaped like a
    // projected service-account token.
    let sa_issuer = DevIssuer::new("https://oidc.eks.test/id/E2E", "portcullis-sa")?;
    let jwks = dir.path().join("sa-jwks.json");
    std::fs::write(&jwks, sa_issuer.jwks_json())?;
    let yaml = format!(
        "    - issuer: {}\n      kind: service_account\n      audiences: [portcullis-sa]\n      jwks_file: {}\n",
        sa_issuer.issuer,
        jwks.display()
    );
    let s = start_with_issuers(&yaml, dir)?;
    let mut claims = sa_issuer.claims("system:serviceaccount:agents:runner", &[], 600);
    claims["kubernetes.io"] = json!({
        "namespace": "agents",
        "serviceaccount": {"name": "runner", "uid": "7d1c0e1e-0000-4000-8000-000000000001"},
        "pod": {"name": "runner-0", "uid": "7d1c0e1e-0000-4000-8000-000000000002"},
    });
    let token = sa_issuer.sign(&claims)?;
    let who = whoami(&s, &token, "sa")?;
    let info = &who["status"]["userInfo"];
    ensure!(
        info["username"] == "system:serviceaccount:agents:runner",
        "{who}"
    );
    let groups = strings(&info["groups"]);
    ensure!(
        groups.contains(&"system:serviceaccounts".to_string())
            && groups.contains(&"system:serviceaccounts:agents".to_string()),
        "{who}"
    );
    // A token of that issuer whose subject is not a service account is refused.
    let before = s.log().len();
    let not_sa = sa_issuer.mint("alice", &["system:masters"], 600)?;
    let results = send_tokens(&s, &[("non-service-account subject", not_sa)])?;
    assert_unauthorized(&results, &s)?;
    ensure!(s.log().len() == before, "a refused request was forwarded");
    Ok(())
}
