//! Resolving what a request names: token → application, and whether a chat or message exists.
//!
//! All of it is reads: an in-process cache first, then Redis (chats marked deleted), then MySQL,
//! then the stream itself (an item acknowledged but not yet persisted, or a deletion not yet
//! persisted), then MySQL once more. The events stream drops an event once every consumer
//! acked it, and the persister acks only after its commit, so an event that left the stream
//! between the first MySQL read and the stream lookup is in MySQL by the second read: whatever
//! the stream acknowledged is found in one of the three reads. The first read may come from the
//! read replica ([`crate::reads`]), which can lack a row but never shows a changed one as it was;
//! the second is always the primary's.

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
        let (tenant, _) = self.remember_application(&row);
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
        let exists = match self.chat_state_first(application_id, number).await? {
            Some(state) => state == repo::State::Live,
            None => {
                let in_flight = self
                    .publisher
                    .stored(&subjects.chat_created(application_id, number))
                    .await?;
                self.chat_state_again(application_id, number, in_flight)
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
        match self.chat_state_first(application_id, number).await? {
            Some(state) => Ok(state == repo::State::Live),
            None => {
                let in_flight = self.chat_exists(application_id, number).await?
                    && !self
                        .publisher
                        .stored(&subjects.chat_deleted(application_id, number))
                        .await?;
                self.chat_state_again(application_id, number, in_flight)
                    .await
            }
        }
    }

    /// The chat's state in MySQL, read first (from the read replica when it may answer: it
    /// never shows a deleted chat live, [`crate::reads`]). When it has no row, the stream and
    /// then the primary decide.
    async fn chat_state_first(
        &self,
        application_id: u64,
        number: u64,
    ) -> Result<Option<repo::State>> {
        Ok(self
            .reads
            .read(application_id, |db| async move {
                repo::chat_state(&db, application_id, number).await
            })
            .await?)
    }

    /// The chat's state in the primary MySQL, read again after the stream was looked at (`in_flight`, what
    /// the stream said), which it replaces when the chat has reached MySQL meanwhile (see the
    /// module's note).
    async fn chat_state_again(
        &self,
        application_id: u64,
        number: u64,
        in_flight: bool,
    ) -> Result<bool> {
        let state = repo::chat_state(&self.db, application_id, number).await?;
        Ok(live_or(state, in_flight))
    }

    /// Starts a just-created application's sequence epoch settled, so its first chat is numbered
    /// at once ([`crate::numbering::Numbering::settle_new_application`]). Best effort: with Redis
    /// away, the epoch starts at the first chat instead, which then waits out the quiescence.
    pub async fn settle_new_application(&self, application_id: u64) {
        if let Err(error) = self
            .numbering
            .settle_new_application(application_id, self.reads.settle())
            .await
        {
            tracing::warn!(%error, "could not settle a new application's sequence epoch");
        }
    }

    /// Remembers a chat whose creation JetStream acknowledged, in this replica; the others find it
    /// in MySQL or, until it is persisted, in the stream.
    pub fn remember_chat(&self, application_id: u64, number: u64) {
        self.known_chats.insert((application_id, number), ());
    }

    /// Marks a chat deleted for every api replica (no expiry): from here on the numbering script
    /// refuses its messages and reads answer 404. `published`: its deletion is in the stream
    /// (a second `DELETE` is 404); before that the mark says only "being deleted", and a
    /// `DELETE` retried after a failed publish publishes it again.
    pub async fn mark_chat_deleted(
        &self,
        application_id: u64,
        number: u64,
        published: bool,
    ) -> Result<()> {
        self.set_mark(
            self.keys.chat_deleted(application_id, number),
            published,
            None,
            "mark_chat_deleted",
        )
        .await?;
        self.known_chats.invalidate(&(application_id, number));
        Ok(())
    }

    /// Marks a message deleted, as [`Self::mark_chat_deleted`] does a chat; the persister removes
    /// the mark once the deletion is in MySQL.
    pub async fn mark_message_deleted(
        &self,
        application_id: u64,
        chat: u64,
        number: u64,
        published: bool,
    ) -> Result<()> {
        // Expiring with the stream's maximum age as a backstop: by then the deletion is in MySQL
        // or was never applied (a message of a chat deleted meanwhile, whose mark the persister
        // does not clear).
        let expiry = self.publisher.jetstream().config.max_age;
        self.set_mark(
            self.keys.message_deleted(application_id, chat, number),
            published,
            Some(expiry),
            "mark_message_deleted",
        )
        .await
    }

    async fn set_mark(
        &self,
        key: String,
        published: bool,
        expiry: Option<std::time::Duration>,
        what: &'static str,
    ) -> Result<()> {
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let value = if published { 2u8 } else { 1u8 };
        let () = match expiry {
            Some(expiry) => redis.set_ex(key, value, expiry.as_secs().max(1)).await?,
            None => redis.set(key, value).await?,
        };
        self.metrics.dependencies.redis(what, started);
        Ok(())
    }

    /// The deletion mark of a chat (`message: None`) or a message: `None` when it has none,
    /// `Some(true)` when its deletion is published (see [`Self::mark_chat_deleted`]).
    pub async fn deletion_mark(
        &self,
        application_id: u64,
        chat: u64,
        message: Option<u64>,
    ) -> Result<Option<bool>> {
        let key = match message {
            None => self.keys.chat_deleted(application_id, chat),
            Some(number) => self.keys.message_deleted(application_id, chat, number),
        };
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let mark: Option<u8> = redis.get(key).await?;
        self.metrics.dependencies.redis("deletion_mark", started);
        Ok(mark.map(|value| value == 2))
    }

    /// The highest message number persisted in a chat, for re-seeding its sequence. Re-seeding
    /// is also what follows a Redis loss, which loses the deletion marks: a chat deleted in MySQL
    /// or in the stream is marked again here, and the message refused. The stream is read before
    /// MySQL (a deletion that leaves the stream in between is in MySQL by then), and the caller
    /// reads the numbers in flight before calling this, for the same reason.
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
        let deletion = self.publisher.stored(&deletion_subject).await?;
        let (state, max) = tokio::try_join!(
            repo::chat_state(&self.db, application_id, chat),
            repo::max_message_number(&self.db, application_id, chat),
        )?;
        if state == Some(repo::State::Deleted) || deletion {
            self.mark_chat_deleted(application_id, chat, true).await?;
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
        if self
            .deletion_mark(application_id, chat, Some(number))
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let first = self
            .reads
            .read(application_id, |db| async move {
                repo::message_state(&db, application_id, chat, number).await
            })
            .await?;
        match first {
            Some(state) => Ok(state == repo::State::Live),
            None => {
                let subjects = &self.publisher.jetstream().subjects;
                let in_flight = self
                    .publisher
                    .stored(&subjects.message_created(application_id, chat, number))
                    .await?
                    && !self
                        .publisher
                        .stored(&subjects.message_deleted(application_id, chat, number))
                        .await?;
                // Again, on the primary: it may have left the stream for MySQL meanwhile (the
                // module's note), and the replica may not show that yet.
                let state = repo::message_state(&self.db, application_id, chat, number).await?;
                Ok(live_or(state, in_flight))
            }
        }
    }
}

/// What a second MySQL read says of an item when it has a row (live or deleted), else what the
/// stream said (`in_flight`): a row found on the second read is the newer truth.
fn live_or(state: Option<repo::State>, in_flight: bool) -> bool {
    state.map_or(in_flight, |state| state == repo::State::Live)
}
