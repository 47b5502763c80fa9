//! Gives a quiet connection thread's unused stack pages back to the kernel.
//!
//! A connection thread's deepest moment is early — the TLS handshake to the API server, parsing
//! and checking the request — and every stack page it touched then stays resident for the life of
//! the thread. A watch then waits, often for minutes, a few frames deep: with 1,000 watches
//! those dead pages are most of the proxy's memory. Everything below the stack pointer is dead by
//! the ABI, so it can be dropped; the next call that reaches it gets zeroed pages again.

/// Pages left alone below the caller's frame: the x86-64 red zone (128 bytes) and the frames of
/// the calls that follow at once (poll, a few small functions) stay resident.
const KEEP_BELOW: usize = 1 << 10;

/// Drops the pages of this thread's stack that lie below the current frame. Returns the bytes
/// given back (0 if the stack could not be found; nothing is lost then but memory).
#[inline(never)]
pub(super) fn release_unused() -> usize {
    let Some(low) = stack_low() else { return 0 };
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let page = page_size();
    let start = low.next_multiple_of(page);
    let end = sp.saturating_sub(KEEP_BELOW) / page * page;
    if end <= start {
        return 0;
    }
    // SAFETY: [start, end) lies inside this thread's own stack mapping, entirely below the live
    // frames (the stack grows down); MADV_DONTNEED on private anonymous memory only makes the
    // next touch of those pages see zeros, which a frame built there later writes first.
    let done =
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if done == 0 {
        end - start
    } else {
        0
    }
}

/// The lowest address of this thread's stack (its usable part, above the guard page).
fn stack_low() -> Option<usize> {
    // SAFETY: the attribute object is initialised by pthread_getattr_np and destroyed once; the
    // out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (got == 0 && !addr.is_null()).then_some(addr as usize)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches `depth` KiB of stack below the caller, then returns (those frames are dead).
    #[inline(never)]
    fn touch(depth: usize) -> u8 {
        let mut buf = [0u8; 1024];
        std::hint::black_box(&mut buf);
        buf[0] = depth as u8;
        if depth > 1 {
            buf[1] = touch(depth - 1);
        }
        std::hint::black_box(buf)[0]
    }

    #[test]
    fn gives_back_what_a_deep_call_left_and_the_thread_goes_on() {
        let t = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                touch(64);
                let freed = release_unused();
                // The stack still works, down to the same depth, after the pages went.
                let again = touch(64);
                (freed, again, release_unused())
            })
            .expect("spawn a test thread");
        let (freed, again, freed_again) = t.join().expect("the thread runs to the end");
        assert!(
            freed >= 48 << 10,
            "only {freed} bytes given back after 64 KiB of frames"
        );
        assert_eq!(again, 64);
        assert!(
            freed_again >= 48 << 10,
            "second release gave back {freed_again}"
        );
    }
}
