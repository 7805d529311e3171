//! Each thread's recently written pages of the read path, by the state of the tree they were
//! written from.
//!
//! A page's JSON is most of what a resident read costs its chat's actor (about 3 µs for 20
//! messages; BENCHMARKS.md, "Read path"), and clients read the same page again and again: a chat
//! open in a browser, on a phone, polled. The actor keeps what it wrote here, keyed by the
//! tree's revision (`Tree::revision`, new after every change and unique among all trees), and
//! answers the same request for the same revision with the same bytes.
//!
//! - Nothing is invalidated: a change takes a new revision, so a page of an older one is never
//!   asked for again. Old pages go when the thread's pages outgrow their budget, all at once.
//! - The budget (`RegistryConfig::page_cache_bytes`) is per thread that hosts chat actors;
//!   0 turns this off.
//! - The owner check comes first: this is reached only for the chat's owner.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use bytes::Bytes;

use crate::model::{BranchId, IdHasher, MessageId};

/// One page request against one state of one tree.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub revision: u64,
    pub branch: BranchId,
    pub limit: usize,
    pub before: Option<MessageId>,
}

#[derive(Default)]
struct Pages {
    pages: HashMap<PageKey, Bytes, BuildHasherDefault<IdHasher>>,
    bytes: usize,
}

thread_local! {
    static PAGES: RefCell<Pages> = RefCell::default();
}

/// The page written for `key` on this thread, if it is still kept.
pub(crate) fn get(key: &PageKey) -> Option<Bytes> {
    PAGES.with_borrow(|p| p.pages.get(key).cloned())
}

/// Keeps `page` for `key`, within `budget` bytes of pages on this thread.
pub(crate) fn put(key: PageKey, page: &Bytes, budget: usize) {
    if page.len() > budget / 4 {
        return; // Off, or a page that would crowd out the rest.
    }
    PAGES.with_borrow_mut(|p| {
        if p.bytes + page.len() > budget {
            p.pages.clear();
            p.bytes = 0;
        }
        if let Some(old) = p.pages.insert(key, page.clone()) {
            p.bytes -= old.len();
        }
        p.bytes += page.len();
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(revision: u64) -> PageKey {
        PageKey {
            revision,
            branch: BranchId::new(),
            limit: 20,
            before: None,
        }
    }

    #[test]
    fn pages_are_kept_by_key_within_the_budget() {
        let page = Bytes::from(vec![b'x'; 100]);
        let first = key(1);
        put(first, &page, 1_000);
        assert_eq!(get(&first), Some(page.clone()));
        assert_eq!(
            get(&PageKey {
                revision: 2,
                ..first
            }),
            None,
            "another revision"
        );
        assert_eq!(get(&PageKey { limit: 10, ..first }), None, "another limit");
        assert_eq!(get(&key(1)), None, "another branch");
        let on_another_thread = std::thread::spawn(move || get(&first)).join().unwrap();
        assert_eq!(on_another_thread, None);

        // Ten pages fill the budget; the eleventh empties it first.
        let keys: Vec<PageKey> = (2..11).map(key).collect();
        for k in &keys {
            put(*k, &page, 1_000);
        }
        assert!(get(&first).is_some() && keys.iter().all(|k| get(k).is_some()));
        let last = key(11);
        put(last, &page, 1_000);
        assert_eq!(get(&first), None);
        assert_eq!(get(&last), Some(page.clone()));
        assert_eq!(PAGES.with_borrow(|p| (p.pages.len(), p.bytes)), (1, 100));

        // Writing the same key again does not count it twice.
        put(last, &page, 1_000);
        assert_eq!(PAGES.with_borrow(|p| p.bytes), 100);

        // Off, and too big for the budget: not kept.
        put(key(12), &page, 0);
        put(key(13), &page, 399);
        assert_eq!(PAGES.with_borrow(|p| p.pages.len()), 1);
    }
}
