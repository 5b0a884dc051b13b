//! Openers: processes that have an image open and hold none of its bytes
//! (QEMU with `file.locking=off`, here a real `qemu-io`). `FPL_QUERY_OPENERS`
//! lists them from the same walk as holders; `FPL_FLAG_NO_UNLOCKED_OPENERS`
//! refuses beside them with `-EBUSY`, taking its locks first and leaving
//! nothing behind; this process's own descriptors never count.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cabi::{c_path, message, name, new_error};
use common::TempDir;
use fpl::ffi::*;
use fpl::query::{query_with, Inspect};
use fpl::{ChainLock, Error, Lock, Mode, Options, Request};

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn openers() -> Inspect {
    Inspect {
        holders: true,
        openers: true,
    }
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

/// `qemu-io --image-opts OPTS` kept running; ready once it has `image` open.
struct QemuIo(Child);

impl QemuIo {
    fn start(opts: &str, image: &Path) -> QemuIo {
        let child = Command::new("qemu-io")
            .arg("--image-opts")
            .arg(opts)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io starts (QEMU 10 comes with this machine: qemu-utils)");
        let mut q = QemuIo(child);
        let pid = q.pid();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !query_with(image, openers())
            .expect("query")
            .holders
            .iter()
            .any(|h| h.pid == pid)
        {
            if let Ok(Some(st)) = q.0.try_wait() {
                panic!("qemu-io {opts} exited ({st})");
            }
            assert!(Instant::now() < deadline, "qemu-io never opened {image:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raw_image(dir: &TempDir, name: &str) -> PathBuf {
    qemu_img(dir.path(), &["create", "-q", "-f", "raw", name, "16M"]);
    dir.path().join(name)
}

fn unlocked(image: &Path) -> String {
    format!(
        "driver=raw,file.driver=file,file.filename={},file.locking=off",
        image.display()
    )
}

/// Bytes this process holds on `image`.
fn ours(image: &Path) -> usize {
    let me = std::process::id() as i32;
    fpl::query(image, true)
        .expect("query")
        .holders
        .iter()
        .filter(|h| h.pid == me)
        .count()
}

#[test]
fn a_qemu_with_locking_off_is_listed_as_an_opener_and_refused_beside() {
    let dir = TempDir::new("openers-off");
    let img = raw_image(&dir, "disk.raw");
    let qemu = QemuIo::start(&unlocked(&img), &img);

    // The protocol alone sees a free image: the hazard.
    let plain = fpl::query(&img, true).expect("query");
    assert!(
        plain.held.is_empty() && plain.holders.is_empty(),
        "{plain:?}"
    );
    let lock = Lock::acquire(&img, req(Mode::Write), Options::default())
        .expect("the protocol alone grants write beside a locking=off QEMU");
    lock.release().expect("release");

    // With openers: qemu-io, read-write, no locks.
    let seen = query_with(&img, openers()).expect("query");
    let found: Vec<_> = seen
        .holders
        .iter()
        .filter(|h| h.pid == qemu.pid())
        .collect();
    assert_eq!(found.len(), 1, "{seen:?}");
    let h = found[0];
    assert!(h.no_locks && h.held.is_empty(), "{h:?}");
    assert!(h.access.read && h.access.write, "{h:?}");
    assert_eq!(h.name, "qemu-io");

    // Refused beside, with nothing left held.
    let refuse = Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    };
    let err = Lock::acquire(&img, req(Mode::Read), refuse).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(matches!(&err, Error::Opened { opener, .. } if opener.pid == qemu.pid()));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "'{}' is open read-write by qemu-io (pid {}, fd ",
            img.display(),
            qemu.pid()
        )) && text.contains("locking=off"),
        "{text}"
    );
    assert_eq!(ours(&img), 0, "nothing held after the refusal");
    let err = fpl::check(&img, req(Mode::Write), refuse).expect_err("check refuses too");
    assert_eq!(err.errno(), libc::EBUSY);

    // The C ABI: query flags, holder flags and access, the refusal.
    let path = c_path(&img);
    let mut st = fpl_status::default();
    let mut hs: Vec<fpl_holder> = (0..4).map(|_| fpl_holder::default()).collect();
    let mut e = new_error();
    let rc = unsafe {
        fpl_query(
            path.as_ptr(),
            FPL_QUERY_HOLDERS | FPL_QUERY_OPENERS,
            &mut st,
            hs.as_mut_ptr(),
            hs.len(),
            &mut e,
        )
    };
    assert_eq!(rc, 0, "{}", message(&e));
    assert_eq!((st.perm, st.unshared, st.n_holders), (0, 0, 1));
    assert_eq!(hs[0].pid, qemu.pid());
    assert_eq!(hs[0].flags, FPL_HOLDER_NO_LOCKS);
    assert_eq!(hs[0].access, FPL_ACCESS_READ | FPL_ACCESS_WRITE);
    assert_eq!((hs[0].perm, hs[0].unshared), (0, 0));
    assert_eq!(name(&hs[0]), "qemu-io");
    // Without the flag, nobody.
    let rc = unsafe {
        fpl_query(
            path.as_ptr(),
            FPL_QUERY_HOLDERS,
            &mut st,
            hs.as_mut_ptr(),
            hs.len(),
            &mut e,
        )
    };
    assert_eq!((rc, st.n_holders), (0, 0));
    let mut lock: *mut fpl_lock = std::ptr::null_mut();
    let rc = unsafe {
        fpl_acquire(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            FPL_FLAG_NO_UNLOCKED_OPENERS,
            &mut lock,
            &mut e,
        )
    };
    assert_eq!(rc, -libc::EBUSY, "{}", message(&e));
    assert_eq!(
        e.holder_pid,
        qemu.pid(),
        "the opener is named in holder_pid"
    );
    assert!(lock.is_null());
    assert!(message(&e).contains("without locks"), "{}", message(&e));
    assert_eq!(ours(&img), 0);

    // Once it is gone, the flag changes nothing.
    drop(qemu);
    Lock::acquire(&img, req(Mode::Write), refuse)
        .expect("no opener left")
        .release()
        .expect("release");
}

