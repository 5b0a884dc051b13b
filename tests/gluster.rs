//! QEMU's locks across two hosts sharing a GlusterFS volume
//! (tests/common/gluster.rs: one volume, host A mounted here, host B in a
//! mount + PID namespace of its own that sees none of A's processes), in
//! both directions against real QEMU:
//!
//! - `the_harness_gives_two_hosts_one_file_and_cleans_up`: the same file
//!   from both hosts, B's /proc without A's processes, nothing of the
//!   cluster left (process, mount, folder) after its teardown;
//! - `qemu_io_on_a_is_seen_and_respected_by_fpl_on_b`: QEMU 10's qemu-io
//!   holds a raw image on A; on B, `fpl check --mode write` is refused with
//!   QEMU's message, read-shared is granted, `fpl status` says in use;
//! - `fpl_hold_on_b_keeps_qemu_on_a_out`: `fpl hold --mode write` on B;
//!   qemu-io and qemu-img info on A are refused with QEMU's own messages,
//!   and admitted once the hold ends;
//! - `a_vm_on_a_and_fpl_on_b_keep_each_other_out`: QEMU 7.2 VMs on A
//!   (-drive, and a QMP device_add) refused under B's hold, admitted after
//!   it; B's fpl refused while a VM writes the image;
//! - `kill_9_of_the_holder_frees_the_bytes_across_hosts`;
//! - `kill_9_of_host_a_s_fuse_client_frees_the_bytes_for_b`;
//! - `a_brick_restart_drops_every_lock`: the hazard CLUSTER.md found,
//!   asserted so that a GlusterFS that fixes it is noticed;
//! - `a_killed_run_is_cleaned_up_by_the_next`: a test binary killed with
//!   its cluster up (and a hold on B) leaves glusterd, the brick, the
//!   clients and B's namespace running; the next cluster ends them by the
//!   pids recorded and removes the mount and the folder.
//!
//! Each test has a cluster of its own (they run one at a time; starting one
//! takes about 2 s). Needs root, /dev/fuse, GlusterFS (installed by the
//! harness when missing), QEMU 10 in /usr/bin and QEMU 7.2 from
//! scripts/fetch-qemu-7.2.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::gluster::{self, alive, kill, on_b_pid, run_bounded, Cluster};
use serde_json::Value;

const FPL: &str = env!("CARGO_BIN_EXE_fpl");

/// The bound on waiting for another process; only a failing test waits
/// this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a lock freed on one host may take to be seen free on the other.
const FREED_WITHIN: Duration = Duration::from_secs(5);

// ---- tools -------------------------------------------------------------------

/// QEMU 10.0's tool `name` (preinstalled in /usr/bin).
fn qemu10(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{p:?} is missing: QEMU 10.0's tools come preinstalled with the machine's \
         qemu-utils 10.0.2 (never apt-get install a QEMU package: it replaces them)"
    );
    p
}

/// QEMU 7.2's qemu-system-x86_64, unpacked by scripts/fetch-qemu-7.2.
fn qemu72_system() -> PathBuf {
    let dirs = common::qemu_dirs();
    let dir = dirs
        .split(':')
        .filter_map(|kv| kv.split_once('='))
        .find(|(v, _)| *v == "7.2")
        .map(|(_, d)| common::root().join(d))
        .expect("QEMU 7.2: scripts/fetch-qemu-7.2 unpacks it into target/qemu-7.2 (needs root)");
    let p = dir.join("qemu-system-x86_64");
    assert!(
        p.exists(),
        "{p:?} is missing: run scripts/fetch-qemu-7.2 (needs root; never apt-get install a \
         QEMU package, it replaces the machine's QEMU 10)"
    );
    p
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("the cluster's paths are UTF-8")
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs `fpl ARGS` on host B.
fn fpl_on_b(cluster: &Cluster, args: &[&str]) -> Output {
    let mut c = cluster.on_b(FPL);
    c.args(args);
    run_bounded(&mut c, PATIENCE)
}

/// Runs QEMU 10's `qemu-io -f raw -c COMMAND IMAGE` on host A (`b` None)
/// or on host B.
fn qemu_io(cluster: &Cluster, on_b: bool, command: &str, image: &Path) -> Output {
    let mut c = if on_b {
        cluster.on_b(qemu10("qemu-io"))
    } else {
        Command::new(qemu10("qemu-io"))
    };
    c.args(["-f", "raw", "-c", command]).arg(image);
    run_bounded(&mut c, PATIENCE)
}

/// A raw image of 16 MiB made by qemu-img on host A.
fn raw_image(cluster: &Cluster, name: &str) {
    let out = run_bounded(
        Command::new(qemu10("qemu-img"))
            .args(["create", "-q", "-f", "raw"])
            .arg(cluster.a(name))
            .arg("16M"),
        PATIENCE,
    );
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img create", &out)
    );
}

