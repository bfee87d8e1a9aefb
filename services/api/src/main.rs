//! `confab-api`: serve the API, or `confab-api migrate` to apply the migrations and exit.
//! Configuration comes from the environment; the command line only picks what to do.

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab_api::{ApiConfig, Listeners};
use confab_runtime::{config, db, shutdown, telemetry};
use tokio::net::TcpListener;

/// The Confab HTTP API. Without a command it serves the API; configuration comes from the
/// environment (see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything else: a mistyped argument exits 2 with a usage error, never starts a server.
    let cli = Cli::parse();
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-api");
    let config = ApiConfig::from_env(&env)?;
    if let Some(Command::Migrate) = cli.command {
        let pool = db::pool(&config.common)?;
        db::migrate(&pool).await.context("applying migrations")?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let listeners = Listeners {
        http: TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?,
        admin: TcpListener::bind(config.common.admin_addr)
            .await
            .with_context(|| format!("binding {}", config.common.admin_addr))?,
    };
    let result = confab_api::run(config, listeners, shutdown::signal()).await;
    if let Err(error) = &result {
        tracing::error!(%error, "api failed");
    }
    telemetry.shutdown();
    Ok(result?)
}
