//! End-to-end: the gateway's own EKS credential. The gateway (base credentials from its
//! environment, the standard AWS chain) assumes a role in moto, the real STS stand-in, with a
//! session per caller, and presents `k8s-aws-v1.` tokens to the API double, which verifies them
//! the way aws-iam-authenticator does (SigV4 recomputed with the secret moto issued, then STS
//! `GetCallerIdentity`). kubectl goes through the gateway; tokens built with the gateway's own
//! functions that are tampered, for another cluster or expired are refused by the double; no
//! credential, token or secret reaches a log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use portcullis::upstream::eks::{presign_token, sts_base_url, Credentials, TOKEN_PREFIX};
use portcullis_tests::double::auth::eks::{EksRejection, EksTokenVerifier};
use portcullis_tests::double::auth::Authenticator;
use portcullis_tests::double::{self, DoubleConfig, RunningDouble};
use portcullis_tests::harness::{self, GatewayConfig, GatewayProcess, Moto, TempDir};
use portcullis_tests::issuer::DevIssuer;
use portcullis_tests::pki::TestCa;
use serde_json::Value;

use super::{sha256_hex, tail, AUDIENCE, ISSUER};

const CLUSTER: &str = "test-cluster";
const REGION: &str = "us-east-1";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/portcullis";
const EXTERNAL_ID: &str = "portcullis-e2e";
/// The gateway's base credentials (the standard chain reads them from its environment).
/// moto checks neither; the secret differs from the key id so a logged key id (not a secret)
/// cannot pass for a leaked secret.
const BASE_ACCESS_KEY: &str = "testing";
const BASE_SECRET: &str = "testing-base-secret";

fn assumed_role_arn(session: &str) -> String {
    format!("arn:aws:sts::123456789012:assumed-role/portcullis/{session}")
}

struct EksStack {
    rt: tokio::runtime::Runtime,
    double: Option<RunningDouble>,
    gateway: GatewayProcess,
    moto: Moto,
    issuer: DevIssuer,
    gateway_ca: PathBuf,
    dir: TempDir,
}

impl EksStack {
    fn start() -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new("portcullis-eks-e2e")?;
        let moto = Moto::start(dir.path())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let double_dir = dir.path().join("double");
        std::fs::create_dir_all(&double_dir)?;
        // No static token: only EKS tokens authenticate, and the role (as an EKS access entry
        // would) may impersonate whatever its session is called.
        let double_cfg = DoubleConfig {
            tokens: Vec::new(),
            impersonators: vec![ROLE_ARN.to_string()],
            ..DoubleConfig::local(&double_dir, "", "")
        };
        let double = rt.block_on(double::start_with_authenticators(
            double_cfg,
            vec![Authenticator::Eks(EksTokenVerifier::new(
                CLUSTER,
                &moto.url(),
            ))],
        ))?;

