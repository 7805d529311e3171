//! In-process measurements of export, import and search (issue 39), on the stores of the
//! configuration file `bench/run.sh` writes:
//!
//! - `export`: a 10,000-message chat (a long conversation with forks) as its `arbor.chat/1`
//!   JSON, as the handler makes it (the actor's export, then serde_json);
//! - `import`: chats of 10,000 messages each, checked and stored (`ChatExport::into_import`,
//!   then `Chats::import`: one write each), in messages a second;
//! - `search`: USERS accounts of CHATS chats of MESSAGES messages of random words (imported),
//!   then one query at a time of a random user for a random word: the index's own answer
//!   (`MetadataStore::search`, 20 hits) and the whole search as the handler does it (hits
//!   located in their chats, which are resident after their first).

use std::path::Path;
use std::time::Instant;

use arbor_actors::model::{BranchId, ChatId, MessageId, Role, UserId};
use arbor_actors::portable::{
    ChatExport, ExportedBranch, ExportedChat, ExportedMessage, ImportLimits, MessageStatus, FORMAT,
};
use arbor_actors::Chats;

use crate::inproc::{new_user, with_chats};
use crate::stats::Latencies;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Skewed towards small numbers (word frequencies, roughly Zipf-like).
    fn skewed(&mut self, n: usize) -> usize {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b)
    }
}

/// Words of the generated messages: `w0` ... `w{VOCABULARY - 1}`.
const VOCABULARY: usize = 5000;

