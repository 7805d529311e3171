//! Builds the application: stores, writer, chat registry, accounts and the HTTP server.
//! `build()` binds the listener so tests can start the real app on port 0 and ask `port()`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use arbor_actors::chat::ChatRuntime;
use arbor_actors::generation::Generations;
use arbor_actors::llm::LlmPool;
use arbor_actors::metrics::Instruments;
use arbor_actors::writer::{AckMode, WriterConfig, WriterHandle};
use arbor_actors::{Chats, Placement, RegistryConfig};

use crate::api;
use crate::auth::{load_or_create_secret, Accounts, PasswordHasher, Tokens};
use crate::cluster::Cluster;
use crate::config::{self, ActorPlacement, MetadataBackend, Settings};
use crate::error::extractors;
use crate::lifecycle::{self, Lifecycle};
use crate::membership::{Member, MemberStatus};
use crate::metrics::Metrics;
use crate::quota::Quotas;
use crate::rate_limit::RateLimits;
use crate::storage::{self, Connections, Stores};
use crate::telemetry;

/// What `Application::start` builds.
struct Started {
    server: Server,
    metrics_server: Option<(u16, Server)>,
    chats: Chats,
    lifecycle: Arc<Lifecycle>,
    drain_delay: Duration,
    /// Cluster mode: the lease loop.
    leases: Option<tokio::task::JoinHandle<()>>,
}

pub struct Application {
    port: u16,
    server: Server,
    /// The separate `/metrics` listener, when `metrics.listen` is set.
    metrics_server: Option<(u16, Server)>,
    chats: Chats,
    connections: Connections,
    /// This server's row in the membership table, left after the last flush.
    member: Member,
    /// Cluster mode: this node's leases, and the loop renewing them.
    cluster: Option<(Arc<Cluster>, tokio::task::JoinHandle<()>)>,
    lifecycle: Arc<Lifecycle>,
    drain_delay: Duration,
}

