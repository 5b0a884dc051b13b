//! Locks on a whole image: every file of it as QEMU opens it
//! ([`crate::chain`] says which files, with which request), each locked by
//! the per-file algorithm of [`crate::lock`], all or nothing.
//!
//! Acquire locks the members one after another, in the order QEMU opens
//! them; a conflict on any member releases the ones already taken, so the
//! caller is left holding nothing, and reports that member's conflict
//! (`Is another process using the image [base.raw]?`), with the holder
//! looked up once everything is rolled back. Update is QEMU's graph-wide
//! reopen: prepare every member (the union of old and new bytes held, the
//! new request tested), then commit all, or abort all on the first
//! conflict, so a refused update leaves every member as it was.
//!
//! The chain is resolved from the headers before anything is locked, and
//! each member is locked on the very descriptor its header was read from.
//! Once everything is held, each qcow2 header is read again through its
//! locked descriptor and each member's name is `stat`ed against the inode
//! locked (no lock call): a header rewritten in between (a rebase, a commit
//! that finished) or a file renamed over a member shows, and the locks are
//! taken again on the new chain (a few times at most).

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::chain::{self, Member};
use crate::error::{Error, Result};
use crate::lock::{self, Lock, Options, Prepared};
use crate::protocol::Request;

/// How many times acquire resolves and locks a chain that keeps changing
/// under it before giving up with `EAGAIN`.
const ATTEMPTS: usize = 3;

/// Held locks on every local member of an image. Remote members (`nbd:`,
/// ...) are listed but hold nothing: QEMU's client locks nothing there.
/// Dropping it releases everything, as [`ChainLock::release`] does.
#[derive(Debug)]
pub struct ChainLock {
    /// The image's path as the caller gave it.
    path: PathBuf,
    members: Vec<Member>,
    /// One per member, `None` for a remote one.
    locks: Vec<Option<Lock>>,
    request: Request,
    options: Options,
}

impl ChainLock {
    /// [`ChainLock::acquire`], waiting up to `timeout` while any member is
    /// in use, as [`crate::Lock::acquire_within`] does for one file.
    pub fn acquire_within(
        path: &Path,
        request: Request,
        options: Options,
        timeout: std::time::Duration,
    ) -> Result<ChainLock> {
        crate::wait::retrying(timeout, options, |o| ChainLock::acquire(path, request, o))
    }

