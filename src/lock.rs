//! The lock algorithm of PROTOCOL.md §2: lock, then test, roll back on
//! conflict; and for a held lock, prepare / commit / abort.
//!
//! Adjacent bytes are locked with one call and a run of tested bytes is
//! tested with one call. Only when something is in the way does it fall back
//! to QEMU's byte-by-byte order, so the bytes held and the conflict reported
//! are those of the per-byte algorithm.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Conflict, ConflictKind, Error, HolderId, Result};
use crate::fcntl::{self, Flavor};
use crate::fdinfo::{lock_lines, LockClass, LockLine};
use crate::holders::{self, Lookup, Mounts};
use crate::image::Image;
use crate::perm::Perm;
use crate::protocol::{ByteSet, Plan, Request, Test, USE_BASE};

/// How to lock beyond the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Where the kernel lacks OFD locks, use process-wide POSIX locks instead
    /// of failing with `ENOLCK` (`FPL_FLAG_ALLOW_POSIX`). Hazard: any
    /// `close()` of any descriptor of the image anywhere in the process then
    /// silently drops the locks, and two handles in one process never
    /// conflict with each other.
    pub allow_posix: bool,
    /// Report a conflict without naming a process holding the byte
    /// (`FPL_FLAG_NO_HOLDER_LOOKUP`): no walk of `/proc` at all. A caller
    /// taking several locks sets it, releases what it took, then calls
    /// [`Error::look_up_holder`] once. Otherwise the walk runs after the
    /// rollback, bounded by [`holders::LOOKUP_BUDGET`].
    pub skip_holder_lookup: bool,
    /// Also refuse, with `EBUSY` ([`Error::Opened`]), while another process
    /// has the image open and holds none of its bytes
    /// (`FPL_FLAG_NO_UNLOCKED_OPENERS`): QEMU with `locking=off`, an
    /// incoming migration's destination. For a block device, also while a
    /// process uses the device through another device node (a container's
    /// `/dev`), whose locks this node never sees ([`crate::Holder::node`]).
    /// The locks are taken (prepared) first, then one walk of `/proc` looks
    /// for openers (see the private module `openers` for what it cannot
    /// see).
    pub refuse_unlocked_openers: bool,
}

/// Held locks on one image: the bytes of one request, on one open file
/// description. Dropping it releases them, as [`Lock::release`] does.
///
/// A forked child shares the handle's open file description, and so its
/// locks: in any process other than the one that acquired it, releasing or
/// dropping the handle only closes that process's copy of the descriptor,
/// and [`Lock::update`] fails with `EPERM`.
#[derive(Debug)]
pub struct Lock {
    image: Image,
    flavor: Flavor,
    options: Options,
    request: Request,
    plan: Plan,
    /// The bytes this handle locked, and so will unlock.
    held: ByteSet,
    /// Bytes the adopted description held before: never locked or unlocked here.
    foreign: ByteSet,
    /// Whether the handle's descriptor is the only one of its description
    /// (acquired by path, not adopted from a caller's descriptor), so that
    /// no lock but this handle's can be on it.
    private: bool,
    /// The process that acquired the lock.
    owner: u32,
}

impl Lock {
    /// Opens `path` and takes the locks for `request`.
    pub fn acquire(path: &Path, request: Request, options: Options) -> Result<Lock> {
        let image = Image::open(path)?;
        Lock::take(image, request, options, None)
    }

    /// [`Lock::acquire`], trying again every 100 ms while the image is in
    /// use (a conflict; with `refuse_unlocked_openers`, an opener without
    /// locks) for up to `timeout`, as `fpl hold --wait` does. Any other
    /// error returns at once; after the timeout, the last conflict, with
    /// its holder named (unless `skip_holder_lookup`). Nothing is held
    /// between tries.
    pub fn acquire_within(
        path: &Path,
        request: Request,
        options: Options,
        timeout: std::time::Duration,
    ) -> Result<Lock> {
        crate::wait::retrying(timeout, options, |o| Lock::acquire(path, request, o))
    }

    /// Takes the locks for `request` on an image libfpl opened itself
    /// ([`Image::open`]: a description of its own), as [`Lock::acquire`]
    /// does after opening. The chain lock locks the descriptors chain
    /// resolution read the headers from.
    pub(crate) fn from_image(image: Image, request: Request, options: Options) -> Result<Lock> {
        Lock::take(image, request, options, None)
    }

