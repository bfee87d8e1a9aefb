//! Resolving what a request names: token → application, and whether a chat or message exists.
//!
//! All of it is reads: an in-process cache first, then Redis (chats marked deleted), then MySQL,
//! then the stream itself (an item acknowledged but not yet persisted, or a deletion not yet
//! persisted). The stream keeps every event for `CONFAB_STREAM_MAX_AGE_SECS` (a week), far longer
//! than persisting takes, so whatever it acknowledged is found in MySQL or in it.

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
        // Boxed: the lookup's future is large, and inline it would be carried (and copied) by
        // every request's future, cache hit or not.
        Box::pin(self.tenant_from_db(token)).await
    }

    async fn tenant_from_db(&self, token: &Token) -> Result<Tenant> {
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

    /// Whether a chat takes new messages: persisted and not deleted, or its creation is in the
    /// stream and not persisted yet. Cached per replica once true (the replica that created it
    /// caches it then): a chat's deletion is enforced where its numbers are taken (the numbering
    /// script refuses a number in a chat marked deleted), not here.
    pub async fn chat_exists(&self, application_id: u64, number: u64) -> Result<bool> {
        if self.known_chats.contains_key(&(application_id, number)) {
            return Ok(true);
        }
        // Boxed for the reason given in `tenant`.
        Box::pin(self.chat_exists_uncached(application_id, number)).await
    }

    async fn chat_exists_uncached(&self, application_id: u64, number: u64) -> Result<bool> {
        let subjects = &self.publisher.jetstream().subjects;
        let exists = match repo::chat_state(&self.db, application_id, number).await? {
            Some(state) => state == repo::State::Live,
            None => {
                self.publisher
                    .stored(&subjects.chat_created(application_id, number))
                    .await?
            }
        };
        if exists {
            self.known_chats.insert((application_id, number), ());
        }
        Ok(exists)
    }

    /// Whether a chat can be read, updated or deleted: not marked deleted in Redis (the mark is
    /// set before a deletion is published, so a client reads its own deletion at once), not
    /// deleted in MySQL, and persisted or in flight with no deletion in the stream.
    pub async fn chat_live(&self, application_id: u64, number: u64) -> Result<bool> {
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let marked: bool = redis
            .exists(self.keys.chat_deleted(application_id, number))
            .await?;
        self.metrics.dependencies.redis("chat_deleted", started);
        Ok(!marked && self.chat_undeleted(application_id, number).await?)
    }

    /// Whether a chat exists and no deletion of it is persisted or stored in the stream (the
    /// Redis mark aside).
    pub async fn chat_undeleted(&self, application_id: u64, number: u64) -> Result<bool> {
        let subjects = &self.publisher.jetstream().subjects;
        match repo::chat_state(&self.db, application_id, number).await? {
            Some(state) => Ok(state == repo::State::Live),
            None => Ok(self.chat_exists(application_id, number).await?
                && !self
                    .publisher
                    .stored(&subjects.chat_deleted(application_id, number))
                    .await?),
        }
    }

    /// Remembers a chat whose creation JetStream acknowledged, in this replica; the others find it
    /// in MySQL or, until it is persisted, in the stream.
    pub fn remember_chat(&self, application_id: u64, number: u64) {
        self.known_chats.insert((application_id, number), ());
    }

    /// Marks a chat deleted for every api replica (no expiry): from here on the numbering script
    /// refuses its messages and reads answer 404.
    pub async fn mark_chat_deleted(&self, application_id: u64, number: u64) -> Result<()> {
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let () = redis
            .set(self.keys.chat_deleted(application_id, number), 1u8)
            .await?;
        self.metrics
            .dependencies
            .redis("mark_chat_deleted", started);
        self.known_chats.invalidate(&(application_id, number));
        Ok(())
    }

    /// The highest message number persisted in a chat, for re-seeding its sequence. Re-seeding
    /// is also what follows a Redis loss, which loses the deletion marks: a chat deleted in MySQL
    /// or in the stream is marked again here, and the message refused.
    pub async fn persisted_message_max(
        &self,
        application_id: u64,
        chat: u64,
    ) -> Result<Option<u64>> {
        let deletion_subject = self
            .publisher
            .jetstream()
            .subjects
            .chat_deleted(application_id, chat);
        let (state, max, deletion) = tokio::try_join!(
            async { Ok::<_, ApiError>(repo::chat_state(&self.db, application_id, chat).await?) },
            async {
                Ok::<_, ApiError>(repo::max_message_number(&self.db, application_id, chat).await?)
            },
            self.publisher.stored(&deletion_subject),
        )?;
        if state == Some(repo::State::Deleted) || deletion {
            self.mark_chat_deleted(application_id, chat).await?;
            return Err(ApiError::NotFound("chat"));
        }
        Ok(max)
    }

    /// Whether a message exists and is not deleted: persisted, or its creation event stored in
    /// the stream with no deletion after it. (A number merely handed out by the sequence is not
    /// enough: its publish may have failed, and an update must not create a message nobody
    /// created.)
    pub async fn message_exists(
        &self,
        application_id: u64,
        chat: u64,
        number: u64,
    ) -> Result<bool> {
        match repo::message_state(&self.db, application_id, chat, number).await? {
            Some(state) => Ok(state == repo::State::Live),
            None => {
                let subjects = &self.publisher.jetstream().subjects;
                Ok(self
                    .publisher
                    .stored(&subjects.message_created(application_id, chat, number))
                    .await?
                    && !self
                        .publisher
                        .stored(&subjects.message_deleted(application_id, chat, number))
                        .await?)
            }
        }
    }
}