    /// Resolves the image at `path` and locks each member with its derived
    /// request, all or nothing. Errors: a resolution error of
    /// [`chain::resolve`], or the first member's conflict or OS error, with
    /// nothing held.
    ///
    /// A VM's disk is an overlay on a base image: the overlay is written,
    /// the base read by the VM and written by nobody meanwhile.
    ///
    /// ```
    /// use std::process::Command;
    /// use fpl::chain::Role;
    /// use fpl::{ChainLock, Lock, Mode, Options, Request};
    /// # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let (base, top) = (dir.join("base.raw"), dir.join("top.qcow2"));
    /// std::fs::write(&base, vec![0u8; 1 << 20])?;
    /// let created = Command::new("qemu-img")
    ///     .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
    ///     .args([&base, &top])
    ///     .status()
    ///     .expect("qemu-img runs (Debian: apt-get install qemu-utils)");
    /// assert!(created.success());
    ///
    /// let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
    /// let disk = ChainLock::acquire(&top, write, Options::default())?;
    /// let roles: Vec<Role> = disk.members().iter().map(|m| m.role).collect();
    /// assert_eq!(roles, [Role::Image, Role::Backing]);
    ///
    /// // Nobody may write the base under the overlay ...
    /// let refused = Lock::acquire(&base, write, Options::default()).unwrap_err();
    /// assert!(refused.to_string().contains("base.raw"));
    /// // ... and anyone may read it, sharing as the VM does.
    /// let read = Request::new(Mode::Read.perm(), Mode::Read.shared());
    /// Lock::acquire(&base, read, Options::default())?.release()?;
    ///
    /// disk.verify()?; // every byte of every member still held
    /// disk.release()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(path: &Path, request: Request, options: Options) -> Result<ChainLock> {
        let quiet = member_options(options);
        for _ in 0..ATTEMPTS {
            let opened = chain::resolve_open(path, request)?;
            let mut members = Vec::with_capacity(opened.len());
            let mut prefixes = Vec::with_capacity(opened.len());
            let mut locks = Vec::with_capacity(opened.len());
            let mut pending = opened.into_iter();
            // Each member is locked on the descriptor its header was read
            // from; the ones not reached yet close with `pending`.
            for o in pending.by_ref() {
                let taken = match o.image {
                    None => None,
                    Some(image) => match Lock::from_image(image, o.member.request, quiet) {
                        Ok(lock) => Some(lock),
                        Err(mut e) => {
                            // Every member taken so far is released first.
                            if let Err(r) = release_all(&mut locks) {
                                return Err(rollback_failed(e, r));
                            }
                            if !options.skip_holder_lookup {
                                e.look_up_holder();
                            }
                            return Err(e);
                        }
                    },
                };
                members.push(o.member);
                prefixes.push(o.prefix);
                locks.push(taken);
            }
            // With everything held, nobody not sharing write can change a
            // header: what was read before locking must still be there,
            // and every name must still be the file locked.
            if unchanged(&members, &prefixes, &locks)? {
                if options.refuse_unlocked_openers {
                    if let Err(e) = refuse_beside_openers(&members, &locks) {
                        release_all(&mut locks)?;
                        return Err(e);
                    }
                }
                return Ok(ChainLock {
                    path: path.to_path_buf(),
                    members,
                    locks,
                    request,
                    options,
                });
            }
            release_all(&mut locks)?;
        }
        Err(Error::os(
            Errno::EAGAIN,
            format!(
                "the backing chain of '{}' kept changing while it was being locked: try again",
                path.to_string_lossy()
            ),
        ))
    }

    /// Would [`ChainLock::acquire`] succeed now? Takes no lock: each local
    /// member is checked with its derived request ([`lock::check`]); the
    /// first refusal is the answer.
    pub fn check(path: &Path, request: Request, options: Options) -> Result<()> {
        let quiet = member_options(options);
        let members = chain::resolve(path, request)?;
        let mut open = Vec::new();
        for m in &members {
            if m.file.is_some() {
                match lock::check_locks(&m.path, m.request, quiet) {
                    Ok(image) => open.push((m.path.as_path(), image)),
                    Err(mut e) => {
                        if !options.skip_holder_lookup {
                            e.look_up_holder();
                        }
                        return Err(e);
                    }
                }
            }
        }
        if options.refuse_unlocked_openers {
            let files: Vec<_> = open.iter().map(|(p, image)| (*p, image)).collect();
            crate::openers::refuse(&files)?;
        }
        Ok(())
    }

    /// Changes every member to what `request` derives for it, all or
    /// nothing. The members stay those resolved at acquire. Fails with
    /// `EPERM` in a forked child, like [`Lock::update`].
    pub fn update(&mut self, request: Request) -> Result<()> {
        self.update_with(request, self.options)
    }

    /// [`ChainLock::update`] with other options for this change.
    pub fn update_with(&mut self, request: Request, options: Options) -> Result<()> {
        let quiet = member_options(options);
        // Resolving again derives each member's request in the one place
        // that knows every use of a file that appears twice.
        let again = chain::resolve(&self.path, request)?;
        let same = again.len() == self.members.len()
            && again
                .iter()
                .zip(&self.members)
                .all(|(a, m)| (a.file, &a.path, a.role) == (m.file, &m.path, m.role));
        if !same {
            return Err(Error::os(
                Errno::ESTALE,
                format!(
                    "the backing chain of '{}' changed since it was locked (its headers \
                     name other files now): release it and acquire again",
                    self.path.to_string_lossy()
                ),
            ));
        }
        let wanted: Vec<Request> = again.iter().map(|m| m.request).collect();
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (i, lock) in self.locks.iter_mut().enumerate() {
            let Some(lock) = lock else { continue };
            match lock.prepare(wanted[i], quiet) {
                Ok(p) => prepared.push((i, p)),
                Err(mut e) => {
                    if let Err(u) = abort_all(&mut self.locks, prepared) {
                        return Err(rollback_failed(e, u));
                    }
                    if !options.skip_holder_lookup {
                        e.look_up_holder();
                    }
                    return Err(e);
                }
            }
        }
        if options.refuse_unlocked_openers {
            if let Err(e) = refuse_beside_openers(&self.members, &self.locks) {
                return match abort_all(&mut self.locks, prepared) {
                    Ok(()) => Err(e),
                    Err(u) => Err(rollback_failed(e, u)),
                };
            }
        }
        let mut result = Ok(());
        for (i, p) in prepared {
            if let Some(l) = self.locks[i].as_mut() {
                result = result.and(l.commit(p));
            }
        }
        for (m, r) in self.members.iter_mut().zip(wanted) {
            m.request = r;
        }
        self.request = request;
        result
    }

    /// The members, in the order QEMU opens them, each with the request
    /// held on it.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The request the image was locked (or last updated) with.
    pub fn request(&self) -> Request {
        self.request
    }

    /// The per-file locks, one per member (`None` for a remote one).
    pub fn locks(&self) -> impl Iterator<Item = Option<&Lock>> {
        self.locks.iter().map(Option::as_ref)
    }

    /// Are all the bytes still held, on every member? [`Lock::verify`] for
    /// each, in order; the first loss is the answer (`ENOLCK`).
    pub fn verify(&self) -> Result<()> {
        self.locks.iter().flatten().try_for_each(Lock::verify)
    }

    /// Releases every member ([`Lock::release`] each, all of them even if
    /// one fails); the first failure is returned.
    pub fn release(mut self) -> Result<()> {
        release_all(&mut self.locks)
    }
}