    /// Takes the locks for `request` on the caller's open file description.
    /// The handle keeps its own close-on-exec duplicate of `fd`, so the locks
    /// last until release even if the caller closes `fd`. Locks the
    /// description already held are left alone: a rollback or a release
    /// unlocks exactly the bytes this handle added.
    pub fn acquire_fd(fd: BorrowedFd<'_>, request: Request, options: Options) -> Result<Lock> {
        let image = Image::from_fd(fd)?;
        let foreign = description_bytes(&image);
        Lock::take(image, request, options, Some(foreign))
    }

    /// `adopted`: the bytes a caller's description already held, or None
    /// for a description of our own.
    fn take(
        image: Image,
        request: Request,
        options: Options,
        adopted: Option<ByteSet>,
    ) -> Result<Lock> {
        let flavor = flavor(&image, options)?;
        let plan = request.plan();
        let mut lock = Lock {
            image,
            flavor,
            options,
            request,
            plan: Plan {
                lock: ByteSet::EMPTY,
                tests: Vec::new(),
            },
            held: ByteSet::EMPTY,
            foreign: adopted.unwrap_or(ByteSet::EMPTY),
            private: adopted.is_none(),
            owner: std::process::id(),
        };
        let prepared = lock.prepare_plan(plan, request, false, options)?;
        if let Err(e) = lock.refuse_beside_openers(options) {
            // Nothing was held before: abort leaves nothing, and a failed
            // abort's bytes go with the descriptor, which is closed here.
            let _ = lock.abort(prepared);
            return Err(e);
        }
        lock.commit(prepared)?;
        Ok(lock)
    }

