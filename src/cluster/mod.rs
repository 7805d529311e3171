//! Cluster mode: several servers on one set of stores, one owner per chat.
//!
//! ```text
//!                      nginx (hash $arbor_shard consistent)
//!                     /            |             \
//!               node A          node B          node C      each: HTTP, chat actors, writer
//!                  \   forward ↔   |   ↔ forward   /
//!                   \              |              /
//!        PostgreSQL: nodes (membership) · shards (leases, epochs) · chats, branches
//!        MongoDB or PostgreSQL: messages
//! ```
//!
//! - **Membership** (`crate::membership`): every node has a row with its address, incarnation
//!   and heartbeat. A node whose heartbeat is older than the TTL is dead for good.
//! - **Leases** ([`leases`]): chats map to 256 shards by the last byte of their id ([`ring`]);
//!   each shard has a lease row (owner, epoch). A node renews all its leases with its
//!   heartbeat, every `cluster.lease_interval_ms`, and trusts them for three quarters of the
//!   TTL after it sent the last renewal that succeeded: the others take them over only once its
//!   heartbeat is older than the whole TTL by the database's clock.
//! - **Fencing**: every write carries its shard's epoch (`arbor_actors::ports::Fence`), checked
//!   in the metadata transaction of its commit. Whatever an old owner believes (paused,
//!   partitioned, slow), once the epoch moved on it cannot change a chat: its clients get
//!   `chat_moved`, never an acknowledgement for something not stored.
//! - **Placement**: each node computes, from the live nodes' addresses, which node nginx's
//!   consistent hash sends each shard to ([`ring::Ring`]), and each shard's lease goes there: a
//!   dead owner's shards are claimed by that node; a live owner hands a shard over (flushes
//!   its chats, then moves the lease with a new epoch) when another node joins that should
//!   have it, and hands all over when it leaves.
//! - **Routing** ([`route`]): any node takes any request; one for a chat whose lease another
//!   node holds is forwarded there over HTTP (streamed replies too), once.

pub mod leases;
pub mod ring;
pub mod route;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arbor_actors::metrics::Instruments;
use arbor_actors::model::ChatId;
use arbor_actors::ports::{Fence, Ownership};
use arbor_actors::Chats;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use rand::seq::SliceRandom;
use uuid::Uuid;

use self::leases::{Lease, LeaseStore, Snapshot};
use self::ring::{shard_key, shard_of, Ring, SHARDS};
use crate::config::ClusterSettings;
use crate::membership::{MemberStatus, NodeRecord};

/// What this node knows of one shard.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub lease: Lease,
    /// The owner's address, when the owner is a live node.
    pub address: Option<Arc<str>>,
    pub state: Holding,
    /// Since when this node holds the lease (when it does).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// This node's part in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// This node holds the lease.
    Held,
    /// This node holds the lease and is handing it over: its chats are flushing.
    Leaving,
    /// Another node holds it, or nobody.
    Other,
}

/// The leases and live nodes as of the last renewal.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub shards: Vec<ShardView>,
    /// Live cluster nodes.
    pub nodes: Vec<NodeRecord>,
}

/// Where a request for a chat goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// This node holds the chat's lease.
    Here,
    /// Another live node does, reachable at this address.
    Forward { address: Arc<str> },
    /// Nobody can serve it now (the shard is moving, or its owner died and the lease has not
    /// been taken over yet).
    Wait,
}

/// The cluster's instruments for `/metrics`.
pub struct ClusterStats {
    pub members: IntGauge,
    pub shards_owned: IntGauge,
    pub leases_taken: IntCounter,
    pub leases_lost: IntCounter,
    pub handovers: IntCounter,
    /// Requests for a chat, by where they were served: `local` or `forwarded`.
    pub routed: IntCounterVec,
    /// Forwarded requests by outcome: `ok` (an answer came back), `unreachable`, `error`.
    pub forwards: IntCounterVec,
    pub forward_seconds: Histogram,
    pub renew_failures: IntCounter,
    /// From a dead owner's last heartbeat to the takeover of its lease.
    pub takeover_seconds: Histogram,
}

