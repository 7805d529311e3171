//! Seeds 000, 001 and 002: `/api/v1/{chats,messages,branches,conversations}/...`.
//!
//! The three seeds share these paths with different bodies; each request is read in whichever
//! form it comes (`title` or `name`, `question` or `content`, `chat_id` or `parent_chat_id`), and
//! every answer carries the fields all three document, so each client finds its own.
//! Conversations are counted in question/answer pairs (`qa`): `message_index` is a pair index.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use arbor_actors::chat::{ChatPatch, ForkPoint, NewChat};
use arbor_actors::model::{BranchId, ChatId, MessageId, Role, UserId};
use arbor_actors::views::{BranchView, ChatSummary, ChatView, MessageView, SendView};
use arbor_actors::Chats;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::qa::{self, Pair};
use super::{account_name, Acknowledged, Snapshot};
use crate::api::body::{Json, OptionalJson};
use crate::api::messages::{idempotency_key, parse_send, SendMessage};
use crate::api::page_limit;
use crate::auth::{Accounts, AuthUser};
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, Code, ErrorBody};

/// One question/answer pair.
#[derive(Serialize, ToSchema)]
#[schema(as = V1Pair)]
pub struct PairView {
    #[schema(value_type = Option<String>)]
    pub question: Option<Arc<str>>,
    #[schema(value_type = Option<String>)]
    pub response: Option<Arc<str>>,
    pub question_id: Option<MessageId>,
    pub response_id: Option<MessageId>,
    pub timestamp: DateTime<Utc>,
}

impl From<&Pair<'_>> for PairView {
    fn from(pair: &Pair<'_>) -> Self {
        Self {
            question: pair.question.map(|m| m.content.clone()),
            response: pair.response.map(|m| m.content.clone()),
            question_id: pair.question.map(|m| m.id),
            response_id: pair.response.map(|m| m.id),
            timestamp: pair.first().created_at,
        }
    }
}

/// A branch as seed 002 lists it (forks only: the chat's own line is the chat).
#[derive(Serialize, ToSchema)]
#[schema(as = V1Branch)]
pub struct BranchV1 {
    pub branch_id: BranchId,
    pub id: BranchId,
    pub chat_id: ChatId,
    pub parent_chat_id: ChatId,
    pub name: String,
    /// The pair the branch was forked after.
    pub created_from_message_index: Option<usize>,
    pub created_from_message_id: Option<MessageId>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

impl BranchV1 {
    /// `index`: the pair the branch was forked after.
    fn of(branch: &BranchView, index: Option<usize>) -> Self {
        Self {
            branch_id: branch.id,
            id: branch.id,
            chat_id: branch.chat_id,
            parent_chat_id: branch.chat_id,
            name: branch.name.clone(),
            created_from_message_index: index,
            created_from_message_id: branch.forked_from_message_id,
            is_active: branch.is_active,
            created_at: branch.created_at,
        }
    }

    /// Every branch but the chat's own line.
    fn list(snapshot: &Snapshot) -> Vec<Self> {
        let root = snapshot.root_branch().map(|b| b.id);
        snapshot
            .tree
            .branches
            .iter()
            .filter(|b| Some(b.id) != root)
            .map(|b| {
                let fork = b.forked_from_message_id;
                let index = fork.and_then(|m| qa::pair_index(&snapshot.path_to(fork), m));
                Self::of(b, index)
            })
            .collect()
    }
}

/// A chat in the shape all three seeds document (`_id` is the chat id again).
#[derive(Serialize, ToSchema)]
#[schema(as = V1Chat)]
pub struct ChatV1 {
    pub chat_id: ChatId,
    pub id: ChatId,
    #[serde(rename = "_id")]
    pub object_id: ChatId,
    pub account_id: String,
    pub user_id: UserId,
    pub name: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub active: bool,
    pub active_branch_id: BranchId,
    /// The branch `messages` come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch_id: Option<BranchId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<BranchV1>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<PairView>>,
}

impl ChatV1 {
    fn summary(chat: &ChatSummary, user: UserId, account: &str) -> Self {
        Self {
            chat_id: chat.id,
            id: chat.id,
            object_id: chat.id,
            account_id: account.to_owned(),
            user_id: user,
            name: chat.title.clone(),
            title: chat.title.clone(),
            description: chat.description.clone(),
            created_at: chat.created_at,
            updated_at: chat.updated_at,
            active: true,
            active_branch_id: chat.active_branch_id,
            branch_id: None,
            branches: None,
            messages: None,
        }
    }