#[test]
fn own_descriptors_and_locking_holders_are_never_openers() {
    let dir = TempDir::new("openers-own");
    let img = raw_image(&dir, "disk.raw");
    // This process has the image open (for I/O, without locks) and holds
    // a lock on it through another descriptor.
    let _file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open");
    let lock = Lock::acquire(&img, req(Mode::Read), Options::default()).expect("read");
    let seen = query_with(&img, openers()).expect("query");
    assert!(seen.holders.iter().all(|h| !h.no_locks), "{seen:?}");
    // A second lock of our own, refusing beside openers: our descriptors
    // never count.
    let refuse = Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    };
    Lock::acquire(&img, req(Mode::ReadShared), refuse)
        .expect("own descriptors are no openers")
        .release()
        .expect("release");
    lock.release().expect("release");

    // A QEMU that locks (qemu-io with locking on) is a holder, even for
    // descriptors of the image it has open without locks.
    let qemu = QemuIo::start(
        &format!(
            "driver=raw,file.driver=file,file.filename={}",
            img.display()
        ),
        &img,
    );
    let seen = query_with(&img, openers()).expect("query");
    let mine: Vec<_> = seen
        .holders
        .iter()
        .filter(|h| h.pid == qemu.pid())
        .collect();
    assert!(
        !mine.is_empty() && mine.iter().all(|h| !h.no_locks),
        "{seen:?}"
    );
    drop(qemu);
}

#[test]
fn a_chain_is_refused_beside_an_opener_of_any_member() {
    let dir = TempDir::new("openers-chain");
    let base = raw_image(&dir, "base.raw");
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
            "top.qcow2",
        ],
    );
    let top = dir.path().join("top.qcow2");
    // A locking=off user of the base only.
    let qemu = QemuIo::start(&unlocked(&base), &base);
    let refuse = Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    };
    // Per file, the top is fine; the chain is not.
    Lock::acquire(&top, req(Mode::Read), refuse)
        .expect("top alone")
        .release()
        .expect("release");
    let err = ChainLock::acquire(&top, req(Mode::Read), refuse).expect_err("the base is open");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        matches!(&err, Error::Opened { path, .. } if path == &base),
        "{err}"
    );
    assert_eq!(ours(&top) + ours(&base), 0, "every member rolled back");
    let err = ChainLock::check(&top, req(Mode::Read), refuse).expect_err("check");
    assert_eq!(err.errno(), libc::EBUSY);
    // Without the flag the chain is granted: the hazard.
    ChainLock::acquire(&top, req(Mode::Read), Options::default())
        .expect("the protocol alone")
        .release()
        .expect("release");
    // An update asking for the rule is refused and leaves the lock as it was.
    let mut lock =
        ChainLock::acquire(&top, req(Mode::ReadShared), Options::default()).expect("shared");
    let err = lock
        .update_with(req(Mode::Read), refuse)
        .expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert_eq!(lock.request(), req(Mode::ReadShared));
    let held: Vec<u32> = lock
        .locks()
        .flatten()
        .map(|l| l.held().iter().count() as u32)
        .collect();
    assert_eq!(held, [1, 1], "byte 100 on each member, as before");
    drop(qemu);
}

/// `fpl_acquire_wait(..., timeout_ms, ...)`.
fn acquire_wait(
    image: &Path,
    mode: Mode,
    flags: u32,
    timeout_ms: u32,
) -> (i32, *mut fpl_lock, fpl_error) {
    let path = c_path(image);
    let r = req(mode);
    let mut lock = std::ptr::null_mut();
    let mut err = new_error();
    // SAFETY: valid pointers.
    let rc = unsafe {
        fpl_acquire_wait(
            path.as_ptr(),
            r.perm.bits(),
            r.shared.bits(),
            flags,
            timeout_ms,
            &mut lock,
            &mut err,
        )
    };
    (rc, lock, err)
}

