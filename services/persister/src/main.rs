//! `confab-persister`: consume events from JetStream and write them to MySQL.

use anyhow::Context;
use confab_persister::PersisterConfig;
use confab_runtime::{config, shutdown, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