/// Whether the chain locked is still the chain: each member's header
/// prefix, read again through its locked descriptor, is what resolution
/// read, and each member's name still names the inode locked. No lock
/// call: one `pread` or two and one `stat` per member.
fn unchanged(members: &[Member], prefixes: &[Vec<u8>], locks: &[Option<Lock>]) -> Result<bool> {
    for ((m, before), lock) in members.iter().zip(prefixes).zip(locks) {
        let Some(lock) = lock else { continue };
        let named = nix::sys::stat::stat(&m.path)
            .ok()
            .map(|st| crate::holders::FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            });
        if named != m.file {
            return Ok(false);
        }
        if m.format == crate::chain::Format::Qcow2
            && &chain::reread(lock.image(), &m.path)? != before
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What each member's own lock is taken with: no holder lookup (done once,
/// after the rollback) and no openers walk (done once, for all members).
fn member_options(options: Options) -> Options {
    Options {
        skip_holder_lookup: true,
        refuse_unlocked_openers: false,
        ..options
    }
}

/// One walk of `/proc` for the openers of every locked member.
fn refuse_beside_openers(members: &[Member], locks: &[Option<Lock>]) -> Result<()> {
    let files: Vec<_> = members
        .iter()
        .zip(locks)
        .filter_map(|(m, l)| l.as_ref().map(|l| (m.path.as_path(), l.image())))
        .collect();
    crate::openers::refuse(&files)
}

/// Aborts every prepared member, the last prepared first, all of them even
/// if one fails; the first failure is kept.
fn abort_all(locks: &mut [Option<Lock>], prepared: Vec<(usize, Prepared)>) -> Result<()> {
    let mut result = Ok(());
    for (i, p) in prepared.into_iter().rev() {
        if let Some(l) = locks[i].as_mut() {
            let outcome = l.abort(p);
            if result.is_ok() {
                result = outcome;
            }
        }
    }
    result
}

/// A refusal whose rollback failed too: the rollback's errno, both messages.
fn rollback_failed(refusal: Error, rollback: Error) -> Error {
    Error::os(
        Errno::from_raw(rollback.errno()),
        format!("{refusal}\nand rolling the other members back failed: {rollback}"),
    )
}

/// Releases every lock, the last taken first; the first failure is kept.
fn release_all(locks: &mut Vec<Option<Lock>>) -> Result<()> {
    let mut result = Ok(());
    while let Some(lock) = locks.pop() {
        if let Some(lock) = lock {
            let outcome = lock.release();
            if result.is_ok() {
                result = outcome;
            }
        }
    }
    result
}
