//! Block devices through other device nodes. Locks belong to the node's
//! inode, not to the block device: a QEMU using `/dev/loopN` and a tool
//! using another node of the same device (made with mknod, as container
//! runtimes populate a container's `/dev`) never meet in the protocol. The
//! openers scan (`FPL_QUERY_OPENERS`, `FPL_FLAG_NO_UNLOCKED_OPENERS`) sees
//! them by `st_rdev`. Real loop devices and real `qemu-io` with QEMU's
//! host_device driver, locking on and off; needs root and losetup.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::cabi::{c_path, message, name, new_error};
use common::TempDir;
use fpl::ffi::*;
use fpl::query::{query_many_with, query_with, Inspect};
use fpl::{ChainLock, Error, Holder, Lock, Mode, Options, Perm, PermSet, Request};

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn openers() -> Inspect {
    Inspect {
        holders: true,
        openers: true,
    }
}

fn refuse() -> Options {
    Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    }
}

/// A tool from util-linux, also where a test runner's PATH lacks sbin.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install util-linux (apt-get install mount)"))
}

/// One test at a time: `losetup` itself opens loop devices for an instant
/// (setting one up, detaching one), and such a process is an opener like
/// any other, so a test's losetup would be refused beside in another test.
static SERIAL: Mutex<()> = Mutex::new(());

/// A loop device over a fresh 16 MiB file, detached on drop however the
/// test ends (a device still open is detached by the kernel at its last
/// close: losetup -d sets autoclear).
struct LoopDev {
    dev: PathBuf,
    _dir: TempDir,
}

/// A test's loop devices, holding [`SERIAL`] until they are detached.
struct Devices {
    devs: Vec<LoopDev>,
    _serial: MutexGuard<'static, ()>,
}

impl Devices {
    /// `n` loop devices for one test.
    fn new(tag: &str, n: usize) -> Devices {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Devices {
            devs: (0..n)
                .map(|i| LoopDev::new(&format!("{tag}-{i}")))
                .collect(),
            _serial: serial,
        }
    }
}

impl std::ops::Deref for Devices {
    type Target = LoopDev;
    fn deref(&self) -> &LoopDev {
        &self.devs[0]
    }
}

impl LoopDev {
    fn new(tag: &str) -> LoopDev {
        let dir = TempDir::new(tag);
        let backing = dir.path().join("backing.raw");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(16 << 20))
            .expect("create the loop device's file");
        let out = Command::new(tool("losetup"))
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup --find --show (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // The guard first, so that a failed check still detaches it.
        let guard = LoopDev {
            dev: PathBuf::from(&dev),
            _dir: dir,
        };
        assert!(dev.starts_with("/dev/loop"), "losetup gave {dev:?}");
        guard
    }

    fn path(&self) -> &Path {
        &self.dev
    }

    /// The block device's number (`st_rdev`).
    fn rdev(&self) -> u64 {
        std::fs::metadata(&self.dev)
            .expect("stat the loop device")
            .rdev()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup"))
            .arg("-d")
            .arg(&self.dev)
            .stderr(Stdio::null())
            .status();
    }
}

/// A second node of `dev`'s block device in `dir`, as a container runtime
/// makes one in a container's `/dev`: same major:minor, another inode.
fn second_node(dir: &TempDir, dev: &LoopDev) -> PathBuf {
    let node = dir.path().join("disk");
    let c = CString::new(node.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a NUL-terminated path; mknod only creates the node.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, dev.rdev() as libc::dev_t) };
    assert_eq!(
        rc,
        0,
        "mknod {node:?} (these tests need root): {}",
        std::io::Error::last_os_error()
    );
    let (a, b) = (
        std::fs::metadata(&node).expect("stat"),
        std::fs::metadata(dev.path()).expect("stat"),
    );
    assert!(a.file_type().is_block_device());
    assert_eq!(a.rdev(), b.rdev(), "the same block device");
    assert_ne!((a.dev(), a.ino()), (b.dev(), b.ino()), "another inode");
    node
}

/// `qemu-io --image-opts` on a block device through QEMU's host_device
/// driver, kept running; ready once it has `node` open.
struct QemuIo(Child);

impl QemuIo {
    fn start(node: &Path, locking: bool) -> QemuIo {
        QemuIo::start_as("raw", node, locking)
    }