#[allow(clippy::expect_used)] // static names and help texts: cannot fail
impl Default for ClusterStats {
    fn default() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid gauge");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid counter");
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter vec")
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid histogram")
        };
        let routed = counter_vec(
            "arbor_cluster_requests_total",
            "Requests for a chat, by where they were served: local (this node holds the chat's lease) or forwarded (to the node that does).",
            "served",
        );
        for served in ["local", "forwarded"] {
            routed.with_label_values(&[served]);
        }
        let forwards = counter_vec(
            "arbor_cluster_forwards_total",
            "Requests forwarded to the chat's owner, by outcome: ok (its answer was relayed), unreachable (no connection; the client got 503 chat_moved), error (the connection broke midway).",
            "outcome",
        );
        for outcome in ["ok", "unreachable", "error"] {
            forwards.with_label_values(&[outcome]);
        }
        Self {
            members: gauge(
                "arbor_cluster_members",
                "Live cluster nodes, as of this node's last lease renewal.",
            ),
            shards_owned: gauge(
                "arbor_cluster_shards_owned",
                "Shard leases this node holds.",
            ),
            leases_taken: counter(
                "arbor_cluster_leases_taken_total",
                "Shard leases this node came to hold (claimed, or handed over to it).",
            ),
            leases_lost: counter(
                "arbor_cluster_leases_lost_total",
                "Shard leases this node stopped holding (handed over, taken over, or void after it was declared dead).",
            ),
            handovers: counter(
                "arbor_cluster_handovers_total",
                "Shard leases this node handed over to another node after flushing their chats.",
            ),
            routed,
            forwards,
            forward_seconds: histogram(
                "arbor_cluster_forward_duration_seconds",
                "Time from forwarding a request to the owner's response head.",
                arbor_actors::metrics::LATENCY_BUCKETS,
            ),
            renew_failures: counter(
                "arbor_cluster_lease_renew_failures_total",
                "Lease renewals (heartbeats) the lease table did not take.",
            ),
            takeover_seconds: histogram(
                "arbor_cluster_takeover_seconds",
                "From a dead owner's last heartbeat to another node taking over its shard lease.",
                &[0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0],
            ),
        }
    }
}

impl Instruments for ClusterStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        arbor_actors::collectors![
            self.members,
            self.shards_owned,
            self.leases_taken,
            self.leases_lost,
            self.handovers,
            self.routed,
            self.forwards,
            self.forward_seconds,
            self.renew_failures,
            self.takeover_seconds,
        ]
    }
}

/// This node's part in the cluster. Shared by the lease loop, the router and the chat registry
/// (as its [`Ownership`]).
pub struct Cluster {
    pub id: Uuid,
    member: Arc<MemberStatus>,
    store: Arc<dyn LeaseStore>,
    pub settings: ClusterSettings,
    ttl: Duration,
    view: RwLock<Arc<View>>,
    /// Per shard, the epoch of the lease this node holds and serves, or -1: what every request
    /// reads (`route`, `fence`), without touching the view's lock.
    serving: Vec<AtomicI64>,
    /// Leases are trusted until this many ms after `since`.
    valid_until_ms: AtomicU64,
    since: Instant,
    /// Set on graceful shutdown: hand every lease over, claim none.
    leaving: AtomicBool,
    /// Wakes the lease loop for a renewal now (a forward found its target gone).
    wake: tokio::sync::Notify,
    /// Held by a renewal, so that leaving never runs beside one.
    ticking: tokio::sync::Mutex<()>,
    pub stats: ClusterStats,
    /// Node-to-node HTTP.
    pub client: reqwest::Client,
    /// This node's id as a response header value (`route::NODE`).
    pub(crate) node_header: actix_web::http::header::HeaderValue,
    /// `stats.routed`'s two series, resolved once.
    pub(crate) served_local: IntCounter,
    pub(crate) served_forwarded: IntCounter,
}

