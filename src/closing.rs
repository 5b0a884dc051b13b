//! Closing a descriptor of an image without dropping the caller's POSIX
//! locks.
//!
//! Classic POSIX locks (`F_SETLK`) belong to the process, and the kernel
//! drops all of them on an inode at any `close()` of any descriptor of that
//! inode in the process. libfpl's descriptors are its own, but closing one
//! would still drop, say, a virtlockd-style lease on byte 0 that the calling
//! process holds on the same image. So before a descriptor is closed, one
//! `F_OFD_GETLK` over the whole file asks whether a POSIX lock of this
//! process is on the inode (an OFD test sees them: they have another owner
//! than the descriptor, and report this process's pid). If one is, the
//! descriptor is kept open, holding no lock of libfpl's, and closed by a
//! later close here once the process holds none there any more.
//!
//! Closing an `O_PATH` descriptor never drops POSIX locks (the kernel skips
//! them for such files), so only descriptors open for reading come here.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::fcntl::{self, Flavor};

/// Descriptors kept open because closing them would have dropped the
/// process's POSIX locks. They hold no lock of libfpl's.
static KEPT: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// How many locks of other owners the search steps over before it assumes
/// a lock of this process may be among them (and keeps the descriptor).
const SEARCH_BUDGET: usize = 64;

/// Closes `fd` unless the process holds POSIX locks on its inode; then it is
/// kept open until a later call finds them gone. `known_none`: the caller
/// has just seen (with an OFD test over the whole file) that no lock of this
/// process is on the inode, so no test is needed.
pub fn close(fd: OwnedFd, known_none: bool) {
    close_kept();
    if known_none || !holds_posix_locks(fd.as_fd()) {
        drop(fd);
        return;
    }
    // A lock held by another thread at the time of a fork stays held in the
    // child for ever: never wait for it. Leaking the descriptor keeps the
    // caller's locks, which is what matters.
    match KEPT.try_lock() {
        Ok(mut kept) => kept.push(fd),
        Err(_) => std::mem::forget(fd),
    }
}

/// Closes the kept descriptors whose inode no longer carries a POSIX lock
/// of this process.
fn close_kept() {
    let Ok(mut kept) = KEPT.try_lock() else {
        return;
    };
    if kept.is_empty() {
        return;
    }
    kept.retain(|fd| holds_posix_locks(fd.as_fd()));
}

/// Whether this process (may) hold a POSIX lock somewhere on the inode of
/// `fd`. Locks of other owners are stepped over, splitting the file around
/// each; past [`SEARCH_BUDGET`] of them the answer is yes, to be safe.
/// Where the kernel has no OFD locks nothing can be told (the POSIX test
/// does not see this process's own locks): no.
pub fn holds_posix_locks(fd: BorrowedFd<'_>) -> bool {
    let me = std::process::id() as i32;
    let mut spans: Vec<(u64, Option<u64>)> = vec![(0, None)];
    let mut budget = SEARCH_BUDGET;
    while let Some((first, last)) = spans.pop() {
        let len = last.map(|l| l - first + 1);
        let found = match fcntl::test_span(fd, Flavor::Ofd, first, len, true) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            // A file system that refuses lock tests refuses POSIX locks too.
            Err(_) => return false,
        };
        if found.pid == me {
            return true;
        }
        budget -= 1;
        if budget == 0 {
            return true;
        }
        let lo = found.first.max(first);
        if lo > first {
            spans.push((first, Some(lo - 1)));
        }
        if let Some(hi) = found.last {
            if last.is_none_or(|l| hi < l) {
                spans.push((hi + 1, last));
            }
        }
    }
    false
}
