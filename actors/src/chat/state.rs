//! A chat's in-memory state, what every actor shares, and loading a chat from the stores.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::Liveness;
use crate::error::ChatError;
use crate::generation::{Generation, Generations};
use crate::model::{Branch, BranchId, ChatId, ChatMeta, ChatRow, Message, MessageId, UserId};
use crate::ports::{
    Fence, MessageStore, MetadataStore, Ownership, QuotaGate, ReplyGate, StoredChat, Turn,
};
use crate::tree::Tree;
use crate::views::{EditView, MessageView, RegenerateView, SendView};
use crate::writer::{committed, CommitTicket, WriteOp, WriterHandle};

/// What every chat actor shares: the writer, the stores and the generation table.
pub struct ChatRuntime {
    pub writer: WriterHandle,
    pub metadata: Arc<dyn MetadataStore>,
    pub messages: Arc<dyn MessageStore>,
    pub generations: Arc<Generations>,
    /// Cluster mode: the shard leases this server holds. `None`: every chat is this server's.
    pub ownership: Option<Arc<dyn Ownership>>,
    /// Per-user limits on replies. `None`: none.
    pub replies: Option<Arc<dyn ReplyGate>>,
    /// Per-user token quotas. `None`: none.
    pub quotas: Option<Arc<dyn QuotaGate>>,
    /// The actors alive, kept by the registry; each leaves it when dropped.
    pub(crate) live: Arc<Liveness>,
    /// Bytes of written pages each thread keeps (`pages`); set by the registry.
    pub(crate) page_cache_bytes: usize,
    /// Idempotency keys a chat remembers at most (its newest sends').
    pub idempotency_keys: usize,
}

impl ChatRuntime {
    pub fn new(
        writer: WriterHandle,
        metadata: Arc<dyn MetadataStore>,
        messages: Arc<dyn MessageStore>,
        generations: Arc<Generations>,
    ) -> Self {
        Self {
            writer,
            metadata,
            messages,
            generations,
            ownership: None,
            replies: None,
            quotas: None,
            live: Arc::default(),
            page_cache_bytes: 0,
            idempotency_keys: 1024,
        }
    }

