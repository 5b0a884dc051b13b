//! Chains against real QEMU, in both directions: QEMU 10.0 (qemu-io,
//! qemu-img, qemu-nbd, qemu-storage-daemon from the machine) and QEMU 7.2
//! (the same plus qemu-system-x86_64, unpacked by scripts/fetch-qemu-7.2).
//! The README's chain tables are these tests' expectations.
//!
//! QEMU holds, libfpl looks and asks:
//! - `every_qemu_holder_is_seen_member_by_member`: every long-lived QEMU
//!   holder of CHAINS.md §1-2 (qemu-io rw, -r, -U -r; qemu-nbd rw, -r;
//!   qemu-storage-daemon with an NBD export, and a bare node; 7.2 VMs with
//!   -drive, a libvirt-style -blockdev chain, readonly=on, share-rw=on, no
//!   device), on a chain with a raw base, one with a qcow2 base and an image
//!   with an external data file: `fpl::query` of each member gives exactly
//!   the bytes of CHAINS.md, names the QEMU process and its open mode;
//! - `short_lived_qemu_img_commands_are_seen_member_by_member`: qemu-img
//!   check, map, compare, convert, info, commit -b, slowed under strace;
//! - `every_preset_against_every_qemu_holder`: `ChainLock::check` and
//!   `acquire` of each preset against each holder give the outcome the
//!   protocol predicts (written here from PROTOCOL.md, independently of
//!   libfpl), naming the member and the QEMU process, and agree with QEMU's
//!   own stand-ins (a second qemu-io);
//! - `presets_against_qemu_on_lower_members`: the same with QEMU holding
//!   a backing file or the data file, judged against a 7.2 VM's disk.
//!
//! libfpl holds, QEMU acts:
//! - `qemu_against_a_chain_libfpl_holds`: qemu-io and qemu-img commands
//!   under each preset on the chain (Rust and C ABI), a read lock on mid's
//!   chain, and on the top alone;
//! - `block_commit_is_refused_under_a_chain_read_lock`: a 7.2 VM's QMP
//!   block-commit under a lock taken after the VM started;
//! - `a_vm_is_refused_a_chain_libfpl_writes_and_admitted_on_a_sibling`;
//! - `data_file_conflicts_name_the_data_file`.
//!
//! Where QEMU measured otherwise than CHAINS.md, the test asserts what QEMU
//! does and says so next to the expectation.
//!
//! The images are named relative to the test's folder, which is the working
//! directory of the test and of every QEMU process, as a user would type
//! them: a relative data file name resolves against the working directory
//! (CHAINS.md §2), and QEMU's hint names the member as it opened it.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::TempDir;
use fpl::chain::{self, Member};
use fpl::{Mode, Request};

// ---- QEMU versions and tools -------------------------------------------

/// The tests change the working directory: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A test's folder, made the working directory while the test runs.
struct Scene {
    _serial: MutexGuard<'static, ()>,
    dir: TempDir,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new(tag);
        std::env::set_current_dir(dir.path())
            .unwrap_or_else(|e| panic!("cd {:?}: {e}", dir.path()));
        Scene {
            _serial: serial,
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Leave the folder before TempDir removes it.
        let _ = std::env::set_current_dir(std::env::temp_dir());
    }
}

/// One QEMU version: the folder of its binaries.
#[derive(Clone)]
struct Qemu {
    version: String,
    bin: PathBuf,
}

impl Qemu {
    /// The path of a tool; fails the test saying what to install.
    fn tool(&self, name: &str) -> PathBuf {
        let p = self.bin.join(name);
        assert!(
            p.exists(),
            "{name} of QEMU {} is missing (looked for {p:?}): QEMU 10.0's qemu-img, qemu-io, \
             qemu-nbd and qemu-storage-daemon come preinstalled in /usr/bin (qemu-utils 10.0.2; \
             never apt-get install a QEMU package, it replaces them); QEMU 7.2 with \
             qemu-system-x86_64 is unpacked by scripts/fetch-qemu-7.2 (needs root)",
            self.version
        );
        p
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(self.tool(tool));
        c.stdin(Stdio::null());
        c
    }

    fn has_vm(&self) -> bool {
        self.version == "7.2"
    }
}

/// QEMU 10.0 and 7.2; fails saying what to install when one is missing.
fn qemus() -> Vec<Qemu> {
    let all: Vec<Qemu> = common::qemu_dirs()
        .split(':')
        .filter_map(|kv| kv.split_once('='))
        .map(|(v, d)| Qemu {
            version: v.to_owned(),
            bin: PathBuf::from(d),
        })
        .collect();
    let versions: Vec<&str> = all.iter().map(|q| q.version.as_str()).collect();
    assert_eq!(versions, ["10.0", "7.2"], "both QEMU versions are needed");
    all
}

fn qemu72() -> Qemu {
    qemus()
        .into_iter()
        .find(Qemu::has_vm)
        .expect("QEMU 7.2 (scripts/fetch-qemu-7.2)")
}

/// Runs a command to its end, killed (and the test failed) after 60 s.
fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_ok(cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(out.status.success(), "{what} failed: {}", stderr(&out));
    out
}

fn img(q: &Qemu, args: &[&str]) {
    let mut c = q.cmd("qemu-img");
    c.args(args);
    run_ok(c);
}

// ---- processes -----------------------------------------------------------

/// A QEMU process, killed and reaped however the test ends. Its stdin is a
/// pipe (qemu-io waits on it), its stdout and stderr go to a log file.
struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

static LOGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Proc {
    fn start(q: &Qemu, tool: &str, args: &[String]) -> Proc {
        let n = LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::current_dir()
            .expect("a working directory")
            .join(format!("proc-{n}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(q.tool(tool));
        cmd.args(args).stdin(Stdio::piped()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child,
            log,
            what: format!("QEMU {} {tool} {}", q.version, args.join(" ")),
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

    /// Waits (at most 30 s) for the process to exit by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
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

// ---- bytes ---------------------------------------------------------------

/// Every byte the protocol knows: libvirt's 0, 100-104, 200-204.
const ALL_BYTES: [u32; 11] = [0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204];

/// CHAINS.md's notation.
const R: &[u32] = &[100];
const RP: &[u32] = &[100, 201, 203];
const RWX: &[u32] = &[100, 101, 103, 201, 203];
const NONE: &[u32] = &[];
/// A data file under a user that shares write: it never shares resize.
const DATA_W: &[u32] = &[100, 101, 103, 203];
/// A data file under `qemu-io -r`.
const DATA_R: &[u32] = &[100, 203];

fn bytes_of(held: fpl::Held) -> Vec<u32> {
    ALL_BYTES.into_iter().filter(|&b| held.covers(b)).collect()
}

/// The bytes anybody holds on `path`.
fn held(path: &str) -> Vec<u32> {
    let status = fpl::query(Path::new(path), false).unwrap_or_else(|e| panic!("query {path}: {e}"));
    bytes_of(status.held)
}

/// Waits (at most 30 s) until each file holds exactly its bytes; fails
/// with the whole table (and the process's log) otherwise.
fn wait_bytes(p: &mut Proc, want: &[(&str, &[u32])]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<Vec<u32>> = want.iter().map(|(f, _)| held(f)).collect();
        if want.iter().zip(&now).all(|((_, w), n)| *w == n.as_slice()) {
            return;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "{} exited ({status}) with the bytes at {now:?}, not {want:?}:\n{}",
                p.what,
                p.log()
            );
        }
        if Instant::now() > deadline {
            let table: Vec<String> = want
                .iter()
                .zip(&now)
                .map(|((f, w), n)| format!("{f}: held {n:?}, CHAINS.md {w:?}"))
                .collect();
            panic!("{}:\n{}\nlog:\n{}", p.what, table.join("\n"), p.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the chains ----------------------------------------------------------

/// The three shapes of CHAINS.md §1-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// base.raw <- mid.qcow2 <- top.qcow2
    RawBase,
    /// base.qcow2 <- mid2.qcow2 <- top2.qcow2
    Qcow2Base,
    /// x.qcow2 with the external data file d.raw (data_file_raw=on)
    DataFile,
}

const SHAPES: [Shape; 3] = [Shape::RawBase, Shape::Qcow2Base, Shape::DataFile];

impl Shape {
    /// The files, in fpl::chain::resolve's order (QEMU's opening order).
    fn members(self) -> &'static [&'static str] {
        match self {
            Shape::RawBase => &["top.qcow2", "mid.qcow2", "base.raw"],
            Shape::Qcow2Base => &["top2.qcow2", "mid2.qcow2", "base.qcow2"],
            Shape::DataFile => &["x.qcow2", "d.raw"],
        }
    }

    fn top(self) -> &'static str {
        self.members()[0]
    }
}

/// Creates every shape in the working directory with QEMU `q`'s qemu-img.
fn create_chains(q: &Qemu) {
    img(q, &["create", "-q", "-f", "raw", "base.raw", "64M"]);
    img(
        q,
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
    img(
        q,
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
    img(q, &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    img(
        q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid2.qcow2",
        ],
    );
    img(
        q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid2.qcow2",
            "-F",
            "qcow2",
            "top2.qcow2",
        ],
    );
    img(
        q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=d.raw,data_file_raw=on",
            "x.qcow2",
            "64M",
        ],
    );
}

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

/// fpl::chain::resolve's members of a shape, checked against its files.
fn resolve(shape: Shape) -> Vec<Member> {
    let members = chain::resolve(Path::new(shape.top()), req(Mode::Write))
        .unwrap_or_else(|e| panic!("resolve {}: {e}", shape.top()));
    let paths: Vec<String> = members
        .iter()
        .map(|m| m.path.to_string_lossy().into_owned())
        .collect();
    assert_eq!(paths, shape.members(), "the members of {shape:?}");
    members
}

// ---- QEMU's holders (CHAINS.md §1-2) -------------------------------------

/// A QEMU process that uses an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// `qemu-io -f qcow2 TOP` (read-write)
    QemuIo,
    /// `qemu-io -r -f qcow2 TOP`
    QemuIoReadOnly,
    /// `qemu-io -U -r -f qcow2 TOP` (force-share)
    QemuIoForceShare,
    /// `qemu-nbd -f qcow2 TOP` (read-write export)
    Nbd,
    /// `qemu-nbd -r -f qcow2 TOP`
    NbdReadOnly,
    /// qemu-storage-daemon, a qcow2 node exported writable over NBD
    StorageDaemonExport,
    /// qemu-storage-daemon, a qcow2 `--blockdev` node nobody uses
    StorageDaemonNode,
    /// VM, `-drive file=TOP,if=virtio`
    VmDrive,
    /// VM, a libvirt-style `-blockdev` chain (backing nodes read-only) and a
    /// virtio-blk device
    VmBlockdev,
    /// VM, `-drive ...,readonly=on`
    VmReadOnly,
    /// VM, virtio-blk with `share-rw=on`
    VmShareRw,
    /// VM, `-drive if=none` with no device
    VmNoDevice,
}

const HOLDERS: [Holder; 12] = [
    Holder::QemuIo,
    Holder::QemuIoReadOnly,
    Holder::QemuIoForceShare,
    Holder::Nbd,
    Holder::NbdReadOnly,
    Holder::StorageDaemonExport,
    Holder::StorageDaemonNode,
    Holder::VmDrive,
    Holder::VmBlockdev,
    Holder::VmReadOnly,
    Holder::VmShareRw,
    Holder::VmNoDevice,
];

/// The common arguments of a paused VM with no guest.
fn vm_args() -> Vec<String> {
    [
        "-machine",
        "q35,accel=tcg",
        "-nodefaults",
        "-display",
        "none",
        "-S",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The `-blockdev` options of a libvirt-style chain for `shape`: a file
/// node (auto-read-only) and a format node per image, backing format
/// nodes read-only, the top writable, named `fmt0` (the top), `fmt1`, ...
fn blockdev_chain(shape: Shape) -> Vec<String> {
    let layers: Vec<(&str, &str)> = match shape {
        Shape::RawBase => vec![
            ("top.qcow2", "qcow2"),
            ("mid.qcow2", "qcow2"),
            ("base.raw", "raw"),
        ],
        Shape::Qcow2Base => vec![
            ("top2.qcow2", "qcow2"),
            ("mid2.qcow2", "qcow2"),
            ("base.qcow2", "qcow2"),
        ],
        // The data file is opened by the qcow2 driver from the header.
        Shape::DataFile => vec![("x.qcow2", "qcow2")],
    };
    let mut args = Vec::new();
    for (i, (file, format)) in layers.iter().enumerate().rev() {
        // As libvirt does: storage nodes auto-read-only (so that a job can
        // reopen them read-write), backing format nodes read-only.
        let ro = if i == 0 { "" } else { ",read-only=on" };
        args.push("-blockdev".to_owned());
        args.push(format!(
            "driver=file,node-name=file{i},filename={file},auto-read-only=on"
        ));
        // A qcow2 layer names its backing node; the base has none.
        let backing = match layers.get(i + 1) {
            Some(_) => format!(",backing=fmt{}", i + 1),
            None => String::new(),
        };
        args.push("-blockdev".to_owned());
        args.push(format!(
            "driver={format},node-name=fmt{i},file=file{i}{ro}{backing}"
        ));
    }
    args
}

impl Holder {
    fn is_vm(self) -> bool {
        matches!(
            self,
            Holder::VmDrive
                | Holder::VmBlockdev
                | Holder::VmReadOnly
                | Holder::VmShareRw
                | Holder::VmNoDevice
        )
    }

    /// The tool and its arguments, holding `shape`'s top; `sock` for NBD.
    fn command(self, shape: Shape, sock: &str) -> (&'static str, Vec<String>) {
        let top = shape.top();
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        match self {
            Holder::QemuIo => ("qemu-io", s(&["-f", "qcow2", top])),
            Holder::QemuIoReadOnly => ("qemu-io", s(&["-r", "-f", "qcow2", top])),
            Holder::QemuIoForceShare => ("qemu-io", s(&["-U", "-r", "-f", "qcow2", top])),
            Holder::Nbd => ("qemu-nbd", s(&["-k", sock, "-f", "qcow2", top])),
            Holder::NbdReadOnly => ("qemu-nbd", s(&["-r", "-k", sock, "-f", "qcow2", top])),
            Holder::StorageDaemonExport | Holder::StorageDaemonNode => {
                let mut a = s(&[
                    "--blockdev",
                    &format!("driver=file,node-name=f0,filename={top}"),
                    "--blockdev",
                    "driver=qcow2,node-name=q0,file=f0",
                ]);
                if self == Holder::StorageDaemonExport {
                    a.extend(s(&[
                        "--nbd-server",
                        &format!("addr.type=unix,addr.path={sock}"),
                        "--export",
                        "type=nbd,id=e0,node-name=q0,writable=on",
                    ]));
                }
                ("qemu-storage-daemon", a)
            }
            Holder::VmDrive => {
                let mut a = vm_args();
                a.extend(s(&[
                    "-drive",
                    &format!("file={top},if=virtio,format=qcow2"),
                ]));
                ("qemu-system-x86_64", a)
            }
            Holder::VmReadOnly => {
                let mut a = vm_args();
                a.extend(s(&[
                    "-drive",
                    &format!("file={top},if=virtio,format=qcow2,readonly=on"),
                ]));
                ("qemu-system-x86_64", a)
            }
            Holder::VmShareRw => {
                let mut a = vm_args();
                a.extend(s(&[
                    "-drive",
                    &format!("file={top},if=none,id=d0,format=qcow2"),
                    "-device",
                    "virtio-blk-pci,drive=d0,share-rw=on",
                ]));
                ("qemu-system-x86_64", a)
            }
            Holder::VmNoDevice => {
                let mut a = vm_args();
                a.extend(s(&[
                    "-drive",
                    &format!("file={top},if=none,id=d0,format=qcow2"),
                ]));
                ("qemu-system-x86_64", a)
            }
            Holder::VmBlockdev => {
                let mut a = vm_args();
                a.extend(blockdev_chain(shape));
                a.extend(s(&["-device", "virtio-blk-pci,drive=fmt0"]));
                ("qemu-system-x86_64", a)
            }
        }
    }

    /// Whether the holder opens the image read-write.
    fn writes(self) -> bool {
        !matches!(
            self,
            Holder::QemuIoReadOnly
                | Holder::QemuIoForceShare
                | Holder::NbdReadOnly
                | Holder::VmReadOnly
        )
    }

    /// `/proc/PID/comm` of the tool (15 characters at most).
    fn comm(self) -> &'static str {
        match self {
            Holder::QemuIo | Holder::QemuIoReadOnly | Holder::QemuIoForceShare => "qemu-io",
            Holder::Nbd | Holder::NbdReadOnly => "qemu-nbd",
            Holder::StorageDaemonExport | Holder::StorageDaemonNode => "qemu-storage-da",
            _ => "qemu-system-x86",
        }
    }

    /// The bytes CHAINS.md §1-2 measured on each member, in resolve order
    /// (where this test measured otherwise, QEMU's answer, and a note).
    fn chains_md(self, shape: Shape) -> Vec<&'static [u32]> {
        use Holder::*;
        use Shape::*;
        match (self, shape) {
            // Users that share write: a raw base is a pass-through (R); a
            // data file never shares resize but passes write sharing through.
            (QemuIo | Nbd | StorageDaemonExport | VmShareRw | VmNoDevice, RawBase) => {
                vec![RWX, RP, R]
            }
            (QemuIo | Nbd | StorageDaemonExport | VmShareRw | VmNoDevice, Qcow2Base) => {
                vec![RWX, RP, RP]
            }
            (QemuIo | Nbd | StorageDaemonExport, DataFile) => vec![RWX, DATA_W],
            // Not in CHAINS.md §2: measured here. With no device the drive
            // does not use write yet, and its data file follows: read only.
            (VmShareRw, DataFile) => vec![RWX, DATA_W],
            (VmNoDevice, DataFile) => vec![RWX, DATA_R],
            // A VM's virtio disk does not share write: RP on every backing file.
            (VmDrive | VmBlockdev, RawBase | Qcow2Base) => vec![RWX, RP, RP],
            (VmDrive | VmBlockdev, DataFile) => vec![RWX, RWX],
            (VmReadOnly, RawBase | Qcow2Base) => vec![RP, RP, RP],
            (VmReadOnly, DataFile) => vec![RP, RP],
            // qemu-io -r (qemu-nbd -r alike): a raw base gets R.
            (QemuIoReadOnly | NbdReadOnly, RawBase) => vec![RP, RP, R],
            (QemuIoReadOnly | NbdReadOnly, Qcow2Base) => vec![RP, RP, RP],
            (QemuIoReadOnly | NbdReadOnly, DataFile) => vec![RP, DATA_R],
            (QemuIoForceShare, RawBase | Qcow2Base) => vec![R, R, R],
            // Not in CHAINS.md §2: measured here.
            (QemuIoForceShare, DataFile) => vec![R, R],
            // A node nobody uses: its raw base is open with no lock.
            (StorageDaemonNode, RawBase) => vec![RWX, RP, NONE],
            (StorageDaemonNode, Qcow2Base) => vec![RWX, RP, RP],
            // Not in CHAINS.md §2: measured here.
            // Its data file, used by nobody, still never shares resize.
            (StorageDaemonNode, DataFile) => vec![RWX, &[203]],
        }
    }
}

/// Starts `holder` on `shape` with QEMU `q` and waits until it holds the
/// bytes of CHAINS.md on every member.
fn start_holder(q: &Qemu, holder: Holder, shape: Shape) -> Proc {
    // qemu-nbd wants an absolute socket path.
    let sock = std::env::current_dir()
        .expect("a working directory")
        .join(format!(
            "nbd-{}.sock",
            LOGS.load(std::sync::atomic::Ordering::Relaxed)
        ));
    let (tool, args) = holder.command(shape, &sock.to_string_lossy());
    let mut p = Proc::start(q, tool, &args);
    let want: Vec<(&str, &[u32])> = shape
        .members()
        .iter()
        .copied()
        .zip(holder.chains_md(shape))
        .collect();
    wait_bytes(&mut p, &want);
    p
}

// ---- item 3: QEMU holds, fpl::query sees every member ---------------------

/// For each member of the chain: exactly CHAINS.md's bytes, and the QEMU
/// process named (one holder: its pid, its name, the same bytes).
fn assert_query_names(p: &Proc, holder: Holder, shape: Shape, members: &[Member]) {
    let want = holder.chains_md(shape);
    for (m, want) in members.iter().zip(want) {
        let status =
            fpl::query(&m.path, true).unwrap_or_else(|e| panic!("query {:?}: {e}", m.path));
        let what = format!("{} on {:?} ({holder:?})", p.what, m.path);
        assert_eq!(bytes_of(status.held), want, "{what}");
        assert!(!status.holders_partial, "{what}: holders partial");
        if want.is_empty() {
            assert_eq!(status.holders, [], "{what}");
            // Open with no lock (CHAINS.md §1): an opener.
            let inspect = fpl::query::Inspect {
                holders: true,
                openers: true,
            };
            let status = fpl::query::query_with(&m.path, inspect)
                .unwrap_or_else(|e| panic!("query {:?}: {e}", m.path));
            let openers: Vec<(i32, &str, bool, bool)> = status
                .holders
                .iter()
                .map(|h| (h.pid, h.name.as_str(), h.no_locks, h.access.write))
                .collect();
            assert_eq!(
                openers,
                [(p.pid(), holder.comm(), true, false)],
                "{what}: opened read-only, no lock"
            );
            continue;
        }
        assert_eq!(status.holders.len(), 1, "{what}: {:?}", status.holders);
        let h = &status.holders[0];
        assert_eq!(h.pid, p.pid(), "{what}: {h:?}");
        assert_eq!(h.name, holder.comm(), "{what}: {h:?}");
        assert_eq!(bytes_of(h.held), want, "{what}: {h:?}");
        // From fdinfo's flags: QEMU opens the image and its data file
        // read-write when it writes, backing files read-only. -drive gives
        // its file nodes auto-read-only, which opens a file read-only while
        // nobody uses write on it: the data file of a drive with no device
        // (a qemu-storage-daemon node has no auto-read-only: read-write).
        let idle_data = holder == Holder::VmNoDevice && m.role == chain::Role::DataFile;
        let writes = m.depth == 0 && holder.writes() && !idle_data;
        assert_eq!(
            (h.access.read, h.access.write),
            (true, writes),
            "{what}: opened for"
        );
    }
}

#[test]
fn every_qemu_holder_is_seen_member_by_member() {
    let scene = Scene::new("qchain-query");
    for q in qemus() {
        let dir = scene.path().join(&q.version);
        std::fs::create_dir(&dir).expect("mkdir");
        std::env::set_current_dir(&dir).expect("cd");
        create_chains(&q);
        for shape in SHAPES {
            let members = resolve(shape);
            for holder in HOLDERS {
                if holder.is_vm() && !q.has_vm() {
                    continue;
                }
                let p = start_holder(&q, holder, shape);
                assert_query_names(&p, holder, shape, &members);
                drop(p);
                for f in shape.members() {
                    assert_eq!(held(f), NONE, "{f} after {holder:?} exited");
                }
            }
        }
    }
}

// ---- the protocol's prediction, written from PROTOCOL.md and CHAINS.md ----
// (independent of libfpl: the strict rules of PROTOCOL.md §4, and the
// request each member gets for a preset, from CHAINS.md §1's rules)

const CR: u32 = 0x1;
const W: u32 = 0x2;
const WU: u32 = 0x4;
const RS: u32 = 0x8;

/// What a preset takes on a member: (perm, shared). The image and its data
/// file get the preset; a backing file only reads and shares read (the
/// presets share neither write nor resize), except read-shared, QEMU's
/// force-share, which is the same on every member.
fn member_request(mode: Mode, backing: bool) -> (u32, u32) {
    match (mode, backing) {
        (Mode::ReadShared, _) => (CR, CR | W | WU | RS),
        (Mode::Read, _) | (_, true) => (CR, CR),
        (Mode::Write, false) => (CR | W | RS, CR),
        (Mode::Exclusive, false) => (CR | W | RS, 0),
    }
}

/// The bytes a strict request locks, and the bytes it tests in QEMU's
/// order, each with the permission its message names.
fn strict_plan(perm: u32, shared: u32) -> (Vec<u32>, Vec<(u32, u32)>) {
    let mut usebits = perm;
    let mut refuse = !shared & 0xf;
    if usebits & (WU | RS) != 0 {
        usebits |= W;
    }
    usebits &= !WU;
    if refuse & (W | WU) != 0 {
        refuse |= W | RS;
    }
    refuse &= !WU;
    let mut lock = Vec::new();
    for i in 0..4 {
        if usebits & (1 << i) != 0 {
            lock.push(100 + i);
        }
    }
    for i in 0..4 {
        if refuse & (1 << i) != 0 {
            lock.push(200 + i);
        }
    }
    if refuse & W != 0 {
        lock.push(202);
    }
    lock.sort_unstable();
    let mut tests = Vec::new();
    for i in 0..4 {
        if usebits & (1 << i) != 0 {
            tests.push((200 + i, 1 << i));
            if i == 1 {
                tests.push((202, W));
            }
        }
    }
    for i in 0..4 {
        if refuse & (1 << i) != 0 {
            tests.push((100 + i, 1 << i));
            if i == 1 {
                tests.push((102, W));
            }
        }
    }
    (lock, tests)
}

fn perm_name(bit: u32) -> &'static str {
    match bit {
        CR => "consistent read",
        W => "write",
        WU => "write unchanged",
        _ => "resize",
    }
}

/// A predicted refusal: the member, the byte, QEMU's first line.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    member: String,
    byte: u32,
    message: String,
}

/// What a preset on the chain meets, given what others hold on each member
/// (in resolve order; member 0 is the image, a data file is at depth 0).
fn predict(mode: Mode, members: &[Member], others: &[Vec<u32>]) -> Option<Refusal> {
    for (m, held) in members.iter().zip(others) {
        let (perm, shared) = member_request(mode, m.depth > 0);
        for (byte, bit) in strict_plan(perm, shared).1 {
            if held.contains(&byte) {
                let message = if byte < 200 {
                    format!("Failed to get shared \"{}\" lock", perm_name(bit))
                } else {
                    format!("Failed to get \"{}\" lock", perm_name(bit))
                };
                return Some(Refusal {
                    member: m.path.to_string_lossy().into_owned(),
                    byte,
                    message,
                });
            }
        }
    }
    None
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = a.iter().chain(b).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The refusal libfpl reported, in the prediction's terms, checking that
/// it names the QEMU holder and QEMU's hint.
fn refusal(e: &fpl::Error, holder: Option<(i32, &str)>, what: &str) -> Refusal {
    let c = e
        .conflict()
        .unwrap_or_else(|| panic!("{what}: not a conflict: {e}"));
    let member = c
        .path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert_eq!(
        c.hint(),
        format!("Is another process using the image [{member}]?"),
        "{what}"
    );
    if let Some((pid, name)) = holder {
        let h = c
            .holder
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no holder named: {e}"));
        assert_eq!((h.pid, h.name.as_str()), (pid, name), "{what}: {e}");
        assert!(
            e.to_string()
                .contains(&format!("(held by {name}, pid {pid})")),
            "{what}: {e}"
        );
    }
    Refusal {
        member,
        byte: c.byte,
        message: c.qemu_message(),
    }
}

/// QEMU's own stand-in for a preset on the chain: a second qemu-io that
/// opens the image with the equivalent options and quits. Exclusive has
/// none (no QEMU user refuses to share consistent read from the command
/// line).
fn qemu_equivalent(mode: Mode) -> Option<&'static [&'static str]> {
    match mode {
        Mode::ReadShared => Some(&["-U", "-r"]),
        Mode::Read => Some(&["-r"]),
        Mode::Write => Some(&[]),
        Mode::Exclusive => None,
    }
}

/// Runs QEMU's stand-in for `mode` on `top`: None if it opened the chain,
/// else its error output.
fn qemu_tries(q: &Qemu, mode: Mode, top: &str) -> Option<Option<String>> {
    let opts = qemu_equivalent(mode)?;
    let mut c = q.cmd("qemu-io");
    c.args(opts).args(["-f", "qcow2", "-c", "quit", top]);
    let out = run(c);
    Some((!out.status.success()).then(|| stderr(&out)))
}

/// Every preset against `p`, which holds `shape` as CHAINS.md says:
/// check and acquire give the predicted outcome, naming the member and the
/// QEMU process; what acquire took (or rolled back) shows on every member;
/// and QEMU's own stand-in is admitted or refused alike, with the same
/// message and member.
fn assert_presets(q: &Qemu, p: &mut Proc, holder: Holder, shape: Shape, members: &[Member]) {
    let qemu_held: Vec<Vec<u32>> = holder
        .chains_md(shape)
        .into_iter()
        .map(<[u32]>::to_vec)
        .collect();
    for mode in Mode::ALL {
        let what = format!(
            "{} {:?}: {} on {}",
            q.version,
            holder,
            mode.name(),
            shape.top()
        );
        let want = predict(mode, members, &qemu_held);
        let named = Some((p.pid(), holder.comm()));
        let top = Path::new(shape.top());

        let checked = fpl::ChainLock::check(top, req(mode), fpl::Options::default());
        let got = checked.as_ref().err().map(|e| refusal(e, named, &what));
        assert_eq!(got, want, "{what}: ChainLock::check");

        match fpl::ChainLock::acquire(top, req(mode), fpl::Options::default()) {
            Ok(lock) => {
                assert_eq!(want, None, "{what}: acquire admitted");
                for (m, theirs) in members.iter().zip(&qemu_held) {
                    let (perm, shared) = member_request(mode, m.depth > 0);
                    let ours = strict_plan(perm, shared).0;
                    let path = m.path.to_string_lossy();
                    assert_eq!(held(&path), union(theirs, &ours), "{what}: {path} held");
                }
                lock.release()
                    .unwrap_or_else(|e| panic!("{what}: release: {e}"));
            }
            Err(e) => {
                assert_eq!(Some(refusal(&e, named, &what)), want, "{what}: acquire");
            }
        }
        // Rolled back or released: QEMU's bytes only, on every member.
        for (m, theirs) in members.iter().zip(&qemu_held) {
            let path = m.path.to_string_lossy();
            assert_eq!(&held(&path), theirs, "{what}: {path} afterwards");
        }

        println!(
            "{what}: {}",
            want.as_ref().map_or("admitted".to_owned(), |r| format!(
                "{} on {} (byte {})",
                r.message, r.member, r.byte
            ))
        );
        // QEMU itself, where it has a stand-in.
        if let Some(refused) = qemu_tries(q, mode, shape.top()) {
            match (&want, refused) {
                (None, None) => {}
                (Some(r), Some(err)) => {
                    assert!(err.contains(&r.message), "{what}: QEMU said {err}");
                    let hint = format!("Is another process using the image [{}]?", r.member);
                    assert!(err.contains(&hint), "{what}: QEMU said {err}");
                }
                (want, got) => panic!("{what}: libfpl {want:?}, QEMU's stand-in {got:?}"),
            }
        }
        p.assert_running();
    }
}

#[test]
fn every_preset_against_every_qemu_holder() {
    let scene = Scene::new("qchain-presets");
    for q in qemus() {
        let dir = scene.path().join(&q.version);
        std::fs::create_dir(&dir).expect("mkdir");
        std::env::set_current_dir(&dir).expect("cd");
        create_chains(&q);
        for shape in SHAPES {
            let members = resolve(shape);
            // Nobody holds anything: every preset is admitted, by libfpl
            // and by QEMU's stand-ins.
            let free = vec![Vec::new(); members.len()];
            for mode in Mode::ALL {
                assert_eq!(predict(mode, &members, &free), None);
                fpl::ChainLock::check(Path::new(shape.top()), req(mode), fpl::Options::default())
                    .unwrap_or_else(|e| panic!("{} on a free {shape:?}: {e}", mode.name()));
                if let Some(refused) = qemu_tries(&q, mode, shape.top()) {
                    assert_eq!(
                        refused,
                        None,
                        "{} stand-in on a free {shape:?}",
                        mode.name()
                    );
                }
            }
            for holder in HOLDERS {
                if holder.is_vm() && !q.has_vm() {
                    continue;
                }
                let mut p = start_holder(&q, holder, shape);
                assert_presets(&q, &mut p, holder, shape, &members);
            }
        }
    }
}

// ---- items 1 and the README's table: libfpl holds a chain, QEMU acts -----

const WRITE_LOCK: &str = "Failed to get \"write\" lock";
const SHARED_WRITE_LOCK: &str = "Failed to get shared \"write\" lock";
const CONSISTENT_READ_LOCK: &str = "Failed to get \"consistent read\" lock";
const SHARED_CONSISTENT_READ_LOCK: &str = "Failed to get shared \"consistent read\" lock";

/// What QEMU should meet: admitted, or refused on a member with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Ok,
    No(&'static str, &'static str),
}

