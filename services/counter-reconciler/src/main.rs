//! `confab-counter-reconciler`: keep counts fresh, or `confab-counter-reconciler repair` to
//! recompute every count once and exit.

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab_counter_reconciler::{pool, repair, ReconcilerConfig};
use confab_runtime::{config, shutdown, telemetry};
use tokio::net::TcpListener;

/// The Confab counter reconciler. Without a command it keeps counts fresh; configuration comes
/// from the environment (see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Recompute every count once and exit.
    Repair,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything else: a mistyped argument exits 2 with a usage error, never starts a server.
    let cli = Cli::parse();
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-counter-reconciler");
    let config = ReconcilerConfig::from_env(&env)?;
    if let Some(Command::Repair) = cli.command {
        let stats = repair::repair(&pool(&config.common)?, config.repair_chunk)
            .await
            .context("repairing counts")?;
        tracing::info!(
            chats = stats.chats,
            applications = stats.applications,
            "repair done"
        );
        return Ok(());
    }
    let admin = TcpListener::bind(config.common.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.common.admin_addr))?;
    let result = confab_counter_reconciler::run(config, admin, shutdown::signal()).await;
    if let Err(error) = &result {
        tracing::error!(%error, "counter reconciler failed");
    }
    telemetry.shutdown();
    Ok(result?)
}
