//! Whether this process forked since a lock was taken, so that releasing a
//! lock nobody else can share costs no unlock call.
//!
//! An OFD lock lives as long as its open file description. A handle made by
//! [`crate::Lock::acquire`] owns the only descriptor of its description, so
//! closing it drops the locks at once — unless a forked child got a copy
//! (fork duplicates descriptors; exec closes them, being close-on-exec).
//! A `pthread_atfork` handler counts forks; a release that saw no fork since
//! the acquire just closes. The handler also waits for such a close to
//! finish, so a fork in another thread cannot slip in between the decision
//! and the close.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);
static CLOSING: AtomicBool = AtomicBool::new(false);
static WATCHING: AtomicBool = AtomicBool::new(false);
static REGISTER: Once = Once::new();

extern "C" fn before_fork() {
    FORKS.fetch_add(1, SeqCst);
    // Let a close decided before this fork finish first. Bounded, so that a
    // fork from a signal handler interrupting that close cannot hang.
    for _ in 0..1_000_000 {
        if !CLOSING.load(SeqCst) {
            return;
        }
        std::hint::spin_loop();
    }
}

/// The number of forks so far (starting to count on first use).
pub fn count() -> u64 {
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only touches atomics.
        let rc = unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
        WATCHING.store(rc == 0, SeqCst);
    });
    FORKS.load(SeqCst)
}

/// Runs `close` with no fork able to start meanwhile, telling it whether
/// the process may have forked since `since` (a [`count`]). Where forks
/// cannot be watched, it always may have.
pub fn closing<R>(since: u64, close: impl FnOnce(bool) -> R) -> R {
    struct Held;
    impl Drop for Held {
        fn drop(&mut self) {
            CLOSING.store(false, SeqCst);
        }
    }
    while CLOSING
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_err()
    {
        std::thread::yield_now();
    }
    let _held = Held;
    let forked = !WATCHING.load(SeqCst) || FORKS.load(SeqCst) != since;
    close(forked)
}
