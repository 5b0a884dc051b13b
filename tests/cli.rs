//! The `fpl` command against real QEMU 10 processes (qemu-io, qemu-img,
//! qemu-storage-daemon from qemu-utils).
//!
//! Every test has its own folder and images, kills the processes it starts
//! however it ends (guards with `Drop`), and never assumes that the lock
//! table holds only its own locks: `/proc/locks` lines are filtered by the
//! image's device and inode. Waiting for another process is a bounded poll
//! or a line it prints; no assertion is about time.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use fpl::fdinfo::{lock_lines, parse_lock_line};
use fpl::{Held, Perm, PermSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const FPL: &str = env!("CARGO_BIN_EXE_fpl");

/// The bound on waiting for another process to do something; only a test
/// that is going to fail anyway ever waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// A folder of the test's own, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fpl-cli-{test}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("a folder in the temporary folder can be created");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// A 1 MiB raw image.
    fn raw(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .expect("the image can be created");
        path
    }

    /// A 64 MiB qcow2 image made by qemu-img.
    fn qcow2(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let out = Command::new(qemu("qemu-img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("64M")
            .output()
            .expect("qemu-img runs");
        assert!(
            out.status.success(),
            "qemu-img create: {}",
            text(&out.stderr)
        );
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A QEMU program; its absence fails the test, saying what to install.
fn qemu(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install qemu-utils (QEMU 10)"))
}

/// A started process, killed and reaped however the test ends.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Running {
    fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = child.stdin.take();
        Running { child, stdin }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("the process can be signalled");
    }

    /// Closes its standard input (qemu-io then quits).
    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for it to exit (bounded).
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit",
                self.pid()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of its standard output (taken from the child; it must be piped).
    fn stdout_lines(&mut self) -> Lines {
        Lines::of(self.child.stdout.take().expect("stdout is piped"))
    }

    /// Lines of its standard error (it must be piped).
    fn stderr_lines(&mut self) -> Lines {
        Lines::of(self.child.stderr.take().expect("stderr is piped"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process that is not our child (the command of a killed `fpl hold`),
/// killed however the test ends.
struct Orphan(i32);

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The lines a process prints, read on a thread so that waiting is bounded.
struct Lines {
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle` (bounded wait).
    fn find(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line containing {needle:?}; got {:?}", self.seen),
            }
        }
    }
}

/// `qemu-io -f raw IMAGE` reading commands from a pipe: it holds the image
/// read-write (bytes 100-101) until the pipe closes.
fn qemu_io_holding(image: &Path) -> Running {
    let running = Running::spawn(
        Command::new(qemu("qemu-io"))
            .args(["-f", "raw"])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(&format!("qemu-io to lock {}", image.display()), || {
        let held = held(image);
        held.perm == PermSet::from_iter([Perm::ConsistentRead, Perm::Write])
            && held.unshared.is_empty()
    });
    running
}

/// qemu-storage-daemon exporting a qcow2 image writable over NBD: it holds
/// bytes 100-101, 103, 201 and 203.
fn daemon_holding(dir: &TempDir, image: &Path) -> Running {
    let running = Running::spawn(
        Command::new(qemu("qemu-storage-daemon"))
            .current_dir(dir.path())
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                image.display()
            ))
            .args([
                "--blockdev",
                "driver=qcow2,node-name=disk0,file=file0",
                "--nbd-server",
                "addr.type=unix,addr.path=nbd.sock",
                "--export",
                "type=nbd,id=exp0,node-name=disk0,writable=on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until("qemu-storage-daemon to lock the image", || {
        let held = held(image);
        held.perm == PermSet::from_iter([Perm::ConsistentRead, Perm::Write, Perm::Resize])
            && held.unshared == PermSet::from_iter([Perm::Write, Perm::Resize])
    });
    running
}

/// The bytes held on `image`, seen through the library.
fn held(image: &Path) -> Held {
    fpl::query(image, false)
        .unwrap_or_else(|e| panic!("cannot query {}: {e}", image.display()))
        .held
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes held on `image` according to `/proc/locks`, this image's
/// lines only.
fn proc_locks(image: &Path) -> Held {
    let meta = fs::metadata(image).expect("the image exists");
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let mut held = Held::default();
    for line in stable_proc_locks().lines().filter_map(parse_lock_line) {
        if line.is_on(major, minor, meta.ino()) {
            held.add_range(line.first, line.last);
        }
    }
    held
}

/// `/proc/locks` as two reads in a row agree on it: the kernel writes it a
/// page at a time, so one read taken while other tests lock and unlock can
/// repeat or miss lines.
fn stable_proc_locks() -> String {
    let read = || fs::read_to_string("/proc/locks").expect("/proc/locks is readable");
    let mut text = read();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let again = read();
        if again == text {
            return text;
        }
        assert!(Instant::now() < deadline, "/proc/locks never settled");
        text = again;
    }
}

fn fpl(args: &[&str]) -> Output {
    Command::new(FPL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("fpl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Asserts the exit status and returns standard output.
fn expect_status(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `qemu-io -c quit -f raw IMAGE`: a QEMU writer opening and closing the image.
fn qemu_writer(image: &Path) -> Output {
    Command::new(qemu("qemu-io"))
        .args(["-c", "quit", "-f", "raw"])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .expect("qemu-io runs")
}

fn names(value: &Value) -> PermSet {
    let list = value.as_array().expect("a permission list is an array");
    list.iter()
        .map(|v| v.as_str().expect("permission names are strings"))
        .map(|name| PermSet::parse_list(name).expect("a QEMU permission name"))
        .fold(PermSet::NONE, PermSet::union)
}

// ---------------------------------------------------------------- status

#[test]
fn status_names_the_qemu_holder_and_what_it_holds() {
    let dir = TempDir::new("status-names");
    let image = dir.raw("a.raw");
    let qemu_io = qemu_io_holding(&image);

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    let expected = format!(
        "{}: in use by qemu-io (pid {}, fd ",
        s(&image),
        qemu_io.pid()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains("uses consistent read, write; shares everything"),
        "{out}"
    );

    let out = expect_status(&fpl(&["status", "--no-holders", s(&image)]), 0);
    assert_eq!(
        out.trim(),
        format!(
            "{}: in use: uses consistent read, write; shares everything",
            s(&image)
        )
    );
}

#[test]
fn status_describes_a_read_write_qcow2_export() {
    let dir = TempDir::new("status-daemon");
    let image = dir.qcow2("vm.qcow2");
    let daemon = daemon_holding(&dir, &image);

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    let expected = format!(
        "{}: in use by qemu-storage-da (pid {}, fd ",
        s(&image),
        daemon.pid()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains("uses consistent read, write, resize; does not share write, resize"),
        "{out}"
    );
}

#[test]
fn status_of_free_missing_and_odd_files() {
    let dir = TempDir::new("status-free");
    let image = dir.raw("free.raw");
    let missing = dir.path().join("missing.raw");

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    assert_eq!(out.trim(), format!("{}: free", s(&image)));

    // One image that cannot be inspected makes the exit status 2; the
    // others are still reported.
    let result = fpl(&["status", s(&image), s(&missing), s(dir.path())]);
    let out = expect_status(&result, 2);
    assert_eq!(out.trim(), format!("{}: free", s(&image)));
    let err = text(&result.stderr);
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(err.contains("check the path"), "{err}");
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn status_names_holders_of_every_name_of_an_image() {
    let dir = TempDir::new("status-links");
    let image = dir.raw("a.raw");
    let link = dir.path().join("link.raw");
    std::os::unix::fs::symlink(&image, &link).expect("a symlink can be made");
    let other = dir.raw("b.raw");
    let qemu_a = qemu_io_holding(&image);
    let qemu_b = qemu_io_holding(&other);

    let out = expect_status(&fpl(&["status", s(&image), s(&link), s(&other)]), 0);
    for (name, pid) in [
        (&image, qemu_a.pid()),
        (&link, qemu_a.pid()),
        (&other, qemu_b.pid()),
    ] {
        let expected = format!("{}: in use by qemu-io (pid {pid}, fd ", s(name));
        assert!(out.contains(&expected), "{expected:?} missing in {out}");
    }
}

#[test]
fn status_never_calls_an_image_free_when_the_holder_is_out_of_sight() {
    let dir = TempDir::new("status-unseen");
    let image = dir.raw("a.raw");
    let _qemu_io = qemu_io_holding(&image);

    // fpl in a PID namespace of its own, with its own /proc: qemu-io holds
    // the bytes but is nowhere in that /proc. (Not root: a user namespace
    // grants the right to make the others.)
    let mut unshare = Command::new("unshare");
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        unshare.args(["--user", "--map-root-user"]);
    }
    let out = unshare
        .args(["--pid", "--fork", "--mount-proc", FPL, "status", s(&image)])
        .output()
        .expect("unshare (util-linux) runs");
    let stdout = expect_status(&out, 0);
    assert_eq!(
        stdout.lines().next(),
        Some(
            format!(
                "{}: held on another host or out of sight: uses consistent read, write; \
                 shares everything",
                s(&image)
            )
            .as_str()
        ),
        "{stdout}"
    );
    assert!(stdout.contains("another PID namespace"), "{stdout}");
    assert!(!stdout.contains("free"), "{stdout}");
}

/// "Run fpl as root" is advice for a caller who is not root. Root that
/// still cannot inspect a process is told which processes, and what sets
/// them apart, instead: here fpl runs as root without capabilities
/// (`setpriv --bounding-set=-all`, as in a container that drops them), so
/// the kernel keeps the descriptors of every process holding capabilities
/// from it, qemu-io's among them. Both still say the bytes are held, never
/// free. Root with its capabilities names qemu-io.
#[test]
fn only_callers_who_are_not_root_are_told_to_run_as_root() {
    assert!(
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
        "this test switches users: run the tests as root, as CI does"
    );
    let dir = TempDir::new("status-root-hint");
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    perms.set_mode(0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod the folder");
    let image = dir.raw("a.raw");
    let qemu_io = qemu_io_holding(&image);
    let held = format!(
        "{}: held on another host or out of sight: uses consistent read, write; \
         shares everything",
        s(&image)
    );

    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            FPL,
            "status",
        ])
        .arg(&image)
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = expect_status(&out, 0);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            held.as_str(),
            &format!(
                "{}: note: some processes could not be inspected; run fpl as root to \
                 name every holder",
                s(&image)
            )
        ],
        "{stdout}"
    );

    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", FPL, "status"])
        .arg(&image)
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = expect_status(&out, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&held.as_str()), "{stdout}");
    let note = lines.get(1).copied().unwrap_or_default();
    assert!(
        note.contains("could not be inspected, even by root: the kernel keeps")
            && note.contains("capabilities fpl lacks")
            && !stdout.contains("run fpl as root"),
        "{stdout}"
    );
    // qemu-io is among them: named with its pid, or counted among the "more".
    let pid = qemu_io.pid().to_string();
    assert!(
        note.contains(&format!("{pid} (qemu-io)")) || note.contains(" more could not"),
        "{stdout}"
    );

    let out = Command::new(FPL)
        .arg("status")
        .arg(&image)
        .output()
        .expect("fpl runs");
    let stdout = expect_status(&out, 0);
    assert!(
        stdout.starts_with(&format!("{}: in use by qemu-io (pid {pid}, fd ", s(&image))),
        "{stdout}"
    );
    assert!(!stdout.contains("note:"), "{stdout}");
}

/// Whoever can read an image can lock it (README, Security): user nobody
/// holding a world-readable image exclusively keeps root's qemu-io from
/// opening it for writing, with QEMU's message; root's `fpl status` names
/// the holder. Once the image is 0600, nobody cannot even open it.
#[test]
fn any_reader_can_keep_roots_qemu_off_an_image() {
    assert!(
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
        "this test switches users: run the tests as root, as CI does"
    );
    let dir = TempDir::new("security-reader");
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    perms.set_mode(0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod the folder");
    let image = dir.raw("vm.raw");
    let mut hold = Running::spawn(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", FPL])
            .args(["hold", "--mode", "exclusive"])
            .arg(&image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.child.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("read fpl hold's line");
    assert!(line.starts_with("fpl: holding "), "{line:?}");
    let out = Command::new(qemu("qemu-io"))
        .args(["-f", "raw", "-c", "quit"])
        .arg(&image)
        .output()
        .expect("qemu-io runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Failed to get \"consistent read\" lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(FPL)
        .arg("status")
        .arg(&image)
        .output()
        .expect("fpl");
    let stdout = expect_status(&out, 0);
    assert!(
        stdout.starts_with(&format!(
            "{}: in use by fpl (pid {}, fd ",
            s(&image),
            hold.pid()
        )),
        "{stdout}"
    );
    drop(hold);

    let mut perms = fs::metadata(&image).expect("stat").permissions();
    perms.set_mode(0o600);
    fs::set_permissions(&image, perms).expect("chmod the image");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", FPL])
        .args(["hold", "--mode", "exclusive"])
        .arg(&image)
        .output()
        .expect("setpriv runs");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EACCES"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fpl status -q` answers "in use?" in its exit status alone, as `fuser
/// -s` does: 1 for a free image, 0 once qemu-io holds it (or one of several
/// images), 2 for an image that cannot be inspected (0 if another is in
/// use); nothing printed. Short options: `-m`, `-j`, `-w`, and `--wait
/// forever` waits without a limit.
#[test]
fn status_quiet_answers_in_use_in_its_exit_status_and_short_options_work() {
    let dir = TempDir::new("status-quiet");
    let image = dir.raw("a.raw");
    let other = dir.raw("b.raw");
    let missing = dir.path().join("missing.raw");
    let quiet = |paths: &[&Path]| {
        let out = Command::new(FPL)
            .args(["status", "-q"])
            .args(paths)
            .output()
            .expect("fpl runs");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        out.status.code()
    };
    assert_eq!(quiet(&[&image]), Some(1));
    assert_eq!(quiet(&[&image, &missing]), Some(2));
    let mut qemu_io = qemu_io_holding(&image);
    assert_eq!(quiet(&[&image]), Some(0));
    assert_eq!(quiet(&[&other, &image]), Some(0));
    assert_eq!(quiet(&[&missing, &image]), Some(0));
    assert_eq!(quiet(&[&other]), Some(1));

    let out = Command::new(FPL)
        .args(["check", "-m", "write", "-j"])
        .arg(&image)
        .output()
        .expect("fpl runs");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["ok"], false, "{v}");

    // Waits for as long as it takes: qemu-io quits after 1.5 s.
    let started = Instant::now();
    let hold = Command::new(FPL)
        .args(["hold", "-m", "write", "-w", "forever"])
        .arg(&image)
        .args(["--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("fpl runs");
    thread::sleep(Duration::from_millis(1500));
    qemu_io.close_stdin();
    let out = hold.wait_with_output().expect("fpl hold ends");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("; waiting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(FPL)
        .args(["hold", "-m", "write", "-w", "someday"])
        .arg(&image)
        .output()
        .expect("fpl runs");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("or forever"));
}

/// `fpl status --all` finds every image held on the host, by whom, without
/// being told its name: two images held (by qemu-io, by `fpl hold`) are
/// listed with their holders, a free one is not; `--all` takes no IMAGE.
/// Other tests hold images meanwhile, so only these are looked at.
#[test]
fn status_all_lists_every_held_image_and_its_holders() {
    let dir = TempDir::new("status-all");
    let a = dir.raw("a.raw");
    let b = dir.raw("b.raw");
    let free = dir.raw("free.raw");
    let _qemu_io = qemu_io_holding(&a);
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "-m", "read"])
            .arg(&b)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.child.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("read fpl hold's line");
    assert!(line.starts_with("fpl: holding "), "{line:?}");

    let out = Command::new(FPL)
        .args(["status", "--all", "--json"])
        .output()
        .expect("fpl runs");
    let stdout = expect_status(&out, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let find = |p: &Path| {
        v.as_array()
            .expect("an array")
            .iter()
            .find(|o| o["path"] == s(p))
            .cloned()
    };
    let of_a = find(&a).unwrap_or_else(|| panic!("{} missing: {stdout}", a.display()));
    assert_eq!(of_a["holders"][0]["name"], "qemu-io", "{of_a}");
    let of_b = find(&b).unwrap_or_else(|| panic!("{} missing: {stdout}", b.display()));
    assert_eq!(of_b["holders"][0]["pid"], hold.pid(), "{of_b}");
    assert!(find(&free).is_none(), "{stdout}");

    let out = Command::new(FPL)
        .args(["status", "-a"])
        .output()
        .expect("fpl runs");
    let text = expect_status(&out, 0);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{}: in use by qemu-io (pid ", s(&a)))),
        "{text}"
    );
    let out = Command::new(FPL)
        .args(["status", "-a"])
        .arg(&a)
        .output()
        .expect("fpl runs");
    assert_eq!(out.status.code(), Some(2), "--all takes no IMAGE");
}

/// Verifying every 50 ms while a command runs raises no false alarm on a
/// local file system (about 20 verifications, a reader of the same bytes
/// beside): the command's status is fpl's. A negative or non-numeric
/// interval is a usage error that takes no lock.
#[test]
fn hold_verifies_its_locks_without_false_alarms() {
    let dir = TempDir::new("hold-verify");
    let image = dir.raw("a.raw");
    let _reader = Running::spawn(
        Command::new(qemu("qemu-io"))
            .args(["-r", "-U", "-f", "raw"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let out = Command::new(FPL)
        .args(["hold", "--mode", "read", "--verify-interval", "0.05"])
        .arg(&image)
        .args(["--", "sh", "-c", "sleep 1; exit 3"])
        .output()
        .expect("fpl runs");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in ["-1", "soon"] {
        let out = Command::new(FPL)
            .args([
                "hold",
                "--mode",
                "read",
                &format!("--verify-interval={bad}"),
            ])
            .arg(&image)
            .args(["--", "true"])
            .output()
            .expect("fpl runs");
        assert_eq!(out.status.code(), Some(125), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--verify-interval"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A python3 process holding byte 100 of `image` (an OFD read lock, as
/// QEMU's consistent read), named `name` (`/proc/PID/comm`) once it says so.
fn renamed_holder(image: &Path, name: &str) -> Running {
    let script = r#"
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 100, 1, 0))
with open("/proc/self/comm", "wb") as comm:
    comm.write(bytes.fromhex(sys.argv[2]))
print("ready", flush=True)
sys.stdin.read()
"#;
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    let mut running = Running::spawn(
        Command::new("python3")
            .args(["-c", script])
            .arg(image)
            .arg(hex)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    running.stdout_lines().find("ready");
    running
}

#[test]
fn untrusted_names_are_escaped_in_text_and_exact_in_json() {
    let dir = TempDir::new("status-escape");
    let image = dir.raw("a.raw");
    // ESC sequences (clear the screen, red), a tab, a backslash, DEL and
    // the 8-bit CSI U+009B: all could steer the terminal of whoever runs fpl.
    let name = "\x1b[2J\x1b[31m\t\\r\x7f\u{9b}";
    let escaped = r"\x1b[2J\x1b[31m\t\\r\x7f\u{9b}";
    let holder = renamed_holder(&image, name);
    let no_control = |what: &str, out: &str| {
        assert!(
            !out.chars().any(|c| c != '\n' && (c.is_control())),
            "{what}: a control character reached the terminal: {out:?}"
        );
    };

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    no_control("status", &out);
    let expected = format!(
        "{}: in use by {escaped} (pid {}, fd ",
        s(&image),
        holder.pid()
    );
    assert!(out.contains(&expected), "{expected:?} missing in {out:?}");

    let out = expect_status(&fpl(&["check", "--mode", "exclusive", s(&image)]), 1);
    no_control("check", &out);
    assert!(
        out.contains(&format!("(held by {escaped}, pid {})", holder.pid())),
        "{out:?}"
    );

    let result = fpl(&["hold", "--mode", "exclusive", s(&image), "--", "true"]);
    let err = text(&result.stderr);
    no_control("hold", &err);
    assert!(
        err.contains(&format!("(held by {escaped}, pid {})", holder.pid())),
        "{err:?}"
    );

    let json = expect_status(&fpl(&["status", "--json", s(&image)]), 0);
    let value: Value = serde_json::from_str(&json).expect("status --json prints JSON");
    assert_eq!(value[0]["holders"][0]["name"], name, "{json}");
    let json = expect_status(
        &fpl(&["check", "--json", "--mode", "exclusive", s(&image)]),
        1,
    );
    let value: Value = serde_json::from_str(&json).expect("check --json prints JSON");
    assert_eq!(value[0]["conflict"]["holder"]["name"], name, "{json}");
}

/// The kernel cuts a process name at 15 bytes, here inside the 2 bytes of
/// "é": the name is shown with U+FFFD for the broken byte, never dropped.
#[test]
fn a_name_cut_inside_a_character_is_shown_lossily() {
    let dir = TempDir::new("status-cut-name");
    let image = dir.raw("a.raw");
    let holder = renamed_holder(&image, "abcdefghijklmné");
    let json = expect_status(&fpl(&["status", "--json", s(&image)]), 0);
    let value: Value = serde_json::from_str(&json).expect("status --json prints JSON");
    assert_eq!(
        value[0]["holders"][0]["name"], "abcdefghijklmn\u{fffd}",
        "{json}"
    );
    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    assert!(
        out.contains(&format!("abcdefghijklmn\u{fffd} (pid {}", holder.pid())),
        "{out}"
    );
}

#[test]
fn untrusted_paths_are_escaped_too() {
    let dir = TempDir::new("path-escape");
    let missing = dir.path().join("\x1b]0;owned\x07.raw");
    let result = fpl(&["status", s(&missing)]);
    expect_status(&result, 2);
    let err = text(&result.stderr);
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains(r"\x1b]0;owned\x07.raw"), "{err:?}");
}

#[test]
fn status_json_matches_proc_locks() {
    let dir = TempDir::new("status-json");
    let raw = dir.raw("a.raw");
    let qcow2 = dir.qcow2("b.qcow2");
    let free = dir.raw("c.raw");
    let missing = dir.path().join("d.raw");
    let qemu_io = qemu_io_holding(&raw);
    let daemon = daemon_holding(&dir, &qcow2);

    let out = fpl(&[
        "status",
        "--json",
        s(&raw),
        s(&qcow2),
        s(&free),
        s(&missing),
    ]);
    let json = expect_status(&out, 2);
    let value: Value = serde_json::from_str(&json).expect("status --json prints JSON");
    let objects = value.as_array().expect("an array");
    assert_eq!(objects.len(), 4, "{json}");

    for (object, image, pid) in [
        (&objects[0], &raw, qemu_io.pid()),
        (&objects[1], &qcow2, daemon.pid()),
    ] {
        assert_eq!(object["path"], s(image));
        let kernel = proc_locks(image);
        assert_eq!(names(&object["perm"]), kernel.perm, "{json}");
        assert_eq!(names(&object["unshared"]), kernel.unshared, "{json}");
        // "holders-partial" is not asserted absent: it depends on every
        // other process on the machine, which other tests start and stop.
        let flags = object["flags"].as_array().expect("flags are a list");
        assert!(
            !flags.iter().any(|f| f == "legacy" || f == "libvirt"),
            "{json}"
        );
        let holders = object["holders"].as_array().expect("holders are listed");
        assert_eq!(holders.len(), 1, "{json}");
        let holder = &holders[0];
        assert_eq!(holder["pid"], pid, "{json}");
        assert_eq!(names(&holder["perm"]), kernel.perm, "{json}");
        assert_eq!(names(&holder["unshared"]), kernel.unshared, "{json}");
        // The descriptor named is one that holds locks on this inode.
        let fd = holder["fd"].as_i64().expect("fd is a number");
        let fdinfo = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .expect("the holder's fdinfo is readable");
        let meta = fs::metadata(image).expect("the image exists");
        assert!(lock_lines(&fdinfo).any(|l| l.ino == meta.ino()), "{fdinfo}");
    }
    assert_eq!(names(&objects[1]["perm"]).bits(), 0x0b, "{json}");
    assert_eq!(names(&objects[1]["unshared"]).bits(), 0x0a, "{json}");

    assert_eq!(objects[2]["path"], s(&free));
    assert_eq!(objects[2]["perm"], serde_json::json!([]));
    assert_eq!(objects[2]["unshared"], serde_json::json!([]));
    assert_eq!(objects[2]["holders"], serde_json::json!([]));

    assert_eq!(objects[3]["path"], s(&missing));
    assert_eq!(objects[3]["errno"], libc::ENOENT);
    let error = objects[3]["error"].as_str().expect("an error message");
    assert!(error.contains("No such file or directory"), "{error}");
}

/// `fpl ARGS` with standard output (or error) a pipe nobody reads any more.
fn fpl_into_closed_pipe(args: &[&str], stderr: bool) -> Output {
    let (reader, writer) = nix::unistd::pipe().expect("a pipe can be made");
    drop(reader);
    let mut command = Command::new(FPL);
    command.args(args).stdin(Stdio::null());
    if stderr {
        command.stdout(Stdio::piped()).stderr(writer);
    } else {
        command.stdout(writer).stderr(Stdio::piped());
    }
    command.output().expect("fpl runs")
}

/// `fpl ARGS > /dev/full`: every write on standard output fails (ENOSPC).
fn fpl_into_full_disk(args: &[&str]) -> Output {
    let full = File::create("/dev/full").expect("/dev/full can be opened");
    Command::new(FPL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(full)
        .output()
        .expect("fpl runs")
}

#[test]
fn a_closed_stderr_does_not_change_the_exit_status() {
    let dir = TempDir::new("closed-stderr");
    let missing = dir.path().join("missing.raw");
    let image = dir.raw("a.raw");
    let _qemu_io = qemu_io_holding(&image);
    // Diagnostics nobody can read are lost, not a panic (exit 101).
    let out = fpl_into_closed_pipe(&["status", s(&missing)], true);
    expect_status(&out, 2);
    let out = fpl_into_closed_pipe(&["check", "--mode", "exclusive", s(&missing)], true);
    expect_status(&out, 2);
    let out = fpl_into_closed_pipe(
        &["hold", "--mode", "exclusive", s(&image), "--", "true"],
        true,
    );
    expect_status(&out, 75);
    let out = fpl_into_closed_pipe(&["hold", "--mode", "read", s(&missing), "--", "true"], true);
    expect_status(&out, 125);
}

#[test]
fn a_failed_write_on_stdout_is_an_error_but_a_closed_pipe_is_not() {
    let dir = TempDir::new("stdout-errors");
    let image = dir.raw("a.raw");
    for args in [
        &["status", "--json", s(&image)][..],
        &["status", s(&image)],
        &["check", "--mode", "write", s(&image)],
    ] {
        let out = fpl_into_full_disk(args);
        expect_status(&out, 2);
        let err = text(&out.stderr);
        assert!(err.contains("standard output"), "{args:?}: {err}");

        // `fpl status img | head -0`: the reader has all it wanted.
        let out = fpl_into_closed_pipe(args, false);
        expect_status(&out, 0);
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
    // A hold nobody can be told about is no hold: it fails and lets go.
    let out = fpl_into_full_disk(&["hold", "--mode", "write", s(&image)]);
    expect_status(&out, 125);
    assert!(text(&out.stderr).contains("standard output"));
    assert!(held(&image).perm.is_empty());
}

// ---------------------------------------------------------------- check

#[test]
fn check_exit_status_is_0_granted_1_conflict_2_error() {
    let dir = TempDir::new("check");
    let image = dir.raw("a.raw");
    let free = dir.raw("free.raw");
    let missing = dir.path().join("missing.raw");
    let qemu_io = qemu_io_holding(&image);

    let out = expect_status(&fpl(&["check", "--mode", "read-shared", s(&image)]), 0);
    assert_eq!(
        out.trim(),
        format!("{}: read-shared would be granted", s(&image))
    );
    expect_status(
        &fpl(&[
            "check",
            "--perm",
            "consistent-read",
            "--share",
            "all",
            s(&image),
        ]),
        0,
    );

    // qemu-io holds 100-101: exclusive refuses to share consistent read.
    let out = expect_status(
        &fpl(&["check", "--mode", "exclusive", s(&free), s(&image)]),
        1,
    );
    assert!(
        out.contains(&format!("{}: exclusive would be granted", s(&free))),
        "{out}"
    );
    let refusal = format!(
        "{}: exclusive would be refused: Failed to get shared \"consistent read\" lock \
         (held by qemu-io, pid {})",
        s(&image),
        qemu_io.pid()
    );
    assert!(out.contains(&refusal), "{out}");
    assert!(
        out.contains(&format!(
            "Is another process using the image [{}]?",
            s(&image)
        )),
        "{out}"
    );
    // read refuses to share write.
    let out = expect_status(&fpl(&["check", "--mode", "read", s(&image)]), 1);
    assert!(out.contains("Failed to get shared \"write\" lock"), "{out}");

    // An error outweighs a conflict.
    let result = fpl(&["check", "--mode", "exclusive", s(&image), s(&missing)]);
    expect_status(&result, 2);
    assert!(text(&result.stderr).contains("No such file or directory"));

    let result = fpl(&["check", "--mode", "sideways", s(&free)]);
    expect_status(&result, 2);
    assert!(text(&result.stderr).contains("unknown mode 'sideways'"));
    let result = fpl(&["check", "--perm", "read", "--share", "all", s(&free)]);
    expect_status(&result, 2);
    assert!(text(&result.stderr).contains("unknown permission 'read'"));
}

#[test]
fn check_json_describes_the_conflict() {
    let dir = TempDir::new("check-json");
    let image = dir.raw("a.raw");
    let free = dir.raw("free.raw");
    let missing = dir.path().join("missing.raw");
    let qemu_io = qemu_io_holding(&image);

    let out = fpl(&[
        "check",
        "--json",
        "--mode",
        "read",
        s(&free),
        s(&image),
        s(&missing),
    ]);
    let json = expect_status(&out, 2);
    let value: Value = serde_json::from_str(&json).expect("check --json prints JSON");
    assert_eq!(value[0], serde_json::json!({"path": s(&free), "ok": true}));
    let refused = &value[1];
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["errno"], libc::EAGAIN);
    assert_eq!(refused["conflict"]["byte"], 101);
    assert_eq!(refused["conflict"]["perm"], "write");
    assert_eq!(
        refused["conflict"]["message"],
        "Failed to get shared \"write\" lock"
    );
    assert_eq!(refused["conflict"]["holder"]["pid"], qemu_io.pid());
    assert_eq!(refused["conflict"]["holder"]["name"], "qemu-io");
    assert_eq!(value[2]["ok"], false);
    assert_eq!(value[2]["errno"], libc::ENOENT);
}

// ---------------------------------------------------------------- hold

#[test]
fn hold_refuses_a_qemu_writer_while_the_command_runs() {
    let dir = TempDir::new("hold-command");
    let image = dir.raw("a.raw");
    // `head -c1` runs until it reads a byte: the test decides when it ends.
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args([
                "hold",
                "--mode",
                "exclusive",
                s(&image),
                "--",
                "head",
                "-c1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    wait_until("fpl hold to lock the image", || {
        held(&image).unshared == PermSet::ALL
    });

    let refused = qemu_writer(&image);
    assert!(!refused.status.success(), "QEMU was admitted");
    let err = text(&refused.stderr);
    assert!(err.contains("Failed to get"), "{err}");
    assert!(err.contains("Is another process using the image"), "{err}");

    hold.stdin
        .as_mut()
        .expect("stdin is piped")
        .write_all(b"x")
        .expect("head reads its input");
    assert_eq!(hold.wait().code(), Some(0));
    let admitted = qemu_writer(&image);
    assert!(admitted.status.success(), "{}", text(&admitted.stderr));
    assert!(held(&image).perm.is_empty());
}

#[test]
fn hold_exits_with_the_command_status() {
    let dir = TempDir::new("hold-status");
    let image = dir.raw("a.raw");
    let hold = |command: &[&str]| hold_status(&image, command);
    assert_eq!(hold(&["sh", "-c", "exit 7"]).code(), Some(7));
    assert_eq!(hold(&["sh", "-c", "kill -TERM $$"]).code(), Some(128 + 15));
    assert_eq!(hold(&["fpl-test-no-such-command"]).code(), Some(127));
    assert!(held(&image).perm.is_empty());
}

#[test]
fn hold_errors_of_its_own_exit_125_apart_from_the_command() {
    let dir = TempDir::new("hold-errors");
    let missing = dir.path().join("missing.raw");
    let image = dir.raw("a.raw");
    let marker = dir.path().join("ran");
    // An image that cannot be opened, a wrong command line: fpl's own
    // failures, never confused with a command that exits 1 or 2.
    let out = fpl(&[
        "hold",
        "--mode",
        "write",
        s(&missing),
        "--",
        "touch",
        s(&marker),
    ]);
    expect_status(&out, 125);
    assert!(text(&out.stderr).contains("No such file or directory"));
    for args in [
        &[
            "hold",
            "--wait",
            "-1",
            "--mode",
            "read",
            s(&image),
            "--",
            "true",
        ][..],
        &["hold", "--mode", "sideways", s(&image)],
        &["hold", "--mode", "read"],
    ] {
        let out = fpl(args);
        expect_status(&out, 125);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    assert!(!marker.exists(), "the command ran without the locks");
    assert_eq!(hold_status(&image, &["sh", "-c", "exit 2"]).code(), Some(2));
    assert!(expect_status(&fpl(&["hold", "--help"]), 0).contains("Exit status"));
}

/// The status of `fpl hold --mode write IMAGE -- COMMAND...`.
fn hold_status(image: &Path, command: &[&str]) -> ExitStatus {
    let mut args = vec!["hold", "--mode", "write", s(image), "--"];
    args.extend_from_slice(command);
    fpl(&args).status
}

#[test]
fn hold_started_with_sigchld_ignored_still_sees_its_command_end() {
    let dir = TempDir::new("hold-sigchld");
    let image = dir.raw("a.raw");
    // SIG_IGN for SIGCHLD survives exec; with it the kernel reaps children
    // itself and sends no SIGCHLD, so fpl would wait for ever.
    let wrapper = "import os, signal, sys; \
                   signal.signal(signal.SIGCHLD, signal.SIG_IGN); \
                   os.execv(sys.argv[1], sys.argv[1:])";
    let mut hold = Running::spawn(
        Command::new("python3")
            .args(["-c", wrapper, FPL, "hold", "--mode", "write", s(&image)])
            .args(["--", "sh", "-c", "exit 3"])
            .stdin(Stdio::null()),
    );
    assert_eq!(hold.wait().code(), Some(3));
    assert!(held(&image).perm.is_empty());
}

/// `command` with SIGINT and SIGQUIT at their default actions, whatever
/// this test process inherited: what an interactive shell gives a job.
fn with_default_int_quit(command: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec, signal() is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        })
    }
}

#[test]
fn a_command_killed_by_sigint_or_sigquit_kills_hold_the_same_way() {
    let dir = TempDir::new("hold-reraise");
    let image = dir.raw("a.raw");
    // A shell loop around fpl stops on Ctrl-C only if fpl, like its
    // command, dies of the signal rather than exiting 130.
    for (signal, name) in [(libc::SIGINT, "INT"), (libc::SIGQUIT, "QUIT")] {
        let script = format!("kill -{name} $$");
        let status = with_default_int_quit(
            Command::new(FPL)
                .args(["hold", "--mode", "write", s(&image), "--", "sh", "-c"])
                .arg(&script)
                .current_dir(dir.path())
                .stdin(Stdio::null()),
        )
        .status()
        .expect("fpl runs");
        assert_eq!(status.signal(), Some(signal), "{name}: {status:?}");
        assert!(
            !status.core_dumped(),
            "fpl dumped core for the command's SIGQUIT"
        );
        assert!(held(&image).perm.is_empty());
    }
    // Other signals stay exit statuses, as documented.
    assert_eq!(
        hold_status(&image, &["sh", "-c", "kill -TERM $$"]).code(),
        Some(143)
    );
}

#[test]
fn sigint_ends_a_hold_without_command_by_sigint() {
    let dir = TempDir::new("hold-sigint");
    let image = dir.raw("a.raw");
    let mut hold = Running::spawn(with_default_int_quit(
        Command::new(FPL)
            .args(["hold", "--mode", "write", s(&image)])
            .stdout(Stdio::piped()),
    ));
    let line = hold.stdout_lines().find("holding");
    assert!(line.contains("SIGINT (Ctrl-C)"), "{line}");
    hold.signal(Signal::SIGINT);
    assert_eq!(hold.wait().signal(), Some(libc::SIGINT));
    assert!(held(&image).perm.is_empty());
}

#[test]
fn hold_takes_every_image_or_none() {
    let dir = TempDir::new("hold-all");
    let free = dir.raw("free.raw");
    let busy = dir.raw("busy.raw");
    let marker = dir.path().join("ran");
    let qemu_io = qemu_io_holding(&busy);

    let out = fpl(&[
        "hold",
        "--mode",
        "exclusive",
        s(&free),
        s(&busy),
        "--",
        "touch",
        s(&marker),
    ]);
    // A conflict has a status of its own, 75 (EX_TEMPFAIL), that the
    // command's failures (often 1) do not share.
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}: cannot take exclusive", s(&busy))),
        "{err}"
    );
    assert!(
        err.contains(&format!("(held by qemu-io, pid {})", qemu_io.pid())),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran without the locks");
    assert!(held(&free).perm.is_empty());
}

/// `fpl hold --mode exclusive IMAGE -- sh -c 'echo $$; exec sleep 600'`,
/// once the command runs (it prints its pid) and the image is held.
fn hold_exclusive_around_sleep(image: &Path) -> (Running, Orphan) {
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--mode", "exclusive", s(image), "--"])
            .args(["sh", "-c", "echo $$; exec sleep 600"])
            .stdout(Stdio::piped()),
    );
    let line = hold.stdout_lines().find("");
    let command: i32 = line.trim().parse().expect("the command prints its pid");
    let command = Orphan(command);
    assert_eq!(held(image).unshared, PermSet::ALL);
    (hold, command)
}

#[test]
fn sigterm_to_hold_ends_the_command_and_frees_the_image() {
    let dir = TempDir::new("hold-sigterm");
    let image = dir.raw("a.raw");
    let (mut hold, orphan) = hold_exclusive_around_sleep(&image);
    let command = orphan.0;

    hold.signal(Signal::SIGTERM);
    let status = hold.wait();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    // fpl reaped the command before exiting, so it is gone.
    assert!(!Path::new(&format!("/proc/{command}")).exists());
    assert!(held(&image).perm.is_empty());
    assert!(held(&image).unshared.is_empty());
    assert!(qemu_writer(&image).status.success());
}

/// A command that counts the SIGTERM and SIGINT it receives, each one the
/// kernel delivers (the wakeup descriptor gets a byte per delivery, where
/// Python's handlers could merge two), and prints the counts at the first
/// SIGHUP: `counts TERM=1 INT=0`. It first prints `ready PPID` (fpl's pid).
const COUNTER: &str = r#"
import os, signal
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda *args: None)
print("ready", os.getppid(), flush=True)
counts = {}
done = False
while not done:
    data = os.read(r, 64)
    os.set_blocking(r, False)
    try:
        data += os.read(r, 64)
    except BlockingIOError:
        pass
    os.set_blocking(r, True)
    for signo in data:
        counts[signo] = counts.get(signo, 0) + 1
        done = done or signo == signal.SIGHUP
print("counts TERM=%d INT=%d" % (counts.get(15, 0), counts.get(2, 0)), flush=True)
"#;

/// Whether `signal` is pending for process `pid` (`/proc/PID/status`).
fn pending(pid: i32, signal: Signal) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bit = 1u64 << (signal as i32 - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .any(|mask| u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & bit != 0))
}

/// Whether process `pid` is stopped.
fn stopped(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T')
    })
}

/// Who sends the signal in [`deliveries`].
enum Sender {
    /// The test, to fpl's pid.
    ToPid,
    /// The test, to fpl's process group (fpl leads it): `kill -- -PGID`.
    ToGroup,
    /// A script in fpl's process group: `kill 0`.
    KillZero,
}

/// How many times `signal`, sent once by `sender`, reaches the counting
/// command of `fpl hold` (TERM, INT). fpl is stopped while the signal is
/// sent and until every copy the command got directly has been delivered,
/// so that a copy fpl passes on later cannot merge with it.
fn deliveries(sender: Sender, signal: Signal) -> (u32, u32) {
    let dir = TempDir::new("hold-deliveries");
    let image = dir.raw("a.raw");
    let mut command = match sender {
        Sender::KillZero => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!(
                    "trap : TERM; \"$0\" hold --mode write {} -- python3 -c \"$1\" & \
                     read go; kill -{} 0; echo killed; wait",
                    s(&image),
                    &signal.as_str()[3..]
                ))
                .arg(FPL)
                .arg(COUNTER);
            sh
        }
        _ => {
            let mut fpl = Command::new(FPL);
            fpl.args([
                "hold",
                "--mode",
                "write",
                s(&image),
                "--",
                "python3",
                "-c",
                COUNTER,
            ]);
            fpl
        }
    };
    // A group of its own, so that no group signal reaches the test.
    let mut leader = Running::spawn(
        with_default_int_quit(&mut command)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut lines = leader.stdout_lines();
    let ready = lines.find("ready ");
    let fpl: i32 = ready[6..]
        .trim()
        .parse()
        .expect("the counter prints fpl's pid");
    let _fpl = Orphan(fpl);
    let counter = pid_of_child(fpl);

    kill(Pid::from_raw(fpl), Signal::SIGSTOP).expect("fpl can be stopped");
    wait_until("fpl to stop", || stopped(fpl));
    match sender {
        Sender::ToPid => kill(Pid::from_raw(fpl), signal),
        Sender::ToGroup => kill(Pid::from_raw(-leader.pid()), signal),
        Sender::KillZero => {
            let stdin = leader.stdin.as_mut().expect("stdin is piped");
            stdin.write_all(b"go\n").expect("the script reads");
            lines.find("killed");
            Ok(())
        }
    }
    .expect("the signal can be sent");
    wait_until("the command to take its copy", || !pending(counter, signal));
    kill(Pid::from_raw(fpl), Signal::SIGCONT).expect("fpl can be continued");
    // Once fpl has taken the signal, whatever it passes on goes before the
    // SIGHUP that makes the counter report.
    wait_until("fpl to take the signal", || !pending(fpl, signal));
    kill(Pid::from_raw(fpl), Signal::SIGHUP).expect("fpl can be signalled");
    let counts = lines.find("counts ");
    let count = |name: &str| -> u32 {
        counts
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .expect("the counter prints its counts")
    };
    (count("TERM="), count("INT="))
}

/// The only child of process `parent`.
fn pid_of_child(parent: i32) -> i32 {
    let path = format!("/proc/{parent}/task/{parent}/children");
    let children = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    children.trim().parse().expect("fpl has one child")
}

#[test]
fn sigterm_to_hold_reaches_the_command_once() {
    assert_eq!(deliveries(Sender::ToPid, Signal::SIGTERM), (1, 0));
}

#[test]
fn sigterm_to_the_group_of_hold_reaches_the_command_once() {
    assert_eq!(deliveries(Sender::ToGroup, Signal::SIGTERM), (1, 0));
}

#[test]
fn kill_0_from_the_group_of_hold_reaches_the_command_once() {
    assert_eq!(deliveries(Sender::KillZero, Signal::SIGTERM), (1, 0));
}

#[test]
fn sigint_to_the_group_of_hold_reaches_the_command_once() {
    // What Ctrl-C does when fpl runs in the terminal's foreground group.
    assert_eq!(deliveries(Sender::ToGroup, Signal::SIGINT), (0, 1));
}

#[test]
fn a_stopped_command_stops_hold_and_continuing_hold_continues_it() {
    let dir = TempDir::new("hold-stop");
    let image = dir.raw("a.raw");
    // fpl in a group of its own, whose parent (the test) is outside it: a
    // group the kernel may stop (it discards SIGTSTP in orphaned groups).
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--mode", "exclusive", s(&image), "--"])
            .args(["sh", "-c", "echo $$; exec sleep 600"])
            .process_group(0)
            .stdout(Stdio::piped()),
    );
    let command: i32 = hold.stdout_lines().find("").trim().parse().expect("a pid");
    let _command = Orphan(command);
    // What Ctrl-Z does to the command's group: the job is seen stopped,
    // with the locks still held, and `fg` (SIGCONT to fpl) resumes it.
    kill(Pid::from_raw(command), Signal::SIGTSTP).expect("the command can be stopped");
    wait_until("fpl to stop with its command", || stopped(hold.pid()));
    assert_eq!(held(&image).unshared, PermSet::ALL);
    hold.signal(Signal::SIGCONT);
    wait_until("the command to go on", || !stopped(command));
    assert!(alive(hold.pid()) && alive(command));
}

#[test]
fn the_holding_line_comes_once_every_lock_is_taken() {
    let dir = TempDir::new("hold-line");
    let image = dir.raw("a.raw");
    let other = dir.raw("b.raw");
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // A script's way to hold: start in the background, read the line,
    // then rely on the lock. 50 times, each checked by a second fpl.
    let script = r#"
        i=0
        while [ $i -lt 50 ]; do
            "$0" hold --mode write "$1" "$2" > "$3" &
            read line < "$3"
            echo "$line"
            "$0" status --no-holders "$1" "$2"
            kill $!
            wait $!
            i=$((i + 1))
        done
    "#;
    let out = Command::new("sh")
        .args(["-c", script, FPL, s(&image), s(&other), s(&fifo)])
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    let stdout = expect_status(&out, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 150, "{stdout}");
    for round in lines.chunks(3) {
        assert!(round[0].starts_with("fpl: holding "), "{round:?}");
        for (line, name) in round[1..].iter().zip([&image, &other]) {
            let expected = format!("{}: in use: uses consistent read, write, resize", s(name));
            assert!(line.starts_with(&expected), "{round:?}");
        }
    }
    assert!(held(&image).perm.is_empty() && held(&other).perm.is_empty());
}

#[test]
fn hold_without_a_command_holds_until_a_signal() {
    let dir = TempDir::new("hold-signal");
    let image = dir.raw("a.raw");
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--mode", "write", s(&image)])
            .stdout(Stdio::piped()),
    );
    let line = hold.stdout_lines().find("holding");
    assert!(line.contains(s(&image)), "{line}");

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    let expected = format!("{}: in use by fpl (pid {}, fd ", s(&image), hold.pid());
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains(
            "uses consistent read, write, resize; does not share write, write unchanged, resize"
        ),
        "{out}"
    );
    assert!(!qemu_writer(&image).status.success(), "QEMU was admitted");

    // SIGTERM (named in the line) ends the hold as planned: exit 0.
    assert!(line.contains("SIGTERM"), "{line}");
    hold.signal(Signal::SIGTERM);
    assert_eq!(hold.wait().code(), Some(0));
    assert!(held(&image).perm.is_empty());
    assert!(qemu_writer(&image).status.success());
}

/// Whether process `pid` runs (exists and is not a zombie: a reaper that
/// is slow, or none in a container, must not make a dead process alive).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

#[test]
fn killing_hold_kills_its_command() {
    let dir = TempDir::new("hold-pdeathsig");
    let image = dir.raw("a.raw");
    let (mut hold, orphan) = hold_exclusive_around_sleep(&image);
    let command = orphan.0;

    // SIGKILL cannot be passed on: the kernel kills the command when fpl
    // dies, so it never runs on without the locks.
    hold.signal(Signal::SIGKILL);
    assert_eq!(hold.wait().signal(), Some(libc::SIGKILL));
    wait_until("the command to die with fpl", || !alive(command));
    assert!(held(&image).perm.is_empty());
    assert!(qemu_writer(&image).status.success());
}

#[test]
fn the_command_does_not_inherit_the_locks() {
    let dir = TempDir::new("hold-cloexec");
    let image = dir.raw("a.raw");
    // The command starts a process of its own, which outlives fpl (only
    // the command itself is killed with fpl). The locks die with fpl only
    // if that process has no copy of the descriptor.
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--mode", "exclusive", s(&image), "--"])
            .args(["sh", "-c", "sleep 600 & echo $!; wait"])
            .stdout(Stdio::piped()),
    );
    let line = hold.stdout_lines().find("");
    let grandchild = Orphan(line.trim().parse().expect("the command prints a pid"));
    assert_eq!(held(&image).unshared, PermSet::ALL);

    hold.signal(Signal::SIGKILL);
    hold.wait();
    assert!(alive(grandchild.0));
    assert!(held(&image).perm.is_empty(), "the command kept the locks");
    assert!(qemu_writer(&image).status.success());
}

