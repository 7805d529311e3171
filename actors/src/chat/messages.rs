//! The messages a chat actor handles, each a small struct with its handler: the macro below
//! writes, for each one, the struct, its `actix::Message` impl and a `Handler` that runs the
//! `ChatCore` method named after `=>` under `ChatActor::guarded` (ownership check, panic
//! isolation).

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::*;
use crate::error::ChatError;
use crate::model::{BranchId, Feedback, GenerationId, MessageId, Role, UserId};
use crate::views::{
    BranchDeletedView, BranchView, ChatView, MessagePage, MessageView, ShareScope, SharedChat,
    TreeView,
};

macro_rules! chat_messages {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident : $ty:ty),* $(,)? } -> $result:ty => $method:ident;
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub user: UserId,
            $(pub $field: $ty,)*
        }

        impl actix::Message for $name {
            type Result = Result<$result, ChatError>;
        }

        impl Handler<$name> for ChatActor {
            type Result = Result<$result, ChatError>;

            fn handle(&mut self, msg: $name, ctx: &mut Self::Context) -> Self::Result {
                self.guarded(ctx, msg.user, move |core| core.$method(msg))
            }
        }
    )*};
}

chat_messages! {
    /// The chat with its branches.
    GetChat {} -> ChatView => get_chat;
    /// Changes the chat's settings.
    UpdateChat { patch: ChatPatch } -> Applied<ChatView> => update_chat;
    /// Deletes the chat, its branches and messages.
    DeleteChat {} -> Applied<()> => delete_chat;
    /// Adds a message to a branch (the active one by default), optionally followed by a
    /// client-supplied answer, or asking for a generated reply.
    AddMessages {
        branch: Option<BranchId>,
        role: Role,
        content: Arc<str>,
        response: Option<Arc<str>>,
        model: Option<Arc<str>>,
        metadata: Option<Arc<serde_json::Value>>,
        reply: Option<ReplySpec>,
        idempotency_key: Option<Arc<str>>,
    } -> Applied<SendOutcome> => add_messages;
    /// Stores a generated reply as the child of the message it answers, and the usage its
    /// provider reported (in the same write).
    CompleteGeneration {
        generation: GenerationId,
        branch: BranchId,
        parent: MessageId,
        content: Arc<str>,
        model: Arc<str>,
        metadata: Arc<serde_json::Value>,
        idempotency_key: Option<Arc<str>>,
        usage: Option<Box<crate::ports::UsageRecord>>,
    } -> Applied<MessageView> => complete_generation;
    /// Releases a branch whose reply failed.
    AbortGeneration {
        generation: GenerationId,
        branch: BranchId,
        idempotency_key: Option<Arc<str>>,
    } -> () => abort_generation;
    /// A new reply to a message, on a new active branch.
    Regenerate { message: MessageId, name: Option<String>, reply: ReplySpec }
        -> Applied<RegenerateOutcome> => regenerate;
    /// A page of a branch's path, from the head backwards.
    ListMessages { branch: Option<BranchId>, limit: usize, before: Option<MessageId> }
        -> MessagePage => list_messages;
    /// The same page as `ListMessages`, as the JSON its `MessagePage` serializes to, written
    /// by the actor straight from the tree (the REST read path).
    ListMessagesJson { branch: Option<BranchId>, limit: usize, before: Option<MessageId> }
        -> Bytes => list_messages_json;
    GetMessage { id: MessageId } -> MessageView => get_message;
    /// Sets (or, with `None`, takes back) the owner's feedback on an assistant message.
    SetFeedback { message: MessageId, feedback: Option<Feedback> }
        -> Applied<MessageView> => set_feedback;
    GetTree {} -> TreeView => get_tree;
    /// Where a message is: the branches whose paths hold it, and the path around it.
    Locate { message: MessageId, window: usize } -> crate::views::Location => locate;
    /// The chat as one `arbor.chat/1` document.
    Export {} -> crate::portable::ChatExport => export;
    /// A snapshot for a share link: a branch's path (the active one by default), or the tree.
    Snapshot { branch: Option<BranchId>, scope: ShareScope } -> SharedChat => snapshot;
    /// Creates a branch whose head is an existing message.
    Fork { from: ForkPoint, name: Option<String>, activate: bool } -> Applied<BranchView> => fork;
    /// Creates a sibling of a message with new content, on a new branch.
    Edit {
        message: MessageId,
        content: Arc<str>,
        name: Option<String>,
        activate: bool,
        reply: Option<ReplySpec>,
    } -> Applied<EditOutcome> => edit;
    ListBranches {} -> Vec<BranchView> => list_branches;
    GetBranch { id: BranchId } -> BranchView => get_branch;
    RenameBranch { id: BranchId, name: String } -> Applied<BranchView> => rename_branch;
    /// Deletes a branch and the messages only it reached.
    DeleteBranch { id: BranchId } -> Applied<BranchDeletedView> => delete_branch;
    SetActive { id: BranchId } -> Applied<ChatView> => set_active;
}

#[cfg(feature = "fault-injection")]
chat_messages! {
    /// Makes the actor panic mid-change (tests of supervision only).
    InjectPanic {} -> () => inject_panic;
}
