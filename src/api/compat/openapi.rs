//! The seed products' routes in the OpenAPI document, each under a tag of its product, as that
//! product's own `/docs` showed them: the handlers' declarations (`SeedDoc`), the seed paths a
//! handler documented elsewhere also serves (`ALIASES`), Arbor's own operations a seed
//! documented too (`ALSO_TAGGED`), and the limits of the seeds' bodies and queries.

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use super::{plain, rooms, v1};
use crate::api::openapi::{link, merge, parameter, Link};
use crate::config::LimitSettings;

#[derive(OpenApi)]
#[openapi(
    paths(
        v1::create_chat, v1::get_chat, v1::branch_messages, v1::update_chat, super::delete_chat,
        v1::add_message, v1::create_branch, v1::branches, v1::set_active_branch,
        plain::root, plain::create_chat, plain::list_chats, plain::get_chat, plain::messages,
        plain::update_chat, plain::chat,
        rooms::signup, rooms::create, rooms::list, rooms::get, rooms::send,
    ),
    tags(
        (name = "seed 000", description = "FastAPI Chat App with Branching Conversations (PostgreSQL + MongoDB, a fixed token)."),
        (name = "seed 001", description = "FastAPI Chat Backend with Branching Functionality (register/login, chats, branches, conversations)."),
        (name = "seed 002", description = "Chat Backend (FastAPI + MongoDB): Q&A pairs, branches by `message_index`."),
        (name = "seed 003", description = "AI Chat Backend (FastAPI + SQLite, Groq): email/password JWT, chats, `POST /chat`."),
        (name = "seed 004", description = "FastAPI Chat API with AI Integration (Gemini): rooms."),
    )
)]
pub struct SeedDoc;

/// A seed path served by a handler documented at another path: (method, the documented path,
/// the seed's path, its operationId, its tags).
const ALIASES: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "post",
        "/api/v1/messages/add-message",
        "/api/v1/conversations/",
        "seed_add_conversation",
        &["seed 001"],
    ),
    (
        "post",
        "/api/v1/branches/create-branch",
        "/api/v1/chats/create-conversation",
        "seed_create_conversation",
        &["seed 000"],
    ),
    (
        "delete",
        "/api/v1/chats/delete-chat/{chat_id}",
        "/chats/{chat_id}",
        "seed_delete_plain_chat",
        &["seed 003"],
    ),
    (
        "post",
        "/api/v1/auth/register",
        "/auth/register",
        "seed_register",
        &["seed 003"],
    ),
    (
        "post",
        "/api/v1/auth/login",
        "/auth/login",
        "seed_log_in",
        &["seed 003", "seed 004"],
    ),
    (
        "post",
        "/api/v1/auth/token",
        "/auth/token",
        "seed_issue_token",
        &["seed 003"],
    ),
    (
        "get",
        "/api/v1/auth/me",
        "/auth/me",
        "seed_get_current_user",
        &["seed 004"],
    ),
];

/// Arbor's own operations that seed products documented at the same path: (method, path, the
/// seeds' tags, added to Arbor's).
const ALSO_TAGGED: &[(&str, &str, &[&str])] = &[
    ("post", "/api/v1/auth/register", &["seed 001", "seed 002"]),
    ("post", "/api/v1/auth/login", &["seed 001", "seed 002"]),
    ("get", "/health", &["seed 003"]),
];

