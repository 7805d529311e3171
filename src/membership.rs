//! The membership table: every server enters a row in the metadata store's `nodes` table when it
//! starts, refreshes its heartbeat while it runs and leaves when it stops (after its last
//! flush). A node whose heartbeat is older than `membership.node_ttl_secs` is dead.
//!
//! Without cluster mode, two processes must never share stores: each keeps its chats' trees in
//! memory and would overwrite the other's writes. So a server refuses to start while another
//! live node is in the table, and says which. The check and the entry are one transaction, so
//! two servers starting at once cannot both get in.
//!
//! A node that died without leaving (kill -9, a crash) stays in the table until its heartbeat
//! expires; on the same host it is known dead at once when its process is gone (or, in this
//! process, when it is no longer running here), so a restart after a crash need not wait.
//! This is Orleans' SQL membership table, the first piece of cluster mode.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_actors::metrics::Instruments;
use arbor_actors::ports::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One server as the table keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// New for every start (UUIDv7).
    pub id: Uuid,
    /// Where its HTTP server listens (`host:port`).
    pub address: String,
    /// The machine it runs on, and its process there.
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// A cluster-mode node: cluster nodes share the stores with each other, never with a
    /// node outside cluster mode.
    pub cluster: bool,
    /// Bumped each time the node enters the table again after it was declared dead (a pause
    /// longer than the TTL): its leases from before are void.
    pub incarnation: i64,
}

impl NodeRecord {
    /// Whether `other`, live, keeps this node out of the table.
    pub fn excluded_by(&self, other: &NodeRecord) -> bool {
        !(self.cluster && other.cluster)
    }
}

/// A node in the table, with how long ago (by the store's clock) it last sent a heartbeat.
#[derive(Debug, Clone)]
pub struct NodeSeen {
    pub node: NodeRecord,
    pub heartbeat_age: Duration,
}

/// Whether a node in the table is known dead without waiting for its heartbeat to expire.
pub type KnownDead = Arc<dyn Fn(&NodeRecord) -> bool + Send + Sync>;

/// The table, in the metadata store (SQLite or PostgreSQL).
#[async_trait]
pub trait MembershipStore: Send + Sync {
    /// In one transaction: removes the nodes that are dead (heartbeat older than `ttl`, or
    /// `known_dead`), then enters `node` unless a live node excludes it (any other node, unless
    /// both are cluster nodes: [`NodeRecord::excluded_by`]). Answers the live nodes that kept
    /// it out (none: it is in).
    async fn join(
        &self,
        node: &NodeRecord,
        ttl: Duration,
        known_dead: KnownDead,
    ) -> Result<Vec<NodeSeen>, StoreError>;
    /// Refreshes the node's heartbeat; `false` if its row is gone or its heartbeat is already
    /// older than `ttl` (it was dead: it must enter the table again, as a new incarnation).
    async fn heartbeat(&self, id: Uuid, ttl: Duration) -> Result<bool, StoreError>;
    async fn leave(&self, id: Uuid) -> Result<(), StoreError>;
    /// Every node in the table.
    async fn nodes(&self) -> Result<Vec<NodeSeen>, StoreError>;
}

/// Splits the table's rows into the dead (heartbeat older than `ttl`, or known dead) and the
/// live nodes that keep `me` out, as both stores' `join` do.
pub fn split_dead(
    me: &NodeRecord,
    seen: Vec<NodeSeen>,
    ttl: Duration,
    known_dead: &KnownDead,
) -> (Vec<NodeSeen>, Vec<NodeSeen>) {
    let (dead, live): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|n| n.heartbeat_age >= ttl || known_dead(&n.node));
    let excluding = live
        .into_iter()
        .filter(|n| n.node.id != me.id && me.excluded_by(&n.node))
        .collect();
    (dead, excluding)
}

/// The nodes this process runs now: one whose row names this process but not this set was
/// dropped without leaving (an in-process restart, as tests do).
static RUNNING: Mutex<BTreeSet<Uuid>> = Mutex::new(BTreeSet::new());

fn running(id: Uuid, run: bool) {
    if let Ok(mut set) = RUNNING.lock() {
        match run {
            true => set.insert(id),
            false => set.remove(&id),
        };
    }
}