impl Application {
    /// Opens the stores, starts the actors and binds `server.host:server.port`. Must run inside
    /// an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        check_cluster(&settings)?;
        let (stores, connections) = storage::open(&settings).await?;
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let port = listener.local_addr()?.port();
        // Before anything is written or served: another live server on these stores keeps this
        // one out.
        let advertise = match settings.cluster.advertise.trim() {
            "" => format!("{}:{port}", settings.server.host),
            address => address.to_owned(),
        };
        let member = Member::join(
            connections.membership()?,
            advertise,
            settings.membership.ttl(),
            settings.cluster.enabled,
        )
        .await?;
        let cluster = match settings.cluster.enabled {
            true => Some(Cluster::new(
                member.status().clone(),
                connections.leases()?,
                settings.cluster.clone(),
            )?),
            false => None,
        };
        let started = Self::start(
            settings,
            stores,
            listener,
            port,
            member.status().clone(),
            cluster.clone(),
        )
        .await;
        match started {
            Ok(parts) => Ok(Self {
                port,
                server: parts.server,
                metrics_server: parts.metrics_server,
                chats: parts.chats,
                connections,
                member,
                cluster: cluster.zip(parts.leases),
                lifecycle: parts.lifecycle,
                drain_delay: parts.drain_delay,
            }),
            Err(e) => {
                member.leave().await;
                Err(e)
            }
        }
    }

    /// Everything after the membership check: accounts, model pool, chats, metrics, HTTP.
    async fn start(
        settings: Settings,
        stores: Stores,
        listener: TcpListener,
        port: u16,
        membership: Arc<MemberStatus>,
        cluster: Option<Arc<Cluster>>,
    ) -> anyhow::Result<Started> {
        let secret = load_or_create_secret(&settings.auth, &settings.storage.data_dir)?;
        let tokens = Tokens::new(&secret, settings.auth.token_ttl_minutes);
        let limits = RateLimits::new(&settings.rate_limits).context("rate_limits")?;
        limits.start_sweeper(Duration::from_secs(30));
        let hasher = Arc::new(
            PasswordHasher::start(settings.auth.hash_threads, settings.auth.hash_queue)
                .context("starting the password-hashing threads")?,
        );
        let accounts = Accounts::new(stores.metadata.clone(), tokens, settings.auth.bcrypt_cost)?
            .with_hasher(hasher.clone())
            .with_limits(limits.clone())
            .with_api_tokens(&settings.auth.api_tokens)
            .await
            .context("auth.api_tokens")?;
        let llm = Arc::new(crate::llm::start_pool(&settings.llm)?);
        let quotas = Arc::new(Quotas::with_settings_ttl(
            stores.metadata.clone(),
            settings.quotas.default_tokens(),
            settings.quotas.period,
            Duration::from_millis(settings.quotas.settings_ttl_ms),
        ));
        let chats = start_chats(
            &settings,
            &stores,
            llm,
            cluster.clone(),
            limits.clone(),
            quotas.clone(),
        );
        // Cluster mode: the first renewal (and the claims it makes) before anything is served.
        let leases = match &cluster {
            Some(cluster) => Some(cluster.start(chats.clone()).await),
            None => None,
        };
        let lifecycle = Arc::new(Lifecycle::default());
        let metrics = Arc::new(
            Metrics::new(
                chats.clone(),
                lifecycle.clone(),
                membership.clone(),
                settings.admin.history_secs,
                {
                    let mut extra = cluster
                        .as_ref()
                        .map(|c| c.stats.collectors())
                        .unwrap_or_default();
                    extra.push(Box::new(limits.refused.clone()));
                    extra.push(Box::new(hasher.rejected.clone()));
                    extra.push(Box::new(quotas.refused.clone()));
                    extra
                },
            )
            .context("registering metrics")?,
        );
        metrics.start_sampler();

        let metrics_server = match settings.metrics.listen.trim() {
            "" => None,
            _ if !settings.metrics.enabled => None,
            address => Some(serve_metrics(address, &settings, metrics.clone())?),
        };
        let shared = Shared {
            stores,
            accounts,
            chats: chats.clone(),
            metrics,
            lifecycle: lifecycle.clone(),
            membership,
            cluster,
            limits,
            quotas,
        };
        let server = serve(listener, &settings, shared)?;
        tracing::info!(
            address = %format!("http://{}:{port}", settings.server.host),
            ack_mode = ?settings.storage.ack_mode,
            stores = %storage::describe(&settings),
            "arbor is listening"
        );
        Ok(Started {
            server,
            metrics_server,
            chats,
            lifecycle,
            drain_delay: Duration::from_secs(settings.server.drain_delay_secs),
            leases,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the separate `/metrics` listener, if `metrics.listen` configured one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _)| *port)
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The chat registry (for tests and operator tooling in-process).
    pub fn chats(&self) -> &Chats {
        &self.chats
    }

    /// Stops the server (gracefully with `stop(true)`), from tests or a signal.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop()`). On a signal: `/ready` turns 503
    /// and serving goes on for `server.drain_delay_secs`; then running replies are cancelled
    /// (their partial content is stored), new connections are refused and in-flight requests
    /// get up to `server.shutdown_grace_secs` to finish; then every chat and every queued write
    /// is flushed before this returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let metrics_server = self.metrics_server.map(|(_, server)| {
            let handle = server.handle();
            (handle, actix_web::rt::spawn(server))
        });
        let chats = self.chats.clone();
        let lifecycle = self.lifecycle.clone();
        let delay = self.drain_delay;
        let cluster = self.cluster.as_ref().map(|(cluster, _)| cluster.clone());
        let signals = actix_web::rt::spawn(async move {
            lifecycle::shutdown_signal().await;
            lifecycle.begin_draining();
            if !delay.is_zero() {
                tracing::info!(?delay, "shutdown signal: draining (readiness is 503)");
                tokio::time::sleep(delay).await;
            }
            // Replies end first, so open event streams close promptly instead of holding the
            // HTTP drain for the whole grace period.
            tracing::info!("shutting down: cancelling replies, finishing in-flight requests");
            match &cluster {
                // Cluster mode: the replies store what they have, then the leases go to the
                // nodes that take over while this one still forwards their requests there.
                Some(cluster) => {
                    chats.end_generations().await;
                    cluster.hand_over_all(&chats).await;
                }
                None => chats.cancel_generations(),
            }
            handle.stop(true).await;
        });
        let served = self.server.await;
        signals.abort();
        self.lifecycle.begin_draining();
        if let Some((handle, task)) = metrics_server {
            handle.stop(true).await;
            let _ = task.await;
        }
        served.context("HTTP server failed")?;
        tracing::info!("HTTP stopped; flushing chats");
        self.chats.shutdown().await;
        leave(self.cluster, &self.chats).await;
        self.member.leave().await;
        self.connections.close().await;
        tracing::info!("all writes flushed; bye");
        Ok(())
    }

    /// For tools that build the application in-process without serving it (the benchmarks):
    /// flushes every chat, leaves the membership table and closes the stores.
    pub async fn close(self) {
        self.chats.shutdown().await;
        leave(self.cluster, &self.chats).await;
        self.member.leave().await;
        self.connections.close().await;
    }
}

