//! CHAINS.md §3 as tests: QEMU 7.2 block jobs over QMP, and what every file
//! of the chain holds at each phase.
//!
//! A 7.2 VM (`-machine q35,accel=tcg -nodefaults -display none`, paused,
//! no guest) opens a libvirt-style `-blockdev` chain `base.raw <- mid.qcow2
//! <- top.qcow2` (node names `fmt0`/`file0` for the top ... `fmt2`/`file2`
//! for the base) with a virtio-blk device on the top; each test's `_qsd`
//! twin runs the same job in qemu-storage-daemon 10.0 with the same nodes,
//! the top exported writable over NBD (a user that shares write, so the raw
//! base holds R at rest, not RP). Each test drives one job and, at each
//! phase, reads every file's bytes, holders and openers with
//! `fpl::query_many_with` (openers on), and `fpl status --chain --json
//! top.qcow2` through the built `fpl` binary, asserts the row, and tries
//! QEMU 10.0's `qemu-io` write on the raw base (admitted exactly when the
//! base holds no 201):
//!
//! - `block_commit_mid_into_base`: running, done, mid deleted;
//! - `active_commit_running_ready_and_after_pivot`: running, READY, pivot,
//!   top and mid deleted; the raw base is written by qemu-io while the
//!   job runs (write shared);
//! - `block_stream_with_base`, `block_stream_without_base`: running, done,
//!   the dropped nodes deleted (without base, the base is left open with no
//!   lock: an opener, and qemu-io writes it);
//! - `drive_mirror_running_ready_and_after_pivot`,
//!   `blockdev_mirror_running_ready_and_after_pivot`: the same for mirrors
//!   (after the pivot the base is an opener);
//! - `blockdev_backup_changes_nothing_but_the_target` (its qsd twin:
//!   `blockdev_backup_protects_a_raw_base_while_it_runs_qsd`);
//! - `blockdev_snapshot_sync_reopens_the_top_read_only`;
//! - `commits_into_a_qcow2_base`: base.qcow2 holds RWX during both
//!   commits (running; READY for the active one);
//! - `other_holders_refuse_commits_with_qemus_message`: 100 on mid refuses
//!   both commits with shared "consistent read"; 203 alone on a qcow2 base
//!   refuses active commit with "resize", before the job is even created;
//! - `a_read_hold_on_the_base_refuses_block_commit_and_nothing_else` (VM
//!   only, running): a libfpl `read` hold (ChainLock) on base.raw taken
//!   after the VM started: both commits fail with QEMU's message, no job
//!   runs, the VM keeps running; stream, backup, mirror (to READY) and
//!   snapshot still run;
//!   without the hold the commit succeeds.
//!
//! Jobs start with `speed: 1` (one chunk, then a long sleep) so that the
//! running phase stays observable, and go on with `block-job-set-speed`.
//! Where QEMU measured otherwise than CHAINS.md, the test asserts what QEMU
//! does and says so next to the expectation.
//!
//! Every file is named relative to the test's folder, which is the working
//! directory of each QEMU process and of `fpl`; the test itself uses
//! absolute paths, so the tests can run in parallel.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use fpl::query::Inspect;
use fpl::{Mode, PermSet, Request};
use serde_json::{json, Value};

// ---- tools -------------------------------------------------------------------

/// QEMU 7.2's binaries (scripts/fetch-qemu-7.2); fails saying what to do.
fn qemu72_bin() -> PathBuf {
    let dirs = common::qemu_dirs();
    let dir = dirs
        .split(':')
        .filter_map(|kv| kv.split_once('='))
        .find(|(v, _)| *v == "7.2")
        .map(|(_, d)| PathBuf::from(d))
        .expect("QEMU 7.2: run scripts/fetch-qemu-7.2 (needs root and Debian's registry)");
    for tool in ["qemu-img", "qemu-system-x86_64"] {
        assert!(
            dir.join(tool).exists(),
            "{tool} of QEMU 7.2 is missing in {dir:?}: scripts/fetch-qemu-7.2 unpacks it \
             (never apt-get install a QEMU package: it replaces the machine's QEMU 10)"
        );
    }
    dir
}

/// QEMU 10.0's qemu-storage-daemon, preinstalled.
fn qsd10() -> PathBuf {
    let p = PathBuf::from("/usr/bin/qemu-storage-daemon");
    assert!(
        p.exists(),
        "/usr/bin/qemu-storage-daemon (QEMU 10.0) is missing: it comes preinstalled with the \
         machine's qemu-utils 10.0.2; never apt-get install a QEMU package"
    );
    p
}

/// QEMU 10.0's qemu-io, preinstalled: the third process that writes.
fn qemu_io10() -> PathBuf {
    let p = PathBuf::from("/usr/bin/qemu-io");
    assert!(
        p.exists(),
        "/usr/bin/qemu-io (QEMU 10.0) is missing: it comes preinstalled with the machine's \
         qemu-utils 10.0.2; never apt-get install a QEMU package"
    );
    p
}

/// Runs a command to its end in `dir`, killed (and the test failed) after 60 s.
fn run(mut cmd: Command, dir: &Path) -> Output {
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Exited: its pipes are at their end (the outputs here are small).
    let mut out = Output {
        status: child.0.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut s) = child.0.stdout.take() {
        let _ = std::io::Read::read_to_end(&mut s, &mut out.stdout);
    }
    if let Some(mut s) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_end(&mut s, &mut out.stderr);
    }
    out
}

/// A child killed and reaped however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: Command, dir: &Path) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd, dir);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---- the scene -----------------------------------------------------------------

/// A test's folder, the chain in it, and its VM.
struct Scene {
    dir: TempDir,
    bin: PathBuf,
    /// The base's file name and format: base.raw (raw) or base.qcow2.
    base: &'static str,
    base_format: &'static str,
}