fn is_running_here(id: Uuid) -> bool {
    RUNNING.lock().map(|set| set.contains(&id)).unwrap_or(true)
}

/// This machine's name (Linux), or "" where it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A node on this host whose process is gone, or which this process no longer runs.
fn known_dead(me: &NodeRecord) -> KnownDead {
    let (host, pid) = (me.host.clone(), me.pid);
    Arc::new(move |other: &NodeRecord| {
        if host.is_empty() || other.host != host {
            return false;
        }
        if other.pid == pid {
            return !is_running_here(other.id);
        }
        !std::path::Path::new(&format!("/proc/{}", other.pid)).exists()
    })
}

/// Another live server uses these stores.
#[derive(Debug, thiserror::Error)]
#[error(
    "another Arbor server is using these stores: {}. Without cluster mode two servers must \
     never share stores (README, \"Deployments\"): stop it first, or wait {ttl:?} after it \
     died for its heartbeat to expire",
    describe(.others)
)]
pub struct StoresInUse {
    pub others: Vec<NodeSeen>,
    pub ttl: Duration,
}

fn describe(others: &[NodeSeen]) -> String {
    let nodes: Vec<String> = others
        .iter()
        .map(|o| {
            let n = &o.node;
            format!(
                "node {} at {} (process {} on {}, last heartbeat {:.1} s ago)",
                n.id,
                n.address,
                n.pid,
                n.host,
                o.heartbeat_age.as_secs_f64()
            )
        })
        .collect();
    nodes.join("; ")
}

/// The membership's instruments for `/metrics` (the heartbeat's age is read at scrape time).
pub struct MembershipStats {
    /// Servers in the table, as the last heartbeat saw it.
    pub nodes: prometheus::IntGauge,
    pub heartbeat_failures: prometheus::IntCounter,
}

impl Default for MembershipStats {
    fn default() -> Self {
        Self {
            nodes: prometheus::IntGauge::new(
                "arbor_membership_nodes",
                "Servers in the membership table (live or not yet expired), as of the last heartbeat.",
            )
            .expect("valid gauge"),
            heartbeat_failures: prometheus::IntCounter::new(
                "arbor_membership_heartbeat_failures_total",
                "Heartbeats the membership table did not take (the store failed or timed out).",
            )
            .expect("valid counter"),
        }
    }
}

impl Instruments for MembershipStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        arbor_actors::collectors![self.nodes, self.heartbeat_failures]
    }
}

/// What readiness and the operator surface see of this server's membership.
pub struct MemberStatus {
    pub id: Uuid,
    pub store: Arc<dyn MembershipStore>,
    pub stats: MembershipStats,
    ttl: Duration,
    since: Instant,
    /// Milliseconds after `since` of the last heartbeat the table took.
    last_beat_ms: AtomicU64,
    /// This server's row.
    record: Mutex<NodeRecord>,
}

