//! The C ABI (`include/fpl.h`): a skin over the Rust API. Each function
//! checks its pointers, validates its integers, calls the Rust API and
//! converts the result. ABI.md is the contract.
//!
//! Conventions for every function, repeated in the header where it matters:
//! a fallible function returns 0 or a negative errno (`-EAGAIN` for a lock
//! conflict, `-EINVAL` for a bad argument, else the OS error); its last
//! argument `fpl_error *err` may be NULL and, when not, is always written
//! (zeroed on success). Out-parameters are written only on success. Nothing
//! is printed, the process is never aborted, and a panic becomes `-EIO`.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use crate::chain::{self, Format, Role};
use crate::chain_lock::ChainLock;
use crate::error::Error;
use crate::lock::{self, Lock, Options};
use crate::panic;
use crate::perm::PermSet;
use crate::protocol::Request;
use crate::query::{self, Inspect};

/// Permission "consistent read": bytes 100 / 200 (QEMU's `BLK_PERM_CONSISTENT_READ`).
pub const FPL_PERM_CONSISTENT_READ: u32 = 0x01;
/// Permission "write": bytes 101 / 201 (`BLK_PERM_WRITE`).
pub const FPL_PERM_WRITE: u32 = 0x02;
/// Permission "write unchanged": bytes 102 / 202 (`BLK_PERM_WRITE_UNCHANGED`).
/// In strict mode asking for it means asking for write, and not sharing it
/// means not sharing write.
pub const FPL_PERM_WRITE_UNCHANGED: u32 = 0x04;
/// Permission "resize": bytes 103 / 203 (`BLK_PERM_RESIZE`). In strict mode
/// resize implies write.
pub const FPL_PERM_RESIZE: u32 = 0x08;
/// All four permissions. Bits outside it are refused with `-EINVAL`.
pub const FPL_PERM_ALL: u32 = 0x0f;

/// Flag for fpl_acquire, fpl_acquire_fd, fpl_update, fpl_check: lock and
/// test exactly what QEMU would for (perm, shared). Without it the strict
/// rules for new software apply: never lock 102; 102 held by others counts
/// as write; not sharing write locks 201, 202 and 203; resize needs write.
pub const FPL_FLAG_EXACT: u32 = 0x01;
/// Flag for fpl_acquire, fpl_acquire_fd, fpl_check: where the kernel lacks
/// OFD locks, use process-wide POSIX locks instead of failing with
/// `-ENOLCK`. Hazard: any close() of any descriptor of the image anywhere in
/// the process then silently drops the locks, and two handles in one process
/// never conflict. Ignored by fpl_update (a handle keeps its kind of lock).
pub const FPL_FLAG_ALLOW_POSIX: u32 = 0x02;

/// Flag for fpl_acquire, fpl_acquire_fd, fpl_update, fpl_check: on a
/// conflict, do not look for the process holding the byte (ERR's holder_pid
/// stays -1 and the message names no holder), so a refusal costs a few
/// fcntl calls and no walk of /proc. Without it the walk runs after the
/// rollback (nothing this call took is held by then), takes about 4 µs per
/// descriptor on the host and stops after 1 s. A caller taking several
/// locks sets it, releases what it holds, then asks fpl_query who holds the
/// image.
pub const FPL_FLAG_NO_HOLDER_LOOKUP: u32 = 0x10;

/// Flag for fpl_acquire, fpl_check, fpl_update and fpl_chain: act on every
/// file of the image as QEMU opens it (the image, its qcow2 data file, its
/// backing chain and their data files), each with the bytes its role gets
/// (see fpl_chain), all or nothing. Refused by fpl_acquire_fd (-EINVAL):
/// backing names resolve against the image's path.
pub const FPL_FLAG_CHAIN: u32 = 0x04;

/// Flag for fpl_acquire, fpl_check and fpl_update (with FPL_FLAG_CHAIN:
/// any member): also refuse, with `-EBUSY`, while another process has the
/// image open and holds none of its bytes (QEMU with locking=off, an
/// incoming migration's destination before it activates); ERR's message
/// names it. The locks are taken (an update's: prepared) first, then one
/// walk of /proc looks for openers, and everything is rolled back if one
/// is found: a QEMU starting meanwhile meets the locks. Not seen: a
/// process opening the image after the walk without locks (locks are
/// advisory). Refused beside for that instant: a process that has just
/// opened the image and is about to lock it, or one inspecting it
/// (fpl_query's own open lasts microseconds). This process's descriptors
/// never count. For a block device, a process using the device through
/// another device node (FPL_HOLDER_OTHER_NODE) is refused beside too,
/// whether or not it locks its own node. fpl_acquire_fd accepts it too.
pub const FPL_FLAG_NO_UNLOCKED_OPENERS: u32 = 0x08;

/// Flag for fpl_query: also find the processes holding the bytes.
pub const FPL_QUERY_HOLDERS: u32 = 0x01;
/// Flag for fpl_query and fpl_query_many: also list the processes that
/// have the image open and hold none of its bytes, flagged
/// FPL_HOLDER_NO_LOCKS (with `access`), found in the same walk of /proc as
/// the holders (which then runs for a free image too). This process is
/// never listed. Counted in n_holders like holders. For a block device,
/// descriptors of other device nodes of the same device are listed too
/// (FPL_HOLDER_OTHER_NODE).
pub const FPL_QUERY_OPENERS: u32 = 0x02;

/// fpl_status.flags: byte 104 or 204 is held (QEMU <= 6.2's graph-mod).
pub const FPL_STATUS_LEGACY: u32 = 0x01;
/// fpl_status.flags: byte 0 is held (a libvirt virtlockd lease).
pub const FPL_STATUS_LIBVIRT: u32 = 0x02;
/// fpl_status.flags: holders may be missing from the list. Set when some
/// held byte has no holder found while some process could not be inspected
/// (another user's, without privilege; a sandbox's PID 1). A process that
/// cannot be inspected but cannot matter (every held byte has a holder
/// listed) does not set it. It speaks of held bytes only: openers
/// (FPL_QUERY_OPENERS) are found among the processes this one may inspect,
/// and one that could not be inspected is not reported (as an unprivileged
/// caller, most processes; as root, a sandbox's PID 1). Never makes a
/// query fail.
pub const FPL_STATUS_HOLDERS_PARTIAL: u32 = 0x04;