#[test]
fn wait_takes_the_lock_once_qemu_quits() {
    let dir = TempDir::new("hold-wait");
    let image = dir.raw("a.raw");
    let mut qemu_io = qemu_io_holding(&image);
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--wait", "600", "--mode", "exclusive", s(&image)])
            .args(["--", "true"])
            .stderr(Stdio::piped()),
    );
    // fpl says once that it waits; only then does QEMU quit.
    let line = hold.stderr_lines().find("waiting");
    assert!(line.contains(s(&image)), "{line}");
    assert!(hold.child.try_wait().expect("waitpid works").is_none());

    qemu_io.close_stdin();
    assert_eq!(qemu_io.wait().code(), Some(0));
    assert_eq!(hold.wait().code(), Some(0));
}

#[test]
fn wait_gives_up_like_check() {
    let dir = TempDir::new("hold-wait-expires");
    let image = dir.raw("a.raw");
    let qemu_io = qemu_io_holding(&image);
    let out = fpl(&[
        "hold",
        "--wait",
        "0.3",
        "--mode",
        "exclusive",
        s(&image),
        "--",
        "true",
    ]);
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "Failed to get shared \"consistent read\" lock (held by qemu-io, pid {})",
            qemu_io.pid()
        )),
        "{err}"
    );
}

