//! The store ports' contract, run against every backend on real servers: SQLite (a temp file),
//! PostgreSQL and MongoDB (the servers scripts/test.sh starts; each test gets its own schema or
//! database). Every case is one function over the port trait; the macros below instantiate it
//! per backend, so a backend cannot pass by skipping a case.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arbor::config::SqliteSync;
use arbor::storage::{mongodb::MongoStore, postgres::PostgresStore, sqlite::SqliteStore};
use arbor_actors::model::{
    now, Branch, BranchId, ChatId, ChatMeta, Message, MessageId, Role, UserId, UserRecord,
};
use arbor_actors::ports::{MessageDeletes, MessageStore, MetaBatch, MetadataStore, StoreError};
use serde_json::json;

use crate::helpers::{mongodb_url, parts, postgres_url, unique_name};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A store, and the temp directory its SQLite file lives in (kept until the test ends).
type Opened<S> = (Arc<S>, Option<tempfile::TempDir>);

async fn sqlite() -> (SqliteStore, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db"), SqliteSync::Normal, 1_000, 512)
        .await
        .unwrap();
    (store, Some(dir))
}

async fn sqlite_metadata() -> Opened<dyn MetadataStore> {
    let (store, dir) = sqlite().await;
    (store.shared(), dir)
}

async fn sqlite_messages() -> Opened<dyn MessageStore> {
    let (store, dir) = sqlite().await;
    (store.shared(), dir)
}

async fn postgres_metadata() -> Opened<dyn MetadataStore> {
    let store = PostgresStore::open(&postgres_url(), &unique_name(), 4, TIMEOUT)
        .await
        .unwrap();
    (store.shared(), None)
}

async fn mongodb_messages() -> Opened<dyn MessageStore> {
    let store = MongoStore::open(&mongodb_url(), &unique_name(), TIMEOUT)
        .await
        .unwrap();
    (store.shared(), None)
}

macro_rules! contract {
    ($backend:ident => $open:ident; $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[actix_web::test]
                async fn $case() {
                    let (store, _dir) = super::$open().await;
                    super::$case(store).await;
                }
            )+
        }
    };
}

macro_rules! metadata_cases {
    ($($backend:ident => $open:ident),+) => {
        $(contract!($backend => $open;
            users_are_unique_by_email_and_username,
            admin_role_is_granted_and_revoked_by_email,
            chats_and_branches_round_trip,
            an_older_version_never_overwrites_a_newer_one,
            deletions_remove_rows,
            a_batch_is_idempotent_and_spans_many_chats,
            chats_are_listed_newest_first_per_owner,
            calls_outlive_the_runtime_they_were_made_on,
        );)+
    };
}

macro_rules! message_cases {
    ($($backend:ident => $open:ident),+) => {
        $(contract!($backend => $open;
            messages_round_trip_in_id_order,
            inserts_are_idempotent_by_id,
            deletes_by_id_and_by_chat,
            large_batches_span_many_chats,
            metadata_json_round_trips_exactly,
            big_chats_load_whole_in_id_order,
            reads_outlive_the_runtime_they_were_made_on,
        );)+
    };
}

metadata_cases!(metadata_sqlite => sqlite_metadata, metadata_postgres => postgres_metadata);
message_cases!(messages_sqlite => sqlite_messages, messages_mongodb => mongodb_messages);

pub(crate) fn user(email: &str, username: Option<&str>) -> UserRecord {
    UserRecord {
        id: UserId::new(),
        email: Some(email.into()),
        username: username.map(Into::into),
        password_hash: "$2b$04$hash".into(),
        created_at: now(),
        is_admin: false,
    }
}

pub(crate) fn chat(owner: UserId, version: i64) -> (ChatMeta, Branch) {
    let id = ChatId::new();
    let t = now();
    let branch = Branch {
        id: BranchId::new(),
        chat_id: id,
        name: "main".into(),
        head: None,
        forked_from: None,
        created_at: t,
        updated_at: t,
        fallback: None,
    };
    let meta = ChatMeta {
        id,
        owner,
        title: Some("Ünïcödé title ✓".into()),
        system_prompt: None,
        description: None,
        active_branch: branch.id,
        created_at: t,
        updated_at: t,
        version,
    };
    (meta, branch)
}

