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

/// Runs the `portcullis` under test with `args` (its CLI: `audit`, `sessions`, `replay`, ...).
pub fn run_portcullis<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> anyhow::Result<std::process::Output> {
    Command::new(portcullis_bin())
        .args(args)
        .output()
        .context("run portcullis (PORTCULLIS_BIN)")
}

/// JSON lines (what `--output json` prints): one value per non-empty line.
pub fn json_lines(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
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
    /// Removes the directory, unless `PORTCULLIS_KEEP_TEST_DIRS` is set (to read the logs of a
    /// failed run afterwards).
    fn drop(&mut self) {
        if std::env::var_os("PORTCULLIS_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
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
        Self::start_with_env(config_path, api, admin, &[])
    }

    /// [`Self::start`] with extra environment variables for the gateway process (e.g. AWS
    /// credentials for the standard chain).
    pub fn start_with_env(
        config_path: &Path,
        api: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let stderr_path = config_path.with_extension("log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let child = Command::new(portcullis_bin())
            .envs(env.iter().copied())
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

    /// SIGKILL now, as a crash would: no shutdown code runs.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (graceful) and wait up to `timeout`; then SIGKILL.
    pub fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.signal_and_wait("-TERM", timeout)
    }

    /// SIGINT (Ctrl-C: pingora's fast shutdown) and wait up to `timeout`; then SIGKILL.
    pub fn interrupt(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.signal_and_wait("-INT", timeout)
    }

    fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        // `kill` from the command line keeps this crate free of libc bindings.
        let _ = Command::new("kill")
            .arg(signal)
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
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 2
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
        ) + &self.defaults()
    }

    /// What a test gets unless its `extra` brings its own: an allow-all policy, and an audit
    /// store (with a generated signing key) beside the TLS files.
    fn defaults(&self) -> String {
        let mut out = String::new();
        if !has_top_level_key(self.extra, "policy") {
            out.push_str(ALLOW_ALL_POLICY);
        }
        if !has_top_level_key(self.extra, "record") {
            let dir = self.tls_cert.parent().unwrap_or(Path::new("."));
            out.push_str(&format!(
                "record:\n  path: {}\n  signing_key_file: {}\n  generate_signing_key: true\n",
                dir.join("audit-store").display(),
                dir.join("audit-signing-key.pem").display()
            ));
        }
        out
    }
}

/// The policy tests get unless they bring their own: every authenticated caller may do anything
/// (secrets are still masked by the default profile). Tests of the policy itself replace it.
pub const ALLOW_ALL_POLICY: &str = r#"policy:
  rules:
    - name: e2e-allow-all-resources
      subjects: {users: ["*"]}
      verbs: ["*"]
      resources: ["*"]
      action: allow
    - name: e2e-allow-all-urls
      subjects: {users: ["*"]}
      verbs: ["*"]
      non_resource_urls: ["*"]
      action: allow
"#;

fn has_top_level_key(yaml: &str, key: &str) -> bool {
    yaml.lines().any(|l| {
        l.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
    })
}

/// A minimal HTTP/1.1 request (`Connection: close`) over plain TCP to a loopback peer.
/// Returns the status code, the header block (as sent) and the body (de-chunked).
pub fn http_plain(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let code = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = payload.as_slice();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("bad chunk")?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).context("short chunk")?);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        payload = out;
    }
    Ok((code, headers, payload))
}

/// The real OIDC provider process (PyPI `oidc-provider-mock`, installed by `cargo xtask peers`)
/// on a free loopback port, plain HTTP. Killed when dropped.
pub struct OidcProvider {
    child: Child,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
}