    /// Cluster mode: chats are served and changed only under this server's shard leases.
    pub fn with_ownership(mut self, ownership: Arc<dyn Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// A chat remembers the idempotency keys of its newest `keys` sends: a retry must come
    /// before that many newer keyed sends of the chat.
    pub fn with_idempotency_keys(mut self, keys: usize) -> Self {
        self.idempotency_keys = keys.max(1);
        self
    }

    /// Replies start only as often, and run only as many at once per user, as `gate` allows.
    pub fn with_reply_gate(mut self, gate: Arc<dyn ReplyGate>) -> Self {
        self.replies = Some(gate);
        self
    }

    /// Replies are refused once their user's token quota is used up.
    pub fn with_quotas(mut self, quotas: Arc<dyn QuotaGate>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// The fence a chat's writes carry: `None` without cluster mode; `Moved` when this server
    /// does not hold the chat's shard lease.
    pub fn fence(&self, chat: ChatId) -> Result<Option<Fence>, ChatError> {
        match &self.ownership {
            None => Ok(None),
            Some(ownership) => ownership
                .fence(chat)
                .filter(|f| f.compact().is_some())
                .map(Some)
                .ok_or(ChatError::Moved),
        }
    }
}

/// A change applied in memory, with the ticket for its commit.
pub struct Applied<T> {
    pub value: T,
    pub commit: CommitTicket,
}

impl<T> Applied<T> {
    pub(crate) fn new(value: T, commit: CommitTicket) -> Self {
        Self { value, commit }
    }
}

/// How to start a reply: the model it is for and its context budget.
#[derive(Debug, Clone)]
pub struct ReplySpec {
    /// `provider/model`, recorded on the generation.
    pub model: Arc<str>,
    /// Characters of conversation to send (the newest messages; the system prompt always).
    pub context_chars: usize,
}

/// A started reply: its generation (which holds the branch's lock) and its context.
#[derive(Clone)]
pub struct GenerationJob {
    pub generation: Arc<Generation>,
    /// The message being answered, as clients see it.
    pub reply_to: MessageView,
    pub turns: Vec<Turn>,
    pub idempotency_key: Option<Arc<str>>,
    /// The thread of the actor that started it: storing the reply there is a call on one
    /// thread (see `Chats::drive`).
    pub home: Option<ArbiterHandle>,
}

/// A recorded idempotent send.
#[derive(Clone)]
pub(crate) struct IdemEntry {
    pub(crate) content: Arc<str>,
    pub(crate) messages: Vec<MessageId>,
    pub(crate) commit: CommitTicket,
    /// A reply for this send is still being generated.
    pub(crate) awaiting_reply: bool,
}

/// A chat's in-memory state.
pub struct ChatState {
    pub row: ChatRow,
    pub tree: Tree,
    pub(crate) idem: IdemMap,
}

/// Recorded idempotent sends by key. Boxed only once one exists: most chats never have any, and
/// an empty map inline would cost every resident chat 40 bytes.
#[derive(Default)]
#[allow(clippy::box_collection)] // The point: 8 bytes inline, not the map's 48.
pub(crate) struct IdemMap(Option<Box<HashMap<Arc<str>, IdemEntry>>>);

impl IdemMap {
    pub(crate) fn get(&self, key: &str) -> Option<&IdemEntry> {
        self.0.as_ref()?.get(key)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut IdemEntry> {
        self.0.as_mut()?.get_mut(key)
    }

    /// Records a send under `key`, keeping at most `cap` keys: past it the oldest send's key
    /// (by its first message's id, which is time-ordered) goes, unless its reply still runs.
    pub(crate) fn insert(&mut self, key: Arc<str>, entry: IdemEntry, cap: usize) {
        let map = self.0.get_or_insert_default();
        map.insert(key, entry);
        Self::trim_map(map, cap);
    }

    /// Keeps the newest `cap` keys (a restored chat may hold more).
    pub(crate) fn trim(&mut self, cap: usize) {
        if let Some(map) = &mut self.0 {
            Self::trim_map(map, cap);
        }
    }

    fn trim_map(map: &mut HashMap<Arc<str>, IdemEntry>, cap: usize) {
        while map.len() > cap.max(1) {
            let oldest = map
                .iter()
                .filter(|(_, e)| !e.awaiting_reply)
                .min_by_key(|(_, e)| e.messages.first().copied())
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => map.remove(&key),
                None => break,
            };
        }
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&Arc<str>, &mut IdemEntry) -> bool) {
        if let Some(map) = &mut self.0 {
            map.retain(keep);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl ChatState {
    /// A new chat with an empty `main` branch, and the rows that create it.
    pub fn create(id: ChatId, owner: UserId, new: NewChat) -> (Self, Vec<WriteOp>) {
        let now = crate::model::now();
        let main = Branch {
            id: BranchId::new(),
            chat_id: id,
            name: "main".into(),
            head: None,
            forked_from: None,
            created_at: now,
            updated_at: now,
            fallback: None,
        };
        let meta = ChatMeta {
            id,
            owner,
            title: new.title,
            system_prompt: new.system_prompt,
            description: new.description,
            active_branch: main.id,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let ops = vec![
            WriteOp::UpsertChat(meta.clone()),
            WriteOp::UpsertBranch(main.clone(), 1),
        ];
        let state = Self {
            row: ChatRow::new(meta),
            tree: Tree::new(main),
            idem: IdemMap::default(),
        };
        (state, ops)
    }

    /// Rebuilds a chat from its stored rows; also answers the stored messages it left out
    /// because no branch reaches them (see `Tree::restore`).
    pub fn restore(
        meta: ChatMeta,
        branches: Vec<Branch>,
        messages: Vec<Message>,
    ) -> Result<(Self, Vec<MessageId>), ChatError> {
        let restored = Tree::restore(branches, meta.active_branch, messages).map_err(|e| {
            ChatError::Internal(format!("chat {} cannot be restored: {e}", meta.id))
        })?;
        if !restored.pruned.is_empty() || !restored.reset_branches.is_empty() {
            tracing::warn!(
                chat = %meta.id,
                pruned = restored.pruned.len(),
                reset_branches = restored.reset_branches.len(),
                "repaired a chat's tree on activation"
            );
        }
        let tree = restored.tree;
        let mut idem: HashMap<Arc<str>, IdemEntry> = HashMap::new();
        // In id order, so each send's messages are listed in the order they were added.
        for m in tree.nodes() {
            let Some(key) = tree.idempotency_key(m).cloned() else {
                continue;
            };
            idem.entry(key)
                .and_modify(|e| e.messages.push(m.id()))
                .or_insert_with(|| IdemEntry {
                    content: Arc::from(tree.content(m)),
                    messages: vec![m.id()],
                    commit: committed(),
                    awaiting_reply: false,
                });
        }
        let idem = IdemMap((!idem.is_empty()).then(|| Box::new(idem)));
        let row = ChatRow::new(meta);
        Ok((Self { row, tree, idem }, restored.pruned))
    }
}

/// Loads a chat from the stores: one metadata query and one message query, run together.
///
/// Messages and the metadata that points at them commit together, so a message read that started
/// before a metadata read could miss the messages of a head that read sees. No write of a chat is
/// in flight when it activates (eviction flushes first), but should one be, a head missing from
/// the messages read gets the messages read once more (now after the metadata read) before
/// restore treats it as a crash remnant (and moves it back to its fallback).
///
/// Also answers the stored messages the restore left out because no branch reaches them.
pub async fn load_chat(
    rt: &ChatRuntime,
    id: ChatId,
) -> Result<Option<(ChatState, Vec<MessageId>)>, ChatError> {
    let (meta, messages) =
        futures_util::future::join(rt.metadata.load_chat(id), rt.messages.load_chat(id)).await;
    let Some(StoredChat {
        meta,
        branches,
        feedback,
    }) = meta.map_err(storage_error)?
    else {
        return Ok(None);
    };
    let mut messages = messages.map_err(storage_error)?;
    let heads: Vec<MessageId> = branches.iter().filter_map(|b| b.head).collect();
    if !heads.is_empty() {
        let ids: std::collections::HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
        if heads.iter().any(|h| !ids.contains(h)) {
            messages = rt.messages.load_chat(id).await.map_err(storage_error)?;
        }
    }
    let (mut state, orphans) = ChatState::restore(meta, branches, messages)?;
    // Feedback on a message that is gone (pruned by a write whose row deletions failed) is
    // left out.
    for (message, feedback) in feedback {
        let _ = state.tree.set_feedback(message, Some(feedback));
    }
    state.idem.trim(rt.idempotency_keys);
    Ok(Some((state, orphans)))
}

/// A chat's state as one `arbor.chat/1` document.
pub(crate) fn exported(state: &ChatState) -> crate::portable::ChatExport {
    let row = &state.row;
    let chat = crate::portable::ExportedChat {
        id: state.tree.chat(),
        title: row.title().map(str::to_owned),
        system_prompt: row.system_prompt().map(str::to_owned),
        description: row.description().map(str::to_owned),
        created_at: row.created_at,
        updated_at: row.updated_at,
    };
    crate::portable::ChatExport::of(chat, &state.tree)
}

pub(crate) fn storage_error(e: crate::ports::StoreError) -> ChatError {
    tracing::error!(error = %e, "store read failed");
    ChatError::StorageUnavailable
}

/// Write generations come from one process-wide counter, so a chat's new actor (after a failed
/// reload stopped the old one) starts above every fence the writer holds for that chat.
pub(crate) fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a new chat starts with.
#[derive(Debug, Clone, Default)]
pub struct NewChat {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
}

/// A change to a chat's settings: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ChatPatch {
    pub title: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub description: Option<Option<String>>,
}

/// Where a fork starts.
#[derive(Debug, Clone, Copy)]
pub enum ForkPoint {
    Message(MessageId),
    /// A 0-based index into a branch's path (the active branch when `None`).
    Index {
        branch: Option<BranchId>,
        index: usize,
    },
    /// No message: an empty branch, whose first message starts a new conversation (a new root).
    Start,
}

pub struct SendOutcome {
    pub view: SendView,
    /// Present when the send asked for a reply.
    pub generation: Option<GenerationJob>,
}

pub struct EditOutcome {
    pub view: EditView,
    pub generation: Option<GenerationJob>,
}

pub struct RegenerateOutcome {
    pub view: RegenerateView,
    pub job: GenerationJob,
}
