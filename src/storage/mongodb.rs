//! Message content in MongoDB, via the official driver.
//!
//! One document per message in the `messages` collection, keyed by the message id:
//! `{_id, chat_id, parent_id?, role, content, model?, metadata?, idempotency_key?, created_at}`.
//! Ids are UUIDs stored as BSON binary subtype 4; UUIDv7 bytes sort by creation time, so the
//! index `{chat_id: 1, _id: 1}` serves a chat's activation with one query (sorted by id here).
//! `metadata` is kept as JSON text rather than a sub-document: client metadata may hold keys
//! (`$x`, `a.b`) and numbers (`u64` beyond `i64`) that BSON documents do not round-trip exactly.
//!
//! Writes use `{w: "majority", j: true}`: a batch counts as stored once it is journaled on a
//! majority. Inserts are unordered `insert_many`s; a retried batch meets its own earlier inserts
//! as duplicate-key errors (E11000), which count as success, so retries never duplicate.

use std::future::IntoFuture;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::model::{ChatId, Message, MessageId, Role};
use arbor_actors::ports::{MessageDeletes, MessageStore, StoreError};
use async_trait::async_trait;
use mongodb::bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime as BsonDateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use uuid::Uuid;

use super::parse_metadata;

const COLLECTION: &str = "messages";
/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// Ids per `$in` of a delete (keeps each command far below the 16 MiB message limit).
const DELETE_CHUNK: usize = 10_000;
/// Documents the server may return in the first batch of a chat's load (it stops at 16 MiB
/// anyway); large enough that loading a chat is one round trip.
const LOAD_BATCH: u32 = 100_000;

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    messages: Collection<Document>,
    raw: Collection<RawDocumentBuf>,
    timeout: Duration,
}

impl MongoStore {
    /// Connects (the driver connects lazily and reconnects by itself) and creates the collection's
    /// indexes.
    pub async fn open(url: &str, database: &str, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut options = ClientOptions::parse(url)
            .await
            .context("parsing storage.mongodb_url")?;
        options.app_name = Some("arbor".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options).context("configuring the MongoDB client")?;
        let db = client.database(database);
        let concern = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .build();
        let store = Self {
            messages: db.collection_with_options(COLLECTION, concern.clone()),
            raw: db.collection_with_options(COLLECTION, concern),
            db,
            timeout,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the indexes (idempotent).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let index = IndexModel::builder()
            .keys(doc! { "chat_id": 1, "_id": 1 })
            .options(
                IndexOptions::builder()
                    .name("chat_id_id".to_owned())
                    .build(),
            )
            .build();
        self.bounded(async { self.messages.create_index(index).await })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("creating MongoDB indexes")?;
        Ok(())
    }

    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    async fn bounded<T>(
        &self,
        call: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "MongoDB did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Document-level write errors are the server refusing the data; everything else (network,
/// server selection, write concern not satisfied, elections) is an outage worth retrying.
fn store_error(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) if m.write_errors.is_some() => StoreError::Rejected(e.to_string()),
        ErrorKind::Write(WriteFailure::WriteError(_)) => StoreError::Rejected(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// True when an insert failed only because some documents were already stored (a retry).
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn uuid(id: &Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: id.as_bytes().to_vec(),
    })
}

/// The document a message is stored as.
pub fn document(m: &Message) -> Document {
    let mut d = doc! {
        "_id": uuid(m.id.as_uuid()),
        "chat_id": uuid(m.chat_id.as_uuid()),
        "role": m.role.as_str(),
        "content": m.content.as_ref(),
        "created_at": BsonDateTime::from_millis(m.created_at.timestamp_millis()),
    };
    if let Some(parent) = m.parent_id {
        d.insert("parent_id", uuid(parent.as_uuid()));
    }
    if let Some(model) = &m.model {
        d.insert("model", model.as_ref());
    }
    if let Some(metadata) = &m.metadata {
        d.insert("metadata", metadata.to_string());
    }
    if let Some(key) = &m.idempotency_key {
        d.insert("idempotency_key", key.as_ref());
    }
    d
}

fn corrupt(field: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("messages.{field}: {e}"))
}

fn field<'a>(doc: &'a RawDocument, name: &str) -> Result<Option<RawBsonRef<'a>>, StoreError> {
    match doc.get(name).map_err(|e| corrupt(name, e))? {
        None | Some(RawBsonRef::Null) => Ok(None),
        Some(value) => Ok(Some(value)),
    }
}