    /// Changes the permissions of the held lock (QEMU's reopen): lock the
    /// bytes the new request adds, test it, then drop the bytes it no longer
    /// needs (commit) or the ones just added (abort). On a conflict the lock
    /// is exactly as it was. A change that only loosens is never tested.
    /// Fails with `EPERM` in another process than the one that acquired the
    /// lock (a forked child). The acquire's options apply.
    ///
    /// A VM paused for a backup steps down to reading, lets a reader in,
    /// and cannot step up again while the reader is there:
    ///
    /// ```
    /// use fpl::{Lock, Mode, Options, Request};
    /// # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let image = dir.join("vm.img");
    /// # std::fs::write(&image, vec![0u8; 1 << 20])?;
    /// let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
    /// let read = Request::new(Mode::Read.perm(), Mode::Read.shared());
    /// let mut vm = Lock::acquire(&image, write, Options::default())?;
    ///
    /// vm.update(read)?; // only loosens: never refused
    /// let backup = Lock::acquire(&image, read, Options::default())?;
    ///
    /// let refused = vm.update(write).unwrap_err();
    /// assert!(refused.conflict().is_some()); // the backup reads and refuses writers
    /// assert_eq!(vm.request(), read); // and vm holds what it held before
    ///
    /// backup.release()?;
    /// vm.update(write)?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(&mut self, request: Request) -> Result<()> {
        self.update_with(request, self.options)
    }

    /// [`Lock::update`] with other options for this change
    /// (`skip_holder_lookup`; a handle keeps its kind of lock, so
    /// `allow_posix` is ignored).
    pub fn update_with(&mut self, request: Request, options: Options) -> Result<()> {
        let prepared = self.prepare(request, options)?;
        if let Err(e) = self.refuse_beside_openers(options) {
            self.abort(prepared)?;
            return Err(e);
        }
        self.commit(prepared)
    }

    /// With [`Options::refuse_unlocked_openers`]: `EBUSY` if another process
    /// has the image open without locks.
    fn refuse_beside_openers(&self, options: Options) -> Result<()> {
        if !options.refuse_unlocked_openers {
            return Ok(());
        }
        let path = self.image.display_path().unwrap_or_default();
        crate::openers::refuse(&[(&path, &self.image)])
    }

    fn check_owner(&self) -> Result<()> {
        if !self.in_owner() {
            return Err(Error::os(
                Errno::EPERM,
                format!(
                    "this lock belongs to another process (pid {}, which acquired it): a \
                     forked child shares its locks and cannot change them (releasing it \
                     only closes the child's copy)",
                    self.owner
                ),
            ));
        }
        Ok(())
    }

    fn in_owner(&self) -> bool {
        std::process::id() == self.owner
    }

    /// The first half of [`Lock::update`], for a caller changing several
    /// handles all or nothing ([`crate::ChainLock`]): takes the bytes
    /// `request` adds and tests it. On success the union of the old and new
    /// bytes is held until [`Lock::commit`] or [`Lock::abort`]; on failure
    /// the handle is as it was.
    pub(crate) fn prepare(&mut self, request: Request, options: Options) -> Result<Prepared> {
        self.check_owner()?;
        let plan = request.plan();
        let loosening = plan.only_loosens(&self.plan);
        self.prepare_plan(plan, request, loosening, options)
    }

    fn prepare_plan(
        &mut self,
        plan: Plan,
        request: Request,
        skip_tests: bool,
        options: Options,
    ) -> Result<Prepared> {
        let fd = self.image.fd();
        let added = plan.lock.minus(self.held).minus(self.foreign);
        let keep = self.held.union(self.foreign);
        // Prepare: take the new bytes (the union of old and new is held).
        let mut failure = match lock_bytes(fd, self.flavor, added, keep, self.private) {
            Ok(()) => None,
            Err((failure, None)) => Some(failure),
            Err((failure, Some(errno))) => {
                self.held = self.held.union(added);
                return Err(self.rollback_failed(failure, errno, added));
            }
        };
        if failure.is_none() && !skip_tests {
            if let Err(e) = run_tests(fd, self.flavor, &plan.tests) {
                // Abort: drop exactly what prepare took.
                if let Err(errno) = unlock_bytes(fd, self.flavor, added, keep, self.private) {
                    // What could not be unlocked stays this handle's, to be
                    // unlocked again at release.
                    self.held = self.held.union(added);
                    return Err(self.rollback_failed(e, errno, added));
                }
                failure = Some(e);
            }
        }
        if let Some(failure) = failure {
            let mut e = self.explain(failure);
            if !options.skip_holder_lookup {
                // Everything this change took is rolled back by now.
                e.look_up_holder();
            }
            return Err(e);
        }
        let before = self.held;
        self.held = self.held.union(added);
        Ok(Prepared {
            plan,
            request,
            added,
            before,
        })
    }

    /// Commit: drop what the prepared request no longer needs; it is then
    /// in effect.
    pub(crate) fn commit(&mut self, prepared: Prepared) -> Result<()> {
        let Prepared {
            plan,
            request,
            before,
            ..
        } = prepared;
        let dropped = before.minus(plan.lock);
        self.held = self.held.minus(dropped);
        self.plan = plan;
        self.request = request;
        let keep = self.held.union(self.foreign);
        unlock_bytes(self.image.fd(), self.flavor, dropped, keep, self.private).map_err(|errno| {
            // The new request is in effect; the old bytes may still be held
            // and stay recorded, so that release unlocks them.
            self.held = self.held.union(dropped);
            Error::os(
                errno,
                format!(
                    "the new permissions are in effect, but bytes {} no longer needed \
                     could not be unlocked: they stay held until release",
                    list(dropped)
                ),
            )
        })
    }

    /// Abort: drop exactly what [`Lock::prepare`] took; the handle is as it
    /// was before.
    pub(crate) fn abort(&mut self, prepared: Prepared) -> Result<()> {
        let keep = prepared.before.union(self.foreign);
        match unlock_bytes(
            self.image.fd(),
            self.flavor,
            prepared.added,
            keep,
            self.private,
        ) {
            Ok(()) => {
                self.held = prepared.before;
                Ok(())
            }
            // What could not be unlocked stays recorded, for release.
            Err(errno) => Err(Error::os(
                errno,
                format!(
                    "rolling back failed: bytes {} may still be held (the handle unlocks \
                     them again at release)",
                    list(prepared.added)
                ),
            )),
        }
    }

    /// A conflict whose abort could not unlock what prepare took.
    fn rollback_failed(&self, failure: Failure, errno: Errno, added: ByteSet) -> Error {
        let conflict = self.explain(failure);
        Error::os(
            errno,
            format!(
                "{conflict}\nand rolling back failed: bytes {} may still be held{}",
                list(added),
                if self.private {
                    " (an update's handle unlocks them again at release; a failed \
                     acquire's descriptor is closed, which drops them)"
                } else {
                    " on the caller's descriptor (an update's handle unlocks them \
                     again at release)"
                }
            ),
        )
    }

    /// Turns a low-level failure into the error the caller sees, naming the
    /// image and, for a conflict, a process that holds the byte.
    fn explain(&self, failure: Failure) -> Error {
        failure.into_error(&self.image, Some(self.image.fd().as_raw_fd()))
    }

    /// Are all the bytes this handle took still held on the file? `Ok` when
    /// every byte is held, else [`Error::Lost`] (`ENOLCK`) naming the first
    /// byte missing. Two looks, both needed for a held lock:
    ///
    /// - where the kernel records the locks (local file systems, and the
    ///   NFS and CephFS clients, which also keep a record), this handle's
    ///   own `/proc/self/fdinfo` lock lines must cover every byte: exact,
    ///   and not fooled by another process holding the same byte;
    /// - then a test from a new open file description of the same inode,
    ///   which asks the file system itself, as another process would: on a
    ///   FUSE file system that locks on its server (GlusterFS), the only
    ///   look there is, and there another holder of the same byte would
    ///   hide a loss. One test per run of bytes, more only where a run is
    ///   partly held.
    ///
    /// A held lock is never reported lost. Changes nothing. A file system
    /// that cannot be reached gives its own error (`ENOTCONN`, `EIO`, ...),
    /// not `ENOLCK`: unreachable is not lost. Locks that fell back to POSIX
    /// cannot be seen from their own process: `ENOTSUP`.
    ///
    /// A holder on shared storage calls it now and then, as `fpl hold
    /// --verify-interval` does, and stops writing when the answer is
    /// [`Error::Lost`]:
    ///
    /// ```
    /// use fpl::{Error, Lock, Mode, Options, Request};
    /// # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let image = dir.join("vm.img");
    /// # std::fs::write(&image, vec![0u8; 1 << 20])?;
    /// let lock = Lock::acquire(
    ///     &image,
    ///     Request::new(Mode::Write.perm(), Mode::Write.shared()),
    ///     Options::default(),
    /// )?;
    /// match lock.verify() {
    ///     Ok(()) => {} // every byte is still held: go on writing
    ///     Err(Error::Lost { byte, .. }) => panic!("byte {byte} was dropped: stop writing"),
    ///     Err(e) => eprintln!("cannot tell now: {e}"), // the server is away: ask again
    /// }
    /// lock.verify()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&self) -> Result<()> {
        if self.flavor == Flavor::Posix {
            return Err(Error::os(
                Errno::ENOTSUP,
                "cannot verify POSIX locks from the process that holds them",
            ));
        }
        let fresh = self.image.reopen()?;
        let lost = |byte| Error::Lost {
            path: self
                .image
                .display_path()
                .unwrap_or_else(|| std::path::PathBuf::from("?")),
            byte,
        };
        let failed = |e, byte| Error::test_failed(e, byte, self.image.display_path().as_deref());
        if !crate::query::locks_hidden(self.image.fd()) {
            if let Some(lines) = own_lock_lines(self.image.fd()) {
                for (first, len) in self.held.run_iter() {
                    let missing = (first..first + len).find(|&byte| {
                        !lines
                            .iter()
                            .any(|l| l.class == LockClass::Ofd && l.covers(byte.into()))
                    });
                    if let Some(byte) = missing {
                        return Err(lost(byte));
                    }
                }
            }
        }
        for (first, len) in self.held.run_iter() {
            let last = first + len - 1;
            match fcntl::test(fresh.fd(), Flavor::Ofd, first, len, true) {
                Err(e) => return Err(failed(e, first)),
                Ok(None) => return Err(lost(first)),
                Ok(Some(found)) if found.covers(first.into()) && found.covers(last.into()) => {}
                Ok(Some(_)) => {
                    for byte in first..=last {
                        match fcntl::test(fresh.fd(), Flavor::Ofd, byte, 1, true) {
                            Err(e) => return Err(failed(e, byte)),
                            Ok(None) => return Err(lost(byte)),
                            Ok(Some(_)) => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The request currently held.
    pub fn request(&self) -> Request {
        self.request
    }

    /// The bytes this handle holds.
    pub fn held(&self) -> ByteSet {
        self.held
    }

    /// The inode the handle locks.
    pub fn file_id(&self) -> crate::holders::FileId {
        self.image.file_id()
    }

    /// The handle's own descriptor of the image.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.image.fd()
    }

    /// The handle's image.
    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// Whether the locks are process-wide POSIX locks (the fallback).
    pub fn is_posix(&self) -> bool {
        self.flavor == Flavor::Posix
    }

    /// Unlocks every byte this handle locked, then closes the descriptor,
    /// always with explicit unlock calls: a copy of the descriptor in
    /// another process (a forked or spawned child that has not exec'ed yet)
    /// would keep OFD locks alive past a mere close. In a process other than
    /// the acquirer's (a forked child) nothing is unlocked: the locks are
    /// the acquirer's, and only this process's copy of the descriptor is
    /// closed. The descriptor is closed even if unlocking fails.
    pub fn release(mut self) -> Result<()> {
        self.unlock_all()
    }

    fn unlock_all(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.held);
        if !self.in_owner() {
            return Ok(());
        }
        unlock_bytes(
            self.image.fd(),
            self.flavor,
            held,
            self.foreign,
            self.private,
        )
        .map_err(|e| {
            Error::os(
                e,
                format!(
                    "cannot unlock bytes {} of the image (closing its descriptor drops \
                     them unless another process has a copy of it)",
                    list(held)
                ),
            )
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.unlock_all();
    }
}

/// A change taken by [`Lock::prepare`], to commit or abort.
#[derive(Debug)]
#[must_use]
pub(crate) struct Prepared {
    plan: Plan,
    request: Request,
    /// The bytes prepare locked.
    added: ByteSet,
    /// The bytes held before.
    before: ByteSet,
}

/// Bytes for messages: `100, 101, 103`.
fn list(bytes: ByteSet) -> String {
    let all: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    all.join(", ")
}

/// Would [`Lock::acquire`] of `request` on `path` succeed now? Takes no lock.
pub fn check(path: &Path, request: Request, options: Options) -> Result<()> {
    let image = check_locks(path, request, options)?;
    if options.refuse_unlocked_openers {
        crate::openers::refuse(&[(path, &image)])?;
    }
    Ok(())
}

/// [`check`] without the openers: the image, still open, when the locks
/// would be granted.
pub(crate) fn check_locks(path: &Path, request: Request, options: Options) -> Result<Image> {
    let mut image = Image::open(path)?;
    let flavor = flavor(&image, options)?;
    let plan = request.plan();
    let all = plan.lock.union(plan.tested());
    let (Some(first), Some(last)) = (all.iter().next(), all.iter().last()) else {
        return Ok(image);
    };
    let failed = |e| Failure::Locked(first, e, None);
    // No lock at all on the file, the usual case, answers with one call,
    // which also tells that closing the image cannot drop a POSIX lock of
    // this process ([`crate::closing`]).
    match fcntl::test_span(image.fd(), flavor, 0, None, true) {
        Ok(None) => {
            if flavor == Flavor::Ofd {
                image.saw_no_locks();
            }
            return Ok(image);
        }
        Ok(Some(_)) => {}
        Err(e) => return Err(failed(e).into_error(&image, None)),
    }
    let fd = image.fd();
    // Nothing held between the first and the last byte involved (a lock
    // elsewhere, such as libvirt's lease on byte 0) answers with one more.
    match fcntl::test(fd, flavor, first, last - first + 1, true) {
        Ok(None) => return Ok(image),
        Ok(Some(_)) => {}
        Err(e) => return Err(failed(e).into_error(&image, None)),
    }
    // Locking fails only where somebody holds a byte exclusively: that is
    // what a read-lock test finds.
    let outcome = match find_blocked(fd, flavor, plan.lock, false) {
        Ok(None) => run_tests(fd, flavor, &plan.tests),
        Ok(Some((byte, found))) => Err(Failure::Locked(byte, Errno::EAGAIN, Some(found))),
        // As fpl_acquire would report it: locking is what fails first.
        Err(e) => Err(Failure::Locked(
            plan.lock.iter().next().unwrap_or(USE_BASE),
            e,
            None,
        )),
    };
    match outcome {
        Ok(()) => Ok(image),
        Err(f) => {
            let mut e = f.into_error(&image, None);
            if !options.skip_holder_lookup {
                e.look_up_holder();
            }
            Err(e)
        }
    }
}

fn flavor(image: &Image, options: Options) -> Result<Flavor> {
    if fcntl::ofd_available(image.fd()) {
        Ok(Flavor::Ofd)
    } else if options.allow_posix {
        Ok(Flavor::Posix)
    } else {
        Err(Error::os(
            Errno::ENOLCK,
            "this kernel has no open file description locks (F_OFD_SETLK, Linux 3.15+); \
             pass FPL_FLAG_ALLOW_POSIX to use process-wide POSIX locks, which any close() \
             of the image in this process drops",
        ))
    }
}

/// Why a step of the algorithm failed, before it is put into words.
enum Failure {
    /// Locking `byte` failed with this errno (EAGAIN/EACCES: held exclusively).
    Locked(u32, Errno, Option<fcntl::Found>),
    /// A test found `test.byte` held by somebody else.
    Conflict(Test, fcntl::Found),
    /// Testing a byte failed with this errno (the file system refuses locks).
    TestFailed(Errno, u32),
}

impl Failure {
    fn into_error(self, image: &Image, own_fd: Option<i32>) -> Error {
        let path = image.display_path();
        let (kind, byte, perm, found) = match self {
            Failure::TestFailed(errno, byte) => {
                return Error::test_failed(errno, byte, path.as_deref())
            }
            Failure::Locked(byte, errno, found) => {
                if errno != Errno::EAGAIN && errno != Errno::EACCES {
                    // QEMU's words for a lock the file system refuses (NFS, FUSE).
                    let name = path
                        .as_deref()
                        .map_or_else(String::new, |p| format!(" of '{}'", p.to_string_lossy()));
                    return Error::os(
                        errno,
                        format!(
                            "Failed to lock byte {byte}{name} (the file system may not \
                             support byte-range locks)"
                        ),
                    );
                }
                let perm = Perm::from_index(byte % 100).unwrap_or(Perm::ConsistentRead);
                (ConflictKind::Lock, byte, perm, found)
            }
            Failure::Conflict(test, found) => {
                (ConflictKind::Test, test.byte, test.perm, Some(found))
            }
        };
        // A POSIX lock names its owner; an OFD lock (pid -1) is looked up in
        // /proc later, once nothing of ours is held any more.
        let (holder, lookup) = match found.map(|f| f.pid).filter(|pid| *pid > 0) {
            Some(pid) => (
                Some(HolderId {
                    pid,
                    name: holders::process_name(pid),
                }),
                None,
            ),
            None => (None, Some(Lookup::new(image.fd(), image.file_id(), own_fd))),
        };
        Error::Conflict(Box::new(Conflict {
            kind,
            byte,
            perm,
            path,
            holder,
            lookup,
        }))
    }
}

/// Locks `bytes` run by run. On failure, what this call took is unlocked
/// again and the first byte (ascending, as QEMU locks) that cannot be locked
/// is named, with the errno of a failed unlock if giving back failed.
fn lock_bytes(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    bytes: ByteSet,
    keep: ByteSet,
    private: bool,
) -> Result<(), (Failure, Option<Errno>)> {
    let mut taken = ByteSet::EMPTY;
    for (first, len) in bytes.run_iter() {
        if let Err(errno) = fcntl::lock_read(fd, flavor, first, len) {
            let unlocked = unlock_bytes(fd, flavor, taken, keep, private).err();
            // The failed call took nothing (F_SETLK is all or nothing); find
            // which byte of the run per-byte locking would have stopped at.
            let run: ByteSet = (first..first + len).collect();
            let blocked = find_blocked(fd, flavor, run, false).ok().flatten();
            let (byte, found) = blocked.map_or((first, None), |(b, f)| (b, Some(f)));
            return Err((Failure::Locked(byte, errno, found), unlocked));
        }
        taken = taken.union((first..first + len).collect());
    }
    Ok(())
}

/// Unlocks exactly `bytes`, leaving `keep` (bytes the description must go
/// on holding) alone. On a description of our own (`private`) with OFD
/// locks, one call over the whole span does it when no kept byte lies
/// inside: no other lock can be on that description. On a caller's
/// description, which may hold locks of its own anywhere (104, 150, ...),
/// and with POSIX locks, which belong to the whole process, only the bytes
/// themselves are unlocked, run by run.
fn unlock_bytes(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    bytes: ByteSet,
    keep: ByteSet,
    private: bool,
) -> Result<(), Errno> {
    let (Some(first), Some(last)) = (bytes.iter().next(), bytes.iter().last()) else {
        return Ok(());
    };
    if private && flavor == Flavor::Ofd && !keep.iter().any(|b| (first..=last).contains(&b)) {
        return fcntl::unlock(fd, flavor, first, last - first + 1);
    }
    let mut result = Ok(());
    for (first, len) in bytes.run_iter() {
        // Keep going: every byte that can be unlocked must be.
        if let Err(e) = fcntl::unlock(fd, flavor, first, len) {
            result = result.and(Err(e));
        }
    }
    result
}

/// The lowest byte of `bytes` that somebody else holds in a way that blocks
/// a lock of the given kind, with the lock in the way.
fn find_blocked(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    bytes: ByteSet,
    exclusive: bool,
) -> Result<Option<(u32, fcntl::Found)>, Errno> {
    for (first, len) in bytes.run_iter() {
        if fcntl::test(fd, flavor, first, len, exclusive)?.is_none() {
            continue;
        }
        for byte in first..first + len {
            if let Some(found) = fcntl::test(fd, flavor, byte, 1, exclusive)? {
                return Ok(Some((byte, found)));
            }
        }
    }
    Ok(None)
}

/// Runs the tests: one F_GETLK per run of tested bytes; only if one finds
/// something are the tests run one by one in QEMU's order, so that the
/// conflict reported is the one QEMU would report.
fn run_tests(fd: BorrowedFd<'_>, flavor: Flavor, tests: &[Test]) -> Result<(), Failure> {
    let tested: ByteSet = tests.iter().map(|t| t.byte).collect();
    let (Some(first), Some(last)) = (tested.iter().next(), tested.iter().last()) else {
        return Ok(());
    };
    // One test over the whole span: nobody holds anything there, the usual
    // case, means no test can fail. A lock on an untested byte in between
    // (an old QEMU's 104, say) only sends us down the precise path.
    match fcntl::test(fd, flavor, first, last - first + 1, true) {
        Ok(None) => return Ok(()),
        Ok(Some(_)) => {}
        Err(e) => return Err(Failure::TestFailed(e, first)),
    }
    for test in tests {
        match fcntl::test(fd, flavor, test.byte, 1, true) {
            Ok(None) => {}
            Ok(Some(found)) => return Err(Failure::Conflict(*test, found)),
            Err(e) => return Err(Failure::TestFailed(e, test.byte)),
        }
    }
    Ok(())
}

/// The protocol bytes the adopted open file description already holds,
/// from `/proc/self/fdinfo` (where only this description's OFD locks show).
/// Without `/proc`, none are assumed.
fn description_bytes(image: &Image) -> ByteSet {
    let path = format!("/proc/self/fdinfo/{}", image.fd().as_raw_fd());
    let Ok(info) = std::fs::read_to_string(path) else {
        return ByteSet::EMPTY;
    };
    let target = Mounts::read().target(image.fd(), image.file_id());
    let mut held = crate::protocol::Held::default();
    for line in lock_lines(&info) {
        // Only OFD locks belong to the description; a POSIX lock of this
        // process on the same bytes is another owner.
        if line.class == LockClass::Ofd && line.is_on(target.major, target.minor, target.id.ino) {
            held.add_range(line.first, line.last);
        }
    }
    ByteSet::new(held.perm, held.unshared)
}

/// The lock lines of this process's descriptor `fd`: the locks of its open
/// file description, all on its inode. `None` when fdinfo cannot be read
/// (no /proc).
fn own_lock_lines(fd: BorrowedFd<'_>) -> Option<Vec<LockLine>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    Some(lock_lines(&info).collect())
}