/// How libfpl takes its locks in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `fpl::ChainLock`
    Chain,
    /// `fpl_acquire` with `FPL_FLAG_CHAIN`
    CAbi,
    /// `fpl::Lock` on the named file alone: what a chain lock adds.
    FileOnly,
}

/// Locks libfpl holds on a chain, through the Rust API or the C ABI
/// (`fpl_acquire` with `FPL_FLAG_CHAIN`), or on one file; released on drop.
enum ChainHeld {
    Rust(Option<fpl::ChainLock>),
    C(*mut fpl::ffi::fpl_lock),
    File(Option<fpl::Lock>),
}

impl ChainHeld {
    fn take(image: &str, mode: Mode, how: How) -> ChainHeld {
        if how == How::FileOnly {
            return ChainHeld::File(Some(
                fpl::Lock::acquire(Path::new(image), req(mode), fpl::Options::default())
                    .unwrap_or_else(|e| panic!("Lock {} on {image}: {e}", mode.name())),
            ));
        }
        if how == How::Chain {
            return ChainHeld::Rust(Some(
                fpl::ChainLock::acquire(Path::new(image), req(mode), fpl::Options::default())
                    .unwrap_or_else(|e| panic!("ChainLock {} on {image}: {e}", mode.name())),
            ));
        }
        let path = common::cabi::c_path(Path::new(image));
        let mut lock = std::ptr::null_mut();
        let mut err = common::cabi::new_error();
        // SAFETY: valid pointers for the call.
        let rc = unsafe {
            fpl::ffi::fpl_acquire(
                path.as_ptr(),
                mode.perm().bits(),
                mode.shared().bits(),
                fpl::ffi::FPL_FLAG_CHAIN,
                &mut lock,
                &mut err,
            )
        };
        assert_eq!(
            rc,
            0,
            "fpl_acquire(FPL_FLAG_CHAIN) {} on {image}: {}",
            mode.name(),
            common::cabi::message(&err)
        );
        ChainHeld::C(lock)
    }