/// fpl_holder.access: the descriptor was opened for reading.
pub const FPL_ACCESS_READ: u32 = 0x01;
/// fpl_holder.access: the descriptor was opened for writing.
pub const FPL_ACCESS_WRITE: u32 = 0x02;
/// fpl_holder.flags: an opener, holding none of the image's bytes on any
/// descriptor (listed with FPL_QUERY_OPENERS); its perm and unshared are 0.
pub const FPL_HOLDER_NO_LOCKS: u32 = 0x01;
/// fpl_holder.flags: a holder named by inference, not seen holding. The
/// image's file system keeps its locks out of /proc (FUSE file systems that
/// lock on their server, as GlusterFS's client does: no lock line in any
/// fdinfo, not even the holder's own), bytes are held that no lock line
/// accounts for, and this process has the image open: a lock lives only as
/// long as a descriptor of its file, so a holder on this host is among such
/// processes. perm and unshared are then every byte unaccounted for (with
/// several inferred holders, which holds which cannot be told); the
/// process may also be a mere opener while the real holder is on another
/// host. Listed with FPL_QUERY_HOLDERS (no need for FPL_QUERY_OPENERS).
pub const FPL_HOLDER_INFERRED: u32 = 0x02;
/// fpl_holder.flags, with FPL_HOLDER_NO_LOCKS: the descriptor is another
/// device node of the image's block device (same st_rdev, another inode: a
/// container's own /dev, a node made with mknod). Locks belong to a node's
/// inode, so whatever it locks is invisible through the image's node, and
/// it is listed as an opener even when it locks its own node. Its path, in
/// its own mount namespace, is the link /proc/PID/fd/FD. Set only for a
/// block device image.
pub const FPL_HOLDER_OTHER_NODE: u32 = 0x04;
/// fpl_holder.flags, with FPL_HOLDER_OTHER_NODE: the descriptor holds
/// protocol bytes on its own node (a QEMU with locking on, using that
/// node); perm and unshared stay 0, as they count the image's bytes only.
pub const FPL_HOLDER_NODE_LOCKS: u32 = 0x08;

/// fpl_member.role: the image named by the caller.
pub const FPL_ROLE_IMAGE: u32 = 0;
/// fpl_member.role: a backing file (depth 1 or more).
pub const FPL_ROLE_BACKING: u32 = 1;
/// fpl_member.role: a qcow2 member's external data file.
pub const FPL_ROLE_DATA_FILE: u32 = 2;
/// fpl_member.format: raw, a pass-through (data files are always raw).
pub const FPL_FORMAT_RAW: u32 = 0;
/// fpl_member.format: qcow2.
pub const FPL_FORMAT_QCOW2: u32 = 1;
/// fpl_member.format: reached through a protocol (`nbd:`, `nbd+unix://`,
/// ...): listed, never opened, locked or followed, as QEMU's client locks
/// nothing there.
pub const FPL_FORMAT_REMOTE: u32 = 2;

/// Preset read-shared (perm): read, sharing everything, like `qemu-img -U`.
pub const FPL_MODE_READ_SHARED_PERM: u32 = FPL_PERM_CONSISTENT_READ;
/// Preset read-shared (shared).
pub const FPL_MODE_READ_SHARED_SHARE: u32 = FPL_PERM_ALL;
/// Preset read (perm): a stable image, no writer and no resize meanwhile.
pub const FPL_MODE_READ_PERM: u32 = FPL_PERM_CONSISTENT_READ;
/// Preset read (shared).
pub const FPL_MODE_READ_SHARE: u32 = FPL_PERM_CONSISTENT_READ;
/// Preset write (perm): read, write, resize, others may only read; like a VM disk.
pub const FPL_MODE_WRITE_PERM: u32 = FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE | FPL_PERM_RESIZE;
/// Preset write (shared).
pub const FPL_MODE_WRITE_SHARE: u32 = FPL_PERM_CONSISTENT_READ;
/// Preset exclusive (perm): read, write, resize, sharing nothing.
pub const FPL_MODE_EXCLUSIVE_PERM: u32 =
    FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE | FPL_PERM_RESIZE;
/// Preset exclusive (shared).
pub const FPL_MODE_EXCLUSIVE_SHARE: u32 = 0;

/// Size of fpl_error.message, NUL included.
pub const FPL_MESSAGE_SIZE: usize = 256;
/// Size of fpl_holder.name, NUL included.
pub const FPL_NAME_SIZE: usize = 64;
/// Size of fpl_member.path, NUL included: a member whose path does not fit
/// fails fpl_chain with -ENAMETOOLONG.
pub const FPL_PATH_SIZE: usize = 4096;

/// An opaque handle: one set of held bytes on one image, with its own
/// close-on-exec descriptor (with FPL_FLAG_CHAIN: one per local member of
/// the image). Created by fpl_acquire or fpl_acquire_fd, freed by
/// fpl_release. Not thread-safe: use a handle from one thread at a time
/// (it may be released on another thread than it was acquired on).
///
/// Fork: a child inherits the handle's descriptor, which shares the
/// parent's open file description and so its locks. The locks stay the
/// acquiring process's: in any other process fpl_release only closes that
/// process's copy (returns 0, the parent keeps every byte) and fpl_update
/// fails with `-EPERM`. A child that exits, or calls exec (the descriptor is
/// close-on-exec), lets go of its copy by itself.
pub struct fpl_lock {
    _private: [u8; 0],
}