/// `hold --wait` retries every 100 ms; the holder is looked up (one walk of
/// /proc) only for the lines it prints, after every lock of the attempt is
/// released, never on each retry. Counted with strace: the walks open the
/// /proc folder itself.
#[test]
fn wait_looks_up_the_holder_once_per_line_not_per_retry() {
    let dir = TempDir::new("hold-wait-scans");
    let free = dir.raw("free.raw");
    let busy = dir.raw("busy.raw");
    let qemu_io = qemu_io_holding(&busy);
    let trace = dir.path().join("trace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat", "-o"])
        .arg(&trace)
        .arg(FPL)
        .args(["hold", "--wait", "1.5", "--mode", "exclusive"])
        .args([&free, &busy])
        .args(["--", "true"])
        .output()
        .expect("strace runs (apt-get install strace)");
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "held by qemu-io (pid {})); waiting",
            qemu_io.pid()
        )),
        "{err}"
    );
    let trace = std::fs::read_to_string(&trace).expect("strace wrote its trace");
    let walks = trace
        .lines()
        .filter(|l| l.contains("openat(AT_FDCWD, \"/proc\", "))
        .count();
    let attempts = trace
        .lines()
        .filter(|l| l.contains("busy.raw") && l.contains("O_PATH"))
        .count();
    assert!(attempts >= 5, "only {attempts} attempts in 1.5 s:\n{trace}");
    // One walk for the "waiting" line, one for the final message.
    assert_eq!(walks, 2, "{walks} walks of /proc for {attempts} attempts");
}