impl Scene {
    /// A fresh chain with data in every layer (8 MiB each, at different
    /// offsets), so that every job has clusters to copy.
    fn new(tag: &str) -> Scene {
        Scene::with_base(tag, "base.raw", "raw")
    }

    /// The same chain on a qcow2 base, `base.qcow2 <- mid.qcow2 <- top.qcow2`.
    fn qcow2_base(tag: &str) -> Scene {
        Scene::with_base(tag, "base.qcow2", "qcow2")
    }

    fn with_base(tag: &str, base: &'static str, base_format: &'static str) -> Scene {
        let scene = Scene {
            dir: TempDir::new(tag),
            bin: qemu72_bin(),
            base,
            base_format,
        };
        scene.img(&["create", "-q", "-f", base_format, base, "64M"]);
        scene.img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base,
            "-F",
            base_format,
            "mid.qcow2",
        ]);
        scene.img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ]);
        for (fmt, file, pattern) in [
            (base_format, base, "write -P 1 0 8M"),
            ("qcow2", "mid.qcow2", "write -P 2 8M 8M"),
            ("qcow2", "top.qcow2", "write -P 3 16M 8M"),
        ] {
            let mut c = Command::new(scene.bin.join("qemu-io"));
            c.args(["-f", fmt, "-c", pattern, file]);
            run_ok(c, scene.dir.path());
        }
        scene
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn img(&self, args: &[&str]) {
        let mut c = Command::new(self.bin.join("qemu-img"));
        c.args(args);
        run_ok(c, self.dir.path());
    }

    /// The host on the chain, its QMP connected: a 7.2 VM, paused (`-S`:
    /// jobs run in a paused VM as in a running one), or qemu-storage-daemon
    /// 10.0 exporting the top writable over NBD.
    fn vm(&self, host: Host) -> Vm {
        let (dash, mut args): (&str, Vec<String>) = match host {
            Host::Vm => (
                "-blockdev",
                [
                    "-machine",
                    "q35,accel=tcg",
                    "-nodefaults",
                    "-display",
                    "none",
                    "-S",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            Host::Qsd => ("--blockdev", Vec::new()),
        };
        for (i, (file, format)) in [
            ("top.qcow2", "qcow2"),
            ("mid.qcow2", "qcow2"),
            (self.base, self.base_format),
        ]
        .iter()
        .enumerate()
        .rev()
        {
            // As libvirt does: storage nodes auto-read-only (a job reopens
            // them read-write), backing format nodes read-only.
            let ro = if i == 0 { "" } else { ",read-only=on" };
            let backing = if i < 2 {
                format!(",backing=fmt{}", i + 1)
            } else {
                String::new()
            };
            args.push(dash.to_owned());
            args.push(format!(
                "driver=file,node-name=file{i},filename={file},auto-read-only=on"
            ));
            args.push(dash.to_owned());
            args.push(format!(
                "driver={format},node-name=fmt{i},file=file{i}{ro}{backing}"
            ));
        }
        let sock = self.path("qmp.sock");
        let tool = match host {
            Host::Vm => {
                args.extend(["-device", "virtio-blk-pci,drive=fmt0", "-qmp"].map(str::to_owned));
                args.push(format!("unix:{},server=on,wait=off", sock.display()));
                self.bin.join("qemu-system-x86_64")
            }
            Host::Qsd => {
                args.push("--nbd-server".to_owned());
                args.push(format!(
                    "addr.type=unix,addr.path={}",
                    self.path("nbd.sock").display()
                ));
                args.extend(
                    [
                        "--export",
                        "type=nbd,id=e0,node-name=fmt0,writable=on",
                        "--chardev",
                    ]
                    .map(str::to_owned),
                );
                args.push(format!(
                    "socket,id=m0,path={},server=on,wait=off",
                    sock.display()
                ));
                args.extend(["--monitor", "chardev=m0"].map(str::to_owned));
                qsd10()
            }
        };
        let log = self.path("host.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(tool);
        cmd.args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut vm = Vm {
            child: Reaped(child),
            log,
            qmp: None,
        };
        vm.connect(&sock);
        vm
    }
}

/// Who runs the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    /// QEMU 7.2's qemu-system-x86_64, virtio-blk on the top: a user that
    /// does not share write.
    Vm,
    /// QEMU 10.0's qemu-storage-daemon exporting the top writable over
    /// NBD: a user that shares write, so a raw base holds only R at rest.
    Qsd,
}

impl Host {
    /// The VM's expectation, or qemu-storage-daemon's.
    fn pick(self, vm: Want, qsd: Want) -> Want {
        match self {
            Host::Vm => vm,
            Host::Qsd => qsd,
        }
    }
}

// ---- the VM and QMP -------------------------------------------------------------

struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    /// Events read while waiting for something else.
    events: Vec<Value>,
}

/// A VM, killed and reaped however the test ends.
struct Vm {
    child: Reaped,
    log: PathBuf,
    qmp: Option<Qmp>,
}