/// Adds the aliases and the seed tags to the document (before the shared answers and limits
/// are added, so the aliases get theirs).
pub fn add_aliases(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (method, from, to, id, tags) in ALIASES {
        let Some(mut operation) = paths.get(*from).and_then(|p| p.get(*method)).cloned() else {
            continue;
        };
        operation["operationId"] = json!(id);
        operation["tags"] = json!(tags);
        let item = paths
            .entry(to.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        item[*method] = operation;
    }
    for (method, path, tags) in ALSO_TAGGED {
        if let Some(list) = paths
            .get_mut(*path)
            .and_then(|p| p.get_mut(*method))
            .and_then(|o| o.get_mut("tags"))
            .and_then(Value::as_array_mut)
        {
            list.extend(tags.iter().map(|t| json!(t)));
        }
    }
}

/// What the seeds' bodies and queries take: the same limits as Arbor's own (`api::docs`).
/// `content` is a message's text schema; `title`, `description` and `branch_name` the others.
pub fn add_limits(doc: &mut Value, limits: &LimitSettings, texts: &SeedTexts) {
    let schemas = "/components/schemas";
    let SeedTexts {
        content,
        title,
        description,
        branch_name,
        room_name,
    } = texts;
    for (field, limit) in [
        ("V1ChatBody/properties/title", title),
        ("V1ChatBody/properties/name", title),
        ("V1ChatBody/properties/description", description),
        ("V1AddMessage/properties/question", content),
        ("V1AddMessage/properties/content", content),
        ("V1AddMessage/properties/message", content),
        ("V1AddMessage/properties/response", content),
        ("V1AddMessage/properties/answer", content),
        ("V1CreateBranch/properties/name", branch_name),
        ("Seed003ChatBody/properties/title", title),
        ("Seed003ChatMessage/properties/message", content),
        ("CreateRoom/properties/name", room_name),
        ("CreateRoom/properties/description", description),
        ("SendToRoom/properties/content", content),
    ] {
        merge(doc.pointer_mut(&format!("{schemas}/{field}")), limit);
    }
    // The question comes in exactly one spelling, its answer in at most one, and only a user's
    // message has an answer.
    let given =
        |field: &str| json!({"required": [field], "properties": {field: {"type": "string"}}});
    let not_a_user =
        json!({"required": ["role"], "properties": {"role": {"enum": ["assistant", "system"]}}});
    merge(
        doc.pointer_mut(&format!("{schemas}/V1AddMessage")),
        &json!({
            "oneOf": [given("question"), given("content"), given("message")],
            "allOf": [
                {"not": {"allOf": [given("response"), given("answer")]}},
                {"not": {"allOf": [given("response"), not_a_user]}},
                {"not": {"allOf": [given("answer"), not_a_user]}},
            ],
        }),
    );
    // A fork names its chat by either field, and its point by an index or a message id, not
    // both.
    let chat = |field: &str| {
        json!({"required": [field],
               "properties": {field: {"$ref": "#/components/schemas/ChatId"}}})
    };
    let index = json!({"required": ["message_index"],
                       "properties": {"message_index": {"type": "integer"}}});
    merge(
        doc.pointer_mut(&format!("{schemas}/V1CreateBranch")),
        &json!({
            "anyOf": [chat("chat_id"), chat("parent_chat_id")],
            "not": {"allOf": [index, {"anyOf": [
                given("message_id"), given("parent_message_id"), given("response_id"),
            ]}]},
        }),
    );
    let page = json!({"minimum": 1, "maximum": limits.max_page_size});
    for path in ["/chats", "/rooms/", "/api/v1/chats/get-chat"] {
        merge(parameter(doc, path, "get", "limit"), &page);
    }
}

/// The text schemas `api::docs` builds from the configured limits.
pub struct SeedTexts {
    pub content: Value,
    pub title: Value,
    pub description: Value,
    pub branch_name: Value,
    /// A title that is not blank (a room needs its name).
    pub room_name: Value,
}

/// Links from what a seed operation creates to the seed operations on it, as `api::docs`'s
/// `LINKS` (clients and Schemathesis's stateful phase follow them).
pub(crate) const LINKS: &[(&str, &str, &[Link])] = &[
    (
        "seed_create_chat",
        "200",
        &[
            link("seed_get_chat", V1_CHAT),
            link("seed_get_chat_messages", V1_CHAT),
            link("seed_get_branches", V1_CHAT),
            link("seed_update_chat", V1_CHAT),
            link("seed_delete_chat", V1_CHAT),
            link("seed_set_active_branch", V1_CHAT_BRANCH),
        ],
    ),
    (
        "seed_create_plain_chat",
        "200",
        &[
            link("seed_get_plain_chat", PLAIN_CHAT),
            link("seed_list_plain_messages", PLAIN_CHAT),
            link("seed_update_plain_chat", PLAIN_CHAT),
            link("seed_delete_plain_chat", PLAIN_CHAT),
        ],
    ),
    (
        "seed_create_room",
        "200",
        &[link("seed_get_room", ROOM), link("seed_send_to_room", ROOM)],
    ),
];

const V1_CHAT: &[(&str, &str)] = &[("chat_id", "$response.body#/chat_id")];
const V1_CHAT_BRANCH: &[(&str, &str)] = &[
    ("chat_id", "$response.body#/chat_id"),
    ("branch_id", "$response.body#/branch_id"),
];
const PLAIN_CHAT: &[(&str, &str)] = &[("chat_id", "$response.body#/id")];
const ROOM: &[(&str, &str)] = &[("room_id", "$response.body#/data/room/id")];
