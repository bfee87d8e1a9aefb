//! `confab-operator`: the Kubernetes operator. `confab-operator crdgen` prints the CRD YAML.

use anyhow::Context;
use confab_operator::OperatorConfig;
use confab_runtime::{config, shutdown, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("crdgen") {
        print!("{}", confab_operator::crd::crd_yaml());
        return Ok(());
    }
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-operator");
    let config = OperatorConfig::from_env(&env)?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_addr))?;
    let result = confab_operator::run(config, admin, shutdown::signal()).await;
    if let Err(error) = &result {
        tracing::error!(%error, "operator failed");
    }
    telemetry.shutdown();
    Ok(result?)
}