/// QEMU's refusal: `message` and its hint naming `image` as opened.
fn assert_refused(out: &Output, code: Option<i32>, message: &str, image: &Path, what: &str) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), code, "{}", describe(what, out));
    assert!(all.contains(message), "{}", describe(what, out));
    let hint = format!("Is another process using the image [{}]?", image.display());
    assert!(all.contains(&hint), "{}", describe(what, out));
}

/// Waits until host B sees no byte of `image` held (`fpl status --json
/// --no-holders`: empty perm and unshared lists), at most `limit`.
fn wait_free_on_b(cluster: &Cluster, image: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = fpl_on_b(cluster, &["status", "--json", "--no-holders", s(image)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            describe("fpl status", &out)
        );
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("fpl status --json: {e}: {}", text(&out.stdout)));
        let entry = &v[0];
        let empty = |k: &str| entry[k].as_array().is_some_and(|a| a.is_empty());
        if empty("perm") && empty("unshared") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "host B still sees {image:?} held {limit:?} after its holder went: {}",
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- processes -----------------------------------------------------------------

/// A long-lived process on host A or B, killed (SIGKILL) and reaped however
/// the test ends. Its stdin is a pipe (qemu-io reads commands from it), its
/// output goes to a log file.
struct Proc {
    child: Child,
    /// The program's own pid here (for B, not nsenter's).
    pid: i32,
    log: PathBuf,
    what: String,
}

impl Proc {
    fn start(mut cmd: Command, log: PathBuf, what: &str, on_b: bool) -> Proc {
        let out = File::create(&log).expect("log file");
        cmd.stdin(Stdio::piped())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let pid = if on_b {
            on_b_pid(&child)
        } else {
            child.id() as i32
        };
        Proc {
            child,
            pid,
            log,
            what: what.to_owned(),
        }
    }

    /// `fpl hold --mode MODE IMAGE` on A or B, once it says it holds.
    fn hold(cluster: &Cluster, on_b: bool, mode: &str, images: &[PathBuf]) -> Proc {
        let mut c = if on_b {
            cluster.on_b(FPL)
        } else {
            Command::new(FPL)
        };
        c.args(["hold", "--mode", mode]).args(images);
        let host = if on_b { "b" } else { "a" };
        let what = format!("fpl hold --mode {mode} on host {}", host.to_uppercase());
        let mut p = Proc::start(
            c,
            cluster.logs().join(format!("hold-{host}.log")),
            &what,
            on_b,
        );
        p.wait_log("fpl: holding");
        p
    }

    /// qemu-io (QEMU 10) on host A with `image` open read-write, once it has
    /// read from it.
    fn qemu_io_a(cluster: &Cluster, image: &Path) -> Proc {
        let mut c = Command::new(qemu10("qemu-io"));
        c.args(["-f", "raw"]).arg(image);
        let mut p = Proc::start(
            c,
            cluster.logs().join("qemu-io-a.log"),
            "qemu-io on A",
            false,
        );
        use std::io::Write;
        let stdin = p.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "read 0 512").expect("qemu-io reads its stdin");
        p.wait_log("read 512/512 bytes at offset 0");
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.what, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} never said {needle:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the program and waits for the child (nsenter passes
    /// the program's status on).
    fn end(&mut self, sig: i32) -> ExitStatus {
        kill(self.pid, sig);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.what);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if alive(self.pid) {
            kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- QEMU 7.2 VMs ---------------------------------------------------------------

/// A QEMU 7.2 VM on host A as the other QEMU tests start it (TCG, no
/// guest, paused with -S, no default devices), QMP on a socket, killed
/// however the test ends.
struct Vm {
    proc: Proc,
    sock: PathBuf,
}

/// A QMP connection to a VM.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    what: String,
    log: PathBuf,
}

impl Vm {
    fn start(cluster: &Cluster, name: &str, args: &[String]) -> Vm {
        let sock = cluster.logs().join(format!("{name}.qmp"));
        let mut c = Command::new(qemu72_system());
        // -machine pc: its PCI bus takes hot-plugged devices (device_add).
        c.args([
            "-machine",
            "pc,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .args(args)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
        let what = format!("QEMU 7.2 VM {name} {}", args.join(" "));
        let proc = Proc::start(c, cluster.logs().join(format!("{name}.log")), &what, false);
        Vm { proc, sock }
    }

    /// Running (QMP answers a command, which happens only once every
    /// drive is open) or refused (exited: its status and log).
    fn outcome(&mut self) -> Result<Qmp, (ExitStatus, String)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Err((status, self.proc.log()));
            }
            assert!(
                Instant::now() < deadline,
                "{}: neither ran nor exited",
                self.proc.what
            );
            if let Ok(stream) = std::os::unix::net::UnixStream::connect(&self.sock) {
                return self.negotiate(stream);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn negotiate(
        &mut self,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<Qmp, (ExitStatus, String)> {
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("socket timeout");
        let writer = stream.try_clone().expect("socket clone");
        let mut qmp = Qmp {
            reader: std::io::BufReader::new(stream),
            writer,
            what: self.proc.what.clone(),
            log: self.proc.log.clone(),
        };
        match qmp.line() {
            Some(greeting) if greeting.get("QMP").is_some() => {}
            _ => {
                // Closed without a greeting: the VM is on its way out.
                let status = self.proc.end(0);
                return Err((status, self.proc.log()));
            }
        }
        match qmp.execute("qmp_capabilities", serde_json::json!({})) {
            Some(Ok(_)) => Ok(qmp),
            _ => {
                let status = self.proc.end(0);
                Err((status, self.proc.log()))
            }
        }
    }

    fn running(&mut self) -> Qmp {
        match self.outcome() {
            Ok(qmp) => qmp,
            Err((status, log)) => panic!("{} exited ({status}):\n{log}", self.proc.what),
        }
    }
}

impl Qmp {
    fn line(&mut self) -> Option<Value> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    /// A command's `return`, or its error's `desc`; None if QMP closed.
    fn execute(&mut self, command: &str, arguments: Value) -> Option<Result<Value, String>> {
        use std::io::Write;
        let cmd = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{cmd}").ok()?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Some(Ok(r.clone()));
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or_default();
                return Some(Err(desc.to_owned()));
            }
            // An event: not an answer.
        }
    }

    fn run(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.execute(command, arguments).unwrap_or_else(|| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{}: QMP closed during {command}:\n{log}", self.what)
        })
    }
}

// ---- the harness --------------------------------------------------------------

#[test]
fn the_harness_gives_two_hosts_one_file_and_cleans_up() {
    let cluster = Cluster::start();
    // One file, written on each host, read on the other.
    std::fs::write(cluster.a("from-a"), "written on A\n").expect("write on A");
    let mut cat = cluster.on_b("cat");
    cat.arg(cluster.b("from-a"));
    let out = run_bounded(&mut cat, PATIENCE);
    assert_eq!(
        text(&out.stdout),
        "written on A\n",
        "{}",
        describe("cat on B", &out)
    );
    let mut write = cluster.on_b("sh");
    write
        .args(["-c", "echo written on B > \"$1\"", "sh"])
        .arg(cluster.b("from-b"));
    let out = run_bounded(&mut write, PATIENCE);
    assert!(out.status.success(), "{}", describe("write on B", &out));
    let read = std::fs::read_to_string(cluster.a("from-b")).expect("read on A");
    assert_eq!(read, "written on B\n");

    // Host B's /proc: its init (sleep), its FUSE client and this command's
    // own processes; none of A's (glusterd, A's client, this test).
    let mut ps = cluster.on_b("sh");
    ps.args([
        "-c",
        r#"for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr '\0' ' ' < $p/cmdline)"; done"#,
    ]);
    let out = run_bounded(&mut ps, PATIENCE);
    let listing = text(&out.stdout);
    let procs: Vec<(i32, String)> = listing
        .lines()
        .filter_map(|l| {
            let (pid, cmd) = l.split_once(' ')?;
            Some((pid.parse().ok()?, cmd.trim().to_owned()))
        })
        .collect();
    assert!(
        procs.contains(&(1, "sleep infinity".to_owned())),
        "B's init: {listing}"
    );
    let me = std::env::current_exe().expect("the test binary");
    let b_root = s(&cluster.b("")).trim_end_matches('/').to_owned();
    for (_, cmd) in &procs {
        let expected = cmd.starts_with("sleep infinity")
            || cmd.starts_with("sh -c ")
            || cmd.starts_with("tr ")
            || (cmd.contains("glusterfs") && cmd.ends_with(&b_root));
        assert!(
            expected,
            "host B sees a process of host A: {cmd}\n{listing}"
        );
        assert!(!cmd.contains("glusterd"), "{listing}");
        assert!(!cmd.contains(s(&me)), "{listing}");
    }
    assert!(
        procs.len() <= 6,
        "host B sees more than its own processes:\n{listing}"
    );
    // A's view of the brick and the clients, for the teardown check.
    let started = cluster.started_pids();
    for pid in [
        cluster.brick_pid(),
        cluster.fuse_client_pid_a(),
        cluster.fuse_client_pid_b(),
        cluster.b_init_pid(),
    ] {
        assert!(alive(pid), "pid {pid} of the cluster is not running");
    }
    let dir = cluster.a("").parent().expect("a folder").to_path_buf();

    // Nothing left once torn down (checked before another cluster may start).
    let _serial = cluster.stop();
    for pid in started {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} of the cluster is left: {:?}",
            gluster::cmdline(pid)
        );
    }
    let left: Vec<String> = gluster::proc_pids()
        .into_iter()
        .filter(|&p| {
            alive(p)
                && gluster::comm(p)
                    .is_some_and(|c| ["glusterd", "glusterfsd", "glusterfs"].contains(&c.as_str()))
        })
        .map(|p| format!("{p}: {}", gluster::cmdline(p).unwrap_or_default()))
        .collect();
    assert!(left.is_empty(), "gluster processes left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    assert!(
        !mounts.contains("glusterfs"),
        "a gluster mount is left:\n{mounts}"
    );
    assert!(!dir.exists(), "{dir:?} is left");
    assert!(!Path::new(gluster::STATE_FILE).exists());
}

/// The cluster of a test binary that is killed (SIGKILL) without a
/// teardown: run, and killed, by `a_killed_run_is_cleaned_up_by_the_next`.
#[test]
#[ignore = "run (and killed) by a_killed_run_is_cleaned_up_by_the_next"]
fn a_run_that_gets_killed() {
    if std::env::var_os("FPL_GLUSTER_KILLED_RUN").is_none() {
        println!("a helper of a_killed_run_is_cleaned_up_by_the_next: nothing to do alone");
        return;
    }
    let cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let _hold = Proc::hold(&cluster, true, "write", &[cluster.b("disk.raw")]);
    println!("cluster up");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_run_is_cleaned_up_by_the_next() {
    use std::io::BufRead;
    // No other test of this binary may start a cluster (and clean up after
    // the killed run) before this one has looked at what it left.
    let mine = gluster::InProcess::take();
    let mut run = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "a_run_that_gets_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("FPL_GLUSTER_KILLED_RUN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary runs");
    let stdout = run.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The run waits for the clusters of other test binaries, if any run.
    let deadline = Instant::now() + PATIENCE * 8;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("cluster up") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = run.kill();
                let _ = run.wait();
                panic!("the run to be killed never said its cluster was up: {e}");
            }
        }
    }
    let state = std::fs::read_to_string(gluster::STATE_FILE).expect("the killed run's state");
    let recorded: Vec<(i32, String)> = state
        .lines()
        .filter_map(|l| {
            let (pid, cmd) = l.strip_prefix("pid ")?.split_once(' ')?;
            Some((pid.parse().ok()?, cmd.to_owned()))
        })
        .collect();
    let mount = state
        .lines()
        .find_map(|l| l.strip_prefix("mount "))
        .expect("the killed run's mount")
        .to_owned();
    run.kill().expect("SIGKILL");
    let _ = run.wait();
    // Another test binary waiting for the cluster lock may take it first
    // (and clean up); otherwise look at what the killed run left, with the
    // lock held.
    let serial = match mine.try_machine() {
        Ok(serial) => {
            let left: Vec<i32> = recorded
                .iter()
                .filter(|(p, _)| alive(*p))
                .map(|(p, _)| *p)
                .collect();
            // glusterd, the brick, both clients, B's unshare and init.
            assert!(left.len() >= 6, "{left:?} of {recorded:?}");
            serial
        }
        Err(mine) => {
            eprintln!("another test binary took the cluster lock first and cleaned up");
            mine.then_machine()
        }
    };
    let cluster = Cluster::start_with(serial);
    for (pid, cmd) in &recorded {
        assert!(
            gluster::cmdline(*pid).as_deref() != Some(cmd.as_str()) || !alive(*pid),
            "pid {pid} of the killed run still runs: {cmd}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    assert!(
        !mounts
            .lines()
            .any(|m| m.split(' ').nth(1) == Some(mount.as_str())),
        "the killed run's mount {mount} is left"
    );
    let dir = Path::new(&mount).parent().expect("a folder");
    assert!(!dir.exists(), "the killed run's folder {dir:?} is left");
    // The new cluster works.
    raw_image(&cluster, "disk.raw");
    let out = fpl_on_b(
        &cluster,
        &["check", "--mode", "write", s(&cluster.b("disk.raw"))],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("fpl check on B", &out)
    );
}

