//! `GET /applications/{token}/chats/{number}/messages/search?query=…` (also `q=`): partial,
//! case-insensitive matches of every word, ranked by relevance, paginated, scoped to one chat.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use confab_search::{QueryError, SearchRequest};
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{Page, PageQuery};
use crate::state::AppState;
use crate::views::MessageView;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The words to find (each as a substring, case-insensitive), 2 to 200 characters; words
    /// are runs of letters or digits, and only those of 2 or more count. Required (or its alias
    /// `q`): without either the answer is `400 invalid_query`; a query without such a word
    /// finds nothing.
    #[param(required = true, min_length = 2, max_length = 200)]
    query: Option<String>,
    /// Alias of `query` (same rules), used when `query` is absent.
    #[param(min_length = 2, max_length = 200)]
    q: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}/messages/search",
    tag = "search",
    params(("token" = String, Path), ("number" = u64, Path), SearchQuery, PageQuery),
    responses(
        (status = 200, body = [MessageView], headers(("Link" = String, description = "RFC 8288 paging links: `first`, `prev` after the first page, `next` when there are more items"))), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn search(
    State(state): State<AppState>,
    Path((token, chat)): Path<(String, String)>,
    Query(query): Query<SearchQuery>,
    page: Page,
) -> Result<axum::response::Response> {
    let (tenant, chat) = super::messages::chat_of(
        &state,
        &token,
        &chat,
        super::messages::Use::Existing,
        confab_core::client_token::Right::Read,
    )
    .await?;
    let app = tenant.id;
    // A search needs something to look for: no query is a 400, as a one-letter query is.
    if query.query.is_none() && query.q.is_none() {
        return Err(QueryError::Empty.into());
    }
    // Both spellings are checked when given, as the document says; `query` wins.
    for given in [&query.query, &query.q].into_iter().flatten() {
        if given.chars().count() < 2 {
            return Err(QueryError::Empty.into());
        }
        if given.chars().count() > confab_search::query::MAX_QUERY_CHARS {
            return Err(QueryError::TooLong.into());
        }
    }
    let text = query.query.or(query.q).unwrap_or_default();
    // One hit more than the page tells whether there is a next page; at the edge of the result
    // window there is none, and the page itself is asked for.
    let request = match SearchRequest::new(app, chat, &text, page.probe_limit(), page.offset) {
        Err(QueryError::TooDeep) => SearchRequest::new(app, chat, &text, page.limit, page.offset),
        other => other,
    };
    let request = match request {
        Ok(request) => request,
        // No word to look for, or a page past the result window: nothing can be there.
        Err(QueryError::Empty | QueryError::TooDeep) => {
            return Ok(page.answer(Vec::<MessageView>::new()))
        }
        Err(other) => return Err(other.into()),
    };
    let started = Instant::now();
    let hits = state.search.search(&request).await;
    state
        .metrics
        .search
        .query_duration
        .with_label_values(&[state.search_label])
        .observe(started.elapsed().as_secs_f64());
    let hits = hits.map_err(|e| {
        state
            .metrics
            .search
            .failures
            .with_label_values(&["query", "unavailable"])
            .inc();
        ApiError::Unavailable(format!("search: {e}"))
    })?;
    Ok(page.answer(
        hits.into_iter()
            .map(|h| MessageView {
                number: h.number,
                body: h.body,
                created_at: None,
                updated_at: None,
            })
            .collect(),
    ))
}
