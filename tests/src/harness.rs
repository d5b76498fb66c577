//! Running the real `portcullis` binary for end-to-end tests and the demo: writing its config,
//! starting it as a child process, waiting until it serves, and stopping it.
//!
//! Owns: process lifetime (the child is killed when the handle drops), free-port selection,
//! kubeconfig files for clients, and finding the test peers (kubectl, Python) that `cargo xtask
//! peers` installed. Must never: leave a process running after its test, or bind anything but
//! loopback.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `portcullis` binary: `PORTCULLIS_BIN`, else the workspace's debug build.
pub fn portcullis_bin() -> PathBuf {
    std::env::var_os("PORTCULLIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/portcullis"))
}

/// A peer binary from `cargo xtask peers`: the env var if set, else the default location.
pub fn peer(env: &str, default_relative: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default_relative));
    if !path.exists() {
        bail!(
            "{} not found at {} (run `cargo xtask peers`, or `cargo xtask test`, which installs the test peers)",
            env,
            path.display()
        );
    }
    Ok(path)
}

pub fn kubectl() -> anyhow::Result<PathBuf> {
    peer("PORTCULLIS_KUBECTL", ".peers/bin/kubectl")
}

pub fn python() -> anyhow::Result<PathBuf> {
    peer("PORTCULLIS_PYTHON", ".peers/venv/bin/python")
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running gateway process.
pub struct GatewayProcess {
    child: Child,
    pub url: String,
    pub admin: SocketAddr,
    pub stderr_path: PathBuf,
}

impl GatewayProcess {
    /// Start `portcullis serve --config <config_path>` and wait until the admin port answers
    /// `/healthz` and the API port accepts connections.
    pub fn start(config_path: &Path, api: SocketAddr, admin: SocketAddr) -> anyhow::Result<Self> {
        let stderr_path = config_path.with_extension("log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let child = Command::new(portcullis_bin())
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", portcullis_bin().display()))?;
        let mut gateway = Self {
            child,
            url: format!("https://{api}"),
            admin,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gateway.child.try_wait()? {
                bail!("gateway exited early ({status}):\n{}", gateway.log());
            }
            if http_get_plain(admin, "/healthz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
                && TcpStream::connect(api).is_ok()
            {
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                bail!("gateway did not become healthy in 30 s:\n{}", gateway.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM (graceful) and wait up to `timeout`; then SIGKILL.
    pub fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        // `kill` from the command line keeps this crate free of libc bindings.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(None)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (`Connection: close`) over plain TCP, for the admin port.
pub fn http_get_plain(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Write a kubeconfig whose single context talks to `server` with `token`, trusting `ca_file`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_file: &Path,
    token: &str,
) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: portcullis\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\ncontexts:\n- name: portcullis\n  context:\n    cluster: portcullis\n    user: agent\n    namespace: default\ncurrent-context: portcullis\nusers:\n- name: agent\n  user:\n    token: {token}\n",
        ca = ca_file.display()
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// Options of the gateway config that tests vary.
pub struct GatewayConfig<'a> {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub tls_cert: &'a Path,
    pub tls_key: &'a Path,
    pub upstream_url: &'a str,
    pub upstream_ca: &'a Path,
    pub upstream_token_file: &'a Path,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub jwks_file: &'a Path,
    pub extra: &'a str,
}

impl GatewayConfig<'_> {
    pub fn yaml(&self) -> String {
        format!(
            r#"listen:
  address: {api}
  tls:
    cert_file: {cert}
    key_file: {key}
admin:
  address: {admin}
upstream:
  url: {url}
  ca_file: {ca}
  credential:
    token_file: {token}
identity:
  issuers:
    - issuer: {issuer}
      audiences: [{audience}]
      jwks_file: {jwks}
      username_prefix: "oidc:"
      groups_prefix: "oidc:"
server:
  threads: 2
  graceful_shutdown_timeout_seconds: 5
{extra}"#,
            api = self.api,
            cert = self.tls_cert.display(),
            key = self.tls_key.display(),
            admin = self.admin,
            url = self.upstream_url,
            ca = self.upstream_ca.display(),
            token = self.upstream_token_file.display(),
            issuer = self.issuer,
            audience = self.audience,
            jwks = self.jwks_file.display(),
            extra = self.extra,
        )
    }
}
