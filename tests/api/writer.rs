//! The write-behind writer with several batches in flight, on real stores: SQLite used as two
//! separate stores (two store calls per batch, as with PostgreSQL and MongoDB, instead of one
//! transaction, which keeps one batch at a time) and PostgreSQL + MongoDB.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arbor::config::SqliteSync;
use arbor::storage::{mongodb::MongoStore, postgres::PostgresStore, sqlite::SqliteStore};
use arbor_actors::model::{now, Branch, ChatId, ChatMeta, Message, MessageId, Role};
use arbor_actors::ports::{MessageDeletes, MessageStore, StoreError, Stores};
use arbor_actors::writer::{
    AckMode, ChatWrite, CommitTicket, WriteError, WriteOp, WriterConfig, WriterHandle,
};
use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::helpers::{mongodb_url, parts, postgres_url, unique_name};
use crate::stores::{chat, user};

const TIMEOUT: Duration = Duration::from_secs(5);
const CHATS: usize = 40;
const ROUNDS: i64 = 25;
/// Messages in the one big write.
const BIG: usize = 1_000;

async fn sqlite_split() -> (Stores, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db"), SqliteSync::Normal, 1_000, 512)
        .await
        .unwrap()
        .shared();
    let stores = Stores {
        metadata: store.clone(),
        messages: store,
        unified: None,
    };
    (stores, Some(dir))
}

async fn postgres_mongodb() -> (Stores, Option<tempfile::TempDir>) {
    let metadata = PostgresStore::open(&postgres_url(), &unique_name(), 4, TIMEOUT)
        .await
        .unwrap();
    let messages = MongoStore::open(&mongodb_url(), &unique_name(), TIMEOUT)
        .await
        .unwrap();
    let stores = Stores {
        metadata: metadata.shared(),
        messages: messages.shared(),
        unified: None,
    };
    (stores, None)
}

// The store contract suite's per-backend test module.
contract!(sqlite_split => sqlite_split; each_chats_writes_commit_in_order_with_batches_in_flight);
contract!(postgres_mongodb => postgres_mongodb; each_chats_writes_commit_in_order_with_batches_in_flight);

/// Round `round` of a chat: its next `count` messages (a chain under the previous one), and the
/// chat and branch rows that move the branch's head to the last of them, at version `round`.
pub(crate) fn round(
    meta: &mut ChatMeta,
    branch: &mut Branch,
    messages: &mut Vec<MessageId>,
    round: i64,
    count: usize,
) -> ChatWrite {
    let mut ops = Vec::with_capacity(count + 2);
    for _ in 0..count {
        let message = Message {
            id: MessageId::new(),
            chat_id: meta.id,
            parent_id: messages.last().copied(),
            role: if messages.len() % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            content: Arc::from(format!("message {} of round {round}", messages.len())),
            created_at: now(),
            model: None,
            metadata: None,
            idempotency_key: None,
        };
        messages.push(message.id);
        ops.push(WriteOp::InsertMessage(message));
    }
    meta.version = round;
    meta.updated_at = now();
    branch.head = messages.last().copied();
    branch.updated_at = meta.updated_at;
    ops.push(WriteOp::UpsertChat(meta.clone()));
    ops.push(WriteOp::UpsertBranch(branch.clone(), round));
    ChatWrite {
        chat: meta.id,
        generation: 0,
        fence: None,
        ops,
        owner: None,
    }
}

/// A real message store whose big inserts are slow: a batch holding one takes longer than the
/// batches after it, whatever the store would do with them (it could take calls in turn).
struct SlowBigInserts(Arc<dyn MessageStore>);