    /// Releases the locks, asserting that releasing worked.
    fn release(mut self) {
        match &mut self {
            ChainHeld::Rust(lock) => {
                if let Some(lock) = lock.take() {
                    lock.release()
                        .unwrap_or_else(|e| panic!("ChainLock::release: {e}"));
                }
            }
            ChainHeld::File(lock) => {
                if let Some(lock) = lock.take() {
                    lock.release()
                        .unwrap_or_else(|e| panic!("Lock::release: {e}"));
                }
            }
            // Drop releases it (and asserts).
            ChainHeld::C(_) => {}
        }
    }
}

impl Drop for ChainHeld {
    fn drop(&mut self) {
        if let ChainHeld::C(lock) = *self {
            // SAFETY: a live handle from fpl_acquire, released once.
            let rc = unsafe { fpl::ffi::fpl_release(lock) };
            assert_eq!(rc, 0, "fpl_release");
        }
    }
}

/// Who holds what in a column of the table: a chain lock of `mode` on
/// `image`, through the C ABI or not.
struct Column {
    image: &'static str,
    mode: Mode,
    how: How,
}

const COLUMNS: [Column; 7] = [
    Column {
        image: "top.qcow2",
        mode: Mode::ReadShared,
        how: How::Chain,
    },
    Column {
        image: "top.qcow2",
        mode: Mode::Read,
        how: How::Chain,
    },
    Column {
        image: "top.qcow2",
        mode: Mode::Read,
        how: How::CAbi,
    },
    Column {
        image: "top.qcow2",
        mode: Mode::Write,
        how: How::Chain,
    },
    Column {
        image: "top.qcow2",
        mode: Mode::Exclusive,
        how: How::Chain,
    },
    Column {
        image: "mid.qcow2",
        mode: Mode::Read,
        how: How::Chain,
    },
    Column {
        image: "top.qcow2",
        mode: Mode::Read,
        how: How::FileOnly,
    },
];

