//! Cluster mode with real processes: several `arbor` binaries on one PostgreSQL (metadata,
//! membership, leases) and one MongoDB-wire server (messages), on loopback. Clients talk to
//! any node; what a node acknowledges must be on its chat's path, read from any node and after
//! restarts, whatever happens to the nodes (kill -9, SIGSTOP past the lease, join, leave).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor::config::{AckMode, Secret, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::binary::{free_port, Server};
use crate::helpers::*;
use crate::operations::register;

const SECRET: &str = "cluster-test-secret-0123456789";

/// Settings of one node of a cluster on `schema` / `database`.
fn node_settings(dir: &Path, schema: &str, database: &str) -> Settings {
    let mut s = settings(dir.join("data"));
    use_postgres(&mut s, &postgres_url());
    use_mongodb(&mut s, &mongodb_url());
    s.storage.postgres_schema = schema.to_owned();
    s.storage.mongodb_database = database.to_owned();
    s.storage.ack_mode = AckMode::Durable;
    s.storage.durable_retry_ms = 2000;
    s.server.port = free_port();
    s.membership.node_ttl_secs = 3;
    s.cluster.enabled = true;
    s.cluster.secret = Secret::new(SECRET.into());
    s.cluster.lease_interval_ms = 200;
    s.cluster.move_wait_ms = 3000;
    s.admin.emails = vec![ADMIN.into()];
    s.quotas.settings_ttl_ms = 300;
    s
}

const ADMIN: &str = "admin@example.com";

/// Nodes on one set of stores.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    settings: Vec<Settings>,
    nodes: Vec<Option<Server>>,
    schema: String,
    database: String,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        let mut cluster = Self {
            dirs: Vec::new(),
            settings: Vec::new(),
            nodes: Vec::new(),
            schema: unique_name(),
            database: unique_name(),
        };
        for _ in 0..n {
            cluster.add().await;
        }
        cluster.settle().await;
        cluster
    }

    /// Starts one more node; answers its index.
    async fn add(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let s = node_settings(dir.path(), &self.schema, &self.database);
        let server = Server::start_logged(&s, dir.path()).await;
        self.dirs.push(dir);
        self.settings.push(s);
        self.nodes.push(Some(server));
        self.nodes.len() - 1
    }

    fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.settings[i].server.port)
    }

    /// The indexes of the running nodes.
    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Waits until every running node holds its share of the 256 leases (placement settled).
    async fn settle(&self) {
        let client = test_client();
        let started = Instant::now();
        loop {
            let mut total = 0;
            let mut each = true;
            for i in self.running() {
                let owned = metric(&client, &self.base(i), "arbor_cluster_shards_owned").await;
                total += owned as usize;
                each &= owned > 0.0;
            }
            if total == 256 && each {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "leases did not settle: {total} held"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].take().unwrap().kill();
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().unwrap().pid()
    }

    /// SIGTERM, and waits for the exit.
    async fn stop(&mut self, i: usize) {
        let mut server = self.nodes[i].take().unwrap();
        server.terminate();
        assert!(server.wait_exit(Duration::from_secs(30)).await.success());
    }

    async fn restart(&mut self, i: usize) {
        let server = Server::start_logged(&self.settings[i], self.dirs[i].path()).await;
        self.nodes[i] = Some(server);
    }
}

