//! QEMU that uses an image without locks, against real QEMU 7.2 VMs
//! (qemu-system-x86_64 from scripts/fetch-qemu-7.2, TCG, no guest) and the
//! machine's qemu-storage-daemon 10.0: CHAINS.md §4 (live migration) and
//! §5 (`locking=off`).
//!
//! - `a_vm_with_locking_off_is_an_opener_and_refused_beside`: a VM whose
//!   `-blockdev driver=file` nodes say `locking=off` (chain base.raw <-
//!   top.qcow2, virtio-blk) holds no byte: `fpl::query` says free, the
//!   protocol grants write (the hazard), `query_with` openers lists the VM
//!   (pid, name, no locks, read-write on top, read-only on base), and
//!   `Lock`/`ChainLock` with `refuse_unlocked_openers` are refused with
//!   EBUSY naming it;
//! - `a_storage_daemon_node_with_locking_off_is_an_opener_and_refused_beside`:
//!   the same for a qemu-storage-daemon 10.0 qcow2 node on a
//!   `driver=file,locking=off` node (which with locking on holds RWX);
//! - `a_storage_daemon_file_node_with_no_parent_is_an_opener_with_locking_on`:
//!   a bare qemu-storage-daemon `driver=file` node, locking on, is one too;
//! - `the_migration_window_is_granted_by_the_protocol_refused_by_the_opener_rule`:
//!   a live migration between two 7.2 VMs on the same chain (`-incoming
//!   defer`, `late-block-activate` and `-S` on the destination; the source
//!   stopped before its switchover by `pause-before-switchover` so that
//!   the RAM-pass phase can be measured too): what each VM holds in each
//!   phase, measured against CHAINS.md §4, until the source quits; in the window
//!   (source inactivated, destination not yet activated) write is granted
//!   by the protocol alone and refused by the opener rule naming the
//!   destination; `cont` then activates the destination, which holds RWX;
//! - `a_libfpl_writer_in_the_window_leaves_neither_vm_running` and
//!   `a_qemu_io_in_the_window_leaves_neither_vm_running` (qemu-io read-write
//!   and `-r`): a third process that takes the image in the window makes
//!   the destination's `cont` fail with `Failed to get "write" lock`; both
//!   sides say `completed`, the destination stays `paused` (holding R on
//!   top), the source `postmigrate`, and the source's own `cont` fails too:
//!   neither VM runs until the third process leaves; then either the
//!   source resumes (and the destination can no longer activate) or a
//!   second `cont` activates the destination;
//! - `without_late_block_activate_the_destination_activates_when_the_state_is_loaded`:
//!   no window to speak of: the paused (-S) destination holds R / RWX as
//!   soon as migration completes and the protocol refuses a writer.
//!
//! Where QEMU measured otherwise than CHAINS.md §4, the expectation says so
//! (module `table`).
//!
//! Each test has its own folder, sockets and processes, so they run in
//! parallel; QEMU runs in that folder and is given relative names, so its
//! messages name the files as a user typed them.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cabi::{c_path, message, new_error};
use common::TempDir;
use fpl::ffi::{
    fpl_acquire, fpl_lock, fpl_release, FPL_FLAG_CHAIN, FPL_FLAG_NO_UNLOCKED_OPENERS,
    FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE,
};
use fpl::query::{query_with, Inspect};
use fpl::{ChainLock, Error, Lock, Mode, Options, Request};

// ---- tools -----------------------------------------------------------------

/// The folder of QEMU 7.2's binaries; fails saying what to install.
fn qemu72_bin() -> PathBuf {
    let dirs = common::qemu_dirs();
    let dir = dirs
        .split(':')
        .filter_map(|kv| kv.split_once('='))
        .find(|(v, _)| *v == "7.2")
        .map(|(_, d)| PathBuf::from(d))
        .expect("QEMU 7.2: scripts/fetch-qemu-7.2 unpacks it into target/qemu-7.2 (needs root)");
    for tool in ["qemu-system-x86_64", "qemu-img", "qemu-io"] {
        assert!(
            dir.join(tool).exists(),
            "{tool} of QEMU 7.2 is missing in {dir:?}: run scripts/fetch-qemu-7.2 (needs root; \
             never apt-get install a QEMU package, it replaces the machine's QEMU 10)"
        );
    }
    dir
}

/// The machine's qemu-storage-daemon 10.0; fails saying what to install.
fn qsd10() -> PathBuf {
    let p = PathBuf::from("/usr/bin/qemu-storage-daemon");
    let ok = Command::new(&p)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("version 10."))
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-storage-daemon 10 is missing in /usr/bin: it comes preinstalled with the \
         machine's qemu-utils 10.0.2 (never apt-get install a QEMU package over it)"
    );
    p
}

