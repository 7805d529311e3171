//! The operator's numbers: one Prometheus registry holding the HTTP instruments, every
//! component's own instruments (writer, registry, model providers) and gauges read from the
//! runtime at scrape time; plus a once-a-second sampler whose history feeds
//! `/api/v1/admin/stats` and the admin page's chart.

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::inspect::ActorTotals;
use arbor_actors::metrics::{Instruments, LATENCY_BUCKETS};
use arbor_actors::Chats;
use chrono::{DateTime, Utc};
use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;

use crate::lifecycle::Lifecycle;
use crate::membership::MemberStatus;

/// The Prometheus text exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registered instruments and the runtime they read. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    http: HttpInstruments,
    gauges: RuntimeGauges,
    process: ProcessInstruments,
    chats: Chats,
    lifecycle: Arc<Lifecycle>,
    membership: Arc<MemberStatus>,
    /// Every HTTP request so far (the rate the sampler reads; cheaper than summing the vec).
    requests: AtomicU64,
    history: Mutex<History>,
}

/// One resource's HTTP instruments, kept in its app data (so one per HTTP worker, and no
/// locks): its route label and, per method and status seen, the labelled counter and
/// histogram. Looking them up on every request hashed three label values twice and built the
/// route's pattern text by walking the resource map: 1.5k instructions of a 40k read.
#[derive(Default)]
pub struct RouteMetrics {
    pattern: OnceCell<Box<str>>,
    handles: RefCell<Vec<RouteHandles>>,
}

impl RouteMetrics {
    /// Instruments whose route label is known up front, for routes that actix-web's resource
    /// map does not know (`api::segments`).
    pub fn labelled(label: String) -> Self {
        Self {
            pattern: OnceCell::from(label.into_boxed_str()),
            handles: RefCell::default(),
        }
    }
}

struct RouteHandles {
    method: &'static str,
    status: u16,
    requests: IntCounter,
    duration: Histogram,
}

struct HttpInstruments {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

struct RuntimeGauges {
    resident: IntGauge,
    resident_messages: IntGauge,
    actor_memory: IntGauge,
    mailbox_depth: IntGauge,
    mailbox_depth_max: IntGauge,
    pending_writes: IntGauge,
    writer_queue_depth: IntGauge,
    writer_queue_capacity: IntGauge,
    writer_stalled: IntGauge,
    generations_running: IntGauge,
    llm_in_flight: IntGaugeVec,
    llm_queued: IntGaugeVec,
    llm_queue_capacity: IntGaugeVec,
    llm_circuit: IntGaugeVec,
    draining: IntGauge,
    /// Seconds since the membership table last took this server's heartbeat.
    heartbeat_age: Gauge,
}

struct ProcessInstruments {
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    cpu_seconds: Counter,
}

/// One second of the runtime, as the admin page charts it.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at: i64,
    pub requests_per_second: f64,
    /// Rows the write-behind writer committed per second.
    pub rows_per_second: f64,
    /// The largest acknowledgement-to-commit lag seen during the second.
    pub lag_max_ms: f64,
    /// The mean lag of the writes committed during the second.
    pub lag_mean_ms: f64,
    pub resident_actors: u64,
}

struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
    last: Totals,
}

/// Running totals the sampler differences.
#[derive(Clone, Copy, Default)]
struct Totals {
    requests: u64,
    rows: u64,
    lag_sum: f64,
    lag_count: u64,
}

// Names and help texts below are static and valid: construction cannot fail at runtime.
#[allow(clippy::expect_used)]
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid gauge")
}

#[allow(clippy::expect_used)]
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge vec")
}

