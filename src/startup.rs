//! Builds the application: stores, writer, chat registry, accounts and the HTTP server.
//! `build()` binds the listener so tests can start the real app on port 0 and ask `port()`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use arbor_actors::chat::ChatRuntime;
use arbor_actors::generation::Generations;
use arbor_actors::llm::LlmPool;
use arbor_actors::writer::{AckMode, WriterConfig, WriterHandle};
use arbor_actors::{Chats, RegistryConfig};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{self, docs::ApiDoc, error::extractors};
use crate::auth::{load_or_create_secret, Accounts, Tokens};
use crate::config::{self, Settings};
use crate::storage::{self, Connections, Stores};
use crate::telemetry;

pub struct Application {
    port: u16,
    server: Server,
    chats: Chats,
    connections: Connections,
}

impl Application {
    /// Opens the stores, starts the actors and binds `server.host:server.port`. Must run inside
    /// an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (stores, connections) = storage::open(&settings).await?;
        let secret = load_or_create_secret(&settings.auth, &settings.storage.data_dir)?;
        let tokens = Tokens::new(&secret, settings.auth.token_ttl_minutes);
        let accounts = Accounts::new(stores.metadata.clone(), tokens, settings.auth.bcrypt_cost)?;
        let llm = Arc::new(crate::llm::start_pool(&settings.llm)?);
        let chats = start_chats(&settings, &stores, llm);

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let port = listener.local_addr()?.port();
        let server = serve(listener, &settings, stores, accounts, chats.clone())?;
        tracing::info!(
            address = %format!("http://{}:{port}", settings.server.host),
            ack_mode = ?settings.storage.ack_mode,
            stores = %storage::describe(&settings),
            "arbor is listening"
        );
        Ok(Self {
            port,
            server,
            chats,
            connections,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The chat registry (for tests and operator tooling in-process).
    pub fn chats(&self) -> &Chats {
        &self.chats
    }

    /// Stops the server (gracefully with `stop(true)`), from tests or a signal.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop()`), lets in-flight requests finish within
    /// the grace period, then flushes every chat and every queued write before returning.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let chats = self.chats.clone();
        let signals = actix_web::rt::spawn(async move {
            shutdown_signal().await;
            // Replies end first (their partial content is stored), so open event streams close
            // promptly instead of holding the HTTP drain for the whole grace period.
            tracing::info!("shutdown signal: cancelling replies, draining HTTP");
            chats.cancel_generations();
            handle.stop(true).await;
        });
        let served = self.server.await;
        signals.abort();
        served.context("HTTP server failed")?;
        tracing::info!("HTTP stopped; flushing chats");
        self.chats.shutdown().await;
        self.connections.close().await;
        tracing::info!("all writes flushed; bye");
        Ok(())
    }
}

fn start_chats(settings: &Settings, stores: &Stores, llm: Arc<LlmPool>) -> Chats {
    let storage = &settings.storage;
    let writer = WriterHandle::spawn(
        stores.metadata.clone(),
        stores.messages.clone(),
        WriterConfig {
            ack_mode: match storage.ack_mode {
                config::AckMode::Durable => AckMode::Durable,
                config::AckMode::Buffered => AckMode::Buffered,
            },
            max_batch_ops: storage.flush_max_rows.max(1),
            linger: storage.flush_interval(),
            queue_capacity: storage.queue_capacity.max(1),
            durable_retry_window: Duration::from_millis(storage.durable_retry_ms),
        },
    );
    let actors = &settings.actors;
    Chats::start(
        ChatRuntime {
            writer,
            metadata: stores.metadata.clone(),
            messages: stores.messages.clone(),
            generations: Arc::new(Generations::new(
                Duration::from_secs(settings.llm.event_retention_secs),
                settings.llm.max_retained_generations.max(1),
            )),
        },
        RegistryConfig {
            max_resident: actors.max_resident.max(1),
            idle_timeout: Duration::from_secs(actors.idle_timeout_secs.max(1)),
            sweep_interval: Duration::from_secs(1),
            mailbox_capacity: actors.mailbox_capacity.max(1),
            arbiters: if actors.arbiters == 0 {
                Settings::cores()
            } else {
                actors.arbiters
            },
        },
        llm,
    )
}

fn serve(
    listener: TcpListener,
    settings: &Settings,
    stores: Stores,
    accounts: Accounts,
    chats: Chats,
) -> anyhow::Result<Server> {
    let limits = web::Data::new(settings.limits.clone());
    let streams = web::Data::new(api::sse::StreamSettings {
        keepalive: Duration::from_secs(settings.llm.keepalive_secs.max(1)),
    });
    let stores = web::Data::new(stores);
    let accounts = web::Data::new(accounts);
    let chats = web::Data::new(chats);
    let origins = settings.server.cors_origins.clone();
    let body_limit = settings.limits.max_body_bytes;
    let openapi = ApiDoc::openapi();
    let workers = match settings.server.workers {
        0 => Settings::cores(),
        n => n,
    };
    let server = HttpServer::new(move || {
        App::new()
            .wrap(cors(&origins))
            .wrap(from_fn(telemetry::request_span))
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .error_handler(extractors::json),
            )
            .app_data(
                web::FormConfig::default()
                    .limit(body_limit)
                    .error_handler(extractors::form),
            )
            .app_data(web::PathConfig::default().error_handler(extractors::path))
            .app_data(web::QueryConfig::default().error_handler(extractors::query))
            .app_data(web::PayloadConfig::default().limit(body_limit))
            .app_data(limits.clone())
            .app_data(streams.clone())
            .app_data(stores.clone())
            .app_data(accounts.clone())
            .app_data(chats.clone())
            .configure(api::routes)
            .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi.clone()))
            .default_service(web::to(api::not_found))
    })
    .workers(workers)
    // Event streams write many small frames; Nagle's algorithm would hold each one back until
    // the client's delayed ACK (~40 ms) on a kept-alive connection.
    .tcp_nodelay(true)
    .shutdown_timeout(settings.server.shutdown_grace_secs)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn cors(origins: &[String]) -> Cors {
    if origins.iter().any(|o| o == "*") {
        return Cors::default()
            .allow_any_origin()
            .allow_any_method()
            .allow_any_header()
            .max_age(3600);
    }
    origins.iter().fold(
        Cors::default()
            .allow_any_method()
            .allow_any_header()
            .max_age(3600),
        |cors, origin| cors.allowed_origin(origin),
    )
}
