//! `confab-persister`: consume events from JetStream and write them to MySQL.

use anyhow::Context;
use clap::Parser;
use confab_persister::PersisterConfig;
use confab_runtime::{config, shutdown, telemetry};
use tokio::net::TcpListener;

/// The Confab persister: writes chat and message events to MySQL. It takes no arguments;
/// configuration comes from the environment (see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {}

/// One thread: the persister waits on MySQL, NATS and Redis and does little between, so a
/// multi-threaded runtime only adds cross-thread wake-ups (measured: context switches were the
/// largest single entry of its profile under the create-path benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Before anything else: any argument exits 2 with a usage error, never starts the consumer.
    Cli::parse();
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-persister");
    let config = PersisterConfig::from_env(&env)?;
    let admin = TcpListener::bind(config.common.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.common.admin_addr))?;
    let result = confab_persister::run(config, admin, shutdown::signal()).await;
    if let Err(error) = &result {
        tracing::error!(%error, "persister failed");
    }
    telemetry.shutdown();
    Ok(result?)
}
