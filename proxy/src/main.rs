//! The `portcullis` binary: the CLI edge. Parses arguments, loads the config, and hands over to
//! the library; errors become one readable line and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Optional so the default build keeps the system allocator; `cargo xtask bench` measures both.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Identity-aware gateway between AI agents and the Kubernetes API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The YAML configuration file (see docs/config.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (non-zero with the error's key and line if bad).
    CheckConfig { config: PathBuf },
    /// Check the access policy, or explain how it decides one request (see docs/policy.md).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The node agent: eBPF redirect of selected pods to the gateway (see docs/node-agent.md).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The audit log: verify its hash chain and signed checkpoints, or query it (see
    /// docs/recording.md). Work on a stopped gateway's store or a copy: sled locks it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Recorded exec/attach/port-forward sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Play a recorded session's output in this terminal with its original timing.
    Replay {
        /// Session id, or its number from `sessions list`.
        session: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between two outputs, in seconds (idle time is cut to this).
        #[arg(long, default_value_t = 2.0)]
        max_gap: f64,
    },
    /// Export a recorded session (asciicast v2, playable with `asciinema play`).
    Export {
        /// Session id, or its number from `sessions list`.
        session: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Which recording store to read: a directory, or the one a gateway config names.
#[derive(clap::Args)]
struct StoreArgs {
    /// The store directory (`record.path`).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    store: Option<PathBuf>,
    /// A gateway config; its `record.path` (and `record.signing_key_file` for verify) are used.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn target(&self) -> anyhow::Result<portcullis::record::cli::Target> {
        Ok(portcullis::record::cli::locate(
            self.store.as_deref(),
            self.config.as_deref(),
        )?)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Asciicast,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and the signed checkpoints; print OK with counts, or the first
    /// sequence number where the log breaks and why (edited, deleted, reordered, truncated).
    /// Exits non-zero when broken.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Start at this sequence number (trusting its link to the one before).
        #[arg(long)]
        from: Option<u64>,
        /// Key to check checkpoint signatures with (public key PEM, or the signing key file);
        /// default: the config's `record.signing_key_file`.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// List audit records (one line per request, joined with its completion, and one per
    /// node agent event).
    Query {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        verb: Option<String>,
        /// `pods`, or `pods/exec` for a subresource.
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// From this time (RFC 3339 or Unix seconds), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until this time (RFC 3339 or Unix seconds), exclusive.
        #[arg(long)]
        until: Option<String>,
        /// `allow` or `deny`.
        #[arg(long)]
        decision: Option<String>,
        /// `request` (the gateway's) or `node` (the node agent's redirect/reject/drop events).
        #[arg(long)]
        kind: Option<String>,
        /// `json` prints JSON lines (for a SIEM).
        #[arg(long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List recorded sessions, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Load, attach and pin the programs, then keep them in line with the config until stopped
    /// (stopping leaves everything pinned: pods stay redirected).
    Run {
        /// The node agent's YAML file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove everything the agent pinned (programs detach, maps go).
    Uninstall {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (`rules:`/`scopes:`) or a whole gateway config with its policy
    /// files; non-zero exit with the file and line of the first error.
    Check { file: PathBuf },
    /// Print how the policy decides one request: the classified request, the decision, and every
    /// rule that matched and why. Example:
    /// `portcullis policy explain --config portcullis.yaml --user alice --group devs -- DELETE /api/v1/namespaces/prod`
    Explain {
        /// A gateway config or a policy file.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// A group of the caller; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The issuer URL of the caller's token (for rules that name issuers).
        #[arg(long, default_value = "")]
        issuer: String,
        /// Also list the rules that did not match, with the field that failed.
        #[arg(long)]
        show_unmatched: bool,
        /// The request: an HTTP method and a path with an optional query, after `--`.
        #[arg(last = true, num_args = 2, required = true, value_names = ["METHOD", "PATH[?QUERY]"])]
        request: Vec<String>,
    },
}

fn main() -> ExitCode {
    // rustls needs one process-wide provider; several may be linked (ring, aws-lc-rs), so pick
    // explicitly instead of letting rustls panic at the first handshake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config: config_path,
        } => {
            let config = portcullis::config::Config::load(&config_path)?;
            portcullis::serve::init_tracing(&config);
            portcullis::serve::run(config, &config_path)?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            portcullis::config::Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Policy { command } => run_policy(command),
        Command::Node { command } => run_node(command),
        Command::Audit { command } => {
            init_cli_tracing();
            run_audit(command)
        }
        Command::Sessions { command } => {
            init_cli_tracing();
            run_sessions(command)
        }
        Command::Replay {
            session,
            store,
            speed,
            max_gap,
        } => {
            init_cli_tracing();
            if !(max_gap.is_finite() && max_gap >= 0.0) {
                anyhow::bail!("--max-gap must be a number of seconds >= 0");
            }
            portcullis::record::cli::replay(
                &store.target()?,
                &session,
                speed,
                std::time::Duration::from_secs_f64(max_gap),
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(())
        }
        Command::Export {
            session,
            store,
            format: ExportFormat::Asciicast,
            output,
        } => {
            init_cli_tracing();
            let target = store.target()?;
            match output {
                Some(path) => {
                    let mut file = std::fs::File::create(&path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    portcullis::record::cli::export_asciicast(&target, &session, &mut file)?;
                }
                None => portcullis::record::cli::export_asciicast(
                    &target,
                    &session,
                    &mut std::io::stdout().lock(),
                )?,
            }
            Ok(())
        }
    }
}

/// Warnings of the store-reading commands (a torn frame file, records of another schema) on
/// stderr, so stdout stays the data; `RUST_LOG` to see more.
fn init_cli_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    use portcullis::record::{cli, query, Decision};
    match command {
        AuditCommand::Verify { store, from, key } => {
            let ok = cli::audit_verify(
                &store.target()?,
                from,
                key.as_deref(),
                &mut std::io::stdout(),
            )?;
            if !ok {
                anyhow::bail!("the audit log does not verify");
            }
            Ok(())
        }
        AuditCommand::Query {
            store,
            user,
            verb,
            resource,
            namespace,
            since,
            until,
            decision,
            kind,
            output,
        } => {
            let time = |t: Option<String>| -> anyhow::Result<Option<u64>> {
                t.map(|t| {
                    query::parse_time(&t).ok_or_else(|| {
                        anyhow::anyhow!("{t:?} is not an RFC 3339 time or Unix seconds")
                    })
                })
                .transpose()
            };
            let decision = match decision.as_deref() {
                None => None,
                Some("allow") => Some(Decision::Allow),
                Some("deny") => Some(Decision::Deny),
                Some(other) => anyhow::bail!("--decision {other:?}: expected allow or deny"),
            };
            let kind = kind
                .map(|k| {
                    query::RecordKind::parse(&k)
                        .ok_or_else(|| anyhow::anyhow!("--kind {k:?}: expected request or node"))
                })
                .transpose()?;
            let filter = query::AuditFilter {
                user,
                verb,
                resource,
                namespace,
                since_ns: time(since)?,
                until_ns: time(until)?,
                decision,
                kind,
            };
            cli::audit_query(
                &store.target()?,
                &filter,
                matches!(output, OutputFormat::Json),
                &mut std::io::stdout().lock(),
            )?;
            Ok(())
        }
    }
}

fn run_sessions(command: SessionsCommand) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List { store, output } => {
            portcullis::record::cli::sessions_list(
                &store.target()?,
                matches!(output, OutputFormat::Json),
                &mut std::io::stdout().lock(),
            )?;
            Ok(())
        }
    }
}

fn run_node(command: NodeCommand) -> anyhow::Result<()> {
    use portcullis::redirect::{self, NodeConfig};
    redirect::init_tracing();
    match command {
        NodeCommand::Run { config } => redirect::run(NodeConfig::load(&config)?)?,
        NodeCommand::Uninstall { config } => redirect::uninstall(&NodeConfig::load(&config)?)?,
    }
    Ok(())
}

fn run_policy(command: PolicyCommand) -> anyhow::Result<()> {
    use portcullis::policy::{render_explanation, Policy, Subject};
    match command {
        PolicyCommand::Check { file } => {
            let policy = Policy::load_file(&file)?;
            println!("{}: ok: {}", file.display(), policy.summary());
            Ok(())
        }
        PolicyCommand::Explain {
            config,
            user,
            groups,
            issuer,
            show_unmatched,
            request,
        } => {
            let [method, target] = request.as_slice() else {
                anyhow::bail!("expected METHOD and PATH after `--`");
            };
            let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("{method:?} is not an HTTP method"))?;
            let (path, query) = match target.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (target.as_str(), None),
            };
            let info = portcullis::classify::classify(&method, path, query).map_err(|e| {
                anyhow::anyhow!("the gateway refuses this request before policy (400): {e}")
            })?;
            let policy = Policy::load_file(&config)?;
            let subject = Subject {
                user: &user,
                groups: &groups,
                issuer: &issuer,
            };
            let explanation = policy.explain(&subject, &info, std::time::SystemTime::now());
            print!("{}", render_explanation(&explanation, show_unmatched));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent_and_store_commands_parse() {
        Cli::command().debug_assert();
        let parsed = Cli::try_parse_from([
            "portcullis",
            "audit",
            "query",
            "--store",
            "/s",
            "--decision",
            "deny",
            "--output",
            "json",
        ]);
        assert!(parsed.is_ok());
        let both = Cli::try_parse_from([
            "portcullis",
            "audit",
            "verify",
            "--store",
            "/s",
            "--config",
            "/c",
        ]);
        assert!(both.is_err(), "--store and --config exclude each other");
        let neither = Cli::try_parse_from(["portcullis", "sessions", "list"]);
        assert!(neither.is_err(), "a store is required");
        assert!(Cli::try_parse_from([
            "portcullis",
            "export",
            "s1",
            "--config",
            "/c",
            "--format",
            "asciicast",
            "-o",
            "x.cast",
        ])
        .is_ok());
    }
}