/// A gauge or counter's value in a node's `/metrics` (summed over its labels).
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(res) = client.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn create_chat(client: &reqwest::Client, base: &str, token: &str, title: &str) -> String {
    let res = client
        .post(format!("{base}/api/v1/chats"))
        .bearer_auth(token)
        .json(&json!({"title": title}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    id(&res.json().await.unwrap())
}

/// What a send came to: acknowledged, refused with an answer, or no answer at all.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Acked,
    Refused,
    Unknown,
}

async fn send_pair(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chat: &str,
    content: &str,
) -> Outcome {
    let res = client
        .post(format!("{base}/api/v1/chats/{chat}/messages"))
        .bearer_auth(token)
        .header("idempotency-key", content)
        .json(&json!({"content": content, "response": format!("re: {content}")}))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    match res {
        Ok(res) if res.status() == StatusCode::CREATED => Outcome::Acked,
        Ok(_) => Outcome::Refused,
        Err(_) => Outcome::Unknown,
    }
}

/// The contents on a chat's active path, oldest first, read from `base`.
async fn path(client: &reqwest::Client, base: &str, token: &str, chat: &str) -> Vec<String> {
    let res = client
        .get(format!("{base}/api/v1/chats/{chat}/messages?limit=200"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "reading {chat} from {base}");
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["has_more"], false);
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Every message of a chat's tree, by content, with how often it is stored.
async fn stored(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chat: &str,
) -> HashMap<String, usize> {
    let res = client
        .get(format!("{base}/api/v1/chats/{chat}/tree"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tree: Value = res.json().await.unwrap();
    let mut seen = HashMap::new();
    for node in tree["nodes"].as_array().unwrap() {
        *seen
            .entry(node["content"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

/// A client alternating nodes on every request across many chats: every acknowledged message
/// is on its chat's path, in order, read from any node, and again after a full restart.
#[actix_web::test]
async fn three_nodes_taking_turns_lose_nothing_and_agree() {
    let mut cluster = Cluster::start(3).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "turns@example.com").await;
    let mut chats = Vec::new();
    for i in 0..12 {
        let base = cluster.base(i % 3);
        chats.push(create_chat(&client, &base, &token, &format!("chat {i}")).await);
    }
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut turn = 0;
    for round in 0..8 {
        for chat in &chats {
            turn += 1;
            let content = format!("{chat} m{round}");
            let outcome = send_pair(&client, &cluster.base(turn % 3), &token, chat, &content).await;
            assert_eq!(outcome, Outcome::Acked, "{content}");
            sent.entry(chat.clone())
                .or_default()
                .extend([content.clone(), format!("re: {content}")]);
        }
    }
    // Most requests were forwarded: two of three nodes do not hold a given chat.
    let mut forwarded = 0.0;
    for i in 0..3 {
        forwarded += metric(&client, &cluster.base(i), "arbor_cluster_forwards_total").await;
    }
    assert!(forwarded >= 40.0, "only {forwarded} forwards");
    let text = client
        .get(format!("{}/metrics", cluster.base(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("arbor_cluster_shards_owned"));
    crate::operations::promtool_check(&text);
    for chat in &chats {
        for i in 0..3 {
            assert_eq!(
                &path(&client, &cluster.base(i), &token, chat).await,
                &sent[chat]
            );
        }
    }
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    cluster.settle().await;
    for (n, chat) in chats.iter().enumerate() {
        let base = cluster.base(n % 3);
        assert_eq!(
            &path(&client, &base, &token, chat).await,
            &sent[chat],
            "after the restart"
        );
    }
}

/// Clients writing Q&A pairs to chats until stopped, each through the nodes of its list in
/// turn (a list the test may change while they run). With `retry`, a pair that is not
/// acknowledged is sent again with the same Idempotency-Key until it is.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
    /// (chat, content, how its last attempt ended), in the order they ended.
    log: Arc<Mutex<Vec<(String, String, Outcome)>>>,
    /// Pairs whose first attempt was not acknowledged.
    first_refused: Arc<AtomicUsize>,
}

/// One writer: its chat, the prefix of its messages, and the nodes it goes through.
type Job = (String, String, Arc<Mutex<Vec<String>>>);

impl Writers {
    fn start(client: &reqwest::Client, token: &str, jobs: Vec<Job>, retry: bool) -> Self {
        let writers = Self {
            stop: Arc::default(),
            tasks: Vec::new(),
            log: Arc::default(),
            first_refused: Arc::default(),
        };
        let mut tasks = Vec::new();
        for (w, (chat, label, bases)) in jobs.into_iter().enumerate() {
            let (client, token) = (client.clone(), token.to_owned());
            let (stop, log, first_refused) = (
                writers.stop.clone(),
                writers.log.clone(),
                writers.first_refused.clone(),
            );
            tasks.push(actix_web::rt::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let content = format!("{chat} {label}{n}");
                    let mut tries = 0;
                    let outcome = loop {
                        let base = {
                            let bases = bases.lock().unwrap();
                            bases[(w + n + tries) % bases.len()].clone()
                        };
                        let outcome = send_pair(&client, &base, &token, &chat, &content).await;
                        if outcome == Outcome::Acked {
                            break outcome;
                        }
                        if tries == 0 {
                            first_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if !retry {
                            break outcome;
                        }
                        assert!(tries < 300, "{content} was never acknowledged");
                    };
                    log.lock().unwrap().push((chat.clone(), content, outcome));
                    n += 1;
                }
            }));
        }
        Self { tasks, ..writers }
    }

    /// Stops them; answers the log.
    async fn finish(self) -> Vec<(String, String, Outcome)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// Checks the stores against what clients sent to `chats`: every acknowledged pair (question and
/// answer) is stored exactly once; with `exact`, nothing else is stored.
async fn check_stored(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chats: &[String],
    log: &[(String, String, Outcome)],
    exact: bool,
) {
    for chat in chats {
        let stored = stored(client, base, token, chat).await;
        let acked: Vec<&String> = log
            .iter()
            .filter(|(c, _, o)| c == chat && *o == Outcome::Acked)
            .map(|(_, m, _)| m)
            .collect();
        for content in &acked {
            for message in [content.to_string(), format!("re: {content}")] {
                assert_eq!(stored.get(&message), Some(&1), "acknowledged {message}");
            }
        }
        if exact {
            assert_eq!(
                stored.len(),
                2 * acked.len(),
                "stored messages nobody had acknowledged"
            );
        }
    }
}

/// Writers keep sending to every chat through the nodes in turn; one node is killed with
/// SIGKILL. The others take its leases over within the TTL plus a bound, and nothing
/// acknowledged is lost: the client's log of acknowledgements against the stores.
#[actix_web::test]
async fn a_killed_owner_is_taken_over_and_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "kill@example.com").await;
    let mut chats = Vec::new();
    for i in 0..9 {
        chats.push(create_chat(&client, &cluster.base(i % 3), &token, "busy").await);
    }
    // Nodes in turn, skipping none: the dead one's clients see errors.
    let bases = Arc::new(Mutex::new((0..3).map(|i| cluster.base(i)).collect()));
    let jobs = chats
        .iter()
        .map(|c| (c.clone(), "k".to_owned(), bases.clone()))
        .collect();
    let writers = Writers::start(&client, &token, jobs, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.kill(1);
    // Takeover: the survivors hold all 256 leases again.
    cluster.settle().await;
    let takeover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = writers.finish().await;
    let ttl = Duration::from_secs(cluster.settings[0].membership.node_ttl_secs);
    assert!(
        takeover < ttl + Duration::from_secs(3),
        "takeover took {takeover:?}"
    );
    eprintln!("takeover after kill -9: {takeover:?} (TTL {ttl:?})");
    let acked = log.iter().filter(|(_, _, o)| *o == Outcome::Acked).count();
    assert!(acked > 50, "too little load: {acked}");
    check_stored(&client, &cluster.base(0), &token, &chats, &log, false).await;
    // After the takeover every chat takes writes again, through any node.
    for (i, chat) in chats.iter().enumerate() {
        let base = cluster.base([0, 2][i % 2]);
        let after = send_pair(&client, &base, &token, chat, &format!("{chat} after")).await;
        assert_eq!(after, Outcome::Acked);
    }
}

/// A node is paused (SIGSTOP) past its lease while its chats take writes through both nodes,
/// then resumed. When it wakes its leases are no longer its own: what it still had in flight
/// is refused (fenced, or never applied), its clients get errors for it, and they retry with
/// the same Idempotency-Key until a node acknowledges. In the end every message is stored
/// exactly once and nothing else is: no write of the stale owner shows, and none is doubled.
/// (A write can be stored although its client saw an error: its commit landed just before the
/// pause and the answer was lost with it. The retry with the same key then finds it.)
#[actix_web::test]
async fn a_paused_owner_is_fenced_when_it_wakes() {
    let cluster = Cluster::start(2).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "pause@example.com").await;
    let mut chats = Vec::new();
    for _ in 0..6 {
        // Chats created on node 1 are in its shards.
        chats.push(create_chat(&client, &cluster.base(1), &token, "paused").await);
    }
    let mut jobs = Vec::new();
    for chat in &chats {
        for via in [0, 1] {
            let bases = Arc::new(Mutex::new(vec![cluster.base(via)]));
            jobs.push((chat.clone(), format!("via{via} p"), bases));
        }
    }
    let writers = Writers::start(&client, &token, jobs, true);
    let first_refused = writers.first_refused.clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = cluster.pid(1).to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // Past the TTL: node 0 takes the leases over and serves the chats.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writers.finish().await;
    let fenced = metric(
        &client,
        &cluster.base(1),
        "arbor_writer_fenced_writes_total",
    )
    .await;
    assert!(log.len() > 30, "too little load");
    cluster.settle().await;
    check_stored(&client, &cluster.base(0), &token, &chats, &log, true).await;
    eprintln!(
        "paused node: {} messages, {} first attempts refused, {fenced} writes fenced",
        log.len(),
        first_refused.load(Ordering::Relaxed)
    );
}

/// A third node joins under load and one leaves (SIGTERM): leases move by hand-over. Clients
/// retry refused sends with the same Idempotency-Key until acknowledged; every message is then
/// stored exactly once.
#[actix_web::test]
async fn join_and_leave_under_load_lose_and_duplicate_nothing() {
    let mut cluster = Cluster::start(2).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "move@example.com").await;
    let mut chats = Vec::new();
    for i in 0..8 {
        chats.push(create_chat(&client, &cluster.base(i % 2), &token, "moving").await);
    }
    let bases = Arc::new(Mutex::new(vec![cluster.base(0)]));
    let jobs = chats
        .iter()
        .map(|c| (c.clone(), "j".to_owned(), bases.clone()))
        .collect();
    let writers = Writers::start(&client, &token, jobs, true);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let joined = cluster.add().await;
    bases.lock().unwrap().push(cluster.base(joined));
    cluster.settle().await;
    let handed = metric(&client, &cluster.base(0), "arbor_cluster_handovers_total").await
        + metric(&client, &cluster.base(1), "arbor_cluster_handovers_total").await;
    assert!(handed > 0.0, "the new node got no lease by hand-over");
    tokio::time::sleep(Duration::from_millis(800)).await;
    bases.lock().unwrap().retain(|b| *b != cluster.base(1));
    cluster.stop(1).await;
    cluster.settle().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let log = writers.finish().await;
    assert!(log.len() > 40, "too little load: {}", log.len());
    check_stored(&client, &cluster.base(0), &token, &chats, &log, true).await;
}

/// A streamed reply asked of a node that does not hold the chat is forwarded as it streams,
/// and its events are read again (`/events`) through another node.
#[actix_web::test]
async fn streams_are_forwarded_and_resumed_on_another_node() {
    let cluster = Cluster::start(2).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "stream@example.com").await;
    let chat = create_chat(&client, &cluster.base(0), &token, "streamed").await;
    // Node 1 does not hold the chat: it forwards.
    let res = client
        .post(format!("{}/api/v1/chats/{chat}/messages", cluster.base(1)))
        .bearer_auth(&token)
        .json(&json!({"content": "tell me", "reply": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("x-arbor-forwarded-by"));
    let mut events = crate::llm::Events::new(res);
    let mut all = Vec::new();
    while let Some(ev) = events.next().await {
        all.push(ev);
    }
    assert_eq!(all.last().unwrap().event, "assistant_message");
    let generation = all[0].data["generation_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let res = client
            .get(format!(
                "{}/api/v1/chats/{chat}/generations/{generation}/events",
                cluster.base(i)
            ))
            .bearer_auth(&token)
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap();
        let mut again = crate::llm::Events::new(res);
        let mut replayed = Vec::new();
        while let Some(ev) = again.next().await {
            replayed.push(ev);
        }
        assert_eq!(
            replayed.last().unwrap().event,
            "assistant_message",
            "via node {i}"
        );
        assert_eq!(replayed.last().unwrap().data, all.last().unwrap().data);
    }
}

/// Node-to-node headers without the cluster secret are refused; forwarding keeps the user's
/// own authentication (no token: 401 from the owner, relayed).
#[actix_web::test]
async fn a_client_cannot_pose_as_a_node() {
    let cluster = Cluster::start(2).await;
    let client = test_client();
    let token = register(&client, &cluster.base(0), "pose@example.com").await;
    let chat = create_chat(&client, &cluster.base(0), &token, "mine").await;
    for (secret, status) in [("wrong", StatusCode::FORBIDDEN), (SECRET, StatusCode::OK)] {
        let res = client
            .get(format!("{}/api/v1/chats/{chat}", cluster.base(0)))
            .bearer_auth(&token)
            .header("x-arbor-hops", "1")
            .header("x-arbor-cluster-secret", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "secret {secret}");
    }
    for i in 0..2 {
        let res = client
            .get(format!("{}/api/v1/chats/{chat}", cluster.base(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "via node {i}");
    }
}

/// The shipped nginx configuration, rendered for the nodes, in front of them: the API's main
/// flows pass through it, and nearly every chat request reaches the chat's owner first.
#[actix_web::test]
async fn nginx_in_front_sends_chat_requests_to_their_owner() {
    let nginx_bin = Path::new("/usr/sbin/nginx");
    assert!(
        nginx_bin.exists(),
        "nginx is missing: scripts/test.sh installs nginx-light"
    );
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let servers: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", cluster.settings[i].server.port))
        .collect();
    let nginx = Nginx::start(dir.path(), port, &servers);
    let base = format!("http://127.0.0.1:{port}");
    let client = test_client();
    let token = register(&client, &base, "nginx@example.com").await;
    let mut chats = Vec::new();
    for i in 0..10 {
        chats.push(create_chat(&client, &base, &token, &format!("via nginx {i}")).await);
    }
    let before = forwards(&client, &cluster).await;
    let mut requests = 0;
    for chat in &chats {
        for n in 0..5 {
            let content = format!("{chat} n{n}");
            assert_eq!(
                send_pair(&client, &base, &token, chat, &content).await,
                Outcome::Acked
            );
            let res = client
                .post(format!("{base}/api/v1/chats/{chat}/branches"))
                .bearer_auth(&token)
                .json(&json!({"message_index": 0}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            assert_eq!(path(&client, &base, &token, chat).await.len(), 2 * (n + 1));
            requests += 3;
        }
    }
    // A seed-dialect read with the chat in the query.
    let res = client
        .get(format!(
            "{base}/api/v1/branches/get-branches?chat_id={}",
            chats[0]
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let forwarded = forwards(&client, &cluster).await - before;
    assert!(
        forwarded <= requests as f64 * 0.05,
        "{forwarded} of {requests} chat requests were forwarded behind nginx"
    );
    drop(nginx);
}

async fn forwards(client: &reqwest::Client, cluster: &Cluster) -> f64 {
    let mut total = 0.0;
    for i in cluster.running() {
        total += metric(client, &cluster.base(i), "arbor_cluster_forwards_total").await;
    }
    total
}

/// nginx from Debian's package, on loopback, with `deploy/nginx/arbor.conf` rendered for the
/// nodes; stopped (by its PID) when dropped.
struct Nginx {
    pid_file: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, port: u16, servers: &[String]) -> Self {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/arbor.conf"),
        )
        .unwrap();
        let upstream: String = servers
            .iter()
            .map(|s| format!("    server {s} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let site = shipped
            .replace(
                "    server 127.0.0.1:8001 max_fails=1 fail_timeout=2s;\n",
                &upstream,
            )
            .replace(
                "    server 127.0.0.1:8002 max_fails=1 fail_timeout=2s;\n",
                "",
            )
            .replace(
                "    server 127.0.0.1:8003 max_fails=1 fail_timeout=2s;\n",
                "",
            )
            .replace(
                "listen 127.0.0.1:8080;",
                &format!("listen 127.0.0.1:{port};"),
            );
        assert!(
            site.contains(&servers[0]),
            "the shipped config's upstream changed"
        );
        let pid_file = dir.join("nginx.pid");
        let main = format!(
            "daemon on;\nuser root;\npid {pid};\nerror_log {dir}/error.log warn;\nevents {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n{site}\n}}\n",
            pid = pid_file.display(),
            dir = dir.display(),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let status = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .status()
            .unwrap();
        assert!(status.success(), "nginx did not start");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx is not listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { pid_file }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg("-QUIT").arg(pid.trim()).status();
        }
    }
}

/// The fence, deterministically, on the real stores: node A holds two shards and commits a
/// chat in each; shard 2 is handed over to node B; a batch of A's holding a write in each
/// shard then commits the shard-1 write and refuses the shard-2 one (`Moved`), whose message
/// is left unreferenced in the message store, and left out when the chat is restored.
#[actix_web::test]
async fn a_commit_under_a_stale_epoch_is_refused_and_the_rest_of_its_batch_commits() {
    use arbor::cluster::ring::new_chat_id;
    use arbor::membership::NodeRecord;
    use arbor_actors::chat::ChatState;
    use arbor_actors::model::MessageId;
    use arbor_actors::ports::Fence;
    use arbor_actors::writer::{WriteError, WriterConfig, WriterHandle};

    let dir = tempfile::tempdir().unwrap();
    let s = node_settings(dir.path(), &unique_name(), &unique_name());
    let (stores, connections) = arbor::storage::open(&s).await.unwrap();
    let (membership, leases) = (
        connections.membership().unwrap(),
        connections.leases().unwrap(),
    );
    let ttl = Duration::from_secs(30);
    let node = |port: u16| NodeRecord {
        id: uuid::Uuid::now_v7(),
        address: format!("127.0.0.1:{port}"),
        host: "test".into(),
        pid: 1,
        started_at: chrono::Utc::now(),
        cluster: true,
        incarnation: 0,
    };
    let (a, b) = (node(1), node(2));
    for n in [&a, &b] {
        let others = membership
            .join(n, ttl, Arc::new(|_: &NodeRecord| false))
            .await
            .unwrap();
        assert!(others.is_empty());
    }
    let taken = leases.claim(&a, &[1, 2], ttl).await.unwrap();
    assert_eq!(taken.len(), 2);
    // B cannot take a live node's lease.
    assert!(leases.claim(&b, &[1, 2], ttl).await.unwrap().is_empty());
    let epoch = |shard: u16| taken.iter().find(|(s, _)| *s == shard).unwrap().1;
    let fence = |shard: u16| {
        Some(Fence {
            shard,
            epoch: epoch(shard),
        })
    };

    let writer = WriterHandle::spawn(stores.clone(), WriterConfig::default());
    let owner = crate::stores::user(&format!("{}@example.com", unique_name()), None);
    stores.metadata.create_user(&owner).await.unwrap();
    let mut chats = Vec::new();
    for shard in [1u16, 2] {
        let (mut meta, mut branch) = crate::stores::chat(owner.id, 0);
        meta.id = new_chat_id(shard);
        branch.chat_id = meta.id;
        let mut messages: Vec<MessageId> = Vec::new();
        let mut write = crate::writer::round(&mut meta, &mut branch, &mut messages, 1, 2);
        write.fence = fence(shard);
        writer.reserve().unwrap().send(write).await.unwrap();
        chats.push((shard, meta, branch, messages));
    }
    let moved = leases.hand_over(&a, &[2], Some(&b)).await.unwrap();
    assert_eq!(moved, vec![(2, epoch(2) + 1)]);

    // One batch: both writes are queued before the writer wakes.
    let mut tickets = Vec::new();
    for (shard, meta, branch, messages) in &mut chats {
        let mut write = crate::writer::round(meta, branch, messages, 2, 2);
        write.fence = fence(*shard);
        tickets.push(writer.reserve().unwrap().send(write));
    }
    let (first, second) = (tickets.remove(0).await, tickets.remove(0).await);
    assert_eq!(first, Ok(()));
    assert_eq!(second, Err(WriteError::Moved));
    assert_eq!(writer.stats.fenced_writes.get(), 1);

    for (shard, meta, _, messages) in &chats {
        let (stored, branches) = parts(stores.metadata.load_chat(meta.id).await.unwrap().unwrap());
        let all = stores.messages.load_chat(meta.id).await.unwrap();
        assert_eq!(
            all.len(),
            4,
            "shard {shard}: both rounds' messages reached the message store"
        );
        let (state, orphans) = ChatState::restore(stored.clone(), branches, all).unwrap();
        match shard {
            1 => {
                assert_eq!(stored.version, 2);
                assert!(orphans.is_empty());
                assert_eq!(state.tree.nodes().count(), 4);
            }
            _ => {
                // The refused round left version 1 and its two messages unreferenced.
                assert_eq!(stored.version, 1);
                assert_eq!(orphans, messages[2..].to_vec());
                assert_eq!(state.tree.nodes().count(), 2);
            }
        }
    }
    connections.close().await;
}

/// A reply generated on a node that then dies: resuming its events through the node that took
/// the chat over ends at once with a terminal `generation_interrupted` event (never hangs), and
/// its status answers 410. A generation id this cluster never made is still 404.
#[actix_web::test]
async fn resuming_a_reply_whose_node_died_ends_with_interrupted() {
    let mut cluster = Cluster::start(2).await;
    let client = test_client();
    let token = register(&client, &cluster.base(1), "died@example.com").await;
    let chat = create_chat(&client, &cluster.base(0), &token, "replied").await;
    let res = client
        .post(format!("{}/api/v1/chats/{chat}/messages", cluster.base(0)))
        .bearer_auth(&token)
        .json(&json!({"content": "hello", "reply": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let sent: Value = res.json().await.unwrap();
    let generation = sent["generation_id"].as_str().unwrap().to_owned();
    // Node 0 made the chat in one of its own shards; after it dies node 1 takes them.
    tokio::time::sleep(Duration::from_millis(20)).await;
    cluster.kill(0);
    cluster.settle().await;
    let url = format!(
        "{}/api/v1/chats/{chat}/generations/{generation}",
        cluster.base(1)
    );
    let res = client
        .get(format!("{url}/events"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let mut events = crate::llm::Events::new(res);
    let last = events.next().await.unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "generation_interrupted");
    assert!(events.next().await.is_none(), "the stream ends after it");
    let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_error(res, StatusCode::GONE, "generation_interrupted").await;
    let never = format!(
        "{}/api/v1/chats/{chat}/generations/{}",
        cluster.base(1),
        uuid::Uuid::now_v7()
    );
    let res = client.get(&never).bearer_auth(&token).send().await.unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "generation_not_found").await;
    // The reply had finished before the node died: both messages are on the path.
    let path = path(&client, &cluster.base(1), &token, &chat).await;
    assert_eq!(path.len(), 2, "{path:?}");
}

/// Cluster mode's requirements are checked before anything starts, each with its own message;
/// and cluster nodes never share stores with a node outside cluster mode, either way round.
#[actix_web::test]
async fn cluster_mode_refuses_what_it_cannot_run_on() {
    use arbor::startup::Application;

    let dir = tempfile::tempdir().unwrap();
    let refused = |s: Settings| async move {
        match Application::build(s).await {
            Ok(_) => panic!("started"),
            Err(e) => format!("{e:#}"),
        }
    };
    let mut sqlite = settings(dir.path().join("sqlite"));
    sqlite.storage.metadata = arbor::config::MetadataBackend::Sqlite;
    sqlite.storage.messages = arbor::config::MessageBackend::Sqlite;
    sqlite.cluster.enabled = true;
    sqlite.cluster.secret = Secret::new(SECRET.into());
    let error = refused(sqlite).await;
    assert!(error.contains("storage.metadata = \"postgres\""), "{error}");

    let mut short = node_settings(dir.path(), &unique_name(), &unique_name());
    short.cluster.secret = Secret::new("short".into());
    let error = refused(short).await;
    assert!(error.contains("cluster.secret"), "{error}");

    // A cluster node keeps a single server out, and a single server a cluster node.
    let (schema, database) = (unique_name(), unique_name());
    let node = start(node_settings(dir.path(), &schema, &database)).await;
    let mut single = node_settings(&dir.path().join("single"), &schema, &database);
    single.cluster.enabled = false;
    let error = refused(single.clone()).await;
    assert!(
        error.contains("another Arbor server is using these stores"),
        "{error}"
    );
    node.stop().await;
    let alone = start(single).await;
    let error = refused(node_settings(&dir.path().join("late"), &schema, &database)).await;
    assert!(
        error.contains("another Arbor server is using these stores"),
        "{error}"
    );
    alone.stop().await;
}

/// Quotas, feedback and share links across nodes: each lives in the shared stores or with the
/// chat's owner, so every node enforces and shows the same.
#[actix_web::test]
async fn quotas_feedback_and_share_links_hold_across_nodes() {
    let cluster = Cluster::start(2).await;
    let client = test_client();
    let (a, b) = (cluster.base(0), cluster.base(1));
    let admin = register(&client, &b, ADMIN).await;
    let user = register(&client, &a, "fair@example.com").await;
    let call = |method: reqwest::Method, url: String, token: &str, body: Option<Value>| {
        let mut req = client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap() }
    };
    use reqwest::Method;
    let on_a = create_chat(&client, &a, &user, "owned by a").await;
    let on_b = create_chat(&client, &b, &user, "owned by b").await;

    // A one-token quota set through node b: the first reply (through b, forwarded to a)
    // finishes and counts; then both nodes refuse, whichever owns the chat.
    let quota = format!("{b}/api/v1/admin/users/fair@example.com/quota");
    let res = call(Method::PUT, quota, &admin, Some(json!({"tokens": 1}))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let reply = json!({"content": "count me", "reply": true});
    let res = call(
        Method::POST,
        format!("{b}/api/v1/chats/{on_a}/messages"),
        &user,
        Some(reply.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().contains_key("x-arbor-forwarded-by"));
    let sent: Value = res.json().await.unwrap();
    let answer = sent["messages"][1]["id"].as_str().unwrap().to_owned();
    // Node a stored the reply and counts it at once; node b reads it within the settings TTL.
    let url = format!("{a}/api/v1/chats/{on_a}/messages");
    let res = call(Method::POST, url, &user, Some(reply.clone())).await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (base, chat) in [(&a, &on_a), (&b, &on_b), (&a, &on_b)] {
        let url = format!("{base}/api/v1/chats/{chat}/messages");
        let res = call(Method::POST, url, &user, Some(reply.clone())).await;
        assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    }

    // Feedback given through b lands with a's actor and shows from both nodes.
    let url = format!("{b}/api/v1/chats/{on_a}/messages/{answer}/feedback");
    let res = call(Method::PUT, url, &user, Some(json!({"rating": "up"}))).await;
    assert_eq!(res.status(), StatusCode::OK);
    for base in [&a, &b] {
        let url = format!("{base}/api/v1/chats/{on_a}/messages/{answer}");
        let message: Value = call(Method::GET, url, &user, None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(message["feedback"]["rating"], "up", "via {base}");
        let stats: Value = call(
            Method::GET,
            format!("{base}/api/v1/admin/stats"),
            &admin,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(stats["feedback"][0]["up"], 1, "via {base}");
    }

    // A link made through b (the snapshot comes from a's actor) is served by both nodes, is
    // imported through b, and once revoked through a is gone from both.
    let url = format!("{b}/api/v1/chats/{on_a}/shares");
    let res = call(Method::POST, url, &user, Some(json!({}))).await;
    let share: Value = json_with(res, StatusCode::CREATED).await;
    let token = share["token"].as_str().unwrap();
    for base in [&a, &b] {
        let res = client
            .get(format!("{base}/shared/{token}"))
            .send()
            .await
            .unwrap();
        let shown: Value = json_with(res, StatusCode::OK).await;
        assert_eq!(shown["messages"][0]["content"], "count me", "via {base}");
    }
    let other = register(&client, &b, "recipient@example.com").await;
    let res = call(
        Method::POST,
        format!("{b}/api/v1/shared/{token}/import"),
        &other,
        Some(json!({})),
    )
    .await;
    let copy = id(&json_with(res, StatusCode::CREATED).await);
    assert_eq!(path(&client, &a, &other, &copy).await.len(), 2);
    let share_id = share["id"].as_str().unwrap();
    let url = format!("{a}/api/v1/chats/{on_a}/shares/{share_id}");
    assert_eq!(
        call(Method::DELETE, url, &user, None).await.status(),
        StatusCode::NO_CONTENT
    );
    for base in [&a, &b] {
        let res = client
            .get(format!("{base}/shared/{token}"))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::NOT_FOUND, "share_not_found").await;
    }

    // Search from either node finds the message in a's chat, naming its branch (node b reads
    // the chat from the stores); export through b is a's document; a backup through b holds
    // both chats; an import through b is searchable from a.
    for base in [&a, &b] {
        let url = format!("{base}/api/v1/search?q=count");
        let found: Value = call(Method::GET, url, &user, None)
            .await
            .json()
            .await
            .unwrap();
        let hits = found["hits"].as_array().unwrap();
        assert!(
            hits.iter().any(|h| h["chat_id"] == on_a.as_str()),
            "via {base}: {found}"
        );
        assert_eq!(hits[0]["branches"][0]["name"], "main", "via {base}");
    }
    let url = format!("{b}/api/v1/chats/{on_a}/export");
    let exported: Value = call(Method::GET, url, &user, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exported["chat"]["id"], on_a.as_str());
    let backup = call(Method::GET, format!("{b}/api/v1/backup"), &user, None).await;
    let backup = backup.text().await.unwrap();
    assert_eq!(backup.lines().count(), 2, "{backup}");
    let url = format!("{b}/api/v1/chats/import?new_ids=true");
    let res = call(Method::POST, url, &other, Some(exported)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let url = format!("{a}/api/v1/search?q=count");
    let found: Value = call(Method::GET, url, &other, None)
        .await
        .json()
        .await
        .unwrap();
    let chats: std::collections::HashSet<&str> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["chat_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        chats.len(),
        2,
        "the imported share's copy and the import: {found}"
    );
}