fn message(chat: ChatId, parent: Option<MessageId>, content: &str) -> Message {
    Message {
        id: MessageId::new(),
        chat_id: chat,
        parent_id: parent,
        role: if parent.is_none() {
            Role::User
        } else {
            Role::Assistant
        },
        content: Arc::from(content),
        created_at: now(),
        model: parent.map(|_| Arc::from("echo/echo")),
        metadata: None,
        idempotency_key: None,
    }
}

fn batch(chats: &[(ChatMeta, Branch)]) -> MetaBatch {
    MetaBatch {
        chats: chats.iter().map(|(c, _)| c.clone()).collect(),
        branches: chats.iter().map(|(c, b)| (b.clone(), c.version)).collect(),
        ..MetaBatch::default()
    }
}

/// Callers run on many runtimes (each HTTP worker thread has its own) that may stop before the
/// store does, and the shutdown after them still loads chats: calls made on a runtime that has
/// stopped since must not break the calls that follow (a connection belongs to the runtime that
/// opened it).
async fn calls_outlive_the_runtime_they_were_made_on(store: Arc<dyn MetadataStore>) {
    let (meta, branch) = chat(UserId::new(), 1);
    let id = meta.id;
    store.apply(&batch(&[(meta, branch)])).await.unwrap();
    let caller = store.clone();
    on_a_runtime_that_then_stops(async move {
        // At once, so the pool opens connections for them.
        let loads = (0..4).map(|_| caller.load_chat(id));
        for loaded in futures_util::future::join_all(loads).await {
            assert!(loaded.unwrap().is_some());
        }
    })
    .await;
    for _ in 0..4 {
        let loaded = store.load_chat(id).await;
        assert!(loaded.unwrap().is_some());
    }
    assert!(store.user_by_id(UserId::new()).await.unwrap().is_none());
}

/// Runs `calls` on a runtime of its own, on a thread of its own, and stops that runtime.
async fn on_a_runtime_that_then_stops(
    calls: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(calls);
    })
    .await
    .unwrap();
}

/// As [`calls_outlive_the_runtime_they_were_made_on`], for the message stores.
async fn reads_outlive_the_runtime_they_were_made_on(store: Arc<dyn MessageStore>) {
    let id = ChatId::new();
    let first = message(id, None, "q");
    store.insert(std::slice::from_ref(&first)).await.unwrap();
    let caller = store.clone();
    on_a_runtime_that_then_stops(async move {
        let loads = (0..4).map(|_| caller.load_chat(id));
        for loaded in futures_util::future::join_all(loads).await {
            assert_eq!(loaded.unwrap().len(), 1);
        }
    })
    .await;
    for _ in 0..4 {
        assert_eq!(store.load_chat(id).await.unwrap().len(), 1);
    }
    store
        .insert(&[message(id, Some(first.id), "a")])
        .await
        .unwrap();
    assert_eq!(store.load_chat(id).await.unwrap().len(), 2);
}

async fn admin_role_is_granted_and_revoked_by_email(store: Arc<dyn MetadataStore>) {
    let ops = user("ops@example.com", Some("ops"));
    let other = user("other@example.com", None);
    store.create_user(&ops).await.unwrap();
    store.create_user(&other).await.unwrap();
    let granted = store.set_admin("  OPS@example.com ", true).await.unwrap();
    assert_eq!(granted.map(|u| (u.id, u.is_admin)), Some((ops.id, true)));
    assert!(store.user_by_id(ops.id).await.unwrap().unwrap().is_admin);
    assert!(!store.user_by_id(other.id).await.unwrap().unwrap().is_admin);
    // By email only: a username is not an email.
    assert_eq!(store.set_admin("other", true).await.unwrap(), None);
    assert_eq!(
        store.set_admin("nobody@example.com", true).await.unwrap(),
        None
    );
    let revoked = store.set_admin("ops@example.com", false).await.unwrap();
    assert_eq!(revoked.map(|u| u.is_admin), Some(false));
    assert!(!store.user_by_login("ops").await.unwrap().unwrap().is_admin);
}