/// Runs QEMU 7.2's qemu-img in `dir`, to success (60 s at most).
fn img(dir: &Path, args: &[&str]) {
    let mut p = Proc::start(&qemu72_bin().join("qemu-img"), args, dir, "qemu-img");
    let status = p.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{} failed:\n{}", p.what, p.log());
}

/// base.raw <- top.qcow2 in `dir`.
fn make_chain(dir: &Path) {
    img(dir, &["create", "-q", "-f", "raw", "base.raw", "64M"]);
    img(
        dir,
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
}

// ---- processes ---------------------------------------------------------------

/// A process killed and reaped however the test ends. Its stdin is a pipe
/// (qemu-io waits on it), its stdout and stderr go to a log file.
struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Proc {
    /// Starts `program args` in `dir`, logging to `dir/TAG.log`.
    fn start(program: &Path, args: &[&str], dir: &Path, tag: &str) -> Proc {
        let log = dir.join(format!("{tag}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        Proc {
            child,
            log,
            what: format!("{} {}", program.display(), args.join(" ")),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its log) if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }

    /// Waits (at most `limit`) for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- QMP -------------------------------------------------------------------

/// A QMP connection; every read times out after 30 s.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    what: String,
    log: PathBuf,
}

impl Qmp {
    /// Connects to `sock` (retrying while `p` starts, at most 30 s) and
    /// leaves capabilities negotiation mode.
    fn connect(sock: &Path, p: &mut Proc) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) => {
                    p.assert_running();
                    assert!(Instant::now() < deadline, "QMP {sock:?}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        let writer = stream.try_clone().expect("socket clone");
        let mut qmp = Qmp {
            reader: std::io::BufReader::new(stream),
            writer,
            what: p.what.clone(),
            log: p.log.clone(),
        };
        let greeting = qmp.line();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", serde_json::json!({}))
            .unwrap_or_else(|e| panic!("qmp_capabilities: {e}"));
        qmp
    }

    fn line(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            other => {
                // Most likely the VM exited: let it finish its message.
                std::thread::sleep(Duration::from_millis(200));
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{}: QMP closed or silent ({other:?}):\n{log}", self.what)
            }
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command: its `return`, or its error's `desc`. Events are
    /// skipped: the tests ask for states instead.
    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use std::io::Write;
        let cmd = serde_json::json!({"execute": command, "arguments": arguments});
        if let Err(e) = writeln!(self.writer, "{cmd}") {
            // Most likely the VM exited: let it finish its message.
            std::thread::sleep(Duration::from_millis(200));
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{}: cannot send {command} ({e}):\n{log}", self.what);
        }
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e
                    .get("desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .to_owned());
            }
        }
    }

    /// Asks the VM to quit, without waiting for an answer; a VM whose QMP
    /// is already gone (it exited: the caller's wait_exit says how) is no
    /// error here. Seen once under a loaded host: the source of a completed
    /// migration closed its socket before `quit` was written.
    fn send_quit(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.writer, "{}", serde_json::json!({"execute": "quit"}));
    }

    fn ok(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.execute(command, arguments)
            .unwrap_or_else(|e| panic!("{}: {command}: {e}", self.what))
    }

    /// `query-status`'s status: running, paused, inmigrate, postmigrate...
    fn status(&mut self) -> String {
        let r = self.ok("query-status", serde_json::json!({}));
        r["status"].as_str().unwrap_or_default().to_owned()
    }

    /// `query-migrate`'s status (empty before any migration).
    fn migration(&mut self) -> String {
        let r = self.ok("query-migrate", serde_json::json!({}));
        r["status"].as_str().unwrap_or_default().to_owned()
    }
}

// ---- VMs -------------------------------------------------------------------

/// A 7.2 VM with no guest and a QMP socket in `dir`, named `tag`.
struct Vm {
    proc: Proc,
    qmp: Qmp,
}

