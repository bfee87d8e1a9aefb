//! `confab-indexer`: index message events for search, or `confab-indexer reindex` to rebuild the
//! index from MySQL (directly into Elasticsearch, or through the running indexer's internal
//! endpoint for the embedded index, which has a single writer).

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab_indexer::{reindex, BackendConfig, IndexerConfig, Listeners};
use confab_runtime::{config, db, shutdown, telemetry};
use tokio::net::TcpListener;

/// The Confab indexer. Without a command it indexes message events for search; configuration
/// comes from the environment (see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild the search index from MySQL and exit (through the running indexer for the
    /// embedded index).
    Reindex,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything else: a mistyped argument exits 2 with a usage error, never starts a server.
    let cli = Cli::parse();
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-indexer");
    let config = IndexerConfig::from_env(&env)?;
    if let Some(Command::Reindex) = cli.command {
        // A failed rebuild is an error: the process exits non-zero with its cause.
        let result = reindex_command(&config, &env).await;
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "reindex failed");
        }
        telemetry.shutdown();
        return result;
    }
    let listeners = Listeners {
        admin: TcpListener::bind(config.common.admin_addr)
            .await
            .with_context(|| format!("binding {}", config.common.admin_addr))?,
        search: TcpListener::bind(config.search_addr)
            .await
            .with_context(|| format!("binding {}", config.search_addr))?,
    };
    // Boxed: the indexer's whole run is a large future (clippy::large_futures).
    let result = Box::pin(confab_indexer::run(config, listeners, shutdown::signal())).await;
    if let Err(error) = &result {
        tracing::error!(%error, "indexer failed");
    }
    telemetry.shutdown();
    Ok(result?)
}

async fn reindex_command(config: &IndexerConfig, env: &config::Env) -> anyhow::Result<()> {
    if let BackendConfig::Elasticsearch { .. } = config.backend {
        let backend = confab_indexer::backend(&config.backend).await?;
        let pool = db::pool(&config.common)?;
        let n = reindex::reindex(&pool, backend.as_ref(), &reindex::Progress::default()).await?;
        tracing::info!(indexed = n, "reindex finished");
        return Ok(());
    }
    // The embedded index belongs to the running indexer: ask it, then follow its progress.
    let base = config::string(env, "CONFAB_SEARCH_URL", "http://127.0.0.1:8081");
    let token = config.internal_token.as_ref();
    let n = reindex::through_indexer(&base, token, Duration::from_secs(1)).await?;
    tracing::info!(indexed = n, "reindex finished");
    Ok(())
}