    /// With the image format `format` on the device (raw, qcow2).
    fn start_as(format: &str, node: &Path, locking: bool) -> QemuIo {
        let mut opts = format!(
            "driver={format},file.driver=host_device,file.filename={}",
            node.display()
        );
        if !locking {
            opts.push_str(",file.locking=off");
        }
        let mut cmd = Command::new("qemu-io");
        cmd.arg("--image-opts").arg(&opts);
        QemuIo::ready(cmd, node)
    }

    /// As a container runtime would run it: in a mount namespace of its
    /// own, where a tmpfs over `dev_dir` (invisible from here) holds a node
    /// `xvdb` of `dev`'s block device, made with mknod, which QEMU locks.
    fn start_in_mount_namespace(dev: &LoopDev, dev_dir: &Path) -> QemuIo {
        let rdev = dev.rdev() as libc::dev_t;
        let script = format!(
            "mount -t tmpfs fpl-dev \"$1\" && mknod \"$1/xvdb\" b {} {} && \
             exec qemu-io --image-opts \"driver=raw,file.driver=host_device,file.filename=$1/xvdb\"",
            libc::major(rdev),
            libc::minor(rdev)
        );
        let mut cmd = Command::new(tool("unshare"));
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(dev_dir);
        QemuIo::ready(cmd, dev.path())
    }

