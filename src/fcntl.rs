//! The thin fcntl layer: lock, unlock and test byte ranges. It knows nothing
//! of permissions.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// Which kind of fcntl lock: open-file-description locks (what QEMU uses) or
/// the process-wide POSIX locks of the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `F_OFD_SETLK` / `F_OFD_GETLK`: owned by the open file description.
    Ofd,
    /// `F_SETLK` / `F_GETLK`: owned by the process; any `close()` of the file
    /// in the process drops them.
    Posix,
}

const UNKNOWN: u8 = 0;
const OFD_YES: u8 = 1;
const OFD_NO: u8 = 2;
static OFD: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the kernel has OFD locks (Linux 3.15+), probed once with a
/// harmless F_OFD_GETLK on /dev/null, as QEMU probes. Only where /dev/null
/// cannot be opened is `fd` used; a file system that refuses locks on one
/// image must not decide for every other image.
pub fn ofd_available(fd: BorrowedFd<'_>) -> bool {
    match OFD.load(Ordering::Relaxed) {
        OFD_YES => true,
        OFD_NO => false,
        _ => {
            let null = nix::fcntl::open(
                c"/dev/null",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            );
            let mut fl = flock(libc::F_WRLCK, 0, 1);
            let probe = match &null {
                Ok(null) => fcntl(null.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl)),
                Err(_) => fcntl(fd, FcntlArg::F_OFD_GETLK(&mut fl)),
            };
            // EINVAL is the answer of a kernel without F_OFD_*; any other
            // failure says nothing about OFD support and is not cached.
            match probe {
                Ok(_) => {
                    OFD.store(OFD_YES, Ordering::Relaxed);
                    true
                }
                Err(Errno::EINVAL) => {
                    OFD.store(OFD_NO, Ordering::Relaxed);
                    false
                }
                Err(_) => true,
            }
        }
    }
}

fn flock(ty: libc::c_int, first: u64, len: u64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value (and
    // F_OFD_* require l_pid == 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // Offsets past off_t's range are clamped; callers pass protocol bytes
    // or 0 ("to the end of the file") for the length.
    fl.l_start = libc::off_t::try_from(first).unwrap_or(libc::off_t::MAX);
    fl.l_len = libc::off_t::try_from(len).unwrap_or(0);
    fl
}

/// Runs `call` again while it fails with `EINTR`: a signal arriving during a
/// lock call on a network or FUSE file system (where the call waits for the
/// server) must not turn into a failure.
pub fn retry<T>(mut call: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn set(fd: BorrowedFd<'_>, flavor: Flavor, fl: &libc::flock) -> Result<(), Errno> {
    retry(|| {
        let arg = match flavor {
            Flavor::Ofd => FcntlArg::F_OFD_SETLK(fl),
            Flavor::Posix => FcntlArg::F_SETLK(fl),
        };
        fcntl(fd, arg).map(drop)
    })
}

/// Takes shared read locks on bytes `first .. first+len`. EAGAIN or EACCES
/// mean somebody holds one of them exclusively.
pub fn lock_read(fd: BorrowedFd<'_>, flavor: Flavor, first: u32, len: u32) -> Result<(), Errno> {
    set(fd, flavor, &flock(libc::F_RDLCK, first.into(), len.into()))
}

/// Drops this owner's locks on bytes `first .. first+len`.
pub fn unlock(fd: BorrowedFd<'_>, flavor: Flavor, first: u32, len: u32) -> Result<(), Errno> {
    set(fd, flavor, &flock(libc::F_UNLCK, first.into(), len.into()))
}

/// A lock that would block the one tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// First byte of the blocking lock.
    pub first: u64,
    /// Last byte, `None` for a lock to the end of the file.
    pub last: Option<u64>,
    /// Its owner's pid for a POSIX lock; -1 for an OFD lock.
    pub pid: i32,
    /// Whether it is a write (exclusive) lock.
    pub exclusive: bool,
}

impl Found {
    /// Whether the lock covers `byte`.
    pub fn covers(&self, byte: u64) -> bool {
        self.first <= byte && self.last.is_none_or(|last| byte <= last)
    }
}

/// Could this owner take a lock of type `ty` (`F_RDLCK` or `F_WRLCK`) on
/// `first .. first+len`? `None` if yes, else one lock in the way (not
/// necessarily the lowest). Locks of this owner never count.
pub fn test(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    first: u32,
    len: u32,
    exclusive: bool,
) -> Result<Option<Found>, Errno> {
    test_span(fd, flavor, first.into(), Some(len.into()), exclusive)
}

/// [`test()`] over any span: `len` `None` means from `first` to the end of
/// every possible file (what the kernel calls length 0).
pub fn test_span(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    first: u64,
    len: Option<u64>,
    exclusive: bool,
) -> Result<Option<Found>, Errno> {
    let ty = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    let fl = retry(|| {
        let mut fl = flock(ty, first, len.unwrap_or(0));
        let arg = match flavor {
            Flavor::Ofd => FcntlArg::F_OFD_GETLK(&mut fl),
            Flavor::Posix => FcntlArg::F_GETLK(&mut fl),
        };
        fcntl(fd, arg).map(|_| fl)
    })?;
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    let first = u64::try_from(fl.l_start).unwrap_or(0);
    // The kernel reports l_len 0 for "to the end of the file" and never a
    // negative length.
    let last = u64::try_from(fl.l_len)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| first.saturating_add(n - 1));
    Ok(Some(Found {
        first,
        last,
        pid: fl.l_pid,
        exclusive: fl.l_type == libc::F_WRLCK as libc::c_short,
    }))
}
