//! `/applications`: written to MySQL synchronously (a rare operation).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use axum::Json;
use confab_core::Token;

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::idempotency::{IdempotencyKey, Record};
use crate::repo;
use crate::state::AppState;
use crate::views::{ApplicationInput, ApplicationView};

#[utoipa::path(post, path = "/api/v1/applications", tag = "applications",
    request_body(content((ApplicationInput = "application/json"), (ApplicationInput = "application/x-www-form-urlencoded"))),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[ -~]{1,255}$", description = "Makes a retry safe: the \
        same key with the same body within 24 h answers what the first request answered (the same \
        application); with another body, 422 idempotency_key_reused.")),
    responses(
        (status = 201, body = ApplicationView, headers(
            ("RateLimit-Policy" = String, description = "while creation is limited per client: `\"applications\";q=<burst>;w=<seconds to refill it>`"),
            ("RateLimit" = String, description = "`\"applications\";r=<creations left now>;t=<seconds until the whole burst is back>`"))),
        (status = 400, body = ErrorBody),
        (status = 403, description = "open creation is turned off (CONFAB_OPEN_APPLICATION_CREATION=false): applications come from the operator or the admin API", body = ErrorBody),
        (status = 429, description = "this client created too many applications; see `Retry-After`", body = ErrorBody),
        (status = 422, description = "a blank name, or the Idempotency-Key was used with another body",
            body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<axum::response::Response> {
    if !state.tenancy.open_creation {
        return Err(ApiError::Forbidden(
            "creating applications here is turned off on this deployment; they are provisioned \
             through the operator (an Application resource) or the admin API",
        ));
    }
    let name = state.limits.name(body.string("application", "name")?)?;
    let key = IdempotencyKey::from_request(&headers, "applications", &body.0)?;
    // A retry of a request already recorded is answered as the first one was: it creates
    // nothing, so it takes nothing from the client's creation limit.
    let recorded = match &key {
        Some(key) => state
            .idempotency
            .lookup(key)
            .await?
            .map(|(record, _)| record),
        None => None,
    };
    let mut rate = None;
    if let (Some(params), None) = (&state.tenancy.creation_rate, &recorded) {
        let client = client_of(&state, peer.as_ref().map(|p| p.0 .0), &headers);
        rate = Some(
            state
                .numbering
                .admit(
                    &state.keys.creation_rate(&client),
                    params,
                    (
                        "applications",
                        "application_creation",
                        "this client creates applications faster than the deployment allows",
                    ),
                )
                .await?,
        );
    }
    let replayed = recorded.is_some();
    let external_key = match &key {
        Some(key) => Some(application_key(&state, key, recorded).await?),
        None => None,
    };
    let token = Token::generate();
    let row =
        repo::insert_application(&state.db, &name, token.expose(), external_key.as_deref()).await?;
    state
        .tokens
        .insert(row.token.clone(), state.tenant_of(&row));
    state.settle_new_application(row.id).await;
    tracing::info!("application created");
    let created_token = row.token.clone();
    let mut response = axum::response::IntoResponse::into_response((
        StatusCode::CREATED,
        Json(ApplicationView::from(row)),
    ));
    if let Some(rate) = &rate {
        crate::error::rate_limit_headers(response.headers_mut(), rate);
    }
    super::created_headers(&mut response, uri.path(), &created_token, replayed);
    Ok(response)
}

/// Who is creating an application, for the per-client limit: behind a proxy, the last address
/// of the configured header (the one the proxy in front of the api appended; what comes before
/// it, the client could have written itself), else the peer address. Only a well-formed IP
/// address is taken from the header.
fn client_of(state: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> String {
    state
        .tenancy
        .client_ip_header
        .as_deref()
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok())
        .or_else(|| peer.map(|p| p.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The key the application of an idempotent request is inserted under: the one an earlier
/// request with the same key recorded (`recorded`, as the caller looked it up), or a new one
/// recorded now.
async fn application_key(
    state: &AppState,
    key: &IdempotencyKey,
    mut recorded: Option<Record>,
) -> Result<String> {
    for _ in 0..3 {
        if let Some(record) = recorded.take() {
            return record.application_key.ok_or(ApiError::IdempotencyMismatch);
        }
        let application_key = format!("idempotency:{}", uuid::Uuid::new_v4());
        let record = Record::for_application(key, application_key.clone());
        if state.idempotency.create(key, &record).await?.is_some() {
            return Ok(application_key);
        }
        // Another request with this key recorded first: use its record.
        recorded = state
            .idempotency
            .lookup(key)
            .await?
            .map(|(record, _)| record);
    }
    Err(ApiError::Unavailable(
        "idempotency record changed concurrently".to_owned(),
    ))
}

#[utoipa::path(get, path = "/api/v1/applications", tag = "applications",
    params(PageQuery),
    responses((status = 200, body = [ApplicationView], headers(("Link" = String, description = "RFC 8288 paging links: `first`, `prev` after the first page, `next` when there are more items"))), (status = 400, body = ErrorBody), (status = 403, description = "listing is turned off (CONFAB_LIST_APPLICATIONS=false)", body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(State(state): State<AppState>, page: Page) -> Result<axum::response::Response> {
    if !state.tenancy.list_applications {
        return Err(ApiError::Forbidden(
            "listing every application is turned off on this deployment \
             (CONFAB_LIST_APPLICATIONS=false)",
        ));
    }
    let rows = repo::list_applications(&state.db, page.probe_limit(), page.offset).await?;
    let list_tokens = state.list_tokens;
    Ok(page.answer(
        rows.into_iter()
            .map(|row| {
                let mut view = ApplicationView::from(row);
                if !list_tokens {
                    view.token = None;
                }
                view
            })
            .collect::<Vec<_>>(),
    ))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}", tag = "applications",
    params(("token" = String, Path)),
    responses((status = 200, body = ApplicationView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<ApplicationView>> {
    state.access(&token).await?.require_application()?;
    let token = extract::token(&token)?;
    let row = repo::application_by_token(&state.db, token.expose())
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    Ok(Json(ApplicationView::presented(row, &token)))
}

#[utoipa::path(method(patch, put), path = "/api/v1/applications/{token}", tag = "applications",
    params(("token" = String, Path)), request_body(content((ApplicationInput = "application/json"), (ApplicationInput = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, body = ApplicationView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: JsonObject,
) -> Result<Json<ApplicationView>> {
    state.access(&token).await?.require_application()?;
    let token = extract::token(&token)?;
    let id = state.application_id(&token).await?;
    let name = state.limits.name(body.string("application", "name")?)?;
    repo::rename_application(&state.db, id, &name).await?;
    let row = repo::application_by_token(&state.db, token.expose())
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    Ok(Json(ApplicationView::presented(row, &token)))
}
