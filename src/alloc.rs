//! A small per-thread cache in front of the C library's allocator.
//!
//! musl's malloc serialises every allocation and free on one process-wide lock. The proxy makes
//! four allocations per request (rustls's record buffers: ~6 KiB, ~6 KiB, ~4 KiB, ~0.3 KiB),
//! and with many connection threads the lock convoys: threads queue on it, sleep and are woken
//! one by one: at 16 connections the proxy served 1.8 times as many requests without it
//! (bench/RESULTS.md, section 0). Each connection thread allocates and frees those buffers
//! itself, so a handful of blocks kept per thread serves nearly all of them without the lock.
//!
//! Bounded: only blocks of 257 B to 8 KiB (rounded up to one of 20 sizes) are kept, at most
//! [`PER_CLASS`] of a size and [`MAX_CACHED`] bytes per thread, and only by as many threads at a
//! time as [`MAX_CACHED_ALL`] has room for; a thread gives its blocks and its room back when it
//! exits and when it goes quiet ([`give_back`]). Everything else goes straight through.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The proxy's global allocator (declared in its main, so the multi-call binary has it too).
pub struct ThreadCache;

/// Size classes above 256 B: four steps per doubling up to 8 KiB (320, 384, 448, 512, 640, …,
/// 6144, 7168, 8192), so that a long-lived block is at most a quarter larger than asked for.
/// Smaller blocks are not cached: they are the many long-lived ones (names, counters), and no
/// request needs one.
const MIN_SHIFT: u32 = 8; // above 256 B
const MAX_SHIFT: u32 = 13; // 8 KiB
const STEPS: usize = 4;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT) as usize * STEPS;
const MAX_SIZE: usize = 1 << MAX_SHIFT;
/// Blocks kept per size class and thread.
const PER_CLASS: u8 = 4;
/// Bytes kept per thread in all: what one request frees and the next allocates again, not more.
const MAX_CACHED: usize = 32 << 10;
/// Bytes all threads together may keep: room for 64 busy connections' caches, more than the
/// CPUs can serve at once. Without it 1,000 busy connections held 1,000 caches: RSS 75 MiB, over
/// the pod's 64 MiB limit, against 36 MiB with musl's malloc alone (bench/RESULTS.md).
const MAX_CACHED_ALL: usize = 2 << 20;
/// Of MAX_CACHED_ALL, what the caching threads have taken: MAX_CACHED each.
static RESERVED: AtomicUsize = AtomicUsize::new(0);
/// malloc's alignment: larger alignments go straight through.
const MALLOC_ALIGN: usize = 16;

thread_local! {
    // No destructors here (plain Cells): registering one could allocate inside the allocator.
    static HEADS: [Cell<*mut u8>; CLASSES] = const { [const { Cell::new(null_mut()) }; CLASSES] };
    static COUNTS: [Cell<u8>; CLASSES] = const { [const { Cell::new(0) }; CLASSES] };
    static CACHED: Cell<usize> = const { Cell::new(0) };
    static STATE: Cell<u8> = const { Cell::new(UNSET) };
}

/// The thread's exit hook is not armed yet.
const UNSET: u8 = 0;
/// Armed, and holding MAX_CACHED bytes of room in RESERVED.
const CACHING: u8 = 1;
/// The thread is exiting (or has no exit hook): no caching, nothing left behind.
const OFF: u8 = 2;
/// Armed, holding no room (none was left, or it went quiet): it asks again at its next block.
const WAITING: u8 = 3;

/// The size class of a layout, if blocks of it are cached.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size <= 1 << MIN_SHIFT || size > MAX_SIZE || layout.align() > MALLOC_ALIGN {
        return None;
    }
    // size is in (2^k, 2^(k+1)]: the step up from 2^k that holds it.
    let k = (size - 1).ilog2();
    let step = 1usize << (k - 2);
    let i = (size - (1 << k)).div_ceil(step);
    Some((k - MIN_SHIFT) as usize * STEPS + (i - 1))
}