impl Cluster {
    pub fn new(
        member: Arc<MemberStatus>,
        store: Arc<dyn LeaseStore>,
        settings: ClusterSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let ttl = member.ttl();
        let stats = ClusterStats::default();
        Ok(Arc::new(Self {
            node_header: actix_web::http::header::HeaderValue::from_str(&member.id.to_string())?,
            served_local: stats.routed.with_label_values(&["local"]),
            served_forwarded: stats.routed.with_label_values(&["forwarded"]),
            serving: (0..SHARDS).map(|_| AtomicI64::new(-1)).collect(),
            id: member.id,
            member,
            store,
            settings,
            ttl,
            view: RwLock::new(Arc::new(View {
                shards: (0..SHARDS)
                    .map(|shard| ShardView {
                        lease: Lease {
                            shard,
                            owner: None,
                            epoch: 0,
                        },
                        address: None,
                        state: Holding::Other,
                        since: None,
                    })
                    .collect(),
                nodes: Vec::new(),
            })),
            valid_until_ms: AtomicU64::new(0),
            since: Instant::now(),
            leaving: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            ticking: tokio::sync::Mutex::new(()),
            stats,
            client,
        }))
    }

    /// The view as of the last renewal.
    pub fn view(&self) -> Arc<View> {
        match self.view.read() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, view: View) {
        let owned = view
            .shards
            .iter()
            .filter(|s| s.state != Holding::Other)
            .count();
        self.stats.shards_owned.set(owned as i64);
        for (slot, shard) in self.serving.iter().zip(&view.shards) {
            let epoch = match shard.state {
                Holding::Held => shard.lease.epoch,
                _ => -1,
            };
            slot.store(epoch, Ordering::Release);
        }
        match self.view.write() {
            Ok(mut slot) => *slot = Arc::new(view),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(view),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this node's leases are still its own: its last renewal was sent less than three
    /// quarters of the TTL ago.
    pub fn leases_valid(&self) -> bool {
        self.now_ms() < self.valid_until_ms.load(Ordering::Relaxed)
    }

    /// The epoch of `shard`'s lease while this node holds it, serves it and trusts it.
    fn serving(&self, shard: u16) -> Option<i64> {
        let epoch = self
            .serving
            .get(usize::from(shard))?
            .load(Ordering::Acquire);
        (epoch >= 0 && self.leases_valid()).then_some(epoch)
    }

    /// Where a request for `chat` goes now.
    pub fn route(&self, chat: ChatId) -> Route {
        if self.serving(shard_of(chat)).is_some() {
            return Route::Here;
        }
        let view = self.view();
        let shard = &view.shards[usize::from(shard_of(chat))];
        match (shard.state, &shard.lease.owner, &shard.address) {
            // Held but no longer trusted (a renewal is overdue), or being handed over.
            (Holding::Held | Holding::Leaving, _, _) => Route::Wait,
            (Holding::Other, Some((node, _)), Some(address)) if *node != self.id => {
                Route::Forward {
                    address: address.clone(),
                }
            }
            (Holding::Other, _, _) => Route::Wait,
        }
    }

    /// Since when this node holds the lease of `chat`'s shard; `None` when it does not.
    pub fn held_since(&self, chat: ChatId) -> Option<chrono::DateTime<chrono::Utc>> {
        let view = self.view();
        view.shards.get(usize::from(shard_of(chat)))?.since
    }

    /// Asks the lease loop to renew now (at most every 50 ms).
    pub fn refresh(&self) {
        self.wake.notify_one();
    }

    /// Renews once (taking the leases placement gives this node), then runs the lease loop
    /// until the task is aborted.
    pub async fn start(self: &Arc<Self>, chats: Chats) -> tokio::task::JoinHandle<()> {
        self.tick(&chats).await;
        let cluster = self.clone();
        tokio::spawn(async move {
            let every = cluster.settings.lease_interval();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = cluster.wake.notified() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                cluster.tick(&chats).await;
            }
        })
    }

    /// One renewal: heartbeat and leases, then the claims and hand-overs placement asks for.
    async fn tick(&self, chats: &Chats) {
        let _ticking = self.ticking.lock().await;
        let me = self.member.record();
        let sent = self.now_ms();
        let snapshot = match self.store.renew(&me, self.ttl).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return self.declared_dead(chats).await,
            Err(error) => {
                self.stats.renew_failures.inc();
                self.member.stats.heartbeat_failures.inc();
                tracing::warn!(%error, "lease renewal failed");
                return;
            }
        };
        self.member.beat();
        let trusted = u64::try_from((self.ttl * 3 / 4).as_millis()).unwrap_or(u64::MAX);
        self.valid_until_ms
            .store(sent.saturating_add(trusted), Ordering::Relaxed);
        let (view, lost) = self.apply_snapshot(&me, &snapshot);
        self.install(view);
        if !lost.is_empty() {
            self.drop_shards(chats, &lost).await;
        }
        self.place(chats, &me, &snapshot).await;
    }

