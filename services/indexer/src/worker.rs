//! What the indexer does with a delivered batch of message events: documents written to the
//! search backend; the shared consumer worker ([`confab_runtime::consume`]) acks after that, and
//! splits, dead-letters or hands back on failure. Versions are stream sequences, so redelivery
//! and out-of-order updates never let an older body win; a deleted message is an empty document
//! at a deletion's version, which no update outranks ([`confab_core::event::write_version`]).

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use confab_core::event::write_version;
use confab_core::{Envelope, Event};
use confab_runtime::consume::{self, Delivery, Failure, Handler, Refusal};
use confab_runtime::{deletion, metrics};
use confab_search::{Error, SearchBackend, SearchDoc};
use sqlx::MySqlPool;

use crate::metrics::Metrics;
use crate::purge;

pub const SERVICE: &str = "indexer";

#[derive(Clone)]
pub struct Worker {
    pub backend: Arc<dyn SearchBackend>,
    pub backend_label: &'static str,
    pub db: MySqlPool,
    pub consume: consume::Context,
    pub metrics: Metrics,
}

pub struct Item {
    doc: SearchDoc,
    envelope: Envelope,
}

impl Handler for Worker {
    type Item = Item;

    fn decode(&self, message: &jetstream::Message, version: u64) -> Result<Option<Item>, Refusal> {
        let envelope = Envelope::decode(&message.payload).map_err(|e| e.to_string())?;
        consume::refuse_late_creation(
            message,
            &envelope,
            self.consume.js.config.creation_horizon(),
        )?;
        let version = write_version(&envelope.event, version);
        let doc = match &envelope.event {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => SearchDoc {
                application_id: m.application_id,
                chat_number: m.chat_number,
                number: m.number,
                body: m.body.clone(),
                version,
            },
            Event::MessageDeleted(m) => SearchDoc {
                application_id: m.application_id,
                chat_number: m.chat_number,
                number: m.number,
                body: String::new(),
                version,
            },
            // Not a message event: nothing to index (the consumer filter excludes these; a
            // deleted chat's documents go by the purge).
            Event::ChatCreated(_) | Event::ChatDeleted(_) => return Ok(None),
        };
        Ok(Some(Item { doc, envelope }))
    }

    async fn apply(&self, batch: &mut Vec<Delivery<Item>>) -> Result<(), Failure> {
        self.drop_deleted(batch).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let docs: Vec<SearchDoc> = batch.iter().map(|d| d.item.doc.clone()).collect();
        let started = Instant::now();
        let result = self.backend.index(&docs).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .bulk_duration
            .with_label_values(&[self.backend_label, outcome])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                // An application or chat deleted while this batch was written may already be
                // purged.
                if let Err(error) = purge::delete_if_deleted(&self.db, &*self.backend, &docs).await
                {
                    // The purge loop repeats for the grace period and catches these too.
                    tracing::warn!(%error, "cannot re-check the batch for deletions");
                }
                Ok(())
            }
            Err(error) => {
                let (reason, failure) = match error {
                    Error::Rejected(reason) => ("rejected", Failure::Permanent(reason)),
                    other => ("unavailable", Failure::Transient(other.to_string())),
                };
                self.metrics
                    .search
                    .failures
                    .with_label_values(&["index", reason])
                    .inc();
                Err(failure)
            }
        }
    }

    fn applied(&self, batch: &[Delivery<Item>]) {
        self.metrics
            .docs_indexed
            .with_label_values(&[self.backend_label])
            .inc_by(batch.len() as u64);
        for delivery in batch {
            let envelope = &delivery.item.envelope;
            let kind = envelope.event.kind().as_str();
            metrics::observe_since(&self.metrics.index_lag, kind, envelope.occurred_at);
        }
    }
}

impl Worker {
    /// Acks and takes out of the batch the documents of deleted applications and chats (their
    /// purge must stay final); fails the batch (handed back) when MySQL cannot tell.
    async fn drop_deleted(&self, batch: &mut Vec<Delivery<Item>>) -> Result<(), Failure> {
        let docs = || batch.iter().map(|d| &d.item.doc);
        let unknown =
            |e: sqlx::Error| Failure::Transient(format!("cannot check for deletions: {e}"));
        let apps = deletion::deleted_applications(&self.db, &purge::application_ids(docs()))
            .await
            .map_err(unknown)?;
        let chats = deletion::deleted_chats(&self.db, &purge::chat_keys(docs()))
            .await
            .map_err(unknown)?;
        if apps.is_empty() && chats.is_empty() {
            return Ok(());
        }
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(batch).into_iter().partition(|d| {
            let doc = &d.item.doc;
            apps.contains(&doc.application_id)
                || chats.contains(&(doc.application_id, doc.chat_number))
        });
        *batch = kept;
        tracing::info!(
            count = dropped.len(),
            "dropping events of deleted applications and chats"
        );
        self.consume
            .ack_all(dropped.iter().map(|d| &d.message))
            .await;
        Ok(())
    }
}