impl Metrics {
    /// Registers every instrument of the runtime. Fails only on a duplicate metric name (a bug).
    pub fn new(
        chats: Chats,
        lifecycle: Arc<Lifecycle>,
        membership: Arc<MemberStatus>,
        history_secs: usize,
        extra: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> Result<Self, prometheus::Error> {
        let http = HttpInstruments {
            requests: IntCounterVec::new(
                Opts::new(
                    "arbor_http_requests_total",
                    "HTTP requests answered, by method, route pattern and status.",
                ),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "arbor_http_request_duration_seconds",
                    "Time to answer an HTTP request (to the response head; streams run on).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            )?,
            in_flight: gauge(
                "arbor_http_requests_in_flight",
                "HTTP requests being handled right now.",
            ),
        };
        let gauges = RuntimeGauges {
            resident: gauge(
                "arbor_chat_actors_resident",
                "Chat actors resident in memory.",
            ),
            resident_messages: gauge(
                "arbor_chat_resident_messages",
                "Messages held by resident chat actors.",
            ),
            actor_memory: gauge(
                "arbor_chat_actors_memory_bytes",
                "Approximate heap held by resident chat actors (trees, content, overhead).",
            ),
            mailbox_depth: gauge(
                "arbor_chat_mailbox_depth",
                "Requests queued in (or being handled from) chat actors' mailboxes, all actors.",
            ),
            mailbox_depth_max: gauge(
                "arbor_chat_mailbox_depth_max",
                "The deepest chat actor mailbox right now.",
            ),
            pending_writes: gauge(
                "arbor_chat_pending_writes",
                "Writes of resident chat actors queued and not yet committed.",
            ),
            writer_queue_depth: gauge(
                "arbor_writer_queue_depth",
                "Changes waiting in the write-behind queue.",
            ),
            writer_queue_capacity: gauge(
                "arbor_writer_queue_capacity",
                "The write-behind queue's bound (storage.queue_capacity).",
            ),
            writer_stalled: gauge(
                "arbor_writer_stalled",
                "1 while the writer retries a batch because a store is unavailable.",
            ),
            generations_running: gauge(
                "arbor_generations_running",
                "Replies being generated right now.",
            ),
            llm_in_flight: gauge_vec(
                "arbor_llm_requests_in_flight",
                "Upstream requests in flight, per provider.",
                &["provider"],
            ),
            llm_queued: gauge_vec(
                "arbor_llm_queue_depth",
                "Replies waiting for a provider worker.",
                &["provider"],
            ),
            llm_queue_capacity: gauge_vec(
                "arbor_llm_queue_capacity",
                "A provider queue's bound (queue_capacity).",
                &["provider"],
            ),
            llm_circuit: gauge_vec(
                "arbor_llm_circuit_state",
                "1 for a provider's current circuit breaker state (closed, open, half_open).",
                &["provider", "state"],
            ),
            draining: gauge(
                "arbor_draining",
                "1 once a shutdown has begun (readiness answers 503).",
            ),
            heartbeat_age: Gauge::new(
                "arbor_membership_heartbeat_age_seconds",
                "Seconds since the membership table last took this server's heartbeat.",
            )?,
        };
        let process = ProcessInstruments {
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: gauge("process_open_fds", "Open file descriptors."),
            threads: gauge("process_threads", "OS threads in the process."),
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
            )?,
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
        };
        process
            .start_time
            .set(lifecycle.started_at.timestamp_millis() as f64 / 1e3);

        let registry = Registry::new();
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(http.requests.clone()),
            Box::new(http.duration.clone()),
            Box::new(http.in_flight.clone()),
        ];
        let g = &gauges;
        for gauge in [
            &g.resident,
            &g.resident_messages,
            &g.actor_memory,
            &g.mailbox_depth,
            &g.mailbox_depth_max,
            &g.pending_writes,
            &g.writer_queue_depth,
            &g.writer_queue_capacity,
            &g.writer_stalled,
            &g.generations_running,
            &g.draining,
            &process.resident_memory,
            &process.virtual_memory,
            &process.open_fds,
            &process.threads,
        ] {
            collectors.push(Box::new(gauge.clone()));
        }
        for vec in [
            &g.llm_in_flight,
            &g.llm_queued,
            &g.llm_queue_capacity,
            &g.llm_circuit,
        ] {
            collectors.push(Box::new(vec.clone()));
        }
        collectors.push(Box::new(process.start_time.clone()));
        collectors.push(Box::new(process.cpu_seconds.clone()));
        collectors.extend(chats.stats().collectors());
        collectors.extend(chats.runtime().writer.stats.collectors());
        collectors.extend(membership.stats.collectors());
        collectors.push(Box::new(gauges.heartbeat_age.clone()));
        collectors.extend(extra);
        for provider in chats.llm().providers() {
            collectors.extend(provider.stats.collectors());
        }
        for collector in collectors {
            registry.register(collector)?;
        }
        let info = IntGaugeVec::new(
            Opts::new(
                "arbor_build_info",
                "Always 1; labelled with the running version.",
            ),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(info))?;

        Ok(Self {
            registry,
            http,
            gauges,
            process,
            chats,
            lifecycle,
            membership,
            requests: AtomicU64::new(0),
            history: Mutex::new(History {
                samples: VecDeque::with_capacity(history_secs.max(1)),
                capacity: history_secs.max(1),
                last: Totals::default(),
            }),
        })
    }