impl Vm {
    fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.0.try_wait() {
            panic!("the VM exited ({status}):\n{}", self.log());
        }
    }

    /// Connects (retrying while QEMU starts, at most 30 s).
    fn connect(&mut self, sock: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) => {
                    self.assert_alive();
                    assert!(Instant::now() < deadline, "QMP {sock:?}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        // Every read ends within 30 s: no wait hangs the test.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        self.qmp = Some(Qmp {
            writer: stream.try_clone().expect("socket clone"),
            reader: std::io::BufReader::new(stream),
            events: Vec::new(),
        });
        let greeting = self.line();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        self.ok("qmp_capabilities", json!({}));
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        let read = self
            .qmp
            .as_mut()
            .expect("connected")
            .reader
            .read_line(&mut line);
        if !matches!(read, Ok(n) if n > 0) {
            // Most likely the VM exited: let it finish its message.
            std::thread::sleep(Duration::from_millis(200));
            panic!("QMP closed ({read:?}):\n{}", self.log());
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command: its `return`, or its error's `desc`.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        use std::io::Write;
        let cmd = json!({"execute": command, "arguments": arguments});
        let qmp = self.qmp.as_mut().expect("connected");
        writeln!(qmp.writer, "{cmd}").expect("QMP write");
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e["desc"].as_str().unwrap_or_default().to_owned());
            }
            self.qmp.as_mut().expect("connected").events.push(v);
        }
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let what = format!("{command} {arguments}");
        self.execute(command, arguments)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.log()))
    }

    /// Waits (at most 60 s in all) for event `name` of job `id`.
    fn event(&mut self, name: &str, id: &str) -> Value {
        let matches = |v: &Value| v["event"] == name && v["data"]["device"] == id;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = &mut self.qmp.as_mut().expect("connected").events;
            if let Some(i) = events.iter().position(matches) {
                return events.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no {name} for job {id} within 60 s; events: {events:?}"
            );
            let v = self.line();
            self.qmp.as_mut().expect("connected").events.push(v);
        }
    }

    /// Whether any JOB_STATUS_CHANGE so far said `status` for some job.
    fn job_was(&self, status: &str) -> bool {
        self.qmp
            .as_ref()
            .expect("connected")
            .events
            .iter()
            .any(|e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["status"] == status)
    }

    /// The statuses JOB_STATUS_CHANGE gave job `id` so far, in order.
    fn job_statuses(&self, id: &str) -> Vec<String> {
        let events = &self.qmp.as_ref().expect("connected").events;
        events
            .iter()
            .filter(|e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["id"] == id)
            .map(|e| e["data"]["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `query-block-jobs`: (id, status, ready) of each job.
    fn jobs(&mut self) -> Vec<(String, String, bool)> {
        let jobs = self.ok("query-block-jobs", json!({}));
        jobs.as_array()
            .expect("an array")
            .iter()
            .map(|j| {
                (
                    j["device"].as_str().unwrap_or_default().to_owned(),
                    j["status"].as_str().unwrap_or_default().to_owned(),
                    j["ready"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// The job is still running and not READY: the phase is "running".
    fn assert_running_job(&mut self, id: &str) {
        let jobs = self.jobs();
        assert_eq!(
            jobs,
            [(id.to_owned(), "running".to_owned(), false)],
            "job {id} should still be running (speed 1)"
        );
    }

    /// Lets job `id` go at full speed.
    fn unthrottle(&mut self, id: &str) {
        self.ok("block-job-set-speed", json!({"device": id, "speed": 0}));
    }

    /// Waits for job `id` to complete without error.
    fn completed(&mut self, id: &str) {
        let done = self.event("BLOCK_JOB_COMPLETED", id);
        assert!(done["data"].get("error").is_none(), "job {id}: {done}");
    }

    /// Deletes nodes (format node first, then its file node).
    fn del(&mut self, nodes: &[&str]) {
        for n in nodes {
            self.ok("blockdev-del", json!({"node-name": n}));
        }
    }

    /// `blockdev-add` of an existing qcow2 target, nodes `tfile` and `tgt`.
    fn add_target(&mut self, file: &str) {
        self.ok(
            "blockdev-add",
            json!({"driver": "file", "node-name": "tfile", "filename": file}),
        );
        self.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "tgt", "file": "tfile"}),
        );
    }
}

// ---- what each file holds ------------------------------------------------------

/// CHAINS.md's notation.
/// A raw base under a user that shares write (the NBD export).
const R: &[u32] = &[100];
const RP: &[u32] = &[100, 201, 203];
const RWX: &[u32] = &[100, 101, 103, 201, 203];
/// A commit's intermediate node: consistent read unshared (200).
const COMMIT_MID: &[u32] = &[100, 200, 201, 203];
/// A mirror's target while the job runs.
const MIRROR_TARGET: &[u32] = &[100, 101, 103, 200, 201, 203];

/// What one file shows at a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The VM holds exactly these bytes; nobody else holds any.
    Held(&'static [u32]),
    /// The VM has the file open and holds none of its bytes: an opener.
    Open,
    /// Nobody has it open.
    Closed,
    /// The VM holds `vm` and this test process more: `all` in all; both
    /// are listed as holders.
    Beside {
        vm: &'static [u32],
        all: &'static [u32],
    },
}
use Want::{Beside, Closed, Held, Open};

const ALL_BYTES: [u32; 11] = [0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204];

fn bytes_of(held: fpl::Held) -> Vec<u32> {
    ALL_BYTES.into_iter().filter(|&b| held.covers(b)).collect()
}

/// Where one file's view differs from `want` (fpl::query, openers on).
fn query_wrong(status: &fpl::Status, want: Want, vm: i32) -> Option<String> {
    let bytes = bytes_of(status.held);
    let holders: Vec<(i32, bool, Vec<u32>)> = status
        .holders
        .iter()
        .map(|h| (h.pid, h.no_locks, bytes_of(h.held)))
        .collect();
    let ok = match want {
        Held(b) => {
            bytes == b
                && !holders.is_empty()
                && holders
                    .iter()
                    .all(|(pid, no_locks, _)| *pid == vm && !no_locks)
        }
        Open => {
            bytes.is_empty()
                && !holders.is_empty()
                && holders
                    .iter()
                    .all(|(pid, no_locks, b)| *pid == vm && *no_locks && b.is_empty())
        }
        Closed => bytes.is_empty() && holders.is_empty(),
        Beside { vm: v, all } => {
            let me = std::process::id() as i32;
            bytes == all
                && holders.iter().any(|(pid, _, _)| *pid == me)
                && holders.iter().any(|(pid, _, _)| *pid == vm)
                && holders
                    .iter()
                    .all(|(pid, no_locks, b)| !no_locks && (*pid == me || (*pid == vm && b == v)))
        }
    };
    (!ok).then(|| format!("held {bytes:?}, holders (pid, no_locks, bytes) {holders:?}"))
}

/// Bytes of a `status` JSON object's `perm` and `unshared` lists.
fn json_bytes(v: &Value) -> Vec<u32> {
    let names = ["consistent-read", "write", "write-unchanged", "resize"];
    let mut bytes = Vec::new();
    for (key, base) in [("perm", 100), ("unshared", 200)] {
        for p in v[key].as_array().into_iter().flatten() {
            let i = names
                .iter()
                .position(|n| p == n)
                .unwrap_or_else(|| panic!("unknown permission {p} in {v}"));
            bytes.push(base + i as u32);
        }
    }
    bytes.sort_unstable();
    bytes
}

/// Waits (at most 10 s) until every file shows its `want`, through
/// `fpl::query_many_with` with holders and openers; then asserts that
/// `fpl status --chain --json top.qcow2` agrees on each member of the
/// chain (its bytes, and the VM as its only holder, or none) and lists
/// the members `fpl::chain::resolve` finds. Fails with the whole table.
fn assert_phase(scene: &Scene, vm: &mut Vm, phase: &str, want: &[(&str, Want)]) {
    let paths: Vec<PathBuf> = want.iter().map(|(f, _)| scene.path(f)).collect();
    let inspect = Inspect {
        holders: true,
        openers: true,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        vm.assert_alive();
        let statuses = fpl::query::query_many_with(&paths, inspect);
        let wrong: Vec<String> = want
            .iter()
            .zip(&statuses)
            .filter_map(|((f, w), s)| {
                let s = s.as_ref().unwrap_or_else(|e| panic!("query {f}: {e}"));
                query_wrong(s, *w, vm.pid()).map(|m| format!("  {f}: want {w:?}, {m}"))
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{phase}: fpl::query disagrees with the expected row:\n{}\nVM log:\n{}",
                wrong.join("\n"),
                vm.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The CLI, on the image as a user names it.
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpl"));
    c.args(["status", "--chain", "--json", "top.qcow2"]);
    let out = run(c, scene.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{phase}: fpl status --chain: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{phase}: fpl status --chain --json printed {stdout:?}: {e}"));
    let members = v[0]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{phase}: no members in {v}"));
    let listed: Vec<&str> = members
        .iter()
        .map(|m| m["path"].as_str().unwrap_or_default())
        .collect();
    let resolved: Vec<String> = fpl::chain::resolve(
        &scene.path("top.qcow2"),
        Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared()),
    )
    .unwrap_or_else(|e| panic!("{phase}: resolve top.qcow2: {e}"))
    .iter()
    .map(|m| {
        m.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
    .collect();
    assert_eq!(
        listed, resolved,
        "{phase}: the members fpl status --chain lists"
    );
    for m in members {
        let name = m["path"].as_str().unwrap_or_default();
        let w = want
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, w)| *w)
            .unwrap_or_else(|| panic!("{phase}: {name} is not in the row"));
        // Holders, and openers (open without locks: flag "no-locks"),
        // apart; one entry per descriptor, so a pid may repeat.
        // A sibling test spawning a process forks this one: until its exec,
        // the child has a copy of this process's descriptors and so shows
        // as a holder of our description (same fd, same bytes). That is
        // this process's own lock, not another holder.
        let ours: Vec<&serde_json::Value> = m["holders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["pid"].as_i64() == Some(i64::from(std::process::id())))
            .collect();
        let copy_of_ours = |h: &serde_json::Value| {
            let pid = h["pid"].as_i64().unwrap_or(-1);
            pid != i64::from(std::process::id())
                && pid != i64::from(vm.pid())
                && ours.iter().any(|o| {
                    o["fd"] == h["fd"] && o["perm"] == h["perm"] && o["unshared"] == h["unshared"]
                })
                && parent(pid).is_none_or(|ppid| ppid == i64::from(std::process::id()))
        };
        let pids_where = |opener: bool| -> Vec<i64> {
            let mut pids: Vec<i64> = m["holders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| !copy_of_ours(h))
                .filter(|h| {
                    let no_locks = h["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "no-locks"));
                    no_locks == opener
                })
                .map(|h| h["pid"].as_i64().unwrap_or(-1))
                .collect();
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        let (holders, openers) = (pids_where(false), pids_where(true));
        let (bytes, mut pids, want_openers): (&[u32], Vec<i64>, Vec<i64>) = match w {
            Held(b) => (b, vec![i64::from(vm.pid())], vec![]),
            Beside { all, .. } => (
                all,
                vec![i64::from(vm.pid()), i64::from(std::process::id())],
                vec![],
            ),
            // A dropped node: the QEMU process has it open, holding nothing.
            Open => (&[], vec![], vec![i64::from(vm.pid())]),
            Closed => (&[], vec![], vec![]),
        };
        pids.sort_unstable();
        assert_eq!(
            (json_bytes(m), holders, openers),
            (bytes.to_vec(), pids, want_openers),
            "{phase}: fpl status --chain --json on {name}: {m}"
        );
    }
}

/// Whether a third process may write `file` now: QEMU 10.0's `qemu-io -f
/// raw -c write`, which takes 100 and 101 on a raw file and unshares
/// nothing (measured), so only a holder of 201 stops it; the first line of
/// its error otherwise.
fn qemu_io_writes(scene: &Scene, file: &str) -> Result<(), String> {
    let mut c = Command::new(qemu_io10());
    c.args(["-f", "raw", "-c", "write -P 9 60M 512", file]);
    let out = run(c, scene.dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !err.contains("Failed") {
        Ok(())
    } else {
        Err(err.lines().next().unwrap_or_default().to_owned())
    }
}

const WRITE_LOCK: &str = "Failed to get \"write\" lock";

fn refused_with(r: Result<(), String>, message: &str, what: &str) {
    let e = r.expect_err(what);
    assert!(e.contains(message), "{what}: {e}");
}

/// The raw base at rest: RP under the VM, R under the NBD export.
fn rest(host: Host) -> Want {
    host.pick(Held(RP), Held(R))
}

/// At rest: base, RP, RWX; a third process may write the base only when
/// it holds R (CHAINS.md §1).
fn at_rest(scene: &Scene, vm: &mut Vm, host: Host) {
    assert_phase(
        scene,
        vm,
        "at rest",
        &[
            ("base.raw", rest(host)),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RWX)),
        ],
    );
    third_writer(scene, host.pick(Held(RP), Held(R)), "at rest");
}

/// Asserts that QEMU 10.0's qemu-io may write base.raw exactly when the
/// base holds no 201 (R, or open with no lock).
fn third_writer(scene: &Scene, base: Want, phase: &str) {
    let what = format!("qemu-io write on base.raw, {phase}");
    match base {
        Held(b) if b.contains(&201) => {
            refused_with(qemu_io_writes(scene, "base.raw"), WRITE_LOCK, &what)
        }
        _ => qemu_io_writes(scene, "base.raw").unwrap_or_else(|e| panic!("{what}: {e}")),
    }
}

// ---- the jobs --------------------------------------------------------------------

fn commit(host: Host) {
    let scene = Scene::new(&format!("qjobs-commit-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    vm.ok(
        "block-commit",
        json!({"job-id": "j", "device": "fmt0", "top-node": "fmt1", "base-node": "fmt2",
               "speed": 1}),
    );
    vm.assert_running_job("j");
    let running = [
        ("base.raw", Held(&[100, 101, 201, 203])),
        ("mid.qcow2", Held(COMMIT_MID)),
        ("top.qcow2", Held(RWX)),
    ];
    assert_phase(&scene, &mut vm, "block-commit running", &running);
    third_writer(&scene, running[0].1, "block-commit running");
    vm.assert_running_job("j");
    vm.unthrottle("j");
    vm.completed("j");
    // Not in CHAINS.md: measured here. The dropped mid keeps RP (a holder,
    // not an opener) until blockdev-del; base is back to its bytes at rest.
    assert_phase(
        &scene,
        &mut vm,
        "block-commit done",
        &[
            ("base.raw", rest(host)),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RWX)),
        ],
    );
    third_writer(&scene, rest(host), "block-commit done");
    vm.del(&["fmt1", "file1"]);
    assert_phase(
        &scene,
        &mut vm,
        "block-commit, mid deleted",
        &[
            ("base.raw", rest(host)),
            ("mid.qcow2", Closed),
            ("top.qcow2", Held(RWX)),
        ],
    );
}

fn active_commit(host: Host) {
    let scene = Scene::new(&format!("qjobs-active-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    vm.ok(
        "block-commit",
        json!({"job-id": "j", "device": "fmt0", "base-node": "fmt2", "speed": 1}),
    );
    vm.assert_running_job("j");
    // base.raw: write and resize, write *shared*, no consistent read.
    let row = [
        ("base.raw", Held(&[101, 203])),
        ("mid.qcow2", Held(COMMIT_MID)),
        ("top.qcow2", Held(RWX)),
    ];
    assert_phase(&scene, &mut vm, "active commit running", &row);
    vm.assert_running_job("j");
    // Write is shared on the raw base: a third process writes it meanwhile.
    third_writer(&scene, Held(&[101, 203]), "active commit running");
    vm.unthrottle("j");
    vm.event("BLOCK_JOB_READY", "j");
    assert_eq!(vm.jobs(), [("j".to_owned(), "ready".to_owned(), true)]);
    assert_phase(&scene, &mut vm, "active commit READY", &row);
    third_writer(&scene, Held(&[101, 203]), "active commit READY");

    vm.ok("job-complete", json!({"id": "j"}));
    vm.completed("j");
    // After the pivot base is the active layer: under the VM 100,101,201
    // (virtio-blk shares resize), under the NBD export 100,101,203 (it
    // shares write, not resize). Not in CHAINS.md for qemu-storage-daemon:
    // measured here. Top and mid keep their bytes until blockdev-del.
    let pivot = host.pick(Held(&[100, 101, 201]), Held(&[100, 101, 203]));
    assert_phase(
        &scene,
        &mut vm,
        "active commit after pivot",
        &[
            ("base.raw", pivot),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RWX)),
        ],
    );
    vm.del(&["fmt0", "file0"]);
    assert_phase(
        &scene,
        &mut vm,
        "active commit, top deleted",
        &[
            ("base.raw", pivot),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Closed),
        ],
    );
    vm.del(&["fmt1", "file1"]);
    assert_phase(
        &scene,
        &mut vm,
        "active commit, top and mid deleted",
        &[
            ("base.raw", pivot),
            ("mid.qcow2", Closed),
            ("top.qcow2", Closed),
        ],
    );
}

/// `block-stream` into the top, with `base-node` or without.
fn stream(host: Host, base: bool) {
    let scene = Scene::new(&format!("qjobs-stream-{base}-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    let mut args = json!({"job-id": "j", "device": "fmt0", "speed": 1});
    if base {
        args["base-node"] = json!("fmt2");
    }
    vm.ok("block-stream", args);
    vm.assert_running_job("j");
    // The active layer takes write-unchanged (102) while the job copies.
    // The base is protected (RP) under both hosts: under the NBD export the
    // job raises it from R (not in CHAINS.md: measured here).
    assert_phase(
        &scene,
        &mut vm,
        "block-stream running",
        &[
            ("base.raw", Held(RP)),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(&[100, 101, 102, 103, 201, 203])),
        ],
    );
    vm.assert_running_job("j");
    third_writer(&scene, Held(RP), "block-stream running");
    vm.unthrottle("j");
    vm.completed("j");
    // Not in CHAINS.md (with base): measured here. The dropped mid keeps RP
    // until blockdev-del. Without base the dropped raw base is open with no
    // lock: an opener of the VM, and any writer is admitted.
    let b = if base { rest(host) } else { Open };
    assert_phase(
        &scene,
        &mut vm,
        "block-stream done",
        &[
            ("base.raw", b),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RWX)),
        ],
    );
    third_writer(&scene, b, "block-stream done");
    vm.del(&["fmt1", "file1"]);
    assert_phase(
        &scene,
        &mut vm,
        "block-stream, mid deleted",
        &[
            ("base.raw", b),
            ("mid.qcow2", Closed),
            ("top.qcow2", Held(RWX)),
        ],
    );
    if !base {
        vm.del(&["fmt2", "file2"]);
        assert_phase(
            &scene,
            &mut vm,
            "block-stream, mid and base deleted",
            &[
                ("base.raw", Closed),
                ("mid.qcow2", Closed),
                ("top.qcow2", Held(RWX)),
            ],
        );
    }
}

/// `drive-mirror` (QEMU creates the target) or `blockdev-mirror` (onto a
/// node added first), `sync: full`.
fn mirror(host: Host, drive: bool) {
    let scene = Scene::new(&format!("qjobs-mirror-{drive}-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    let chain_rp = [
        ("base.raw", rest(host)),
        ("mid.qcow2", Held(RP)),
        ("top.qcow2", Held(RWX)),
    ];
    if drive {
        vm.ok(
            "drive-mirror",
            json!({"job-id": "j", "device": "fmt0", "target": "tgt.qcow2", "format": "qcow2",
                   "sync": "full", "mode": "absolute-paths", "node-name": "tgt", "speed": 1}),
        );
    } else {
        scene.img(&["create", "-q", "-f", "qcow2", "tgt.qcow2", "64M"]);
        vm.add_target("tgt.qcow2");
        let mut row = chain_rp.to_vec();
        row.push(("tgt.qcow2", Held(RWX)));
        assert_phase(&scene, &mut vm, "blockdev-mirror target added", &row);
        vm.ok(
            "blockdev-mirror",
            json!({"job-id": "j", "device": "fmt0", "target": "tgt", "sync": "full",
                   "speed": 1}),
        );
    }
    vm.assert_running_job("j");
    let mut row = chain_rp.to_vec();
    row.push(("tgt.qcow2", Held(MIRROR_TARGET)));
    assert_phase(&scene, &mut vm, "mirror running", &row);
    third_writer(&scene, rest(host), "mirror running");
    vm.assert_running_job("j");
    vm.unthrottle("j");
    vm.event("BLOCK_JOB_READY", "j");
    assert_eq!(vm.jobs(), [("j".to_owned(), "ready".to_owned(), true)]);
    assert_phase(&scene, &mut vm, "mirror READY", &row);
    third_writer(&scene, rest(host), "mirror READY");

    vm.ok("job-complete", json!({"id": "j"}));
    vm.completed("j");
    // The whole old chain is dropped: the raw base open with no lock (an
    // opener), mid and top keep their bytes until blockdev-del.
    assert_phase(
        &scene,
        &mut vm,
        "mirror after pivot",
        &[
            ("base.raw", Open),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RWX)),
            ("tgt.qcow2", Held(RWX)),
        ],
    );
    third_writer(&scene, Open, "mirror after pivot");
    vm.del(&["fmt0", "file0", "fmt1", "file1", "fmt2", "file2"]);
    assert_phase(
        &scene,
        &mut vm,
        "mirror, old chain deleted",
        &[
            ("base.raw", Closed),
            ("mid.qcow2", Closed),
            ("top.qcow2", Closed),
            ("tgt.qcow2", Held(RWX)),
        ],
    );
}

fn backup(host: Host) {
    let scene = Scene::new(&format!("qjobs-backup-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    scene.img(&["create", "-q", "-f", "qcow2", "tgt.qcow2", "64M"]);
    vm.add_target("tgt.qcow2");
    let row = [
        ("base.raw", rest(host)),
        ("mid.qcow2", Held(RP)),
        ("top.qcow2", Held(RWX)),
        ("tgt.qcow2", Held(RWX)),
    ];
    assert_phase(&scene, &mut vm, "blockdev-backup target added", &row);
    vm.ok(
        "blockdev-backup",
        json!({"job-id": "j", "device": "fmt0", "target": "tgt", "sync": "full", "speed": 1}),
    );
    vm.assert_running_job("j");
    // Under the NBD export the job raises the raw base from R to RP while
    // it runs (CHAINS.md: "unchanged"; measured here). Under the VM it is
    // RP anyway.
    let mut running = row;
    running[0].1 = Held(RP);
    assert_phase(&scene, &mut vm, "blockdev-backup running", &running);
    third_writer(&scene, Held(RP), "blockdev-backup running");
    vm.assert_running_job("j");
    vm.unthrottle("j");
    vm.completed("j");
    assert_phase(&scene, &mut vm, "blockdev-backup done", &row);
    third_writer(&scene, rest(host), "blockdev-backup done");
}

fn snapshot(host: Host) {
    let scene = Scene::new(&format!("qjobs-snapshot-{host:?}"));
    let mut vm = scene.vm(host);
    at_rest(&scene, &mut vm, host);
    vm.ok(
        "blockdev-snapshot-sync",
        json!({"node-name": "fmt0", "snapshot-file": "snap.qcow2",
               "snapshot-node-name": "snap", "format": "qcow2"}),
    );
    assert_phase(
        &scene,
        &mut vm,
        "after blockdev-snapshot-sync",
        &[
            ("base.raw", rest(host)),
            ("mid.qcow2", Held(RP)),
            ("top.qcow2", Held(RP)),
            ("snap.qcow2", Held(RWX)),
        ],
    );
    third_writer(&scene, rest(host), "after blockdev-snapshot-sync");
    // Reopened read-only: a new descriptor, opened for reading.
    let top = fpl::query::query_with(
        &scene.path("top.qcow2"),
        Inspect {
            holders: true,
            openers: true,
        },
    )
    .expect("query top.qcow2");
    let access: Vec<(bool, bool)> = top
        .holders
        .iter()
        .map(|h| (h.access.read, h.access.write))
        .collect();
    assert_eq!(access, [(true, false)], "top.qcow2 after the snapshot");
}

#[test]
fn block_commit_mid_into_base() {
    commit(Host::Vm);
}

#[test]
fn block_commit_mid_into_base_qsd() {
    commit(Host::Qsd);
}

#[test]
fn active_commit_running_ready_and_after_pivot() {
    active_commit(Host::Vm);
}

#[test]
fn active_commit_running_ready_and_after_pivot_qsd() {
    active_commit(Host::Qsd);
}

#[test]
fn block_stream_with_base() {
    stream(Host::Vm, true);
}

#[test]
fn block_stream_with_base_qsd() {
    stream(Host::Qsd, true);
}

#[test]
fn block_stream_without_base() {
    stream(Host::Vm, false);
}

#[test]
fn block_stream_without_base_qsd() {
    stream(Host::Qsd, false);
}

#[test]
fn drive_mirror_running_ready_and_after_pivot() {
    mirror(Host::Vm, true);
}

#[test]
fn drive_mirror_running_ready_and_after_pivot_qsd() {
    mirror(Host::Qsd, true);
}

#[test]
fn blockdev_mirror_running_ready_and_after_pivot() {
    mirror(Host::Vm, false);
}

#[test]
fn blockdev_mirror_running_ready_and_after_pivot_qsd() {
    mirror(Host::Qsd, false);
}

#[test]
fn blockdev_backup_changes_nothing_but_the_target() {
    backup(Host::Vm);
}

#[test]
fn blockdev_backup_protects_a_raw_base_while_it_runs_qsd() {
    backup(Host::Qsd);
}

#[test]
fn blockdev_snapshot_sync_reopens_the_top_read_only() {
    snapshot(Host::Vm);
}

#[test]
fn blockdev_snapshot_sync_reopens_the_top_read_only_qsd() {
    snapshot(Host::Qsd);
}

// ---- a qcow2 base, and other holders (CHAINS.md §3, below the table) ----------

#[test]
fn commits_into_a_qcow2_base() {
    let scene = Scene::qcow2_base("qjobs-qcow2-base");
    let mut vm = scene.vm(Host::Vm);
    let rest = [
        ("base.qcow2", Held(RP)),
        ("mid.qcow2", Held(RP)),
        ("top.qcow2", Held(RWX)),
    ];
    assert_phase(&scene, &mut vm, "at rest, qcow2 base", &rest);
    // CHAINS.md: "With a qcow2 base, base holds RWX during both commits
    // (the qcow2 rule protects it)".
    vm.ok(
        "block-commit",
        json!({"job-id": "c", "device": "fmt0", "top-node": "fmt1", "base-node": "fmt2",
               "speed": 1}),
    );
    vm.assert_running_job("c");
    assert_phase(
        &scene,
        &mut vm,
        "block-commit mid into a qcow2 base, running",
        &[
            ("base.qcow2", Held(RWX)),
            ("mid.qcow2", Held(COMMIT_MID)),
            ("top.qcow2", Held(RWX)),
        ],
    );
    vm.ok("block-job-cancel", json!({"device": "c"}));
    vm.event("BLOCK_JOB_CANCELLED", "c");
    assert_phase(&scene, &mut vm, "after the cancelled commit", &rest);
    vm.ok(
        "block-commit",
        json!({"job-id": "a", "device": "fmt0", "base-node": "fmt2", "speed": 1}),
    );
    vm.assert_running_job("a");
    let active = [
        ("base.qcow2", Held(RWX)),
        ("mid.qcow2", Held(COMMIT_MID)),
        ("top.qcow2", Held(RWX)),
    ];
    assert_phase(
        &scene,
        &mut vm,
        "active commit into a qcow2 base, running",
        &active,
    );
    vm.unthrottle("a");
    vm.event("BLOCK_JOB_READY", "a");
    assert_phase(
        &scene,
        &mut vm,
        "active commit into a qcow2 base, READY",
        &active,
    );
}

#[test]
fn other_holders_refuse_commits_with_qemus_message() {
    // CHAINS.md: "A holder of 100 on mid: Failed to get shared "consistent
    // read" lock" (commit mid into base unshares consistent read on mid).
    let scene = Scene::new("qjobs-holders");
    let mut vm = scene.vm(Host::Vm);
    at_rest(&scene, &mut vm, Host::Vm);
    let read_shared = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
    let lock = fpl::Lock::acquire(
        &scene.path("mid.qcow2"),
        read_shared,
        fpl::Options::default(),
    )
    .unwrap_or_else(|e| panic!("read-shared on mid.qcow2 beside the VM: {e}"));
    let e = vm
        .execute(
            "block-commit",
            json!({"job-id": "c", "device": "fmt0", "top-node": "fmt1", "base-node": "fmt2"}),
        )
        .expect_err("block-commit beside a holder of 100 on mid");
    assert_eq!(e, "Failed to get shared \"consistent read\" lock");
    assert_eq!(vm.job_statuses("c"), ["created", "null"]);
    let e = vm
        .execute(
            "block-commit",
            json!({"job-id": "a", "device": "fmt0", "base-node": "fmt2"}),
        )
        .expect_err("active commit beside a holder of 100 on mid");
    assert_eq!(e, "Failed to get shared \"consistent read\" lock");
    assert_eq!(vm.jobs(), []);
    lock.release().expect("release");
    drop(vm);

    // CHAINS.md: "203 alone on a qcow2 base: active commit fails with
    // Failed to get "resize" lock".
    let scene = Scene::qcow2_base("qjobs-holders-qcow2");
    let mut vm = scene.vm(Host::Vm);
    let resize = PermSet::from_bits(0x8).expect("resize");
    let unshare_resize = Request {
        perm: PermSet::NONE,
        shared: PermSet::from_bits(PermSet::ALL.bits() & !resize.bits()).expect("bits"),
        exact: true,
    };
    let lock = fpl::Lock::acquire(
        &scene.path("base.qcow2"),
        unshare_resize,
        fpl::Options::default(),
    )
    .unwrap_or_else(|e| panic!("203 on base.qcow2 beside the VM: {e}"));
    assert_eq!(
        bytes_of(
            fpl::query(&scene.path("base.qcow2"), false)
                .expect("query")
                .held
        ),
        [100, 201, 203],
        "base.qcow2: the VM's RP, and our 203"
    );
    let e = vm
        .execute(
            "block-commit",
            json!({"job-id": "a", "device": "fmt0", "base-node": "fmt2"}),
        )
        .expect_err("active commit beside a holder of 203 on a qcow2 base");
    assert_eq!(e, "Failed to get \"resize\" lock");
    // Refused before the job exists: not even created (measured here; the
    // refusals on a write lock above go created -> null).
    assert_eq!(vm.job_statuses("a"), Vec::<String>::new());
    assert_eq!(vm.jobs(), []);
    lock.release().expect("release");
}

// ---- a backup tool's read hold on the base -------------------------------------

#[test]
fn a_read_hold_on_the_base_refuses_block_commit_and_nothing_else() {
    let scene = Scene::new("qjobs-hold");
    let mut vm = scene.vm(Host::Vm);
    vm.ok("cont", json!({}));
    at_rest(&scene, &mut vm, Host::Vm);
    let base = scene.path("base.raw");
    let read = Request::new(Mode::Read.perm(), Mode::Read.shared());
    let hold = fpl::ChainLock::acquire(&base, read, fpl::Options::default())
        .unwrap_or_else(|e| panic!("read on base.raw beside the VM: {e}"));
    // libfpl's read: 100, and 201, 202, 203 unshared, beside the VM's RP.
    let under_hold = [
        (
            "base.raw",
            Beside {
                vm: RP,
                all: &[100, 201, 202, 203],
            },
        ),
        ("mid.qcow2", Held(RP)),
        ("top.qcow2", Held(RWX)),
    ];
    assert_phase(&scene, &mut vm, "under the read hold", &under_hold);

    for args in [
        json!({"job-id": "c0", "device": "fmt0", "top-node": "fmt1", "base-node": "fmt2"}),
        json!({"job-id": "c1", "device": "fmt0", "base-node": "fmt2"}),
    ] {
        let e = vm
            .execute("block-commit", args.clone())
            .expect_err("block-commit under a read hold on base.raw");
        assert_eq!(e, WRITE_LOCK, "block-commit {args}");
        assert_eq!(vm.jobs(), [], "jobs after the refused block-commit {args}");
        let status = vm.ok("query-status", json!({}));
        assert_eq!(status["status"], "running", "the VM after {args}");
    }
    // Each refused job went created -> null, never running.
    for id in ["c0", "c1"] {
        assert_eq!(vm.job_statuses(id), ["created", "null"], "job {id}");
    }
    assert!(!vm.job_was("running"), "a job ran under the hold");
    assert_phase(&scene, &mut vm, "after the refused commits", &under_hold);

    // The jobs that do not write base still run under the hold, and the
    // hold still protects base.
    vm.ok(
        "block-stream",
        json!({"job-id": "s", "device": "fmt0", "base-node": "fmt2"}),
    );
    vm.completed("s");
    vm.del(&["fmt1", "file1"]);
    scene.img(&["create", "-q", "-f", "qcow2", "bak.qcow2", "64M"]);
    vm.add_target("bak.qcow2");
    vm.ok(
        "blockdev-backup",
        json!({"job-id": "b", "device": "fmt0", "target": "tgt", "sync": "full"}),
    );
    vm.completed("b");
    // A mirror to READY, cancelled there (no pivot: the chain stays).
    scene.img(&["create", "-q", "-f", "qcow2", "copy.qcow2", "64M"]);
    vm.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "cfile", "filename": "copy.qcow2"}),
    );
    vm.ok(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "copy", "file": "cfile"}),
    );
    vm.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "fmt0", "target": "copy", "sync": "full"}),
    );
    vm.event("BLOCK_JOB_READY", "m");
    vm.ok("block-job-cancel", json!({"device": "m"}));
    vm.completed("m");
    vm.ok(
        "blockdev-snapshot-sync",
        json!({"node-name": "fmt0", "snapshot-file": "snap.qcow2",
               "snapshot-node-name": "snap", "format": "qcow2"}),
    );
    let status = vm.ok("query-status", json!({}));
    assert_eq!(status["status"], "running");

    // Without the hold the commit (now snap -> top -> base: top into base)
    // runs to completion.
    hold.verify()
        .unwrap_or_else(|e| panic!("the read hold after stream, backup, mirror, snapshot: {e}"));
    let held = fpl::query(&base, false).expect("query base.raw").held;
    assert!(held.covers(202), "libfpl's 202 on base.raw after the jobs");
    hold.release().expect("release");
    vm.ok(
        "block-commit",
        json!({"job-id": "c2", "device": "snap", "top-node": "fmt0", "base-node": "fmt2"}),
    );
    vm.completed("c2");
    assert!(vm.job_was("running"), "the commit without the hold ran");
    let status = vm.ok("query-status", json!({}));
    assert_eq!(status["status"], "running");
}

/// The parent of `pid`, or None once it is gone.
fn parent(pid: i64) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}
