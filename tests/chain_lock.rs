//! Locking a whole image (`fpl::ChainLock`, `FPL_FLAG_CHAIN`): all or
//! nothing over the members, shown with `/proc/locks` and with real QEMU
//! holders (qemu-io); a file that appears twice locked once; update and
//! release over every member; `fpl_verify` and `fpl_chain` through the C
//! ABI.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cabi::{c_path, message, new_error};
use common::TempDir;
use fpl::chain::{Format, Role};
use fpl::ffi::*;
use fpl::{ChainLock, Error, Mode, Options, Request};

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("qemu-img runs (QEMU 10 comes with this machine: qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// base.raw <- mid.qcow2 <- top.qcow2 in a new folder.
fn chain3(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "raw", "base.raw", "16M"],
    );
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    let top = dir.path().join("top.qcow2");
    (dir, top)
}

/// A qemu-io process holding `image` with `args` until dropped.
struct Holder(Child);

impl Holder {
    fn start(args: &[&str], image: &Path) -> Holder {
        let child = Command::new("qemu-io")
            .args(args)
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io starts (QEMU 10 comes with this machine: qemu-utils)");
        let mut holder = Holder(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = holder.pid();
        // Its own bytes: the image may hold others' already.
        while !fpl::query(image, true)
            .expect("query")
            .holders
            .iter()
            .any(|h| h.pid == pid)
        {
            if let Ok(Some(st)) = holder.0.try_wait() {
                panic!("qemu-io {args:?} exited ({st}) before locking {image:?}");
            }
            assert!(Instant::now() < deadline, "qemu-io never locked {image:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        holder
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `/proc/locks` lines on these files' inodes.
fn proc_locks(files: &[&Path]) -> Vec<String> {
    let ids: Vec<String> = files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).expect("stat");
            let dev = m.dev();
            format!(
                "{:02x}:{:02x}:{}",
                libc::major(dev),
                libc::minor(dev),
                m.ino()
            )
        })
        .collect();
    std::fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(&format!(" {id} "))))
        // Without the ordinal, which depends on every lock of the host.
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_owned())
        .collect()
}

/// Bytes this process's descriptors hold on `image`, as fpl::query sees them.
fn ours(image: &Path) -> Vec<(u32, u32)> {
    let me = std::process::id() as i32;
    fpl::query(image, true)
        .expect("query")
        .holders
        .iter()
        .filter(|h| h.pid == me)
        .map(|h| (h.held.perm.bits(), h.held.unshared.bits()))
        .collect()
}