/// What went wrong. The caller owns it; libfpl writes it on every call that
/// takes it (zeroed on success), so it is safe from any thread.
///
/// Extensibility (every structure of this header): libfpl only writes
/// these structures, never reads them, and each ends in `reserved` words
/// that it writes as zero. A later 1.x version gives reserved words a
/// meaning in which 0 keeps 1.0's behaviour, so programs built against
/// 1.0 keep working unchanged, and sources that never name `reserved`
/// compile unchanged. Callers need not initialise anything.
#[repr(C)]
pub struct fpl_error {
    /// The same negative errno as the return value; 0 on success.
    pub code: i32,
    /// The FPL_PERM_* bit in conflict (the permission the caller asked for
    /// or refused to share; in strict mode FPL_PERM_WRITE for bytes 102 and
    /// 202), 0 if not a conflict.
    pub perm: u32,
    /// The lock byte in conflict (e.g. 201), 0 if not a conflict.
    pub byte: u32,
    /// A process holding that byte, -1 if unknown (not a conflict, a holder
    /// on another host or in another PID namespace, or one not inspectable);
    /// for `-EBUSY` (FPL_FLAG_NO_UNLOCKED_OPENERS), the opener.
    pub holder_pid: i32,
    /// NUL-terminated UTF-8, human-readable (path bytes that are not UTF-8
    /// show as U+FFFD). For a
    /// conflict, QEMU's wording: `Failed to get "write" lock`, `Failed to get
    /// shared "write" lock` or `Failed to lock byte 100`, then the holder
    /// when known (` (held by qemu-io, pid 4410)`), then a newline and
    /// `Is another process using the image [PATH]?`. For any other error,
    /// the path, what could not be done and the errno's name and text
    /// (`cannot open 'vm.qcow2': ENOENT: No such file or directory`): the
    /// whole story, so printing strerror beside it says the errno twice.
    /// At most 255 bytes: a longer message (a long path) is cut at a
    /// character boundary and ends in `...`.
    pub message: [c_char; FPL_MESSAGE_SIZE],
    /// Written as zero; for later versions.
    pub reserved: [u32; 8],
}

/// Which bytes of an image are held, by anybody.
#[repr(C)]
pub struct fpl_status {
    /// FPL_PERM_* bits whose byte 100+i somebody holds.
    pub perm: u32,
    /// FPL_PERM_* bits whose byte 200+i somebody holds.
    pub unshared: u32,
    /// FPL_STATUS_* bits.
    pub flags: u32,
    /// Holders found (0 without FPL_QUERY_HOLDERS); may exceed the capacity
    /// passed in. Bits set with no holder found means a holder this process
    /// cannot see (another host, PID namespace or user), never "free".
    pub n_holders: u32,
    /// Written as zero; for later versions.
    pub reserved: [u32; 4],
}

/// One process descriptor holding bytes of the image.
#[repr(C)]
pub struct fpl_holder {
    /// The process.
    pub pid: i32,
    /// The descriptor in that process, -1 if unknown.
    pub fd: i32,
    /// Permission bytes (100+i) this descriptor locks, as FPL_PERM_* bits.
    pub perm: u32,
    /// Unshare bytes (200+i) this descriptor locks, as FPL_PERM_* bits.
    /// (A holder of only byte 0 or 104/204 is listed with both 0.)
    pub unshared: u32,
    /// Process name (`/proc/PID/comm`), NUL-terminated, "" if unknown.
    pub name: [c_char; FPL_NAME_SIZE],
    /// How the descriptor was opened (fdinfo's flags): FPL_ACCESS_* bits,
    /// 0 if unknown.
    pub access: u32,
    /// FPL_HOLDER_* bits.
    pub flags: u32,
    /// Written as zero; for later versions.
    pub reserved: [u32; 6],
}

/// One file of an image, as fpl_chain lists it.
#[repr(C)]
pub struct fpl_member {
    /// FPL_ROLE_*.
    pub role: u32,
    /// FPL_FORMAT_*.
    pub format: u32,
    /// 0: the image and its data file; 1: its backing file and that file's
    /// data file; ...
    pub depth: u32,
    /// What FPL_FLAG_CHAIN takes on this member for the (perm, shared)
    /// passed in: QEMU's derivation (a qcow2 member never shares write or
    /// resize; a raw backing file shares them when the request shares write;
    /// a data file never shares resize and follows the request's write; a
    /// request sharing everything gives every member consistent read only).
    pub perm: u32,
    /// The bits this member shares.
    pub shared: u32,
    /// As QEMU opens it, NUL-terminated bytes: a relative backing name joined
    /// to the directory of the overlay's path as given (symlinks are not
    /// resolved); a relative data file name relative to the working
    /// directory, as QEMU does; a remote member's name as written.
    pub path: [c_char; FPL_PATH_SIZE],
    /// Written as zero; for later versions.
    pub reserved: [u32; 8],
}

// Zeroed values, for Rust callers of this module (C callers need not
// initialise anything: libfpl only writes these structures).
macro_rules! zeroed_default {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // SAFETY: a plain repr(C) struct of integers and arrays of
                // them, for which all-zero bytes are a valid value.
                unsafe { std::mem::zeroed() }
            }
        }
    )*};
}
zeroed_default!(fpl_error, fpl_status, fpl_holder, fpl_member);

/// Runs the body behind the panic boundary and reports into `err`.
macro_rules! boundary {
    ($err:expr, $body:expr) => {{
        let err: *mut fpl_error = $err;
        let outcome = panic::catch(move || -> Result<(), Error> { $body })
            .unwrap_or_else(|msg| Err(Error::os(nix::errno::Errno::EIO, msg)));
        report(err, outcome)
    }};
}

fn report(err: *mut fpl_error, outcome: Result<(), Error>) -> c_int {
    let code = match &outcome {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    };
    // SAFETY: the caller passes NULL or a pointer to writable fpl_error
    // storage (the documented contract).
    if let Some(err) = unsafe { err.as_mut() } {
        err.code = code;
        err.perm = 0;
        err.byte = 0;
        err.holder_pid = -1;
        err.message = [0; FPL_MESSAGE_SIZE];
        err.reserved = [0; 8];
        match &outcome {
            Ok(()) => err.holder_pid = 0,
            Err(e) => {
                if let Some(c) = e.conflict() {
                    err.perm = c.perm.bit();
                    err.byte = c.byte;
                    err.holder_pid = c.holder.as_ref().map_or(-1, |h| h.pid);
                }
                if let Error::Opened { opener, .. } = e {
                    err.holder_pid = opener.pid;
                }
                copy_message(&mut err.message, e.to_string().as_bytes());
            }
        }
    }
    code
}

/// Copies `text` into a C buffer, NUL-terminated, cut on a UTF-8 boundary.
fn copy_text(buf: &mut [c_char], text: &[u8]) {
    let Some(room) = buf.len().checked_sub(1) else {
        return;
    };
    let mut n = text.len().min(room);
    while n > 0 && n < text.len() && (text[n] & 0xc0) == 0x80 {
        n -= 1;
    }
    for (dst, src) in buf.iter_mut().zip(&text[..n]) {
        *dst = *src as c_char;
    }
    buf[n] = 0;
}