/// A QEMU command run against the chain base.raw <- mid.qcow2 <- top.qcow2,
/// and what it meets under each column.
struct Act {
    tool: &'static str,
    args: &'static [&'static str],
    want: [Want; 7],
}

fn acts() -> Vec<Act> {
    use Want::{No, Ok};
    let base_w = No("base.raw", WRITE_LOCK);
    let mid_w = No("mid.qcow2", WRITE_LOCK);
    let top_w = No("top.qcow2", WRITE_LOCK);
    let top_sw = No("top.qcow2", SHARED_WRITE_LOCK);
    let top_cr = No("top.qcow2", CONSISTENT_READ_LOCK);
    // Committing through mid into base makes mid refuse to share
    // consistent read (CHAINS.md §1): even read-shared's byte 100 stops it.
    let mid_scr = No("mid.qcow2", SHARED_CONSISTENT_READ_LOCK);
    vec![
        Act {
            tool: "qemu-io",
            args: &["-f", "raw", "-c", "write 0 512", "base.raw"],
            want: [Ok, base_w, base_w, base_w, base_w, base_w, Ok],
        },
        Act {
            tool: "qemu-io",
            args: &["-f", "qcow2", "-c", "write 0 512", "mid.qcow2"],
            want: [Ok, mid_w, mid_w, mid_w, mid_w, mid_w, Ok],
        },
        Act {
            tool: "qemu-io",
            args: &["-f", "qcow2", "-c", "write 0 512", "top.qcow2"],
            want: [Ok, top_w, top_w, top_w, top_cr, Ok, top_w],
        },
        Act {
            tool: "qemu-io",
            args: &["-r", "-f", "qcow2", "-c", "read 0 512", "top.qcow2"],
            want: [Ok, Ok, Ok, top_sw, top_cr, Ok, Ok],
        },
        Act {
            tool: "qemu-io",
            args: &["-U", "-r", "-f", "qcow2", "-c", "read 0 512", "top.qcow2"],
            want: [Ok, Ok, Ok, Ok, top_cr, Ok, Ok],
        },
        Act {
            tool: "qemu-img",
            args: &["commit", "top.qcow2"],
            want: [Ok, top_w, top_w, top_w, top_cr, mid_w, top_w],
        },
        Act {
            tool: "qemu-img",
            args: &["commit", "-b", "base.raw", "top.qcow2"],
            want: [mid_scr, top_w, top_w, top_w, top_cr, base_w, top_w],
        },
        // Committing mid into base rewrites what the top reads: only a
        // lock on the chain stops it.
        Act {
            tool: "qemu-img",
            args: &["commit", "mid.qcow2"],
            want: [Ok, mid_w, mid_w, mid_w, mid_w, mid_w, Ok],
        },
        Act {
            tool: "qemu-img",
            args: &["rebase", "-b", "other.raw", "-F", "raw", "top.qcow2"],
            want: [Ok, top_w, top_w, top_w, top_cr, Ok, top_w],
        },
        Act {
            tool: "qemu-img",
            args: &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "top.qcow2",
                "-F",
                "qcow2",
                "new.qcow2",
            ],
            want: [Ok, Ok, Ok, Ok, Ok, Ok, Ok],
        },
        Act {
            tool: "qemu-img",
            args: &["check", "top.qcow2"],
            want: [Ok, Ok, Ok, top_sw, top_cr, Ok, Ok],
        },
        Act {
            tool: "qemu-img",
            args: &["info", "top.qcow2"],
            want: [Ok, Ok, Ok, top_sw, top_sw, Ok, Ok],
        },
    ]
}