    /// Counts a request starting; the guard records it when dropped or finished.
    pub fn request_started(&self) -> InFlight<'_> {
        self.http.in_flight.inc();
        InFlight(&self.http.in_flight)
    }

    /// Records a request answered by a resource that keeps a [`RouteMetrics`]: the label text
    /// and the two labelled instruments are looked up on the first request with each method and
    /// status and kept there. `pattern` gives the route's label the first time.
    pub fn record_route(
        &self,
        route: &RouteMetrics,
        pattern: impl FnOnce() -> Option<String>,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let mut handles = route.handles.borrow_mut();
        let found = handles
            .iter()
            .position(|h| h.status == status && h.method == method);
        let index = found.unwrap_or_else(|| {
            let label = route
                .pattern
                .get_or_init(|| pattern().unwrap_or_else(|| "unmatched".into()).into());
            let digits = itoa_status(status);
            let code = std::str::from_utf8(&digits).unwrap_or("000");
            handles.push(RouteHandles {
                method,
                status,
                requests: self.http.requests.with_label_values(&[method, label, code]),
                duration: self.http.duration.with_label_values(&[method, label]),
            });
            handles.len() - 1
        });
        let h = &handles[index];
        h.requests.inc();
        h.duration.observe(elapsed.as_secs_f64());
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one answered request. `route` is the matched pattern (`unmatched` otherwise),
    /// so label values stay bounded whatever paths clients send.
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let digits = itoa_status(status);
        let status = std::str::from_utf8(&digits).unwrap_or("000");
        self.http
            .requests
            .with_label_values(&[method, route, status])
            .inc();
        self.http
            .duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, with every scrape-time gauge refreshed first.
    pub fn render(&self) -> String {
        self.refresh();
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    fn refresh(&self) {
        let g = &self.gauges;
        let totals = self.chats.actor_totals();
        g.resident.set(totals.resident as i64);
        g.resident_messages.set(totals.messages as i64);
        g.actor_memory.set(totals.approx_memory_bytes as i64);
        g.mailbox_depth.set(totals.mailbox_depth as i64);
        g.mailbox_depth_max.set(totals.mailbox_depth_max as i64);
        g.pending_writes.set(totals.pending_writes as i64);
        let writer = &self.chats.runtime().writer;
        g.writer_queue_depth.set(writer.queue_depth() as i64);
        g.writer_queue_capacity.set(writer.queue_capacity() as i64);
        g.writer_stalled.set(i64::from(writer.is_stalled()));
        g.generations_running
            .set(self.chats.runtime().generations.running().len() as i64);
        g.draining.set(i64::from(self.lifecycle.is_draining()));
        g.heartbeat_age
            .set(self.membership.since_last_beat().as_secs_f64());
        for provider in self.chats.llm().providers() {
            let name = provider.config.name.as_str();
            g.llm_in_flight
                .with_label_values(&[name])
                .set(provider.stats.in_flight.load(Ordering::Relaxed) as i64);
            g.llm_queued
                .with_label_values(&[name])
                .set(provider.queued() as i64);
            g.llm_queue_capacity
                .with_label_values(&[name])
                .set(provider.config.queue_capacity.max(1) as i64);
            let current = provider.circuit();
            for state in ["closed", "open", "half_open"] {
                g.llm_circuit
                    .with_label_values(&[name, state])
                    .set(i64::from(state == current));
            }
        }
        let p = ProcessStats::read();
        self.process.resident_memory.set(p.resident_bytes as i64);
        self.process.virtual_memory.set(p.virtual_bytes as i64);
        self.process.open_fds.set(p.open_fds as i64);
        self.process.threads.set(p.threads as i64);
        let seen = self.process.cpu_seconds.get();
        if p.cpu_seconds > seen {
            self.process.cpu_seconds.inc_by(p.cpu_seconds - seen);
        }
    }

    /// Takes one sample (the sampler calls this once a second).
    pub fn sample(&self) {
        let writer = &self.chats.runtime().writer.stats;
        let now = Totals {
            requests: self.requests.load(Ordering::Relaxed),
            rows: writer.rows.get(),
            lag_sum: writer.lag_seconds.get_sample_sum(),
            lag_count: writer.lag_seconds.get_sample_count(),
        };
        let lag_max = writer.take_lag_max();
        let resident = self.chats.resident();
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let at = chrono::Utc::now().timestamp_millis();
        let elapsed = history
            .samples
            .back()
            .map_or(1.0, |s| ((at - s.at) as f64 / 1e3).max(0.001));
        let last = history.last;
        let lag_n = now.lag_count.saturating_sub(last.lag_count);
        let sample = Sample {
            at,
            requests_per_second: now.requests.saturating_sub(last.requests) as f64 / elapsed,
            rows_per_second: now.rows.saturating_sub(last.rows) as f64 / elapsed,
            lag_max_ms: lag_max.as_secs_f64() * 1e3,
            lag_mean_ms: if lag_n == 0 {
                0.0
            } else {
                (now.lag_sum - last.lag_sum) / lag_n as f64 * 1e3
            },
            resident_actors: resident,
        };
        history.last = now;
        if history.samples.len() == history.capacity {
            history.samples.pop_front();
        }
        history.samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .map(|h| h.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn requests_in_flight(&self) -> i64 {
        self.http.in_flight.get()
    }

    /// Totals and rates for the whole runtime (what `/api/v1/admin/stats` answers).
    pub fn runtime_stats(&self) -> RuntimeStats {
        let history = self.history();
        let recent = &history[history.len().saturating_sub(10)..];
        let mean = |f: fn(&Sample) -> f64| {
            if recent.is_empty() {
                0.0
            } else {
                recent.iter().map(f).sum::<f64>() / recent.len() as f64
            }
        };
        let rt = self.chats.runtime();
        let writer = &rt.writer;
        let registry = self.chats.stats();
        let evictions: std::collections::BTreeMap<_, _> =
            registry.evictions_by_reason().into_iter().collect();
        RuntimeStats {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.lifecycle.started_at,
            uptime_seconds: self.lifecycle.started.elapsed().as_secs_f64(),
            draining: self.lifecycle.is_draining(),
            actors: ActorStats {
                totals: self.chats.actor_totals(),
                activations_total: registry.activations.get(),
                activation_failures_total: registry.activation_failures.get(),
                evictions_total: evictions.values().sum(),
                evictions_by_reason: evictions,
            },
            http: HttpStats {
                requests_total: self.requests_total(),
                in_flight: self.requests_in_flight(),
                requests_per_second: mean(|s| s.requests_per_second),
            },
            writer: WriterStatsView {
                ack_mode: match writer.ack_mode {
                    arbor_actors::writer::AckMode::Durable => "durable",
                    arbor_actors::writer::AckMode::Buffered => "buffered",
                },
                queue_depth: writer.queue_depth(),
                queue_capacity: writer.queue_capacity(),
                stalled: writer.is_stalled(),
                batches_total: writer.stats.batches.get(),
                rows_total: writer.stats.rows.get(),
                failed_batches_total: writer.stats.failed_batches.get(),
                retries_total: writer.stats.retries.get(),
                rows_per_second: mean(|s| s.rows_per_second),
                lag_max_ms: recent.iter().map(|s| s.lag_max_ms).fold(0.0, f64::max),
            },
            llm: self
                .chats
                .llm()
                .providers()
                .map(|p| ProviderStatsView {
                    provider: p.config.name.clone(),
                    in_flight: p.stats.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    queued: p.queued(),
                    circuit: p.circuit(),
                    requests_total: p.stats.requests.get(),
                    retries_total: p.stats.retries.get(),
                })
                .collect(),
            generations_running: rt.generations.running().len(),
            process: ProcessStats::read(),
            history,
            feedback: Vec::new(),
        }
    }

    /// Starts the once-a-second sampler on the current actix system; it ends with the last
    /// reference to `self`.
    pub fn start_sampler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(metrics) = weak.upgrade() else { break };
                metrics.sample();
            }
        });
    }
}

