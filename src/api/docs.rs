//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`), served from assets vendored
//! into the binary at build time, so both work offline.
//!
//! The document is a contract a client can generate code from and validate against: besides
//! what each handler declares, `document` adds the error answers every endpoint of a kind can
//! give (a malformed id or body, no token, a body too large, an overloaded store) and the
//! limits this server was configured with (page sizes, text lengths). The API suite checks the
//! server against it with Schemathesis (`tests/api/contract.rs`).

use serde_json::{json, Map, Value};
use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use super::openapi::{add_links, link, merge, parameter, Link};
use super::{
    admin, auth, backup, branches, chats, compat, feedback, generations, health, messages, models,
    portable, search, shares, usage,
};
use crate::config::LimitSettings;

#[derive(OpenApi)]
#[openapi(
    info(title = "Arbor", description = "Branching AI conversations: every chat is a tree."),
    paths(
        auth::register, auth::login, auth::token, auth::me,
        chats::create, chats::list, chats::get, chats::update, chats::delete,
        messages::send, messages::list, messages::get, messages::edit, messages::regenerate,
        messages::tree, feedback::set, feedback::delete, shares::create, shares::list,
        shares::revoke, shares::shared, shares::import, portable::export, portable::import,
        backup::backup, backup::restore, search::search,
        generations::get, generations::events, generations::cancel, models::list, usage::usage,
        branches::create, branches::list, branches::get, branches::rename, branches::delete,
        branches::set_active,
        health::health, health::ready,
        admin::actors, admin::actor, admin::evict, admin::stats, admin::cluster,
        usage::admin_usage, usage::get_quota, usage::set_quota, usage::reset_quota,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::error::ErrorDetail,
        arbor_actors::inspect::ActorSort, arbor_actors::inspect::SortOrder,
    )),
    modifiers(&Security),
    tags(
        (name = "auth"), (name = "chats"), (name = "messages"), (name = "branches"), (name = "generations"),
        (name = "models"), (name = "usage", description = "Token usage as the providers reported it."),
        (name = "shares", description = "Read-only links to a snapshot of a conversation."),
        (name = "search", description = "Full-text search over every branch, naming where each hit is."),
        (name = "portability", description = "Export and import: Arbor's lossless format, ChatGPT's and Open WebUI's."), (name = "operations"),
        (name = "admin", description = "Admins only; anyone else gets 404."),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/api/v1/auth/token",
                Scopes::new(),
            ))])),
        );
    }
}

/// The document `/openapi.json` serves: the handlers' declarations, with the answers and limits
/// they share added (see the module's comment).
pub fn document(limits: &LimitSettings) -> Value {
    let mut api = ApiDoc::openapi();
    api.merge(compat::openapi::SeedDoc::openapi());
    let mut doc = serde_json::to_value(api).unwrap_or_else(|_| json!({}));
    compat::openapi::add_aliases(&mut doc);
    add_shared_responses(&mut doc);
    list_error_codes(&mut doc);
    describe_event_streams(&mut doc);
    add_limits(&mut doc, limits);
    add_links(&mut doc, &[LINKS, compat::openapi::LINKS]);
    doc
}

/// `ErrorDetail.code` takes one of the registry's codes (`crate::error::Code`), each
/// described with the status it comes with.
fn list_error_codes(doc: &mut Value) {
    let codes = crate::error::Code::ALL;
    let code = &mut doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
    if let Some(code) = code.as_object_mut() {
        code.insert(
            "enum".to_owned(),
            codes.iter().map(|c| json!(c.name())).collect(),
        );
        code.insert(
            "x-status".to_owned(),
            codes
                .iter()
                .map(|c| (c.name().to_owned(), json!(c.status().as_u16())))
                .collect::<Map<_, _>>()
                .into(),
        );
    }
}

