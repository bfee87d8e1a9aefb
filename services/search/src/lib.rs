//! Message search behind one trait, [`SearchBackend`], with two real implementations:
//!
//! - [`embedded::Embedded`]: tantivy in the indexer process, the default when no Elasticsearch is
//!   configured (local quick start and CI). The api reaches it through the indexer's internal
//!   search endpoint ([`remote::Remote`]).
//! - [`elastic::Elastic`]: Elasticsearch, for production (checked-in mapping in
//!   `elasticsearch/mapping.json`).
//!
//! Both index 2- and 3-grams of the lowercased body and answer a query by requiring, for every
//! word of it, all of the word's n-grams ([`query::Terms`]), scoped to one chat by filters on
//! application id and chat number, and ranked by relevance with a bonus for whole-word matches.
//! Documents carry a version (the JetStream sequence of the event): an older version never
//! replaces a newer one, so redelivery and replays are harmless. A deleted message is a document
//! with an empty body (nothing matches it) and a deletion's version, which no update outranks. `testing` is the behavioural
//! suite both backends must pass.
//!
//! Cargo features select what a binary links: `embedded` (tantivy), `elasticsearch`, `remote`
//! (the client of the indexer's endpoint) and `testing` (the suite; tests and benchmarks only).

pub mod config;
#[cfg(feature = "elasticsearch")]
pub mod elastic;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod query;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use query::{QueryError, Terms};

/// One message as the search index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchDoc {
    pub application_id: u64,
    pub chat_number: u64,
    pub number: u64,
    pub body: String,
    /// The stream sequence of the event this body comes from.
    pub version: u64,
}

impl SearchDoc {
    /// The document id: one document per message, whatever the number of deliveries.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.application_id, self.chat_number, self.number
        )
    }
}

/// A search within one chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub application_id: u64,
    pub chat_number: u64,
    pub terms: Terms,
    pub limit: u32,
    pub offset: u64,
}

impl SearchRequest {
    /// Validates a search: the page must lie within [`query::MAX_RESULT_WINDOW`] and the text
    /// must parse ([`Terms::parse`]).
    pub fn new(
        application_id: u64,
        chat_number: u64,
        text: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Self, QueryError> {
        // Checked: the indexer's internal endpoint takes `offset` straight from its query string.
        let end = offset.checked_add(u64::from(limit));
        if end.is_none_or(|end| end > query::MAX_RESULT_WINDOW) {
            return Err(QueryError::TooDeep);
        }
        Ok(Self {
            application_id,
            chat_number,
            terms: Terms::parse(text)?,
            limit,
            offset,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub number: u64,
    pub body: String,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("search backend unavailable: {0}")]
    Unavailable(String),
    #[error("search backend rejected the request: {0}")]
    Rejected(String),
    #[error("this backend cannot {0}")]
    Unsupported(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a purge removes: every document of a (deleted) application, or of one (deleted) chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Application(u64),
    Chat {
        application_id: u64,
        chat_number: u64,
    },
}

/// A search backend. `index` applies a batch of documents (newest version wins); `search`
/// answers one query; `delete` removes every document of a scope and is idempotent.
pub trait SearchBackend: Send + Sync {
    fn index<'a>(&'a self, docs: &'a [SearchDoc]) -> BoxFuture<'a, Result<()>>;
    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<Vec<Hit>>>;
    fn delete(&self, scope: Scope) -> BoxFuture<'_, Result<()>>;
}

/// Keeps, per document id, only the highest version of a batch.
pub fn newest_per_id(docs: &[SearchDoc]) -> Vec<SearchDoc> {
    let mut by_id: std::collections::BTreeMap<String, &SearchDoc> =
        std::collections::BTreeMap::new();
    for doc in docs {
        let entry = by_id.entry(doc.id()).or_insert(doc);
        if doc.version > entry.version {
            *entry = doc;
        }
    }
    by_id.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(number: u64, version: u64, body: &str) -> SearchDoc {
        SearchDoc {
            application_id: 1,
            chat_number: 2,
            number,
            body: body.into(),
            version,
        }
    }

    #[test]
    fn a_batch_keeps_the_newest_version_of_each_message() {
        let out = newest_per_id(&[doc(1, 5, "new"), doc(1, 3, "old"), doc(2, 1, "x")]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body, "new");
        assert_eq!(doc(1, 1, "").id(), "1:2:1");
    }

    #[test]
    fn a_page_beyond_the_window_is_refused_even_when_offset_plus_limit_overflows() {
        assert!(SearchRequest::new(1, 2, "hello", 10, 9_990).is_ok());
        assert_eq!(
            SearchRequest::new(1, 2, "hello", 10, 9_991),
            Err(QueryError::TooDeep)
        );
        assert_eq!(
            SearchRequest::new(1, 2, "hello", u32::MAX, u64::MAX),
            Err(QueryError::TooDeep)
        );
        assert_eq!(
            SearchRequest::new(1, 2, "hello", 1, u64::MAX),
            Err(QueryError::TooDeep)
        );
    }
}
