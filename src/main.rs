use std::path::PathBuf;

use anyhow::Context;
use arbor::config::Settings;
use arbor::{telemetry, Application};
use clap::{Parser, Subcommand};

/// mimalloc: less fragmentation and faster small allocations than glibc malloc (BENCHMARKS.md, "Memory per idle chat").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Arbor: a runtime for branching AI conversations.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (default: ./config.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Bring the configured stores' schemas up to date (SQLite and PostgreSQL migrations,
    /// MongoDB indexes) and exit. The server also does this at start.
    Migrate,
    /// Manage admins (who may use /api/v1/admin/* and /admin).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Index every stored message for search (PostgreSQL + MongoDB: the messages stored before
    /// search existed). Safe to run again, and while the server runs.
    Reindex,
    /// Manage users' token quotas (`[quotas]` is the default).
    Quota {
        #[command(subcommand)]
        action: QuotaAction,
    },
}

#[derive(Subcommand)]
enum QuotaAction {
    /// Show the account's quota and its usage this period.
    Show { user: String },
    /// Give the account its own quota: a number of tokens a period, or `unlimited`.
    Set { user: String, tokens: String },
    /// Put the account back on the configured default.
    Reset { user: String },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Make the account with this email (or username) an admin.
    Grant { email: String },
    /// Take the admin role away from the account with this email (or username).
    Revoke { email: String },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Admin { action } => {
            let (grant, email) = match action {
                AdminAction::Grant { email } => (true, email),
                AdminAction::Revoke { email } => (false, email),
            };
            let (stores, connections) = arbor::storage::open(&settings).await?;
            let updated = stores.metadata.set_admin(&email, grant).await;
            connections.close().await;
            match updated.context("updating the account")? {
                Some(user) => {
                    let verb = if grant { "is now" } else { "is no longer" };
                    let name = user.email.as_deref().or(user.username.as_deref());
                    let name = name.unwrap_or_default();
                    println!("{name} ({}) {verb} an admin", user.id);
                    let listed = user.email.as_deref().is_some_and(|m| {
                        let listed = settings.admin.emails.iter();
                        listed.clone().any(|e| e.trim().eq_ignore_ascii_case(m))
                    });
                    if !grant && listed {
                        println!(
                            "note: {name} is still listed in admin.emails, which keeps it an admin"
                        );
                    }
                    Ok(())
                }
                None if email.contains('@') => anyhow::bail!("no account has the email {email}"),
                None => anyhow::bail!("no account has the username {email}"),
            }
        }
        Command::Quota { action } => {
            let (stores, connections) = arbor::storage::open(&settings).await?;
            let result = quota(&settings, &stores, action).await;
            connections.close().await;
            result
        }
        Command::Reindex => {
            let (stores, connections) = arbor::storage::open(&settings).await?;
            let result = reindex(&stores).await;
            connections.close().await;
            let (chats, messages) = result?;
            println!("indexed {messages} messages of {chats} chats");
            Ok(())
        }
        Command::Migrate => {
            let (_, connections) = arbor::storage::open(&settings).await?;
            connections.close().await;
            tracing::info!(stores = %arbor::storage::describe(&settings), "schemas are up to date");
            Ok(())
        }
    }
}

/// `arbor quota ...`: changes the account's quota (unless shown) and prints it.
async fn quota(
    settings: &Settings,
    stores: &arbor_actors::ports::Stores,
    action: QuotaAction,
) -> anyhow::Result<()> {
    use arbor_actors::ports::QuotaSetting;
    let (login, setting) = match action {
        QuotaAction::Show { user } => (user, None),
        QuotaAction::Reset { user } => (user, Some(QuotaSetting::Default)),
        QuotaAction::Set { user, tokens } => {
            let setting = match tokens.trim() {
                "unlimited" => QuotaSetting::Unlimited,
                n => QuotaSetting::Tokens(n.parse().with_context(|| {
                    format!("tokens must be a number or `unlimited`, not {n:?}")
                })?),
            };
            (user, Some(setting))
        }
    };
    let account = match login.parse() {
        Ok(id) => stores.metadata.user_by_id(id).await?,
        Err(_) => stores.metadata.user_by_login(&login).await?,
    }
    .with_context(|| format!("no account has the id, email or username {login}"))?;
    if let Some(setting) = setting {
        stores.metadata.set_quota(account.id, setting).await?;
    }
    let quotas = arbor::quota::Quotas::new(
        stores.metadata.clone(),
        settings.quotas.default_tokens(),
        settings.quotas.period,
    );
    let status = quotas.status(account.id).await?;
    let limit = status
        .limit
        .map_or_else(|| "no quota".to_owned(), |n| format!("{n} tokens"));
    let source = match status.source {
        arbor::quota::QuotaSource::Default => "the default",
        arbor::quota::QuotaSource::User => "its own",
    };
    println!(
        "{login} ({}): {limit} a {} ({source}); {} used since {}, resets at {}",
        account.id,
        format!("{:?}", status.period).to_lowercase(),
        status.used,
        status.period_start,
        status.resets_at.to_rfc3339(),
    );
    Ok(())
}

/// `arbor reindex`: every chat's messages into the search index (rows already there are kept).
async fn reindex(stores: &arbor_actors::ports::Stores) -> anyhow::Result<(usize, usize)> {
    use arbor_actors::ports::{MetaBatch, SearchDoc};
    let (mut chats, mut messages) = (0, 0);
    let mut after = None;
    loop {
        let page = stores.metadata.all_chats(after, 200).await?;
        let Some(last) = page.last() else {
            return Ok((chats, messages));
        };
        after = Some(last.id);
        for chat in &page {
            let stored = stores.messages.load_chat(chat.id).await?;
            for chunk in stored.chunks(1000) {
                let batch = MetaBatch {
                    indexed: chunk
                        .iter()
                        .map(|m| SearchDoc {
                            message: m.id,
                            chat: chat.id,
                            owner: Some(chat.owner),
                            content: m.content.clone(),
                        })
                        .collect(),
                    ..MetaBatch::default()
                };
                stores.metadata.apply(&batch).await?;
            }
            chats += 1;
            messages += stored.len();
        }
    }
}
