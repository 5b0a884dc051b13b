//! libfpl on real file systems (issue 5, item 9): tmpfs, ext4 (a loop image
//! and the temporary folder's own file system), xfs and btrfs (loop images),
//! overlayfs (a file copied up and one only in the lower layer), and FUSE
//! (tests/fuse/lockfail.c: a file system whose lock operation fails, and one
//! without a lock operation, whose locks the kernel keeps).
//!
//! On each file system a real scenario runs through libfpl: a second process
//! (`fpl-holder`, tests/filesystems/holder.c, on the C ABI) takes the write
//! preset; QEMU 10's `qemu-io` is refused with QEMU's own message; libfpl
//! reports the bytes and names the holder (pid and comm); after the release
//! QEMU is admitted. Then the other way round: `qemu-io` holds the image and
//! libfpl is refused, naming it.
//!
//! Needs root (mount, loop devices), `/dev/fuse`, gcc, libfuse3-dev and
//! fuse3, e2fsprogs, xfsprogs, btrfs-progs and QEMU 10's qemu-io. Every
//! mount is undone and every loop device detached however a test ends.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::cabi::{c_path, c_query, message, name, new_error};
use common::TempDir;
use fpl::ffi::*;
use fpl::{Lock, Mode, Options, PermSet, Request};

// ---------------------------------------------------------------- tools

/// A program in PATH or the usual places (tests may run with a PATH that
/// lacks the sbin directories).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let usual = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(usual.map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A program, or a failure saying which package to install.
fn tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("{name} not found: install the Debian package {package} (apt-get install {package})")
    })
}

fn qemu_io() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("qemu-io");
        if p.exists() {
            return p;
        }
    }
    panic!("qemu-io not found: these tests need QEMU 10's qemu-io, preinstalled on this machine (never install Debian's qemu-utils over it)");
}

fn need_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests mount file systems: run them as root");
}

/// Runs a command to completion; fails the test, with its output, if it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fpl-holder` (tests/filesystems/holder.c), built once against libfpl.
fn holder_program() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = common::root()
            .join("target")
            .join("c-tests")
            .join("filesystems");
        fs::create_dir_all(&dir).expect("create target/c-tests/filesystems");
        let src = common::root().join("tests/filesystems/holder.c");
        common::compile(&[&src], &dir.join("fpl-holder"), false, &[])
    })
    .clone()
}

/// `lockfail` (tests/fuse/lockfail.c), built once with libfuse3.
fn fuse_program() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = common::root().join("target").join("c-tests").join("filesystems");
        fs::create_dir_all(&dir).expect("create target/c-tests/filesystems");
        let cflags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "fuse3"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .unwrap_or_else(|| {
                panic!("pkg-config finds no fuse3: install libfuse3-dev and pkg-config (apt-get install libfuse3-dev fuse3 pkg-config)")
            });
        let flags = String::from_utf8_lossy(&cflags.stdout).into_owned();
        let exe = dir.join("lockfail");
        run(Command::new(tool("gcc", "gcc"))
            .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
            .arg("-D_FILE_OFFSET_BITS=64")
            .arg(common::root().join("tests/fuse/lockfail.c"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()));
        exe
    })
    .clone()
}

// ---------------------------------------------------------------- mounts

/// A mounted file system, undone on drop: unmounted (lazily if still busy),
/// its FUSE daemon reaped, its loop device detached.
struct Mount {
    dir: PathBuf,
    mounted: bool,
    loop_dev: Option<String>,
    daemon: Option<Child>,
}