/// A message into `buf`, NUL-terminated: whole if it fits, else cut at a
/// character boundary and ended with `...`, so that a reader can tell a cut
/// message (a long path) from a whole one.
fn copy_message(buf: &mut [c_char], text: &[u8]) {
    const MORE: &[u8] = b"...";
    if text.len() < buf.len() || buf.len() <= MORE.len() {
        return copy_text(buf, text);
    }
    let mut n = buf.len() - 1 - MORE.len();
    while n > 0 && (text[n] & 0xc0) == 0x80 {
        n -= 1;
    }
    let cut: Vec<u8> = text[..n].iter().chain(MORE).copied().collect();
    copy_text(buf, &cut);
}

/// # Safety
/// `path` must be NULL or a NUL-terminated string.
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a Path, Error> {
    if path.is_null() {
        return Err(Error::invalid("path is NULL"));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() {
        return Err(Error::os(
            nix::errno::Errno::ENOENT,
            "path is empty: name an image file",
        ));
    }
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// A request from C: (perm, shared, flags) validated.
struct Args {
    request: Request,
    options: Options,
    /// FPL_FLAG_CHAIN.
    chain: bool,
}

fn request(perm: u32, shared: u32, flags: u32) -> Result<Args, Error> {
    let known = FPL_FLAG_EXACT
        | FPL_FLAG_ALLOW_POSIX
        | FPL_FLAG_CHAIN
        | FPL_FLAG_NO_UNLOCKED_OPENERS
        | FPL_FLAG_NO_HOLDER_LOOKUP;
    if flags & !known != 0 {
        return Err(Error::invalid(format!(
            "invalid flags 0x{flags:x}: only FPL_FLAG_EXACT, FPL_FLAG_ALLOW_POSIX, \
             FPL_FLAG_CHAIN, FPL_FLAG_NO_UNLOCKED_OPENERS and FPL_FLAG_NO_HOLDER_LOOKUP exist"
        )));
    }
    let perm = PermSet::try_from(perm)?;
    let shared = PermSet::try_from(shared).map_err(|_| {
        Error::invalid(format!(
            "invalid shared bits 0x{shared:x}: only FPL_PERM_ALL (0x0f) may be set"
        ))
    })?;
    let req = Request {
        perm,
        shared,
        exact: flags & FPL_FLAG_EXACT != 0,
    };
    let options = Options {
        allow_posix: flags & FPL_FLAG_ALLOW_POSIX != 0,
        skip_holder_lookup: flags & FPL_FLAG_NO_HOLDER_LOOKUP != 0,
        refuse_unlocked_openers: flags & FPL_FLAG_NO_UNLOCKED_OPENERS != 0,
    };
    Ok(Args {
        request: req,
        options,
        chain: flags & FPL_FLAG_CHAIN != 0,
    })
}

/// Validates a query's flags and holder buffer; what to look for.
fn query_args(flags: u32, holders_null: bool, cap: usize) -> Result<Inspect, Error> {
    if holders_null && cap > 0 {
        return Err(Error::invalid("holders is NULL but cap is not 0"));
    }
    if flags & !(FPL_QUERY_HOLDERS | FPL_QUERY_OPENERS) != 0 {
        return Err(Error::invalid(format!(
            "invalid query flags 0x{flags:x}: only FPL_QUERY_HOLDERS and FPL_QUERY_OPENERS exist"
        )));
    }
    Ok(Inspect {
        holders: flags & FPL_QUERY_HOLDERS != 0,
        openers: flags & FPL_QUERY_OPENERS != 0,
    })
}

fn status_out(found: &query::Status) -> fpl_status {
    let mut flags = 0;
    if found.held.legacy {
        flags |= FPL_STATUS_LEGACY;
    }
    if found.held.libvirt {
        flags |= FPL_STATUS_LIBVIRT;
    }
    if found.holders_partial {
        flags |= FPL_STATUS_HOLDERS_PARTIAL;
    }
    fpl_status {
        perm: found.held.perm.bits(),
        unshared: found.held.unshared.bits(),
        flags,
        n_holders: u32::try_from(found.holders.len()).unwrap_or(u32::MAX),
        reserved: [0; 4],
    }
}

fn holder_out(h: &crate::holders::Holder) -> fpl_holder {
    let mut out = fpl_holder {
        pid: h.pid,
        fd: h.fd,
        perm: h.held.perm.bits(),
        unshared: h.held.unshared.bits(),
        name: [0; FPL_NAME_SIZE],
        access: h.access.bits(),
        flags: holder_flags(h),
        reserved: [0; 6],
    };
    copy_text(&mut out.name, h.name.as_bytes());
    out
}

fn holder_flags(h: &crate::holders::Holder) -> u32 {
    let mut flags = 0;
    if h.no_locks {
        flags |= FPL_HOLDER_NO_LOCKS;
    }
    if h.inferred {
        flags |= FPL_HOLDER_INFERRED;
    }
    if let Some(node) = &h.node {
        flags |= FPL_HOLDER_OTHER_NODE;
        if !node.held.is_empty() {
            flags |= FPL_HOLDER_NODE_LOCKS;
        }
    }
    flags
}

/// What an `fpl_lock` points at: one file's locks, or a whole image's.
enum Handle {
    File(Lock),
    Chain(ChainLock),
}

impl Handle {
    fn release(self) -> Result<(), Error> {
        match self {
            Handle::File(l) => l.release(),
            Handle::Chain(c) => c.release(),
        }
    }

    fn verify(&self) -> Result<(), Error> {
        match self {
            Handle::File(l) => l.verify(),
            Handle::Chain(c) => c.verify(),
        }
    }
}

fn into_handle(handle: Handle) -> *mut fpl_lock {
    Box::into_raw(Box::new(handle)).cast()
}

/// # Safety
/// `lock` must be NULL or a handle from fpl_acquire/fpl_acquire_fd not yet released.
unsafe fn handle_mut<'a>(lock: *mut fpl_lock) -> Result<&'a mut Handle, Error> {
    // SAFETY: the handle points at a Handle boxed by into_handle (contract).
    unsafe { lock.cast::<Handle>().as_mut() }.ok_or_else(|| Error::invalid("lock is NULL"))
}

/// # Safety
/// As [`handle_mut`], read only.
unsafe fn handle_ref<'a>(lock: *const fpl_lock) -> Result<&'a Handle, Error> {
    // SAFETY: the handle points at a Handle boxed by into_handle (contract).
    unsafe { lock.cast::<Handle>().as_ref() }.ok_or_else(|| Error::invalid("lock is NULL"))
}

/// Opens PATH and takes the locks for (PERM, SHARED): lock, test, roll back
/// on conflict. Opening has no side effects: PATH is first opened with
/// O_PATH and its type checked; only a regular file or block device is then
/// opened for reading (the same inode, close-on-exec, O_NOCTTY, O_NONBLOCK),
/// so a FIFO, a terminal or a watchdog device is never opened for I/O. A
/// conflict names a holder (a walk of /proc after the rollback, at most
/// about 1 s) unless FLAGS has FPL_FLAG_NO_HOLDER_LOOKUP. Closing
/// libfpl's descriptor never drops a POSIX lock (F_SETLK) this process holds
/// on the image: while it holds one, the descriptor is kept open, holding
/// nothing, and closed by a later libfpl call once the process holds none.
///
/// With FPL_FLAG_CHAIN, the whole image: its members are resolved from
/// their headers (see fpl_chain) and each local member is locked, in the
/// order QEMU opens them, with what fpl_chain lists for it; a conflict on
/// any member releases the members already taken and is reported with that
/// member's path (`Is another process using the image [base.raw]?`) and
/// holder, with nothing held. Each member is locked on the descriptor its
/// header was read from; once everything is held, the headers are read
/// again through those descriptors and the names checked against the
/// inodes locked, and the chain is locked again if anything changed
/// meanwhile (a rebase or commit that finished); after three tries,
/// `-EAGAIN`.
///
/// Returns 0 and stores a new handle in *OUT; or `-EAGAIN` on a conflict
/// (details in ERR, nothing held), a resolution error of fpl_chain with
/// FPL_FLAG_CHAIN, `-EINVAL` for NULL PATH or OUT or unknown bits, `-EISDIR` for a directory, `-EINVAL` for anything but a regular
/// file or block device, `-ENOLCK` without OFD locks (see
/// FPL_FLAG_ALLOW_POSIX), or the error of open(2).
///
/// # Safety
/// PATH: NULL or a NUL-terminated byte string (not necessarily UTF-8).
/// OUT: NULL or writable. ERR: NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_acquire(
    path: *const c_char,
    perm: u32,
    shared: u32,
    flags: u32,
    out: *mut *mut fpl_lock,
    err: *mut fpl_error,
) -> c_int {
    // SAFETY: contract above, passed on.
    unsafe { acquire_path(path, perm, shared, flags, None, out, err) }
}

/// fpl_acquire, and with `timeout` fpl_acquire_wait.
///
/// # Safety
/// As fpl_acquire.
unsafe fn acquire_path(
    path: *const c_char,
    perm: u32,
    shared: u32,
    flags: u32,
    timeout: Option<std::time::Duration>,
    out: *mut *mut fpl_lock,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let path = unsafe { path_arg(path) }?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let args = request(perm, shared, flags)?;
        let (request, options) = (args.request, args.options);
        let handle = match (args.chain, timeout) {
            (true, None) => Handle::Chain(ChainLock::acquire(path, request, options)?),
            (true, Some(t)) => Handle::Chain(ChainLock::acquire_within(path, request, options, t)?),
            (false, None) => Handle::File(Lock::acquire(path, request, options)?),
            (false, Some(t)) => Handle::File(Lock::acquire_within(path, request, options, t)?),
        };
        // SAFETY: OUT is non-NULL and writable (contract).
        unsafe { out.write(into_handle(handle)) };
        Ok(())
    })
}