/// The bounded wait of the libraries, against real qemu-io: it takes the
/// image once qemu-io quits (and not before: it waited), gives up after
/// its timeout with QEMU's message and the holder named, tries once for 0,
/// returns other errors at once, waits beside an opener without locks with
/// FPL_FLAG_NO_UNLOCKED_OPENERS (-EBUSY after the timeout), and with
/// FPL_FLAG_CHAIN waits for any member.
#[test]
fn acquire_wait_waits_for_the_image_and_gives_up_with_the_last_conflict() {
    let dir = TempDir::new("wait");
    let image = raw_image(&dir, "vm.raw");
    let opts = format!(
        "driver=raw,file.driver=file,file.filename={}",
        image.display()
    );

    // Gives up: the holder stays.
    let writer = QemuIo::start(&opts, &image);
    let started = Instant::now();
    let (rc, _, err) = acquire_wait(&image, Mode::Write, 0, 300);
    assert_eq!(rc, -libc::EAGAIN, "{}", message(&err));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(err.holder_pid, writer.pid(), "{}", message(&err));
    assert!(
        message(&err).starts_with(&format!(
            "Failed to get shared \"write\" lock (held by qemu-io, pid {})",
            writer.pid()
        )),
        "{}",
        message(&err)
    );
    assert_eq!(ours(&image), 0, "nothing held after giving up");
    // 0 tries once.
    let (rc, _, _) = acquire_wait(&image, Mode::Write, FPL_FLAG_NO_HOLDER_LOOKUP, 0);
    assert_eq!(rc, -libc::EAGAIN);

    // Takes it once qemu-io quits, 400 ms in.
    let quitter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(writer);
    });
    let started = Instant::now();
    let (rc, lock, err) = acquire_wait(&image, Mode::Write, 0, 20_000);
    assert_eq!(rc, 0, "{}", message(&err));
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited");
    quitter.join().expect("the thread ends");
    assert!(ours(&image) > 0);
    // SAFETY: a live handle, not used again.
    assert_eq!(unsafe { fpl_release(lock) }, 0);

    // Any other error at once.
    let started = Instant::now();
    let (rc, _, _) = acquire_wait(&dir.path().join("missing.raw"), Mode::Write, 0, 20_000);
    assert_eq!(rc, -libc::ENOENT);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no wait for ENOENT"
    );

    // Beside an opener without locks: -EBUSY once the time is up.
    let opener = QemuIo::start(&unlocked(&image), &image);
    let (rc, _, err) = acquire_wait(&image, Mode::Write, FPL_FLAG_NO_UNLOCKED_OPENERS, 300);
    assert_eq!(rc, -libc::EBUSY, "{}", message(&err));
    assert_eq!(err.holder_pid, opener.pid());
    assert_eq!(ours(&image), 0);
    drop(opener);

    // A chain waits for its base.
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "vm.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    let top = dir.path().join("top.qcow2");
    let base_writer = QemuIo::start(&opts, &image);
    let (rc, _, err) = acquire_wait(&top, Mode::Read, FPL_FLAG_CHAIN, 200);
    assert_eq!(rc, -libc::EAGAIN, "{}", message(&err));
    assert!(
        message(&err).ends_with(&format!(
            "Is another process using the image [{}]?",
            image.display()
        )),
        "{}",
        message(&err)
    );
    drop(base_writer);
    let (rc, lock, err) = acquire_wait(&top, Mode::Read, FPL_FLAG_CHAIN, 5_000);
    assert_eq!(rc, 0, "{}", message(&err));
    // SAFETY: a live handle, not used again.
    assert_eq!(unsafe { fpl_release(lock) }, 0);

    // The Rust API is the same wait.
    let lock = Lock::acquire_within(&image, req(Mode::Write), Options::default(), Duration::ZERO)
        .expect("free now");
    lock.release().expect("release");
}

/// A child this process forks has copies of every descriptor until its
/// exec (a thread spawning a command while another queries): those are
/// this process's own open file descriptions, never openers. A child
/// that opens the image itself is one.
#[test]
fn a_forked_childs_copy_of_our_descriptor_is_no_opener() {
    let dir = TempDir::new("openers-fork");
    let image = raw_image(&dir, "vm.raw");
    let ours = std::fs::File::open(&image).expect("open the image");
    // SAFETY: the child only sleeps (async-signal-safe) and exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        unsafe {
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    let listed = query_with(&image, openers()).expect("query").holders;
    let other = QemuIo::start(&unlocked(&image), &image);
    let with_qemu = query_with(&image, openers()).expect("query").holders;
    // SAFETY: the child is ours.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    drop(ours);
    assert!(
        listed.iter().all(|h| h.pid != child),
        "the forked child's copy of our descriptor is listed: {listed:?}"
    );
    assert!(
        with_qemu.iter().any(|h| h.pid == other.pid() && h.no_locks),
        "qemu-io, which opened the image itself, is an opener: {with_qemu:?}"
    );
    assert!(with_qemu.iter().all(|h| h.pid != child), "{with_qemu:?}");
}
