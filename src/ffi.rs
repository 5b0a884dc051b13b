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

use crate::error::Error;
use crate::lock::{self, Lock, Options};
use crate::panic;
use crate::perm::PermSet;
use crate::protocol::Request;
use crate::query;

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

/// Flag for fpl_query: also find the processes holding the bytes.
pub const FPL_QUERY_HOLDERS: u32 = 0x01;

/// fpl_status.flags: byte 104 or 204 is held (QEMU <= 6.2's graph-mod).
pub const FPL_STATUS_LEGACY: u32 = 0x01;
/// fpl_status.flags: byte 0 is held (a libvirt virtlockd lease).
pub const FPL_STATUS_LIBVIRT: u32 = 0x02;
/// fpl_status.flags: holders may be missing from the list. Set when some
/// held byte has no holder found while some process could not be inspected
/// (another user's, without privilege; a sandbox's PID 1). A process that
/// cannot be inspected but cannot matter (every held byte has a holder
/// listed) does not set it. Never makes a query fail.
pub const FPL_STATUS_HOLDERS_PARTIAL: u32 = 0x04;

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

/// An opaque handle: one set of held bytes on one image, with its own
/// close-on-exec descriptor. Created by fpl_acquire or fpl_acquire_fd, freed
/// by fpl_release. Not thread-safe: use a handle from one thread at a time
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
    /// on another host or in another PID namespace, or one not inspectable).
    pub holder_pid: i32,
    /// NUL-terminated UTF-8, human-readable (path bytes that are not UTF-8
    /// show as U+FFFD). For a
    /// conflict, QEMU's wording: `Failed to get "write" lock`, `Failed to get
    /// shared "write" lock` or `Failed to lock byte 100`, then the holder
    /// when known (` (held by qemu-io, pid 4410)`), then a newline and
    /// `Is another process using the image [PATH]?`. Cut at 255 bytes.
    pub message: [c_char; FPL_MESSAGE_SIZE],
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
}

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
        match &outcome {
            Ok(()) => err.holder_pid = 0,
            Err(e) => {
                if let Some(c) = e.conflict() {
                    err.perm = c.perm.bit();
                    err.byte = c.byte;
                    err.holder_pid = c.holder.as_ref().map_or(-1, |h| h.pid);
                }
                copy_text(&mut err.message, e.to_string().as_bytes());
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

fn request(perm: u32, shared: u32, flags: u32) -> Result<(Request, Options), Error> {
    let known = FPL_FLAG_EXACT | FPL_FLAG_ALLOW_POSIX | FPL_FLAG_NO_HOLDER_LOOKUP;
    if flags & !known != 0 {
        return Err(Error::invalid(format!(
            "invalid flags 0x{flags:x}: only FPL_FLAG_EXACT, FPL_FLAG_ALLOW_POSIX and \
             FPL_FLAG_NO_HOLDER_LOOKUP exist"
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
    };
    Ok((req, options))
}

/// Validates a query's flags and holder buffer; whether holders are wanted.
fn query_args(flags: u32, holders_null: bool, cap: usize) -> Result<bool, Error> {
    if holders_null && cap > 0 {
        return Err(Error::invalid("holders is NULL but cap is not 0"));
    }
    if flags & !FPL_QUERY_HOLDERS != 0 {
        return Err(Error::invalid(format!(
            "invalid query flags 0x{flags:x}: only FPL_QUERY_HOLDERS exists"
        )));
    }
    Ok(flags & FPL_QUERY_HOLDERS != 0)
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
    }
}

fn holder_out(h: &crate::holders::Holder) -> fpl_holder {
    let mut out = fpl_holder {
        pid: h.pid,
        fd: h.fd,
        perm: h.held.perm.bits(),
        unshared: h.held.unshared.bits(),
        name: [0; FPL_NAME_SIZE],
    };
    copy_text(&mut out.name, h.name.as_bytes());
    out
}

fn into_handle(lock: Lock) -> *mut fpl_lock {
    Box::into_raw(Box::new(lock)).cast()
}

/// # Safety
/// `lock` must be NULL or a handle from fpl_acquire/fpl_acquire_fd not yet released.
unsafe fn handle_mut<'a>(lock: *mut fpl_lock) -> Result<&'a mut Lock, Error> {
    // SAFETY: the handle points at a Lock boxed by into_handle (contract).
    unsafe { lock.cast::<Lock>().as_mut() }.ok_or_else(|| Error::invalid("lock is NULL"))
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
/// Returns 0 and stores a new handle in *OUT; or `-EAGAIN` on a conflict
/// (details in ERR, nothing held), `-EINVAL` for NULL PATH or OUT or unknown
/// bits, `-EISDIR` for a directory, `-EINVAL` for anything but a regular
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
    boundary!(err, {
        // SAFETY: contract above.
        let path = unsafe { path_arg(path) }?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let (req, options) = request(perm, shared, flags)?;
        let lock = Lock::acquire(path, req, options)?;
        // SAFETY: OUT is non-NULL and writable (contract).
        unsafe { out.write(into_handle(lock)) };
        Ok(())
    })
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
        let (req, options) = request(perm, shared, flags)?;
        // SAFETY: the descriptor is only passed to fcntl(2) within this
        // call; a closed one makes it fail with EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let lock = Lock::acquire_fd(fd, req, options)?;
        // SAFETY: OUT is non-NULL and writable (contract).
        unsafe { out.write(into_handle(lock)) };
        Ok(())
    })
}

/// Changes the permissions of a held lock to (PERM, SHARED) under FLAGS
/// (FPL_FLAG_EXACT and FPL_FLAG_NO_HOLDER_LOOKUP apply to this change),
/// QEMU's prepare / commit / abort: lock the union of old and new bytes,
/// test the new set, then drop what is no longer needed or what was just
/// added. On a conflict the lock is left exactly as it was. A change that
/// only loosens is never tested and never fails on a conflict.
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
        let lock = unsafe { handle_mut(lock) }?;
        let (req, options) = request(perm, shared, flags)?;
        lock.update_with(req, options)
    })
}