/// fpl_acquire, waiting while the image is in use: on a conflict (and,
/// with FPL_FLAG_NO_UNLOCKED_OPENERS, beside an opener without locks) it
/// tries again every 100 ms until TIMEOUT_MS milliseconds have passed since
/// the first try, as `fpl hold --wait` does; 0 tries once. Nothing is held
/// between tries. Any other error returns at once. After the timeout it
/// returns the last conflict (`-EAGAIN`, or `-EBUSY` for an opener), its
/// holder named unless FPL_FLAG_NO_HOLDER_LOOKUP (one walk of /proc, for
/// that error only). Blocks the calling thread meanwhile (sleeping; signal
/// handlers run, and the wait goes on); there is no "forever": pass the
/// longest wait the caller can afford (UINT32_MAX is about 49 days).
/// Added in 1.1 (symbol version LIBFPL_1.1).
///
/// # Safety
/// As fpl_acquire.
#[no_mangle]
pub unsafe extern "C" fn fpl_acquire_wait(
    path: *const c_char,
    perm: u32,
    shared: u32,
    flags: u32,
    timeout_ms: u32,
    out: *mut *mut fpl_lock,
    err: *mut fpl_error,
) -> c_int {
    let timeout = std::time::Duration::from_millis(timeout_ms.into());
    // SAFETY: contract above, passed on.
    unsafe { acquire_path(path, perm, shared, flags, Some(timeout), out, err) }
}

/// The same on a descriptor FD the caller opened (for reading). The locks
/// belong to FD's open file description, as QEMU's belong to its image
/// descriptor; the handle keeps its own close-on-exec duplicate, so they last
/// until fpl_release even if the caller closes FD. Bytes the description
/// already held are never touched: a rollback or a release unlocks only what
/// this handle added. Two handles on one description share its locks:
/// acquire on separate opens instead.
///
/// Returns as fpl_acquire; `-EBADF` for a negative, closed or write-only FD.
///
/// # Safety
/// FD: any integer (a descriptor that is not open gives `-EBADF`). OUT, ERR:
/// NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_acquire_fd(
    fd: c_int,
    perm: u32,
    shared: u32,
    flags: u32,
    out: *mut *mut fpl_lock,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        if fd < 0 {
            return Err(Error::os(
                nix::errno::Errno::EBADF,
                format!("invalid descriptor {fd}"),
            ));
        }
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let args = request(perm, shared, flags)?;
        if args.chain {
            return Err(Error::invalid(
                "FPL_FLAG_CHAIN needs the image's path (backing file names resolve \
                 against it): use fpl_acquire",
            ));
        }
        // SAFETY: the descriptor is only passed to fcntl(2) within this
        // call; a closed one makes it fail with EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let lock = Lock::acquire_fd(fd, args.request, args.options)?;
        // SAFETY: OUT is non-NULL and writable (contract).
        unsafe { out.write(into_handle(Handle::File(lock))) };
        Ok(())
    })
}

