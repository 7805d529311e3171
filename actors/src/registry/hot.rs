//! Each thread's recently used chat handles, in front of the registry's moka cache.
//!
//! A moka lookup is about 1 µs of the read path's 20 (BENCHMARKS.md, "Read path"): a probe into a
//! table another thread last wrote, a read recorded for the cache's access order, and, every
//! 64 reads, the cache's housekeeping run inline. A request for a chat that this thread looked
//! up a moment ago finds its handle here instead, in a small map of the thread's own.
//!
//! The cache stays the authority on which chats are resident:
//! - an entry is trusted for `refresh` after the cache last answered for it. Past that, the
//!   lookup goes to the cache again, which records the access: idle eviction and the size
//!   bound's order see every chat in use at least that often;
//! - a handle whose actor has stopped (evicted, deleted, shut down) answers `Closed`, and the
//!   registry drops its entry before it asks the cache again (`Chats::call`);
//! - entries belong to one registry: a thread may serve several (tests do), over the same
//!   chats.
//!
//! An entry holds a clone of the handle, so an actor that stopped keeps its handle (not its
//! tree) until the map is emptied: it is, whenever it reaches `CAPACITY` entries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use crate::chat::ChatHandle;
use crate::model::{ChatId, IdHasher};

/// Entries per thread at most; the map is emptied when it is full.
const CAPACITY: usize = 4096;

struct Entry {
    handle: ChatHandle,
    /// When the cache last answered for this chat on this thread.
    seen: Instant,
}

type Hot = HashMap<(u64, ChatId), Entry, BuildHasherDefault<IdHasher>>;

thread_local! {
    static HOT: RefCell<Hot> = RefCell::default();
}

/// The handle the cache gave this thread for `chat` less than `refresh` ago.
pub(crate) fn get(registry: u64, chat: ChatId, refresh: Duration) -> Option<ChatHandle> {
    HOT.with_borrow(|hot| {
        let entry = hot.get(&(registry, chat))?;
        (entry.seen.elapsed() < refresh).then(|| entry.handle.clone())
    })
}

/// Remembers the handle the cache just gave for `chat`.
pub(crate) fn put(registry: u64, chat: ChatId, handle: &ChatHandle) {
    HOT.with_borrow_mut(|hot| {
        if hot.len() >= CAPACITY {
            hot.clear();
        }
        let entry = Entry {
            handle: handle.clone(),
            seen: Instant::now(),
        };
        hot.insert((registry, chat), entry);
    });
}

/// Drops this thread's entry for `chat` (its actor has stopped).
pub(crate) fn forget(registry: u64, chat: ChatId) {
    HOT.with_borrow_mut(|hot| hot.remove(&(registry, chat)));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_answers_for_its_registry_and_chat_until_its_refresh() {
        let chat = ChatId::new();
        let handle = ChatHandle::detached();
        let long = Duration::from_secs(60);
        assert!(get(1, chat, long).is_none(), "an empty map");
        put(1, chat, &handle);
        assert!(get(1, chat, long).is_some_and(|h| h.same_actor(&handle)));
        assert!(get(2, chat, long).is_none(), "another registry's entry");
        assert!(get(1, ChatId::new(), long).is_none(), "another chat");
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            get(1, chat, Duration::from_millis(1)).is_none(),
            "past its refresh"
        );
        assert!(
            std::thread::spawn(move || get(1, chat, long).is_none())
                .join()
                .unwrap(),
            "another thread's map"
        );

        // Forgetting another registry's entry leaves this one.
        put(2, chat, &ChatHandle::detached());
        forget(2, chat);
        assert!(get(1, chat, long).is_some_and(|h| h.same_actor(&handle)));
        forget(1, chat);
        assert!(get(1, chat, long).is_none());
    }

    #[test]
    fn a_full_map_is_emptied() {
        let handle = ChatHandle::detached();
        let first = ChatId::new();
        put(7, first, &handle);
        for _ in 1..CAPACITY {
            put(7, ChatId::new(), &handle);
        }
        assert!(get(7, first, Duration::from_secs(60)).is_some());
        let last = ChatId::new();
        put(7, last, &handle);
        assert!(get(7, first, Duration::from_secs(60)).is_none());
        assert!(get(7, last, Duration::from_secs(60)).is_some());
        assert_eq!(HOT.with_borrow(|hot| hot.len()), 1);
    }
}
