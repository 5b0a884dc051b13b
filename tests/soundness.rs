//! What libfpl must never do to its caller (issue: soundness): a forked
//! child never releases or changes its parent's locks; a release that
//! returned success left nothing held, whatever children (fork, raw fork,
//! clone, vfork, posix_spawn, `Command::pre_exec`) hold copies of the
//! descriptor; the caller's own POSIX lease and OFD locks survive every
//! call; a FIFO, a pty master, a device or a socket is refused without
//! being opened. The C ABI side is tests/c/soundness.c; the Rust API side
//! is here. The judges are independent of libfpl: /proc/locks, F_OFD_GETLK
//! from another open file description, qemu-io, strace.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::{run_suite_without_qemu_dirs, TempDir};
use fpl::{Lock, Mode, Options, Request};

/// What the write preset locks (strict): 100, 101, 103, 201, 202, 203.
const WRITE_BYTES: [u32; 6] = [100, 101, 103, 201, 202, 203];

/// The tests that fork hold this, so that no test's child holds copies of
/// another test's descriptors while that test judges its bytes.
static FORKING: Mutex<()> = Mutex::new(());

#[test]
fn c_abi_forks_spawns_own_locks_and_side_effects() {
    run_suite_without_qemu_dirs("soundness", Duration::from_secs(300));
}

/// A C++ owner (`std::unique_ptr` with fpl_release as its deleter) whose
/// copy in a forked child goes out of scope: the child's release returns 0
/// and the parent still holds 100, 101, 103, 201, 202, 203.
#[test]
fn cpp_deleter_in_a_forked_child_leaves_the_parents_lock() {
    let _forking = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("cpp-fork");
    let img = image(&tmp, "cpp.img");
    let exe = common::compile(
        &[&common::root().join("tests/cpp/fork_deleter.cpp")],
        &tmp.path().join("fork_deleter"),
        true,
        &[],
    );
    let out = Command::new(&exe)
        .arg(&img)
        .output()
        .expect("the C++ program runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Bits: 100 -> 0x1, 101 -> 0x2, 103 -> 0x8, 201 -> 0x20, 202 -> 0x40, 203 -> 0x80.
    for line in [
        "child released 0",
        "parent holds 0xeb",
        "parent released 0",
        "after release 0x0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
}

fn image(tmp: &TempDir, name: &str) -> PathBuf {
    let path = tmp.path().join(name);
    File::create(&path)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the image");
    path
}

fn write_request() -> Request {
    Request::new(Mode::Write.perm(), Mode::Write.shared())
}

/// The bytes of interest that somebody holds, as F_OFD_GETLK F_WRLCK from a
/// new open file description of its own sees them.
fn held_bytes(path: &Path) -> Vec<u32> {
    let file = File::open(path).expect("open for the probe");
    let mut held = Vec::new();
    for byte in (100..=104).chain(200..=204) {
        // SAFETY: a plain C struct, all zeroes is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = byte.into();
        fl.l_len = 1;
        // SAFETY: F_OFD_GETLK on an open descriptor with a valid flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
        if fl.l_type != libc::F_UNLCK as _ {
            held.push(byte);
        }
    }
    held
}

/// `qemu-io -f raw -c 'write 0 4k' IMAGE`: true if refused for a lock,
/// false if it wrote; panics on anything else.
fn qemu_write_refused(path: &Path) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(path)
        .output()
        .expect("qemu-io runs (QEMU 10's qemu-utils must be installed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Failed to get") && text.contains("Is another process using the image") {
        return true;
    }
    assert!(
        out.status.success() && text.contains("wrote 4096/4096"),
        "qemu-io neither wrote nor was refused for a lock ({}): {text}",
        out.status
    );
    false
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into fds.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both are new descriptors nothing else owns.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

fn wait_exit(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid");
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// What the forked child does with its copy of the parent's Lock.
#[derive(Clone, Copy, Debug)]
enum ChildDoes {
    Drop,
    Release,
    Update,
}

/// Forks; the child does WHAT with the lock, writes one line to the report
/// pipe and leaves with `_exit`. Returns the child's report.
fn fork_child(lock: Lock, what: ChildDoes) -> (Lock, String) {
    let (mut from_child, mut to_parent) = pipe();
    // SAFETY: the child only makes system calls, formats into a String and
    // leaves with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        drop(from_child);
        let line = match what {
            ChildDoes::Drop => {
                drop(lock);
                "dropped\n".to_owned()
            }
            ChildDoes::Release => match lock.release() {
                Ok(()) => "release ok\n".to_owned(),
                Err(e) => format!("release errno {}\n", e.errno()),
            },
            ChildDoes::Update => {
                let mut lock = lock;
                let loosen = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
                let line = match lock.update(loosen) {
                    Ok(()) => "update ok\n".to_owned(),
                    Err(e) => format!("update errno {} {e}\n", e.errno()),
                };
                let release = match lock.release() {
                    Ok(()) => "release ok\n".to_owned(),
                    Err(e) => format!("release errno {}\n", e.errno()),
                };
                line + &release
            }
        };
        let _ = to_parent.write_all(line.as_bytes());
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(to_parent);
    let mut report = String::new();
    from_child.read_to_string(&mut report).expect("read report");
    assert_eq!(wait_exit(pid), 0, "the child failed: {report}");
    (lock, report)
}

fn parent_keeps_its_lock(what: ChildDoes) {
    let _forking = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("sound-fork");
    let img = image(&tmp, "fork.img");
    let lock = Lock::acquire(&img, write_request(), Options::default()).expect("acquire");
    assert_eq!(held_bytes(&img), WRITE_BYTES);
    let (lock, report) = fork_child(lock, what);
    match what {
        ChildDoes::Drop => assert_eq!(report, "dropped\n"),
        ChildDoes::Release => assert_eq!(report, "release ok\n", "the child's release()"),
        ChildDoes::Update => {
            assert!(
                report.starts_with(&format!("update errno {} ", libc::EPERM)),
                "the child's update() must fail with EPERM: {report}"
            );
            assert!(
                report.contains("another process"),
                "the error must say the lock belongs to another process: {report}"
            );
            assert!(report.ends_with("release ok\n"), "{report}");
        }
    }
    assert_eq!(
        held_bytes(&img),
        WRITE_BYTES,
        "the parent's bytes after the child's {what:?}"
    );
    assert!(
        qemu_write_refused(&img),
        "qemu-io could write while the parent holds the image (after the child's {what:?})"
    );
    lock.release().expect("the parent's release");
    assert_eq!(held_bytes(&img), Vec::<u32>::new());
    assert!(!qemu_write_refused(&img), "qemu-io refused after release");
}

#[test]
fn forked_child_dropping_the_lock_leaves_the_parents_bytes() {
    parent_keeps_its_lock(ChildDoes::Drop);
}

#[test]
fn forked_child_releasing_the_lock_leaves_the_parents_bytes() {
    parent_keeps_its_lock(ChildDoes::Release);
}

#[test]
fn forked_childs_update_fails_with_eperm_and_changes_nothing() {
    parent_keeps_its_lock(ChildDoes::Update);
}

/// Whether process PID has a descriptor of inode INO.
fn has_descriptor_of(pid: u32, ino: u64) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
        })
        .unwrap_or(false)
}