    /// A chat just created: no forks, no pairs yet.
    fn new_chat(chat: &ChatView, user: UserId, account: &str) -> Self {
        Self {
            branch_id: Some(chat.active_branch_id),
            branches: Some(Vec::new()),
            messages: Some(Vec::new()),
            ..Self::summary(&ChatSummary::from(chat), user, account)
        }
    }

    /// The chat with its forks and the pairs of `branch` (the active branch by default).
    fn full(
        snapshot: &Snapshot,
        branch: Option<BranchId>,
        user: UserId,
        account: &str,
    ) -> Result<Self, ApiError> {
        let chat = &snapshot.chat;
        let branch = branch.unwrap_or(chat.active_branch_id);
        let head = snapshot
            .branch(branch)
            .ok_or(arbor_actors::ChatError::BranchNotFound(branch))?
            .head_message_id;
        let path = snapshot.path_to(head);
        Ok(Self {
            branch_id: Some(branch),
            branches: Some(BranchV1::list(snapshot)),
            messages: Some(qa::pairs(&path).iter().map(PairView::from).collect()),
            ..Self::summary(&ChatSummary::from(chat), user, account)
        })
    }
}

/// A chat's title (`title`, or seed 002's `name`) and description.
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = V1ChatBody)]
pub struct ChatBody {
    pub title: Option<String>,
    /// Seed 002's name for `title`.
    pub name: Option<String>,
    pub description: Option<String>,
}

impl ChatBody {
    /// `title`, else `name`; each is checked when given.
    fn title(&self, limits: &LimitSettings) -> Result<Option<String>, ApiError> {
        let title = domain::title(self.title.as_deref(), limits.max_title_chars)?;
        let name = domain::title(self.name.as_deref(), limits.max_title_chars)?;
        Ok(title.or(name))
    }
}

/// `POST /api/v1/chats/create-chat`: `{"title"}` (000, 001) or `{"name"}` (002).
#[utoipa::path(post, path = "/api/v1/chats/create-chat", operation_id = "seed_create_chat",
    tags = ["seed 000", "seed 001", "seed 002"], security(("bearer" = [])),
    request_body(content = Option<ChatBody>),
    responses((status = 200, description = "The new chat", body = ChatV1)))]
pub async fn create_chat(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    OptionalJson(body): OptionalJson<ChatBody>,
) -> Result<HttpResponse, ApiError> {
    let new = NewChat {
        title: body.title(&limits)?,
        description: domain::description(
            body.description.as_deref(),
            limits.max_description_chars,
        )?,
        system_prompt: None,
    };
    let chat = chats.create(user.0, new).await?;
    let account = account_name(&accounts, user.0).await?;
    Ok(HttpResponse::Ok().json(ChatV1::new_chat(&chat, user.0, &account)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChatQuery {
    /// The chat to show; without it, the caller's chats.
    pub chat_id: Option<ChatId>,
    /// The branch whose pairs to show; the active branch by default.
    pub branch_id: Option<BranchId>,
    /// Chats per page (the list).
    pub limit: Option<usize>,
    /// The list's page: chats older than this one.
    pub before: Option<ChatId>,
}

/// `get-chat`'s answer: one chat with its pairs, or the caller's chats.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = V1ChatOrList)]
pub enum ChatOrList {
    One(Box<ChatV1>),
    List(Vec<ChatV1>),
}

/// `GET /api/v1/chats/get-chat`: with `chat_id`, that chat with its pairs (002); without, the
/// caller's chats (001).
#[utoipa::path(get, path = "/api/v1/chats/get-chat", operation_id = "seed_get_chat",
    tags = ["seed 001", "seed 002"], security(("bearer" = [])), params(ChatQuery),
    responses((status = 200, description = "With `chat_id`: that chat with its forks and the pairs of a branch; without: the caller's chats, newest first", body = ChatOrList),
        (status = 404, body = ErrorBody)))]
pub async fn get_chat(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<ChatQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = account_name(&accounts, user.0).await?;
    let Some(chat) = query.chat_id else {
        let limit = page_limit(Some(query.limit.unwrap_or(limits.max_page_size)), &limits)?;
        let page = chats.list(user.0, limit, query.before).await?;
        let list: Vec<ChatV1> = page
            .chats
            .iter()
            .map(|c| ChatV1::summary(c, user.0, &account))
            .collect();
        return Ok(HttpResponse::Ok().json(ChatOrList::List(list)));
    };
    let snapshot = Snapshot::read(&chats, user.0, chat).await?;
    let chat = ChatV1::full(&snapshot, query.branch_id, user.0, &account)?;
    Ok(HttpResponse::Ok().json(ChatOrList::One(Box::new(chat))))
}

/// `GET /api/v1/messages/get-chat?chat_id=..[&branch_id=..]` (000): a branch's pairs.
#[utoipa::path(get, path = "/api/v1/messages/get-chat", operation_id = "seed_get_chat_messages",
    tag = "seed 000", security(("bearer" = [])),
    params(("chat_id" = ChatId, Query, description = "The chat"),
        ("branch_id" = Option<BranchId>, Query, description = "The branch; the active one by default")),
    responses((status = 200, description = "The chat with the pairs of the branch", body = ChatV1),
        (status = 404, body = ErrorBody)))]