/// Cluster mode, after the last flush: stops renewing and hands every lease over.
async fn leave(cluster: Option<(Arc<Cluster>, tokio::task::JoinHandle<()>)>, chats: &Chats) {
    if let Some((cluster, renewing)) = cluster {
        renewing.abort();
        cluster.leave(chats).await;
    }
}

/// Cluster mode's requirements, checked before anything starts.
fn check_cluster(settings: &Settings) -> anyhow::Result<()> {
    let cluster = &settings.cluster;
    if !cluster.enabled {
        return Ok(());
    }
    anyhow::ensure!(
        settings.storage.metadata == MetadataBackend::Postgres,
        "cluster mode needs storage.metadata = \"postgres\": the nodes share the membership and \
         shard lease tables there (SQLite is one machine's file)"
    );
    anyhow::ensure!(
        cluster.secret.expose().len() >= 16,
        "cluster mode needs cluster.secret, at least 16 characters, the same on every node"
    );
    anyhow::ensure!(
        !settings.auth.jwt_secret.expose().is_empty(),
        "cluster mode needs auth.jwt_secret, the same on every node (a token one node signs \
         must be valid on all)"
    );
    Ok(())
}

fn start_chats(
    settings: &Settings,
    stores: &Stores,
    llm: Arc<LlmPool>,
    cluster: Option<Arc<Cluster>>,
    limits: Arc<RateLimits>,
    quotas: Arc<Quotas>,
) -> Chats {
    let storage = &settings.storage;
    let writer = WriterHandle::spawn(
        stores.clone(),
        WriterConfig {
            ack_mode: match storage.ack_mode {
                config::AckMode::Durable => AckMode::Durable,
                config::AckMode::Buffered => AckMode::Buffered,
            },
            max_batch_ops: storage.flush_max_rows.max(1),
            linger: storage.flush_interval(),
            batches_in_flight: storage.batches_in_flight.max(1),
            overlap_after: Duration::from_millis(storage.batch_overlap_ms),
            queue_capacity: storage.queue_capacity.max(1),
            queue_wait: Duration::from_millis(storage.queue_wait_ms),
            durable_retry_window: Duration::from_millis(storage.durable_retry_ms),
        },
    );
    let actors = &settings.actors;
    let mut runtime = ChatRuntime::new(
        writer,
        stores.metadata.clone(),
        stores.messages.clone(),
        Arc::new(Generations::new(
            Duration::from_secs(settings.llm.event_retention_secs),
            settings.llm.max_retained_generations.max(1),
        )),
    );
    runtime = runtime.with_idempotency_keys(actors.idempotency_keys_per_chat);
    if let Some(cluster) = cluster {
        runtime = runtime.with_ownership(cluster);
    }
    let replies = &settings.rate_limits;
    if replies.replies_per_minute > 0 || replies.concurrent_replies > 0 {
        runtime = runtime.with_reply_gate(limits);
    }
    // Users without a default quota may still have their own: the gate always asks.
    runtime = runtime.with_quotas(quotas);
    Chats::start(
        runtime,
        RegistryConfig {
            max_resident: actors.max_resident.max(1),
            idle_timeout: Duration::from_secs(actors.idle_timeout_secs.max(1)),
            sweep_interval: Duration::from_secs(1),
            mailbox_capacity: actors.mailbox_capacity.max(1),
            placement: match actors.placement {
                ActorPlacement::Local => Placement::Local,
                ActorPlacement::Spread => Placement::Spread,
            },
            arbiters: if actors.arbiters == 0 {
                Settings::cores()
            } else {
                actors.arbiters
            },
            page_cache_bytes: actors.page_cache_kib.saturating_mul(1024),
        },
        llm,
    )
}