// ---------------------------------------------------------------- demo, help

#[test]
fn demo_shows_a_qemu_storage_daemon_and_cleans_up() {
    qemu("qemu-img");
    qemu("qemu-storage-daemon");
    let dir = TempDir::new("demo");
    let out = Command::new(FPL)
        .arg("demo")
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("fpl runs");
    let stdout = expect_status(&out, 0);
    for expected in [
        "vm.qcow2: in use by qemu-storage-da (pid ",
        "uses consistent read, write, resize; does not share write, resize",
        "vm.qcow2: exclusive would be refused: Failed to get \"write\" lock (held by qemu-storage-da, pid ",
        "vm.qcow2: read-shared would be granted",
        "vm.qcow2: free",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing in {stdout}");
    }
    let folder = stdout
        .lines()
        .find_map(|l| l.strip_prefix("$ cd "))
        .expect("the demo says where it works");
    assert!(folder.starts_with(s(dir.path())), "{folder}");
    assert!(!Path::new(folder).exists(), "the demo left {folder} behind");
}

#[test]
fn demo_cleans_up_when_interrupted() {
    qemu("qemu-storage-daemon");
    let dir = TempDir::new("demo-interrupted");
    let mut demo = Running::spawn(
        Command::new(FPL)
            .arg("demo")
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // Once the daemon holds the image, stop the demo. It looks at signals
    // between steps, so it may also have finished first: either way nothing
    // may be left behind.
    let mut lines = demo.stdout_lines();
    let status = lines.find("in use by qemu-storage-da (pid ");
    let daemon: i32 = status
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .expect("the status line names the daemon's pid");
    let _daemon = Orphan(daemon);
    demo.signal(Signal::SIGTERM);
    let code = demo.wait().code();
    assert!(code == Some(128 + 15) || code == Some(0), "{code:?}");
    assert!(!Path::new(&format!("/proc/{daemon}")).exists());
    assert_eq!(fs::read_dir(dir.path()).map(Iterator::count).ok(), Some(0));
}

#[test]
fn demo_says_what_to_install_without_qemu() {
    let dir = TempDir::new("demo-no-qemu");
    let out = Command::new(FPL)
        .arg("demo")
        .env("PATH", dir.path())
        .env("TMPDIR", dir.path())
        .output()
        .expect("fpl runs");
    expect_status(&out, 2);
    assert!(text(&out.stderr).contains("install qemu-utils"));
    assert_eq!(fs::read_dir(dir.path()).map(Iterator::count).ok(), Some(0));
}

#[test]
fn every_command_has_help_and_usage_errors_exit_2() {
    for command in ["status", "check", "hold", "demo"] {
        let out = expect_status(&fpl(&[command, "--help"]), 0);
        assert!(out.contains(&format!("Usage: fpl {command}")), "{out}");
    }
    assert!(expect_status(&fpl(&["--help"]), 0).contains("Commands:"));
    for args in [
        &["status"][..],
        &["check", "x.img"],
        &["check", "--mode", "read", "--share", "all", "x.img"],
        &["check", "--perm", "write", "x.img"],
        &["frobnicate"],
    ] {
        let out = fpl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn exit_status_of_a_killed_hold_is_not_success() {
    // Guards the guard: a hold killed by a signal it does not catch.
    let dir = TempDir::new("hold-killed");
    let image = dir.raw("a.raw");
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--mode", "read", s(&image)])
            .stdout(Stdio::piped()),
    );
    hold.stdout_lines().find("holding");
    hold.signal(Signal::SIGKILL);
    assert_eq!(hold.wait().signal(), Some(libc::SIGKILL));
    assert!(held(&image).perm.is_empty());
}

// ---------------------------------------------------------------- chains

/// `qemu-img create -f qcow2 -b BACKING -F FORMAT dir/NAME`: BACKING is
/// written into the header as given (relative to the overlay's folder).
fn overlay(dir: &TempDir, name: &str, backing: &str, format: &str) -> PathBuf {
    let path = dir.path().join(name);
    let out = Command::new(qemu("qemu-img"))
        .args(["create", "-q", "-f", "qcow2", "-b", backing, "-F", format])
        .arg(&path)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        text(&out.stderr)
    );
    path
}

/// Bits of a permission set, as CHAINS.md writes them: RWX = 100,101,103
/// + 201,203; RP = 100 + 201,203; R = 100.
fn bits(perm: u32, unshared: u32) -> (PermSet, PermSet) {
    (
        PermSet::from_bits(perm).expect("valid bits"),
        PermSet::from_bits(unshared).expect("valid bits"),
    )
}
const RWX: (u32, u32) = (0x0b, 0x0a);
const RP: (u32, u32) = (0x01, 0x0a);
const R: (u32, u32) = (0x01, 0x00);

/// `qemu-io IMAGE` (format probed, read-write) run in `cwd` and reading
/// commands from a pipe: it holds every file of the image's chain until
/// the pipe closes. Returns once each of `expect` holds its bytes.
fn qemu_io_chain(image: &Path, cwd: &Path, expect: &[(&Path, (u32, u32))]) -> Running {
    let running = Running::spawn(
        Command::new(qemu("qemu-io"))
            .arg(image)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    for (file, (perm, unshared)) in expect {
        wait_until(&format!("qemu-io to lock {}", file.display()), || {
            let held = held(&cwd.join(file));
            (held.perm, held.unshared) == bits(*perm, *unshared)
        });
    }
    running
}

/// `fpl ARGS` run in `cwd`.
fn fpl_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(FPL)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("fpl runs")
}

/// `fpl status --chain --json ARGS`, parsed: one array element per image.
fn chain_json(cwd: &Path, args: &[&str], code: i32) -> Vec<Value> {
    let mut all = vec!["status", "--chain", "--json"];
    all.extend_from_slice(args);
    let json = expect_status(&fpl_in(cwd, &all), code);
    let value: Value = serde_json::from_str(&json).expect("status --chain --json prints JSON");
    value.as_array().expect("an array").clone()
}

/// Asserts that a member object describes `path` held with `bytes` by one
/// descriptor of process `pid` that really holds locks on that inode, and
/// that the bytes are those `/proc/locks` shows.
fn assert_member_held(member: &Value, path: &Path, bytes: (u32, u32), pid: i32) {
    let (perm, unshared) = bits(bytes.0, bytes.1);
    let kernel = proc_locks(path);
    assert_eq!((kernel.perm, kernel.unshared), (perm, unshared), "{member}");
    assert_eq!(names(&member["perm"]), perm, "{member}");
    assert_eq!(names(&member["unshared"]), unshared, "{member}");
    let holders = member["holders"].as_array().expect("holders are listed");
    assert_eq!(holders.len(), 1, "{member}");
    let holder = &holders[0];
    assert_eq!(holder["pid"], pid, "{member}");
    assert_eq!(holder["name"], "qemu-io", "{member}");
    assert_eq!(names(&holder["perm"]), perm, "{member}");
    assert_eq!(names(&holder["unshared"]), unshared, "{member}");
    let fd = holder["fd"].as_i64().expect("fd is a number");
    let fdinfo = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .expect("the holder's fdinfo is readable");
    let ino = fs::metadata(path).expect("the member exists").ino();
    assert!(lock_lines(&fdinfo).any(|l| l.ino == ino), "{fdinfo}");
    // `access` is the open mode of that descriptor, from the same fdinfo.
    let mode = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .expect("fdinfo has flags")
        & 3;
    let want: &[&str] = match mode {
        0 => &["read"],
        1 => &["write"],
        _ => &["read", "write"],
    };
    assert_eq!(holder["access"], serde_json::json!(want), "{member}");
}

/// The lines of `out` from the one equal to `first`, `n` of them.
fn lines_from(out: &str, first: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == first)
        .unwrap_or_else(|| panic!("no line {first:?} in:\n{out}"));
    lines[start..(start + n).min(lines.len())]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[test]
fn status_chain_names_the_holder_on_every_member() {
    let dir = TempDir::new("chain-status");
    let base = dir.raw("base.raw");
    let mid = overlay(&dir, "mid.qcow2", "base.raw", "raw");
    let top = overlay(&dir, "top.qcow2", "mid.qcow2", "qcow2");
    // CHAINS.md §1: qemu-io read-write holds RWX on top, RP on the qcow2
    // mid, R on the raw base (a raw backing file passes write sharing on).
    let qemu_io = qemu_io_chain(&top, dir.path(), &[(&top, RWX), (&mid, RP), (&base, R)]);
    let pid = qemu_io.pid();

    let out = expect_status(&fpl(&["status", "--chain", s(&top)]), 0);
    let who = format!("in use by qemu-io (pid {pid}, fd ");
    let tree = lines_from(&out, &format!("{}: qcow2 image", s(&top)), 6);
    assert_eq!(tree.len(), 6, "{out}");
    assert!(tree[1].starts_with(&format!("  {who}")), "{out}");
    assert!(
        tree[1].ends_with("uses consistent read, write, resize; does not share write, resize"),
        "{out}"
    );
    assert_eq!(
        tree[2],
        format!("  {}: qcow2 backing file, depth 1", s(&mid))
    );
    assert!(tree[3].starts_with(&format!("    {who}")), "{out}");
    assert!(
        tree[3].ends_with("uses consistent read; does not share write, resize"),
        "{out}"
    );
    assert_eq!(
        tree[4],
        format!("    {}: raw backing file, depth 2", s(&base))
    );
    assert!(tree[5].starts_with(&format!("      {who}")), "{out}");
    assert!(
        tree[5].ends_with("uses consistent read; shares everything"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 6, "{out}");

    let images = chain_json(dir.path(), &[s(&top)], 0);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["path"], s(&top));
    let members = images[0]["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 3, "{}", images[0]);
    for (member, path, role, format, depth, bytes) in [
        (&members[0], &top, "image", "qcow2", 0, RWX),
        (&members[1], &mid, "backing", "qcow2", 1, RP),
        (&members[2], &base, "backing", "raw", 2, R),
    ] {
        assert_eq!(member["path"], s(path), "{member}");
        assert_eq!(member["role"], role, "{member}");
        assert_eq!(member["format"], format, "{member}");
        assert_eq!(member["depth"], depth, "{member}");
        assert_member_held(member, path, bytes, pid);
    }
    // Only the image itself is named: no overlay of the top, and the chain's
    // own overlays on the others.
    assert_eq!(members[0]["overlays"], serde_json::json!([]));
    assert_eq!(
        members[2]["overlays"],
        serde_json::json!([{"path": s(&top), "role": "backing", "depth": 2}])
    );

    // Once qemu-io is gone, every member is free.
    let mut qemu_io = qemu_io;
    qemu_io.close_stdin();
    qemu_io.wait();
    let out = expect_status(&fpl(&["status", "--chain", "--no-holders", s(&top)]), 0);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim() == "free (no byte held; openers not looked for)")
            .count(),
        3,
        "{out}"
    );
}

