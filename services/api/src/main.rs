//! `confab-api`: serve the API, or `confab-api migrate` to apply the migrations and exit.

use anyhow::Context;
use confab_api::{ApiConfig, Listeners};
use confab_runtime::{config, db, shutdown, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-api");
    let config = ApiConfig::from_env(&env)?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
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