    /// Runs `cmd` (qemu-io, or what execs it), reading commands from a pipe;
    /// ready once a query with openers of `watch` lists it.
    fn ready(mut cmd: Command, watch: &Path) -> QemuIo {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io starts (QEMU 10 comes with this machine: qemu-utils)");
        let mut q = QemuIo(child);
        let pid = q.pid();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !query_with(watch, openers())
            .expect("query")
            .holders
            .iter()
            .any(|h| h.pid == pid)
        {
            if let Ok(Some(st)) = q.0.try_wait() {
                panic!("{cmd:?} exited ({st})");
            }
            assert!(Instant::now() < deadline, "{cmd:?} never opened {watch:?}");
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

/// What qemu-io -f raw read-write holds: 100-101.
fn read_write() -> PermSet {
    PermSet::NONE.with(Perm::ConsistentRead).with(Perm::Write)
}

/// The descriptors of process `pid` that a query with openers lists.
fn of(pid: i32, found: &[Holder]) -> Vec<Holder> {
    found.iter().filter(|h| h.pid == pid).cloned().collect()
}

/// Holders of `path` in this process.
fn ours(path: &Path) -> usize {
    let me = std::process::id() as i32;
    fpl::query(path, true)
        .expect("query")
        .holders
        .iter()
        .filter(|h| h.pid == me)
        .count()
}

fn c_query(path: &Path) -> (fpl_status, Vec<fpl_holder>) {
    let path = c_path(path);
    let mut st = fpl_status::default();
    let mut hs: Vec<fpl_holder> = (0..8).map(|_| fpl_holder::default()).collect();
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
    hs.truncate(st.n_holders as usize);
    (st, hs)
}

fn c_acquire(path: &Path, flags: u32) -> (i32, String) {
    let path = c_path(path);
    let mut lock: *mut fpl_lock = std::ptr::null_mut();
    let mut e = new_error();
    let rc = unsafe {
        fpl_acquire(
            path.as_ptr(),
            FPL_MODE_READ_PERM,
            FPL_MODE_READ_SHARE,
            flags,
            &mut lock,
            &mut e,
        )
    };
    if rc == 0 {
        assert_eq!(unsafe { fpl_release(lock) }, 0);
    } else {
        assert!(lock.is_null());
    }
    (rc, message(&e))
}

#[test]
fn a_qemu_on_one_node_is_invisible_to_the_protocol_on_another() {
    let dev = Devices::new("blockdev-hazard", 1);
    let dir = TempDir::new("blockdev-hazard-node");
    let node = second_node(&dir, &dev);
    let qemu = QemuIo::start(dev.path(), true);

    // On its own node, qemu-io holds 100-101 and is named.
    let on_dev = fpl::query(dev.path(), true).expect("query");
    assert_eq!(on_dev.held.perm, read_write(), "{on_dev:?}");
    assert!(on_dev.held.unshared.is_empty(), "{on_dev:?}");
    assert_eq!(of(qemu.pid(), &on_dev.holders).len(), 1, "{on_dev:?}");

    // Through the second node of the same device: nothing held at all,
    // and the protocol grants a writer beside the running QEMU.
    let on_node = fpl::query(&node, true).expect("query");
    assert!(on_node.held.is_empty(), "{on_node:?}");
    assert!(on_node.holders.is_empty(), "{on_node:?}");
    Lock::acquire(&node, req(Mode::Exclusive), Options::default())
        .expect("the protocol alone grants exclusive beside a QEMU on another node")
        .release()
        .expect("release");
    drop(qemu);
}

#[test]
fn a_locking_qemu_on_another_node_is_an_opener_and_refused_beside() {
    let dev = Devices::new("blockdev-on", 1);
    let dir = TempDir::new("blockdev-on-node");
    let node = second_node(&dir, &dev);
    let qemu = QemuIo::start(dev.path(), true);

    // Listed on the second node as an opener, through /dev/loopN, with the
    // bytes it holds there.
    let seen = query_with(&node, openers()).expect("query");
    assert!(seen.held.is_empty(), "{seen:?}");
    let found = of(qemu.pid(), &seen.holders);
    assert_eq!(found.len(), 1, "{seen:?}");
    let h = &found[0];
    assert!(h.no_locks && h.held.is_empty(), "{h:?}");
    assert!(h.access.read && h.access.write, "{h:?}");
    assert_eq!(h.name, "qemu-io");
    let through = h.node.as_ref().expect("through another node");
    assert_eq!(through.path, dev.path());
    assert_eq!(through.held.perm, read_write(), "{h:?}");
    let st = std::fs::metadata(dev.path()).expect("stat");
    assert_eq!((through.id.dev, through.id.ino), (st.dev(), st.ino()));

    // On its own node it is a holder, never an opener of another node.
    let own = query_with(dev.path(), openers()).expect("query");
    let mine = of(qemu.pid(), &own.holders);
    assert!(!mine.is_empty(), "{own:?}");
    assert!(
        mine.iter().all(|h| !h.no_locks && h.node.is_none()),
        "{own:?}"
    );

    // One query of both nodes: each gets its own answer from one walk.
    let both = query_many_with(&[dev.path(), node.as_path()], openers());
    let on_dev = both[0].as_ref().expect("query");
    let on_node = both[1].as_ref().expect("query");
    assert_eq!(on_dev.holders, own.holders);
    assert_eq!(of(qemu.pid(), &on_node.holders), found);

    // Without openers, the second node shows nobody.
    assert!(fpl::query(&node, true).expect("query").holders.is_empty());

    // Refused beside it, naming the node, with nothing left held.
    let err = Lock::acquire(&node, req(Mode::Read), refuse()).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        matches!(&err, Error::Opened { opener, path }
            if opener.pid == qemu.pid() && path == &node && opener.node.is_some()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "'{}' is open read-write through '{}' by qemu-io (pid {}, fd ",
            node.display(),
            dev.path().display(),
            qemu.pid()
        )) && text.contains("whose locks this node does not see (it holds bytes 100, 101 there)"),
        "{text}"
    );
    assert_eq!(ours(&node), 0, "nothing held after the refusal");
    let err = fpl::check(&node, req(Mode::ReadShared), refuse()).expect_err("check refuses too");
    assert_eq!(err.errno(), libc::EBUSY);
    // An update asking for the rule is refused and leaves the lock as it was.
    let mut lock = Lock::acquire(&node, req(Mode::ReadShared), Options::default()).expect("lock");
    let err = lock
        .update_with(req(Mode::Read), refuse())
        .expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert_eq!(lock.request(), req(Mode::ReadShared));
    lock.release().expect("release");

    // The C ABI: the flags, then the refusal.
    let (st, hs) = c_query(&node);
    assert_eq!((st.perm, st.unshared, st.n_holders), (0, 0, 1));
    assert_eq!(hs[0].pid, qemu.pid());
    assert_eq!(
        hs[0].flags,
        FPL_HOLDER_NO_LOCKS | FPL_HOLDER_OTHER_NODE | FPL_HOLDER_NODE_LOCKS
    );
    assert_eq!((hs[0].perm, hs[0].unshared), (0, 0));
    assert_eq!(hs[0].access, FPL_ACCESS_READ | FPL_ACCESS_WRITE);
    assert_eq!(name(&hs[0]), "qemu-io");
    // The node's path is the holder's descriptor link.
    let link = std::fs::read_link(format!("/proc/{}/fd/{}", hs[0].pid, hs[0].fd)).expect("link");
    assert_eq!(link, dev.path());
    let (st, hs) = c_query(dev.path());
    assert_eq!(st.perm, FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE);
    assert!(hs.iter().all(|h| h.flags == 0), "holders on its own node");
    let (rc, msg) = c_acquire(&node, FPL_FLAG_NO_UNLOCKED_OPENERS);
    assert_eq!(rc, -libc::EBUSY, "{msg}");
    assert!(msg.contains("whose locks this node does not see"), "{msg}");
    assert_eq!(ours(&node), 0);
    // Without the flag: granted (the hazard).
    assert_eq!(c_acquire(&node, 0).0, 0);

    // Once it is gone, the flag changes nothing.
    drop(qemu);
    Lock::acquire(&node, req(Mode::Write), refuse())
        .expect("no opener left")
        .release()
        .expect("release");
}

#[test]
fn a_qemu_with_locking_off_on_another_node_is_an_opener_holding_nothing() {
    let dev = Devices::new("blockdev-off", 1);
    let dir = TempDir::new("blockdev-off-node");
    let node = second_node(&dir, &dev);
    let qemu = QemuIo::start(dev.path(), false);

    let seen = query_with(&node, openers()).expect("query");
    let found = of(qemu.pid(), &seen.holders);
    assert_eq!(found.len(), 1, "{seen:?}");
    let through = found[0].node.as_ref().expect("through another node");
    assert_eq!(through.path, dev.path());
    assert!(through.held.is_empty(), "locking=off: {seen:?}");
    // On its own node it is a plain opener.
    let own = query_with(dev.path(), openers()).expect("query");
    let plain = of(qemu.pid(), &own.holders);
    assert_eq!(plain.len(), 1, "{own:?}");
    assert!(plain[0].no_locks && plain[0].node.is_none(), "{own:?}");

    let err = Lock::acquire(&node, req(Mode::Read), refuse()).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    let text = err.to_string();
    assert!(
        text.contains(&format!("through '{}' by qemu-io", dev.path().display()))
            && text.contains("(it holds none there either)"),
        "{text}"
    );
    assert_eq!(ours(&node), 0);

    let (_, hs) = c_query(&node);
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].flags, FPL_HOLDER_NO_LOCKS | FPL_HOLDER_OTHER_NODE);
    let (_, hs) = c_query(dev.path());
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].flags, FPL_HOLDER_NO_LOCKS);
    drop(qemu);
}