pub async fn branch_messages(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    user: AuthUser,
    query: web::Query<ChatQuery>,
) -> Result<HttpResponse, ApiError> {
    let chat = query
        .chat_id
        .ok_or_else(|| ApiError::new(Code::MissingChatId, "give `chat_id`"))?;
    let snapshot = Snapshot::read(&chats, user.0, chat).await?;
    let account = account_name(&accounts, user.0).await?;
    Ok(HttpResponse::Ok().json(ChatV1::full(&snapshot, query.branch_id, user.0, &account)?))
}

/// `PUT /api/v1/chats/update-chat/{chat_id}` (001): `{"title"}` or `{"name"}`, `description`.
#[utoipa::path(put, path = "/api/v1/chats/update-chat/{chat_id}", operation_id = "seed_update_chat",
    tag = "seed 001", security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    request_body = ChatBody,
    responses((status = 200, description = "The chat", body = ChatV1), (status = 404, body = ErrorBody)))]
pub async fn update_chat(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<ChatBody>,
) -> Result<HttpResponse, ApiError> {
    let chat = path.into_inner();
    let patch = ChatPatch {
        title: (body.title.is_some() || body.name.is_some())
            .then(|| body.title(&limits))
            .transpose()?,
        description: body
            .description
            .as_deref()
            .map(|d| domain::description(Some(d), limits.max_description_chars))
            .transpose()?,
        system_prompt: None,
    };
    let chat = chats.update(user.0, chat, patch).await?;
    let account = account_name(&accounts, user.0).await?;
    Ok(HttpResponse::Ok().json(ChatV1::summary(&ChatSummary::from(&chat), user.0, &account)))
}

/// A message or a question/answer pair, in any of the seeds' spellings: the question as one of
/// `question`, `content` or `message`, its answer as `response` or `answer`.
#[derive(Deserialize, ToSchema)]
#[schema(as = V1AddMessage)]
pub struct AddMessage {
    pub chat_id: ChatId,
    /// The branch to add to; the active branch by default.
    pub branch_id: Option<BranchId>,
    pub question: Option<String>,
    pub content: Option<String>,
    pub message: Option<String>,
    pub response: Option<String>,
    pub answer: Option<String>,
    pub role: Option<Role>,
    pub model: Option<String>,
}

/// What an add created, as a pair, with the messages themselves.
#[derive(Serialize, ToSchema)]
#[schema(as = V1Added)]
pub struct AddedV1 {
    pub chat_id: ChatId,
    pub branch_id: BranchId,
    #[serde(flatten)]
    pub pair: PairView,
    pub messages: Vec<MessageView>,
}

impl From<SendView> for AddedV1 {
    fn from(view: SendView) -> Self {
        let pair = qa::pairs(&view.messages)
            .first()
            .map(PairView::from)
            .unwrap_or(PairView {
                question: None,
                response: None,
                question_id: None,
                response_id: None,
                timestamp: Utc::now(),
            });
        Self {
            chat_id: view.chat_id,
            branch_id: view.branch_id,
            pair,
            messages: view.messages,
        }
    }
}