/// The whole runtime at a glance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuntimeStats {
    pub version: &'static str,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    pub draining: bool,
    pub actors: ActorStats,
    pub http: HttpStats,
    pub writer: WriterStatsView,
    pub llm: Vec<ProviderStatsView>,
    pub generations_running: usize,
    pub process: ProcessStats,
    /// Once-a-second samples, oldest first (`admin.history_secs` of them at most).
    pub history: Vec<Sample>,
    /// Feedback on assistant messages, per model, from the metadata store (every node's).
    pub feedback: Vec<FeedbackView>,
}

/// One model's feedback.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedbackView {
    /// The rated messages' model; `null` for messages without one.
    pub model: Option<String>,
    pub up: u64,
    pub down: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActorStats {
    #[serde(flatten)]
    pub totals: ActorTotals,
    pub activations_total: u64,
    pub activation_failures_total: u64,
    pub evictions_total: u64,
    /// Evictions by reason: idle, capacity, admin, deleted, shutdown, stopped.
    pub evictions_by_reason: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HttpStats {
    pub requests_total: u64,
    pub in_flight: i64,
    /// Mean over the last 10 samples.
    pub requests_per_second: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriterStatsView {
    pub ack_mode: &'static str,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub stalled: bool,
    pub batches_total: u64,
    pub rows_total: u64,
    pub failed_batches_total: u64,
    pub retries_total: u64,
    /// Mean over the last 10 samples.
    pub rows_per_second: f64,
    /// The largest lag over the last 10 samples.
    pub lag_max_ms: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderStatsView {
    pub provider: String,
    pub in_flight: usize,
    pub queued: usize,
    pub circuit: &'static str,
    pub requests_total: u64,
    pub retries_total: u64,
}

/// Decrements the in-flight gauge when the request is done.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A status code as three ASCII digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// The process's own numbers, from `/proc/self` (zeros where unavailable).
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub threads: u64,
    pub cpu_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> Self {
        let mut stats = Self::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let kb = |rest: &str| {
                    rest.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(0, |v| v * 1024)
                };
                if let Some(rest) = line.strip_prefix("VmRSS:") {
                    stats.resident_bytes = kb(rest);
                } else if let Some(rest) = line.strip_prefix("VmSize:") {
                    stats.virtual_bytes = kb(rest);
                } else if let Some(rest) = line.strip_prefix("Threads:") {
                    stats.threads = rest.trim().parse().unwrap_or(0);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            stats.open_fds = dir.count() as u64;
        }
        // Fields 14 and 15 of /proc/self/stat (after the parenthesised command name) are user
        // and system time in clock ticks, 100 per second on Linux.
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            if let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) {
                let fields: Vec<&str> = after.split_whitespace().collect();
                let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
                if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                    stats.cpu_seconds = (user + system) as f64 / 100.0;
                }
            }
        }
        stats
    }
}