#[test]
fn a_qemu_in_a_containers_node_is_seen_from_the_hosts_node() {
    // The other way round: QEMU uses the mknod'ed node (a container's
    // /dev/xvdb), the host's tool asks about /dev/loopN.
    let dev = Devices::new("blockdev-container", 1);
    let dir = TempDir::new("blockdev-container-node");
    let node = second_node(&dir, &dev);
    let qemu = QemuIo::start(&node, true);

    assert!(fpl::query(dev.path(), true).expect("query").held.is_empty());
    let seen = query_with(dev.path(), openers()).expect("query");
    let found = of(qemu.pid(), &seen.holders);
    assert_eq!(found.len(), 1, "{seen:?}");
    let through = found[0].node.as_ref().expect("through another node");
    assert_eq!(through.path, node);
    assert_eq!(through.held.perm, read_write());
    let err = Lock::acquire(dev.path(), req(Mode::Write), refuse()).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        err.to_string()
            .contains(&format!("through '{}' by qemu-io", node.display())),
        "{err}"
    );
    drop(qemu);
}

#[test]
fn a_qemu_in_another_mount_namespace_is_seen_through_its_own_dev() {
    // Closer to a container: QEMU's node lives on a tmpfs mounted in its
    // own mount namespace, which this process cannot reach at all.
    let dev = Devices::new("blockdev-ns", 1);
    let dir = TempDir::new("blockdev-ns-dev");
    let qemu = QemuIo::start_in_mount_namespace(&dev, dir.path());

    assert!(fpl::query(dev.path(), true).expect("query").held.is_empty());
    let seen = query_with(dev.path(), openers()).expect("query");
    let found = of(qemu.pid(), &seen.holders);
    assert_eq!(found.len(), 1, "{seen:?}");
    assert!(found[0].no_locks, "{seen:?}");
    let through = found[0].node.as_ref().expect("through another node");
    assert_eq!(through.held.perm, read_write(), "{seen:?}");
    // The kernel's name for it, which does not exist in this namespace.
    assert_eq!(through.path, dir.path().join("xvdb"));
    assert!(
        !through.path.exists(),
        "{:?} is not visible here",
        through.path
    );

    let err = Lock::acquire(dev.path(), req(Mode::Read), refuse()).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        matches!(&err, Error::Opened { opener, .. } if opener.pid == qemu.pid()),
        "{err:?}"
    );
    assert_eq!(ours(dev.path()), 0);
    let (_, hs) = c_query(dev.path());
    assert_eq!(hs.len(), 1);
    assert_eq!(
        hs[0].flags,
        FPL_HOLDER_NO_LOCKS | FPL_HOLDER_OTHER_NODE | FPL_HOLDER_NODE_LOCKS
    );
    drop(qemu);
}