impl Vm {
    fn start(dir: &Path, tag: &str, extra: &[&str]) -> Vm {
        let sock = format!("{tag}.qmp");
        let qmp_arg = format!("unix:{sock},server=on,wait=off");
        let mut args = vec![
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "64",
            "-qmp",
            &qmp_arg,
        ];
        args.extend_from_slice(extra);
        let bin = qemu72_bin().join("qemu-system-x86_64");
        let mut proc = Proc::start(&bin, &args, dir, tag);
        let qmp = Qmp::connect(&dir.join(sock), &mut proc);
        Vm { proc, qmp }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// A libvirt-style `-blockdev` chain base.raw <- top.qcow2 with a
/// virtio-blk device on top: file nodes auto-read-only, the backing format
/// node read-only; `file_opts` is added to both file nodes.
fn blockdev_chain(file_opts: &str) -> Vec<String> {
    vec![
        "-blockdev".to_owned(),
        format!("driver=file,node-name=file1,filename=base.raw,auto-read-only=on{file_opts}"),
        "-blockdev".to_owned(),
        "driver=raw,node-name=fmt1,file=file1,read-only=on".to_owned(),
        "-blockdev".to_owned(),
        format!("driver=file,node-name=file0,filename=top.qcow2,auto-read-only=on{file_opts}"),
        "-blockdev".to_owned(),
        "driver=qcow2,node-name=fmt0,file=file0,backing=fmt1".to_owned(),
        "-device".to_owned(),
        "virtio-blk-pci,drive=fmt0".to_owned(),
    ]
}

// ---- what libfpl sees --------------------------------------------------------

/// Every byte the protocol knows: libvirt's 0, 100-104, 200-204.
const ALL_BYTES: [u32; 11] = [0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204];

/// CHAINS.md's notation.
const R: &[u32] = &[100];
const RP: &[u32] = &[100, 201, 203];
const RWX: &[u32] = &[100, 101, 103, 201, 203];
const NONE: &[u32] = &[];

/// `/proc/PID/comm` of QEMU's system emulator (15 characters at most).
const VM_COMM: &str = "qemu-system-x86";
/// `/proc/PID/comm` of qemu-storage-daemon, cut the same way.
const QSD_COMM: &str = "qemu-storage-da";

fn bytes_of(held: fpl::Held) -> Vec<u32> {
    ALL_BYTES.into_iter().filter(|&b| held.covers(b)).collect()
}

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn refuse() -> Options {
    Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    }
}

/// What one process has of one file: the bytes it holds, and how it has it
/// open (`None`: not open).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Use {
    bytes: Vec<u32>,
    open: Option<&'static str>,
}

/// Not open at all.
const CLOSED: Use = Use {
    bytes: Vec::new(),
    open: None,
};

fn uses(bytes: &[u32], open: &'static str) -> Use {
    Use {
        bytes: bytes.to_vec(),
        open: Some(open),
    }
}

fn mode_name(a: fpl::fdinfo::Access) -> &'static str {
    match (a.read, a.write) {
        (true, true) => "rw",
        (false, true) => "w",
        _ => "r",
    }
}

/// What `pid` has of `path`, from `query_with` holders and openers. A
/// process with several descriptors: the union of their bytes, the widest
/// open mode.
fn use_of(path: &Path, pid: i32) -> Use {
    let st = query_with(
        path,
        Inspect {
            holders: true,
            openers: true,
        },
    )
    .unwrap_or_else(|e| panic!("query {path:?}: {e}"));
    let mine: Vec<_> = st.holders.iter().filter(|h| h.pid == pid).collect();
    if mine.is_empty() {
        return CLOSED;
    }
    let held = mine
        .iter()
        .fold(fpl::Held::default(), |acc, h| acc.union(h.held));
    let open = if mine.iter().any(|h| h.access.write) {
        "rw"
    } else {
        mode_name(mine[0].access)
    };
    Use {
        bytes: bytes_of(held),
        open: Some(open),
    }
}

/// The bytes anybody holds on `path`, by the protocol alone.
fn held(path: &Path) -> Vec<u32> {
    let st = fpl::query(path, false).unwrap_or_else(|e| panic!("query {path:?}: {e}"));
    bytes_of(st.held)
}