/// What every HTTP worker shares.
struct Shared {
    stores: Stores,
    accounts: Accounts,
    chats: Chats,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    membership: Arc<MemberStatus>,
    cluster: Option<Arc<Cluster>>,
    limits: Arc<RateLimits>,
    quotas: Arc<Quotas>,
}

fn serve(listener: TcpListener, settings: &Settings, shared: Shared) -> anyhow::Result<Server> {
    let Shared {
        stores,
        accounts,
        chats,
        metrics,
        lifecycle,
        membership,
        cluster,
        limits: rate_limits,
        quotas,
    } = shared;
    let rate_limits = web::Data::from(rate_limits);
    let quotas = web::Data::from(quotas);
    let clustered = cluster.is_some();
    let cluster = cluster.map(web::Data::from);
    let metrics = web::Data::from(metrics);
    let lifecycle = web::Data::from(lifecycle);
    let membership = web::Data::from(membership);
    let admin = web::Data::new(settings.admin.clone());
    let metrics_settings = web::Data::new(settings.metrics.clone());
    let metrics_here = settings.metrics.enabled && settings.metrics.listen.trim().is_empty();
    let limits = web::Data::new(settings.limits.clone());
    let streams = web::Data::new(api::sse::StreamSettings {
        keepalive: Duration::from_secs(settings.llm.keepalive_secs.max(1)),
        retention: Duration::from_secs(settings.llm.event_retention_secs),
    });
    let stores = web::Data::new(stores);
    let accounts = web::Data::new(accounts);
    let chats = web::Data::new(chats);
    let origins = settings.server.cors_origins.clone();
    let body_limit = settings.limits.max_body_bytes;
    let doc_pages = web::Data::new(api::doc_pages::DocPages::new(&api::docs::document(
        &settings.limits,
    )));
    let workers = match settings.server.workers {
        0 => Settings::cores(),
        n => n,
    };
    let server = HttpServer::new(move || {
        let app = App::new();
        let app = match &cluster {
            Some(cluster) => app.app_data(cluster.clone()),
            None => app,
        };
        app
            // Innermost: the request reaches the router after CORS and the request span.
            .wrap(Condition::new(
                clustered,
                from_fn(crate::cluster::route::route),
            ))
            // No origins is CORS off: no middleware, rather than one that checks every request
            // and adds `Vary` headers to answer no origin.
            .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
            .wrap(from_fn(telemetry::request_span))
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
            .app_data(metrics.clone())
            .app_data(lifecycle.clone())
            .app_data(membership.clone())
            .app_data(rate_limits.clone())
            .app_data(quotas.clone())
            .app_data(admin.clone())
            .app_data(metrics_settings.clone())
            .configure(|cfg| api::routes(cfg, metrics_here))
            .configure(|cfg| api::doc_pages::routes(cfg, doc_pages.clone()))
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

/// `/metrics` alone on its own address (`metrics.listen`), one worker.
fn serve_metrics(
    address: &str,
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(u16, Server)> {
    let listener =
        TcpListener::bind(address).with_context(|| format!("binding metrics.listen {address}"))?;
    let port = listener.local_addr()?.port();
    let metrics = web::Data::from(metrics);
    let access = web::Data::new(settings.metrics.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(access.clone())
            .route("/metrics", web::get().to(api::admin::metrics))
            .default_service(web::to(api::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    tracing::info!(%address, "metrics listening");
    Ok((port, server))
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