impl Mount {
    fn new(dir: PathBuf) -> Mount {
        fs::create_dir_all(&dir).expect("create the mount point");
        Mount {
            dir,
            mounted: false,
            loop_dev: None,
            daemon: None,
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let umount = |lazy: bool| {
                let mut cmd = Command::new(find_tool("umount").unwrap_or("umount".into()));
                if lazy {
                    cmd.arg("-l");
                }
                cmd.arg(&self.dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !umount(false) {
                if Instant::now() > deadline {
                    eprintln!("{:?} still busy: unmounting lazily", self.dir);
                    umount(true);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // Unmounting ends a foreground FUSE daemon; give it a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new(find_tool("losetup").unwrap_or("losetup".into()))
                .arg("-d")
                .arg(&dev)
                .stderr(Stdio::null())
                .status();
        }
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const EXT4_MAGIC: i64 = 0xef53;
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683e;
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
const FUSE_MAGIC: i64 = 0x6573_5546;

/// statfs(2)'s f_type for `path`.
fn fs_type(path: &Path) -> i64 {
    let c = c_path(path);
    // SAFETY: statfs is plain old data; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "statfs {path:?}: {}",
        std::io::Error::last_os_error()
    );
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t
}

fn assert_fs_type(path: &Path, magic: i64, what: &str) {
    let t = fs_type(path);
    assert_eq!(t, magic, "{path:?} is not {what} (f_type {t:#x})");
}

fn mount_tmpfs(tmp: &TempDir) -> Mount {
    let mut m = Mount::new(tmp.path().join("tmpfs"));
    run(Command::new(tool("mount", "mount"))
        .args(["-t", "tmpfs", "-o", "size=64m", "fpl-test"])
        .arg(&m.dir));
    m.mounted = true;
    assert_fs_type(m.path(), TMPFS_MAGIC, "tmpfs");
    m
}

/// A sparse image of `size` bytes made with `mkfs`, on its own loop device,
/// mounted.
fn mount_loop_image(
    tmp: &TempDir,
    fstype: &str,
    mkfs: (&str, &str, &[&str]),
    size: u64,
    magic: i64,
) -> Mount {
    let (mkfs, package, mkfs_args) = mkfs;
    let mkfs = tool(mkfs, package);
    let losetup = tool("losetup", "mount");
    let image = tmp.path().join(format!("{fstype}.img"));
    fs::File::create(&image)
        .and_then(|f| f.set_len(size))
        .expect("create the file system image");
    run(Command::new(mkfs).args(mkfs_args).arg(&image));
    let mut m = Mount::new(tmp.path().join(fstype));
    let out = run(Command::new(losetup).args(["--find", "--show"]).arg(&image));
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(dev.starts_with("/dev/loop"), "losetup gave {dev:?}");
    m.loop_dev = Some(dev.clone());
    run(Command::new(tool("mount", "mount"))
        .args(["-t", fstype])
        .arg(&dev)
        .arg(&m.dir));
    m.mounted = true;
    assert_fs_type(m.path(), magic, fstype);
    m
}

/// An overlay of `lower` (read-only) and `upper`, mounted at `merged`.
fn mount_overlay(tmp: &TempDir, lower: &Path, upper: &Path) -> Mount {
    let work = upper.with_file_name("work");
    fs::create_dir_all(&work).expect("create the overlay work folder");
    let mut m = Mount::new(tmp.path().join("merged"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    run(Command::new(tool("mount", "mount"))
        .args(["-t", "overlay", "fpl-overlay", "-o", &opts])
        .arg(&m.dir));
    m.mounted = true;
    assert_fs_type(m.path(), OVERLAYFS_MAGIC, "overlayfs");
    m
}

/// tests/fuse/lockfail.c mounted in the foreground (single-threaded) at a
/// new folder; `mode` is one of lockfail's modes (enolck, local, ...).
fn mount_fuse(tmp: &TempDir, mode: &str) -> Mount {
    mount_fuse_with(tmp, mode, &["-s"], &[])
}

/// [`mount_fuse`] with other FUSE options than `-s` (`-o intr` and several
/// threads, for instance) and environment variables for the daemon.
fn mount_fuse_with(tmp: &TempDir, mode: &str, options: &[&str], env: &[(&str, &Path)]) -> Mount {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the kernel needs FUSE (modprobe fuse)"
    );
    let exe = fuse_program();
    let mut m = Mount::new(tmp.path().join(format!("fuse-{mode}")));
    let log = fs::File::create(tmp.path().join(format!("fuse-{mode}.log"))).expect("log file");
    let child = Command::new(exe)
        .arg(mode)
        .arg(&m.dir)
        .arg("-f")
        .args(options)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the FUSE file system");
    m.daemon = Some(child);
    // Mounted once the folder is a FUSE file system with its file in it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if fs_type(m.path()) == FUSE_MAGIC && m.path().join("disk.img").exists() {
            m.mounted = true;
            break;
        }
        if let Some(Ok(Some(status))) = m.daemon.as_mut().map(Child::try_wait) {
            let log = fs::read_to_string(tmp.path().join(format!("fuse-{mode}.log")));
            panic!("the FUSE file system exited ({status}) before mounting: {log:?} (needs /dev/fuse and libfuse3)");
        }
        assert!(
            Instant::now() < deadline,
            "the FUSE file system never mounted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m
}

// ---------------------------------------------------------------- processes

/// A child process killed and reaped however the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fpl-holder hold MODE IMAGE`: holding once [`Holder::start`] returns,
/// releasing when [`Holder::release`] closes its input.
struct Holder {
    proc: Proc,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn start(mode: &str, image: &Path) -> Holder {
        let mut child = Command::new(holder_program())
            .args(["hold", mode])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fpl-holder");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut h = Holder {
            proc: Proc(child),
            stdin,
            stdout,
        };
        let line = h.line();
        assert_eq!(
            line, "held",
            "fpl-holder could not take {mode} on {image:?}"
        );
        h
    }

    fn pid(&self) -> i32 {
        self.proc.0.id() as i32
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read fpl-holder");
        line.trim_end().to_owned()
    }

    /// Closes its input: it releases, says so and exits 0.
    fn release(mut self) {
        drop(self.stdin.take());
        assert_eq!(self.line(), "released");
        let status = self.proc.0.wait().expect("wait for fpl-holder");
        assert!(status.success(), "fpl-holder: {status}");
    }
}

/// `qemu-io -f raw [extra] -c quit IMAGE`: open, do nothing, close.
fn qemu_io_quit(image: &Path, extra: &[&str]) -> Output {
    Command::new(qemu_io())
        .args(["-f", "raw"])
        .args(extra)
        .args(["-c", "quit"])
        .arg(image)
        .output()
        .expect("qemu-io runs")
}

fn assert_qemu_refused(image: &Path, extra: &[&str], first_line: &str) {
    let out = qemu_io_quit(image, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "qemu-io {extra:?} was admitted to {image:?}"
    );
    assert!(
        stderr.contains(first_line),
        "qemu-io {extra:?} said {stderr:?}, not {first_line:?}"
    );
    let hint = format!("Is another process using the image [{}]?", image.display());
    assert!(
        stderr.contains(&hint),
        "qemu-io said {stderr:?}, without {hint:?}"
    );
}

fn assert_qemu_admitted(image: &Path, extra: &[&str]) {
    let out = qemu_io_quit(image, extra);
    assert!(
        out.status.success(),
        "qemu-io {extra:?} was refused {image:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- oracles

/// The bytes (0..=204) a process's descriptors lock on the inode `ino`, and
/// the device (`major:minor`) the kernel shows for those locks, read from
/// `/proc/PID/fdinfo`: independent of libfpl's matching.
fn fdinfo_locks(pid: i32, ino: u64) -> (Vec<u32>, Option<(u32, u32)>) {
    let mut bytes = Vec::new();
    let mut dev = None;
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = fs::read_dir(&dir) else {
        return (bytes, dev);
    };
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in fpl::fdinfo::lock_lines(&text) {
            if line.ino != ino {
                continue;
            }
            dev = Some((line.major, line.minor));
            for b in 0..=204u32 {
                if line.covers(u64::from(b)) && !bytes.contains(&b) {
                    bytes.push(b);
                }
            }
        }
    }
    bytes.sort_unstable();
    (bytes, dev)
}

fn st_dev(path: &Path) -> (u32, u32) {
    let dev = fs::metadata(path).expect("stat the image").dev();
    (libc::major(dev), libc::minor(dev))
}

const WRITE_BYTES: [u32; 6] = [100, 101, 103, 201, 202, 203];

fn write_request() -> Request {
    Request::new(Mode::Write.perm(), Mode::Write.shared())
}

fn bits(set: PermSet) -> u32 {
    set.bits()
}

// ---------------------------------------------------------------- the scenario

/// What a file system is expected to do beyond the common scenario.
#[derive(Clone, Copy)]
struct Expect {
    /// Whether libfpl names the processes holding the bytes.
    holders_named: bool,
    /// Whether the kernel shows the locks on the device `stat` reports (not
    /// on btrfs, where libfpl must use the mount's device instead).
    lock_dev_is_stat_dev: bool,
}

const NAMED: Expect = Expect {
    holders_named: true,
    lock_dev_is_stat_dev: true,
};

/// The common scenario on `image` (an existing raw image).
fn scenario(image: &Path, expect: Expect) {
    let ino = fs::metadata(image).expect("stat the image").ino();

    // 1. fpl-holder takes the write preset.
    let holder = Holder::start("write", image);
    let pid = holder.pid();
    let (bytes, lock_dev) = fdinfo_locks(pid, ino);
    assert_eq!(bytes, WRITE_BYTES, "fdinfo of fpl-holder on {image:?}");
    let lock_dev = lock_dev.expect("fpl-holder's locks are in its fdinfo");
    // Where the kernel shows the locks on another device than stat's,
    // libfpl must find it from the mount to name holders.
    assert_eq!(
        lock_dev == st_dev(image),
        expect.lock_dev_is_stat_dev,
        "{image:?}: locks shown on device {lock_dev:?}, stat says {:?}",
        st_dev(image)
    );

    // 2. QEMU is refused with its own words.
    assert_qemu_refused(image, &[], "Failed to get \"write\" lock");

    // 3. libfpl reports the bytes and names the holder.
    let status = fpl::query(image, true).expect("query");
    assert_eq!(bits(status.held.perm), FPL_MODE_WRITE_PERM, "{image:?}");
    assert_eq!(
        bits(status.held.unshared),
        FPL_PERM_WRITE | FPL_PERM_WRITE_UNCHANGED | FPL_PERM_RESIZE
    );
    // status.holders_partial is not asserted: where some process cannot be
    // inspected (PID 1 of this sandbox) libfpl compares /proc/locks with
    // what it attributed, and /proc/locks read while other locks come and
    // go (parallel tests) can show a line twice, which marks it partial.
    if expect.holders_named {
        assert_eq!(status.holders.len(), 1, "{:?}", status.holders);
        let h = &status.holders[0];
        assert_eq!((h.pid, h.name.as_str()), (pid, "fpl-holder"));
        assert_eq!(h.held, status.held);
    } else {
        assert_eq!(
            status.holders,
            [],
            "{image:?}: holders are named now: set holders_named for this file system"
        );
    }
    // The C ABI says the same.
    let (rc, st, holders, err) = c_query(image);
    assert_eq!(rc, 0, "fpl_query: {}", message(&err));
    assert_eq!(
        (st.perm, st.unshared),
        (bits(status.held.perm), bits(status.held.unshared))
    );
    if expect.holders_named {
        assert_eq!(holders.len(), 1);
        assert_eq!(
            (holders[0].pid, name(&holders[0]).as_str()),
            (pid, "fpl-holder")
        );
    } else {
        assert!(holders.is_empty());
    }
    // And a request of the same preset is refused, naming the holder.
    let err = fpl::check(image, write_request(), Options::default()).expect_err("conflict");
    let c = err
        .conflict()
        .unwrap_or_else(|| panic!("not a conflict: {err}"));
    assert_eq!(c.byte, 201, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("Failed to get \"write\" lock"), "{text}");
    if expect.holders_named {
        assert!(
            text.contains(&format!("(held by fpl-holder, pid {pid})")),
            "{text}"
        );
    } else {
        assert_eq!(c.holder, None, "{text}");
    }

    // 4. Released: nothing held, QEMU admitted.
    holder.release();
    let status = fpl::query(image, true).expect("query");
    assert!(
        status.held.is_empty() && status.holders.is_empty(),
        "{status:?}"
    );
    assert_qemu_admitted(image, &[]);

    // 5. The other way round: qemu-io holds (100-101), libfpl is refused.
    let mut qemu = Proc(
        Command::new(qemu_io())
            .args(["-f", "raw"])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-io starts"),
    );
    let qpid = qemu.0.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fdinfo_locks(qpid, ino).0 != [100, 101] {
        if let Ok(Some(s)) = qemu.0.try_wait() {
            panic!("qemu-io exited ({s}) before locking {image:?}");
        }
        assert!(Instant::now() < deadline, "qemu-io never locked {image:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = Lock::acquire(image, write_request(), Options::default()).expect_err("conflict");
    let text = err.to_string();
    assert!(
        text.starts_with("Failed to get shared \"write\" lock"),
        "{text}"
    );
    if expect.holders_named {
        assert!(
            text.contains(&format!("(held by qemu-io, pid {qpid})")),
            "{text}"
        );
    }
    let status = fpl::query(image, true).expect("query");
    assert_eq!(
        bits(status.held.perm),
        FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE
    );
    assert!(status.held.unshared.is_empty(), "{status:?}");
    if expect.holders_named {
        let found: Vec<_> = status
            .holders
            .iter()
            .map(|h| (h.pid, h.name.as_str()))
            .collect();
        assert_eq!(found, [(qpid, "qemu-io")]);
    }
    // A reader that shares writing is still admitted.
    let reader = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
    Lock::acquire(image, reader, Options::default())
        .expect("read-shared beside qemu-io")
        .release()
        .expect("release");
    drop(qemu.0.stdin.take());
    let status = qemu.0.wait().expect("wait for qemu-io");
    assert!(status.success(), "qemu-io: {status}");
    assert!(fpl::query(image, false).expect("query").held.is_empty());
}

fn new_image(path: &Path) -> PathBuf {
    fs::File::create(path)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    path.to_path_buf()
}

// ---------------------------------------------------------------- C ABI helpers

fn c_acquire(image: &Path) -> (i32, fpl_error) {
    let path = c_path(image);
    let mut lock = std::ptr::null_mut();
    let mut err = new_error();
    // SAFETY: valid pointers.
    let rc = unsafe {
        fpl_acquire(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            0,
            &mut lock,
            &mut err,
        )
    };
    if rc == 0 {
        // SAFETY: a live handle from fpl_acquire.
        unsafe { fpl_release(lock) };
    } else {
        assert!(lock.is_null());
    }
    (rc, err)
}

fn c_check(image: &Path) -> (i32, fpl_error) {
    let path = c_path(image);
    let mut err = new_error();
    // SAFETY: valid pointers.
    let rc = unsafe {
        fpl_check(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            0,
            &mut err,
        )
    };
    (rc, err)
}

// ---------------------------------------------------------------- tests

#[test]
fn tmpfs() {
    need_root();
    let tmp = TempDir::new("fs-tmpfs");
    let m = mount_tmpfs(&tmp);
    scenario(&new_image(&m.path().join("disk.raw")), NAMED);
}

#[test]
fn ext4_loop_image() {
    need_root();
    let tmp = TempDir::new("fs-ext4");
    let m = mount_loop_image(
        &tmp,
        "ext4",
        ("mkfs.ext4", "e2fsprogs", &["-q", "-F"]),
        32 << 20,
        EXT4_MAGIC,
    );
    scenario(&new_image(&m.path().join("disk.raw")), NAMED);
}

/// The temporary folder's own file system (ext4 on this kind of machine).
#[test]
fn temp_dir_file_system() {
    let tmp = TempDir::new("fs-tempdir");
    let image = new_image(&tmp.path().join("disk.raw"));
    eprintln!("temporary folder's f_type: {:#x}", fs_type(tmp.path()));
    scenario(&image, NAMED);
}

#[test]
fn xfs_loop_image() {
    need_root();
    let tmp = TempDir::new("fs-xfs");
    // xfsprogs 6.x refuses file systems under 300 MiB; the image is sparse.
    let m = mount_loop_image(
        &tmp,
        "xfs",
        ("mkfs.xfs", "xfsprogs", &["-q", "-f"]),
        320 << 20,
        XFS_MAGIC,
    );
    scenario(&new_image(&m.path().join("disk.raw")), NAMED);
}

/// btrfs: stat(2) gives a file the device of its subvolume (an anonymous
/// device of its own, e.g. 0:40), while the kernel shows its locks in
/// /proc/locks and /proc/PID/fdinfo on the super block's device (e.g. 0:39,
/// the one /proc/self/mountinfo shows for the mount). libfpl matches lock
/// lines on the mount's device, so holders are named here too.
#[test]
fn btrfs_loop_image() {
    need_root();
    let tmp = TempDir::new("fs-btrfs");
    let m = mount_loop_image(
        &tmp,
        "btrfs",
        ("mkfs.btrfs", "btrfs-progs", &["-q", "-f"]),
        256 << 20,
        BTRFS_MAGIC,
    );
    scenario(
        &new_image(&m.path().join("disk.raw")),
        Expect {
            holders_named: true,
            lock_dev_is_stat_dev: false,
        },
    );
}

/// overlayfs: locks taken through the overlay belong to the overlay's inode
/// (kernel 4.19+ opens overlay files as overlay files). So they work
/// between users of the overlay, for a file already copied up and for one
/// only in the lower layer, and survive a copy-up in the middle; but users
/// of the layers' own paths neither see them nor are seen.
#[test]
fn overlayfs_copied_up_and_lower_only() {
    need_root();
    let tmp = TempDir::new("fs-overlay");
    // The layers live on a tmpfs of their own: an upper layer cannot be on
    // overlayfs, which the temporary folder may be (in a container).
    let layers = mount_tmpfs(&tmp);
    let lower = layers.path().join("lower");
    let upper = layers.path().join("upper");
    fs::create_dir_all(&lower).expect("lower");
    fs::create_dir_all(&upper).expect("upper");
    new_image(&lower.join("lower.raw"));
    new_image(&lower.join("copied.raw"));
    let m = mount_overlay(&tmp, &lower, &upper);
    let merged = m.path().to_path_buf();

    // copied.raw: copied up to the upper layer before the scenario.
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(merged.join("copied.raw"))
            .expect("open for writing through the overlay");
        f.write_all(b"copied up").expect("write");
    }
    assert!(upper.join("copied.raw").exists(), "copy-up happened");
    scenario(&merged.join("copied.raw"), NAMED);

    // The layer's own file is another inode: the overlay's lock is not on it.
    let image = merged.join("copied.raw");
    let holder = Holder::start("exclusive", &image);
    for real in [upper.join("copied.raw"), lower.join("copied.raw")] {
        let status = fpl::query(&real, true).expect("query the real file");
        assert!(
            status.held.is_empty(),
            "{real:?} shows the overlay's lock: {status:?}"
        );
        assert_qemu_admitted(&real, &["-r"]);
    }
    holder.release();

    // lower.raw: only in the lower layer. A reader is refused by an
    // exclusive holder and nothing is copied up (both open read-only).
    let image = merged.join("lower.raw");
    let holder = Holder::start("exclusive", &image);
    assert_qemu_refused(&image, &["-r"], "Failed to get \"consistent read\" lock");
    let status = fpl::query(&image, true).expect("query");
    let found: Vec<_> = status
        .holders
        .iter()
        .map(|h| (h.pid, h.name.as_str()))
        .collect();
    assert_eq!(found, [(holder.pid(), "fpl-holder")]);
    assert!(
        !upper.join("lower.raw").exists(),
        "lower.raw was copied up by read-only opens"
    );
    assert_qemu_admitted(&lower.join("lower.raw"), &["-r"]);
    holder.release();
    // The scenario starts on a lower-only file: its holder opens it
    // read-only, then qemu-io's read-write open copies it up while it is
    // locked, and is refused all the same.
    scenario(&image, NAMED);
    assert!(
        upper.join("lower.raw").exists(),
        "qemu-io's read-write open copied it up"
    );

    // A lock on the layer's own file is invisible through the overlay.
    let real = new_image(&lower.join("direct.raw"));
    let holder = Holder::start("exclusive", &real);
    let status = fpl::query(&merged.join("direct.raw"), true).expect("query");
    assert!(status.held.is_empty(), "{status:?}");
    holder.release();
}

/// The same scenario on a FUSE file system without a lock operation: the
/// kernel keeps its locks locally (fs/fuse/file.c: fc->no_lock).
#[test]
fn fuse_without_lock_operation_locks_locally() {
    need_root();
    let tmp = TempDir::new("fs-fuse-local");
    let m = mount_fuse(&tmp, "local");
    scenario(&m.path().join("disk.img"), NAMED);
}

/// A FUSE file system whose lock operation fails: the kernel sends OFD
/// F_SETLK/F_GETLK to it (fs/fuse/file.c, fuse_file_lock: fuse_setlk and
/// fuse_getlk) and returns its errno. libfpl fails with that errno; acquiring
/// says the file system may not support byte-range locks, where QEMU says
/// `Failed to lock byte 100`.
fn fuse_lock_failure(mode: &str, errno: i32, errno_name: &str) {
    need_root();
    let tmp = TempDir::new(&format!("fs-fuse-{mode}"));
    let m = mount_fuse(&tmp, mode);
    let image = m.path().join("disk.img");

    let (rc, err) = c_acquire(&image);
    let msg = message(&err);
    assert_eq!((rc, err.code), (-errno, -errno), "fpl_acquire: {msg}");
    assert_eq!(
        (err.byte, err.perm, err.holder_pid),
        (0, 0, -1),
        "not a conflict"
    );
    assert!(msg.starts_with(&fs_problem(&image)), "fpl_acquire: {msg}");
    assert!(
        msg.ends_with(errno_name) || msg.contains(&format!("{errno_name}:")),
        "{msg}"
    );

    // fpl_check and fpl_query test (F_OFD_GETLK), which fails the same way.
    let (rc, err) = c_check(&image);
    assert_eq!(
        (rc, err.code),
        (-errno, -errno),
        "fpl_check: {}",
        message(&err)
    );
    assert!(
        message(&err).contains(errno_name),
        "fpl_check: {}",
        message(&err)
    );
    let (rc, _, _, err) = c_query(&image);
    assert_eq!(
        (rc, err.code),
        (-errno, -errno),
        "fpl_query: {}",
        message(&err)
    );
    assert!(
        message(&err).contains(errno_name),
        "fpl_query: {}",
        message(&err)
    );

    // QEMU fails on the same byte.
    let out = qemu_io_quit(&image, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Failed to lock byte 100"),
        "qemu-io: {stderr}"
    );

    // A failure on FUSE leaves ordinary files alone in this process.
    let ordinary = new_image(&tmp.path().join("ordinary.raw"));
    let lock = Lock::acquire(&ordinary, write_request(), Options::default())
        .expect("lock an ordinary file after the FUSE failure");
    assert!(!lock.is_posix(), "fell back to POSIX locks");
    lock.release().expect("release");
}

/// What libfpl says when the file system refuses a lock.
fn fs_problem(image: &Path) -> String {
    format!(
        "Failed to lock byte 100 of '{}' (the file system may not support byte-range locks)",
        image.display()
    )
}

#[test]
fn fuse_lock_operation_fails_with_enolck() {
    fuse_lock_failure("enolck", libc::ENOLCK, "ENOLCK");
}

#[test]
fn fuse_lock_operation_fails_with_eopnotsupp() {
    fuse_lock_failure("eopnotsupp", libc::EOPNOTSUPP, "EOPNOTSUPP");
}

/// fpl_check and fpl_query on a file system that refuses locks name the
/// problem as fpl_acquire does (check as acquire would fail: locking byte
/// 100; query: testing it).
#[test]
fn fuse_lock_failure_check_and_query_name_the_file_system_problem() {
    need_root();
    let tmp = TempDir::new("fs-fuse-check");
    let m = mount_fuse(&tmp, "enolck");
    let image = m.path().join("disk.img");
    let (rc, err) = c_check(&image);
    assert_eq!(rc, -libc::ENOLCK);
    assert!(
        message(&err).starts_with(&fs_problem(&image)),
        "fpl_check: {}",
        message(&err)
    );
    let (rc, _, _, err) = c_query(&image);
    assert_eq!(rc, -libc::ENOLCK);
    assert!(
        message(&err).contains("the file system may not support byte-range locks"),
        "fpl_query: {}",
        message(&err)
    );
}

/// In a fresh process whose first libfpl calls hit a FUSE file whose locks
/// fail (with EINVAL too, the errno of a kernel without OFD locks), later
/// locks on ordinary files are OFD locks all the same: a second handle of
/// the same process conflicts with the first (process-wide POSIX locks
/// would not).
#[test]
fn fuse_failure_first_does_not_poison_later_locks() {
    need_root();
    let tmp = TempDir::new("fs-fuse-first");
    let ordinary = new_image(&tmp.path().join("ordinary.raw"));
    for (mode, errno) in [("einval", libc::EINVAL), ("enolck", libc::ENOLCK)] {
        let m = mount_fuse(&tmp, mode);
        let image = m.path().join("disk.img");
        let out = run(Command::new(holder_program())
            .arg("first")
            .arg(&image)
            .arg(&ordinary)
            .arg(&ordinary));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        let row = |i: usize| -> (&str, i32, &str) {
            let l = &lines[i];
            (l[0], l[2].parse().expect("a code"), l[3])
        };
        assert_eq!(lines.len(), 6, "{text}");
        let (_, rc, msg) = row(0);
        assert_eq!(rc, -errno, "{mode}: check on FUSE: {msg}");
        let (_, rc, msg) = row(1);
        assert_eq!(rc, -errno, "{mode}: acquire on FUSE: {msg}");
        assert!(
            msg.starts_with(&fs_problem(&image)),
            "{mode}: acquire on FUSE: {msg}"
        );
        assert_eq!(
            row(2).1,
            0,
            "{mode}: check of the ordinary file: {}",
            row(2).2
        );
        assert_eq!(
            row(3).1,
            0,
            "{mode}: acquire of the ordinary file: {}",
            row(3).2
        );
        // The first handle is an OFD lock: it stops the second check and acquire.
        assert_eq!(
            row(4).1,
            -libc::EAGAIN,
            "{mode}: second check: {}",
            row(4).2
        );
        let (_, rc, msg) = row(5);
        assert_eq!(rc, -libc::EAGAIN, "{mode}: second handle: {msg}");
        assert!(msg.starts_with("Failed to get \"write\" lock"), "{msg}");
        drop(m);
    }
}

/// A close() that blocks in the file system (a FUSE flush waiting for its
/// server) stalls nothing but its own release: while thread A's release of
/// a lock on the FUSE image waits in flush, thread B takes and releases a
/// lock on an ordinary image 100 times, and A's release then ends well once
/// the flush is let go, leaving the FUSE image free.
#[test]
fn slow_close_does_not_stall_other_releases() {
    need_root();
    let tmp = TempDir::new("fs-fuse-slowflush");
    let control = tmp.path().join("control");
    fs::create_dir_all(&control).expect("control folder");
    let m = mount_fuse_with(
        &tmp,
        "slowflush",
        &["-s"],
        &[("LOCKFAIL_CONTROL", &control)],
    );
    let image = m.path().join("disk.img");
    let ordinary = new_image(&tmp.path().join("ordinary.raw"));
    let go = control.join("go");
    // Whatever happens, the flush is let go before the mount is undone.
    struct LetGo(PathBuf);
    impl Drop for LetGo {
        fn drop(&mut self) {
            let _ = fs::write(&self.0, b"");
        }
    }
    let _let_go = LetGo(go.clone());

    let (acquired_tx, acquired_rx) = std::sync::mpsc::channel();
    let fuse_image = image.clone();
    let a = std::thread::spawn(move || {
        let lock = Lock::acquire(&fuse_image, write_request(), Options::default());
        let ok = lock.is_ok();
        let _ = acquired_tx.send(lock.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if ok {
            lock.expect("checked").release().map_err(|e| e.to_string())
        } else {
            Ok(())
        }
    });
    let acquired = acquired_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("thread A never acquired the FUSE image");
    assert_eq!(acquired, Ok(()), "acquire on the FUSE image");
    // A's release has reached close(): the file system is in flush.
    let flushing = control.join("flushing");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !flushing.exists() {
        assert!(
            Instant::now() < deadline,
            "thread A's release never reached the file system's flush"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let b = std::thread::spawn(move || {
        for i in 0..100 {
            let lock = Lock::acquire(&ordinary, write_request(), Options::default())
                .unwrap_or_else(|e| panic!("B's acquire {i}: {e}"));
            lock.release()
                .unwrap_or_else(|e| panic!("B's release {i}: {e}"));
        }
        let _ = done_tx.send(());
    });
    // A generous liveness bound, not a timing: B waiting for A's close
    // never ends while the flush is held.
    let finished = done_rx.recv_timeout(Duration::from_secs(60));
    assert!(
        !a.is_finished(),
        "thread A's release returned while its close was still blocked in flush"
    );
    assert!(
        finished.is_ok(),
        "thread B's 100 acquire + release on another image did not finish while thread A's close was blocked in the FUSE flush"
    );
    b.join().expect("thread B");

    fs::write(&go, b"").expect("let the flush go");
    let released = a.join().expect("thread A");
    assert_eq!(released, Ok(()), "A's release, once the flush returned");
    let status = fpl::query(&image, false).expect("query the FUSE image");
    assert!(
        status.held.is_empty(),
        "the FUSE image is still held: {status:?}"
    );
    let lock = Lock::acquire(&image, write_request(), Options::default())
        .expect("acquire the FUSE image again");
    lock.release().expect("release");
}

/// A file system that can take locks but never give them back (lockfail
/// `unlockeio`: every F_UNLCK fails with EIO): no failed unlock is silent.
/// A loosening update's commit fails saying the new permissions are in
/// effect and which bytes stay held; release fails naming the bytes; a
/// conflict whose abort cannot unlock says so and names the bytes.
#[test]
fn fuse_failed_unlocks_are_reported() {
    need_root();
    let tmp = TempDir::new("fs-fuse-unlockeio");
    {
        let m = mount_fuse(&tmp, "unlockeio");
        let image = m.path().join("disk.img");
        let path = c_path(&image);
        let mut lock = std::ptr::null_mut();
        let mut err = new_error();
        // SAFETY: valid pointers.
        let rc = unsafe {
            fpl_acquire(
                path.as_ptr(),
                FPL_MODE_WRITE_PERM,
                FPL_MODE_WRITE_SHARE,
                0,
                &mut lock,
                &mut err,
            )
        };
        assert_eq!(rc, 0, "fpl_acquire: {}", message(&err));
        // Write -> read-shared only loosens: commit must unlock 101, 103, 201-203.
        // SAFETY: a live handle, valid pointers.
        let rc = unsafe {
            fpl_update(
                lock,
                FPL_MODE_READ_SHARED_PERM,
                FPL_MODE_READ_SHARED_SHARE,
                0,
                &mut err,
            )
        };
        let msg = message(&err);
        assert_eq!(
            (rc, err.code),
            (-libc::EIO, -libc::EIO),
            "fpl_update: {msg}"
        );
        assert!(
            msg.contains("the new permissions are in effect")
                && msg.contains("bytes 101, 103, 201, 202, 203")
                && msg.contains("stay held"),
            "fpl_update: {msg}"
        );
        // SAFETY: a live handle, not used again.
        let rc = unsafe { fpl_release(lock) };
        assert_eq!(
            rc,
            -libc::EIO,
            "fpl_release of a handle whose bytes cannot be unlocked"
        );
    }
    // Each case on a fresh mount: libfuse's lock table still holds what the
    // last one could not unlock.
    {
        let m = mount_fuse(&tmp, "unlockeio");
        let image = m.path().join("disk.img");
        // The Rust API gives release's message.
        let lock = Lock::acquire(&image, write_request(), Options::default())
            .expect("acquire through the Rust API");
        let e = lock.release().expect_err("release cannot unlock");
        assert_eq!(e.errno(), libc::EIO, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("cannot unlock bytes 100, 101, 103, 201, 202, 203"),
            "release: {msg}"
        );
    }
    let m = mount_fuse(&tmp, "unlockeio");
    let image = m.path().join("disk.img");
    // Another description unshares write (byte 201): acquiring write locks
    // its bytes, the test of 201 conflicts, and the abort cannot unlock.
    let other = fs::File::open(&image).expect("open the FUSE image");
    // SAFETY: flock is plain old data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 201;
    fl.l_len = 1;
    // SAFETY: fcntl on an open descriptor with a valid flock.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&other),
            libc::F_OFD_SETLK,
            &fl,
        )
    };
    assert_eq!(rc, 0, "lock 201: {}", std::io::Error::last_os_error());
    let e = Lock::acquire(&image, write_request(), Options::default())
        .expect_err("acquire against a holder of 201");
    let msg = e.to_string();
    assert_eq!(e.errno(), libc::EIO, "{msg}");
    // QEMU's words for a test of byte 201: somebody unshares write.
    assert!(msg.starts_with("Failed to get \"write\" lock"), "{msg}");
    assert!(
        msg.contains("rolling back failed: bytes 100, 101, 103, 201, 202, 203 may still be held"),
        "{msg}"
    );
    // The C ABI returns the failed abort's errno, not -EAGAIN.
    let (rc, err) = c_acquire(&image);
    assert_eq!(
        (rc, err.code),
        (-libc::EIO, -libc::EIO),
        "fpl_acquire against a holder of 201 (and of the bytes the abort above left held), abort failing: {}",
        message(&err)
    );
    drop(other);
}

static ALARMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Signals arriving during slow opens and lock calls (lockfail `slow`,
/// several threads, interrupts on: an interrupted request fails with EINTR, which
/// the kernel passes on as the handler has no SA_RESTART) never make
/// fpl_acquire, fpl_release or fpl_check fail: 50 rounds on a thread that
/// a timer interrupts every 3 ms all succeed, and the file system's log
/// shows that it did fail requests with EINTR meanwhile.
#[test]
fn fuse_interrupted_calls_are_retried() {
    need_root();
    let tmp = TempDir::new("fs-fuse-slow");
    let m = mount_fuse_with(&tmp, "slow", &[], &[]);
    let image = m.path().join("disk.img");

    // SIGALRM's handler, without SA_RESTART.
    // SAFETY: sigaction is plain old data; the handler only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_alarm as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
    }
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        let _ = go_rx.recv();
        let path = c_path(&image);
        let mut failures = Vec::new();
        for round in 0..50 {
            let mut lock = std::ptr::null_mut();
            let mut err = new_error();
            // SAFETY: valid pointers.
            let rc = unsafe {
                fpl_acquire(
                    path.as_ptr(),
                    FPL_MODE_WRITE_PERM,
                    FPL_MODE_WRITE_SHARE,
                    0,
                    &mut lock,
                    &mut err,
                )
            };
            if rc != 0 {
                failures.push(format!(
                    "round {round}: fpl_acquire {rc}: {}",
                    message(&err)
                ));
                continue;
            }
            // SAFETY: a live handle, not used again.
            let rc = unsafe { fpl_release(lock) };
            if rc != 0 {
                failures.push(format!("round {round}: fpl_release {rc}"));
            }
            let (rc, err) = c_check(&image);
            if rc != 0 {
                failures.push(format!("round {round}: fpl_check {rc}: {}", message(&err)));
            }
        }
        failures
    });
    let tid = tid_rx.recv().expect("the worker's thread id");
    // A timer sending SIGALRM to the worker thread only, every 3 ms.
    // SAFETY: sigevent and itimerspec are plain old data; the timer is
    // deleted below.
    let timer = unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGALRM;
        ev.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        assert_eq!(
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer),
            0,
            "timer_create: {}",
            std::io::Error::last_os_error()
        );
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: 3_000_000,
        };
        let spec = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        assert_eq!(
            libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()),
            0
        );
        timer
    };
    go_tx.send(()).expect("start the worker");
    let failures = worker.join();
    // SAFETY: the timer created above, deleted once.
    unsafe { libc::timer_delete(timer) };
    let failures = failures.expect("the worker thread");
    let alarms = ALARMS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "interrupted calls failed ({alarms} signals):\n{}",
        failures.join("\n")
    );
    let log = fs::read_to_string(tmp.path().join("fuse-slow.log")).expect("the FUSE log");
    let interrupted = log.matches("lockfail: interrupted").count();
    assert!(
        interrupted > 0,
        "the file system never failed a request with EINTR ({alarms} signals): the test did not exercise the retry"
    );
    eprintln!("{alarms} signals, {interrupted} requests failed with EINTR");
    drop(m);
}

/// A FUSE file system that locks in its own table (lockfail `slow`, as
/// GlusterFS's client locks on its server): no lock line in any fdinfo,
/// not even the holder's. The bytes are held all the same; the process
/// that has the image open is named as their holder, flagged inferred,
/// with every byte it must be holding, and the C ABI says so with
/// FPL_HOLDER_INFERRED. The same holder on the kernel-locked `local` mode
/// shows lock lines and is seen, not inferred. A lock held there verifies
/// (no false alarm where fdinfo shows nothing), and a second handle of the
/// query's own process is never named.
#[test]
fn fuse_holders_whose_locks_are_out_of_sight_are_inferred() {
    need_root();
    for (mode, inferred) in [("slow", true), ("local", false)] {
        let tmp = TempDir::new(&format!("fs-fuse-infer-{mode}"));
        let m = mount_fuse_with(&tmp, mode, &[], &[]);
        let image = m.path().join("disk.img");
        let holder = Holder::start("write", &image);
        let status = fpl::query(&image, true).expect("query");
        assert!(
            status.held.perm == Mode::Write.perm() && !status.held.unshared.is_empty(),
            "{mode}: the write bytes are held: {status:?}"
        );
        assert_eq!(status.hidden_locks, inferred, "{mode}: {status:?}");
        let named: Vec<_> = status
            .holders
            .iter()
            .map(|h| (h.pid, h.inferred, h.no_locks, h.held))
            .collect();
        assert_eq!(
            named,
            [(holder.pid(), inferred, false, status.held)],
            "{mode}: the holder is named"
        );
        let (rc, st, holders, err) = c_query(&image);
        assert_eq!(rc, 0, "{}", message(&err));
        assert_eq!(st.n_holders, 1, "{mode}");
        let flags = if inferred { FPL_HOLDER_INFERRED } else { 0 };
        assert_eq!(
            (holders[0].pid, holders[0].flags),
            (holder.pid(), flags),
            "{mode}"
        );

        // This process's own read-shared lock verifies, and the query does
        // not name this process (its own descriptors are no one else's).
        let reader = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
        let mine =
            Lock::acquire(&image, reader, Options::default()).expect("read-shared beside write");
        mine.verify().expect("held, not lost");
        let again = fpl::query(&image, true).expect("query");
        let me = std::process::id() as i32;
        assert!(
            again.holders.iter().all(|h| h.pid != me || !inferred),
            "{mode}: {again:?}"
        );
        mine.release().expect("release");
        holder.release();
        let after = fpl::query(&image, true).expect("query");
        assert!(
            after.held.is_empty() && after.holders.is_empty(),
            "{after:?}"
        );
    }
}