    /// Builds the view from a snapshot; answers the shards this node held and no longer does.
    fn apply_snapshot(&self, me: &NodeRecord, snapshot: &Snapshot) -> (View, Vec<u16>) {
        let old = self.view();
        let live: Vec<NodeRecord> = snapshot
            .nodes
            .iter()
            .filter(|n| n.node.cluster && n.heartbeat_age < self.ttl)
            .map(|n| n.node.clone())
            .collect();
        self.stats.members.set(live.len() as i64);
        self.member.stats.nodes.set(snapshot.nodes.len() as i64);
        let mut lost = Vec::new();
        let mut shards = Vec::with_capacity(usize::from(SHARDS));
        for lease in &snapshot.leases {
            let Some(before) = old.shards.get(usize::from(lease.shard)) else {
                continue;
            };
            let mine = lease.owner == Some((me.id, me.incarnation));
            let was = before.state != Holding::Other;
            let state = match (mine, before.state) {
                // A lease held at another epoch is a new lease: the old actors must go.
                (true, Holding::Held | Holding::Leaving) if before.lease.epoch != lease.epoch => {
                    lost.push(lease.shard);
                    Holding::Other
                }
                (true, Holding::Leaving) => Holding::Leaving,
                (true, _) => Holding::Held,
                (false, _) => Holding::Other,
            };
            if was && !mine {
                lost.push(lease.shard);
            }
            if state == Holding::Held && !was {
                self.stats.leases_taken.inc();
            }
            let address = lease.owner.and_then(|(id, incarnation)| {
                live.iter()
                    .find(|n| n.id == id && n.incarnation == incarnation)
                    .map(|n| Arc::from(n.address.as_str()))
            });
            let since = match state {
                Holding::Other => None,
                _ => before.since.or_else(|| Some(chrono::Utc::now())),
            };
            shards.push(ShardView {
                lease: lease.clone(),
                address,
                state,
                since,
            });
        }
        self.stats.leases_lost.inc_by(lost.len() as u64);
        (
            View {
                shards,
                nodes: live,
            },
            lost,
        )
    }

    /// Stops serving `shards`: their actors flush (writes the new owner fenced are refused)
    /// and stop.
    async fn drop_shards(&self, chats: &Chats, shards: &[u16]) {
        let set: HashSet<u16> = shards.iter().copied().collect();
        let evicted = chats
            .evict_where(|chat| set.contains(&shard_of(chat)))
            .await;
        tracing::info!(
            shards = shards.len(),
            chats = evicted,
            "shard leases lost; their chats left this node"
        );
    }