impl MemberStatus {
    /// This server's row as it stands (its incarnation changes when it enters again).
    pub fn record(&self) -> NodeRecord {
        match self.record.lock() {
            Ok(record) => record.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Enters the table again after the row went or expired, as the next incarnation (cluster
    /// mode: the leases of the last one are void). Answers the live nodes that keep it out.
    pub async fn rejoin(&self) -> Result<Vec<NodeSeen>, StoreError> {
        let node = {
            let mut record = match self.record.lock() {
                Ok(record) => record,
                Err(poisoned) => poisoned.into_inner(),
            };
            record.incarnation += 1;
            record.clone()
        };
        self.store.join(&node, self.ttl, known_dead(&node)).await
    }

    /// The table took a heartbeat just now.
    pub fn beat(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// A server is dead once its heartbeat is older than this.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long ago the table last took this server's heartbeat.
    pub fn since_last_beat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }

    /// Whether the other servers still see this one live: its last heartbeat is younger than
    /// two thirds of the TTL (a third of it before it would expire). `/ready` is 503 otherwise.
    pub fn healthy(&self) -> bool {
        self.since_last_beat() < self.ttl * 2 / 3
    }
}

/// This server's entry in the table while it runs: a task keeps its heartbeat fresh (in cluster
/// mode the lease loop does, with its leases: `src/cluster/`).
pub struct Member {
    status: Arc<MemberStatus>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Member {
    /// Enters the table, or fails with [`StoresInUse`]. Outside cluster mode, starts the
    /// heartbeat (every third of `ttl`) on the current runtime.
    pub async fn join(
        store: Arc<dyn MembershipStore>,
        address: String,
        ttl: Duration,
        cluster: bool,
    ) -> anyhow::Result<Self> {
        let node = NodeRecord {
            id: Uuid::now_v7(),
            address,
            host: host_name(),
            pid: std::process::id(),
            started_at: Utc::now(),
            cluster,
            incarnation: 0,
        };
        running(node.id, true);
        let others = match store.join(&node, ttl, known_dead(&node)).await {
            Ok(others) => others,
            Err(e) => {
                running(node.id, false);
                return Err(anyhow::anyhow!("entering the membership table: {e}"));
            }
        };
        if !others.is_empty() {
            running(node.id, false);
            return Err(StoresInUse { others, ttl }.into());
        }
        let id = node.id;
        let status = Arc::new(MemberStatus {
            id,
            store: store.clone(),
            ttl,
            since: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stats: MembershipStats::default(),
            record: Mutex::new(node),
        });
        status.stats.nodes.set(1);
        let heartbeat = (!cluster).then(|| tokio::spawn(heartbeat(status.clone())));
        tracing::info!(node = %id, cluster, "entered the membership table");
        Ok(Self { status, heartbeat })
    }

    pub fn status(&self) -> &Arc<MemberStatus> {
        &self.status
    }

    /// Leaves the table (after the last flush): another server may start on the stores at once.
    pub async fn leave(self) {
        if let Some(task) = &self.heartbeat {
            task.abort();
        }
        let id = self.status.id;
        if let Err(error) = self.status.store.leave(id).await {
            tracing::warn!(%error, "leaving the membership table failed; the row expires by itself");
        }
        running(id, false);
    }
}

/// Outside cluster mode: refreshes the heartbeat every third of the TTL, and enters the table
/// again if the row went.
async fn heartbeat(status: Arc<MemberStatus>) {
    let id = status.id;
    let ttl = status.ttl;
    // Dropped with the runtime (an in-process server that was never stopped): this process no
    // longer runs the node.
    let _running = Running(id);
    let mut every = tokio::time::interval(ttl / 3);
    every.tick().await;
    loop {
        every.tick().await;
        match status.store.heartbeat(id, ttl).await {
            Ok(true) => {
                status.beat();
                if let Ok(nodes) = status.store.nodes().await {
                    status.stats.nodes.set(nodes.len() as i64);
                }
            }
            Ok(false) => {
                tracing::error!(node = %id, "this server's row left the membership table; entering it again");
                if status.rejoin().await.is_ok_and(|others| others.is_empty()) {
                    status.beat();
                }
            }
            Err(error) => {
                status.stats.heartbeat_failures.inc();
                tracing::warn!(%error, "membership heartbeat failed");
            }
        }
    }
}

/// Marks a node as no longer run by this process when dropped.
struct Running(Uuid);

impl Drop for Running {
    fn drop(&mut self) {
        running(self.0, false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(host: &str, pid: u32) -> NodeRecord {
        NodeRecord {
            id: Uuid::now_v7(),
            address: "127.0.0.1:1".into(),
            host: host.into(),
            pid,
            started_at: Utc::now(),
            cluster: false,
            incarnation: 0,
        }
    }

    #[test]
    fn only_nodes_of_this_host_are_known_dead_and_only_when_they_are() {
        let me = node("here", std::process::id());
        let dead = known_dead(&me);
        // Another host: only its heartbeat says.
        assert!(!dead(&node("elsewhere", u32::MAX)));
        // This host, a process that does not exist.
        assert!(dead(&node("here", u32::MAX)));
        // This host, a live process (pid 1 always runs).
        assert!(!dead(&node("here", 1)));
        // This process: dead unless it runs the node now.
        let mine = node("here", std::process::id());
        assert!(dead(&mine));
        running(mine.id, true);
        assert!(!dead(&mine));
        running(mine.id, false);
        assert!(dead(&mine));
    }
}