#[test]
fn an_apt_plan_that_touches_qemu_is_recognised() {
    // What `apt-get -s install` prints (Debian 12's apt 2.6).
    let plan = "NOTE: This is only a simulation!\n\
                Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
                Inst libgfapi0 (10.3-5 Debian:12.13/stable [amd64])\n\
                Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.13/stable [amd64])\n\
                Conf libgfapi0 (10.3-5 Debian:12.13/stable [amd64])\n";
    assert_eq!(
        gluster::qemu_packages_touched(plan),
        ["qemu-utils", "qemu-system-x86"]
    );
    let plan = "Inst glusterfs-server (10.3-5 Debian:12.13/stable [amd64])\n\
                Conf glusterfs-server (10.3-5 Debian:12.13/stable [amd64])\n";
    assert!(gluster::qemu_packages_touched(plan).is_empty());
}

// ---- QEMU holds on A, fpl looks from B ---------------------------------------

#[test]
fn qemu_io_on_a_is_seen_and_respected_by_fpl_on_b() {
    let cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let (a, b) = (cluster.a("disk.raw"), cluster.b("disk.raw"));
    let _qemu = Proc::qemu_io_a(&cluster, &a);

    // qemu-io takes consistent read and write and shares everything: a
    // writer that shares only read (fpl's write preset, a VM's disk) is
    // refused for qemu-io's write, QEMU's "shared" wording.
    let out = fpl_on_b(&cluster, &["check", "--mode", "write", s(&b)]);
    assert_refused(
        &out,
        Some(1),
        "Failed to get shared \"write\" lock",
        &b,
        "fpl check --mode write on B",
    );
    let out = fpl_on_b(&cluster, &["check", "--mode", "read-shared", s(&b)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("fpl check --mode read-shared on B", &out)
    );
    assert!(
        text(&out.stdout).contains("would be granted"),
        "{}",
        text(&out.stdout)
    );

    // B cannot see qemu-io, but must not call the image free.
    let out = fpl_on_b(&cluster, &["status", s(&b)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("fpl status on B", &out)
    );
    let status = text(&out.stdout);
    let first = status.lines().next().unwrap_or_default();
    assert!(!first.contains("free"), "B calls the image free: {status}");
    assert!(
        first.contains("uses consistent read, write"),
        "B does not say what is used: {status}"
    );
}

// ---- fpl holds on B, QEMU acts on A -------------------------------------------

#[test]
fn fpl_hold_on_b_keeps_qemu_on_a_out() {
    let cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let out = run_bounded(
        Command::new(qemu10("qemu-img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(cluster.a("disk.qcow2"))
            .arg("16M"),
        PATIENCE,
    );
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img create", &out)
    );
    let (raw, qcow2) = (cluster.a("disk.raw"), cluster.a("disk.qcow2"));
    let mut hold = Proc::hold(
        &cluster,
        true,
        "write",
        &[cluster.b("disk.raw"), cluster.b("disk.qcow2")],
    );

    let out = qemu_io(&cluster, false, "write 0 512", &raw);
    assert_refused(
        &out,
        Some(1),
        "Failed to get \"write\" lock",
        &raw,
        "qemu-io write on A",
    );
    // qemu-img info opens a raw image without I/O (no permission at all:
    // admitted whatever is held); a qcow2 image's header is read, which
    // needs that nobody writes.
    let info = |image: &Path| {
        run_bounded(
            Command::new(qemu10("qemu-img")).arg("info").arg(image),
            PATIENCE,
        )
    };
    let out = info(&qcow2);
    assert_refused(
        &out,
        Some(1),
        "Failed to get shared \"write\" lock",
        &qcow2,
        "qemu-img info on A",
    );
    let out = info(&raw);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img info raw on A", &out)
    );

    let status = hold.end(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "fpl hold on B: {}", hold.log());
    let out = qemu_io(&cluster, false, "write 0 512", &raw);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-io write on A", &out)
    );
    assert!(text(&out.stdout).contains("wrote 512/512 bytes at offset 0"));
    let out = info(&qcow2);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img info on A", &out)
    );
}