/// Changes the permissions of a held lock to (PERM, SHARED) under FLAGS
/// (FPL_FLAG_EXACT and FPL_FLAG_NO_HOLDER_LOOKUP apply to this change),
/// QEMU's prepare / commit / abort: lock the union of old and new bytes,
/// test the new set, then drop what is no longer needed or what was just
/// added. On a conflict the lock is left exactly as it was. A change that
/// only loosens is never tested and never fails on a conflict. FLAGS has
/// FPL_FLAG_CHAIN exactly when the handle was acquired with it (else
/// `-EINVAL`); a chain handle is changed all or nothing: every member is
/// prepared, then all are committed, or all aborted on the first conflict
/// (the members stay those of the acquire: `-ESTALE` if a header now
/// names other files, which a chain locked without sharing write cannot
/// see happen).
///
/// Returns 0, `-EAGAIN` on a conflict, `-EINVAL` for a NULL LOCK or unknown
/// bits, `-EPERM` in another process than the one that acquired the lock (a
/// forked child; nothing changes). Where the file system fails an unlock
/// (never seen on local file systems), the error says what is left, and
/// nothing is left silently: after a failed abort ERR's message names the
/// bytes that may still be held (the handle keeps them, for fpl_release);
/// after a failed commit the new permissions are in effect and the message
/// names the old bytes still held until fpl_release.
///
/// # Safety
/// LOCK: NULL or a live handle, not used by another thread during the call.
/// ERR: NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fpl_update(
    lock: *mut fpl_lock,
    perm: u32,
    shared: u32,
    flags: u32,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let handle = unsafe { handle_mut(lock) }?;
        let args = request(perm, shared, flags)?;
        match (handle, args.chain) {
            (Handle::File(l), false) => l.update_with(args.request, args.options),
            (Handle::Chain(c), true) => c.update_with(args.request, args.options),
            (Handle::File(_), true) => Err(Error::invalid(
                "FPL_FLAG_CHAIN is set, but the lock was acquired without it",
            )),
            (Handle::Chain(_), false) => Err(Error::invalid(
                "the lock was acquired with FPL_FLAG_CHAIN: pass it to fpl_update too",
            )),
        }
    })
}

/// Unlocks every byte the handle locked (with FPL_FLAG_CHAIN: on every
/// member, all of them even if one fails), closes its descriptor and frees
/// it.
/// The bytes are always unlocked explicitly (one fcntl call for a handle of
/// fpl_acquire, one per run of bytes for fpl_acquire_fd, whose description
/// may hold other locks of the caller's that are never touched), so a child
/// that still has a copy of the descriptor (fork, vfork, posix_spawn before
/// its exec, clone) cannot keep the image locked: when it returns 0, nothing
/// of the handle is held. In another process than the one that acquired
/// the lock (a forked child), nothing is unlocked: only that process's copy
/// of the descriptor is closed, and the acquirer keeps its locks. NULL is a
/// no-op returning 0. Returns a negative errno if unlocking failed (the
/// message is not available: closing the descriptor then drops the bytes
/// unless another process has a copy); the handle is freed all the same.
/// Not async-signal-safe (it frees memory): a signal handler that must let
/// go of the image should end the process (`_exit` closes the descriptor,
/// which drops the locks) or tell a thread to release.
///
/// # Safety
/// LOCK: NULL or a live handle, never used again afterwards. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_release(lock: *mut fpl_lock) -> c_int {
    if lock.is_null() {
        return 0;
    }
    // SAFETY: a live handle made by into_handle (contract); ownership comes back.
    let handle = unsafe { Box::from_raw(lock.cast::<Handle>()) };
    boundary!(ptr::null_mut(), handle.release())
}

/// Would fpl_acquire(PATH, PERM, SHARED, FLAGS) succeed right now? Takes no
/// lock (the answer can change at once; acquire to be sure). Locks of this
/// process's own handles count, as they would for fpl_acquire. With
/// FPL_FLAG_CHAIN, every local member is checked with its own request; the
/// first refusal is the answer, naming that member.
///
/// Returns 0 = yes, `-EAGAIN` = no (the conflict in ERR), or an error as fpl_acquire.
///
/// # Safety
/// PATH: NULL or NUL-terminated. ERR: NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_check(
    path: *const c_char,
    perm: u32,
    shared: u32,
    flags: u32,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let path = unsafe { path_arg(path) }?;
        let args = request(perm, shared, flags)?;
        if args.chain {
            ChainLock::check(path, args.request, args.options)
        } else {
            lock::check(path, args.request, args.options)
        }
    })
}

/// Which bytes are held on PATH by anybody (this process's other handles
/// included; opened as fpl_acquire opens, without side effects, and closed
/// without dropping this process's POSIX locks): bytes 100-103 / 200-203 as
/// bits, 104/204 as
/// FPL_STATUS_LEGACY, byte 0 as FPL_STATUS_LIBVIRT. With FPL_QUERY_HOLDERS,
/// the processes holding them are found in /proc: up to CAP are written to
/// HOLDERS (by pid, then descriptor), and STATUS->n_holders counts all. With
/// FPL_QUERY_OPENERS, the processes that have the image open without
/// holding any of its bytes are listed there too (flag
/// FPL_HOLDER_NO_LOCKS; for a block device also users of its other device
/// nodes, FPL_HOLDER_OTHER_NODE), from the same walk. A process that cannot be
/// inspected sets FPL_STATUS_HOLDERS_PARTIAL and never fails the query.
///
/// Sizing HOLDERS: each call walks /proc once, and a second call with a
/// bigger array walks it again (holders can change in between). A process
/// holds an image through one descriptor (QEMU does), so an array of 16 is
/// one walk for nearly every image; call again only when
/// STATUS->n_holders > CAP. Openers add one entry per descriptor that has
/// the image open.
///
/// Returns 0, `-EINVAL` for NULL PATH or STATUS, NULL HOLDERS with CAP > 0,
/// or unknown flags, or an error as fpl_acquire.
///
/// # Safety
/// PATH: NULL or NUL-terminated. STATUS: NULL or writable. HOLDERS: NULL or
/// CAP writable elements. ERR: NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_query(
    path: *const c_char,
    flags: u32,
    status: *mut fpl_status,
    holders: *mut fpl_holder,
    cap: usize,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let path = unsafe { path_arg(path) }?;
        if status.is_null() {
            return Err(Error::invalid("status is NULL"));
        }
        let inspect = query_args(flags, holders.is_null(), cap)?;
        let found = query::query_with(path, inspect)?;
        for (i, h) in found.holders.iter().take(cap).enumerate() {
            // SAFETY: i < cap, and HOLDERS has CAP writable elements (contract).
            unsafe { holders.add(i).write(holder_out(h)) };
        }
        let out = status_out(&found);
        // SAFETY: STATUS is non-NULL and writable (contract).
        unsafe { status.write(out) };
        Ok(())
    })
}

