//! Who a request's `{token}` segment speaks for: the application itself (its token), or one end
//! user through a client token ([`confab_core::client_token`]) limited to some chats and rights.
//!
//! A client token is verified in process: its application's signing key (derived from the
//! application's current token) and allowed origins are cached per application for the token
//! cache's TTL, so after the first request of an application on a replica a verification is one
//! HMAC. A rotation or a deletion drops the cached key on the replica that served it, and on the
//! others within the TTL, as for application tokens.

use std::sync::Arc;

use confab_core::client_token::{Claims, ClientKey, Refused, Right, Unverified};
use confab_core::Token;

use crate::error::{ApiError, Result};
use crate::extract;
use crate::repo;
use crate::state::{AppState, Tenant};

/// An application as client tokens see it.
#[derive(Clone)]
pub struct ClientApp {
    pub key: ClientKey,
    pub tenant: Tenant,
}

/// What a request may do.
pub struct Access {
    pub tenant: Tenant,
    /// `None`: the application token, which may do everything.
    client: Option<Claims>,
}

impl Access {
    /// Refuses a client token that lacks `right` or does not cover `chat` (`None`: the
    /// application's list of chats).
    pub fn require(&self, right: Right, chat: Option<u64>) -> Result<()> {
        let Some(claims) = &self.client else {
            return Ok(());
        };
        if !claims.rights.allows(right) {
            return Err(ApiError::NotAllowed(format!(
                "this client token does not have the `{}` right",
                right.name()
            )));
        }
        if !claims.covers(chat) {
            return Err(ApiError::NotAllowed(match chat {
                Some(chat) => format!("this client token does not cover chat {chat}"),
                None => "this client token covers some chats only, not the list".to_owned(),
            }));
        }
        Ok(())
    }

    /// Refuses a client token: what only the application itself may do (create or delete chats,
    /// mint client tokens, read or rename the application).
    pub fn require_application(&self) -> Result<()> {
        match self.client {
            None => Ok(()),
            Some(_) => Err(ApiError::NotAllowed(
                "a client token cannot do this; use the application token".to_owned(),
            )),
        }
    }
}

impl AppState {
    /// Resolves a `{token}` segment: an application token (404 when unknown) or a client token
    /// (401 `invalid_token` or `token_expired`).
    pub async fn access(&self, raw: &str) -> Result<Access> {
        if let Some(client) = Unverified::parse(raw) {
            let app = self.client_app(client.application_id()).await?;
            let claims = client
                .verify(&app.key, chrono::Utc::now().timestamp())
                .map_err(|refused| match refused {
                    Refused::Invalid => ApiError::InvalidToken,
                    Refused::Expired => ApiError::TokenExpired,
                })?;
            return Ok(Access {
                tenant: app.tenant,
                client: Some(claims),
            });
        }
        let tenant = self.tenant(&extract::token(raw)?).await?;
        Ok(Access {
            tenant,
            client: None,
        })
    }

    /// The signing key and tenant of application `id`, cached.
    pub async fn client_app(&self, id: u64) -> Result<ClientApp> {
        if let Some(app) = self.client_apps.get(&id) {
            return Ok(app);
        }
        let row = repo::application_by_id(&self.db, id)
            .await?
            .ok_or(ApiError::InvalidToken)?;
        Ok(self.remember_application(&row).1)
    }

    /// Caches what requests need of an application row: its tenant (by token), its client-token
    /// key and its allowed origins (by id).
    pub fn remember_application(&self, row: &repo::ApplicationRow) -> (Tenant, ClientApp) {
        let tenant = self.tenant_of(row);
        let app = ClientApp {
            // The row's token comes from the database: always a well-formed token.
            key: ClientKey::of(&Token::parse(&row.token).unwrap_or_else(Token::generate)),
            tenant,
        };
        self.client_apps.insert(row.id, app.clone());
        self.origins
            .insert(row.id, Arc::from(row.allowed_origins().into_boxed_slice()));
        (tenant, app)
    }

    /// Forgets what is cached of application `id` (after it changed, was rotated or deleted).
    pub fn forget_application(&self, id: u64) {
        self.client_apps.invalidate(&id);
        self.origins.invalidate(&id);
    }
}