// ---- QEMU 7.2 VMs on A, fpl on B -------------------------------------------------

#[test]
fn a_vm_on_a_and_fpl_on_b_keep_each_other_out() {
    let cluster = Cluster::start();
    raw_image(&cluster, "vm.raw");
    let (a, b) = (cluster.a("vm.raw"), cluster.b("vm.raw"));
    let drive = vec![
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw", a.display()),
    ];

    // fpl holds on B: a VM with the image as its disk does not start...
    let mut hold = Proc::hold(&cluster, true, "write", std::slice::from_ref(&b));
    let mut vm = Vm::start(&cluster, "vm-drive", &drive);
    let Err((status, log)) = vm.outcome() else {
        panic!("a VM started on A while fpl on B holds its disk for writing");
    };
    assert!(!status.success(), "{log}");
    assert!(log.contains("Failed to get \"write\" lock"), "{log}");
    let hint = format!("Is another process using the image [{}]?", a.display());
    assert!(log.contains(&hint), "{log}");
    drop(vm);

    // ... and a running VM cannot plug it in: blockdev-add opens the node
    // (no permission yet), device_add takes write and is refused.
    let mut vm = Vm::start(&cluster, "vm-hotplug", &[]);
    let mut qmp = vm.running();
    let node = serde_json::json!({
        "driver": "raw", "node-name": "d0",
        "file": {"driver": "file", "filename": s(&a)},
    });
    qmp.run("blockdev-add", node)
        .unwrap_or_else(|e| panic!("blockdev-add: {e}"));
    let disk = serde_json::json!({"driver": "virtio-blk-pci", "drive": "d0", "id": "v0"});
    let refused = qmp.run("device_add", disk.clone());
    assert_eq!(refused, Err("Failed to get \"write\" lock".to_owned()));

    // The hold ends: the same device_add is admitted.
    let status = hold.end(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "fpl hold on B: {}", hold.log());
    qmp.run("device_add", disk)
        .unwrap_or_else(|e| panic!("device_add after the hold ended: {e}"));
    let out = fpl_on_b(&cluster, &["check", "--mode", "write", s(&b)]);
    assert_refused(
        &out,
        Some(1),
        "Failed to get \"write\" lock",
        &b,
        "fpl check --mode write on B against the hot-plugged disk",
    );
    drop(qmp);
    drop(vm);

    // A VM with the image as its -drive: B's fpl is refused, as fpl hold.
    wait_free_on_b(&cluster, &b, FREED_WITHIN);
    let mut vm = Vm::start(&cluster, "vm-drive-2", &drive);
    let _qmp = vm.running();
    let out = fpl_on_b(&cluster, &["check", "--mode", "write", s(&b)]);
    assert_refused(
        &out,
        Some(1),
        "Failed to get \"write\" lock",
        &b,
        "fpl check --mode write on B",
    );
    let out = fpl_on_b(&cluster, &["check", "--mode", "read-shared", s(&b)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("read-shared on B", &out)
    );
    let out = fpl_on_b(&cluster, &["hold", "--mode", "write", s(&b), "--", "true"]);
    assert_refused(
        &out,
        Some(75),
        "Failed to get \"write\" lock",
        &b,
        "fpl hold --mode write on B",
    );
}

// ---- holders that die -------------------------------------------------------------

#[test]
fn kill_9_of_the_holder_frees_the_bytes_across_hosts() {
    let cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let (a, b) = (cluster.a("disk.raw"), cluster.b("disk.raw"));
    let mut hold = Proc::hold(&cluster, false, "write", std::slice::from_ref(&a));

    let out = fpl_on_b(&cluster, &["check", "--mode", "read", s(&b)]);
    assert_refused(
        &out,
        Some(1),
        "Failed to get shared \"write\" lock",
        &b,
        "fpl check --mode read on B",
    );
    let out = qemu_io(&cluster, true, "write 0 512", &b);
    assert_refused(
        &out,
        Some(1),
        "Failed to get \"write\" lock",
        &b,
        "qemu-io write on B",
    );

    let status = hold.end(libc::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let took = wait_free_on_b(&cluster, &b, FREED_WITHIN);
    eprintln!("B saw the bytes free {took:?} after the holder's SIGKILL");
    let out = qemu_io(&cluster, true, "write -P 0x5a 0 512", &b);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-io write on B", &out)
    );
    // The write went through the shared volume: A reads it.
    let out = qemu_io(&cluster, false, "read -P 0x5a 0 512", &a);
    assert!(
        text(&out.stdout).contains("read 512/512 bytes at offset 0"),
        "{}",
        describe("qemu-io read on A", &out)
    );
}

#[test]
fn kill_9_of_host_a_s_fuse_client_frees_the_bytes_for_b() {
    let mut cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let (a, b) = (cluster.a("disk.raw"), cluster.b("disk.raw"));
    let hold = Proc::hold(&cluster, false, "write", std::slice::from_ref(&a));
    let out = qemu_io(&cluster, true, "write 0 512", &b);
    assert_refused(
        &out,
        Some(1),
        "Failed to get \"write\" lock",
        &b,
        "qemu-io write on B",
    );

    // Host A loses its client (as a host would crash): the server drops
    // the client's locks although the holder itself still runs.
    cluster.kill_fuse_client_a();
    assert!(alive(hold.pid), "the holder died with its FUSE client");
    let took = wait_free_on_b(&cluster, &b, FREED_WITHIN);
    eprintln!("B saw the bytes free {took:?} after A's FUSE client's SIGKILL");
    let out = qemu_io(&cluster, true, "write -P 0x5a 0 512", &b);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-io write on B", &out)
    );
    let out = qemu_io(&cluster, true, "read -P 0x5a 0 512", &b);
    assert!(
        text(&out.stdout).contains("read 512/512 bytes at offset 0"),
        "{}",
        describe("qemu-io read on B", &out)
    );
    drop(hold);
}

#[test]
fn a_brick_restart_drops_every_lock() {
    let mut cluster = Cluster::start();
    raw_image(&cluster, "disk.raw");
    let (a, b) = (cluster.a("disk.raw"), cluster.b("disk.raw"));
    let hold = Proc::hold(&cluster, false, "write", std::slice::from_ref(&a));
    let out = fpl_on_b(&cluster, &["check", "--mode", "write", s(&b)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("check on B", &out)
    );

    let old = cluster.brick_pid();
    cluster.restart_brick();
    assert_ne!(cluster.brick_pid(), old);
    assert!(alive(hold.pid), "the holder on A died with the brick");
    // The hazard (CLUSTER.md): the holder still runs and believes it
    // holds, but the new brick knows no lock: B is granted write.
    let out = fpl_on_b(&cluster, &["check", "--mode", "write", s(&b)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "GlusterFS kept the locks over a brick restart (CLUSTER.md says it drops them): {}",
        describe("fpl check --mode write on B", &out)
    );
    drop(hold);
}
