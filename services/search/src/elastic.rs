//! The Elasticsearch backend.
//!
//! The index is created at start-up from the checked-in `elasticsearch/mapping.json`: `body` is
//! analysed twice, as words (`standard`, for ranking) and as 2–3-grams of letters and digits
//! (`body.ngram`, for partial matching). Documents are indexed with external versioning (the
//! stream sequence), so Elasticsearch itself rejects an older version. Queries are built as JSON
//! from [`Terms`](crate::Terms): n-grams as exact `term` queries, words in a `match` query (which
//! does not parse syntax), chat scope as `filter` clauses — user text never becomes query syntax.
//! Every request has a timeout (the transport's), so a hung cluster fails a call instead of
//! stalling the indexer or an api request.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use elasticsearch::auth::Credentials;
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesRefreshParts};
use elasticsearch::params::Conflicts;
use elasticsearch::{BulkParts, DeleteByQueryParts, Elasticsearch, SearchParts};

use crate::{newest_per_id, Error, Hit, Result, Scope, SearchBackend, SearchDoc, SearchRequest};

/// The checked-in index settings and mapping.
pub const MAPPING: &str = include_str!("../elasticsearch/mapping.json");

pub struct Elastic {
    client: Elasticsearch,
    index: String,
}

fn unavailable(error: impl std::fmt::Display) -> Error {
    Error::Unavailable(error.to_string())
}

impl Elastic {
    /// A client of the cluster at `url` whose every request (connecting, sending and reading
    /// the whole answer) fails after `timeout`.
    pub fn new(url: &str, index: &str, timeout: Duration) -> Result<Self> {
        Ok(Self {
            client: Elasticsearch::new(transport(url, timeout)?),
            index: index.to_owned(),
        })
    }

    /// Creates the index with the checked-in mapping unless it exists.
    pub async fn ensure_index(&self) -> Result<()> {
        let exists = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[&self.index]))
            .send()
            .await
            .map_err(unavailable)?;
        if exists.status_code().is_success() {
            return Ok(());
        }
        let mapping: Value = serde_json::from_str(MAPPING).expect("the checked-in mapping is JSON");
        let created = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(&self.index))
            .body(mapping)
            .send()
            .await
            .map_err(unavailable)?;
        let status = created.status_code();
        let body: Value = created.json().await.unwrap_or_default();
        // Another indexer replica may have created it first.
        if status.is_success() || body["error"]["type"] == "resource_already_exists_exception" {
            Ok(())
        } else {
            Err(Error::Rejected(format!("index creation failed: {body}")))
        }
    }
}

/// `Transport::single_node` with a request timeout: credentials in the URL become basic
/// authentication (left in the URL, reqwest would send a second `Authorization` header).
fn transport(url: &str, timeout: Duration) -> Result<Transport> {
    let mut url = Url::parse(url).map_err(unavailable)?;
    let credentials = match url.password() {
        Some(password) if !url.username().is_empty() => {
            let credentials = Credentials::Basic(url.username().to_owned(), password.to_owned());
            url.set_username("")
                .and_then(|()| url.set_password(None))
                .map_err(|()| {
                    Error::Unavailable("the Elasticsearch URL cannot carry credentials".into())
                })?;
            Some(credentials)
        }
        _ => None,
    };
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(timeout);
    if let Some(credentials) = credentials {
        builder = builder.auth(credentials);
    }
    builder.build().map_err(unavailable)
}

/// The bulk request lines for a batch: newest version per message, external versioning.
pub fn bulk_lines(index: &str, docs: &[SearchDoc]) -> Vec<Value> {
    let mut lines = Vec::new();
    for doc in newest_per_id(docs) {
        lines.push(json!({"index": {
            "_index": index,
            "_id": doc.id(),
            "version": doc.version,
            "version_type": "external",
        }}));
        lines.push(json!({
            "application_id": doc.application_id,
            "chat_number": doc.chat_number,
            "number": doc.number,
            "body": doc.body,
        }));
    }
    lines
}

/// The search request body for one query.
pub fn search_body(request: &SearchRequest) -> Value {
    let grams: Vec<Value> = request
        .terms
        .required_grams()
        .into_iter()
        .map(|g| json!({"term": {"body.ngram": g}}))
        .collect();
    json!({
        "from": request.offset,
        "size": request.limit,
        "_source": ["number", "body"],
        "query": {"bool": {
            "filter": [
                {"term": {"application_id": request.application_id}},
                {"term": {"chat_number": request.chat_number}},
            ],
            "must": grams,
            "should": [
                {"match": {"body": {"query": request.terms.words.join(" "), "boost": 2.0}}}
            ],
        }},
        "sort": ["_score", {"number": "asc"}],
    })
}

/// Whether a bulk response failed for a reason other than a stale version (409, expected under
/// redelivery).
pub fn bulk_failures(response: &Value) -> Vec<String> {
    response["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let result = &item["index"];
            let status = result["status"].as_u64().unwrap_or(0);
            (status >= 300 && status != 409).then(|| result["error"].to_string())
        })
        .collect()
}