#[test]
fn status_chain_over_a_pool_shows_who_uses_a_base() {
    let dir = TempDir::new("chain-pool");
    let base = dir.raw("base.raw");
    let a = overlay(&dir, "a.qcow2", "base.raw", "raw");
    let b = overlay(&dir, "b.qcow2", "base.raw", "raw");
    let qemu_io = qemu_io_chain(&a, dir.path(), &[(&a, RWX), (&base, R)]);
    let pid = qemu_io.pid();

    // As a shell expands pool/*: sorted.
    let pool = [s(&a), s(&b), s(&base)];
    let mut args = vec!["status", "--chain"];
    args.extend(pool);
    let out = expect_status(&fpl(&args), 0);
    let tree = lines_from(&out, &format!("{}: raw image", s(&base)), 4);
    assert!(
        tree[1].starts_with(&format!("  in use by qemu-io (pid {pid}, fd ")),
        "{out}"
    );
    assert!(
        tree[1].ends_with("uses consistent read; shares everything"),
        "{out}"
    );
    assert_eq!(tree[2], format!("  backing file of {} (depth 1)", s(&a)));
    assert_eq!(tree[3], format!("  backing file of {} (depth 1)", s(&b)));
    assert_eq!(tree.len(), 4, "{out}");
    // Under the overlays, the base is one line pointing at its own entry,
    // where its holders and overlays are said once.
    let tree = lines_from(&out, &format!("{}: qcow2 image", s(&b)), 3);
    assert_eq!(tree[1], "  free", "{out}");
    assert_eq!(
        tree[2],
        format!(
            "  {}: raw backing file, depth 1 (described under {})",
            s(&base),
            s(&base)
        )
    );
    assert_eq!(out.matches("in use by qemu-io").count(), 2, "{out}");
    // Without the base named, it is described under the first overlay.
    let out = expect_status(&fpl(&["status", "--chain", s(&a), s(&b)]), 0);
    let tree = lines_from(
        &out,
        &format!("  {}: raw backing file, depth 1", s(&base)),
        3,
    );
    assert!(
        tree[1].starts_with(&format!("    in use by qemu-io (pid {pid}, fd ")),
        "{out}"
    );
    assert_eq!(tree[2], format!("    backing file of {} (depth 1)", s(&b)));
    assert!(
        out.ends_with(&format!(
            "  {}: raw backing file, depth 1 (described under {})\n",
            s(&base),
            s(&a)
        )),
        "{out}"
    );

    let images = chain_json(dir.path(), &pool, 0);
    assert_eq!(images.len(), 3);
    let base_object = &images[2];
    assert_eq!(base_object["path"], s(&base));
    let members = base_object["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{base_object}");
    assert_eq!(members[0]["role"], "image");
    assert_member_held(&members[0], &base, R, pid);
    assert_eq!(
        members[0]["overlays"],
        serde_json::json!([
            {"path": s(&a), "role": "backing", "depth": 1},
            {"path": s(&b), "role": "backing", "depth": 1},
        ])
    );
    let b_members = images[1]["members"].as_array().expect("members");
    assert_eq!(b_members[0]["holders"], serde_json::json!([]));
    assert_eq!(b_members[0]["perm"], serde_json::json!([]));
    // The base under b: its bytes, and where its holders are said.
    assert_eq!(b_members[1]["described_in"], s(&base));
    assert_eq!(names(&b_members[1]["perm"]), bits(R.0, R.1).0);
    assert!(b_members[1].get("holders").is_none(), "{}", b_members[1]);

    // Files are compared by inode: the base named through a symbolic link
    // in another folder is still the base of both overlays.
    let elsewhere = TempDir::new("chain-pool-link");
    let link = elsewhere.path().join("link.raw");
    std::os::unix::fs::symlink(&base, &link).expect("symlink");
    let images = chain_json(dir.path(), &[s(&a), s(&b), s(&link)], 0);
    assert_eq!(
        images[2]["members"][0]["overlays"],
        serde_json::json!([
            {"path": s(&a), "role": "backing", "depth": 1},
            {"path": s(&b), "role": "backing", "depth": 1},
        ])
    );
    assert_eq!(images[2]["members"][0]["holders"][0]["pid"], pid);
}

