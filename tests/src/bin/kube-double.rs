//! `kube-double`: runs the Kubernetes API test double as a process (for the demo and for clients that need a real
//! endpoint). Prints "listening on https://..." once ready and serves until SIGINT or SIGTERM.
//! It must never bind anything but the address it is given, and never print the token.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use portcullis_tests::double::{self, DoubleConfig};

#[derive(Debug, Parser)]
#[command(
    name = "kube-double",
    about = "Kubernetes API test double for Portcullis"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for ca.pem, server.pem, server-key.pem and requests.jsonl.
    #[arg(long)]
    dir: PathBuf,
    /// File holding the one accepted bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// The user the token authenticates as; this user may impersonate.
    #[arg(long, default_value = "portcullis-gateway")]
    user: String,
    /// Further users allowed to impersonate (the token's user always may).
    #[arg(long = "impersonator")]
    impersonators: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        args.token_file.display()
    );
    let mut impersonators = args.impersonators;
    impersonators.push(args.user.clone());
    let running = double::start(DoubleConfig {
        listen: args.listen,
        dir: args.dir,
        tokens: vec![(token, args.user)],
        impersonators,
    })
    .await
    .context("starting the double")?;
    // The demo scripts wait for this exact line on stdout.
    println!("listening on {}", running.url());
    tracing::info!(ca = %running.ca_pem_path.display(), log = %running.log_path.display(), "listening on {}", running.url());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