impl SearchBackend for Elastic {
    fn index<'a>(&'a self, docs: &'a [SearchDoc]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let lines: Vec<elasticsearch::http::request::JsonBody<Value>> =
                bulk_lines(&self.index, docs)
                    .into_iter()
                    .map(Into::into)
                    .collect();
            if lines.is_empty() {
                return Ok(());
            }
            let response = self
                .client
                .bulk(BulkParts::Index(&self.index))
                .body(lines)
                .send()
                .await
                .map_err(unavailable)?;
            if !response.status_code().is_success() {
                return Err(Error::Unavailable(format!(
                    "bulk answered {}",
                    response.status_code()
                )));
            }
            let body: Value = response.json().await.map_err(unavailable)?;
            let failures = bulk_failures(&body);
            if failures.is_empty() {
                Ok(())
            } else {
                Err(Error::Rejected(failures.join("; ")))
            }
        })
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<Vec<Hit>>> {
        Box::pin(async move {
            let response = self
                .client
                .search(SearchParts::Index(&[&self.index]))
                .body(search_body(request))
                .send()
                .await
                .map_err(unavailable)?;
            if !response.status_code().is_success() {
                return Err(Error::Unavailable(format!(
                    "search answered {}",
                    response.status_code()
                )));
            }
            let body: Value = response.json().await.map_err(unavailable)?;
            Ok(body["hits"]["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| Hit {
                    number: h["_source"]["number"].as_u64().unwrap_or_default(),
                    body: h["_source"]["body"].as_str().unwrap_or_default().to_owned(),
                    score: h["_score"].as_f64().unwrap_or_default() as f32,
                })
                .collect())
        })
    }

    fn delete(&self, scope: Scope) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // A delete by query only sees what the last refresh made visible.
            self.client
                .indices()
                .refresh(IndicesRefreshParts::Index(&[&self.index]))
                .send()
                .await
                .map_err(unavailable)?
                .error_for_status_code()
                .map_err(unavailable)?;
            let response = self
                .client
                .delete_by_query(DeleteByQueryParts::Index(&[&self.index]))
                .conflicts(Conflicts::Proceed)
                .refresh(true)
                .body(delete_body(scope))
                .send()
                .await
                .map_err(unavailable)?
                .error_for_status_code()
                .map_err(unavailable)?;
            let body: Value = response.json().await.map_err(unavailable)?;
            delete_outcome(&body)
        })
    }
}

/// The `_delete_by_query` body that removes one application's or one chat's documents.
pub fn delete_body(scope: Scope) -> Value {
    match scope {
        Scope::Application(application_id) => {
            json!({"query": {"term": {"application_id": application_id}}})
        }
        Scope::Chat {
            application_id,
            chat_number,
        } => json!({"query": {"bool": {"filter": [
            {"term": {"application_id": application_id}},
            {"term": {"chat_number": chat_number}},
        ]}}}),
    }
}