fn opt_str<'a>(doc: &'a RawDocument, name: &str) -> Result<Option<&'a str>, StoreError> {
    match field(doc, name)? {
        None => Ok(None),
        Some(RawBsonRef::String(s)) => Ok(Some(s)),
        Some(other) => Err(corrupt(
            name,
            format!("not a string: {:?}", other.element_type()),
        )),
    }
}

fn opt_uuid(doc: &RawDocument, name: &str) -> Result<Option<Uuid>, StoreError> {
    match field(doc, name)? {
        None => Ok(None),
        Some(RawBsonRef::Binary(b)) => Uuid::from_slice(b.bytes)
            .map(Some)
            .map_err(|e| corrupt(name, e)),
        Some(other) => Err(corrupt(
            name,
            format!("not a UUID: {:?}", other.element_type()),
        )),
    }
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| corrupt(name, "missing"))
}

fn message_from(doc: &RawDocument) -> Result<Message, StoreError> {
    let role = required(opt_str(doc, "role")?, "role")?;
    let created = doc
        .get_datetime("created_at")
        .map_err(|e| corrupt("created_at", e))?;
    Ok(Message {
        id: MessageId::from_uuid(required(opt_uuid(doc, "_id")?, "_id")?),
        chat_id: ChatId::from_uuid(required(opt_uuid(doc, "chat_id")?, "chat_id")?),
        parent_id: opt_uuid(doc, "parent_id")?.map(MessageId::from_uuid),
        role: Role::from_str(role).map_err(|_| corrupt("role", role))?,
        content: Arc::from(required(opt_str(doc, "content")?, "content")?),
        created_at: chrono::DateTime::from_timestamp_millis(created.timestamp_millis())
            .ok_or_else(|| corrupt("created_at", "out of range"))?,
        model: opt_str(doc, "model")?.map(Arc::from),
        metadata: parse_metadata(opt_str(doc, "metadata")?)?,
        idempotency_key: opt_str(doc, "idempotency_key")?.map(Arc::from),
    })
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &Uuid) -> Vec<Bson> {
    items.iter().map(|i| uuid(id(i))).collect()
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn insert(&self, messages: &[Message]) -> Result<(), StoreError> {
        let docs: Vec<Document> = messages.iter().map(document).collect();
        let result =
            tokio::time::timeout(self.timeout, self.messages.insert_many(docs).ordered(false))
                .await;
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if only_duplicates(&e) => Ok(()),
            Ok(Err(e)) => Err(store_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "MongoDB did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn delete(&self, deletes: &MessageDeletes) -> Result<(), StoreError> {
        for chunk in deletes.messages.chunks(DELETE_CHUNK) {
            let filter = doc! { "_id": { "$in": ids(chunk, MessageId::as_uuid) } };
            self.bounded(self.messages.delete_many(filter)).await?;
        }
        for chunk in deletes.chats.chunks(DELETE_CHUNK) {
            let filter = doc! { "chat_id": { "$in": ids(chunk, ChatId::as_uuid) } };
            self.bounded(self.messages.delete_many(filter)).await?;
        }
        Ok(())
    }

    async fn existing(&self, wanted: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
        let mut found = Vec::new();
        for chunk in wanted.chunks(DELETE_CHUNK) {
            let filter = doc! { "_id": { "$in": ids(chunk, MessageId::as_uuid) } };
            let docs = self
                .bounded(async {
                    let mut cursor = self.raw.find(filter).projection(doc! { "_id": 1 }).await?;
                    let mut found = Vec::new();
                    while cursor.advance().await? {
                        found.push(opt_uuid(cursor.current(), "_id"));
                    }
                    Ok(found)
                })
                .await?;
            for id in docs {
                found.push(MessageId::from_uuid(required(id?, "_id")?));
            }
        }
        Ok(found)
    }

    async fn load_chat(&self, chat: ChatId) -> Result<Vec<Message>, StoreError> {
        let decoded = self
            .bounded(async {
                // No server-side sort: the index returns a chat's documents in `_id` order
                // already, and the sort below checks that in one pass. Asking the server to sort
                // cost SecantusDB a fifth of the read (BENCHMARKS.md, "Activation").
                let mut cursor = self
                    .raw
                    .find(doc! { "chat_id": uuid(chat.as_uuid()) })
                    .batch_size(LOAD_BATCH)
                    .await?;
                let mut messages = Vec::new();
                while cursor.advance().await? {
                    messages.push(message_from(cursor.current()));
                }
                Ok(messages)
            })
            .await?;
        let mut messages = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
        // `MessageId`'s order is its UUID's bytes, which is BSON's order for these binaries.
        messages.sort_unstable_by_key(|m| m.id);
        Ok(messages)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.db.run_command(doc! { "ping": 1 }))
            .await?;
        Ok(())
    }
}