/// fpl_query for N images at once: each image's bytes are tested, then the
/// holders of all of them are found with one walk of /proc (none at all if
/// no image is held), so the cost grows with the host's descriptors plus N,
/// not their product.
///
/// For each image i, `RESULTS[i]` is 0 or the negative errno that
/// fpl_query(`PATHS[i]`) would return, and `STATUSES[i]` is written when
/// `RESULTS[i]` is 0. With FPL_QUERY_HOLDERS, the holders of all images are
/// written to HOLDERS one image after another, in image order: image i's
/// `STATUSES[i]`.n_holders holders come right after those of the images
/// before it. At most CAP are written; *N_HOLDERS (if not NULL) counts all
/// found, so a caller whose CAP was too small can tell and call again.
///
/// Returns 0 when every image was inspected; otherwise the negative errno
/// of the first image that could not be, described in ERR (RESULTS tells
/// which). Bad arguments (NULL PATHS, STATUSES or RESULTS with N > 0, a
/// NULL path, NULL HOLDERS with CAP > 0, unknown flags) give `-EINVAL` and
/// write nothing else.
///
/// # Safety
/// PATHS: N pointers to NUL-terminated strings. STATUSES, RESULTS: N
/// writable elements each. HOLDERS: NULL or CAP writable elements.
/// N_HOLDERS, ERR: NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_query_many(
    paths: *const *const c_char,
    n: usize,
    flags: u32,
    statuses: *mut fpl_status,
    results: *mut i32,
    holders: *mut fpl_holder,
    cap: usize,
    n_holders: *mut usize,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        if n > 0 && (paths.is_null() || statuses.is_null() || results.is_null()) {
            return Err(Error::invalid(
                "paths, statuses and results must not be NULL",
            ));
        }
        let inspect = query_args(flags, holders.is_null(), cap)?;
        let mut list: Vec<&Path> = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: PATHS has N elements (contract).
            let p = unsafe { paths.add(i).read() };
            // SAFETY: each is NULL or NUL-terminated (contract).
            let path = unsafe { path_arg(p) };
            match path {
                Ok(path) => list.push(path),
                Err(e) if p.is_null() => {
                    return Err(Error::invalid(format!("paths[{i}] is NULL: {e}")))
                }
                // An empty path fails on its own below, like fpl_query.
                Err(_) => list.push(Path::new("")),
            }
        }
        let found = query::query_many_with(&list, inspect);
        let mut first_error: Option<Error> = None;
        let mut written = 0usize;
        let mut total = 0usize;
        for (i, outcome) in found.into_iter().enumerate() {
            match outcome {
                Ok(status) => {
                    for h in &status.holders {
                        if written < cap {
                            // SAFETY: written < cap, HOLDERS has CAP elements.
                            unsafe { holders.add(written).write(holder_out(h)) };
                            written += 1;
                        }
                    }
                    total += status.holders.len();
                    // SAFETY: i < n; STATUSES and RESULTS have N elements.
                    unsafe {
                        statuses.add(i).write(status_out(&status));
                        results.add(i).write(0);
                    }
                }
                Err(e) => {
                    // SAFETY: i < n; RESULTS has N elements.
                    unsafe { results.add(i).write(-e.errno()) };
                    first_error.get_or_insert(e);
                }
            }
        }
        // SAFETY: NULL or writable (contract).
        if let Some(out) = unsafe { n_holders.as_mut() } {
            *out = total;
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// The files of the image at PATH in the order QEMU opens them: the image,
/// its data file, its backing file, that file's data file, and so on,
/// reading only their headers (raw and qcow2 v2/v3: one or two pread(2)s of
/// at most 64 KiB each, one file open at a time); takes no lock. Each
/// member gets what fpl_acquire with FPL_FLAG_CHAIN would take on it for
/// (PERM, SHARED) under FLAGS (FPL_FLAG_EXACT: QEMU's bytes exactly; the
/// other lock flags are accepted and change nothing here). A file that
/// appears twice (a data file shared by two levels) is listed once, with
/// both uses' needs together.
///
/// Up to CAP members are written to MEMBERS (NULL when CAP is 0) and
/// *N_MEMBERS counts all of them, so a caller whose CAP was too small can
/// tell and call again. A chain has at most 402 members (the image, 200
/// backing files, a data file for each qcow2 level, one remote member).
///
/// Returns 0, or the error of the member that stops the resolution, in
/// QEMU's wording (each level adds `Could not open backing file: `):
/// `-ENOENT` 'Could not open backing file: Could not open 'sub/gone.raw':
/// No such file or directory', `-EACCES`, `-EISDIR`; `-EINVAL` for a FIFO,
/// character device or socket (never opened for I/O, so never a hang), a
/// malformed qcow2 header (naming the field) or an unknown protocol;
/// `-ENOTSUP` for a format whose backing files libfpl does not follow
/// (vmdk, qed, vhdx, ...: naming it), a qcow2 version or incompatible
/// feature QEMU refuses, or a `json:` name that is not one local file;
/// `-ELOOP` for a loop or more than 200 backing files; `-ENAMETOOLONG`
/// for a member's path longer than FPL_PATH_SIZE - 1 bytes; `-EINVAL` for
/// NULL PATH or N_MEMBERS, NULL MEMBERS with CAP > 0, or unknown bits.
///
/// # Safety
/// PATH: NULL or NUL-terminated. MEMBERS: NULL or CAP writable elements.
/// N_MEMBERS, ERR: NULL or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_chain(
    path: *const c_char,
    perm: u32,
    shared: u32,
    flags: u32,
    members: *mut fpl_member,
    cap: usize,
    n_members: *mut usize,
    err: *mut fpl_error,
) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let path = unsafe { path_arg(path) }?;
        if n_members.is_null() {
            return Err(Error::invalid("n_members is NULL"));
        }
        if members.is_null() && cap > 0 {
            return Err(Error::invalid("members is NULL but cap is not 0"));
        }
        let args = request(perm, shared, flags)?;
        let found = chain::resolve(path, args.request)?;
        let mut out = Vec::with_capacity(found.len().min(cap));
        for m in &found {
            let bytes = m.path.as_os_str().as_bytes();
            if bytes.len() >= FPL_PATH_SIZE {
                return Err(Error::os(
                    nix::errno::Errno::ENAMETOOLONG,
                    format!(
                        "member '{}' of the image has a path of {} bytes: more than \
                         FPL_PATH_SIZE holds",
                        m.path.to_string_lossy(),
                        bytes.len()
                    ),
                ));
            }
            if out.len() < cap {
                out.push(member_out(m));
            }
        }
        for (i, m) in out.into_iter().enumerate() {
            // SAFETY: i < cap, and MEMBERS has CAP writable elements (contract).
            unsafe { members.add(i).write(*m) };
        }
        // SAFETY: non-NULL and writable (contract).
        unsafe { n_members.write(found.len()) };
        Ok(())
    })
}