/// Whether a `_delete_by_query` answer deleted everything it matched: documents rewritten while
/// it ran (version conflicts), failures or a timeout mean the purge must be repeated.
pub fn delete_outcome(response: &Value) -> Result<()> {
    let conflicts = response["version_conflicts"].as_u64().unwrap_or_default();
    let failures = response["failures"].as_array().map_or(0, Vec::len);
    if conflicts == 0 && failures == 0 && response["timed_out"] != true {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "delete by query incomplete: {conflicts} version conflicts, {failures} failures, \
             timed out: {}",
            response["timed_out"]
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Terms;

    #[test]
    fn deleting_an_application_or_a_chat_is_a_term_filter_on_its_ids() {
        assert_eq!(
            delete_body(Scope::Application(42)),
            json!({"query": {"term": {"application_id": 42}}})
        );
        assert_eq!(
            delete_body(Scope::Chat {
                application_id: 42,
                chat_number: 7
            }),
            json!({"query": {"bool": {"filter": [
                {"term": {"application_id": 42}},
                {"term": {"chat_number": 7}},
            ]}}})
        );
    }

    #[test]
    fn a_delete_with_conflicts_failures_or_a_timeout_is_repeated() {
        let done =
            json!({"deleted": 3, "version_conflicts": 0, "failures": [], "timed_out": false});
        assert!(delete_outcome(&done).is_ok());
        for incomplete in [
            json!({"deleted": 2, "version_conflicts": 1, "failures": [], "timed_out": false}),
            json!({"deleted": 2, "version_conflicts": 0, "failures": [{"cause": {}}], "timed_out": false}),
            json!({"deleted": 2, "version_conflicts": 0, "failures": [], "timed_out": true}),
        ] {
            assert!(delete_outcome(&incomplete).is_err(), "{incomplete}");
        }
    }

    #[test]
    fn the_mapping_gives_partial_matching_on_a_subfield() {
        let m: Value = serde_json::from_str(MAPPING).unwrap();
        let tokenizer = &m["settings"]["analysis"]["tokenizer"]["confab_ngram"];
        assert_eq!(tokenizer["type"], "ngram");
        assert_eq!(tokenizer["min_gram"], 2);
        assert_eq!(tokenizer["max_gram"], 3);
        let body = &m["mappings"]["properties"]["body"];
        assert_eq!(body["analyzer"], "standard");
        assert_eq!(body["fields"]["ngram"]["analyzer"], "confab_ngram");
        assert_eq!(m["mappings"]["dynamic"], "strict");
    }

    #[test]
    fn the_query_is_exact_json_with_filters_and_no_syntax() {
        let request = SearchRequest {
            application_id: 7,
            chat_number: 3,
            terms: Terms::parse("Wor hel* OR").unwrap(),
            limit: 10,
            offset: 20,
        };
        assert_eq!(
            search_body(&request),
            json!({
                "from": 20,
                "size": 10,
                "_source": ["number", "body"],
                "query": {"bool": {
                    "filter": [
                        {"term": {"application_id": 7}},
                        {"term": {"chat_number": 3}},
                    ],
                    "must": [
                        {"term": {"body.ngram": "wor"}},
                        {"term": {"body.ngram": "hel"}},
                        {"term": {"body.ngram": "or"}},
                    ],
                    "should": [{"match": {"body": {"query": "wor hel or", "boost": 2.0}}}],
                }},
                "sort": ["_score", {"number": "asc"}],
            })
        );
    }

    #[test]
    fn bulk_uses_external_versions_and_tolerates_stale_ones() {
        let doc = |v: u64, body: &str| SearchDoc {
            application_id: 1,
            chat_number: 2,
            number: 3,
            body: body.into(),
            version: v,
        };
        let lines = bulk_lines("idx", &[doc(4, "old"), doc(9, "new")]);
        assert_eq!(
            lines,
            vec![
                json!({"index": {"_index": "idx", "_id": "1:2:3", "version": 9, "version_type": "external"}}),
                json!({"application_id": 1, "chat_number": 2, "number": 3, "body": "new"}),
            ]
        );
        let response = json!({"items": [
            {"index": {"status": 201}},
            {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
        ]});
        let failures = bulk_failures(&response);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("mapper_parsing_exception"));
    }

    /// A "cluster" that accepts connections and never answers.
    async fn silent_cluster() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        url
    }

    #[tokio::test]
    async fn a_cluster_that_never_answers_fails_every_call_within_the_timeout() {
        let timeout = Duration::from_millis(300);
        let backend = Elastic::new(&silent_cluster().await, "idx", timeout).unwrap();
        let request = SearchRequest::new(1, 2, "hello", 10, 0).unwrap();
        let doc = SearchDoc {
            application_id: 1,
            chat_number: 2,
            number: 3,
            body: "hello".into(),
            version: 1,
        };
        fails_within(
            "search",
            timeout,
            Box::pin(async { backend.search(&request).await.map(drop) }),
        )
        .await;
        fails_within("bulk", timeout, backend.index(std::slice::from_ref(&doc))).await;
        fails_within(
            "delete by query",
            timeout,
            backend.delete(Scope::Application(1)),
        )
        .await;
        fails_within("index creation", timeout, Box::pin(backend.ensure_index())).await;
    }

    /// Asserts `call` fails as unavailable once `timeout` passed, and well before a bound far
    /// above it (without a timeout, it would hang forever).
    async fn fails_within(what: &str, timeout: Duration, call: BoxFuture<'_, Result<()>>) {
        let bound = Duration::from_secs(10);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(bound, call)
            .await
            .unwrap_or_else(|_| panic!("{what} still hangs after {bound:?}"));
        assert!(
            matches!(outcome, Err(Error::Unavailable(_))),
            "{what}: {outcome:?}"
        );
        assert!(
            started.elapsed() >= timeout,
            "{what} failed before the timeout"
        );
    }

    /// The behavioural suite against a real cluster, opt-in (command in docs/development.md).
    #[tokio::test]
    #[ignore = "needs Elasticsearch: CONFAB_TEST_ELASTICSEARCH_URL=http://… cargo nextest run -p confab-search --run-ignored only"]
    async fn elasticsearch_backend_passes_the_behavioural_suite() {
        let url = std::env::var("CONFAB_TEST_ELASTICSEARCH_URL").expect(
            "CONFAB_TEST_ELASTICSEARCH_URL names the Elasticsearch cluster to test against",
        );
        let index = format!("confab-test-{}", std::process::id());
        let backend = Elastic::new(&url, &index, Duration::from_secs(30)).unwrap();
        backend.ensure_index().await.unwrap();
        crate::testing::suite(&ElasticRefreshing(&backend)).await;
    }

    /// Elasticsearch makes writes searchable after a refresh; the suite expects read-your-writes.
    struct ElasticRefreshing<'a>(&'a Elastic);

    impl SearchBackend for ElasticRefreshing<'_> {
        fn index<'a>(&'a self, docs: &'a [SearchDoc]) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.0.index(docs).await?;
                self.0
                    .client
                    .indices()
                    .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[&self
                        .0
                        .index]))
                    .send()
                    .await
                    .map_err(unavailable)?;
                Ok(())
            })
        }
        fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<Vec<Hit>>> {
            self.0.search(request)
        }
        fn delete(&self, scope: Scope) -> BoxFuture<'_, Result<()>> {
            self.0.delete(scope)
        }
    }
}
