//! Request extraction with Confab's error shape: JSON or form bodies (plain or Rails-wrapped), path
//! numbers and tokens, and pagination.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use confab_core::validation;
use confab_core::Token;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON object body, or a form body (`Content-Type: application/x-www-form-urlencoded`, flat or
/// Rails-nested) read as one; a "form" that is a JSON object (what `curl -d '{…}'` sends) is JSON. Malformed JSON is a 400; an empty body is an empty object
/// (creating a chat takes an optional body).
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM))
            });
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(_) => {
                    ApiError::PayloadTooLarge(state.max_request_bytes)
                }
                other => ApiError::MalformedJson(other.body_text()),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(serde_json::Map::new()));
        }
        // `curl -d '{…}'` labels a JSON body as a form: a body that opens like a JSON object is
        // read as JSON whatever its label (an encoded form never starts with `{`: it would be
        // `%7B`).
        let opens_an_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if is_form && !opens_an_object {
            return Ok(Self(form_fields(&bytes)));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::Unprocessable(
                "request body must be a JSON object".into(),
            )),
            Err(error) => Err(ApiError::MalformedJson(error.to_string())),
        }
    }
}

/// The form media type, accepted wherever JSON is (as Rails accepts it).
const FORM: &str = "application/x-www-form-urlencoded";

/// A form body as the JSON object it stands for: `name=x` is `{"name": "x"}`, and the Rails
/// nesting `message[body]=x` is `{"message": {"body": "x"}}`. Values are strings; a repeated
/// field keeps its last value.
fn form_fields(bytes: &[u8]) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(bytes) {
        let value = Value::String(value.into_owned());
        match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
            Some((outer, inner)) if !outer.is_empty() && !inner.contains(['[', ']']) => {
                let entry = map
                    .entry(outer.to_owned())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if let Value::Object(fields) = entry {
                    fields.insert(inner.to_owned(), value);
                }
            }
            _ => {
                map.insert(key.into_owned(), value);
            }
        }
    }
    map
}

impl JsonObject {
    /// A string field, accepted at the top level or inside the Rails-style wrapper object
    /// (`{"message": {"body": ...}}`). Present but not a string is a 422.
    pub fn string(&self, wrapper: &str, field: &'static str) -> Result<Option<&str>, ApiError> {
        let value = match self.0.get(wrapper) {
            Some(Value::Object(inner)) => inner.get(field),
            Some(_) if !self.0.contains_key(field) => {
                return Err(ApiError::Unprocessable(format!(
                    "`{wrapper}` must be an object"
                )))
            }
            _ => self.0.get(field),
        };
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::Unprocessable(format!(
                "`{field}` must be a string"
            ))),
        }
    }
}

/// Parses a path token; a malformed one cannot exist, so it is a 404 like an unknown one.
pub fn token(raw: &str) -> Result<Token, ApiError> {
    Token::parse(raw).ok_or(ApiError::NotFound("application"))
}

/// Parses a chat or message number from the path. A number that cannot exist (0, negative,
/// not a number, past the largest) names no chat or message: `404`, like a number not taken yet.
pub fn number(raw: &str, what: &'static str) -> Result<u64, ApiError> {
    validation::number(raw).ok_or(ApiError::NotFound(what))
}

/// `?page=&per_page=` as raw strings, so bad values get our error shape.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000000)]
    page: Option<String>,
    /// Items per page (default 50; at most `CONFAB_MAX_PER_PAGE`, 500 by default).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    per_page: Option<String>,
}

/// A resolved page: `LIMIT`/`OFFSET`, and what the `Link` header of its answer needs.
pub struct Page {
    pub limit: u32,
    pub offset: u64,
    /// The 1-based page number.
    number: u64,
    /// The request's path and its query without `page`/`per_page`, ending in `?` or `&`.
    base: String,
}

impl Page {
    /// How many items to fetch: one more than the page holds, so the answer knows whether a
    /// next page exists without counting.
    pub fn probe_limit(&self) -> u32 {
        self.limit.saturating_add(1)
    }

    /// The page's answer: at most `limit` of `items` (fetched with [`Self::probe_limit`]) as
    /// JSON, with an RFC 8288 `Link` header: `first` always, `prev` after the first page, `next`
    /// when there are more items.
    pub fn answer<T: serde::Serialize>(&self, mut items: Vec<T>) -> Response {
        let more = items.len() > self.limit as usize;
        items.truncate(self.limit as usize);
        let link = |page: u64, rel: &str| {
            format!(
                "<{}page={page}&per_page={}>; rel=\"{rel}\"",
                self.base, self.limit
            )
        };
        let mut links = vec![link(1, "first")];
        if self.number > 1 {
            links.push(link(self.number - 1, "prev"));
        }
        if more {
            links.push(link(self.number + 1, "next"));
        }
        let mut response = Json(items).into_response();
        if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
            response.headers_mut().insert(header::LINK, value);
        }
        response
    }
}

/// `path?` plus every query parameter of `uri` but `page` and `per_page`, ready for them.
fn link_base(uri: &axum::http::Uri) -> String {
    let mut base = format!("{}?", uri.path());
    for pair in uri.query().unwrap_or_default().split('&') {
        let name = pair.split('=').next().unwrap_or_default();
        if pair.is_empty() || name == "page" || name == "per_page" {
            continue;
        }
        base.push_str(pair);
        base.push('&');
    }
    base
}

impl FromRequestParts<AppState> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Query(q) = Query::<PageQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
        let num = |field: &'static str, raw: Option<String>| -> Result<Option<u64>, ApiError> {
            // Present means a number: `?per_page=` is as wrong as `?per_page=x`.
            raw.map(|s| {
                s.parse::<u64>().map_err(|_| {
                    ApiError::InvalidParameter(format!("`{field}` must be a positive integer"))
                })
            })
            .transpose()
        };
        let number = num("page", q.page)?;
        let (limit, offset) = state.limits.page(number, num("per_page", q.per_page)?)?;
        Ok(Self {
            limit,
            offset,
            number: number.unwrap_or(1),
            // As the client sent it: no router is nested, so the path is the whole one.
            base: link_base(&parts.uri),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn form_fields_read_flat_and_rails_nested_keys() {
        let map =
            form_fields(b"name=a+b&application%5Bname%5D=c&message[body]=x%26y&odd[a][b]=z&[x]=w");
        assert_eq!(
            Value::Object(map),
            json!({
                "name": "a b",
                "application": {"name": "c"},
                "message": {"body": "x&y"},
                "odd[a][b]": "z",
                "[x]": "w",
            })
        );
    }
}