fn class_size(class: usize) -> usize {
    let k = MIN_SHIFT as usize + class / STEPS;
    let i = class % STEPS + 1;
    (1 << k) + i * (1 << (k - 2))
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: 320 B to 8 KiB, a multiple of 64, with malloc's alignment.
    unsafe { Layout::from_size_align_unchecked(class_size(class), MALLOC_ALIGN) }
}

/// A thread-exit hook: pthread key destructors run as the thread ends, while its thread-locals
/// are still there.
fn exit_key() -> Option<libc::pthread_key_t> {
    static KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();
    *KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a valid out-pointer and an extern "C" destructor.
        (unsafe { libc::pthread_key_create(&mut key, Some(at_thread_exit)) } == 0).then_some(key)
    })
}

extern "C" fn at_thread_exit(_: *mut libc::c_void) {
    #[cfg(test)]
    tests::GIVEN_BACK_AT_EXIT.fetch_add(cached_bytes(), Ordering::SeqCst);
    drop_cache(OFF);
}

/// Arms this thread's exit hook; false if it cannot be (the thread must not cache then).
fn arm_exit_hook() -> bool {
    exit_key().is_some_and(|k| {
        // SAFETY: a key from pthread_key_create; any non-null value arms it.
        unsafe { libc::pthread_setspecific(k, std::ptr::dangling::<libc::c_void>()) == 0 }
    })
}

/// Whether this thread caches: the first time, arms its exit hook; then takes room in RESERVED
/// if there is any.
fn caching() -> bool {
    STATE
        .try_with(|s| match s.get() {
            CACHING => true,
            OFF => false,
            UNSET if !arm_exit_hook() => {
                s.set(OFF);
                false
            }
            _ => {
                let room = take_room();
                s.set(if room { CACHING } else { WAITING });
                room
            }
        })
        .unwrap_or(false)
}