impl OidcProvider {
    /// Start it, logging to `<dir>/oidc-provider.log`, and wait until discovery answers.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = peer(
            "PORTCULLIS_OIDC_PROVIDER",
            ".peers/venv/bin/oidc-provider-mock",
        )?;
        let port = free_port()?;
        let stderr_path = dir.join("oidc-provider.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting oidc-provider-mock")?;
        let mut provider = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = provider.child.try_wait()? {
                bail!(
                    "oidc-provider-mock exited early ({status}):\n{}",
                    provider.log()
                );
            }
            if http_get_plain(provider.addr, "/.well-known/openid-configuration")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
            {
                return Ok(provider);
            }
            if Instant::now() > deadline {
                bail!(
                    "oidc-provider-mock did not answer in 30 s:\n{}",
                    provider.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The provider's `iss` (it derives it from the Host it is reached at).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// How many times its JWKS was fetched (from its access log).
    pub fn jwks_fetches(&self) -> usize {
        self.log().matches("\"GET /jwks ").count()
    }

    /// Set the claims the provider puts in `sub`'s tokens (`PUT /users/<sub>`).
    pub fn set_claims(&self, sub: &str, claims: &serde_json::Value) -> anyhow::Result<()> {
        let (code, _, body) = http_plain(
            self.addr,
            "PUT",
            &format!("/users/{sub}"),
            Some("application/json"),
            claims.to_string().as_bytes(),
        )?;
        if code / 100 != 2 {
            bail!(
                "PUT /users/{sub}: {code} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// An ID token for `sub` with `client_id` as audience, non-interactively: the authorization
    /// form's POST answers a 302 carrying the code, which the token endpoint exchanges.
    pub fn id_token(&self, sub: &str, client_id: &str) -> anyhow::Result<String> {
        let redirect = "http://127.0.0.1/callback";
        let form = format!(
            "sub={sub}&client_id={client_id}&redirect_uri={}&response_type=code&scope=openid+email+profile&state=e2e",
            percent_encoding::utf8_percent_encode(redirect, percent_encoding::NON_ALPHANUMERIC)
        );
        let (code, headers, _) = http_plain(
            self.addr,
            "POST",
            "/oauth2/authorize",
            Some("application/x-www-form-urlencoded"),
            form.as_bytes(),
        )?;
        if code != 302 {
            bail!("authorize answered {code}, not a redirect");
        }
        let location = headers
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
                    .map(|(_, value)| value)
            })
            .context("no Location")?
            .trim()
            .to_string();
        let auth_code = location
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("code="))
            .context("no code in the redirect")?;
        let form = format!(
            "grant_type=authorization_code&code={auth_code}&client_id={client_id}&client_secret=e2e&redirect_uri={}",
            percent_encoding::utf8_percent_encode(redirect, percent_encoding::NON_ALPHANUMERIC)
        );
        let (code, _, body) = http_plain(
            self.addr,
            "POST",
            "/oauth2/token",
            Some("application/x-www-form-urlencoded"),
            form.as_bytes(),
        )?;
        if code != 200 {
            bail!(
                "token endpoint answered {code}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let response: serde_json::Value = serde_json::from_slice(&body)?;
        response["id_token"]
            .as_str()
            .map(str::to_owned)
            .context("no id_token in the token response")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS STS stand-in (PyPI `moto[server]`, installed by `cargo xtask peers`) on a free
/// loopback port, plain HTTP. Killed when dropped.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
}

impl Moto {
    /// Start `moto_server -H 127.0.0.1 -p <port>`, logging to `<dir>/moto.log`, and wait until
    /// its state endpoint answers.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = peer("PORTCULLIS_MOTO_SERVER", ".peers/venv/bin/moto_server")?;
        let port = free_port()?;
        let stderr_path = dir.join("moto.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting moto_server")?;
        let mut moto = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited early ({status}):\n{}", moto.log());
            }
            if moto.data().is_ok() {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer in 60 s:\n{}", moto.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`, the STS endpoint override.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// moto's whole state (`/moto-api/data.json`), e.g. `["sts"]["AssumedRole"]`.
    pub fn data(&self) -> anyhow::Result<serde_json::Value> {
        let (code, _, body) = http_plain(self.addr, "GET", "/moto-api/data.json", None, b"")?;
        if code != 200 {
            bail!("/moto-api/data.json answered {code}");
        }
        Ok(serde_json::from_slice(&body)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
