#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use super::handle::HandleInner;
use super::*;
use crate::model::ChatId;

/// tokio rounds a task up to 128 bytes, and a resident chat's task is this actor inside
/// actix's context: heaptrack measured 768 bytes a task at 320 bytes of actor, 896 at 416
/// (BENCHMARKS.md, "Memory per idle chat"). At 224 bytes (the cluster fence, inline) the memory
/// scenario measured 129 B more per chat in allocator blocks: the next class. The fence lives in
/// the probe's padding instead.
#[test]
fn a_chat_actor_stays_within_its_task_size_class() {
    assert!(std::mem::size_of::<ChatActor>() <= 200);
}

/// Every resident chat pays for these: the cache entry and the actor hold the handle
/// inline, and its allocation (address, instance and probe, with the reference counts)
/// stays within mimalloc's 112-byte class.
#[test]
fn a_handle_is_one_pointer_to_one_allocation_within_its_size_class() {
    assert_eq!(std::mem::size_of::<ChatHandle>(), 8);
    assert!(std::mem::size_of::<HandleInner>() + 16 <= 112);
}

/// An actor that was never built (its arbiter had stopped) must not leave an entry behind:
/// the chat's next activation, and shutdown, would wait for it forever.
#[actix_rt::test]
async fn an_unclaimed_birth_leaves_and_wakes_whoever_waits() {
    let liveness = Arc::new(Liveness::default());
    let chat = ChatId::new();
    let birth = liveness.born(chat, 1);
    let waiter = {
        let liveness = liveness.clone();
        actix_rt::spawn(async move { liveness.until(|live| !live.contains_key(&chat)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "waited past a live entry");
    drop(birth);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();

    // A claimed entry stays until its actor goes, and only its own instance removes it.
    liveness.born(chat, 2).claim();
    assert!(liveness.live.lock().unwrap().contains_key(&chat));
    liveness.gone(chat, 3, true);
    assert!(liveness.live.lock().unwrap().contains_key(&chat));
    liveness.gone(chat, 2, true);
    assert!(liveness.live.lock().unwrap().is_empty());
    assert!(
        !liveness.take_unflushed(chat),
        "an unclaimed birth queued nothing"
    );
}

/// An actor dropped without its final flush marks its chat, once, for the next activation.
#[test]
fn an_actor_gone_unflushed_is_remembered_until_its_chat_activates() {
    let liveness = Arc::new(Liveness::default());
    let (chat, other) = (ChatId::new(), ChatId::new());
    liveness.born(chat, 1).claim();
    liveness.born(other, 2).claim();
    liveness.gone(chat, 1, false);
    liveness.gone(other, 2, true);
    assert!(liveness.live.lock().unwrap().is_empty());
    assert!(!liveness.take_unflushed(other));
    assert!(liveness.take_unflushed(chat));
    assert!(!liveness.take_unflushed(chat), "taken once");
}
