//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::admin;
use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{applications, chats, events, messages, search};
use crate::views::{ApplicationInput, ApplicationView, ChatView, MessageInput, MessageView};
use confab_core::admin::{AdminApplication, ApplicationSpec, RotateRequest};
use confab_core::quota::{QuotaRequest, Quotas};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

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
        chats::create, chats::list, chats::show, chats::delete,
        messages::create, messages::list, messages::show, messages::update, messages::delete,
        events::events, search::search,
        admin::routes::show, admin::routes::put, admin::routes::rotate, admin::routes::delete,
    ),
    components(schemas(
        ApplicationView, ChatView, MessageView, ApplicationInput, MessageInput, ErrorBody, ErrorDetail,
        AdminApplication, ApplicationSpec, RotateRequest, QuotaRequest, Quotas
    )),
    modifiers(&AdminSecurity),
    tags(
        (name = "applications", description = "Tenants' applications, addressed by token"),
        (name = "chats", description = "Chats, numbered 1, 2, 3… per application"),
        (name = "messages", description = "Messages, numbered 1, 2, 3… per chat"),
        (name = "search", description = "Partial-match search of message bodies within a chat"),
        (name = "admin", description = "Platform administration (`/admin/v1`, bearer \
            `CONFAB_ADMIN_TOKEN`): applications by key, quotas, token rotation, deletion"),
    )
)]
pub struct ApiDoc;

/// Declares the admin API's bearer credential.
struct AdminSecurity;

impl utoipa::Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
