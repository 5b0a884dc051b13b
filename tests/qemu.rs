//! libfpl against the real QEMU 10 (`qemu-io`, `qemu-img`), through the C
//! ABI: QEMU holds and libfpl observes and competes; libfpl holds and QEMU
//! is refused with its own message. The full matrix is a later suite.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cabi::{c_path, c_query, message, name, new_error};
use common::TempDir;
use fpl::ffi::*;

/// A QEMU process that is killed and reaped however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: these tests need QEMU 10's qemu-utils (qemu-io, qemu-img), preinstalled on this machine");
}

fn create_image(dir: &Path, name: &str, format: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new(qemu_tool("qemu-img"))
        .args(["create", "-q", "-f", format])
        .arg(&path)
        .arg("16M")
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `qemu-io -f FORMAT IMAGE` reading commands from a pipe: it holds the
/// image, read-write, until the pipe closes.
fn qemu_io_holding(image: &Path, format: &str) -> Qemu {
    let child = Command::new(qemu_tool("qemu-io"))
        .args(["-f", format])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io starts");
    Qemu(child)
}

struct Query {
    status: fpl_status,
    holders: Vec<fpl_holder>,
}

fn query(image: &Path) -> Query {
    let (rc, status, holders, err) = c_query(image);
    assert_eq!(rc, 0, "fpl_query: {}", message(&err));
    Query { status, holders }
}

/// Waits (bounded) until QEMU's locks on the image show up.
fn wait_for_bytes(image: &Path, qemu: &mut Qemu) -> Query {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = query(image);
        if q.status.perm != 0 {
            return q;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            panic!("QEMU exited ({status}) before locking {image:?}");
        }
        assert!(Instant::now() < deadline, "QEMU never locked {image:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes 100-104 / 200-204 that /proc/locks shows on the image's inode.
fn proc_locks_bytes(image: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(image).expect("image exists").ino();
    // Read until two passes agree: /proc/locks comes a page at a time.
    let read = || std::fs::read_to_string("/proc/locks").expect("/proc/locks readable");
    let mut text = read();
    for _ in 0..50 {
        let again = read();
        if again == text {
            break;
        }
        text = again;
    }
    let mut bytes = Vec::new();
    for line in text.lines().filter_map(fpl::fdinfo::parse_lock_line) {
        if line.ino != ino {
            continue;
        }
        for b in (100..=104).chain(200..=204) {
            if line.covers(u64::from(b)) && !bytes.contains(&b) {
                bytes.push(b);
            }
        }
    }
    bytes.sort_unstable();
    bytes
}

fn acquire(image: &Path, perm: u32, shared: u32, flags: u32) -> (i32, *mut fpl_lock, fpl_error) {
    let path = c_path(image);
    let mut lock = std::ptr::null_mut();
    let mut err = new_error();
    // SAFETY: valid pointers.
    let rc = unsafe { fpl_acquire(path.as_ptr(), perm, shared, flags, &mut lock, &mut err) };
    (rc, lock, err)
}

#[test]
fn qemu_io_raw_writer_is_seen_named_and_conflicts() {
    let tmp = TempDir::new("qemu-raw");
    let image = create_image(tmp.path(), "disk.raw", "raw");
    let mut qemu = qemu_io_holding(&image, "raw");
    let q = wait_for_bytes(&image, &mut qemu);

    // QEMU's raw read-write open uses consistent read and write and shares
    // everything: bytes 100-101, as /proc/locks says.
    assert_eq!(proc_locks_bytes(&image), [100, 101]);
    assert_eq!(q.status.perm, FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE);
    assert_eq!(q.status.unshared, 0);
    assert_eq!(q.holders.len(), 1, "one holder");
    assert_eq!(q.holders[0].pid, qemu.0.id() as i32);
    assert_eq!(name(&q.holders[0]), "qemu-io");

    // The write preset refuses to share write, which qemu-io uses.
    let (rc, lock, err) = acquire(&image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0);
    assert_eq!(rc, -libc::EAGAIN, "{}", message(&err));
    assert!(lock.is_null());
    assert_eq!((err.byte, err.perm), (101, FPL_PERM_WRITE));
    assert_eq!(err.holder_pid, qemu.0.id() as i32);
    let msg = message(&err);
    assert!(
        msg.starts_with("Failed to get shared \"write\" lock"),
        "{msg}"
    );
    assert!(msg.contains("held by qemu-io"), "{msg}");
    assert!(msg.contains(&format!(
        "Is another process using the image [{}]?",
        image.display()
    )));
    // Rolled back: only QEMU's bytes remain.
    assert_eq!(proc_locks_bytes(&image), [100, 101]);

    // Reading while sharing everything is fine next to a writer.
    let (rc, lock, err) = acquire(
        &image,
        FPL_MODE_READ_SHARED_PERM,
        FPL_MODE_READ_SHARED_SHARE,
        0,
    );
    assert_eq!(rc, 0, "{}", message(&err));
    // SAFETY: a live handle.
    assert_eq!(unsafe { fpl_release(lock) }, 0);
}

#[test]
fn qemu_io_qcow2_writer_refuses_a_second_writer() {
    let tmp = TempDir::new("qemu-qcow2");
    let image = create_image(tmp.path(), "disk.qcow2", "qcow2");
    let mut qemu = qemu_io_holding(&image, "qcow2");
    let q = wait_for_bytes(&image, &mut qemu);

    // A qcow2 node uses read, write, resize of its file and shares neither
    // write nor resize: 100-101, 103, 201, 203 (PROTOCOL.md §5).
    assert_eq!(proc_locks_bytes(&image), [100, 101, 103, 201, 203]);
    assert_eq!(q.holders.len(), 1);
    assert_eq!(name(&q.holders[0]), "qemu-io");

    for flags in [0, FPL_FLAG_EXACT] {
        let (rc, lock, err) = acquire(&image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, flags);
        assert_eq!(rc, -libc::EAGAIN, "{}", message(&err));
        assert!(lock.is_null());
        assert_eq!((err.byte, err.perm), (201, FPL_PERM_WRITE));
        assert_eq!(err.holder_pid, qemu.0.id() as i32);
        let msg = message(&err);
        assert!(msg.starts_with("Failed to get \"write\" lock"), "{msg}");
        assert!(
            msg.contains("Is another process using the image ["),
            "{msg}"
        );
    }
    assert_eq!(proc_locks_bytes(&image), [100, 101, 103, 201, 203]);
}

#[test]
fn qemu_io_is_refused_while_libfpl_holds_exclusive() {
    let tmp = TempDir::new("qemu-excl");
    let image = create_image(tmp.path(), "disk.raw", "raw");
    let (rc, lock, err) = acquire(&image, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0);
    assert_eq!(rc, 0, "{}", message(&err));

    let open = || {
        Command::new(qemu_tool("qemu-io"))
            .args(["-f", "raw", "-c", "quit"])
            .arg(&image)
            .output()
            .expect("qemu-io runs")
    };
    // qemu-io's read-write open uses consistent read first: QEMU tests 200,
    // which exclusive holds.
    let refused = open();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "qemu-io opened an exclusively held image"
    );
    assert!(
        stderr.contains("Failed to get \"consistent read\" lock"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "Is another process using the image [{}]?",
            image.display()
        )),
        "{stderr}"
    );
    // Read-only with force-share (-U) shares everything but still uses
    // consistent read, so QEMU still tests 200.
    let forced = Command::new(qemu_tool("qemu-io"))
        .args(["-f", "raw", "-r", "-U", "-c", "quit"])
        .arg(&image)
        .output()
        .expect("qemu-io runs");
    assert!(
        !forced.status.success(),
        "-U -r must still need consistent read"
    );

    // SAFETY: a live handle.
    assert_eq!(unsafe { fpl_release(lock) }, 0);
    let admitted = open();
    assert!(
        admitted.status.success(),
        "qemu-io refused after release: {}",
        String::from_utf8_lossy(&admitted.stderr)
    );
    assert_eq!(proc_locks_bytes(&image), Vec::<u32>::new());
}
