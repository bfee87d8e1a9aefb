//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{applications, chats, messages, search};
use crate::views::{ApplicationInput, ApplicationView, ChatView, MessageInput, MessageView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab API",
        description = "Applications, chats and messages. Every route is also served without the \
                       `/api/v1` prefix. Request bodies are also accepted in the Rails-wrapped form \
                       (`{\"application\": {...}}`, `{\"message\": {...}}`). Errors are \
                       `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        applications::create, applications::list, applications::show, applications::update,
        chats::create, chats::list, chats::show,
        messages::create, messages::list, messages::show, messages::update,
        search::search,
    ),
    components(schemas(
        ApplicationView, ChatView, MessageView, ApplicationInput, MessageInput, ErrorBody, ErrorDetail
    )),
    tags(
        (name = "applications", description = "Tenants' applications, addressed by token"),
        (name = "chats", description = "Chats, numbered 1, 2, 3… per application"),
        (name = "messages", description = "Messages, numbered 1, 2, 3… per chat"),
        (name = "search", description = "Partial-match search of message bodies within a chat"),
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