/// A fresh chain (and other.raw, a new base for rebase), the last one
/// removed first.
fn fresh_chain(q: &Qemu) {
    for f in [
        "base.raw",
        "mid.qcow2",
        "top.qcow2",
        "other.raw",
        "new.qcow2",
    ] {
        let _ = std::fs::remove_file(f);
    }
    img(q, &["create", "-q", "-f", "raw", "base.raw", "64M"]);
    img(
        q,
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
    img(
        q,
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
    img(q, &["create", "-q", "-f", "raw", "other.raw", "64M"]);
}

fn backing_files(top: &str) -> Vec<String> {
    chain::resolve(Path::new(top), req(Mode::Read))
        .unwrap_or_else(|e| panic!("resolve {top}: {e}"))
        .iter()
        .map(|m| m.path.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn qemu_against_a_chain_libfpl_holds() {
    let scene = Scene::new("qchain-acts");
    let mut wrong = Vec::new();
    for q in qemus() {
        let dir = scene.path().join(&q.version);
        std::fs::create_dir(&dir).expect("mkdir");
        std::env::set_current_dir(&dir).expect("cd");
        for act in acts() {
            for (col, want) in COLUMNS.iter().zip(act.want) {
                let what = format!(
                    "QEMU {} `{} {}` under {} on the chain of {}{}",
                    q.version,
                    act.tool,
                    act.args.join(" "),
                    col.mode.name(),
                    col.image,
                    match col.how {
                        How::Chain => "",
                        How::CAbi => " (C ABI)",
                        How::FileOnly => " (that file alone)",
                    }
                );
                fresh_chain(&q);
                let chain_before = backing_files("top.qcow2");
                let held = ChainHeld::take(col.image, col.mode, col.how);
                let mut c = q.cmd(act.tool);
                c.args(act.args);
                let out = run(c);
                let err = stderr(&out);
                let refused = |member: &str, message: &str| {
                    !out.status.success()
                        && err.contains(message)
                        && err.contains(&format!("Is another process using the image [{member}]?"))
                };
                match want {
                    Want::Ok if out.status.success() => {}
                    Want::No(member, message) if refused(member, message) => {
                        // Refused before it changed anything.
                        assert_eq!(backing_files("top.qcow2"), chain_before, "{what}");
                        // And admitted once libfpl lets go: the cell can fail.
                        held.release();
                        fresh_chain(&q);
                        let mut c = q.cmd(act.tool);
                        c.args(act.args);
                        let out = run(c);
                        assert!(
                            out.status.success(),
                            "{what}, after release: {}",
                            stderr(&out)
                        );
                    }
                    _ => wrong.push(format!(
                        "{what}: want {want:?}, got {}: {err}",
                        if out.status.success() {
                            "admitted"
                        } else {
                            "refused"
                        }
                    )),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---- QMP -------------------------------------------------------------------

/// A QMP connection to a VM.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    /// Events read while waiting for replies.
    events: Vec<serde_json::Value>,
    /// The VM and its log, for messages.
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
            events: Vec::new(),
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
                panic!("{}: QMP closed ({other:?}):\n{log}", self.what)
            }
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command: its `return`, or its error's `desc`.
    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use std::io::Write;
        let cmd = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{cmd}").expect("QMP write");
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
            self.events.push(v);
        }
    }

    /// Waits (at most 30 s) for event `name` whose data has `id`.
    fn event(&mut self, name: &str, id: &str) -> serde_json::Value {
        let matches = |v: &serde_json::Value| {
            v.get("event").and_then(|e| e.as_str()) == Some(name)
                && v.pointer("/data/device").and_then(|d| d.as_str()) == Some(id)
        };
        if let Some(i) = self.events.iter().position(matches) {
            return self.events.remove(i);
        }
        loop {
            let v = self.line();
            if matches(&v) {
                return v;
            }
            self.events.push(v);
        }
    }
}

/// A paused 7.2 VM with `args` and a QMP socket.
fn vm_with_qmp(q: &Qemu, args: Vec<String>) -> (Proc, Qmp) {
    let n = LOGS.load(std::sync::atomic::Ordering::Relaxed);
    let sock = std::env::current_dir()
        .expect("a working directory")
        .join(format!("qmp-{n}.sock"));
    let mut a = vm_args();
    a.extend(args);
    a.push("-qmp".to_owned());
    a.push(format!("unix:{},server=on,wait=off", sock.display()));
    let mut p = Proc::start(q, "qemu-system-x86_64", &a);
    let qmp = Qmp::connect(&sock, &mut p);
    (p, qmp)
}

/// A paused 7.2 VM with `args` that must be admitted: it answers QMP
/// (commands run once every drive is open).
fn running_vm(q: &Qemu, args: Vec<String>) -> Proc {
    vm_with_qmp(q, args).0
}

/// A paused 7.2 VM with `args` that must be refused: it exits, non-zero,
/// saying `message` and naming `member`.
fn assert_vm_refused(q: &Qemu, args: Vec<String>, member: &str, message: &str) {
    let mut a = vm_args();
    a.extend(args);
    let mut p = Proc::start(q, "qemu-system-x86_64", &a);
    let status = p.wait_exit();
    let log = p.log();
    assert!(!status.success(), "{}: started", p.what);
    assert!(log.contains(message), "{}: {log}", p.what);
    let hint = format!("Is another process using the image [{member}]?");
    assert!(log.contains(&hint), "{}: {log}", p.what);
}

fn drive(image: &str) -> Vec<String> {
    vec![
        "-drive".to_owned(),
        format!("file={image},if=virtio,format=qcow2"),
    ]
}

fn blockdev_vm(shape: Shape) -> Vec<String> {
    let mut a = blockdev_chain(shape);
    a.push("-device".to_owned());
    a.push("virtio-blk-pci,drive=fmt0".to_owned());
    a
}

// ---- item 1: block-commit in a VM under an external chain read lock ---------

#[test]
fn block_commit_is_refused_under_a_chain_read_lock() {
    let _scene = Scene::new("qchain-commit");
    let q = qemu72();
    fresh_chain(&q);
    let (mut vm, mut qmp) = vm_with_qmp(&q, blockdev_vm(Shape::RawBase));
    wait_bytes(
        &mut vm,
        &[("top.qcow2", RWX), ("mid.qcow2", RP), ("base.raw", RP)],
    );

    // The VM writes top: a read lock on the whole chain is refused there.
    let e = fpl::ChainLock::acquire(
        Path::new("top.qcow2"),
        req(Mode::Read),
        fpl::Options::default(),
    )
    .expect_err("read on a chain whose top a VM writes");
    let r = refusal(&e, Some((vm.pid(), "qemu-system-x86")), "read on top.qcow2");
    assert_eq!(
        (r.member.as_str(), r.message.as_str()),
        ("top.qcow2", SHARED_WRITE_LOCK)
    );

    let commit = serde_json::json!({"job-id": "c0", "device": "fmt0", "top-node": "fmt1", "base-node": "fmt2"});
    let active = serde_json::json!({"job-id": "c1", "device": "fmt0", "base-node": "fmt2"});
    let ours: &[u32] = &[100, 201, 202, 203];
    // The VM only reads base, and mid: a backup tool can hold either chain
    // stable after the VM started. On base.raw's chain (base alone), both
    // commits need write on base: refused at once with QEMU's message. On
    // mid.qcow2's chain, the intermediate commit's first test is mid's
    // (committing mid away makes mid refuse to share consistent read, which
    // libfpl uses there); the active commit tests base's write first.
    for (image, intermediate, whole) in [
        ("base.raw", WRITE_LOCK, WRITE_LOCK),
        ("mid.qcow2", SHARED_CONSISTENT_READ_LOCK, WRITE_LOCK),
    ] {
        let lock =
            fpl::ChainLock::acquire(Path::new(image), req(Mode::Read), fpl::Options::default())
                .unwrap_or_else(|e| panic!("read on {image} beside the VM: {e}"));
        let mid: &[u32] = if image == "mid.qcow2" { ours } else { RP };
        let locked = [("top.qcow2", RWX), ("mid.qcow2", mid), ("base.raw", ours)];
        for (f, want) in locked {
            assert_eq!(held(f), want, "{f} under read on {image}");
        }
        let e = qmp
            .execute("block-commit", commit.clone())
            .expect_err("block-commit under libfpl's read lock");
        assert_eq!(e, intermediate, "block-commit under read on {image}");
        let e = qmp
            .execute("block-commit", active.clone())
            .expect_err("active block-commit under libfpl's read lock");
        assert_eq!(e, whole, "active block-commit under read on {image}");
        // No job ran; the graph and every byte are as they were.
        let jobs = qmp
            .execute("query-block-jobs", serde_json::json!({}))
            .expect("query-block-jobs");
        assert_eq!(jobs, serde_json::json!([]), "jobs under read on {image}");
        let ran = qmp.events.iter().find(|e| {
            e.get("event").and_then(|v| v.as_str()) == Some("JOB_STATUS_CHANGE")
                && e.pointer("/data/status").and_then(|v| v.as_str()) == Some("running")
        });
        assert_eq!(ran, None, "a job ran under read on {image}");
        for (f, want) in locked {
            assert_eq!(
                held(f),
                want,
                "{f} after the refused commits under read on {image}"
            );
        }
        vm.assert_running();
        lock.release().expect("release");
    }

    // Without libfpl's lock the same commit runs to completion.
    qmp.execute("block-commit", commit)
        .unwrap_or_else(|e| panic!("block-commit without libfpl's lock: {e}"));
    let done = qmp.event("BLOCK_JOB_COMPLETED", "c0");
    assert!(done.pointer("/data/error").is_none(), "{done}");
    // This one did run (so the check for a running job above can fail).
    assert!(
        qmp.events.iter().any(|e| {
            e.pointer("/data/id").and_then(|v| v.as_str()) == Some("c0")
                && e.pointer("/data/status").and_then(|v| v.as_str()) == Some("running")
        }),
        "{:?}",
        qmp.events
    );
}

// ---- item 2: a VM against a chain libfpl writes; a sibling overlay --------

#[test]
fn a_vm_is_refused_a_chain_libfpl_writes_and_admitted_on_a_sibling() {
    let _scene = Scene::new("qchain-vm");
    let q = qemu72();
    fresh_chain(&q);
    // Siblings: another overlay on mid, and one on base.
    img(
        &q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "sib.qcow2",
        ],
    );
    img(
        &q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "sib0.qcow2",
        ],
    );
    let sib_admitted = |vm: &mut Proc, theirs: &[u32]| {
        wait_bytes(
            vm,
            &[
                ("sib.qcow2", RWX),
                ("mid.qcow2", &union(RP, theirs)),
                ("base.raw", &union(RP, theirs)),
            ],
        );
    };

    // QEMU's own answer: a VM on top refuses a second VM on top, with
    // -drive or a -blockdev chain, and admits one on each sibling.
    {
        let mut first = running_vm(&q, drive("top.qcow2"));
        wait_bytes(
            &mut first,
            &[("top.qcow2", RWX), ("mid.qcow2", RP), ("base.raw", RP)],
        );
        assert_vm_refused(&q, drive("top.qcow2"), "top.qcow2", WRITE_LOCK);
        assert_vm_refused(&q, blockdev_vm(Shape::RawBase), "top.qcow2", WRITE_LOCK);
        let mut sib = running_vm(&q, drive("sib.qcow2"));
        sib_admitted(&mut sib, RP);
        let mut sib0 = running_vm(&q, drive("sib0.qcow2"));
        wait_bytes(&mut sib0, &[("sib0.qcow2", RWX), ("base.raw", RP)]);
        first.assert_running();
        sib.assert_running();
    }

    // libfpl writing the chain of top answers alike.
    let lock = fpl::ChainLock::acquire(
        Path::new("top.qcow2"),
        req(Mode::Write),
        fpl::Options::default(),
    )
    .unwrap_or_else(|e| panic!("write on top.qcow2: {e}"));
    let ours_top: &[u32] = &[100, 101, 103, 201, 202, 203];
    let ours: &[u32] = &[100, 201, 202, 203];
    for (f, want) in [
        ("top.qcow2", ours_top),
        ("mid.qcow2", ours),
        ("base.raw", ours),
    ] {
        assert_eq!(held(f), want, "{f}");
    }
    assert_vm_refused(&q, drive("top.qcow2"), "top.qcow2", WRITE_LOCK);
    assert_vm_refused(&q, blockdev_vm(Shape::RawBase), "top.qcow2", WRITE_LOCK);
    {
        let mut sib = running_vm(&q, drive("sib.qcow2"));
        sib_admitted(&mut sib, ours);
        let mut sib0 = running_vm(&q, drive("sib0.qcow2"));
        wait_bytes(&mut sib0, &[("sib0.qcow2", RWX), ("base.raw", ours)]);
        sib.assert_running();
    }
    // Released: a VM on top starts (the refusal above can fail).
    lock.release().expect("release");
    let mut vm = running_vm(&q, drive("top.qcow2"));
    wait_bytes(
        &mut vm,
        &[("top.qcow2", RWX), ("mid.qcow2", RP), ("base.raw", RP)],
    );
}

// ---- item 4, continued: QEMU holding a lower member ------------------------

/// Starts a 7.2 VM with `args` and waits until it is either running
/// (admitted: None) or has exited (refused: its log). Killed either way.
/// Running means QMP answered a command: the greeting comes from the
/// monitor's own thread at once, but commands run in the main loop, which
/// starts once every drive is open. (Holding bytes proves nothing: QEMU
/// locks before it tests, so a refused VM holds its bytes for a moment.)
fn vm_outcome(q: &Qemu, args: Vec<String>) -> Option<String> {
    use std::io::{BufRead, Write};
    let n = LOGS.load(std::sync::atomic::Ordering::Relaxed);
    let sock = std::env::current_dir()
        .expect("a working directory")
        .join(format!("probe-{n}.sock"));
    let mut a = vm_args();
    a.extend(args);
    a.push("-qmp".to_owned());
    a.push(format!("unix:{},server=on,wait=off", sock.display()));
    let mut p = Proc::start(q, "qemu-system-x86_64", &a);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: neither ran nor exited",
            p.what
        );
        if let Ok(Some(_)) = p.child.try_wait() {
            return Some(p.log());
        }
        let Ok(stream) = std::os::unix::net::UnixStream::connect(&sock) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        let mut writer = stream.try_clone().expect("socket clone");
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = writeln!(writer, "{{\"execute\":\"qmp_capabilities\"}}");
        line.clear();
        let _ = reader.read_line(&mut line);
        if line.contains("\"return\"") {
            return None;
        }
        // Closed without a greeting: the VM is on its way out.
        p.wait_exit();
        return Some(p.log());
    }
}

/// QEMU holding something below the image's top.
struct Lower {
    what: &'static str,
    tool: &'static str,
    args: &'static [&'static str],
    /// The chain the presets are taken on.
    shape: Shape,
    /// What the holder holds on each member of `shape` (measured).
    held: [&'static [u32]; 3],
    /// qemu-io shares write on a raw backing file and a data file; libfpl's
    /// presets (like a VM's disk) do not: where the holder writes such a
    /// file, qemu-io's stand-ins are admitted and libfpl is refused.
    tools_share_write: bool,
}

fn lowers() -> Vec<Lower> {
    vec![
        Lower {
            what: "qemu-io writing base.raw",
            tool: "qemu-io",
            args: &["-f", "raw", "base.raw"],
            shape: Shape::RawBase,
            held: [NONE, NONE, &[100, 101]],
            tools_share_write: true,
        },
        Lower {
            what: "qemu-io writing mid.qcow2",
            tool: "qemu-io",
            args: &["-f", "qcow2", "mid.qcow2"],
            shape: Shape::RawBase,
            held: [NONE, RWX, R],
            tools_share_write: false,
        },
        Lower {
            what: "qemu-io -r reading mid.qcow2",
            tool: "qemu-io",
            args: &["-r", "-f", "qcow2", "mid.qcow2"],
            shape: Shape::RawBase,
            held: [NONE, RP, R],
            tools_share_write: false,
        },
        Lower {
            what: "a VM on a sibling overlay of mid.qcow2",
            tool: "qemu-system-x86_64",
            args: &[
                "-machine",
                "q35,accel=tcg",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-drive",
                "file=sib.qcow2,if=virtio,format=qcow2",
            ],
            shape: Shape::RawBase,
            held: [NONE, RP, RP],
            tools_share_write: false,
        },
        Lower {
            what: "qemu-io writing the data file d.raw",
            tool: "qemu-io",
            args: &["-f", "raw", "d.raw"],
            shape: Shape::DataFile,
            held: [NONE, &[100, 101], NONE],
            tools_share_write: true,
        },
    ]
}

#[test]
fn presets_against_qemu_on_lower_members() {
    let _scene = Scene::new("qchain-lower");
    let q = qemu72();
    create_chains(&q);
    img(
        &q,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "sib.qcow2",
        ],
    );
    for lower in lowers() {
        let shape = lower.shape;
        let members = resolve(shape);
        let args: Vec<String> = lower.args.iter().map(|a| (*a).to_owned()).collect();
        let mut p = Proc::start(&q, lower.tool, &args);
        let comm = if lower.tool == "qemu-io" {
            "qemu-io"
        } else {
            "qemu-system-x86"
        };
        let want_held: Vec<(&str, &[u32])> =
            shape.members().iter().copied().zip(lower.held).collect();
        wait_bytes(&mut p, &want_held);
        let others: Vec<Vec<u32>> = lower.held[..members.len()]
            .iter()
            .map(|h| h.to_vec())
            .collect();
        let top = shape.top();
        for mode in Mode::ALL {
            let what = format!("{} under {}", mode.name(), lower.what);
            let want = predict(mode, &members, &others);
            let named = Some((p.pid(), comm));
            let got = fpl::ChainLock::check(Path::new(top), req(mode), fpl::Options::default())
                .err()
                .map(|e| refusal(&e, named, &what));
            assert_eq!(got, want, "{what}: check");
            let got = fpl::ChainLock::acquire(Path::new(top), req(mode), fpl::Options::default())
                .map(|l| l.release().expect("release"))
                .err()
                .map(|e| refusal(&e, named, &what));
            assert_eq!(got, want, "{what}: acquire");
            for (f, theirs) in &want_held {
                assert_eq!(&held(f), theirs, "{what}: {f} afterwards");
            }
            println!(
                "{what}: {}",
                want.as_ref().map_or("admitted".to_owned(), |r| format!(
                    "{} on {}",
                    r.message, r.member
                ))
            );

            // A VM's disk is the stand-in that protects like the presets.
            let vm = match mode {
                Mode::Read => Some(",readonly=on"),
                Mode::Write => Some(""),
                _ => None,
            };
            if let Some(opts) = vm {
                let drive = vec![
                    "-drive".to_owned(),
                    format!("file={top},if=virtio,format=qcow2{opts}"),
                ];
                match (&want, vm_outcome(&q, drive)) {
                    (None, None) => {}
                    (Some(r), Some(log)) => {
                        assert!(log.contains(&r.message), "{what}: the VM said {log}");
                        let hint = format!("Is another process using the image [{}]?", r.member);
                        assert!(log.contains(&hint), "{what}: the VM said {log}");
                    }
                    (want, got) => panic!("{what}: libfpl {want:?}, the VM {got:?}"),
                }
            }
            // qemu-io's stand-ins agree, except where they share write.
            if let Some(refused) = qemu_tries(&q, mode, top) {
                let differs = lower.tools_share_write && matches!(mode, Mode::Read | Mode::Write);
                match (&want, refused) {
                    (None, None) => {}
                    (Some(_), None) if differs => {}
                    (Some(r), Some(err)) if !differs => {
                        assert!(err.contains(&r.message), "{what}: qemu-io said {err}");
                        let hint = format!("Is another process using the image [{}]?", r.member);
                        assert!(err.contains(&hint), "{what}: qemu-io said {err}");
                    }
                    (want, got) => panic!("{what}: libfpl {want:?}, qemu-io {got:?}"),
                }
            }
            p.assert_running();
        }
    }
}