/// `Command::spawn` with a `pre_exec` closure that blocks reading a pipe:
/// the child holds copies of every descriptor and the spawning thread waits
/// in `spawn`. Released from the test's thread meanwhile, the bytes must be
/// free at once.
#[test]
fn release_frees_the_bytes_while_a_pre_exec_child_blocks() {
    let _forking = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("sound-pre-exec");
    let img = image(&tmp, "spawn.img");
    let ino = std::fs::metadata(&img).expect("stat").ino();
    let lock = Lock::acquire(&img, write_request(), Options::default()).expect("acquire");
    let (mut gate, mut open_gate) = pipe();
    let (tid_tx, tid_rx) = mpsc::channel();
    let spawner = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).expect("send tid");
        let mut cmd = Command::new("true");
        // SAFETY: the closure only reads from a pipe (a system call).
        unsafe {
            cmd.pre_exec(move || {
                let mut byte = [0u8; 1];
                gate.read_exact(&mut byte)?;
                Ok(())
            });
        }
        cmd.spawn().map(|mut child| child.wait())
    });
    let tid = tid_rx.recv().expect("the spawner's tid");
    let children = format!("/proc/self/task/{tid}/children");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let listed = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = listed.split_whitespace().next() {
            break pid.parse::<u32>().expect("a pid");
        }
        assert!(
            Instant::now() < deadline,
            "the pre_exec child never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        has_descriptor_of(pid, ino),
        "the pre_exec child has no copy of the lock's descriptor"
    );
    lock.release().expect("release");
    assert_eq!(
        held_bytes(&img),
        Vec::<u32>::new(),
        "release() returned Ok while the pre_exec child (pid {pid}, alive: {}) kept the bytes",
        has_descriptor_of(pid, ino)
    );
    open_gate.write_all(b"x").expect("open the gate");
    let status = spawner
        .join()
        .expect("the spawner thread")
        .expect("spawn")
        .expect("wait");
    assert!(status.success(), "{status}");
}