#[test]
fn a_conflict_on_the_base_rolls_back_every_member() {
    let (dir, top) = chain3("chain-rollback");
    let (base, mid) = (dir.path().join("base.raw"), dir.path().join("mid.qcow2"));
    let files = [base.as_path(), mid.as_path(), top.as_path()];
    // A writer of the raw base: qemu-io opens it read-write.
    let writer = Holder::start(&["-f", "raw"], &base);
    let before = proc_locks(&files);
    assert!(!before.is_empty(), "qemu-io holds bytes of base.raw");

    // Read needs base.raw unwritten: top and mid are locked first, then
    // base refuses, and everything is rolled back.
    let err = ChainLock::acquire(&top, req(Mode::Read), Options::default())
        .expect_err("a writer of the base refuses a read lock on the chain");
    let conflict = err.conflict().expect("a conflict");
    assert_eq!(conflict.path.as_deref(), Some(base.as_path()));
    let text = err.to_string();
    assert!(
        text.contains("Failed to get shared \"write\" lock")
            && text.contains(&format!("(held by qemu-io, pid {})", writer.pid()))
            && text.contains(&format!(
                "Is another process using the image [{}]?",
                base.display()
            )),
        "{text}"
    );
    assert_eq!(proc_locks(&files), before, "nothing of ours is left");
    for f in files {
        assert_eq!(ours(f), vec![], "{f:?}");
    }

    // The same through the C ABI.
    let path = c_path(&top);
    let mut out: *mut fpl_lock = std::ptr::null_mut();
    let mut e = new_error();
    let rc = unsafe {
        fpl_acquire(
            path.as_ptr(),
            FPL_MODE_READ_PERM,
            FPL_MODE_READ_SHARE,
            FPL_FLAG_CHAIN,
            &mut out,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EAGAIN, "{}", message(&e));
    assert!(out.is_null(), "out is written only on success");
    assert_eq!(
        (e.byte, e.perm, e.holder_pid),
        (101, FPL_PERM_WRITE, writer.pid())
    );
    assert!(message(&e).contains("base.raw]?"), "{}", message(&e));
    assert_eq!(proc_locks(&files), before);

    // Without the writer, the chain is locked: three more lock lines'
    // worth, on every member, and release takes every one away.
    drop(writer);
    let empty = proc_locks(&files);
    assert_eq!(empty, Vec::<String>::new());
    let lock = ChainLock::acquire(&top, req(Mode::Read), Options::default()).expect("free now");
    assert_eq!(lock.members().len(), 3);
    // read: a qcow2 member uses 100 and unshares 201, 203 (strict: 201-203);
    // the raw base, under a request that does not share write, the same.
    for f in files {
        assert_eq!(ours(f), vec![(0x01, 0x0e)], "{f:?}");
    }
    assert!(proc_locks(&files).len() >= 6);
    lock.release().expect("release");
    assert_eq!(proc_locks(&files), Vec::<String>::new());
}

#[test]
fn check_answers_for_every_member_and_takes_nothing() {
    let (dir, top) = chain3("chain-check");
    let base = dir.path().join("base.raw");
    let writer = Holder::start(&["-f", "raw"], &base);
    let err = ChainLock::check(&top, req(Mode::Read), Options::default()).expect_err("refused");
    assert_eq!(
        err.conflict().and_then(|c| c.path.clone()),
        Some(base.clone())
    );
    // read-shared is QEMU's -U: nothing conflicts with a writer.
    ChainLock::check(&top, req(Mode::ReadShared), Options::default()).expect("shared read");
    let mut e = new_error();
    let path = c_path(&top);
    let rc = unsafe {
        fpl_check(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            FPL_FLAG_CHAIN | FPL_FLAG_NO_HOLDER_LOOKUP,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EAGAIN);
    assert_eq!(e.holder_pid, -1, "no lookup asked");
    // Per file, the top alone is free: only the chain sees the writer.
    let rc = unsafe {
        fpl_check(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            0,
            &mut e,
        )
    };
    assert_eq!(rc, 0, "{}", message(&e));
    drop(writer);
}

#[test]
fn a_refused_update_leaves_every_member_as_it_was() {
    let (dir, top) = chain3("chain-update");
    let (base, mid) = (dir.path().join("base.raw"), dir.path().join("mid.qcow2"));
    // read-shared is force-share: byte 100 on every member, so a writer
    // of the base is welcome.
    let mut lock =
        ChainLock::acquire(&top, req(Mode::ReadShared), Options::default()).expect("shared");
    for f in [&top, &mid, &base] {
        assert_eq!(ours(f), vec![(0x01, 0)], "{f:?}");
    }
    let writer = Holder::start(&["-f", "raw"], &base);
    // To read: top and mid are prepared (201-203 taken), base refuses,
    // and top and mid are aborted back to byte 100 alone.
    let err = lock
        .update(req(Mode::Read))
        .expect_err("the writer refuses");
    assert_eq!(
        err.conflict().and_then(|c| c.path.clone()),
        Some(base.clone())
    );
    for f in [&top, &mid, &base] {
        assert_eq!(ours(f), vec![(0x01, 0)], "{f:?} as it was");
    }
    assert_eq!(lock.request(), req(Mode::ReadShared));
    drop(writer);
    lock.update(req(Mode::Read)).expect("free now");
    for f in [&top, &mid, &base] {
        assert_eq!(ours(f), vec![(0x01, 0x0e)], "{f:?}");
    }
    assert_eq!(
        lock.members()[2].request,
        fpl::chain::derive(req(Mode::Read), Role::Backing, Format::Raw, 2)
    );
    // Loosening back never fails.
    lock.update(req(Mode::ReadShared)).expect("loosen");
    for f in [&top, &mid, &base] {
        assert_eq!(ours(f), vec![(0x01, 0)], "{f:?}");
    }
}

#[test]
fn a_data_file_shared_by_two_levels_is_locked_once() {
    let dir = TempDir::new("chain-shared-data");
    let d = dir.path().join("d.raw");
    let x_opts = format!("data_file={},data_file_raw=on", d.display());
    qemu_img(
        dir.path(),
        &[
            "create", "-q", "-f", "qcow2", "-o", &x_opts, "x.qcow2", "16M",
        ],
    );
    // y.qcow2: backing x.qcow2, and the same data file (what a careless
    // copy of x's header gives).
    let y_opts = format!("data_file={}", d.display());
    qemu_img(
        dir.path(),
        &[
            "create", "-q", "-f", "qcow2", "-o", &y_opts, "-b", "x.qcow2", "-F", "qcow2",
            "y.qcow2", "16M",
        ],
    );
    let y = dir.path().join("y.qcow2");
    let lock = ChainLock::acquire(&y, req(Mode::Write), Options::default())
        .expect("write on the whole image");
    let roles: Vec<(PathBuf, Role, u32)> = lock
        .members()
        .iter()
        .map(|m| (m.path.clone(), m.role, m.depth))
        .collect();
    assert_eq!(
        roles,
        [
            (y.clone(), Role::Image, 0),
            (d.clone(), Role::DataFile, 0),
            (dir.path().join("x.qcow2"), Role::Backing, 1),
        ]
    );
    // One descriptor of ours on d.raw, with the image's data file bytes
    // (read, write, resize used; resize and, strict, write unshared).
    let held = ours(&d);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, 0x0b);
    assert_eq!(ours(&y), vec![(0x0b, 0x0e)]);
    lock.release().expect("release");
    assert_eq!(ours(&d), vec![]);
}

#[test]
fn remote_members_are_listed_and_never_locked() {
    let dir = TempDir::new("chain-remote");
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "nbd+unix:///disk?socket=/nonexistent.sock",
            "-F",
            "raw",
            "ovl.qcow2",
            "16M",
        ],
    );
    let ovl = dir.path().join("ovl.qcow2");
    let lock = ChainLock::acquire(&ovl, req(Mode::Write), Options::default()).expect("acquire");
    let kinds: Vec<(Format, bool)> = lock
        .members()
        .iter()
        .map(|m| (m.format, m.file.is_some()))
        .collect();
    assert_eq!(kinds, [(Format::Qcow2, true), (Format::Remote, false)]);
    assert_eq!(lock.locks().filter(Option::is_some).count(), 1);
    lock.verify().expect("held");
}