/// What a created resource leads to, by the operation and status that created it. Clients (and
/// Schemathesis's stateful phase) follow these from a new chat, message, branch or generation to
/// what can be done with it.
const LINKS: &[(&str, &str, &[Link])] = &[
    (
        "create_chat",
        "201",
        &[
            link("get_chat", CHAT),
            link("update_chat", CHAT),
            link("delete_chat", CHAT),
            link("send_message", CHAT),
            link("list_messages", CHAT),
            link("get_tree", CHAT),
            link("list_branches", CHAT),
            Link {
                to: "set_active_branch",
                parameters: CHAT,
                body: Some(("branch_id", "$response.body#/active_branch_id")),
            },
        ],
    ),
    (
        "send_message",
        "201",
        &[
            link("get_message", FIRST_MESSAGE),
            link("edit_message", FIRST_MESSAGE),
            link("regenerate_message", FIRST_MESSAGE),
            Link {
                to: "create_branch",
                parameters: OWN_CHAT,
                body: Some(("from_message_id", "$response.body#/messages/0/id")),
            },
            link("get_branch", SENT_ON),
        ],
    ),
    (
        "create_branch",
        "201",
        &[
            link("get_branch", BRANCH),
            link("rename_branch", BRANCH),
            link("delete_branch", BRANCH),
            Link {
                to: "set_active_branch",
                parameters: OWN_CHAT,
                body: Some(("branch_id", "$response.body#/id")),
            },
        ],
    ),
    (
        "regenerate_message",
        "201",
        &[
            link("get_generation", GENERATION),
            link("stream_generation", GENERATION),
            link("cancel_generation", GENERATION),
        ],
    ),
];
const CHAT: &[(&str, &str)] = &[("chat_id", "$response.body#/id")];
const OWN_CHAT: &[(&str, &str)] = &[("chat_id", "$response.body#/chat_id")];
const FIRST_MESSAGE: &[(&str, &str)] = &[
    ("chat_id", "$response.body#/chat_id"),
    ("message_id", "$response.body#/messages/0/id"),
];
const SENT_ON: &[(&str, &str)] = &[
    ("chat_id", "$response.body#/chat_id"),
    ("branch_id", "$response.body#/branch_id"),
];
const BRANCH: &[(&str, &str)] = &[
    ("chat_id", "$response.body#/chat_id"),
    ("branch_id", "$response.body#/id"),
];
const GENERATION: &[(&str, &str)] = &[
    ("chat_id", "$response.body#/branch/chat_id"),
    ("generation_id", "$response.body#/generation_id"),
];

/// Error answers that many endpoints share, as `components.responses`, named by each status.
const SHARED: [(&str, &str, &str); 6] = [
    (
        "400",
        "BadRequest",
        "A malformed path id (`invalid_id`), query string (`invalid_query`) or JSON body \
         (`invalid_json`).",
    ),
    (
        "401",
        "Unauthorized",
        "No valid bearer token (`missing_token`, `invalid_token`, `token_expired`).",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than the server takes (`payload_too_large`).",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not of the declared media type (`unsupported_media_type`).",
    ),
    (
        "422",
        "Unprocessable",
        "The body is well-formed but not acceptable: a wrong type, a missing field, a value \
         out of its limits (the code names which).",
    ),
    (
        "503",
        "Unavailable",
        "Overloaded or a store is unreachable (`overloaded`, `storage_unavailable`); retry \
         after `Retry-After` seconds.",
    ),
];

/// Adds each operation the shared answers it can give and does not declare itself:
/// - 400 where it takes a path id, a query string or a body;
/// - 401 where it needs a token (admin operations answer 404 instead, as if absent);
/// - 413 and 415 where it takes a body, 422 where it takes a body or a query string (a value
///   out of its limits);
/// - 503 on everything but `/`, `/health` and `/ready` (a store or an actor's queue can refuse
///   any of it).
fn add_shared_responses(doc: &mut Value) {
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    let mut named = Map::new();
    for (_, name, description) in SHARED {
        named.insert(
            name.to_owned(),
            json!({"description": description,
                   "content": {"application/json": {"schema": error_body}}}),
        );
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert("responses".to_owned(), Value::Object(named));
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let params = operation["parameters"].as_array();
            let has_params = params.is_some_and(|p| !p.is_empty());
            let has_query = params.is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            let has_body = operation.get("requestBody").is_some();
            let secured = operation.get("security").is_some();
            let admin = operation["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "admin"));
            let mut wanted = Vec::new();
            if has_params || has_body {
                wanted.push("400");
            }
            if secured && !admin {
                wanted.push("401");
            }
            if has_body {
                wanted.extend(["413", "415"]);
            }
            if has_body || has_query {
                wanted.push("422");
            }
            // A store or an actor's queue can refuse anything but the service's own status.
            if !matches!(path.as_str(), "/" | "/health" | "/ready") {
                wanted.push("503");
            }
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (status, name, _) in SHARED {
                if wanted.contains(&status) && !responses.contains_key(status) {
                    let reference = format!("#/components/responses/{name}");
                    responses.insert(status.to_owned(), json!({"$ref": reference}));
                }
            }
        }
    }
}

/// A `text/event-stream` answer is a sequence of server-sent events; its schema describes one
/// event (the handlers declare it as a string).
fn describe_event_streams(doc: &mut Value) {
    let event = json!({
        "type": "object",
        "description": "One server-sent event: `event` names it (`user_message`, `delta`, \
                        `assistant_message`, `error`, ...), `data` is its JSON, `id` its \
                        number for `Last-Event-ID`.",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
            "id": {"type": "string"},
        },
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in operation.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for response in responses.values_mut() {
                if let Some(stream) = response.pointer_mut("/content/text~1event-stream") {
                    stream["schema"] = event.clone();
                }
            }
        }
    }
}

