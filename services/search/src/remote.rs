//! The api's view of the embedded backend: the indexer process owns the tantivy index and serves
//! `GET /internal/search`; this backend forwards queries there, with the shared internal token
//! (`CONFAB_INTERNAL_TOKEN`) as a bearer credential when one is configured.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{Error, Hit, Result, Scope, SearchBackend, SearchDoc, SearchRequest};

/// The internal endpoint's query string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteQuery {
    pub application_id: u64,
    pub chat_number: u64,
    pub q: String,
    pub limit: u32,
    pub offset: u64,
}

impl RemoteQuery {
    pub fn from_request(r: &SearchRequest) -> Self {
        Self {
            application_id: r.application_id,
            chat_number: r.chat_number,
            q: r.terms.words.join(" "),
            limit: r.limit,
            offset: r.offset,
        }
    }

    pub fn into_request(self) -> std::result::Result<SearchRequest, crate::QueryError> {
        SearchRequest::new(
            self.application_id,
            self.chat_number,
            &self.q,
            self.limit,
            self.offset,
        )
    }
}

pub struct Remote {
    http: reqwest::Client,
    url: String,
    /// The indexer's internal token; not `Debug` (the struct is not), never logged.
    token: Option<String>,
}

impl Remote {
    /// `base` is the indexer's search address, e.g. `http://127.0.0.1:8081`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            url: format!("{}/internal/search", base.trim_end_matches('/')),
            token: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` (the indexer refuses queries without it when it
    /// has one configured).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }
}

impl SearchBackend for Remote {
    fn index<'a>(&'a self, _docs: &'a [SearchDoc]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Err(Error::Unsupported("index through the api")) })
    }

    fn delete(&self, _scope: Scope) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Err(Error::Unsupported("delete through the api")) })
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<Vec<Hit>>> {
        Box::pin(async move {
            let mut call = self
                .http
                .get(&self.url)
                .query(&RemoteQuery::from_request(request));
            if let Some(token) = &self.token {
                call = call.bearer_auth(token);
            }
            let response = call
                .send()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            if !response.status().is_success() {
                return Err(Error::Unavailable(format!(
                    "indexer answered {}",
                    response.status()
                )));
            }
            response
                .json::<Vec<Hit>>()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))
        })
    }
}