#[test]
fn verify_finds_a_byte_that_is_gone() {
    let (dir, top) = chain3("chain-verify");
    let base = dir.path().join("base.raw");
    let lock = ChainLock::acquire(&top, req(Mode::Read), Options::default()).expect("acquire");
    lock.verify().expect("all held");
    // Take byte 100 of the base away behind the lock's back, as a file
    // system that loses locks would.
    let base_lock = lock.locks().nth(2).flatten().expect("the base is locked");
    let unlock = libc::flock {
        l_type: libc::F_UNLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 100,
        l_len: 1,
        l_pid: 0,
    };
    let rc = unsafe { libc::fcntl(base_lock.fd().as_raw_fd(), libc::F_OFD_SETLK, &unlock) };
    assert_eq!(rc, 0);
    let err = lock.verify().expect_err("byte 100 of the base is gone");
    assert_eq!(err.errno(), libc::ENOLCK);
    assert_eq!(
        err.to_string(),
        format!(
            "lost the lock on [{}]: byte 100 is no longer held",
            base.display()
        )
    );
    assert!(matches!(err, Error::Lost { byte: 100, .. }));
    lock.release().expect("release");
}

/// Another process holding the very byte that is lost cannot hide the
/// loss on a file system whose locks the kernel records: the handle's own
/// fdinfo lists its locks, and byte 100 is no longer among them (a test
/// from a new descriptor would meet qemu-io's byte 100 and see it held).
#[test]
fn verify_is_not_fooled_by_another_holder_of_the_lost_byte() {
    let (dir, top) = chain3("chain-verify-shared");
    let base = dir.path().join("base.raw");
    let lock = ChainLock::acquire(&top, req(Mode::Read), Options::default()).expect("acquire");
    // qemu-io reading the base as QEMU reads a raw image: byte 100 too.
    let reader = Holder::start(&["-r", "-f", "raw", "-U"], &base);
    let theirs = fpl::query(&base, true).expect("query");
    assert!(
        theirs
            .holders
            .iter()
            .any(|h| h.pid == reader.pid() && h.held.covers(100)),
        "qemu-io holds byte 100 of the base: {theirs:?}"
    );
    let base_lock = lock.locks().nth(2).flatten().expect("the base is locked");
    let unlock = libc::flock {
        l_type: libc::F_UNLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 100,
        l_len: 1,
        l_pid: 0,
    };
    let rc = unsafe { libc::fcntl(base_lock.fd().as_raw_fd(), libc::F_OFD_SETLK, &unlock) };
    assert_eq!(rc, 0);
    // Byte 100 is still held on the file, by qemu-io.
    assert!(fpl::query(&base, false).expect("query").held.covers(100));
    let err = lock.verify().expect_err("this handle's byte 100 is gone");
    assert!(matches!(err, Error::Lost { byte: 100, .. }), "{err}");
    drop(reader);
    lock.release().expect("release");
}