#[test]
fn status_chain_follows_a_data_file_and_lists_a_remote_member() {
    let dir = TempDir::new("chain-data");
    // A relative data file name is relative to the working directory (of
    // qemu-img, qemu-io and fpl alike): all run in the folder.
    let out = Command::new(qemu("qemu-img"))
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .args(["data_file=d.raw,data_file_raw=on", "x.qcow2", "64M"])
        .current_dir(dir.path())
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let data = dir.path().join("d.raw");
    // CHAINS.md §2: under qemu-io the data file holds 100, 101, 103 and 203.
    let qemu_io = qemu_io_chain(
        Path::new("x.qcow2"),
        dir.path(),
        &[
            (Path::new("x.qcow2"), RWX),
            (Path::new("d.raw"), (0x0b, 0x08)),
        ],
    );
    let out = Command::new(qemu("qemu-img"))
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
        .arg(format!("nbd+unix:///exp?socket={}/nbd.sock", s(dir.path())))
        .args(["r.qcow2", "64M"])
        .current_dir(dir.path())
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let images = chain_json(dir.path(), &["x.qcow2", "r.qcow2"], 0);
    let members = images[0]["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{}", images[0]);
    assert_eq!(members[1]["path"], "d.raw");
    assert_eq!(members[1]["role"], "data-file");
    assert_eq!(members[1]["format"], "raw");
    assert_eq!(members[1]["depth"], 0);
    assert_member_held(&members[1], &data, (0x0b, 0x08), qemu_io.pid());
    assert_eq!(
        members[1]["overlays"],
        serde_json::json!([{"path": "x.qcow2", "role": "data-file", "depth": 0}])
    );
    // The remote backing file is listed, with nothing fpl could only have
    // learnt by opening it.
    let remote = &images[1]["members"][1];
    assert_eq!(remote["format"], "remote", "{remote}");
    assert_eq!(remote["role"], "backing", "{remote}");
    assert_eq!(remote["depth"], 1, "{remote}");
    assert!(remote.get("holders").is_none(), "{remote}");
    assert!(remote.get("perm").is_none(), "{remote}");

    let out = expect_status(&fpl_in(dir.path(), &["status", "--chain", "r.qcow2"]), 0);
    assert!(
        out.contains(&format!(
            "  nbd+unix:///exp?socket={}/nbd.sock: remote backing file, depth 1\n    not opened",
            s(dir.path())
        )),
        "{out}"
    );
}

#[test]
fn status_chain_reports_what_stops_resolution() {
    let dir = TempDir::new("chain-errors");
    dir.raw("base.raw");
    let orphan = overlay(&dir, "orphan.qcow2", "base.raw", "raw");
    fs::rename(dir.path().join("base.raw"), dir.path().join("moved.raw")).expect("rename");
    let ok = overlay(&dir, "ok.qcow2", "moved.raw", "raw");
    // A loop, made with an unsafe rebase as a careless user would.
    let x = overlay(&dir, "x.qcow2", "moved.raw", "raw");
    let y = overlay(&dir, "y.qcow2", "x.qcow2", "qcow2");
    let rebase = Command::new(qemu("qemu-img"))
        .args(["rebase", "-u", "-F", "qcow2", "-b", "y.qcow2"])
        .arg(&x)
        .output()
        .expect("qemu-img runs");
    assert!(rebase.status.success(), "{}", text(&rebase.stderr));
    let vmdk = dir.path().join("v.vmdk");
    let out = Command::new(qemu("qemu-img"))
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&vmdk)
        .arg("1M")
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = fpl(&["status", "--chain", s(&orphan), s(&ok), s(&y), s(&vmdk)]);
    let stdout = expect_status(&out, 2);
    let stderr = text(&out.stderr);
    // QEMU's wording (qemu-io: "can't open device ...: Could not open
    // backing file: Could not open '.../base.raw': No such file or directory").
    assert!(
        stderr.contains(&format!(
            "fpl: {}: Could not open backing file: Could not open '{}': No such file or directory",
            s(&orphan),
            s(&dir.path().join("base.raw"))
        )),
        "{stderr}"
    );
    assert!(stderr.contains("infinite loop"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "fpl: Could not open '{}': it is a vmdk image",
            s(&vmdk)
        )),
        "{stderr}"
    );
    // No advice about locks: resolving takes none.
    assert!(!stderr.contains("byte-range locks"), "{stderr}");
    // The image that resolves is still shown.
    assert!(
        stdout.contains(&format!("{}: qcow2 image\n  free\n", s(&ok))),
        "{stdout}"
    );

    let images = chain_json(dir.path(), &[s(&orphan), s(&ok), s(&y), s(&vmdk)], 2);
    assert_eq!(images[0]["errno"], libc::ENOENT, "{}", images[0]);
    assert!(images[1].get("members").is_some(), "{}", images[1]);
    assert_eq!(images[2]["errno"], libc::ELOOP, "{}", images[2]);
    assert_eq!(images[3]["errno"], libc::ENOTSUP, "{}", images[3]);
    for object in [&images[0], &images[2], &images[3]] {
        assert!(object["error"].is_string(), "{object}");
        assert!(object.get("members").is_none(), "{object}");
    }
}

/// `base.raw <- mid.qcow2 <- top.qcow2` in `dir`.
fn chain_of_three(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.raw("base.raw");
    let mid = overlay(dir, "mid.qcow2", "base.raw", "raw");
    let top = overlay(dir, "top.qcow2", "mid.qcow2", "qcow2");
    (base, mid, top)
}

/// `qemu-io -f raw -c "write 0 512" IMAGE`: a QEMU writer.
fn qemu_write(image: &Path) -> Output {
    Command::new(qemu("qemu-io"))
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .expect("qemu-io runs")
}