fn one_of(fields: [(&'static str, Option<String>); 3]) -> Result<Option<String>, ApiError> {
    let given: Vec<_> = fields.into_iter().filter(|(_, v)| v.is_some()).collect();
    match given.len() {
        0 => Ok(None),
        1 => Ok(given.into_iter().next().and_then(|(_, v)| v)),
        _ => Err(ApiError::new(
            Code::ValidationFailed,
            format!(
                "give one of {}",
                given
                    .iter()
                    .map(|(k, _)| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `POST /api/v1/messages/add-message` (000, 001, 002) and `POST /api/v1/conversations/` (001):
/// a question (`question`, `content` or `message`) and optionally its answer (`response` or
/// `answer`), appended to the branch.
#[utoipa::path(post, path = "/api/v1/messages/add-message", operation_id = "seed_add_message",
    tags = ["seed 000", "seed 001", "seed 002"], security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = AddMessage,
    responses((status = 200, description = "The pair added, with its messages", body = AddedV1),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_message(
    req: HttpRequest,
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    body: Json<AddMessage>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let content = one_of([
        ("question", body.question),
        ("content", body.content),
        ("message", body.message),
    ])?
    .ok_or_else(|| ApiError::new(Code::EmptyContent, "give `question` (or `content`)"))?;
    let response = one_of([
        ("response", body.response),
        ("answer", body.answer),
        ("", None),
    ])?;
    let send = SendMessage {
        content,
        role: body.role,
        branch_id: body.branch_id,
        response,
        reply: false,
        stream: false,
        model: body.model,
        metadata: None,
    };
    let send = parse_send(send, idempotency_key(&req)?, &limits)?;
    let sent = chats.send(user.0, body.chat_id, send).await?;
    Ok(HttpResponse::Ok().json(AddedV1::from(sent.view)))
}

/// A fork in any of the seeds' spellings: the chat (`chat_id` or `parent_chat_id`), and the
/// point: `message_index` (a pair on `branch_id`, the active branch by default), a message id
/// (`message_id`, `parent_message_id` or `response_id`), or else the branch's head (an empty
/// branch when it has none: its first message starts a new conversation in the chat).
#[derive(Deserialize, ToSchema)]
#[schema(as = V1CreateBranch)]
pub struct CreateBranch {
    pub chat_id: Option<ChatId>,
    pub parent_chat_id: Option<ChatId>,
    pub branch_id: Option<BranchId>,
    #[serde(default, deserialize_with = "crate::api::integral")]
    pub message_index: Option<usize>,
    pub message_id: Option<MessageId>,
    pub parent_message_id: Option<MessageId>,
    pub response_id: Option<MessageId>,
    pub name: Option<String>,
    #[serde(default)]
    pub activate: bool,
}

/// `POST /api/v1/branches/create-branch` (000, 001, 002) and
/// `POST /api/v1/chats/create-conversation` (000).
#[utoipa::path(post, path = "/api/v1/branches/create-branch", operation_id = "seed_create_branch",
    tags = ["seed 000", "seed 001", "seed 002"], security(("bearer" = [])),
    request_body = CreateBranch,
    responses((status = 200, description = "The new branch", body = BranchV1),
        (status = 404, body = ErrorBody)))]
pub async fn create_branch(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    body: Json<CreateBranch>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let chat = body
        .chat_id
        .or(body.parent_chat_id)
        .ok_or_else(|| ApiError::new(Code::MissingChatId, "give `parent_chat_id`"))?;
    let name = domain::optional_branch_name(body.name.as_deref(), limits.max_branch_name_chars)?;
    let message = body
        .message_id
        .or(body.parent_message_id)
        .or(body.response_id);
    let (from, index) = match (message, body.message_index) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Code::ValidationFailed,
                "give a message id or `message_index`, not both",
            ))
        }
        (Some(id), None) => (ForkPoint::Message(id), None),
        (None, index) => {
            let path = chats
                .list_messages(user.0, chat, body.branch_id, usize::MAX, None)
                .await?
                .messages;
            fork_point(&path, index)?
        }
    };
    let branch = chats.fork(user.0, chat, from, name, body.activate).await?;
    let index = match (index, from) {
        (Some(index), _) => Some(index),
        // Forked from a message id: its pair on the new branch's path.
        (None, ForkPoint::Message(id)) => {
            let path = chats
                .list_messages(user.0, chat, Some(branch.id), usize::MAX, None)
                .await?
                .messages;
            qa::pair_index(&path, id)
        }
        (None, _) => None,
    };
    Ok(HttpResponse::Ok().json(BranchV1::of(&branch, index)))
}

/// After pair `index` of the path; without an index, after the whole path (an empty branch
/// when the path is empty). Also answers the pair index forked after.
fn fork_point(
    path: &[MessageView],
    index: Option<usize>,
) -> Result<(ForkPoint, Option<usize>), ApiError> {
    let pairs = qa::pairs(path);
    let index = match index {
        Some(i) if i < pairs.len() => i,
        Some(i) => {
            return Err(ApiError::new(
                Code::MessageIndexOutOfRange,
                format!(
                    "message_index {i} is out of range: the branch has {} pairs",
                    pairs.len()
                ),
            ))
        }
        None if pairs.is_empty() => return Ok((ForkPoint::Start, None)),
        None => pairs.len() - 1,
    };
    Ok((ForkPoint::Message(pairs[index].last().id), Some(index)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BranchesQuery {
    /// The chat.
    pub chat_id: ChatId,
}

/// `GET /api/v1/branches/get-branches?chat_id=..` (001, 002): the chat's forks.
#[utoipa::path(get, path = "/api/v1/branches/get-branches", operation_id = "seed_get_branches",
    tags = ["seed 001", "seed 002"], security(("bearer" = [])), params(BranchesQuery),
    responses((status = 200, description = "The chat's forks", body = Vec<BranchV1>),
        (status = 404, body = ErrorBody)))]
pub async fn branches(
    chats: web::Data<Chats>,
    user: AuthUser,
    query: web::Query<BranchesQuery>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = Snapshot::read(&chats, user.0, query.chat_id).await?;
    Ok(HttpResponse::Ok().json(BranchV1::list(&snapshot)))
}

/// The chat and the branch to make active, in the query string or the body.
#[derive(Deserialize, Default, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[schema(as = V1SetActive)]
pub struct SetActive {
    pub chat_id: Option<ChatId>,
    /// The chat's id for the chat's own line.
    pub branch_id: Option<BranchId>,
}

/// `PUT /api/v1/branches/set-active-branch?chat_id=..&branch_id=..` (001, 002); both may also
/// come in a JSON body. `branch_id` equal to the chat id returns to the chat's own line.
#[utoipa::path(put, path = "/api/v1/branches/set-active-branch", operation_id = "seed_set_active_branch",
    tags = ["seed 001", "seed 002"], security(("bearer" = [])), params(SetActive),
    request_body(content = Option<SetActive>),
    responses((status = 200, description = "The branch is active", body = Acknowledged),
        (status = 404, body = ErrorBody)))]
pub async fn set_active_branch(
    chats: web::Data<Chats>,
    user: AuthUser,
    query: web::Query<SetActive>,
    OptionalJson(body): OptionalJson<SetActive>,
) -> Result<HttpResponse, ApiError> {
    let chat = query
        .chat_id
        .or(body.chat_id)
        .ok_or_else(|| ApiError::new(Code::MissingChatId, "give `chat_id`"))?;
    let branch = query
        .branch_id
        .or(body.branch_id)
        .ok_or_else(|| ApiError::new(Code::MissingBranchId, "give `branch_id`"))?;
    let branch = if branch.as_uuid() == chat.as_uuid() {
        let snapshot = Snapshot::read(&chats, user.0, chat).await?;
        snapshot
            .root_branch()
            .ok_or(arbor_actors::ChatError::BranchNotFound(branch))?
            .id
    } else {
        branch
    };
    chats.set_active(user.0, chat, branch).await?;
    Ok(HttpResponse::Ok().json(Acknowledged {
        message: "Active branch set successfully.",
        chat_id: Some(chat),
        branch_id: Some(branch),
    }))
}