/// Takes MAX_CACHED bytes of the process-wide room, if that much is left. When none is, this is
/// a read of a line nobody writes: threads waiting for room do not slow each other.
fn take_room() -> bool {
    let mut now = RESERVED.load(Ordering::Relaxed);
    loop {
        if now + MAX_CACHED > MAX_CACHED_ALL {
            return false;
        }
        match RESERVED.compare_exchange_weak(
            now,
            now + MAX_CACHED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
}

/// Gives this thread's cached blocks back to the C library, and its room to other threads: a
/// thread that goes quiet (a watch between events) keeps nothing it is not using.
pub fn give_back() {
    drop_cache(WAITING);
}

/// Frees the cached blocks and gives back the thread's room, if it held any; a caching thread
/// becomes `then` (WAITING: it may cache again; OFF: it is exiting and never will).
fn drop_cache(then: u8) {
    let held = STATE.try_with(|s| {
        let held = s.get() == CACHING;
        if held || then == OFF {
            s.set(then);
        }
        held
    });
    free_cached();
    if held == Ok(true) {
        RESERVED.fetch_sub(MAX_CACHED, Ordering::Relaxed);
    }
}

fn free_cached() {
    let _ = HEADS.try_with(|heads| {
        for (class, head) in heads.iter().enumerate() {
            let mut p = head.replace(null_mut());
            while !p.is_null() {
                // SAFETY: every cached block holds the next one's address in its first bytes.
                let next = unsafe { p.cast::<*mut u8>().read() };
                // SAFETY: the block came from System with this class's layout.
                unsafe { System.dealloc(p, class_layout(class)) };
                p = next;
            }
        }
    });
    let _ = COUNTS.try_with(|c| c.iter().for_each(|n| n.set(0)));
    let _ = CACHED.try_with(|c| c.set(0));
}

/// Bytes this thread holds in its cache.
pub fn cached_bytes() -> usize {
    CACHED.try_with(Cell::get).unwrap_or(0)
}

fn take(class: usize) -> *mut u8 {
    HEADS
        .try_with(|heads| {
            let p = heads[class].get();
            if !p.is_null() {
                // SAFETY: a cached block holds the next one's address.
                heads[class].set(unsafe { p.cast::<*mut u8>().read() });
                COUNTS.with(|c| c[class].set(c[class].get() - 1));
                CACHED.with(|c| c.set(c.get() - class_layout(class).size()));
            }
            p
        })
        .unwrap_or(null_mut())
}

/// Keeps a block if there is room; false if the caller must free it.
fn keep(p: *mut u8, class: usize) -> bool {
    let size = class_layout(class).size();
    HEADS
        .try_with(|heads| {
            let full = COUNTS.with(|c| c[class].get() >= PER_CLASS)
                || CACHED.with(|c| c.get() + size > MAX_CACHED);
            if full {
                return false;
            }
            // SAFETY: the block is at least 320 bytes and 16-aligned: room for a pointer.
            unsafe { p.cast::<*mut u8>().write(heads[class].get()) };
            heads[class].set(p);
            COUNTS.with(|c| c[class].set(c[class].get() + 1));
            CACHED.with(|c| c.set(c.get() + size));
            true
        })
        .unwrap_or(false)
}

// SAFETY: blocks of a class are always allocated and freed with that class's layout; other
// layouts go to System unchanged, so every block is freed as it was allocated.
unsafe impl GlobalAlloc for ThreadCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                let p = if caching() { take(class) } else { null_mut() };
                if p.is_null() {
                    System.alloc(class_layout(class))
                } else {
                    p
                }
            }
            None => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            return System.alloc_zeroed(layout);
        }
        let p = self.alloc(layout);
        if !p.is_null() {
            p.write_bytes(0, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => {
                if !(caching() && keep(ptr, class)) {
                    System.dealloc(ptr, class_layout(class));
                }
            }
            None => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => System.realloc(ptr, layout, new_size),
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) static GIVEN_BACK_AT_EXIT: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_thread_gives_its_blocks_back_as_it_exits_and_caches_nothing_after() {
        let before = GIVEN_BACK_AT_EXIT.load(Ordering::SeqCst);
        std::thread::spawn(|| unsafe {
            let a = ThreadCache;
            let l = layout(1000, 8);
            let p = a.alloc(l);
            a.dealloc(p, l);
            assert_eq!(cached_bytes(), 1024);
        })
        .join()
        .unwrap();
        // Other tests' threads may exit meanwhile: at least this one's 1,024 bytes came back.
        let given = GIVEN_BACK_AT_EXIT.load(Ordering::SeqCst) - before;
        assert!(given >= 1024, "{given} bytes given back at thread exit");
        // After the hook, a thread no longer caches: what it frees goes straight back.
        at_thread_exit(null_mut());
        unsafe {
            let a = ThreadCache;
            let l = layout(1000, 8);
            a.dealloc(a.alloc(l), l);
        }
        assert_eq!(cached_bytes(), 0);
    }

    #[test]
    fn all_threads_together_keep_at_most_the_process_wide_bound() {
        // 1,000 busy connections must not hold 1,000 caches (the pod's limit is 64 MiB): only
        // as many threads as MAX_CACHED_ALL has room for cache (MAX_CACHED bytes at most each),
        // the others go straight to malloc; an allowance comes back when its thread exits.
        let room = MAX_CACHED_ALL / MAX_CACHED;
        let threads = 2 * room;
        let all_freed = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        let caching = std::sync::Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (all_freed, caching) = (all_freed.clone(), caching.clone());
                std::thread::spawn(move || unsafe {
                    let a = ThreadCache;
                    let l = layout(6144, 8);
                    a.dealloc(a.alloc(l), l);
                    if cached_bytes() > 0 {
                        caching.fetch_add(1, Ordering::SeqCst);
                    }
                    // Holding its room until every thread has asked for one.
                    all_freed.wait();
                })
            })
            .collect();
        all_freed.wait();
        let caching = caching.load(Ordering::SeqCst);
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(
            caching <= room,
            "{caching} of {threads} threads cache: up to {} bytes, over {MAX_CACHED_ALL}",
            caching * MAX_CACHED
        );
        // Other tests' threads may hold an allowance meanwhile: the rest went to these.
        assert!(
            caching >= room - 8,
            "only {caching} of {threads} threads cache"
        );
        std::thread::spawn(|| unsafe {
            let a = ThreadCache;
            let l = layout(6144, 8);
            a.dealloc(a.alloc(l), l);
            assert_eq!(
                cached_bytes(),
                6144,
                "no allowance came back as the threads exited"
            );
        })
        .join()
        .unwrap();
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_cover_257_bytes_to_8_kib_wasting_at_most_a_quarter() {
        assert_eq!(class_of(layout(1, 1)), None);
        assert_eq!(class_of(layout(256, 8)), None);
        assert_eq!(class_of(layout(257, 8)), Some(0));
        assert_eq!(class_size(class_of(layout(257, 8)).unwrap()), 320);
        assert_eq!(class_size(class_of(layout(267, 8)).unwrap()), 320);
        assert_eq!(class_size(class_of(layout(4195, 8)).unwrap()), 5120);
        assert_eq!(class_size(class_of(layout(6144, 8)).unwrap()), 6144);
        assert_eq!(class_of(layout(8192, 16)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(8193, 8)), None);
        assert_eq!(class_of(layout(64, 32)), None);
        let mut last = 0;
        for class in 0..CLASSES {
            let size = class_size(class);
            assert!(size > last && size % 64 == 0, "class {class}: {size}");
            assert_eq!(class_of(class_layout(class)), Some(class));
            last = size;
        }
        assert_eq!(last, MAX_SIZE);
        for size in 257..=MAX_SIZE {
            let c = class_size(class_of(layout(size, 1)).unwrap());
            assert!(c >= size && c * 4 <= size * 5, "{size} -> {c}");
        }
    }

    #[test]
    fn a_freed_block_is_served_again_and_the_cache_stays_bounded() {
        std::thread::spawn(|| unsafe {
            let a = ThreadCache;
            let l = layout(6144, 8);
            let p = a.alloc(l);
            p.write_bytes(0xAB, 6144);
            a.dealloc(p, l);
            assert_eq!(cached_bytes(), 6144);
            // The same block, for any size of its class; zeroed when asked.
            let q = a.alloc_zeroed(layout(5500, 8));
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, 5500).iter().all(|&b| b == 0));
            assert_eq!(cached_bytes(), 0);
            // Many frees: no more than the bounds are kept.
            let many: Vec<*mut u8> = (0..10).map(|_| a.alloc(l)).collect();
            many.iter().for_each(|&p| a.dealloc(p, l));
            assert_eq!(cached_bytes(), PER_CLASS as usize * 6144);
            assert!(PER_CLASS as usize * 6144 <= MAX_CACHED);
            let small: Vec<*mut u8> = (0..10).map(|_| a.alloc(layout(300, 8))).collect();
            small.iter().for_each(|&p| a.dealloc(p, layout(300, 8)));
            assert!(cached_bytes() <= MAX_CACHED, "{}", cached_bytes());
            a.dealloc(q, layout(5500, 8));
            give_back();
            assert_eq!(cached_bytes(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_beyond() {
        std::thread::spawn(|| unsafe {
            let a = ThreadCache;
            let mut size = 100;
            let mut p = a.alloc(layout(size, 8));
            for i in 0..size {
                p.add(i).write(i as u8);
            }
            // Within a class, across classes, out of the cached sizes and back.
            for new in [200, 300, 5000, 20000, 7000, 150] {
                p = a.realloc(p, layout(size, 8), new);
                assert!(!p.is_null());
                let kept = size.min(new).min(100);
                for i in 0..kept {
                    assert_eq!(p.add(i).read(), i as u8, "byte {i} after {size} -> {new}");
                }
                size = new;
            }
            a.dealloc(p, layout(size, 8));
            give_back();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn alignment_above_mallocs_goes_straight_through() {
        unsafe {
            let a = ThreadCache;
            let l = layout(512, 64);
            let p = a.alloc(l);
            assert_eq!(p as usize % 64, 0);
            let before = cached_bytes();
            a.dealloc(p, l);
            assert_eq!(cached_bytes(), before);
        }
    }
}