#[test]
fn check_chain_names_the_member_in_conflict() {
    let dir = TempDir::new("check-chain");
    let (base, mid, top) = chain_of_three(&dir);
    // A writer of the base: QEMU would refuse to read the chain now (a
    // backing file under a user that does not share write is protected).
    let qemu_io = qemu_io_holding(&base);

    // The image alone would be granted; its chain is not.
    expect_status(&fpl(&["check", "--mode", "read", s(&top)]), 0);
    let out = fpl(&["check", "--chain", "--mode", "read", s(&top)]);
    let stdout = expect_status(&out, 1);
    assert_eq!(
        stdout,
        format!(
            "{}: read would be refused on {}: Failed to get shared \"write\" lock \
             (held by qemu-io, pid {})\nIs another process using the image [{}]?\n",
            s(&top),
            s(&base),
            qemu_io.pid(),
            s(&base)
        )
    );
    // QEMU agrees: qemu-img convert reads the chain as fpl's read does
    // (CHAINS.md §1: RP on every member), and is refused on the base with
    // the same message.
    let copy = dir.path().join("copy.raw");
    let qemu = Command::new(qemu("qemu-img"))
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&top)
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .expect("qemu-img runs");
    assert!(!qemu.status.success());
    assert!(
        text(&qemu.stderr).contains(&format!(
            "Failed to get shared \"write\" lock\nIs another process using the image [{}]?",
            s(&base)
        )),
        "{}",
        text(&qemu.stderr)
    );
    // A read that shares everything (qemu-img -U) is granted on the chain.
    let stdout = expect_status(
        &fpl(&["check", "--chain", "--mode", "read-shared", s(&top)]),
        0,
    );
    assert_eq!(
        stdout,
        format!("{}: read-shared would be granted\n", s(&top))
    );

    let json = expect_status(
        &fpl(&["check", "--chain", "--json", "--mode", "read", s(&top)]),
        1,
    );
    let value: Value = serde_json::from_str(&json).expect("check --json prints JSON");
    let refused = &value[0];
    assert_eq!(refused["path"], s(&top), "{json}");
    assert_eq!(refused["ok"], false, "{json}");
    assert_eq!(refused["conflict"]["member"], s(&base), "{json}");
    assert_eq!(refused["conflict"]["byte"], 101, "{json}");
    assert_eq!(
        refused["conflict"]["holder"]["pid"],
        qemu_io.pid(),
        "{json}"
    );

    // check takes nothing: the members hold only what qemu-io holds.
    assert!(proc_locks(&top).is_empty() && proc_locks(&mid).is_empty());
    assert_eq!(proc_locks(&base).perm.bits(), 0x03);
    assert!(proc_locks(&base).unshared.is_empty());

    // An unresolvable chain is an error, not a refusal.
    fs::rename(&mid, dir.path().join("moved.qcow2")).expect("rename");
    let out = fpl(&["check", "--chain", "--mode", "read", s(&top)]);
    expect_status(&out, 2);
    assert!(
        text(&out.stderr).contains(&format!(
            "Could not open backing file: Could not open '{}': No such file or directory",
            s(&mid)
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hold_chain_locks_every_member_and_keeps_qemu_writers_off_the_base() {
    let dir = TempDir::new("hold-chain");
    let (base, mid, top) = chain_of_three(&dir);
    let other = overlay(&dir, "other.qcow2", "base.raw", "raw");
    // Two overlays of one base held together: the base is only read by
    // each, so they do not conflict.
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--chain", "--mode", "write", s(&top), s(&other)])
            .stdout(Stdio::piped()),
    );
    let line = hold.stdout_lines().find("holding");
    assert!(
        line.contains(&format!(
            "holding {} and 2 files of its chain, {} and 1 file of its chain (write)",
            s(&top),
            s(&other)
        )),
        "{line}"
    );

    // As QEMU's own VM disk: the overlays read-write, the backing files
    // read and protected from writers and resizers (strict mode adds 202).
    let rw = bits(0x0b, 0x0e);
    let protected = bits(0x01, 0x0e);
    for (path, bytes) in [
        (&top, rw),
        (&other, rw),
        (&mid, protected),
        (&base, protected),
    ] {
        let kernel = proc_locks(path);
        assert_eq!((kernel.perm, kernel.unshared), bytes, "{}", path.display());
    }
    let images = chain_json(dir.path(), &[s(&top)], 0);
    for member in images[0]["members"].as_array().expect("members") {
        let holders = member["holders"].as_array().expect("holders");
        assert!(holders.iter().all(|h| h["pid"] == hold.pid()), "{member}");
        assert!(!holders.is_empty(), "{member}");
    }
    let write = qemu_write(&base);
    assert!(
        !write.status.success(),
        "QEMU wrote the base under a held chain"
    );
    assert!(
        text(&write.stderr).contains("Failed to get \"write\" lock"),
        "{}",
        text(&write.stderr)
    );

    hold.signal(Signal::SIGTERM);
    assert_eq!(hold.wait().code(), Some(0));
    for path in [&top, &other, &mid, &base] {
        assert!(proc_locks(path).is_empty(), "{} still held", path.display());
    }
    assert!(qemu_write(&base).status.success());
}

#[test]
fn hold_chain_takes_every_member_or_none() {
    let dir = TempDir::new("hold-chain-none");
    let (base, mid, top) = chain_of_three(&dir);
    let free_base = dir.raw("free-base.raw");
    let free = overlay(&dir, "free.qcow2", "free-base.raw", "raw");
    let marker = dir.path().join("ran");
    let qemu_io = qemu_io_holding(&base);

    // The free image's chain is taken first, then the conflict on the
    // third file of the second image releases everything.
    let out = fpl(&[
        "hold",
        "--chain",
        "--mode",
        "read",
        s(&free),
        s(&top),
        "--",
        "touch",
        s(&marker),
    ]);
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert_eq!(
        err,
        format!(
            "fpl: {}: cannot take read on {}: Failed to get shared \"write\" lock \
             (held by qemu-io, pid {})\nIs another process using the image [{}]?\n",
            s(&top),
            s(&base),
            qemu_io.pid(),
            s(&base)
        )
    );
    assert!(!marker.exists(), "the command ran without the locks");
    for path in [&free, &free_base, &top, &mid] {
        assert!(proc_locks(path).is_empty(), "{} left held", path.display());
    }
    // The base holds qemu-io's bytes only.
    let kernel = proc_locks(&base);
    assert_eq!((kernel.perm.bits(), kernel.unshared.bits()), (0x03, 0));
    let images = chain_json(dir.path(), &[s(&top)], 0);
    let base_holders = &images[0]["members"][2]["holders"];
    assert_eq!(
        base_holders.as_array().map(Vec::len),
        Some(1),
        "{base_holders}"
    );
    assert_eq!(base_holders[0]["pid"], qemu_io.pid());

    // An image whose chain cannot be resolved: fpl's own error, 125.
    fs::remove_file(&free_base).expect("remove");
    let out = fpl(&["hold", "--chain", "--mode", "read", s(&free), "--", "true"]);
    expect_status(&out, 125);
    assert!(
        text(&out.stderr).contains(&format!(
            "Could not open backing file: Could not open '{}': No such file or directory",
            s(&free_base)
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(proc_locks(&free).is_empty());
}

#[test]
fn hold_chain_tells_a_conflict_with_itself_and_does_not_wait_for_it() {
    let dir = TempDir::new("hold-chain-self");
    let (base, mid, top) = chain_of_three(&dir);
    let marker = dir.path().join("ran");
    // The overlay's chain protects its base from writers: writing the base
    // as well can never be granted, however long fpl waits.
    let out = fpl(&[
        "hold",
        "--chain",
        "--wait",
        "600",
        "--mode",
        "write",
        s(&top),
        s(&base),
        "--",
        "touch",
        s(&marker),
    ]);
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "fpl: {}: cannot take write: Failed to get \"write\" lock\n",
            s(&base)
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "fpl: note: {} is a backing file of {}, named before: \
             this hold would conflict with itself",
            s(&base),
            s(&top)
        )),
        "{err}"
    );
    assert!(!err.contains("waiting"), "{err}");
    assert!(!marker.exists(), "the command ran without the locks");
    for path in [&top, &mid, &base] {
        assert!(proc_locks(path).is_empty(), "{} left held", path.display());
    }
    // Reading the base besides its overlay is no conflict.
    let out = fpl(&[
        "hold",
        "--chain",
        "--mode",
        "read",
        s(&top),
        s(&base),
        "--",
        "touch",
        s(&marker),
    ]);
    expect_status(&out, 0);
    assert!(marker.exists());
}

#[test]
fn hold_chain_waits_for_a_writer_of_the_base_to_quit() {
    let dir = TempDir::new("hold-chain-wait");
    let (base, _mid, top) = chain_of_three(&dir);
    let mut qemu_io = qemu_io_holding(&base);
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--chain", "--wait", "600", "--mode", "read"])
            .arg(&top)
            .args(["--", "qemu-img", "convert", "-O", "raw"])
            .arg(&top)
            .arg(dir.path().join("copy.raw"))
            .stderr(Stdio::piped()),
    );
    // fpl says once which file it waits for; only then does QEMU quit.
    let line = hold.stderr_lines().find("waiting");
    assert_eq!(
        line,
        format!(
            "fpl: {}: {} in use (Failed to get shared \"write\" lock, held by qemu-io (pid {})); waiting",
            s(&top),
            s(&base),
            qemu_io.pid()
        )
    );
    assert!(hold.child.try_wait().expect("waitpid works").is_none());

    qemu_io.close_stdin();
    assert_eq!(qemu_io.wait().code(), Some(0));
    // The command, qemu-img convert, reads the chain under fpl's read
    // locks: they admit it (CHAINS.md §1: it takes RP everywhere).
    assert_eq!(hold.wait().code(), Some(0));
    assert!(dir.path().join("copy.raw").exists());
    assert!(proc_locks(&base).is_empty());
}

// ---------------------------------------------------------------- openers

/// `qemu-io [-r] --image-opts driver=raw,...,file.locking=off` reading
/// commands from a pipe: it has the image open (read-write, or read-only
/// with `read_only`) and takes none of its bytes, as QEMU with
/// `locking=off` does (CHAINS.md §5). Returns once its descriptor of the
/// image shows in /proc.
fn qemu_io_unlocked(image: &Path, read_only: bool) -> Running {
    let mut command = Command::new(qemu("qemu-io"));
    if read_only {
        command.arg("-r");
    }
    let running = Running::spawn(
        command
            .arg("--image-opts")
            .arg(format!(
                "driver=raw,file.driver=file,file.filename={},file.locking=off",
                image.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = running.pid();
    wait_until(&format!("qemu-io to open {}", image.display()), || {
        open_fd(pid, image).is_some()
    });
    running
}

/// The descriptor of process `pid` that has `image` open, read from
/// /proc/PID/fd without libfpl; checked to hold no lock on it.
fn open_fd(pid: i32, image: &Path) -> Option<i32> {
    let want = fs::metadata(image).expect("the image exists");
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if (meta.dev(), meta.ino()) == (want.dev(), want.ino()) {
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let fdinfo = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            assert!(
                lock_lines(&fdinfo).all(|l| l.ino != want.ino()),
                "qemu-io with locking=off locks its image:\n{fdinfo}"
            );
            return Some(fd);
        }
    }
    None
}

const OPENER_NOTE: &str = "note: a process that has the image open and holds no lock is how \
    QEMU with locking=off (Proxmox VE's default) or an incoming migration's destination \
    looks: the image is in use, not free, although QEMU's locks do not show it";

#[test]
fn status_shows_openers_without_locks_and_never_calls_their_image_free() {
    let dir = TempDir::new("status-openers");
    let rw = dir.raw("rw.raw");
    let ro = dir.raw("ro.raw");
    let locked = dir.raw("locked.raw");
    let free = dir.raw("free.raw");
    let writer = qemu_io_unlocked(&rw, false);
    let reader = qemu_io_unlocked(&ro, true);
    let holder = qemu_io_holding(&locked);
    let (w_fd, r_fd) = (
        open_fd(writer.pid(), &rw).expect("open"),
        open_fd(reader.pid(), &ro).expect("open"),
    );
    // QEMU's protocol sees nothing on either.
    assert!(held(&rw).perm.is_empty() && held(&ro).perm.is_empty());

    let out = expect_status(&fpl(&["status", s(&rw), s(&ro), s(&locked), s(&free)]), 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            format!(
                "{}: open read-write by qemu-io (pid {}, fd {w_fd}) without locks",
                s(&rw),
                writer.pid()
            ),
            format!("{}: {OPENER_NOTE}", s(&rw)),
            format!(
                "{}: open read-only by qemu-io (pid {}, fd {r_fd}) without locks",
                s(&ro),
                reader.pid()
            ),
        ],
        "{out}"
    );
    // The note comes once; a locking QEMU is a holder, never an opener.
    assert_eq!(out.matches("note:").count(), 1, "{out}");
    let locked_lines: Vec<&str> = lines[3..lines.len() - 1].to_vec();
    assert!(!locked_lines.is_empty(), "{out}");
    for line in &locked_lines {
        assert!(
            line.starts_with(&format!(
                "{}: in use by qemu-io (pid {}, fd ",
                s(&locked),
                holder.pid()
            )) && line.ends_with("uses consistent read, write; shares everything"),
            "{out}"
        );
    }
    assert_eq!(lines[lines.len() - 1], format!("{}: free", s(&free)));

    // JSON: openers are holders flagged no-locks, with their access.
    let json = expect_status(&fpl(&["status", "--json", s(&rw), s(&ro), s(&locked)]), 0);
    let value: Value = serde_json::from_str(&json).expect("JSON");
    let images = value.as_array().expect("an array");
    for (image, pid, fd, access) in [
        (
            &images[0],
            writer.pid(),
            w_fd,
            serde_json::json!(["read", "write"]),
        ),
        (&images[1], reader.pid(), r_fd, serde_json::json!(["read"])),
    ] {
        assert_eq!(image["perm"], serde_json::json!([]), "{image}");
        assert_eq!(image["unshared"], serde_json::json!([]), "{image}");
        assert_eq!(
            image["holders"],
            serde_json::json!([{
                "pid": pid, "fd": fd, "name": "qemu-io", "guest": null, "uid": my_uid(),
                "user": my_user(), "perm": [], "unshared": [],
                "flags": ["no-locks"], "access": access,
            }]),
            "{image}"
        );
    }
    let holders = images[2]["holders"].as_array().expect("holders");
    assert!(!holders.is_empty(), "{}", images[2]);
    for h in holders {
        assert_eq!(h["pid"], holder.pid(), "{h}");
        assert_eq!(h["flags"], serde_json::json!([]), "{h}");
        assert!(!names(&h["perm"]).is_empty(), "{h}");
    }

    // --no-holders looks in /proc for nobody, and says so.
    let out = expect_status(&fpl(&["status", "--no-holders", s(&rw)]), 0);
    assert_eq!(
        out.trim(),
        format!("{}: free (no byte held; openers not looked for)", s(&rw))
    );
    let json = expect_status(&fpl(&["status", "--json", "--no-holders", s(&rw)]), 0);
    let value: Value = serde_json::from_str(&json).expect("JSON");
    assert!(value[0].get("holders").is_none(), "{value}");

    // Once the opener is gone, the image is free.
    let mut writer = writer;
    writer.close_stdin();
    assert_eq!(writer.wait().code(), Some(0));
    let out = expect_status(&fpl(&["status", s(&rw)]), 0);
    assert_eq!(out.trim(), format!("{}: free", s(&rw)));
}

#[test]
fn status_chain_shows_an_opener_of_a_backing_file() {
    let dir = TempDir::new("chain-openers");
    let base = dir.raw("base.raw");
    overlay(&dir, "top.qcow2", "base.raw", "raw");
    let opener = qemu_io_unlocked(&base, false);
    let fd = open_fd(opener.pid(), &base).expect("open");
    let line = format!(
        "open read-write by qemu-io (pid {}, fd {fd}) without locks",
        opener.pid()
    );

    let out = expect_status(&fpl_in(dir.path(), &["status", "--chain", "top.qcow2"]), 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "top.qcow2: qcow2 image".to_owned(),
            "  free".to_owned(),
            "  base.raw: raw backing file, depth 1".to_owned(),
            format!("    {line}"),
            format!("    {OPENER_NOTE}"),
        ],
        "{out}"
    );

    // Over a pool the base is described once, under its own name; the
    // overlay's tree points there.
    let out = expect_status(
        &fpl_in(dir.path(), &["status", "--chain", "base.raw", "top.qcow2"]),
        0,
    );
    assert_eq!(out.matches(&line).count(), 1, "{out}");
    assert!(
        out.contains("  base.raw: raw backing file, depth 1 (described under base.raw)"),
        "{out}"
    );
    assert_eq!(out.matches("note:").count(), 1, "{out}");
    assert!(
        out.starts_with(&format!("base.raw: raw image\n  {line}\n")),
        "{out}"
    );

    let members = chain_json(dir.path(), &["top.qcow2"], 0);
    let members = members[0]["members"].as_array().expect("members");
    assert_eq!(members[0]["holders"], serde_json::json!([]));
    assert_eq!(
        members[1]["holders"],
        serde_json::json!([{
            "pid": opener.pid(), "fd": fd, "name": "qemu-io", "guest": null, "uid": my_uid(),
            "user": my_user(), "perm": [], "unshared": [],
            "flags": ["no-locks"], "access": ["read", "write"],
        }]),
        "{}",
        members[1]
    );
}

#[test]
fn check_and_hold_refuse_beside_an_opener_only_with_no_unlocked_openers() {
    let dir = TempDir::new("check-openers");
    let image = dir.raw("a.raw");
    let locked = dir.raw("locked.raw");
    let opener = qemu_io_unlocked(&image, false);
    let fd = open_fd(opener.pid(), &image).expect("open");
    let _holder = qemu_io_holding(&locked);
    let refusal = format!(
        "'{}' is open read-write by qemu-io (pid {}, fd {fd}) without locks: a QEMU with \
         locking=off, or an incoming migration's destination, uses an image this way",
        s(&image),
        opener.pid()
    );

    // The hazard: QEMU's protocol alone grants the image.
    let out = expect_status(&fpl(&["check", "--mode", "write", s(&image)]), 0);
    assert_eq!(out.trim(), format!("{}: write would be granted", s(&image)));
    let marker = dir.path().join("ran");
    let touch = ["--", "touch", s(&marker)];
    let mut args = vec!["hold", "--mode", "write", s(&image)];
    args.extend(touch);
    expect_status(&fpl(&args), 0);
    assert!(marker.exists());
    fs::remove_file(&marker).expect("rm");

    // Asked, it is refused like a conflict: check 1, hold 75.
    let out = expect_status(
        &fpl(&[
            "check",
            "--no-unlocked-openers",
            "--mode",
            "write",
            s(&image),
        ]),
        1,
    );
    assert!(
        out.starts_with(&format!("{}: write would be refused: {refusal}", s(&image))),
        "{out}"
    );
    let json = expect_status(
        &fpl(&[
            "check",
            "--json",
            "--no-unlocked-openers",
            "--mode",
            "read-shared",
            s(&image),
            s(&locked),
        ]),
        1,
    );
    let value: Value = serde_json::from_str(&json).expect("JSON");
    let refused = &value[0];
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["errno"], libc::EBUSY, "{refused}");
    assert!(refused.get("conflict").is_none(), "{refused}");
    assert_eq!(
        refused["opener"],
        serde_json::json!({"pid": opener.pid(), "fd": fd, "name": "qemu-io",
                           "access": ["read", "write"]}),
        "{refused}"
    );
    // A QEMU that locks is no opener: beside it read-shared is granted.
    assert_eq!(
        value[1],
        serde_json::json!({"path": s(&locked), "ok": true})
    );

    let mut args = vec![
        "hold",
        "--no-unlocked-openers",
        "--mode",
        "write",
        s(&image),
    ];
    args.extend(touch);
    let out = fpl(&args);
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("fpl: {}: cannot take write: {refusal}", s(&image))),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran beside the opener");
    assert!(proc_locks(&image).is_empty());
}

