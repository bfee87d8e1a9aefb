//! The operator's configuration. Every variable is listed in docs/operations.md with its default.

use std::net::SocketAddr;
use std::time::Duration;

use confab_runtime::config::{millis_within, parse_within, secs_within, socket_addr, string};
use confab_runtime::{ConfigError, Env, Secret};

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// `CONFAB_OPERATOR_API_URL`, default `http://127.0.0.1:8080`: where the api's admin API is.
    pub api_url: String,
    /// `CONFAB_PUBLIC_API_URL`, default the api URL: the base URL written into each tenant's
    /// Secret (what clients should call).
    pub public_api_url: String,
    /// `CONFAB_ADMIN_TOKEN` (required): the admin API's bearer credential.
    pub admin_token: Secret<String>,
    /// `CONFAB_OPERATOR_WATCH_NAMESPACE`, default empty: watch one namespace, or all.
    pub watch_namespace: Option<String>,
    /// `CONFAB_TOKEN_GRACE_SECS`, default 3600 (0, revoke at once, to 2592000 — the admin API's
    /// maximum): how long a rotated token keeps working unless the resource says otherwise.
    pub token_grace_secs: u64,
    /// `CONFAB_OPERATOR_RESYNC_SECS`, default 300 (1 to 86400): how often a Ready resource is reconciled
    /// anyway (refreshes `status.chatsCount`, repairs drift the watches missed).
    pub resync: Duration,
    /// `CONFAB_OPERATOR_RELIST_SECS`, default 300 (10 to 86400): how often the watch of
    /// `Application`s starts over with a fresh list. `/livez` fails when neither the watch nor a
    /// reconcile made progress for three times this long.
    pub relist: Duration,
    /// `CONFAB_OPERATOR_HTTP_TIMEOUT_MS`, default 10000 (100 to 300000): timeout of each admin
    /// API call.
    pub http_timeout: Duration,
    /// `CONFAB_ADMIN_ADDR`, default `0.0.0.0:9094` (port 1 to 65535): health and metrics.
    pub admin_addr: SocketAddr,
}

impl OperatorConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let api_url = string(env, "CONFAB_OPERATOR_API_URL", "http://127.0.0.1:8080");
        let admin_token = string(env, "CONFAB_ADMIN_TOKEN", "");
        if admin_token.is_empty() {
            return Err(ConfigError::Invalid {
                name: "CONFAB_ADMIN_TOKEN",
                reason: "is required (the api's admin credential)".into(),
            });
        }
        Ok(Self {
            public_api_url: string(env, "CONFAB_PUBLIC_API_URL", &api_url),
            api_url,
            admin_token: Secret::new(admin_token),
            watch_namespace: Some(string(env, "CONFAB_OPERATOR_WATCH_NAMESPACE", ""))
                .filter(|ns| !ns.is_empty()),
            // The admin API refuses a grace longer than 30 days.
            token_grace_secs: parse_within(env, "CONFAB_TOKEN_GRACE_SECS", 3600, 0..=2_592_000)?,
            // 0 would requeue every Ready resource at once, forever.
            resync: secs_within(env, "CONFAB_OPERATOR_RESYNC_SECS", 300, 1..=86_400)?,
            // Below 10 s the lists themselves would be most of the operator's work.
            relist: secs_within(env, "CONFAB_OPERATOR_RELIST_SECS", 300, 10..=86_400)?,
            // 0 would fail every admin API call.
            http_timeout: millis_within(
                env,
                "CONFAB_OPERATOR_HTTP_TIMEOUT_MS",
                10_000,
                100..=300_000,
            )?,
            admin_addr: socket_addr(
                env,
                "CONFAB_ADMIN_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 9094)),
            )?,
        })
    }
}

impl OperatorConfig {
    /// How long the watch and the reconciles may make no progress before `/livez` fails: three
    /// relist periods, so one slow or failed list is not a restart.
    pub fn stall_limit(&self) -> Duration {
        self.relist * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_required_and_defaults_apply() {
        let mut env = Env::new();
        assert!(OperatorConfig::from_env(&env).is_err());
        env.insert("CONFAB_ADMIN_TOKEN".into(), "t".into());
        let c = OperatorConfig::from_env(&env).unwrap();
        assert_eq!(c.public_api_url, c.api_url);
        assert_eq!(c.watch_namespace, None);
        assert_eq!(c.token_grace_secs, 3600);
        assert_eq!(c.admin_addr.port(), 9094);
        assert_eq!(c.relist, Duration::from_secs(300));
        assert_eq!(c.stall_limit(), Duration::from_secs(900));
    }

    #[test]
    fn numeric_settings_refuse_zero_negative_and_out_of_range_values() {
        for (name, bad) in [
            ("CONFAB_TOKEN_GRACE_SECS", "-1"),
            ("CONFAB_TOKEN_GRACE_SECS", "2592001"),
            ("CONFAB_OPERATOR_RESYNC_SECS", "0"),
            ("CONFAB_OPERATOR_RESYNC_SECS", "-300"),
            ("CONFAB_OPERATOR_RESYNC_SECS", "86401"),
            ("CONFAB_OPERATOR_RELIST_SECS", "9"),
            ("CONFAB_OPERATOR_RELIST_SECS", "86401"),
            ("CONFAB_OPERATOR_HTTP_TIMEOUT_MS", "0"),
            ("CONFAB_OPERATOR_HTTP_TIMEOUT_MS", "300001"),
            ("CONFAB_ADMIN_ADDR", "0.0.0.0:0"),
        ] {
            let env = confab_runtime::config::env(&[("CONFAB_ADMIN_TOKEN", "t"), (name, bad)]);
            let error = OperatorConfig::from_env(&env).expect_err(name).to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        let env = confab_runtime::config::env(&[
            ("CONFAB_ADMIN_TOKEN", "t"),
            ("CONFAB_TOKEN_GRACE_SECS", "0"),
        ]);
        assert_eq!(OperatorConfig::from_env(&env).unwrap().token_grace_secs, 0);
    }
}