/// Characters Rust's `str::trim` removes (Unicode `White_Space`), for patterns that need a
/// character that is neither that nor NUL: spelled out, as `\s` differs between regex dialects.
const SPACE: &str = r"\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Writes the configured limits into the schemas of what requests carry.
fn add_limits(doc: &mut Value, limits: &LimitSettings) {
    let no_nul = json!(r"^[^\x00]*$");
    let not_blank = json!(format!(r"^[^\x00]*[^\x00{SPACE}][^\x00]*$"));
    let text = |max: usize, pattern: &Value| json!({"maxLength": max, "pattern": pattern});
    let content = text(limits.max_message_chars, &not_blank);
    let branch_name = text(limits.max_branch_name_chars, &not_blank);
    let title = text(limits.max_title_chars, &no_nul);
    let system_prompt = text(limits.max_system_prompt_chars, &no_nul);
    let description = text(limits.max_description_chars, &no_nul);
    compat::openapi::add_limits(
        doc,
        limits,
        &compat::openapi::SeedTexts {
            content: content.clone(),
            title: title.clone(),
            description: description.clone(),
            branch_name: branch_name.clone(),
            room_name: text(limits.max_title_chars, &not_blank),
        },
    );
    let schemas = "/components/schemas";
    for (field, limit) in [
        ("SendMessage/properties/content", &content),
        ("SendMessage/properties/response", &content),
        ("EditMessage/properties/content", &content),
        ("EditMessage/properties/name", &branch_name),
        ("RegenerateMessage/properties/name", &branch_name),
        ("CreateBranch/properties/name", &branch_name),
        ("RenameBranch/properties/name", &branch_name),
        ("CreateChat/properties/title", &title),
        ("UpdateChat/properties/title", &title),
        ("CreateChat/properties/system_prompt", &system_prompt),
        ("UpdateChat/properties/system_prompt", &system_prompt),
        ("CreateChat/properties/description", &description),
        ("UpdateChat/properties/description", &description),
    ] {
        merge(doc.pointer_mut(&format!("{schemas}/{field}")), limit);
    }
    // Feedback: what `domain::feedback` accepts.
    let control = r"\x00-\x1F\x7F-\x9F";
    let tag = json!({
        "type": "string",
        "maxLength": limits.max_feedback_tag_chars,
        "pattern": format!("^[^{control}]*[^{control}{SPACE}][^{control}]*$"),
    });
    merge(
        doc.pointer_mut(&format!("{schemas}/SetFeedback/properties/tags")),
        &json!({"maxItems": limits.max_feedback_tags, "items": tag}),
    );
    merge(
        doc.pointer_mut(&format!("{schemas}/SetFeedback/properties/comment")),
        &text(limits.max_feedback_comment_chars, &no_nul),
    );
    // Registration: what `domain::{Email, Username, Password}` always accept (they take a
    // little more: surrounding spaces, and non-ASCII passwords and addresses).
    for (field, limit) in [
        (
            "email",
            json!({"format": "email", "maxLength": 254, "pattern": r"^[!-?A-~]+@[!-?A-~]+$"}),
        ),
        (
            "username",
            json!({"minLength": 3, "maxLength": 32, "pattern": r"^[A-Za-z0-9_.\-]+$"}),
        ),
        (
            "password",
            json!({"minLength": 8, "maxLength": 72, "pattern": r"^[ -~]*$",
                   "description": "8 to 72 printable ASCII characters. Other text is taken \
                                   too, 8 characters to 72 bytes of UTF-8 (bcrypt reads \
                                   no further)."}),
        ),
    ] {
        for schema in ["RegisterRequest", "SignupRequest"] {
            merge(
                doc.pointer_mut(&format!("{schemas}/{schema}/properties/{field}")),
                &limit,
            );
        }
    }
    // An account has an email, a username, or both.
    merge(
        doc.pointer_mut(&format!("{schemas}/RegisterRequest")),
        &json!({"anyOf": [
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
            {"required": ["username"], "properties": {"username": {"type": "string"}}},
        ]}),
    );
    // A fork names its point: a message, or an index on a branch.
    merge(
        doc.pointer_mut(&format!("{schemas}/CreateBranch")),
        &json!({"anyOf": [
            {"required": ["from_message_id"],
             "properties": {"from_message_id": {"$ref": "#/components/schemas/MessageId"},
                            "message_index": {"type": "null"},
                            "from_branch_id": {"type": "null"}}},
            {"required": ["message_index"],
             "properties": {"message_index": {"type": "integer", "minimum": 0},
                            "from_message_id": {"type": "null"}}},
        ]}),
    );
    // Login names the account by either field.
    merge(
        doc.pointer_mut(&format!("{schemas}/LoginRequest")),
        &json!({"anyOf": [
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
            {"required": ["username"], "properties": {"username": {"type": "string"}}},
        ]}),
    );
    let page = json!({"minimum": 1, "maximum": limits.max_page_size});
    for path in [
        "/api/v1/chats",
        "/api/v1/chats/{chat_id}/messages",
        "/api/v1/search",
    ] {
        merge(parameter(doc, path, "get", "limit"), &page);
    }
    // A search has words (`search::MAX_QUERY_CHARS` at most), a window of 0 to 10, and a
    // cursor it gave.
    let words = json!({"maxLength": super::search::MAX_QUERY_CHARS,
                       "pattern": format!(r"^[^\x00]*[^\x00{SPACE}][^\x00]*$")});
    merge(parameter(doc, "/api/v1/search", "get", "q"), &words);
    merge(
        parameter(doc, "/api/v1/search", "get", "window"),
        &json!({"minimum": 0, "maximum": 10}),
    );
    merge(
        parameter(doc, "/api/v1/search", "get", "cursor"),
        &json!({"pattern": "^[0-9]{1,18}$"}),
    );
    merge(
        parameter(doc, "/api/v1/admin/actors", "get", "limit"),
        &json!({"minimum": 1, "maximum": admin::MAX_ACTOR_PAGE}),
    );
    merge(
        parameter(doc, "/api/v1/admin/actors", "get", "offset"),
        &json!({"maximum": usize::MAX}),
    );
    let key = json!({"maxLength": 255, "pattern": r"^[!-~]([\t -~]*[!-~])?$"});
    for path in [
        "/api/v1/chats/{chat_id}/messages",
        "/api/v1/messages/add-message",
        "/api/v1/conversations/",
    ] {
        merge(parameter(doc, path, "post", "Idempotency-Key"), &key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique_and_every_link_names_one() {
        let doc = document(&crate::config::Settings::default().limits);
        let operations: Vec<&Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|operations| operations.as_object().unwrap().values())
            .collect();
        let mut ids: Vec<&str> = operations
            .iter()
            .map(|o| o["operationId"].as_str().unwrap())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds repeat: {ids:?}");
        let mut links = 0;
        for operation in &operations {
            for response in operation["responses"].as_object().unwrap().values() {
                for link in response["links"]
                    .as_object()
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    let target = link["operationId"].as_str().unwrap();
                    assert!(
                        ids.contains(&target),
                        "a link to {target}, which is not an operation"
                    );
                    links += 1;
                }
            }
        }
        assert_eq!(
            links,
            LINKS
                .iter()
                .chain(compat::openapi::LINKS)
                .map(|(_, _, targets)| targets.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn the_document_carries_the_configured_limits() {
        let limits = LimitSettings {
            max_message_chars: 123,
            max_page_size: 45,
            ..crate::config::Settings::default().limits
        };
        let doc = document(&limits);
        let schema = |name: &str| doc["components"]["schemas"][name].clone();
        let content = &schema("SendMessage")["properties"]["content"];
        assert_eq!(content["maxLength"], 123);
        assert!(content["pattern"].is_string());
        for (schema_name, name) in [
            ("SendMessage", "response"),
            ("EditMessage", "content"),
            ("EditMessage", "name"),
            ("RegenerateMessage", "name"),
            ("CreateBranch", "name"),
            ("RenameBranch", "name"),
            ("CreateChat", "title"),
            ("UpdateChat", "title"),
            ("CreateChat", "system_prompt"),
            ("UpdateChat", "description"),
            ("RegisterRequest", "email"),
            ("RegisterRequest", "username"),
            ("RegisterRequest", "password"),
        ] {
            let field = &schema(schema_name)["properties"][name];
            let limited = |f: &Value| f.get("maxLength").is_some();
            let found = limited(field)
                || field["oneOf"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(limited));
            assert!(found, "{schema_name}.{name}: no limit in {field}");
        }
        assert!(schema("CreateBranch")["anyOf"].is_array());
        assert!(schema("LoginRequest")["anyOf"].is_array());
        let list = &doc["paths"]["/api/v1/chats"]["get"];
        let limit = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], 45);
        assert_eq!(
            list["responses"]["401"]["$ref"],
            "#/components/responses/Unauthorized"
        );
        assert!(doc["components"]["responses"]["Unavailable"].is_object());
        let send = &doc["paths"]["/api/v1/chats/{chat_id}/messages"]["post"];
        for status in ["400", "401", "413", "415", "422", "503"] {
            assert!(send["responses"][status].is_object(), "{status}");
        }
        let stream = &send["responses"]["200"]["content"]["text/event-stream"]["schema"];
        assert_eq!(stream["type"], "object");
    }
}
