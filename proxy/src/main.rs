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
        Command::Serve { config } => {
            let config = portcullis::config::Config::load(&config)?;
            portcullis::serve::init_tracing(&config);
            portcullis::serve::run(config)?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            portcullis::config::Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}