async fn users_are_unique_by_email_and_username(store: Arc<dyn MetadataStore>) {
    let alice = user("alice@example.com", Some("Alice"));
    store.create_user(&alice).await.unwrap();
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    // Logins match the email, or the username in any case.
    for login in ["alice@example.com", "ALICE@example.com", "alice", "ALICE"] {
        assert_eq!(
            store.user_by_login(login).await.unwrap().map(|u| u.id),
            Some(alice.id),
            "{login}"
        );
    }
    assert_eq!(store.user_by_login("bob").await.unwrap(), None);
    assert_eq!(store.user_by_id(UserId::new()).await.unwrap(), None);

    let same_email = user("alice@example.com", None);
    assert!(matches!(
        store.create_user(&same_email).await,
        Err(StoreError::Conflict("email"))
    ));
    let same_name = user("other@example.com", Some("aLiCe"));
    assert!(matches!(
        store.create_user(&same_name).await,
        Err(StoreError::Conflict("username"))
    ));
    // Users without a username do not clash with each other.
    store
        .create_user(&user("x@example.com", None))
        .await
        .unwrap();
    store
        .create_user(&user("y@example.com", None))
        .await
        .unwrap();
    store.ping().await.unwrap();
}

async fn chats_and_branches_round_trip(store: Arc<dyn MetadataStore>) {
    let owner = UserId::new();
    let (mut meta, main) = chat(owner, 1);
    meta.system_prompt = Some("Be brief.\nReally.".into());
    meta.description = Some("A room for ✓ testing".into());
    let head = MessageId::new();
    let side = Branch {
        id: BranchId::new(),
        chat_id: meta.id,
        name: "side ✂".into(),
        head: Some(head),
        forked_from: Some(head),
        created_at: now(),
        updated_at: now(),
        fallback: Some(MessageId::new()),
    };
    store
        .apply(&MetaBatch {
            chats: vec![meta.clone()],
            branches: vec![(main.clone(), 1), (side.clone(), 1)],
            ..MetaBatch::default()
        })
        .await
        .unwrap();
    let (loaded, mut branches) = parts(store.load_chat(meta.id).await.unwrap().unwrap());
    assert_eq!(loaded, meta);
    branches.sort_by_key(|b| b.id);
    assert_eq!(branches, vec![main, side]);
    assert!(store.load_chat(ChatId::new()).await.unwrap().is_none());
}

async fn an_older_version_never_overwrites_a_newer_one(store: Arc<dyn MetadataStore>) {
    let (mut meta, mut main) = chat(UserId::new(), 1);
    store
        .apply(&batch(&[(meta.clone(), main.clone())]))
        .await
        .unwrap();

    let mut newer = meta.clone();
    newer.version = 3;
    newer.title = Some("newer".into());
    let mut newer_branch = main.clone();
    newer_branch.head = Some(MessageId::new());
    newer_branch.fallback = Some(MessageId::new());
    store
        .apply(&MetaBatch {
            chats: vec![newer.clone()],
            branches: vec![(newer_branch.clone(), 3)],
            ..MetaBatch::default()
        })
        .await
        .unwrap();

    // A stale writer replays version 2.
    meta.version = 2;
    meta.title = Some("stale".into());
    main.head = Some(MessageId::new());
    main.fallback = None;
    store
        .apply(&MetaBatch {
            chats: vec![meta.clone()],
            branches: vec![(main, 2)],
            ..MetaBatch::default()
        })
        .await
        .unwrap();
    let (loaded, branches) = parts(store.load_chat(meta.id).await.unwrap().unwrap());
    assert_eq!(loaded, newer);
    assert_eq!(branches, vec![newer_branch]);
}

