//! The membership table: without cluster mode a second server on the same stores refuses to
//! start (two servers sharing stores lose acknowledged writes), names the server in the way, and
//! starts once that one has stopped, died, or stopped sending heartbeats. On the test's backend
//! (SQLite, or PostgreSQL metadata), in-process and as real processes.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use arbor::membership::NodeRecord;
use arbor::Application;
use uuid::Uuid;

use crate::binary::{command, free_port, write_config, Server};
use crate::helpers::*;

async fn refused(settings: &arbor::config::Settings) -> String {
    match Application::build(settings.clone()).await {
        Ok(_) => panic!("a second server started on the same stores"),
        Err(e) => format!("{e:#}"),
    }
}

#[actix_web::test]
async fn a_second_server_on_the_same_stores_is_refused_until_the_first_stops() {
    let app = spawn_app().await;
    let (first, dir) = app.stop().await;
    // The first server again, then a second one on its stores.
    let app = start(first.clone()).await;
    let u = app.register("first@example.com").await;
    let chat = id(&app.create_chat(&u, "kept").await);
    let error = refused(&first).await;
    assert!(
        error.contains("another Arbor server is using these stores")
            && error.contains(&format!(
                "127.0.0.1:{}",
                app.base.rsplit(':').next().unwrap()
            )),
        "{error}"
    );
    // The refused server wrote nothing and took nothing: the first one works on.
    app.say(&u, &chat, "still here").await;
    let (settings, _dir) = app.stop().await;
    // Stopped, the first server left the table: the next one starts at once.
    let app = start(settings).await;
    assert_eq!(app.path(&u, &chat, None).await, ["still here"]);
    app.stop().await;
    drop(dir);
}

/// A server on another machine (a row whose host is not this one) keeps a server out while its
/// heartbeat is fresh, and not once it is older than the TTL.
#[actix_web::test]
async fn a_node_elsewhere_keeps_others_out_until_its_heartbeat_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().to_path_buf());
    s.membership.node_ttl_secs = 2;
    let (_, connections) = arbor::storage::open(&s).await.unwrap();
    let table = connections.membership().unwrap();
    let elsewhere = NodeRecord {
        id: Uuid::now_v7(),
        address: "10.1.2.3:8000".into(),
        host: "another-machine".into(),
        pid: 4242,
        started_at: chrono::Utc::now(),
        cluster: false,
        incarnation: 0,
    };
    let others = table
        .join(
            &elsewhere,
            Duration::from_secs(2),
            std::sync::Arc::new(|_: &NodeRecord| false),
        )
        .await
        .unwrap();
    assert!(others.is_empty());
    let entered = Instant::now();

    let error = refused(&s).await;
    assert!(
        error.contains("10.1.2.3:8000") && error.contains("another-machine"),
        "{error}"
    );
    // A heartbeat keeps it live past the TTL ...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(table
        .heartbeat(elsewhere.id, Duration::from_secs(2))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    refused(&s).await;
    // ... and without one it is dead after the TTL: the server starts and the row is gone.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(entered.elapsed() > Duration::from_secs(4));
    let app = start(s).await;
    let nodes = table.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_ne!(nodes[0].node.id, elsewhere.id);
    assert_eq!(nodes[0].node.pid, std::process::id());
    assert!(!table
        .heartbeat(elsewhere.id, Duration::from_secs(2))
        .await
        .unwrap());
    app.stop().await;
    assert!(table.nodes().await.unwrap().is_empty(), "left on stop");
    connections.close().await;
}

/// Real processes: the second `arbor` exits at once with an error naming the first; after a
/// kill -9 of the first, a new one starts without waiting for the heartbeat to expire (the
/// dead process is on this machine).
#[actix_web::test]
async fn a_second_process_exits_naming_the_first_and_a_killed_one_is_replaced_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().join("data"));
    s.server.port = free_port();
    s.membership.node_ttl_secs = 600;
    let first = Server::start(&s, dir.path()).await;

    let second_dir = tempfile::tempdir().unwrap();
    let mut second = s.clone();
    second.server.port = free_port();
    let config = write_config(&second, second_dir.path());
    let output = command(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another Arbor server is using these stores")
            && stderr.contains(&format!("127.0.0.1:{}", s.server.port)),
        "{stderr}"
    );
    // The first one still serves.
    let res = test_client()
        .get(format!("{}/ready", first.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);

    first.kill();
    let started = Instant::now();
    let replacement = Server::start(&second, second_dir.path()).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(replacement);
}

/// The operator surface: `/api/v1/admin/cluster` lists the membership table (admins only), and
/// `/ready` says the table has this server's recent heartbeat.
#[actix_web::test]
async fn admins_see_the_membership_table_and_readiness_includes_it() {
    let app = spawn_with(|s| {
        s.admin.emails = vec!["ops@example.com".into()];
        s.membership.node_ttl_secs = 3;
    })
    .await;
    let ops = app.register("ops@example.com").await;
    let user = app.register("user@example.com").await;
    // A heartbeat or two first.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let res = app.get(&ops, "/api/v1/admin/cluster").await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let view: serde_json::Value = res.json().await.unwrap();
    assert_eq!(view["node_ttl_secs"], 3);
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{view}");
    let me = &members[0];
    assert_eq!(me["this_node"], true);
    assert_eq!(me["id"], view["node"]);
    assert_eq!(me["pid"], std::process::id());
    let port = app.base.rsplit(':').next().unwrap();
    assert_eq!(me["address"], format!("127.0.0.1:{port}"));
    // Refreshed every second (a third of the TTL), so never older than that by much.
    assert!(me["heartbeat_age_ms"].as_u64().unwrap() < 1500, "{view}");
    let res = app.get(&user, "/api/v1/admin/cluster").await;
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);

    let ready = app.anon_json("/ready").await;
    assert_eq!(ready["membership"], true, "{ready}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\narbor_membership_nodes 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\narbor_membership_heartbeat_failures_total 0\n"));
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("arbor_membership_heartbeat_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age < 1.5, "{age}");
    app.stop().await;
}