#[test]
fn check_and_hold_chain_refuse_beside_an_opener_of_any_member() {
    let dir = TempDir::new("chain-check-openers");
    let base = dir.raw("base.raw");
    overlay(&dir, "top.qcow2", "base.raw", "raw");
    let opener = qemu_io_unlocked(&base, false);
    let fd = open_fd(opener.pid(), &base).expect("open");
    let refusal = format!(
        "'base.raw' is open read-write by qemu-io (pid {}, fd {fd}) without locks",
        opener.pid()
    );
    let run = |args: &[&str], code: i32| expect_status(&fpl_in(dir.path(), args), code);

    // The top alone is nobody's; its chain is not.
    run(
        &[
            "check",
            "--no-unlocked-openers",
            "--mode",
            "read",
            "top.qcow2",
        ],
        0,
    );
    run(&["check", "--chain", "--mode", "read", "top.qcow2"], 0);
    let out = run(
        &[
            "check",
            "--chain",
            "--no-unlocked-openers",
            "--mode",
            "read",
            "top.qcow2",
        ],
        1,
    );
    assert!(
        out.starts_with(&format!("top.qcow2: read would be refused: {refusal}")),
        "{out}"
    );
    let json = run(
        &[
            "check",
            "--chain",
            "--json",
            "--no-unlocked-openers",
            "--mode",
            "read",
            "top.qcow2",
        ],
        1,
    );
    let value: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value[0]["opener"]["member"], "base.raw", "{value}");
    assert_eq!(value[0]["opener"]["pid"], opener.pid(), "{value}");

    let out = fpl_in(
        dir.path(),
        &[
            "hold",
            "--chain",
            "--no-unlocked-openers",
            "--mode",
            "read",
            "top.qcow2",
            "--",
            "true",
        ],
    );
    expect_status(&out, 75);
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("fpl: top.qcow2: cannot take read: {refusal}")),
        "{err}"
    );
    assert!(proc_locks(&base).is_empty() && proc_locks(&dir.path().join("top.qcow2")).is_empty());
    run(
        &[
            "hold",
            "--chain",
            "--mode",
            "read",
            "top.qcow2",
            "--",
            "true",
        ],
        0,
    );
}

#[test]
fn hold_wait_waits_for_an_opener_to_go_then_holds() {
    let dir = TempDir::new("hold-wait-openers");
    let image = dir.raw("a.raw");
    let mut opener = qemu_io_unlocked(&image, false);
    let fd = open_fd(opener.pid(), &image).expect("open");
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--wait", "600", "--no-unlocked-openers"])
            .args(["--mode", "write", s(&image)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdout = hold.stdout_lines();
    let line = hold.stderr_lines().find("waiting");
    assert_eq!(
        line,
        format!(
            "fpl: {}: open read-write by qemu-io (pid {}, fd {fd}) without locks; waiting",
            s(&image),
            opener.pid()
        )
    );
    assert!(hold.child.try_wait().expect("waitpid works").is_none());

    // The hand-over ends: the opener goes, fpl takes the image and holds it.
    opener.close_stdin();
    assert_eq!(opener.wait().code(), Some(0));
    let holding = stdout.find("fpl: holding");
    assert!(holding.contains(s(&image)), "{holding}");
    let kernel = proc_locks(&image);
    assert_eq!(
        kernel.perm,
        PermSet::from_iter([Perm::ConsistentRead, Perm::Write, Perm::Resize])
    );
    let refused = qemu_writer(&image);
    assert!(!refused.status.success(), "qemu-io opened a held image");
    hold.signal(Signal::SIGTERM);
    assert_eq!(hold.wait().code(), Some(0));
    assert!(proc_locks(&image).is_empty());
}

#[test]
fn status_lists_holders_and_openers_of_one_image_apart() {
    let dir = TempDir::new("status-both");
    let image = dir.raw("both.raw");
    let opener = qemu_io_unlocked(&image, false);
    let fd = open_fd(opener.pid(), &image).expect("open");
    // A QEMU that locks, beside it: the locks do not see the opener.
    let holder = qemu_io_holding(&image);

    let out = expect_status(&fpl(&["status", s(&image)]), 0);
    let lines: Vec<&str> = out.lines().collect();
    let opener_line = format!(
        "{}: open read-write by qemu-io (pid {}, fd {fd}) without locks",
        s(&image),
        opener.pid()
    );
    assert!(lines.contains(&opener_line.as_str()), "{out}");
    let held_lines = lines
        .iter()
        .filter(|l| {
            l.starts_with(&format!(
                "{}: in use by qemu-io (pid {}, fd ",
                s(&image),
                holder.pid()
            ))
        })
        .count();
    assert!(held_lines >= 1, "{out}");
    // The opener line, the note, the holder's lines: nothing else, and in
    // particular no bytes "held on another host or out of sight".
    assert_eq!(lines.len(), held_lines + 2, "{out}");
    assert!(
        lines.contains(&format!("{}: {OPENER_NOTE}", s(&image)).as_str()),
        "{out}"
    );

    // With --no-unlocked-openers, read-shared (which the holder allows)
    // is refused for the opener alone.
    expect_status(&fpl(&["check", "--mode", "read-shared", s(&image)]), 0);
    let out = expect_status(
        &fpl(&[
            "check",
            "--no-unlocked-openers",
            "--mode",
            "read-shared",
            s(&image),
        ]),
        1,
    );
    assert!(
        out.contains(&format!(
            "by qemu-io (pid {}, fd {fd}) without locks",
            opener.pid()
        )),
        "{out}"
    );
}

#[test]
fn hold_wait_says_again_when_a_holder_leaves_an_opener_in_its_place() {
    let dir = TempDir::new("hold-wait-handover");
    let image = dir.raw("a.raw");
    let mut opener = qemu_io_unlocked(&image, false);
    let fd = open_fd(opener.pid(), &image).expect("open");
    let mut holder = qemu_io_holding(&image);
    let mut hold = Running::spawn(
        Command::new(FPL)
            .args(["hold", "--wait", "600", "--no-unlocked-openers"])
            .args(["--mode", "write", s(&image), "--", "true"])
            .stderr(Stdio::piped()),
    );
    let mut stderr = hold.stderr_lines();
    let first = stderr.find("waiting");
    assert!(
        first.starts_with(&format!("fpl: {}: in use (", s(&image)))
            && first.ends_with(&format!("held by qemu-io (pid {})); waiting", holder.pid())),
        "{first}"
    );
    // The holder goes; the opener is still there: a second line says so.
    holder.close_stdin();
    assert_eq!(holder.wait().code(), Some(0));
    let second = stderr.find("waiting");
    assert_eq!(
        second,
        format!(
            "fpl: {}: open read-write by qemu-io (pid {}, fd {fd}) without locks; waiting",
            s(&image),
            opener.pid()
        )
    );
    assert!(hold.child.try_wait().expect("waitpid works").is_none());
    opener.close_stdin();
    assert_eq!(opener.wait().code(), Some(0));
    assert_eq!(hold.wait().code(), Some(0));
    assert!(stderr.seen.is_empty(), "{:?}", stderr.seen);
}

/// This process's uid, as `fpl status --json` reports a holder's.
fn my_uid() -> u32 {
    fs::metadata("/proc/self").expect("/proc/self").uid()
}

/// This process's user name (`id -un`).
fn my_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