#[async_trait]
impl MessageStore for SlowBigInserts {
    async fn insert(&self, messages: &[Message]) -> Result<(), StoreError> {
        if messages.len() >= BIG {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.0.insert(messages).await
    }

    async fn delete(&self, deletes: &MessageDeletes) -> Result<(), StoreError> {
        self.0.delete(deletes).await
    }

    async fn load_chat(&self, chat: ChatId) -> Result<Vec<Message>, StoreError> {
        self.0.load_chat(chat).await
    }

    async fn existing(&self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
        self.0.existing(ids).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

/// Many chats write at once, each many times without waiting, one write much bigger than the
/// rest: the writer commits several batches at a time, yet each chat's writes commit in the
/// order they were sent (a write's ticket never resolves before an earlier one of its chat, even
/// when the earlier one's batch is the slowest), and the stores end up with every chat's last
/// version, its whole message chain and its branch at the newest message.
async fn each_chats_writes_commit_in_order_with_batches_in_flight(stores: Stores) {
    let slowed = Stores {
        messages: Arc::new(SlowBigInserts(stores.messages.clone())),
        ..stores.clone()
    };
    let writer = WriterHandle::spawn(
        slowed,
        WriterConfig {
            ack_mode: AckMode::Durable,
            batches_in_flight: 4,
            // Small batches, so a chat's writes spread over many of them (a write is never
            // split: the big one is a batch of its own).
            max_batch_ops: 30,
            ..WriterConfig::default()
        },
    );
    let owner = user(&format!("{}@example.com", unique_name()), None);
    stores.metadata.create_user(&owner).await.unwrap();
    let mut chats = Vec::new();
    for _ in 0..CHATS {
        let (meta, branch) = chat(owner.id, 0);
        chats.push((
            meta,
            branch,
            Vec::<MessageId>::new(),
            Vec::<CommitTicket>::new(),
        ));
    }
    for r in 1..=ROUNDS {
        for (i, (meta, branch, messages, tickets)) in chats.iter_mut().enumerate() {
            // The first chat's first write is big, and its batch takes far longer than the
            // next ones: its second write must still wait for it.
            let count = if i == 0 && r == 1 { BIG } else { 1 };
            let write = round(meta, branch, messages, r, count);
            let slot = loop {
                match writer.reserve() {
                    Some(slot) => break slot,
                    None => writer.room().await,
                }
            };
            tickets.push(slot.send(write));
        }
    }
    // In the order they resolve: when a write's ticket resolves, its chat's earlier ones have.
    let mut resolving: FuturesUnordered<_> = chats
        .iter()
        .enumerate()
        .flat_map(|(c, (_, _, _, tickets))| {
            tickets
                .iter()
                .enumerate()
                .map(move |(i, ticket)| ticket.clone().map(move |result| (c, i, result)))
        })
        .collect();
    while let Some((c, i, result)) = resolving.next().await {
        assert_eq!(result, Ok::<(), WriteError>(()));
        let (meta, _, _, tickets) = &chats[c];
        for (j, earlier) in tickets[..i].iter().enumerate() {
            assert_eq!(
                earlier.clone().now_or_never(),
                Some(Ok(())),
                "chat {}: write {i} committed before write {j}",
                meta.id
            );
        }
    }
    writer.barrier().await;
    assert!(
        writer.stats.batches.get() > 2 * ROUNDS as u64,
        "the writes spread over many batches"
    );
    for (meta, branch, messages, _) in &chats {
        let (stored, branches) = parts(stores.metadata.load_chat(meta.id).await.unwrap().unwrap());
        assert_eq!(stored.version, ROUNDS);
        assert_eq!(branches.len(), 1);
        assert_eq!(branches[0].id, branch.id);
        assert_eq!(branches[0].head, messages.last().copied());
        let loaded = stores.messages.load_chat(meta.id).await.unwrap();
        let ids: Vec<_> = loaded.iter().map(|m| m.id).collect();
        assert_eq!(&ids, messages, "chat {}: every message, in order", meta.id);
        for pair in loaded.windows(2) {
            assert_eq!(pair[1].parent_id, Some(pair[0].id));
        }
    }
}