fn member_out(m: &chain::Member) -> Box<fpl_member> {
    let mut out = Box::new(fpl_member {
        role: match m.role {
            Role::Image => FPL_ROLE_IMAGE,
            Role::Backing => FPL_ROLE_BACKING,
            Role::DataFile => FPL_ROLE_DATA_FILE,
        },
        format: match m.format {
            Format::Raw => FPL_FORMAT_RAW,
            Format::Qcow2 => FPL_FORMAT_QCOW2,
            Format::Remote => FPL_FORMAT_REMOTE,
        },
        depth: m.depth,
        perm: m.request.perm.bits(),
        shared: m.request.shared.bits(),
        path: [0; FPL_PATH_SIZE],
        reserved: [0; 8],
    });
    copy_text(&mut out.path, m.path.as_os_str().as_bytes());
    out
}

/// Are all the bytes LOCK took (with FPL_FLAG_CHAIN: on every member) still
/// held on the file? Two looks: where the kernel records the locks (local
/// file systems; the NFS and CephFS clients keep a record too), the
/// handle's own lock lines in /proc/self/fdinfo must cover every byte
/// (exact, even when another process holds the same byte); then a test
/// from a new open file description of the same inode, which asks the file
/// system itself as another process would (one F_OFD_GETLK per run of
/// bytes; on a FUSE file system that locks on its server, GlusterFS, the
/// only look, where another holder of the very byte would hide a loss).
/// 0 = held; a held lock is never reported lost. `-ENOLCK` = lost (a file
/// system that dropped them: a GlusterFS brick restart, an NFS lease that
/// expired), with `lost the lock on [PATH]: byte N is no longer held` in
/// ERR. A file system that cannot be asked returns its own errno
/// (`-ENOTCONN` while a GlusterFS brick is away, `-EIO` from an evicted
/// CephFS client): unreachable is not lost. Changes nothing. `-ENOTSUP`
/// for a lock that fell back to POSIX locks (FPL_FLAG_ALLOW_POSIX: its own
/// process cannot see them), `-EINVAL` for NULL LOCK.
///
/// # Safety
/// LOCK: NULL or a live handle, not released during the call (another
/// thread may verify it at the same time). ERR: NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fpl_verify(lock: *const fpl_lock, err: *mut fpl_error) -> c_int {
    boundary!(err, {
        // SAFETY: contract above.
        let handle = unsafe { handle_ref(lock) }?;
        handle.verify()
    })
}

/// The version of the loaded library, e.g. "1.0.0": a static string, never
/// NULL, never to be freed. Compare with FPL_VERSION_STRING to detect a
/// header / library mismatch.
#[no_mangle]
pub extern "C" fn fpl_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_on_character_boundaries() {
        let mut buf = [1 as c_char; 8];
        copy_text(&mut buf, "abcdeé€".as_bytes());
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().ok(), Some("abcdeé"));
        copy_text(&mut buf, b"ok");
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_bytes(), b"ok");
    }

    #[test]
    fn cut_messages_end_in_an_ellipsis() {
        let mut buf = [1 as c_char; 8];
        // Fits (7 bytes and the NUL): whole.
        copy_message(&mut buf, b"1234567");
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_bytes(), b"1234567");
        // One byte too many: 4 bytes and "...".
        copy_message(&mut buf, b"12345678");
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_bytes(), b"1234...");
        // Never inside a character.
        copy_message(&mut buf, "abc€defgh".as_bytes());
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().ok(), Some("abc..."));
        let mut long = [1 as c_char; FPL_MESSAGE_SIZE];
        copy_message(&mut long, "x".repeat(1000).as_bytes());
        let s = unsafe { CStr::from_ptr(long.as_ptr()) };
        assert_eq!(s.to_bytes().len(), FPL_MESSAGE_SIZE - 1);
        assert!(s.to_bytes().ends_with(b"..."));
    }

    #[test]
    fn presets_agree_with_the_rust_api() {
        use crate::perm::Mode;
        let pairs = [
            (
                Mode::ReadShared,
                FPL_MODE_READ_SHARED_PERM,
                FPL_MODE_READ_SHARED_SHARE,
            ),
            (Mode::Read, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE),
            (Mode::Write, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE),
            (
                Mode::Exclusive,
                FPL_MODE_EXCLUSIVE_PERM,
                FPL_MODE_EXCLUSIVE_SHARE,
            ),
        ];
        for (mode, perm, shared) in pairs {
            assert_eq!((mode.perm().bits(), mode.shared().bits()), (perm, shared));
        }
    }
}
