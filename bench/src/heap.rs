//! The bench's allocator: mimalloc, counting the bytes of the blocks in use once told to.
//!
//! Resident memory (RSS) is what the memory target is about, but it moves between runs of the
//! same build by more than a size-class step of one allocation per chat (freed pages mimalloc
//! has not returned yet, SQLite's page cache). The blocks in use do not: each allocation counts
//! as the block mimalloc gives it (`mi_usable_size`, its size class), so a change that moves an
//! allocation across a class shows up exactly. Only the measuring process of `memory` counts;
//! everything else pays one relaxed load per allocation.
//!
//! The one module of the workspace with unsafe code: a global allocator cannot be written
//! without it. It forwards every call to mimalloc and only reads block sizes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

use libmimalloc_sys::mi_usable_size;
use mimalloc::MiMalloc;

pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes of blocks allocated minus bytes of blocks freed since counting started: a difference
/// of two readings is the change in what is in use (a block allocated before counting started
/// and freed after counts as the decrease it is).
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Starts counting, for the rest of the process.
pub fn start() {
    COUNTING.store(true, Ordering::SeqCst);
}

/// Bytes in use, relative to when counting started (see [`LIVE`]).
pub fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

fn block(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` is a live block from mimalloc (callers check it is not null).
    unsafe { mi_usable_size(ptr.cast()) as isize }
}

// SAFETY: every call is forwarded to mimalloc unchanged; the counting only reads the blocks'
// sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { MiMalloc.alloc(layout) };
        if COUNTING.load(Ordering::Relaxed) && !ptr.is_null() {
            LIVE.fetch_add(block(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { MiMalloc.alloc_zeroed(layout) };
        if COUNTING.load(Ordering::Relaxed) && !ptr.is_null() {
            LIVE.fetch_add(block(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(block(ptr), Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let counting = COUNTING.load(Ordering::Relaxed);
        let old = if counting { block(ptr) } else { 0 };
        // SAFETY: forwarded with the caller's guarantees.
        let moved = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if counting && !moved.is_null() {
            LIVE.fetch_add(block(moved) - old, Ordering::Relaxed);
        }
        moved
    }
}