// ---- item 3, continued: short-lived qemu-img commands ----------------------

/// The bytes a short-lived command holds, seen by slowing each of its
/// `pread64`/`pwrite64` by 50 ms under strace (as CHAINS.md was measured)
/// and watching every member meanwhile: the distinct states seen, each a
/// list of (bytes, holders' names) per file.
fn watch(q: &Qemu, args: &[&str], files: &[&str]) -> Vec<Vec<(Vec<u32>, Vec<String>)>> {
    let strace = Path::new("/usr/bin/strace");
    assert!(
        strace.exists(),
        "strace is missing: install it (apt-get install strace); the test slows short-lived \
         qemu-img commands with it to watch their locks"
    );
    let mut cmd = Command::new(strace);
    cmd.args([
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=pread64,pwrite64",
        "-e",
        "inject=pread64,pwrite64:delay_enter=50000",
    ])
    .arg(q.tool("qemu-img"))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Killed and reaped however the test ends.
    let mut kids = common::Kids(vec![child]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut states: Vec<Vec<(Vec<u32>, Vec<String>)>> = Vec::new();
    let status = loop {
        let now: Vec<(Vec<u32>, Vec<String>)> = fpl::query::query_many(files, true)
            .into_iter()
            .map(|r| {
                let s = r.expect("query");
                let names = s.holders.iter().map(|h| h.name.clone()).collect();
                (bytes_of(s.held), names)
            })
            .collect();
        if states.last() != Some(&now) {
            states.push(now);
        }
        if let Some(status) = kids.0[0].try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "qemu-img {} did not finish",
            args.join(" ")
        );
    };
    let mut err = String::new();
    if let Some(mut e) = kids.0[0].stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "qemu-img {}: {err}", args.join(" "));
    states
}

/// A qemu-img command and the bytes it holds on each member of a shape
/// while it works.
struct Short {
    shape: Shape,
    args: &'static [&'static str],
    want: &'static [&'static [u32]],
}