async fn deletions_remove_rows(store: Arc<dyn MetadataStore>) {
    let owner = UserId::new();
    let (meta, main) = chat(owner, 1);
    let extra = Branch {
        id: BranchId::new(),
        name: "extra".into(),
        ..main.clone()
    };
    let (other, other_main) = chat(owner, 1);
    store
        .apply(&MetaBatch {
            chats: vec![meta.clone(), other.clone()],
            branches: vec![
                (main.clone(), 1),
                (extra.clone(), 1),
                (other_main.clone(), 1),
            ],
            ..MetaBatch::default()
        })
        .await
        .unwrap();
    store
        .apply(&MetaBatch {
            deleted_branches: vec![extra.id],
            ..MetaBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.load_chat(meta.id).await.unwrap().unwrap().branches,
        vec![main]
    );
    store
        .apply(&MetaBatch {
            deleted_chats: vec![meta.id],
            ..MetaBatch::default()
        })
        .await
        .unwrap();
    assert!(store.load_chat(meta.id).await.unwrap().is_none());
    // The other chat is untouched.
    assert_eq!(
        store.load_chat(other.id).await.unwrap().map(parts),
        Some((other, vec![other_main]))
    );
    assert_eq!(store.list_chats(owner, 10, None).await.unwrap().len(), 1);
}

async fn a_batch_is_idempotent_and_spans_many_chats(store: Arc<dyn MetadataStore>) {
    let owner = UserId::new();
    let chats: Vec<_> = (0..1500).map(|_| chat(owner, 1)).collect();
    let b = batch(&chats);
    store.apply(&b).await.unwrap();
    store.apply(&b).await.unwrap(); // a retried batch
    for (meta, branch) in chats.iter().step_by(97) {
        assert_eq!(
            store.load_chat(meta.id).await.unwrap().map(parts),
            Some((meta.clone(), vec![branch.clone()]))
        );
    }
    let listed = store.list_chats(owner, 2000, None).await.unwrap();
    assert_eq!(listed.len(), 1500);
}

async fn chats_are_listed_newest_first_per_owner(store: Arc<dyn MetadataStore>) {
    let (alice, bob) = (UserId::new(), UserId::new());
    let mine: Vec<_> = (0..5).map(|_| chat(alice, 1)).collect();
    let theirs = chat(bob, 1);
    let mut all = mine.clone();
    all.push(theirs.clone());
    store.apply(&batch(&all)).await.unwrap();

    let first = store.list_chats(alice, 3, None).await.unwrap();
    let ids: Vec<_> = first.iter().map(|c| c.id).collect();
    let mut expected: Vec<_> = mine.iter().map(|(c, _)| c.id).collect();
    expected.reverse();
    assert_eq!(ids, expected[..3]);
    let rest = store.list_chats(alice, 3, Some(ids[2])).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.id).collect::<Vec<_>>(), expected[3..]);
    assert_eq!(
        store.list_chats(bob, 10, None).await.unwrap(),
        vec![theirs.0]
    );
}

