//! One step of the indexer: a delivered batch of message events in, documents in the search
//! backend and events acked out. Versions are stream sequences, so redelivery and out-of-order
//! updates never let an older body win.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use confab_core::{Envelope, Event};
use confab_runtime::jetstream::JetStream;
use confab_runtime::{consume, db, dead_letter, metrics};
use confab_search::{Error, SearchBackend, SearchDoc};
use sqlx::MySqlPool;

use crate::purge;

pub const SERVICE: &str = "indexer";

#[derive(Clone)]
pub struct Worker {
    pub backend: Arc<dyn SearchBackend>,
    pub backend_label: &'static str,
    pub js: JetStream,
    pub db: MySqlPool,
}

struct Item {
    doc: SearchDoc,
    envelope: Envelope,
    message: jetstream::Message,
}

impl Worker {
    #[tracing::instrument(level = "debug", skip_all, fields(size = messages.len()))]
    pub async fn process(&self, messages: Vec<jetstream::Message>) {
        let mut items = Vec::with_capacity(messages.len());
        for message in messages {
            let (version, _) = consume::observe_delivery(SERVICE, &message);
            match Envelope::decode(&message.payload) {
                Ok(envelope) => match &envelope.event {
                    Event::MessageCreated(m) | Event::MessageUpdated(m) => items.push(Item {
                        doc: SearchDoc {
                            application_id: m.application_id,
                            chat_number: m.chat_number,
                            number: m.number,
                            body: m.body.clone(),
                            version,
                        },
                        envelope,
                        message,
                    }),
                    // Not a message event: nothing to index (the consumer filter excludes these).
                    Event::ChatCreated(_) => consume::ack_all(SERVICE, &[message]).await,
                },
                Err(error) => {
                    self.dead_letter(&message, "undecodable", &error.to_string())
                        .await
                }
            }
        }
        let Some(items) = self.drop_deleted_applications(items).await else {
            return;
        };
        if items.is_empty() {
            return;
        }
        match self.index(&items).await {
            Ok(()) => self.indexed(&items).await,
            Err(Error::Rejected(reason)) if items.len() > 1 => {
                tracing::warn!(%reason, "batch rejected; indexing its documents one by one");
                for item in items {
                    let one = [item];
                    match self.index(&one).await {
                        Ok(()) => self.indexed(&one).await,
                        Err(error) => self.failed(&one[0].message, &error).await,
                    }
                }
            }
            Err(error) => {
                for item in &items {
                    self.failed(&item.message, &error).await;
                }
            }
        }
    }

    /// Acks and drops the documents of deleted applications (their purge must stay final); hands
    /// the batch back when MySQL cannot tell.
    async fn drop_deleted_applications(&self, items: Vec<Item>) -> Option<Vec<Item>> {
        let apps = purge::application_ids(items.iter().map(|i| &i.doc));
        match db::deleted_applications(&self.db, &apps).await {
            Ok(deleted) if deleted.is_empty() => Some(items),
            Ok(deleted) => {
                let (dropped, kept): (Vec<Item>, Vec<Item>) = items
                    .into_iter()
                    .partition(|i| deleted.contains(&i.doc.application_id));
                tracing::info!(
                    count = dropped.len(),
                    "dropping events of deleted applications"
                );
                let messages: Vec<jetstream::Message> =
                    dropped.into_iter().map(|i| i.message).collect();
                consume::ack_all(SERVICE, &messages).await;
                Some(kept)
            }
            Err(error) => {
                let reason = format!("cannot check for deleted applications: {error}");
                for item in &items {
                    consume::hand_back(&self.js, SERVICE, &item.message, &reason).await;
                }
                None
            }
        }
    }

    async fn index(&self, items: &[Item]) -> Result<(), Error> {
        let docs: Vec<SearchDoc> = items.iter().map(|i| i.doc.clone()).collect();
        let started = Instant::now();
        let result = self.backend.index(&docs).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::SEARCH_BULK_DURATION
            .with_label_values(&[self.backend_label, outcome])
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let reason = match error {
                Error::Rejected(_) => "rejected",
                _ => "unavailable",
            };
            metrics::SEARCH_FAILURES
                .with_label_values(&["index", reason])
                .inc();
        }
        result
    }

    async fn indexed(&self, items: &[Item]) {
        // An application deleted while this batch was written may already have been purged.
        let apps = purge::application_ids(items.iter().map(|i| &i.doc));
        if let Err(error) = purge::delete_if_deleted(&self.db, &*self.backend, &apps).await {
            // The purge loop repeats for the grace period and catches these too.
            tracing::warn!(%error, "cannot re-check the batch for deleted applications");
        }
        metrics::SEARCH_DOCS_INDEXED
            .with_label_values(&[self.backend_label])
            .inc_by(items.len() as u64);
        metrics::BATCH_SIZE
            .with_label_values(&[SERVICE])
            .observe(items.len() as f64);
        for item in items {
            let kind = item.envelope.event.kind().as_str();
            metrics::observe_since(&metrics::INDEX_LAG, kind, item.envelope.occurred_at);
        }
        let messages: Vec<jetstream::Message> = items.iter().map(|i| i.message.clone()).collect();
        consume::ack_all(SERVICE, &messages).await;
    }

    async fn failed(&self, message: &jetstream::Message, error: &Error) {
        match error {
            Error::Rejected(reason) => self.dead_letter(message, "rejected", reason).await,
            other => consume::hand_back(&self.js, SERVICE, message, &other.to_string()).await,
        }
    }

    async fn dead_letter(&self, message: &jetstream::Message, class: &'static str, reason: &str) {
        dead_letter::send(&self.js, SERVICE, message, class, reason).await;
    }
}
