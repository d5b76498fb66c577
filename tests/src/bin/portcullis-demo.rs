//! The local demo behind `cargo xtask demo`: the Kubernetes API double, a development token
//! issuer with a key generated at start, and the real gateway in front of them. Writes a
//! kubeconfig whose user holds a freshly minted token and prints what to type next; runs until
//! Ctrl-C, then stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use portcullis_tests::double::{self, DoubleConfig};
use portcullis_tests::harness::{self, GatewayConfig, GatewayProcess};
use portcullis_tests::issuer::DevIssuer;
use portcullis_tests::pki::TestCa;

const GATEWAY_TOKEN: &str = "demo-gateway-upstream-token";
const ISSUER: &str = "https://dev-issuer.portcullis.local";
const AUDIENCE: &str = "portcullis";

/// The first free port of `preferred`, else any free port.
fn port(preferred: u16) -> anyhow::Result<u16> {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => Ok(preferred),
        Err(_) => harness::free_port(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = harness::workspace_root().join(".demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("api-double"))?;

    let api_double = double::start(DoubleConfig::local(
        dir.join("api-double"),
        GATEWAY_TOKEN,
        "system:serviceaccount:portcullis:gateway",
    ))
    .await?;

    let ca = TestCa::new("Portcullis demo CA")?;
    let tls = ca.write_server(&dir, "gateway", &["127.0.0.1", "localhost"])?;
    let issuer = DevIssuer::new(ISSUER, AUDIENCE)?;
    let jwks = dir.join("dev-issuer-jwks.json");
    std::fs::write(&jwks, issuer.jwks_json())?;
    let token_file = dir.join("gateway-upstream-token");
    std::fs::write(&token_file, GATEWAY_TOKEN)?;

    let api = SocketAddr::from(([127, 0, 0, 1], port(8443)?));
    let admin = SocketAddr::from(([127, 0, 0, 1], port(9090)?));
    let config = GatewayConfig {
        api,
        admin,
        tls_cert: &tls.cert,
        tls_key: &tls.key,
        upstream_url: &api_double.url(),
        upstream_ca: &api_double.ca_pem_path,
        upstream_token_file: &token_file,
        issuer: ISSUER,
        audience: AUDIENCE,
        jwks_file: &jwks,
        extra: DEMO_POLICY,
    };
    let config_path = dir.join("portcullis.yaml");
    std::fs::write(&config_path, config.yaml())?;
    let mut gateway =
        tokio::task::spawn_blocking(move || GatewayProcess::start(&config_path, api, admin))
            .await??;

    let kubeconfig = dir.join("kubeconfig");
    let token = issuer.mint("alice", &["devs", "agents"], 12 * 3600)?;
    harness::write_kubeconfig(&kubeconfig, &gateway.url, &tls.ca, &token)?;

    let rel = |p: PathBuf| {
        p.strip_prefix(harness::workspace_root())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let kubectl = harness::kubectl()
        .map(rel)
        .unwrap_or_else(|_| "kubectl".into());
    let k = format!("{kubectl} --kubeconfig {}", rel(kubeconfig.clone()));
    println!(
        r#"
Portcullis demo is running.
  gateway      {gw}  (TLS; log: {gwlog})
  admin        http://{admin}/metrics  /healthz  /readyz
  API double   {double}  (what reached it: {reqlog})
  you are      alice in groups devs, agents (token from the dev issuer, valid 12 h)

Try:
  {k} get pods -A
  {k} auth whoami
  {k} exec web-0 -- whoami
  {k} exec -it web-0 -- sh
  {k} logs -f web-0
  {k} --as=system:admin get secrets      # the client's Impersonate-User is stripped
  {k} get secret db-credentials -o yaml  # values masked, keys kept
  {k} delete namespace prod              # denied by policy rule nobody-deletes-namespaces
  tail -n 3 {reqlog}   # the upstream saw the gateway's credential (hashed) and Impersonate-User: oidc:alice

After Ctrl-C (the audit store is the gateway's while it runs):
  {bin} audit verify --config {cfg}
  {bin} audit query --config {cfg}
  {bin} sessions list --config {cfg}
  {bin} replay <session id> --config {cfg}
  {bin} export <session id> --config {cfg} --format asciicast -o session.cast

Ctrl-C stops the demo."#,
        gw = gateway.url,
        gwlog = rel(gateway.stderr_path.clone()),
        admin = gateway.admin,
        double = api_double.url(),
        reqlog = rel(api_double.log_path.clone()),
        bin = rel(harness::portcullis_bin()),
        cfg = rel(dir.join("portcullis.yaml")),
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    println!("\nstopping the demo");
    tokio::task::spawn_blocking(move || gateway.terminate(Duration::from_secs(10))).await??;
    api_double.shutdown().await;
    Ok(())
}

/// The demo's policy: alice may do anything, except what nobody may do through the gateway;
/// Secrets are masked (the default profile).
const DEMO_POLICY: &str = r#"policy:
  rules:
    - name: demo-users-do-everything
      subjects: {users: ["*"]}
      verbs: ["*"]
      resources: ["*"]
      action: allow
    - name: discovery-and-health
      subjects: {users: ["*"]}
      verbs: [get]
      non_resource_urls: ["*"]
      action: allow
    - name: nobody-deletes-namespaces
      subjects: {users: ["*"]}
      preset: no-destructive
      message: deleting namespaces, CRDs, volumes or nodes is not allowed through portcullis
"#;