#[test]
fn the_c_abi_chain_verify_and_flag_rules() {
    let (dir, top) = chain3("chain-cabi");
    let path = c_path(&top);
    let mut e = new_error();
    // fpl_chain: the count first, then the members.
    let mut n = 0usize;
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            0,
            std::ptr::null_mut(),
            0,
            &mut n,
            &mut e,
        )
    };
    assert_eq!((rc, n), (0, 3), "{}", message(&e));
    let mut members: Vec<fpl_member> = (0..2).map(|_| fpl_member::default()).collect();
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            FPL_FLAG_EXACT,
            members.as_mut_ptr(),
            members.len(),
            &mut n,
            &mut e,
        )
    };
    assert_eq!((rc, n), (0, 3), "cap 2 of 3: two written, three counted");
    let got: Vec<(u32, u32, u32, u32, u32, String)> = members
        .iter()
        .map(|m| {
            let p = unsafe { std::ffi::CStr::from_ptr(m.path.as_ptr()) };
            (
                m.role,
                m.format,
                m.depth,
                m.perm,
                m.shared,
                p.to_string_lossy().into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                FPL_ROLE_IMAGE,
                FPL_FORMAT_QCOW2,
                0,
                0x0b,
                0x01,
                top.display().to_string()
            ),
            // A qcow2 backing file reads and shares consistent read and
            // write-unchanged (QEMU's _for_cow), never write or resize.
            (
                FPL_ROLE_BACKING,
                FPL_FORMAT_QCOW2,
                1,
                0x01,
                0x05,
                dir.path().join("mid.qcow2").display().to_string()
            ),
        ]
    );
    assert!(members.iter().all(|m| m.reserved == [0; 8]));

    // Errors: a missing backing file, in QEMU's words; bad arguments.
    std::fs::remove_file(dir.path().join("base.raw")).expect("rm");
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            1,
            15,
            0,
            std::ptr::null_mut(),
            0,
            &mut n,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::ENOENT);
    assert_eq!(
        message(&e),
        format!(
            "Could not open backing file: Could not open backing file: Could not open '{}': \
             No such file or directory",
            dir.path().join("base.raw").display()
        )
    );
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            1,
            15,
            0,
            std::ptr::null_mut(),
            1,
            &mut n,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EINVAL);
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            1,
            15,
            0x100,
            std::ptr::null_mut(),
            0,
            &mut n,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EINVAL);
    let rc = unsafe {
        fpl_chain(
            path.as_ptr(),
            1,
            15,
            0,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EINVAL);
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "raw", "base.raw", "16M"],
    );

    // Acquire, verify, the flag must match on update, release all.
    let mut lock: *mut fpl_lock = std::ptr::null_mut();
    let rc = unsafe { fpl_acquire(path.as_ptr(), 1, 1, FPL_FLAG_CHAIN, &mut lock, &mut e) };
    assert_eq!(rc, 0, "{}", message(&e));
    assert_eq!(unsafe { fpl_verify(lock, &mut e) }, 0, "{}", message(&e));
    assert_eq!(e.code, 0);
    let rc = unsafe { fpl_update(lock, 1, 15, 0, &mut e) };
    assert_eq!(rc, -libc::EINVAL);
    assert!(message(&e).contains("FPL_FLAG_CHAIN"), "{}", message(&e));
    assert_eq!(
        unsafe { fpl_update(lock, 1, 15, FPL_FLAG_CHAIN, &mut e) },
        0
    );
    assert_eq!(ours(&dir.path().join("base.raw")), vec![(0x01, 0)]);
    assert_eq!(unsafe { fpl_release(lock) }, 0);
    assert_eq!(ours(&dir.path().join("base.raw")), vec![]);
    assert_eq!(
        unsafe { fpl_verify(std::ptr::null(), &mut e) },
        -libc::EINVAL
    );

    // A descriptor has no path to resolve backing names against.
    let file = std::fs::File::open(&top).expect("open");
    let rc = unsafe { fpl_acquire_fd(file.as_raw_fd(), 1, 15, FPL_FLAG_CHAIN, &mut lock, &mut e) };
    assert_eq!(rc, -libc::EINVAL);
    assert!(message(&e).contains("use fpl_acquire"), "{}", message(&e));
}

#[test]
fn a_loop_is_refused_and_nothing_is_locked() {
    let dir = TempDir::new("chain-loop");
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "a.qcow2", "16M"],
    );
    qemu_img(
        dir.path(),
        &[
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2",
        ],
    );
    qemu_img(
        dir.path(),
        &[
            "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2",
        ],
    );
    let b = dir.path().join("b.qcow2");
    let err = ChainLock::acquire(&b, req(Mode::Write), Options::default()).expect_err("a loop");
    assert_eq!(err.errno(), libc::ELOOP, "{err}");
    assert_eq!(ours(&b), vec![]);
    assert_eq!(ours(&dir.path().join("a.qcow2")), vec![]);
}

#[test]
fn a_forked_child_releasing_the_chain_leaves_the_parent_s_locks() {
    let (dir, top) = chain3("chain-fork");
    let base = dir.path().join("base.raw");
    let lock = ChainLock::acquire(&top, req(Mode::Write), Options::default()).expect("acquire");
    // SAFETY: the child only releases, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = lock.release().is_ok();
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(ours(&base), vec![(0x01, 0x0e)], "the parent keeps the base");
    lock.verify().expect("still held");
    lock.release().expect("release");
    assert_eq!(ours(&base), vec![]);
}