#[test]
fn other_devices_and_own_descriptors_are_never_openers() {
    let devs = Devices::new("blockdev-other", 2);
    let (dev, other) = (&devs.devs[0], &devs.devs[1]);
    assert_ne!(dev.rdev(), other.rdev());
    let dir = TempDir::new("blockdev-other-node");
    let node = second_node(&dir, dev);
    let qemu = QemuIo::start(other.path(), true);

    // A QEMU on another block device is nobody's opener here.
    let seen = query_with(&node, openers()).expect("query");
    assert!(of(qemu.pid(), &seen.holders).is_empty(), "{seen:?}");
    // This process with the device open through both nodes, one of them
    // locked: never an opener of either.
    let _file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev.path())
        .expect("open");
    let lock = Lock::acquire(&node, req(Mode::Write), refuse()).expect("own descriptors");
    let me = std::process::id() as i32;
    for path in [dev.path(), node.as_path()] {
        let seen = query_with(path, openers()).expect("query");
        assert!(
            seen.holders.iter().all(|h| h.pid != me || !h.no_locks),
            "{seen:?}"
        );
    }
    Lock::acquire(dev.path(), req(Mode::ReadShared), refuse())
        .expect("own descriptors")
        .release()
        .expect("release");
    lock.release().expect("release");
    drop(qemu);
}

#[test]
fn a_chain_on_a_block_device_is_refused_beside_a_qemu_on_another_node() {
    // A qcow2 written straight onto the device (as on an LVM volume).
    let dev = Devices::new("blockdev-chain", 1);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dev.path())
        .arg("8M")
        .output()
        .expect("qemu-img runs (QEMU 10 comes with this machine: qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img create on {:?}: {}",
        dev.path(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = TempDir::new("blockdev-chain-node");
    let node = second_node(&dir, &dev);
    let qemu = QemuIo::start_as("qcow2", dev.path(), true);
    // On its own node, QEMU's qcow2 bytes; through the other, nothing.
    let on_dev = fpl::query(dev.path(), false).expect("query");
    assert_eq!(
        on_dev.held.unshared.bits(),
        FPL_PERM_WRITE | FPL_PERM_RESIZE
    );
    assert!(fpl::query(&node, false).expect("query").held.is_empty());

    let err = ChainLock::acquire(&node, req(Mode::Read), refuse()).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        matches!(&err, Error::Opened { opener, path }
            if opener.pid == qemu.pid() && path == &node
                && opener.node.as_ref().is_some_and(|n| n.held.unshared.bits()
                    == FPL_PERM_WRITE | FPL_PERM_RESIZE)),
        "{err:?}"
    );
    assert_eq!(ours(&node), 0, "nothing held after the refusal");
    let err = ChainLock::check(&node, req(Mode::Read), refuse()).expect_err("check");
    assert_eq!(err.errno(), libc::EBUSY);
    // The protocol alone grants it: the hazard.
    ChainLock::acquire(&node, req(Mode::Read), Options::default())
        .expect("the protocol alone")
        .release()
        .expect("release");
    drop(qemu);
}
