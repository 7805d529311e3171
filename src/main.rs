use std::path::PathBuf;

use anyhow::Context;
use arbor::config::Settings;
use arbor::{telemetry, Application};
use clap::{Parser, Subcommand};

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
        Command::Migrate => {
            let (_, connections) = arbor::storage::open(&settings).await?;
            connections.close().await;
            tracing::info!(stores = %arbor::storage::describe(&settings), "schemas are up to date");
            Ok(())
        }
    }
}