        let ca = TestCa::new("portcullis eks e2e gateway CA")?;
        let tls = ca.write_server(dir.path(), "gateway", &["127.0.0.1", "localhost"])?;
        let issuer = DevIssuer::new(ISSUER, AUDIENCE)?;
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json())?;
        let unused_token_file = dir.path().join("unused-token");
        let api = SocketAddr::from(([127, 0, 0, 1], harness::free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], harness::free_port()?));
        let config = GatewayConfig {
            api,
            admin,
            tls_cert: &tls.cert,
            tls_key: &tls.key,
            upstream_url: &double.url(),
            upstream_ca: &double.ca_pem_path,
            upstream_token_file: &unused_token_file,
            issuer: ISSUER,
            audience: AUDIENCE,
            jwks_file: &jwks,
            extra: "",
        };
        let token_file_credential = format!(
            "  credential:\n    token_file: {}\n",
            unused_token_file.display()
        );
        let eks_credential = format!(
            "  credential:\n    eks:\n      cluster_name: {CLUSTER}\n      region: {REGION}\n      role_arn: {ROLE_ARN}\n      external_id: {EXTERNAL_ID}\n      session_name: \"portcullis-{{user}}\"\n      sts_endpoint: {}\n",
            moto.url()
        );
        let yaml = config.yaml();
        ensure!(
            yaml.contains(&token_file_credential),
            "credential block not found:\n{yaml}"
        );
        let yaml = yaml.replacen(&token_file_credential, &eks_credential, 1);
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, yaml)?;
        let missing = dir.path().join("no-such-aws-file");
        let missing = missing.to_str().context("utf-8 path")?;
        let gateway = GatewayProcess::start_with_env(
            &config_path,
            api,
            admin,
            &[
                ("AWS_ACCESS_KEY_ID", BASE_ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", BASE_SECRET),
                // Only the environment: no profile files or instance metadata of this machine.
                ("AWS_CONFIG_FILE", missing),
                ("AWS_SHARED_CREDENTIALS_FILE", missing),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                // Debug everywhere, pingora's request-header dumps included: the credential
                // header is marked sensitive, so it must not appear.
                ("RUST_LOG", "debug"),
            ],
        )?;
        Ok(Self {
            rt,
            double: Some(double),
            gateway,
            moto,
            issuer,
            gateway_ca: tls.ca,
            dir,
        })
    }

    fn double(&self) -> &RunningDouble {
        self.double
            .as_ref()
            .expect("double runs for the stack's lifetime")
    }

    /// kubectl against `server` (trusting `ca`) with `token`; returns (success, stdout, stderr).
    fn kubectl(
        &self,
        name: &str,
        server: &str,
        ca: &std::path::Path,
        token: &str,
        args: &[&str],
    ) -> Result<(bool, String, String)> {
        let kubeconfig = self.dir.path().join(format!("kubeconfig-{name}"));
        harness::write_kubeconfig(&kubeconfig, server, ca, token)?;
        let out = Command::new(harness::kubectl()?)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// kubectl through the gateway as `user` (a dev-issuer token); must succeed.
    fn kubectl_as(&self, user: &str, args: &[&str]) -> Result<String> {
        let token = self.issuer.mint(user, &["devs"], 3600)?;
        let (ok, stdout, stderr) =
            self.kubectl(user, &self.gateway.url, &self.gateway_ca, &token, args)?;
        ensure!(
            ok,
            "kubectl {args:?} as {user} failed:\n{stderr}\ngateway log tail:\n{}\nmoto log tail:\n{}",
            tail(&self.gateway.log(), 30),
            tail(&self.moto.log(), 10)
        );
        Ok(stdout)
    }

    /// The roles moto issued, as `(session_name, entry)`.
    fn assumed_roles(&self) -> Result<Vec<(String, Value)>> {
        let data = self.moto.data()?;
        Ok(data["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r["session_name"].as_str().unwrap_or("").to_string(), r))
            .collect())
    }

    /// The credentials moto issued to the gateway for `session`.
    fn session_credentials(&self, session: &str) -> Result<Credentials> {
        let roles = self.assumed_roles()?;
        let (_, entry) = roles
            .iter()
            .find(|(name, _)| name == session)
            .with_context(|| format!("moto issued no session {session}: {roles:?}"))?;
        let field = |k: &str| {
            entry[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {k}"))
        };
        Ok(Credentials::new(
            field("access_key_id")?,
            field("secret_access_key")?,
            Some(field("session_token")?),
            None,
            "moto",
        ))
    }

    /// Every secret in play: the base secret and each issued secret and session token.
    fn secrets(&self) -> Result<Vec<String>> {
        let mut secrets = vec![BASE_SECRET.to_string()];
        for (_, entry) in self.assumed_roles()? {
            for k in ["secret_access_key", "session_token"] {
                if let Some(v) = entry[k].as_str() {
                    secrets.push(v.to_string());
                }
            }
        }
        Ok(secrets)
    }

    fn assert_no_secret_logged(&self) -> Result<()> {
        let gateway_log = self.gateway.log();
        let double_log = std::fs::read_to_string(&self.double().log_path)?;
        ensure!(!gateway_log.is_empty(), "the gateway logged nothing");
        for (what, text) in [
            ("gateway log", &gateway_log),
            ("double request log", &double_log),
        ] {
            let leaks = |needle: &str| -> Vec<String> {
                // What precedes the leak on its line, cut before the secret itself.
                text.lines()
                    .filter_map(|line| line.find(needle).map(|at| line[..at].to_string()))
                    .collect()
            };
            for marker in [TOKEN_PREFIX, "X-Amz-Signature", "X-Amz-Security-Token"] {
                let found = leaks(marker);
                ensure!(
                    found.is_empty(),
                    "{what} contains {marker:?} after: {found:#?}"
                );
            }
            for secret in self.secrets()? {
                let found = leaks(&secret);
                ensure!(
                    found.is_empty(),
                    "{what} contains a secret after: {found:#?}"
                );
            }
        }
        Ok(())
    }
}

impl Drop for EksStack {
    fn drop(&mut self) {
        let _ = self.gateway.terminate(Duration::from_secs(5));
        if let Some(d) = self.double.take() {
            self.rt.block_on(d.shutdown());
        }
    }
}

#[test]
fn eks_credential_kubectl_through_the_gateway_as_the_assumed_role_per_caller() -> Result<()> {
    let s = EksStack::start()?;

    let pods = s.kubectl_as("alice", &["get", "pods", "-n", "default"])?;
    ensure!(pods.contains("web-0"), "get pods lacks web-0:\n{pods}");
    let pods = s.kubectl_as("bob", &["get", "pods", "-n", "default"])?;
    ensure!(pods.contains("web-0"), "get pods lacks web-0:\n{pods}");

    // STS saw one session per caller, named after the caller, with the configured external id.
    let roles = s.assumed_roles()?;
    for session in ["portcullis-oidc-alice", "portcullis-oidc-bob"] {
        let (_, entry) = roles
            .iter()
            .find(|(name, _)| name == session)
            .with_context(|| format!("no AssumeRole session {session}: {roles:?}"))?;
        ensure!(entry["role_arn"] == ROLE_ARN, "{entry}");
        ensure!(entry["external_id"] == EXTERNAL_ID, "{entry}");
        ensure!(
            entry["arn"] == assumed_role_arn(session).as_str(),
            "{entry}"
        );
    }

    // The double authenticated each request as the caller's assumed-role session (what STS
    // GetCallerIdentity answered) and applied the caller's impersonation.
    let log = s.double().log();
    ensure!(!log.is_empty(), "the double saw no requests");
    let mut tokens_by_user = std::collections::BTreeMap::new();
    for entry in &log {
        let user = entry.user.as_deref().unwrap_or("-");
        let session = match user {
            "oidc:alice" => "portcullis-oidc-alice",
            "oidc:bob" => "portcullis-oidc-bob",
            _ => anyhow::bail!("request not impersonating a caller: {entry:?}"),
        };
        ensure!(
            entry.token_user.as_deref() == Some(assumed_role_arn(session).as_str()),
            "request not authenticated as {session}: {entry:?}"
        );
        ensure!(entry.status == 200, "{entry:?}");
        ensure!(
            entry.groups.iter().any(|g| g == "oidc:devs"),
            "impersonated groups missing: {entry:?}"
        );
        tokens_by_user
            .entry(user.to_string())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(entry.token_sha256.clone());
    }
    ensure!(
        tokens_by_user.len() == 2,
        "both callers must reach the double: {tokens_by_user:?}"
    );
    let alice = &tokens_by_user["oidc:alice"];
    let bob = &tokens_by_user["oidc:bob"];
    ensure!(
        alice.is_disjoint(bob),
        "two callers shared an EKS token: {tokens_by_user:?}"
    );

    s.assert_no_secret_logged()
}

#[test]
fn eks_double_rejects_tampered_foreign_and_expired_tokens() -> Result<()> {
    let s = EksStack::start()?;
    s.kubectl_as("alice", &["get", "pods", "-n", "default"])?;
    let credentials = s.session_credentials("portcullis-oidc-alice")?;
    let sts_base = sts_base_url(REGION, Some(&s.moto.url()))?;
    let now = SystemTime::now();
    let valid = presign_token(&credentials, CLUSTER, REGION, &sts_base, now)?;
    let other_cluster = presign_token(&credentials, "other-cluster", REGION, &sts_base, now)?;
    let expired = presign_token(
        &credentials,
        CLUSTER,
        REGION,
        &sts_base,
        now - Duration::from_secs(16 * 60),
    )?;
    // Tampered: a signed parameter changed after signing (one the checks before the signature
    // do not look at, so only the signature can catch it).
    let url = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(valid.trim_start_matches(TOKEN_PREFIX))?,
    )?;
    ensure!(url.contains("X-Amz-Expires=60"), "{url}");
    let tampered = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(url.replace("X-Amz-Expires=60", "X-Amz-Expires=900"))
    );

    // The reasons, from the double's verifier itself.
    let verifier = EksTokenVerifier::new(CLUSTER, &s.moto.url());
    let verify = |token: &str| s.rt.block_on(verifier.verify(token));
    let accepted = verify(&valid)?.context("valid token not recognised")?;
    ensure!(
        accepted.username == assumed_role_arn("portcullis-oidc-alice"),
        "{accepted:?}"
    );
    for (name, token, reason) in [
        ("tampered", &tampered, EksRejection::SignatureMismatch),
        (
            "other cluster",
            &other_cluster,
            EksRejection::SignatureMismatch,
        ),
        ("expired", &expired, EksRejection::Expired),
    ] {
        ensure!(
            verify(token).err() == Some(reason.clone()),
            "{name}: expected {reason:?}"
        );
    }

    // And over the wire: the double answers 401 to each bad token and serves the valid one.
    let double_url = s.double().url();
    let double_ca = s.double().ca_pem_path.clone();
    let get = ["get", "pods", "-n", "default"];
    let (ok, stdout, stderr) = s.kubectl("direct-valid", &double_url, &double_ca, &valid, &get)?;
    ensure!(
        ok && stdout.contains("web-0"),
        "valid token refused: {stderr}"
    );
    for (name, token) in [
        ("tampered", &tampered),
        ("other-cluster", &other_cluster),
        ("expired", &expired),
    ] {
        let (ok, _, stderr) = s.kubectl(name, &double_url, &double_ca, token, &get)?;
        ensure!(
            !ok && stderr.contains("Unauthorized"),
            "{name} token not refused: {stderr}"
        );
        let hash = sha256_hex(token);
        let entries: Vec<_> = s
            .double()
            .log()
            .into_iter()
            .filter(|e| e.token_sha256.as_deref() == Some(hash.as_str()))
            .collect();
        ensure!(!entries.is_empty(), "{name}: the double logged no request");
        ensure!(
            entries
                .iter()
                .all(|e| e.status == 401 && e.token_user.is_none()),
            "{name}: {entries:?}"
        );
    }
    s.assert_no_secret_logged()
}