fn shorts() -> Vec<Short> {
    use Shape::*;
    const INTO: &[u32] = &[100, 200, 201, 203];
    vec![
        Short {
            shape: RawBase,
            args: &["check", "top.qcow2"],
            want: &[RP, RP, R],
        },
        Short {
            shape: RawBase,
            args: &["map", "top.qcow2"],
            want: &[RP, RP, R],
        },
        Short {
            shape: RawBase,
            args: &["compare", "top.qcow2", "other.raw"],
            want: &[RP, RP, R],
        },
        Short {
            shape: RawBase,
            args: &["convert", "-O", "raw", "top.qcow2", "out.raw"],
            want: &[RP, RP, RP],
        },
        Short {
            shape: RawBase,
            args: &["info", "top.qcow2"],
            want: &[&[201, 203], NONE, NONE],
        },
        Short {
            shape: RawBase,
            args: &["info", "-U", "top.qcow2"],
            want: &[NONE, NONE, NONE],
        },
        Short {
            shape: RawBase,
            args: &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "top.qcow2",
                "-F",
                "qcow2",
                "ovl.qcow2",
            ],
            want: &[NONE, NONE, NONE],
        },
        // CHAINS.md §1's row is shifted by a column: measured, top RWX,
        // mid 100,200,201,203, a raw base reopened read-write 101,203.
        Short {
            shape: RawBase,
            args: &["commit", "-b", "base.raw", "top.qcow2"],
            want: &[RWX, INTO, &[101, 203]],
        },
        Short {
            shape: Qcow2Base,
            args: &["check", "top2.qcow2"],
            want: &[RP, RP, RP],
        },
        Short {
            shape: Qcow2Base,
            args: &["convert", "-O", "raw", "top2.qcow2", "out.raw"],
            want: &[RP, RP, RP],
        },
        // A qcow2 base keeps the qcow2 rule when reopened read-write.
        Short {
            shape: Qcow2Base,
            args: &["commit", "-b", "base.qcow2", "top2.qcow2"],
            want: &[RWX, INTO, RWX],
        },
        Short {
            shape: DataFile,
            args: &["check", "x.qcow2"],
            want: &[RP, DATA_R],
        },
        Short {
            shape: DataFile,
            args: &["convert", "-O", "raw", "x.qcow2", "out.raw"],
            want: &[RP, RP],
        },
        Short {
            shape: DataFile,
            args: &["info", "x.qcow2"],
            want: &[&[201, 203], NONE],
        },
    ]
}

#[test]
fn short_lived_qemu_img_commands_are_seen_member_by_member() {
    let scene = Scene::new("qchain-img");
    for q in qemus() {
        let dir = scene.path().join(&q.version);
        std::fs::create_dir(&dir).expect("mkdir");
        std::env::set_current_dir(&dir).expect("cd");
        create_chains(&q);
        img(&q, &["create", "-q", "-f", "raw", "other.raw", "64M"]);
        for s in shorts() {
            let files = s.shape.members();
            let what = format!("QEMU {} qemu-img {}", q.version, s.args.join(" "));
            let states = watch(&q, s.args, files);
            let want: Vec<(Vec<u32>, Vec<String>)> = s
                .want
                .iter()
                .map(|w| {
                    let names = if w.is_empty() {
                        vec![]
                    } else {
                        vec!["qemu-img".to_owned()]
                    };
                    (w.to_vec(), names)
                })
                .collect();
            if s.want.iter().all(|w| w.is_empty()) {
                // It never holds anything.
                assert!(states.iter().all(|st| *st == want), "{what}: {states:?}");
            } else {
                assert!(
                    states.contains(&want),
                    "{what}: never held {want:?} on {files:?}; seen {states:?}"
                );
            }
            for f in files {
                assert_eq!(held(f), NONE, "{what}: {f} afterwards");
            }
            let _ = std::fs::remove_file("out.raw");
            let _ = std::fs::remove_file("ovl.qcow2");
        }
    }
}

// ---- the data file: conflicts name it ---------------------------------------

/// Runs `tool args` and checks the outcome: admitted, or refused with
/// `message` naming `member`.
fn assert_qemu(q: &Qemu, tool: &str, args: &[&str], want: Want, what: &str) {
    let mut c = q.cmd(tool);
    c.args(args);
    let out = run(c);
    let err = stderr(&out);
    let what = format!("QEMU {} `{tool} {}` {what}", q.version, args.join(" "));
    match want {
        Want::Ok => assert!(out.status.success(), "{what}: refused: {err}"),
        Want::No(member, message) => {
            assert!(!out.status.success(), "{what}: admitted");
            assert!(err.contains(message), "{what}: {err}");
            let hint = format!("Is another process using the image [{member}]?");
            assert!(err.contains(&hint), "{what}: {err}");
        }
    }
}

#[test]
fn data_file_conflicts_name_the_data_file() {
    let scene = Scene::new("qchain-data");
    let write_d: &[&str] = &["-f", "raw", "-c", "write 0 512", "d.raw"];
    let write_x: &[&str] = &["-f", "qcow2", "-c", "write 0 512", "x.qcow2"];
    let read_x: &[&str] = &["-r", "-f", "qcow2", "-c", "read 0 512", "x.qcow2"];
    for q in qemus() {
        let dir = scene.path().join(&q.version);
        std::fs::create_dir(&dir).expect("mkdir");
        std::env::set_current_dir(&dir).expect("cd");
        create_chains(&q);
        // read on x.qcow2's chain holds the data file too.
        let held_x = ChainHeld::take("x.qcow2", Mode::Read, How::Chain);
        let under = "under read on x.qcow2's chain";
        assert_qemu(&q, "qemu-io", write_d, Want::No("d.raw", WRITE_LOCK), under);
        assert_qemu(
            &q,
            "qemu-io",
            write_x,
            Want::No("x.qcow2", WRITE_LOCK),
            under,
        );
        assert_qemu(&q, "qemu-io", read_x, Want::Ok, under);
        held_x.release();
        // read on d.raw alone: writing x.qcow2 is refused on its data file.
        let held_d = ChainHeld::take("d.raw", Mode::Read, How::Chain);
        let under = "under read on d.raw";
        assert_qemu(&q, "qemu-io", write_x, Want::No("d.raw", WRITE_LOCK), under);
        assert_qemu(&q, "qemu-io", read_x, Want::Ok, under);
        if q.has_vm() {
            assert_vm_refused(&q, drive("x.qcow2"), "d.raw", WRITE_LOCK);
        }
        held_d.release();
        // write on x.qcow2's chain: a VM on x is refused on x itself.
        if q.has_vm() {
            let held_w = ChainHeld::take("x.qcow2", Mode::Write, How::Chain);
            assert_vm_refused(&q, drive("x.qcow2"), "x.qcow2", WRITE_LOCK);
            held_w.release();
            let mut vm = running_vm(&q, drive("x.qcow2"));
            wait_bytes(&mut vm, &[("x.qcow2", RWX), ("d.raw", RWX)]);
        }
        // Released: every refused command runs.
        assert_qemu(&q, "qemu-io", write_d, Want::Ok, "after release");
        assert_qemu(&q, "qemu-io", write_x, Want::Ok, "after release");
    }
}

/// A VM started as libvirt starts it (`-name guest=vm01,debug-threads=on`)
/// is named by its guest in `fpl status`, not only as `qemu-system-x86`,
/// in text (`(pid N, fd M, guest vm01)`) and JSON (`"guest": "vm01"`); the
/// older `-name web,process=...` form gives `web`; qemu-io, with no guest,
/// gets `"guest": null`. Its user is shown only when it is not fpl's own.
#[test]
fn fpl_status_names_a_vm_by_its_guest() {
    let _scene = Scene::new("qchain-guest");
    let q = qemu72();
    img(&q, &["create", "-q", "-f", "raw", "a.raw", "1M"]);
    img(&q, &["create", "-q", "-f", "raw", "b.raw", "1M"]);
    let drive = |image: &str| {
        vec![
            "-drive".to_owned(),
            format!("file={image},if=virtio,format=raw"),
        ]
    };
    let mut a = vec!["-name".to_owned(), "guest=vm01,debug-threads=on".to_owned()];
    a.extend(drive("a.raw"));
    let mut vm1 = running_vm(&q, a);
    let mut b = vec!["-name".to_owned(), "web,process=qemu-web".to_owned()];
    b.extend(drive("b.raw"));
    let mut vm2 = running_vm(&q, b);
    wait_bytes(&mut vm1, &[("a.raw", &[100, 101, 201])]);
    wait_bytes(&mut vm2, &[("b.raw", &[100, 101, 201])]);

    let out = run_ok({
        let mut c = Command::new(env!("CARGO_BIN_EXE_fpl"));
        c.args(["status", "a.raw", "b.raw"]);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with(&format!(
            "a.raw: in use by qemu-system-x86 (pid {}, fd ",
            vm1.pid()
        )) && l.contains(", guest vm01): uses ")),
        "{text}"
    );
    // process=qemu-web renames the process (its comm) too.
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains(&format!("(pid {}, fd ", vm2.pid()))
                && l.contains(", guest web): uses ")),
        "{text}"
    );
    assert!(!text.contains("user "), "root's VMs, root's fpl: {text}");

    let out = run_ok({
        let mut c = Command::new(env!("CARGO_BIN_EXE_fpl"));
        c.args(["status", "--json", "a.raw"]);
        c
    });
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let h = &v[0]["holders"][0];
    assert_eq!(h["guest"], "vm01", "{v}");
    assert_eq!(h["uid"], 0, "{v}");
    assert_eq!(h["user"], "root", "{v}");
    vm1.assert_running();
    vm2.assert_running();
}