/// Unlocks every byte the handle locked, closes its descriptor and frees it.
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
///
/// # Safety
/// LOCK: NULL or a live handle, never used again afterwards. Any thread.
#[no_mangle]
pub unsafe extern "C" fn fpl_release(lock: *mut fpl_lock) -> c_int {
    if lock.is_null() {
        return 0;
    }
    // SAFETY: a live handle made by into_handle (contract); ownership comes back.
    let lock = unsafe { Box::from_raw(lock.cast::<Lock>()) };
    boundary!(ptr::null_mut(), lock.release())
}

/// Would fpl_acquire(PATH, PERM, SHARED, FLAGS) succeed right now? Takes no
/// lock (the answer can change at once; acquire to be sure). Locks of this
/// process's own handles count, as they would for fpl_acquire.
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
        let (req, options) = request(perm, shared, flags)?;
        lock::check(path, req, options)
    })
}

/// Which bytes are held on PATH by anybody (this process's other handles
/// included; opened as fpl_acquire opens, without side effects, and closed
/// without dropping this process's POSIX locks): bytes 100-103 / 200-203 as
/// bits, 104/204 as
/// FPL_STATUS_LEGACY, byte 0 as FPL_STATUS_LIBVIRT. With FPL_QUERY_HOLDERS,
/// the processes holding them are found in /proc: up to CAP are written to
/// HOLDERS (by pid, then descriptor), and STATUS->n_holders counts all. A
/// process that cannot be inspected sets FPL_STATUS_HOLDERS_PARTIAL and
/// never fails the query.
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
        let with_holders = query_args(flags, holders.is_null(), cap)?;
        let found = query::query(path, with_holders)?;
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
        let with_holders = query_args(flags, holders.is_null(), cap)?;
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
        let found = query::query_many(&list, with_holders);
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

/// The version of the loaded library, e.g. "0.1.0": a static string, never
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