/// Waits (at most 30 s) until `pid` has `want` of each file; fails with
/// the table otherwise.
fn wait_uses(p: &mut Proc, want: &[(&Path, Use)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<Use> = want.iter().map(|(f, _)| use_of(f, p.pid())).collect();
        if want.iter().zip(&now).all(|((_, w), n)| w == n) {
            return;
        }
        p.assert_running();
        if Instant::now() > deadline {
            let table: Vec<String> = want
                .iter()
                .zip(&now)
                .map(|((f, w), n)| format!("{}: has {n:?}, expected {w:?}", f.display()))
                .collect();
            panic!("{what}:\n{}\nlog:\n{}", table.join("\n"), p.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes this process holds on `path` (nothing may be left after a refusal).
fn ours(path: &Path) -> Vec<u32> {
    use_of(path, std::process::id() as i32).bytes
}

/// Asserts that `e` is the opener rule's refusal of `member`, naming
/// process `pid` called `name`, opened `mode` ("read-write"/"read-only").
fn assert_opened(e: &Error, member: &Path, pid: i32, name: &str, mode: &str, what: &str) {
    assert_eq!(e.errno(), libc::EBUSY, "{what}: {e}");
    match e {
        Error::Opened { path, opener } => {
            assert_eq!(path, member, "{what}: {e}");
            assert_eq!((opener.pid, opener.name.as_str()), (pid, name), "{what}");
            assert!(
                opener.no_locks && opener.held.is_empty(),
                "{what}: {opener:?}"
            );
        }
        other => panic!("{what}: not Error::Opened: {other:?}"),
    }
    let text = e.to_string();
    let start = format!(
        "'{}' is open {mode} by {name} (pid {pid}, fd ",
        member.display()
    );
    assert!(
        text.starts_with(&start) && text.contains("without locks"),
        "{what}: {text}"
    );
}

/// The hazard and the rule, on a chain (or single image) whose top `top`
/// process `pid` (`name`) has open read-write without any lock: the
/// protocol alone sees a free image and grants write, the opener rule
/// refuses `Lock` and `ChainLock` with EBUSY naming it.
fn assert_unlocked_writer(top: &Path, files: &[&Path], name: &str, pid: i32, what: &str) {
    for f in files {
        let plain = fpl::query(f, true).expect("query");
        assert!(
            plain.held.is_empty() && plain.holders.is_empty(),
            "{what}: {f:?} looks free to the protocol: {plain:?}"
        );
    }
    // The hazard: a writer is granted next to a process writing the image.
    Lock::acquire(top, req(Mode::Write), Options::default())
        .unwrap_or_else(|e| panic!("{what}: the protocol alone grants write: {e}"))
        .release()
        .expect("release");
    ChainLock::acquire(top, req(Mode::Write), Options::default())
        .unwrap_or_else(|e| panic!("{what}: the protocol alone grants write on the chain: {e}"))
        .release()
        .expect("release");
    // The rule: refused, each mode, nothing left behind.
    for mode in [Mode::Read, Mode::Write] {
        let e = Lock::acquire(top, req(mode), refuse()).expect_err("refused beside the opener");
        assert_opened(&e, top, pid, name, "read-write", what);
        let e = ChainLock::acquire(top, req(mode), refuse()).expect_err("chain refused");
        assert_opened(&e, top, pid, name, "read-write", what);
        let e = fpl::check(top, req(mode), refuse()).expect_err("check refuses");
        assert_opened(&e, top, pid, name, "read-write", what);
    }
    for f in files {
        assert_eq!(
            ours(f),
            NONE,
            "{what}: {f:?}: nothing held after the refusals"
        );
    }
}

// ---- §5: locking=off ---------------------------------------------------------

#[test]
fn a_vm_with_locking_off_is_an_opener_and_refused_beside() {
    let dir = TempDir::new("mig-off-vm");
    let d = dir.path();
    make_chain(d);
    let (top, base) = (d.join("top.qcow2"), d.join("base.raw"));
    let chain = blockdev_chain(",locking=off");
    let mut args: Vec<&str> = chain.iter().map(String::as_str).collect();
    args.push("-S");
    let mut vm = Vm::start(d, "vm", &args);
    // QMP answers once every node is open.
    vm.qmp.ok("query-block", serde_json::json!({}));
    let what = "VM with file.locking=off";
    wait_uses(
        &mut vm.proc,
        &[(&top, uses(NONE, "rw")), (&base, uses(NONE, "r"))],
        what,
    );
    assert_unlocked_writer(&top, &[&top, &base], VM_COMM, vm.pid(), what);
    // The base alone: read-only, refused as such.
    let e = Lock::acquire(&base, req(Mode::Write), refuse()).expect_err("refused on base");
    assert_opened(&e, &base, vm.pid(), VM_COMM, "read-only", what);
    // Running changes nothing: still no byte.
    vm.qmp.ok("cont", serde_json::json!({}));
    assert_eq!(vm.qmp.status(), "running");
    assert_eq!((held(&top), held(&base)), (vec![], vec![]), "{what}");
    vm.proc.assert_running();
}

#[test]
fn a_storage_daemon_node_with_locking_off_is_an_opener_and_refused_beside() {
    let dir = TempDir::new("mig-off-qsd");
    let d = dir.path();
    img(d, &["create", "-q", "-f", "qcow2", "disk.qcow2", "64M"]);
    let disk = d.join("disk.qcow2");
    let what = "qemu-storage-daemon 10.0 qcow2 node on a file node with locking=off";
    let mut qsd = Proc::start(
        &qsd10(),
        &[
            "--blockdev",
            "driver=file,node-name=f0,filename=disk.qcow2,locking=off",
            "--blockdev",
            "driver=qcow2,node-name=q0,file=f0",
        ],
        d,
        "qsd",
    );
    wait_uses(&mut qsd, &[(&disk, uses(NONE, "rw"))], what);
    // comm is cut to 15 characters.
    assert_unlocked_writer(&disk, &[&disk], QSD_COMM, qsd.pid(), what);
    qsd.assert_running();
    drop(qsd);

    // The contrast: locking on, the same node holds RWX (CHAINS.md §1).
    let mut qsd = Proc::start(
        &qsd10(),
        &[
            "--blockdev",
            "driver=file,node-name=f0,filename=disk.qcow2",
            "--blockdev",
            "driver=qcow2,node-name=q0,file=f0",
        ],
        d,
        "qsd-locking",
    );
    wait_uses(
        &mut qsd,
        &[(&disk, uses(RWX, "rw"))],
        "the same with locking on",
    );
    let e = Lock::acquire(&disk, req(Mode::Write), Options::default()).expect_err("refused");
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
}

#[test]
fn a_storage_daemon_file_node_with_no_parent_is_an_opener_with_locking_on() {
    // CHAINS.md §5: a bare `driver=file` node is open read-write and takes
    // no byte until a parent (a format node, an export) asks for some.
    let dir = TempDir::new("mig-bare-qsd");
    let d = dir.path();
    img(d, &["create", "-q", "-f", "raw", "disk.raw", "64M"]);
    let disk = d.join("disk.raw");
    let what = "qemu-storage-daemon 10.0 bare file node, locking on";
    let mut qsd = Proc::start(
        &qsd10(),
        &["--blockdev", "driver=file,node-name=f0,filename=disk.raw"],
        d,
        "qsd",
    );
    wait_uses(&mut qsd, &[(&disk, uses(NONE, "rw"))], what);
    assert_unlocked_writer(&disk, &[&disk], QSD_COMM, qsd.pid(), what);
    qsd.assert_running();
}

// ---- §4: live migration --------------------------------------------------------

/// CHAINS.md §4's table for base.raw <- top.qcow2, as (base, top) per VM.
/// Where QEMU 7.2 measured otherwise, the row says so.
mod table {
    use super::*;

    /// Before: the source runs the chain.
    pub fn source_before() -> [Use; 2] {
        [uses(RP, "r"), uses(RWX, "rw")]
    }

    /// The destination with `-incoming`: every file open read-only, no byte.
    pub fn destination_incoming() -> [Use; 2] {
        [uses(NONE, "r"), uses(NONE, "r")]
    }

    /// After the switchover the source is inactive: base open with no byte,
    /// top reopened read-only holding R. (CHAINS.md: "base none"; the file
    /// stays open, so libfpl lists the source as an opener of base.)
    pub fn source_inactive() -> [Use; 2] {
        [uses(NONE, "r"), uses(R, "r")]
    }

    /// The destination after a `cont` that failed to activate (a third
    /// process took top in the window): top keeps R, base nothing. Not in
    /// CHAINS.md, which says only that the destination stays paused:
    /// QEMU 7.2 leaves the consistent-read byte it took before the write
    /// test failed, so the destination is no longer an opener of top.
    pub fn destination_failed() -> [Use; 2] {
        [uses(NONE, "r"), uses(R, "r")]
    }

    /// Without late-block-activate, the destination activates once the
    /// state is loaded, paused by -S. CHAINS.md: "base R while paused".
    pub fn destination_paused_active() -> [Use; 2] {
        [uses(R, "r"), uses(RWX, "rw")]
    }

    /// The destination after `cont` (late-block-activate): RP / RWX.
    pub fn destination_active() -> [Use; 2] {
        [uses(RP, "r"), uses(RWX, "rw")]
    }
}

/// Two 7.2 VMs on the same chain in one folder: the source running it, the
/// destination started with `-S -incoming defer` and `late-block-activate`.
struct Migration {
    src: Vm,
    dst: Vm,
    /// Last: removed after both VMs are killed.
    dir: TempDir,
}

impl Migration {
    fn start(tag: &str) -> Migration {
        Migration::start_with(tag, true)
    }

    /// `late`: set `late-block-activate` on the destination.
    fn start_with(tag: &str, late: bool) -> Migration {
        let dir = TempDir::new(tag);
        let d = dir.path().to_path_buf();
        make_chain(&d);
        let chain = blockdev_chain("");
        let args: Vec<&str> = chain.iter().map(String::as_str).collect();
        let mut src = Vm::start(&d, "src", &args);
        assert_eq!(src.qmp.status(), "running");
        let mut m_args = args.clone();
        m_args.extend_from_slice(&["-S", "-incoming", "defer"]);
        let mut dst = Vm::start(&d, "dst", &m_args);
        assert_eq!(dst.qmp.status(), "inmigrate");
        dst.qmp.ok(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [
                {"capability": "late-block-activate", "state": late}
            ]}),
        );
        let mut m = Migration { src, dst, dir };
        m.expect("before the migration", table::source_before());
        m.expect_dst(
            "the destination with -incoming",
            table::destination_incoming(),
        );
        m
    }

    fn base(&self) -> PathBuf {
        self.dir.path().join("base.raw")
    }

    fn top(&self) -> PathBuf {
        self.dir.path().join("top.qcow2")
    }

    /// Asserts what the source has of (base, top).
    fn expect(&mut self, phase: &str, want: [Use; 2]) {
        let (base, top) = (self.base(), self.top());
        let [b, t] = want;
        let what = format!("source, {phase}");
        wait_uses(&mut self.src.proc, &[(&base, b), (&top, t)], &what);
    }

    /// Asserts what the destination has of (base, top).
    fn expect_dst(&mut self, phase: &str, want: [Use; 2]) {
        let (base, top) = (self.base(), self.top());
        let [b, t] = want;
        let what = format!("destination, {phase}");
        wait_uses(&mut self.dst.proc, &[(&base, b), (&top, t)], &what);
    }

    /// Migrates over a unix socket until both sides say `completed` (60 s
    /// at most): the source is then `postmigrate`, the destination
    /// `paused`, and the image in the window.
    fn switch_over(&mut self) {
        self.switch_over_to("paused");
        self.expect("after the switchover", table::source_inactive());
        self.expect_dst("before activation", table::destination_incoming());
    }

    /// Migrates until both sides say `completed`; the destination is then
    /// `dst_status`.
    fn switch_over_to(&mut self, dst_status: &str) {
        let uri = format!("unix:{}", self.dir.path().join("mig.sock").display());
        // The source stops before its switchover (the RAM passes are
        // done, nothing inactivated yet) until `migrate-continue`.
        self.src.qmp.ok(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [
                {"capability": "pause-before-switchover", "state": true}
            ]}),
        );
        self.dst
            .qmp
            .ok("migrate-incoming", serde_json::json!({ "uri": uri }));
        self.src
            .qmp
            .ok("migrate", serde_json::json!({ "uri": uri }));
        self.wait_migration("pre-switchover", "active");
        // CHAINS.md: the source unchanged, the destination open, no byte.
        self.expect("before the switchover", table::source_before());
        self.expect_dst("during the RAM passes", table::destination_incoming());
        let top = self.top();
        let e = Lock::acquire(&top, req(Mode::Write), Options::default())
            .expect_err("the source still protects the image");
        assert_eq!(e.errno(), libc::EAGAIN, "{e}");
        self.src.qmp.ok(
            "migrate-continue",
            serde_json::json!({ "state": "pre-switchover" }),
        );
        self.wait_migration("completed", "completed");
        // query-migrate says completed a moment before the source's run
        // state leaves finish-migrate.
        wait_status(&mut self.src, "postmigrate");
        wait_status(&mut self.dst, dst_status);
    }

    /// Waits (at most 60 s) until query-migrate says `src` on the source
    /// and `dst` on the destination.
    fn wait_migration(&mut self, src: &str, dst: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, d) = (self.src.qmp.migration(), self.dst.qmp.migration());
            if s == src && d == dst {
                return;
            }
            assert!(
                s != "failed" && d != "failed" && Instant::now() < deadline,
                "migration: source {s}, destination {d}, waiting for {src}/{dst}\n\
                 source log:\n{}\ndestination log:\n{}",
                self.src.proc.log(),
                self.dst.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (query-status, query-migrate) of (source, destination).
    fn states(&mut self) -> [(String, String); 2] {
        [
            (self.src.qmp.status(), self.src.qmp.migration()),
            (self.dst.qmp.status(), self.dst.qmp.migration()),
        ]
    }
}

/// Waits (at most 30 s) until `vm`'s query-status says `want`.
fn wait_status(vm: &mut Vm, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = vm.qmp.status();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: status {now}, not {want}:\n{}",
            vm.proc.what,
            vm.proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(status: &str, migration: &str) -> (String, String) {
    (status.to_owned(), migration.to_owned())
}

#[test]
fn the_migration_window_is_granted_by_the_protocol_refused_by_the_opener_rule() {
    let mut m = Migration::start("mig-window");
    let (top, base) = (m.top(), m.base());
    // Before the switchover the source's locks refuse a writer.
    let e = Lock::acquire(&top, req(Mode::Write), Options::default()).expect_err("source holds");
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");

    m.switch_over();
    // The window: only the source's R on top; nobody protects anything.
    assert_eq!((held(&base), held(&top)), (vec![], R.to_vec()));
    // (a) The protocol alone grants write: the hazard.
    Lock::acquire(&top, req(Mode::Write), Options::default())
        .unwrap_or_else(|e| panic!("the protocol alone grants write in the window: {e}"))
        .release()
        .expect("release");
    ChainLock::acquire(&top, req(Mode::Write), Options::default())
        .unwrap_or_else(|e| panic!("the protocol alone grants the chain in the window: {e}"))
        .release()
        .expect("release");
    // (b) The opener rule refuses, naming the destination on top (the
    // source holds R there, so it is a holder, not an opener).
    let what = "in the migration window";
    let dst = m.dst.pid();
    let e = Lock::acquire(&top, req(Mode::Write), refuse()).expect_err("refused");
    assert_opened(&e, &top, dst, VM_COMM, "read-only", what);
    let e = ChainLock::acquire(&top, req(Mode::Write), refuse()).expect_err("refused");
    assert_opened(&e, &top, dst, VM_COMM, "read-only", what);
    // On base both VMs are openers; the first found (lowest pid) is named.
    let first = m.src.pid().min(dst);
    let e = Lock::acquire(&base, req(Mode::Read), refuse()).expect_err("refused");
    assert_opened(&e, &base, first, VM_COMM, "read-only", what);
    // The C ABI: FPL_FLAG_NO_UNLOCKED_OPENERS makes the difference.
    let (rc, msg) = c_acquire_write_chain(&top, FPL_FLAG_CHAIN | FPL_FLAG_NO_UNLOCKED_OPENERS);
    assert_eq!(rc, -libc::EBUSY, "{msg}");
    assert!(
        msg.contains(&format!("by {VM_COMM} (pid {dst}, fd ")),
        "{what}: {msg}"
    );
    let (rc, msg) = c_acquire_write_chain(&top, FPL_FLAG_CHAIN);
    assert_eq!(rc, 0, "{what}: without the flag: {msg}");
    assert_eq!((ours(&base), ours(&top)), (vec![], vec![]), "{what}");
    // The destination is still unaffected and still paused.
    assert_eq!(
        m.states(),
        [
            state("postmigrate", "completed"),
            state("paused", "completed")
        ]
    );

    // (c) cont activates the destination: it runs and holds RWX on top.
    m.dst.qmp.ok("cont", serde_json::json!({}));
    assert_eq!(
        m.states(),
        [
            state("postmigrate", "completed"),
            state("running", "completed")
        ]
    );
    m.expect_dst("after cont", table::destination_active());
    m.expect("after the destination's cont", table::source_inactive());
    let e = Lock::acquire(&top, req(Mode::Write), refuse()).expect_err("destination holds");
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
    m.dst.proc.assert_running();
    // The source's R on top lasts until it exits.
    m.src.proc.assert_running();
    m.src.qmp.send_quit();
    let status = m.src.proc.wait_exit(Duration::from_secs(30));
    if !status.success() {
        eprintln!("the source VM ended with {status} (not by quit)");
    }
    assert_eq!((held(&base), held(&top)), (RP.to_vec(), RWX.to_vec()));
    m.expect_dst("after the source quit", table::destination_active());
}

/// fpl_acquire(write preset, `flags`) on `path`, released at once: the
/// return code and the error's message.
fn c_acquire_write_chain(path: &Path, flags: u32) -> (i32, String) {
    let p = c_path(path);
    let mut lock: *mut fpl_lock = std::ptr::null_mut();
    let mut e = new_error();
    // SAFETY: valid C string, out-pointers to live locals.
    let rc = unsafe {
        fpl_acquire(
            p.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            flags,
            &mut lock,
            &mut e,
        )
    };
    if rc == 0 {
        assert!(!lock.is_null(), "a lock on success");
        // SAFETY: the handle fpl_acquire just made, released once.
        assert_eq!(unsafe { fpl_release(lock) }, 0, "fpl_release");
    } else {
        assert!(lock.is_null(), "no lock on failure");
    }
    (rc, message(&e))
}

/// Takes the window with `third` (started there, returning a guard that
/// keeps it), then asserts that `cont` fails and neither VM runs.
fn neither_runs<T>(tag: &str, third: impl FnOnce(&Path) -> T) -> (Migration, T) {
    let mut m = Migration::start(tag);
    m.switch_over();
    let guard = third(m.dir.path());
    let e = m
        .dst
        .qmp
        .execute("cont", serde_json::json!({}))
        .expect_err("the destination cannot activate");
    assert_eq!(e, "Failed to get \"write\" lock", "cont");
    // Nor can the source take the image back: its cont re-activates and
    // fails alike.
    let e = m
        .src
        .qmp
        .execute("cont", serde_json::json!({}))
        .expect_err("the source cannot re-activate");
    assert_eq!(e, "Failed to get \"write\" lock", "the source's cont");
    assert_eq!(
        m.states(),
        [
            state("postmigrate", "completed"),
            state("paused", "completed")
        ],
        "neither VM runs"
    );
    m.expect_dst("after the failed cont", table::destination_failed());
    m.expect(
        "after the destination's failed cont",
        table::source_inactive(),
    );
    m.src.proc.assert_running();
    m.dst.proc.assert_running();
    (m, guard)
}

#[test]
fn a_libfpl_writer_in_the_window_leaves_neither_vm_running() {
    let (mut m, lock) = neither_runs("mig-fpl", |d| {
        let top = d.join("top.qcow2");
        Lock::acquire(&top, req(Mode::Write), Options::default())
            .unwrap_or_else(|e| panic!("the protocol grants write in the window: {e}"))
    });
    // It holds write and refuses others' write, as the destination would.
    let mine = ours(&m.top());
    assert!(
        mine.contains(&101) && mine.contains(&201),
        "libfpl's write preset on top: {mine:?}"
    );
    lock.release().expect("release");
    // Once the writer has gone, the source can fall back: its cont
    // re-activates it (RP / RWX again), and then the destination can no
    // longer activate. (The qemu-io test goes forward instead.)
    m.src.qmp.ok("cont", serde_json::json!({}));
    assert_eq!(m.src.qmp.status(), "running");
    m.expect("resumed after the failed migration", table::source_before());
    let e = m
        .dst
        .qmp
        .execute("cont", serde_json::json!({}))
        .expect_err("the source has the image again");
    assert_eq!(e, "Failed to get \"write\" lock", "cont");
    assert_eq!(m.dst.qmp.status(), "paused");
}

#[test]
fn a_qemu_io_in_the_window_leaves_neither_vm_running() {
    // Even a read-only qemu-io: it unshares write (CHAINS.md §4).
    let cases: [(&[&str], [Use; 2]); 2] = [
        (
            &["-f", "qcow2", "top.qcow2"],
            [uses(R, "r"), uses(RWX, "rw")],
        ),
        (
            &["-r", "-f", "qcow2", "top.qcow2"],
            [uses(R, "r"), uses(RP, "r")],
        ),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let what = format!("qemu-io {} opening the image in the window", args.join(" "));
        let (mut m, mut io) = neither_runs(&format!("mig-io{i}"), |d| {
            let io_bin = qemu72_bin().join("qemu-io");
            let mut io = Proc::start(&io_bin, args, d, "qemu-io");
            // qemu-io opens the chain as CHAINS.md §1 says: the raw base R.
            let [b, t] = want;
            wait_uses(
                &mut io,
                &[(&d.join("base.raw"), b), (&d.join("top.qcow2"), t)],
                &what,
            );
            io
        });
        io.assert_running();
        // QMP's error is the bare message: the hint naming the image
        // (`Is another process using the image [top.qcow2]?`) is in neither
        // the reply nor the destination's log.
        assert!(!m.dst.proc.log().contains("Is another process"), "{what}");
        // qemu-io quits; a second cont activates the destination.
        drop(io);
        m.dst.qmp.ok("cont", serde_json::json!({}));
        assert_eq!(m.dst.qmp.status(), "running", "{what}");
        m.expect_dst("after a second cont", table::destination_active());
    }
}

#[test]
fn without_late_block_activate_the_destination_activates_when_the_state_is_loaded() {
    let mut m = Migration::start_with("mig-early", false);
    m.switch_over_to("paused");
    // Activated while still paused by -S: RWX on top, and base...
    m.expect_dst(
        "activated on completion, paused (-S)",
        table::destination_paused_active(),
    );
    m.expect("after the switchover", table::source_inactive());
    // No window left: the protocol refuses a writer.
    let top = m.top();
    let e = Lock::acquire(&top, req(Mode::Write), Options::default()).expect_err("refused");
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
    m.dst.qmp.ok("cont", serde_json::json!({}));
    assert_eq!(m.dst.qmp.status(), "running");
    m.expect_dst("after cont", table::destination_active());
}