fn text(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| format!("w{}", rng.skewed(VOCABULARY)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A chat document of `messages` messages: one long path with a fork every 50 messages (a
/// second answer to a question, on a branch of its own), every id new.
fn document(rng: &mut Rng, messages: usize) -> ChatExport {
    let now = chrono::Utc::now();
    let mut out: Vec<ExportedMessage> = Vec::with_capacity(messages);
    let mut branches = Vec::new();
    let mut parent: Option<MessageId> = None;
    for i in 0..messages {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        let id = MessageId::new();
        // Every 50th answer gets a sibling on its own branch.
        if i % 50 == 49 && role == Role::Assistant {
            let sibling = MessageId::new();
            out.push(message(sibling, parent, role, text(rng, 12), now));
            branches.push(branch(Some(sibling), format!("fork {i}"), now));
        }
        out.push(message(id, parent, role, text(rng, 12), now));
        parent = Some(id);
    }
    let main = branch(parent, "main".into(), now);
    let active = main.id;
    branches.push(main);
    out.sort_by_key(|m| m.id);
    branches.sort_by_key(|b| b.id);
    ChatExport {
        format: FORMAT.into(),
        chat: ExportedChat {
            id: ChatId::new(),
            title: Some("generated".into()),
            system_prompt: None,
            description: None,
            created_at: now,
            updated_at: now,
        },
        active_branch_id: active,
        branches,
        messages: out,
    }
}

fn message(
    id: MessageId,
    parent: Option<MessageId>,
    role: Role,
    content: String,
    at: chrono::DateTime<chrono::Utc>,
) -> ExportedMessage {
    ExportedMessage {
        id,
        parent_id: parent,
        role,
        content,
        model: None,
        metadata: None,
        status: MessageStatus::Complete,
        created_at: at,
        feedback: None,
    }
}

fn branch(
    head: Option<MessageId>,
    name: String,
    at: chrono::DateTime<chrono::Utc>,
) -> ExportedBranch {
    ExportedBranch {
        id: BranchId::new(),
        name,
        head_id: head,
        forked_from_id: None,
        created_at: at,
        updated_at: at,
    }
}

fn limits() -> ImportLimits {
    ImportLimits {
        max_messages: 1_000_000,
        max_branches: 100_000,
        max_message_chars: 1_000_000,
        max_title_chars: 1000,
        max_branch_name_chars: 1000,
        max_system_prompt_chars: 100_000,
        max_description_chars: 100_000,
    }
}

/// Imports `document` for `user`; answers the new chat's id.
async fn import(chats: &Chats, user: UserId, document: ChatExport) -> anyhow::Result<ChatId> {
    let (imported, _) = document
        .into_import(&limits(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(chats.import(user, imported).await?.id)
}

pub fn export_import(
    config: &Path,
    chats_n: usize,
    messages: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    with_chats(
        config,
        |_| {},
        |chats| async move {
            let user = new_user(&chats).await?;
            let mut rng = Rng(0x5eed_1234_abcd_ef01);
            let documents: Vec<ChatExport> =
                (0..chats_n).map(|_| document(&mut rng, messages)).collect();
            let total: usize = documents.iter().map(|d| d.messages.len()).sum();
            let started = Instant::now();
            let mut ids = Vec::with_capacity(chats_n);
            for d in documents {
                ids.push(import(&chats, user, d).await?);
            }
            let elapsed = started.elapsed();
            // The two stores alone, each given one more chat's rows: where an import's time goes.
            let (imported, _) = document(&mut rng, messages)
                .into_import(&limits(), false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rt = chats.runtime();
            let started = Instant::now();
            rt.messages.insert(&imported.messages).await?;
            let messages_s = started.elapsed().as_secs_f64();
            let meta = arbor_actors::ports::MetaBatch {
                indexed: imported
                    .messages
                    .iter()
                    .map(|m| arbor_actors::ports::SearchDoc {
                        message: m.id,
                        chat: m.chat_id,
                        owner: Some(user),
                        content: m.content.clone(),
                    })
                    .collect(),
                ..Default::default()
            };
            let started = Instant::now();
            rt.metadata.apply(&meta).await?;
            let index_s = started.elapsed().as_secs_f64();
            let rows = imported.messages.len() as f64;
            // Export: the actor's document, then its JSON, as the handler sends it.
            let mut latencies = Latencies::default();
            let mut bytes = 0;
            for _ in 0..rounds {
                for &id in &ids {
                    let started = Instant::now();
                    let document = chats.export(user, id).await?;
                    let json = serde_json::to_vec(&document)?;
                    latencies.push(started.elapsed());
                    bytes = json.len();
                }
            }
            println!(
            "BENCH portable chats={chats_n} imported={total} import_s={:.2} import_msgs_per_s={:.0} \
             export_messages={} export_bytes={bytes} export_samples={} export_p50_ms={:.2} \
             export_p99_ms={:.2} messages_store_per_s={:.0} index_per_s={:.0}",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            total / chats_n.max(1),
            latencies.len(),
            latencies.quantile_ms(0.5),
            latencies.quantile_ms(0.99),
            rows / messages_s,
            rows / index_s,
        );
            Ok(())
        },
    )
}

pub fn search(
    config: &Path,
    users: usize,
    chats_per_user: usize,
    messages: usize,
    queries: usize,
) -> anyhow::Result<()> {
    with_chats(
        config,
        |_| {},
        |chats| async move {
            let mut rng = Rng(0x0123_4567_89ab_cdef);
            let mut accounts = Vec::with_capacity(users);
            let started = Instant::now();
            let mut total = 0;
            for _ in 0..users {
                let user = new_user(&chats).await?;
                for _ in 0..chats_per_user {
                    let d = document(&mut rng, messages);
                    total += d.messages.len();
                    import(&chats, user, d).await?;
                }
                accounts.push(user);
            }
            chats.flushed().await;
            println!(
                "BENCH search_seed users={users} messages={total} seconds={:.1}",
                started.elapsed().as_secs_f64()
            );
            let store = chats.runtime().metadata.clone();
            // Words of middling frequency: each in a few hundred of a user's messages.
            let word = |rng: &mut Rng| format!("w{}", 200 + rng.below(800));
            let (mut index, mut whole) = (Latencies::default(), Latencies::default());
            let mut hits = 0;
            for _ in 0..queries {
                let user = accounts[rng.below(accounts.len())];
                let q = word(&mut rng);
                let started = Instant::now();
                let found = store.search(user, &q, None, 21, 0).await?;
                index.push(started.elapsed());
                hits += found.len();
                let started = Instant::now();
                let found = store.search(user, &q, None, 21, 0).await?;
                for hit in found.iter().take(20) {
                    chats.locate(user, hit.chat, hit.message, 2).await?;
                }
                whole.push(started.elapsed());
            }
            println!(
            "BENCH search queries={queries} mean_hits={:.1} index_p50_ms={:.2} index_p99_ms={:.2} \
             whole_p50_ms={:.2} whole_p99_ms={:.2}",
            hits as f64 / queries.max(1) as f64,
            index.quantile_ms(0.5),
            index.quantile_ms(0.99),
            whole.quantile_ms(0.5),
            whole.quantile_ms(0.99),
        );
            Ok(())
        },
    )
}