async fn messages_round_trip_in_id_order(store: Arc<dyn MessageStore>) {
    let chat = ChatId::new();
    let root = message(chat, None, "Hello ✓ — \"quoted\" \n\t line");
    let mut reply = message(chat, Some(root.id), "Hi!");
    reply.metadata = Some(Arc::new(
        json!({"finish_reason": "stop", "usage": {"total_tokens": 7}}),
    ));
    reply.idempotency_key = Some(Arc::from("key-1"));
    let sibling = message(chat, Some(root.id), &"long ".repeat(6000));
    // Inserted out of order; loaded in id (creation) order.
    store
        .insert(&[sibling.clone(), root.clone(), reply.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.load_chat(chat).await.unwrap(),
        vec![root, reply, sibling]
    );
    assert!(store.load_chat(ChatId::new()).await.unwrap().is_empty());
    store.ping().await.unwrap();
}

async fn inserts_are_idempotent_by_id(store: Arc<dyn MessageStore>) {
    let chat = ChatId::new();
    let a = message(chat, None, "a");
    let b = message(chat, Some(a.id), "b");
    store.insert(&[a.clone(), b.clone()]).await.unwrap();
    // A retried batch, partly stored before, with one new message.
    let c = message(chat, Some(b.id), "c");
    store
        .insert(&[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    store.insert(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(store.load_chat(chat).await.unwrap(), vec![a, b, c]);
}

async fn deletes_by_id_and_by_chat(store: Arc<dyn MessageStore>) {
    let (one, two) = (ChatId::new(), ChatId::new());
    let a = message(one, None, "a");
    let b = message(one, Some(a.id), "b");
    let c = message(two, None, "c");
    store
        .insert(&[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    store
        .delete(&MessageDeletes {
            messages: vec![b.id],
            chats: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.load_chat(one).await.unwrap(), vec![a]);
    store
        .delete(&MessageDeletes {
            messages: vec![],
            chats: vec![one],
        })
        .await
        .unwrap();
    assert!(store.load_chat(one).await.unwrap().is_empty());
    assert_eq!(store.load_chat(two).await.unwrap(), vec![c]);
    // Deleting what is gone is fine (a retried batch).
    store
        .delete(&MessageDeletes {
            messages: vec![b.id],
            chats: vec![one],
        })
        .await
        .unwrap();
}

async fn large_batches_span_many_chats(store: Arc<dyn MessageStore>) {
    let chats: Vec<ChatId> = (0..50).map(|_| ChatId::new()).collect();
    let mut all = Vec::new();
    for round in 0..40 {
        for chat in &chats {
            let parent = all
                .iter()
                .rev()
                .find(|m: &&Message| m.chat_id == *chat)
                .map(|m| m.id);
            all.push(message(*chat, parent, &format!("{chat} {round}")));
        }
    }
    // As a retried batch: an earlier attempt stored part of it.
    store.insert(&all[..700]).await.unwrap();
    store.insert(&all).await.unwrap();
    for chat in chats.iter().step_by(7) {
        let loaded = store.load_chat(*chat).await.unwrap();
        let expected: Vec<_> = all.iter().filter(|m| m.chat_id == *chat).cloned().collect();
        assert_eq!(loaded.len(), 40);
        assert_eq!(loaded, expected);
    }
}

/// Chats bigger than one read of an adapter (SQLite reads 512 messages at a time; one of
/// exactly two reads' size), every field set on some messages and text that needs escaping,
/// inserted in reverse among another chat's messages: each loads whole, exactly, in id order.
async fn big_chats_load_whole_in_id_order(store: Arc<dyn MessageStore>) {
    let chain = |chat: ChatId, len: usize| {
        let mut messages: Vec<Message> = Vec::with_capacity(len);
        for i in 0..len {
            let parent = messages.last().map(|m| m.id);
            let text = format!("{i} \u{1}\u{1f}\u{7f} \"q\" \\ / é ✓ 🌳 \u{2028}\n\t");
            let mut m = message(chat, parent, &text);
            if i % 3 == 0 {
                m.metadata = Some(Arc::new(json!({"i": i, "text": "a\nb \"c\""})));
            }
            if i % 5 == 0 {
                m.idempotency_key = Some(Arc::from(format!("key-{i}")));
            }
            messages.push(m);
        }
        messages
    };
    let (big, exact, other) = (ChatId::new(), ChatId::new(), ChatId::new());
    let chats = [chain(big, 1100), chain(exact, 1024), chain(other, 300)];
    let mut all: Vec<Message> = chats.iter().flatten().cloned().collect();
    all.reverse();
    store.insert(&all).await.unwrap();
    for messages in &chats {
        assert_eq!(
            &store.load_chat(messages[0].chat_id).await.unwrap(),
            messages
        );
    }
}

async fn metadata_json_round_trips_exactly(store: Arc<dyn MessageStore>) {
    let chat = ChatId::new();
    let mut m = message(chat, None, "meta");
    let value = json!({
        "$dollar": 1, "a.b": [1, 2.5, "x", null, true], "big": u64::MAX, "neg": i64::MIN,
        "nested": {"deep": {"é": "ü"}}, "empty": {}
    });
    m.metadata = Some(Arc::new(value.clone()));
    store.insert(std::slice::from_ref(&m)).await.unwrap();
    let loaded = store.load_chat(chat).await.unwrap();
    assert_eq!(loaded[0].metadata.as_deref(), Some(&value));
}

/// SQLite holds both stores, so the writer hands it whole batches (`BatchStore`): one
/// transaction, with the per-store order and idempotence.
mod unified_sqlite {
    use super::*;
    use arbor_actors::ports::{Batch, BatchStore};

    fn a_batch() -> (Batch, ChatMeta, Message, Message) {
        let (meta, mut branch) = chat(UserId::new(), 2);
        let question = message(meta.id, None, "q");
        let answer = message(meta.id, Some(question.id), "a");
        let dropped = message(
            meta.id,
            Some(question.id),
            "created and deleted in one batch",
        );
        branch.head = Some(answer.id);
        let batch = Batch {
            inserts: vec![question.clone(), answer.clone(), dropped.clone()],
            meta: MetaBatch {
                chats: vec![meta.clone()],
                branches: vec![(branch, meta.version)],
                ..MetaBatch::default()
            },
            deletes: MessageDeletes {
                messages: vec![dropped.id],
                chats: vec![],
            },
        };
        (batch, meta, question, answer)
    }

    #[actix_web::test]
    async fn a_batch_commits_every_store_in_order_and_is_idempotent() {
        let (store, _dir) = sqlite().await;
        let (batch, meta, question, answer) = a_batch();
        store.commit(&batch).await.unwrap();
        // A retried batch changes nothing.
        store.commit(&batch).await.unwrap();
        let (loaded, branches) = MetadataStore::load_chat(&store, meta.id)
            .await
            .unwrap()
            .map(parts)
            .unwrap();
        assert_eq!(loaded, meta);
        assert_eq!(branches.len(), 1);
        assert_eq!(branches[0].head, Some(answer.id));
        // Deletions run after the inserts of the same batch.
        let messages = MessageStore::load_chat(&store, meta.id).await.unwrap();
        assert_eq!(messages, vec![question, answer]);
        store.commit(&Batch::default()).await.unwrap();
    }

    #[actix_web::test]
    async fn a_commit_dropped_midway_is_all_or_nothing_and_the_store_stays_writable() {
        let (store, _dir) = sqlite().await;
        let chat = ChatId::new();
        // Large enough that its script is still running when the caller gives up on it.
        let inserts: Vec<Message> = (0..20_000)
            .map(|i| message(chat, None, &format!("message {i}")))
            .collect();
        let big = Batch {
            inserts,
            ..Batch::default()
        };
        let given_up =
            tokio::time::timeout(std::time::Duration::from_millis(2), store.commit(&big)).await;
        assert!(given_up.is_err(), "the commit ended before it was dropped");
        let (batch, meta, question, answer) = a_batch();
        store.commit(&batch).await.unwrap();
        assert_eq!(
            MessageStore::load_chat(&store, meta.id).await.unwrap(),
            vec![question, answer]
        );
        let stored = MessageStore::load_chat(&store, chat).await.unwrap().len();
        assert!(
            stored == 0 || stored == big.inserts.len(),
            "{stored} stored"
        );
    }

    #[actix_web::test]
    async fn a_failing_batch_leaves_nothing_behind() {
        let (store, dir) = sqlite().await;
        // Break the metadata step from outside: the messages before it must roll back with it.
        let path = dir.as_ref().unwrap().path().join("t.db");
        use sqlx::Connection;
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("ALTER TABLE branches RENAME TO branches_away")
            .execute(&mut other)
            .await
            .unwrap();
        let (batch, meta, _, _) = a_batch();
        assert!(store.commit(&batch).await.is_err());
        assert!(MessageStore::load_chat(&store, meta.id)
            .await
            .unwrap()
            .is_empty());
        sqlx::query("ALTER TABLE branches_away RENAME TO branches")
            .execute(&mut other)
            .await
            .unwrap();
        store.commit(&batch).await.unwrap();
        assert_eq!(
            MessageStore::load_chat(&store, meta.id)
                .await
                .unwrap()
                .len(),
            2
        );
    }
}