    /// Claims the free or dead leases of the shards placement gives this node, and hands over
    /// the ones it gives another live node.
    async fn place(&self, chats: &Chats, me: &NodeRecord, snapshot: &Snapshot) {
        let view = self.view();
        let leaving = self.leaving.load(Ordering::Relaxed);
        let placed = placement(&view.nodes, leaving.then_some(me.id));
        let alive = |owner: &Option<(Uuid, i64)>| {
            owner.is_some_and(|(id, inc)| {
                view.nodes
                    .iter()
                    .any(|n| n.id == id && n.incarnation == inc)
            })
        };
        let mut claim = Vec::new();
        let mut hand: BTreeMap<Uuid, Vec<u16>> = BTreeMap::new();
        for (shard, target) in view.shards.iter().zip(&placed) {
            match shard.state {
                Holding::Other if *target == Some(me.id) && !alive(&shard.lease.owner) => {
                    claim.push(shard.lease.shard)
                }
                Holding::Held => match target {
                    Some(to) if *to != me.id => {
                        hand.entry(*to).or_default().push(shard.lease.shard)
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        if !claim.is_empty() && !leaving {
            self.claim(me, &claim, snapshot).await;
        }
        for (to, shards) in hand {
            let Some(target) = view.nodes.iter().find(|n| n.id == to).cloned() else {
                continue;
            };
            self.hand_over(chats, me, &shards, Some(&target)).await;
        }
    }

    async fn claim(&self, me: &NodeRecord, shards: &[u16], snapshot: &Snapshot) {
        match self.store.claim(me, shards, self.ttl).await {
            Ok(taken) if !taken.is_empty() => {
                let view = self.view();
                let mut next = (*view).clone();
                for (shard, epoch) in &taken {
                    let Some(slot) = next.shards.get_mut(usize::from(*shard)) else {
                        continue;
                    };
                    // How long its old owner had been silent: the takeover's duration.
                    if let Some((old, _)) = slot.lease.owner {
                        if let Some(seen) = snapshot.nodes.iter().find(|n| n.node.id == old) {
                            self.stats
                                .takeover_seconds
                                .observe(seen.heartbeat_age.as_secs_f64());
                        }
                    }
                    slot.lease.owner = Some((me.id, me.incarnation));
                    slot.lease.epoch = *epoch;
                    slot.address = Some(Arc::from(me.address.as_str()));
                    slot.state = Holding::Held;
                    slot.since = Some(chrono::Utc::now());
                }
                self.stats.leases_taken.inc_by(taken.len() as u64);
                self.install(next);
                tracing::info!(shards = taken.len(), "took shard leases");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "claiming shard leases failed"),
        }
    }

    /// Hands `shards` over to `to` (or frees them): they stop taking requests, their chats
    /// flush and stop, then the leases move with new epochs.
    async fn hand_over(
        &self,
        chats: &Chats,
        me: &NodeRecord,
        shards: &[u16],
        to: Option<&NodeRecord>,
    ) {
        self.set_state(shards, Holding::Leaving);
        self.drop_shards(chats, shards).await;
        match self.store.hand_over(me, shards, to).await {
            Ok(moved) => {
                let view = self.view();
                let mut next = (*view).clone();
                for (shard, epoch) in &moved {
                    let Some(slot) = next.shards.get_mut(usize::from(*shard)) else {
                        continue;
                    };
                    slot.lease.owner = to.map(|n| (n.id, n.incarnation));
                    slot.lease.epoch = *epoch;
                    slot.address = to.map(|n| Arc::from(n.address.as_str()));
                    slot.state = Holding::Other;
                    slot.since = None;
                }
                self.stats.handovers.inc_by(moved.len() as u64);
                self.stats.leases_lost.inc_by(moved.len() as u64);
                self.install(next);
                tracing::info!(shards = moved.len(), to = ?to.map(|n| n.id), "handed shard leases over");
            }
            Err(error) => {
                // Still ours: serve them again; the next renewal tries again.
                tracing::warn!(%error, "handing shard leases over failed");
                self.set_state(shards, Holding::Held);
            }
        }
    }

    fn set_state(&self, shards: &[u16], state: Holding) {
        let view = self.view();
        let mut next = (*view).clone();
        for shard in shards {
            if let Some(slot) = next.shards.get_mut(usize::from(*shard)) {
                if slot.state != Holding::Other {
                    slot.state = state;
                }
            }
        }
        self.install(next);
    }

    /// The lease table refused this node's heartbeat: the others may have taken its leases.
    /// Its chats go (their writes are fenced), and it enters the table again as its next
    /// incarnation, holding nothing.
    async fn declared_dead(&self, chats: &Chats) {
        tracing::error!(node = %self.id, "this node was declared dead (its heartbeat expired); dropping its chats and entering the cluster again");
        self.valid_until_ms.store(0, Ordering::Relaxed);
        let view = self.view();
        let held: Vec<u16> = view
            .shards
            .iter()
            .filter(|s| s.state != Holding::Other)
            .map(|s| s.lease.shard)
            .collect();
        let mut next = (*view).clone();
        for slot in &mut next.shards {
            slot.state = Holding::Other;
            slot.since = None;
        }
        self.install(next);
        self.stats.leases_lost.inc_by(held.len() as u64);
        chats.evict_where(|_| true).await;
        match self.member.rejoin().await {
            Ok(others) if others.is_empty() => self.member.beat(),
            Ok(others) => tracing::error!(
                others = others.len(),
                "a node outside cluster mode uses these stores; not entering again"
            ),
            Err(error) => tracing::warn!(%error, "entering the membership table again failed"),
        }
    }

    /// The start of a graceful leave (SIGTERM), while this node still serves HTTP: it claims
    /// nothing from now on and hands every lease over (flushing their chats) to the node
    /// placement gives it without this one; its requests for them are forwarded there. It
    /// keeps renewing its heartbeat until [`leave`](Self::leave).
    pub async fn hand_over_all(&self, chats: &Chats) {
        self.leaving.store(true, Ordering::Relaxed);
        self.tick(chats).await;
    }

    /// Graceful leave, after the last flush: hands over what is still held (or frees it), so
    /// the others need not wait for the TTL.
    pub async fn leave(&self, chats: &Chats) {
        self.leaving.store(true, Ordering::Relaxed);
        let _ticking = self.ticking.lock().await;
        let me = self.member.record();
        let view = self.view();
        let others: Vec<NodeRecord> = view
            .nodes
            .iter()
            .filter(|n| n.id != me.id)
            .cloned()
            .collect();
        let placed = placement(&others, None);
        let mut hand: BTreeMap<Option<Uuid>, Vec<u16>> = BTreeMap::new();
        for (shard, target) in view.shards.iter().zip(&placed) {
            if shard.state != Holding::Other {
                hand.entry(*target).or_default().push(shard.lease.shard);
            }
        }
        for (to, shards) in hand {
            let target = to.and_then(|id| others.iter().find(|n| n.id == id));
            self.hand_over(chats, &me, &shards, target).await;
        }
    }
}

/// Which live node each shard belongs on: the one nginx's consistent hash sends its key to
/// (`without` left out). `None` for every shard when no node is left.
pub fn placement(nodes: &[NodeRecord], without: Option<Uuid>) -> Vec<Option<Uuid>> {
    let nodes: Vec<&NodeRecord> = nodes.iter().filter(|n| Some(n.id) != without).collect();
    let addresses: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
    let ring = Ring::new(&addresses);
    (0..SHARDS)
        .map(|shard| ring.server_for(&shard_key(shard)).map(|i| nodes[i].id))
        .collect()
}

impl Ownership for Cluster {
    fn fence(&self, chat: ChatId) -> Option<Fence> {
        let shard = shard_of(chat);
        self.serving(shard).map(|epoch| Fence { shard, epoch })
    }

    fn new_chat_id(&self) -> Option<ChatId> {
        if !self.leases_valid() {
            return None;
        }
        let view = self.view();
        let held: Vec<u16> = view
            .shards
            .iter()
            .filter(|s| s.state == Holding::Held)
            .map(|s| s.lease.shard)
            .collect();
        held.choose(&mut rand::thread_rng())
            .map(|&shard| ring::new_chat_id(shard))
    }
}
