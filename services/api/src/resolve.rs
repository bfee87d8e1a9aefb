//! Resolving what a request names: token → application, and whether a chat or message exists.
//!
//! All of it is reads: an in-process cache first, then Redis (for chats acknowledged by JetStream
//! but maybe not persisted yet), then MySQL, then the stream itself (an item acknowledged but not
//! yet persisted whose Redis mark was lost with Redis' data).

use confab_core::Token;
use redis::AsyncCommands;

use crate::error::{ApiError, Result};
use crate::repo;
use crate::state::{AppState, Tenant};

impl AppState {
    /// The application a token belongs to, with the quotas in force.
    pub async fn tenant(&self, token: &Token) -> Result<Tenant> {
        if let Some(tenant) = self.tokens.get(token.expose()) {
            return Ok(tenant);
        }
        let started = std::time::Instant::now();
        let row = repo::application_by_token(&self.db, token.expose()).await?;
        self.metrics
            .dependencies
            .mysql("application_by_token", started);
        let row = row.ok_or(ApiError::NotFound("application"))?;
        let tenant = self.tenant_of(&row);
        self.tokens.insert(token.expose().to_owned(), tenant);
        Ok(tenant)
    }

    /// The internal id of the application a token belongs to.
    pub async fn application_id(&self, token: &Token) -> Result<u64> {
        Ok(self.tenant(token).await?.id)
    }

    pub fn tenant_of(&self, row: &repo::ApplicationRow) -> Tenant {
        Tenant {
            id: row.id,
            quotas: row
                .requested_quotas()
                .resolve(&self.quota_defaults, self.hard_max_body_bytes),
        }
    }

    /// Whether a chat exists: persisted, or created and still in flight.
    pub async fn chat_exists(&self, application_id: u64, number: u64) -> Result<bool> {
        if self.known_chats.contains_key(&(application_id, number)) {
            return Ok(true);
        }
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let in_flight: bool = redis
            .exists(self.keys.chat_in_flight(application_id, number))
            .await?;
        self.metrics.dependencies.redis("chat_in_flight", started);
        let exists = in_flight
            || repo::chat(&self.db, application_id, number)
                .await?
                .is_some()
            || self
                .publisher
                .creation_stored(
                    &self
                        .publisher
                        .jetstream()
                        .subjects
                        .chat_created(application_id, number),
                )
                .await?;
        if exists {
            self.known_chats.insert((application_id, number), ());
        }
        Ok(exists)
    }

    /// Remembers a chat whose creation JetStream acknowledged, for every api replica.
    pub async fn mark_chat_in_flight(&self, application_id: u64, number: u64) -> Result<()> {
        let mut redis = self.redis.clone();
        let ttl = self.in_flight_ttl.as_secs().max(1);
        let started = std::time::Instant::now();
        let () = redis
            .set_ex(self.keys.chat_in_flight(application_id, number), 1u8, ttl)
            .await?;
        self.metrics
            .dependencies
            .redis("mark_chat_in_flight", started);
        self.known_chats.insert((application_id, number), ());
        Ok(())
    }

    /// Whether a message exists: persisted, or its creation event stored in the stream. (A number
    /// merely handed out by the sequence is not enough: its publish may have failed, and an
    /// update must not create a message nobody created.)
    pub async fn message_exists(
        &self,
        application_id: u64,
        chat: u64,
        number: u64,
    ) -> Result<bool> {
        if repo::message(&self.db, application_id, chat, number)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        let subjects = &self.publisher.jetstream().subjects;
        self.publisher
            .creation_stored(&subjects.message_created(application_id, chat, number))
            .await
    }
}
