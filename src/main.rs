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
        Command::Migrate => {
            let (_, connections) = arbor::storage::open(&settings).await?;
            connections.close().await;
            tracing::info!(stores = %arbor::storage::describe(&settings), "schemas are up to date");
            Ok(())
        }
    }
}
