//! `POST /applications/{token}/client_tokens`: the application's own server mints a client
//! token for one end user ([`confab_core::client_token`], [`crate::access`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use confab_core::client_token::{Claims, Right, Rights, DEFAULT_TTL_SECS, MAX_CHATS, MAX_TTL_SECS};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::JsonObject;
use crate::state::AppState;

/// What a client token may do.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTokenRequest {
    /// The chats it may touch (at most 100); omitted: every chat of the application.
    #[serde(default)]
    pub chats: Option<Vec<u64>>,
    /// Any of `read` (chats, messages, search), `post` (create messages), `edit` (update
    /// messages), `delete` (delete messages), `subscribe` (follow chats live); at least one.
    pub rights: Vec<String>,
    /// Its lifetime: 1 to 86400 seconds, 3600 when omitted.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A minted client token. Hand it to one end user; it stands for the application token in the
/// `{token}` segment of chat, message and event routes, within its chats and rights.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientTokenView {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(post, path = "/api/v1/applications/{token}/client_tokens", tag = "applications",
    params(("token" = String, Path, description = "the application token (a client token cannot mint)")),
    request_body(content((ClientTokenRequest = "application/json"))),
    responses(
        (status = 201, body = ClientTokenView),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn mint(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: JsonObject,
) -> Result<(StatusCode, Json<ClientTokenView>)> {
    let access = state.access(&token).await?;
    access.require_application()?;
    let request: ClientTokenRequest = serde_json::from_value(serde_json::Value::Object(body.0))
        .map_err(|error| ApiError::Unprocessable(error.to_string()))?;
    let claims = claims(access.tenant.id, request, chrono::Utc::now().timestamp())?;
    let expires_at = chrono::DateTime::from_timestamp(claims.expires_at, 0)
        .ok_or_else(|| ApiError::Unprocessable("ttl_seconds is out of range".into()))?;
    let key = state.client_app(access.tenant.id).await?.key;
    Ok((
        StatusCode::CREATED,
        Json(ClientTokenView {
            token: claims.sign(&key).expose().to_owned(),
            expires_at,
        }),
    ))
}

/// The claims a request asks for, checked.
fn claims(application_id: u64, request: ClientTokenRequest, now: i64) -> Result<Claims> {
    let mut rights = Rights::default();
    for name in &request.rights {
        let right = Right::parse(name).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "rights: unknown right {name:?} (read, post, edit, delete, subscribe)"
            ))
        })?;
        rights = rights.with(right);
    }
    if rights.is_empty() {
        return Err(ApiError::Unprocessable(
            "rights: name at least one of read, post, edit, delete, subscribe".into(),
        ));
    }
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::Unprocessable(format!(
            "ttl_seconds: 1 to {MAX_TTL_SECS}"
        )));
    }
    let chats = match request.chats {
        None => None,
        Some(mut chats) => {
            chats.sort_unstable();
            chats.dedup();
            if chats.is_empty() || chats.len() > MAX_CHATS || chats.contains(&0) {
                return Err(ApiError::Unprocessable(format!(
                    "chats: 1 to {MAX_CHATS} chat numbers (each at least 1), or omit it for every chat"
                )));
            }
            Some(chats)
        }
    };
    Ok(Claims {
        application_id,
        expires_at: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        rights,
        chats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(chats: Option<Vec<u64>>, rights: &[&str], ttl: Option<u64>) -> ClientTokenRequest {
        ClientTokenRequest {
            chats,
            rights: rights.iter().map(|r| (*r).to_owned()).collect(),
            ttl_seconds: ttl,
        }
    }

    #[test]
    fn requests_become_claims_or_clear_errors() {
        let claims = claims(
            7,
            request(Some(vec![3, 1, 3]), &["read", "post"], None),
            100,
        )
        .unwrap();
        assert_eq!(claims.chats, Some(vec![1, 3]));
        assert_eq!(claims.expires_at, 100 + 3600);
        assert_eq!(claims.rights.names(), vec!["read", "post"]);
        for bad in [
            request(None, &[], None),
            request(None, &["admin"], None),
            request(None, &["read"], Some(0)),
            request(None, &["read"], Some(86_401)),
            request(Some(vec![]), &["read"], None),
            request(Some(vec![0]), &["read"], None),
            request(Some((1..=101).collect()), &["read"], None),
        ] {
            assert!(matches!(
                super::claims(7, bad, 0),
                Err(ApiError::Unprocessable(_))
            ));
        }
    }
}
