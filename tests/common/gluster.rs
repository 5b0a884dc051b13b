//! A two-host GlusterFS test bed (/work/shared/CLUSTER.md's recipe): one
//! glusterd with its state in a private folder, a single-brick volume, and
//! two FUSE mounts of it. Host A is a plain mount in the test's own
//! namespaces; host B is a mount inside a mount + PID namespace of its own,
//! so that B sees none of A's processes in /proc (and A's tools see none of
//! B's holders as theirs): the only way a lock gets from one to the other is
//! through the file system's lock manager, as between two machines.
//!
//! Only one glusterd can run on a machine (port 24007), so a [`Cluster`]
//! holds a process-wide mutex and an flock on [`LOCK_FILE`] from start to
//! drop: clusters of one test binary, or of several, run one at a time.
//! Everything started is recorded by pid (with its command line) in
//! [`STATE_FILE`], so that a run killed before its teardown is cleaned up
//! by the next cluster, by pid, never by name.
//!
//! Needs root, /dev/fuse and GlusterFS (glusterfs-server, glusterfs-client:
//! installed here when missing, unless that would touch a QEMU package).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Serialises clusters across test binaries (flock).
pub const LOCK_FILE: &str = "/run/fpl-gluster.lock";
/// What a running cluster started, for the next one to clean up after a
/// killed run: `pid PID CMDLINE`, `mount PATH`, `dir PATH`, `file PATH` lines.
pub const STATE_FILE: &str = "/run/fpl-gluster.state";

/// The bound on any wait of the harness; only a broken setup waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// Serialises clusters within one test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// The right to run a cluster: the process-wide mutex and the machine-wide
/// flock. Held by a [`Cluster`] until it is dropped; [`Cluster::stop`]
/// hands it back so that a test can look at the machine after a teardown
/// before another cluster may start.
pub struct Serial {
    _flock: File,
    _guard: MutexGuard<'static, ()>,
}

impl Serial {
    /// Waits for the mutex, then for the flock.
    pub fn take() -> Serial {
        InProcess::take().then_machine()
    }
}

/// The process-wide half of a [`Serial`]: no other cluster of this test
/// binary starts meanwhile, but another process may run one (a test that
/// runs a cluster in a child process holds this).
pub struct InProcess(MutexGuard<'static, ()>);

impl InProcess {
    pub fn take() -> InProcess {
        InProcess(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits for the flock too.
    pub fn then_machine(self) -> Serial {
        match self.machine(libc::LOCK_EX) {
            Ok(serial) => serial,
            Err((_, e)) => panic!("flock {LOCK_FILE}: {e}"),
        }
    }

    /// The flock if nobody holds it, else self back.
    pub fn try_machine(self) -> Result<Serial, InProcess> {
        self.machine(libc::LOCK_EX | libc::LOCK_NB)
            .map_err(|(me, _)| me)
    }

    fn machine(self, how: i32) -> Result<Serial, (InProcess, std::io::Error)> {
        let flock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(LOCK_FILE)
            .unwrap_or_else(|e| panic!("cannot open {LOCK_FILE}: {e} (the cluster needs root)"));
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(flock.as_raw_fd(), how) } != 0 {
            return Err((self, std::io::Error::last_os_error()));
        }
        Ok(Serial {
            _flock: flock,
            _guard: self.0,
        })
    }
}

/// A running two-host cluster; torn down on drop (on panic too).
pub struct Cluster {
    serial: Option<Serial>,
    dir: PathBuf,
    vol: String,
    a: PathBuf,
    b: PathBuf,
    glusterd: Option<Child>,
    /// `unshare`, whose child is host B's init.
    b_unshare: Option<Child>,
    b_init: i32,
    b_fuse: i32,
    a_fuse: i32,
    a_mounted: bool,
    brick: i32,
    /// Every pid this cluster started, for [`Cluster::stop`]'s callers.
    started: Vec<i32>,
    /// Files outside `dir` to remove (the brick's socket and log).
    files: Vec<PathBuf>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Installs what is missing, cleans up after a killed run, starts
    /// glusterd, creates and starts a fresh volume and mounts it on A and B.
    pub fn start() -> Cluster {
        require_root();
        Cluster::start_with(Serial::take())
    }

    /// [`Cluster::start`] with the right to run one already taken.
    pub fn start_with(serial: Serial) -> Cluster {
        require_tools();
        clean_up_killed_run();
        refuse_foreign_glusterd();
        resolve_own_host_name();

        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let vol = format!("fpl{}{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("fpl-gluster-{vol}"));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["state", "logs", "brick", "a", "b"] {
            fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        }
        let mut cluster = Cluster {
            serial: Some(serial),
            a: dir.join("a"),
            b: dir.join("b"),
            dir,
            vol,
            glusterd: None,
            b_unshare: None,
            b_init: 0,
            b_fuse: 0,
            a_fuse: 0,
            a_mounted: false,
            brick: 0,
            started: Vec::new(),
            files: Vec::new(),
        };
        cluster.record(&format!("dir {}", cluster.dir.display()));
        cluster.record(&format!("dir /var/run/gluster/vols/{}", cluster.vol));
        cluster.start_glusterd();
        cluster.create_volume();
        // B first: its namespace is copied from this one, and A's mount
        // must not be in it.
        cluster.start_host_b();
        cluster.mount_a();
        cluster
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.vol
    }

    /// `rel` as host A names it (valid in the test's own namespace).
    pub fn a(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.a.join(rel)
    }

    /// `rel` as host B names it (valid only in commands run by
    /// [`Cluster::on_b`]).
    pub fn b(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.b.join(rel)
    }

    /// A command that runs `program` on host B (`nsenter` into B's mount and
    /// PID namespaces; give it absolute paths: nsenter starts it in `/`).
    /// nsenter forks the program and waits for it; signals sent to the
    /// returned child reach nsenter only: use [`on_b_pid`] to signal the
    /// program itself.
    pub fn on_b(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.b_init.to_string())
            .args(["-m", "-p", "--"])
            .arg(program);
        c
    }

    /// The log folder (glusterd's, the mounts', host B's).
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The brick process (glusterfsd).
    pub fn brick_pid(&self) -> i32 {
        self.brick
    }

    /// Host A's FUSE client (the glusterfs process serving A's mount).
    pub fn fuse_client_pid_a(&self) -> i32 {
        self.a_fuse
    }

    /// Host B's FUSE client, as this namespace numbers it.
    pub fn fuse_client_pid_b(&self) -> i32 {
        self.b_fuse
    }

    /// Host B's init (pid 1 in B's PID namespace).
    pub fn b_init_pid(&self) -> i32 {
        self.b_init
    }

    /// Every process this cluster started (glusterd, brick, both FUSE
    /// clients, B's unshare and init), whatever became of them.
    pub fn started_pids(&self) -> Vec<i32> {
        self.started.clone()
    }

    /// Kills the brick (SIGKILL), waits until its pid is gone (glusterd
    /// would think a zombie still serves), starts it again with `volume
    /// start force` and waits until both mounts answer again.
    pub fn restart_brick(&mut self) {
        let old = self.brick;
        kill(old, libc::SIGKILL);
        assert!(
            wait_gone(old, PATIENCE),
            "the brick (pid {old}) is still in /proc {PATIENCE:?} after SIGKILL"
        );
        self.gluster(&["volume", "start", &self.vol, "force"]);
        self.brick = wait_for(PATIENCE, "the restarted brick's pid file", || {
            read_brick_pid(&self.vol).filter(|&p| p != old && alive(p))
        });
        self.record_pid(self.brick);
        let a = self.a.clone();
        wait_for(PATIENCE, "host A's mount to answer again", || {
            fs::metadata(&a).ok()
        });
        wait_for(PATIENCE, "host B's mount to answer again", || {
            let mut c = self.on_b("stat");
            c.arg(&self.b);
            run_bounded(&mut c, PATIENCE).status.success().then_some(())
        });
    }

    /// Kills host A's FUSE client (SIGKILL) and lazily unmounts A's dead
    /// mount ("Transport endpoint is not connected" until then).
    pub fn kill_fuse_client_a(&mut self) {
        let pid = self.a_fuse;
        kill(pid, libc::SIGKILL);
        wait_for(PATIENCE, "host A's FUSE client to die", || {
            (!alive(pid)).then_some(())
        });
        let out = run_bounded(Command::new("umount").arg("-l").arg(&self.a), PATIENCE);
        assert!(
            out.status.success(),
            "umount -l {:?}: {}",
            self.a,
            String::from_utf8_lossy(&out.stderr)
        );
        self.a_mounted = false;
    }

    /// Tears the cluster down now and hands back the right to run one, so
    /// that the caller can check what is left before another cluster starts.
    pub fn stop(mut self) -> Serial {
        self.teardown();
        self.serial
            .take()
            .expect("a cluster holds its serial until dropped")
    }

    // ---- start -----------------------------------------------------------

    fn start_glusterd(&mut self) {
        let state = self.dir.join("state");
        let vol_file = self.dir.join("glusterd.vol");
        let stock = fs::read_to_string("/etc/glusterfs/glusterd.vol")
            .unwrap_or_else(|e| panic!("/etc/glusterfs/glusterd.vol: {e} (glusterfs-server)"));
        // The same daemon with its state (peers, volumes, hooks) in a folder
        // of this cluster: /var/lib/glusterd is left alone.
        let private = stock.replace(
            "option working-directory /var/lib/glusterd",
            &format!("option working-directory {}", state.display()),
        );
        assert_ne!(
            private, stock,
            "/etc/glusterfs/glusterd.vol sets no working-directory /var/lib/glusterd"
        );
        fs::write(&vol_file, private).expect("glusterd.vol can be written");
        let log = self.logs().join("glusterd.log");
        let out = File::create(self.logs().join("glusterd.out")).expect("log file");
        let mut cmd = Command::new("glusterd");
        cmd.arg("-N")
            .arg("-f")
            .arg(&vol_file)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        // SAFETY: setsid(2) is async-signal-safe; a session of its own keeps
        // glusterd out of the terminal's signals (Ctrl-C reaches the test,
        // whose teardown stops the volume before glusterd).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start glusterd: {e}"));
        self.record_pid(child.id() as i32);
        self.glusterd = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = run_bounded(
                Command::new("gluster").args(["--mode=script", "volume", "list"]),
                PATIENCE,
            );
            if out.status.success() {
                return;
            }
            let exited = self
                .glusterd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "glusterd {}: `gluster volume list` says {:?}\nlast lines of {log:?}:\n{}",
                    match exited {
                        Some(s) => format!("exited ({s})"),
                        None => format!("did not answer within {PATIENCE:?}"),
                    },
                    String::from_utf8_lossy(&out.stderr).trim(),
                    tail(&log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_volume(&mut self) {
        let host = host_name();
        // The brick is named by host name (gluster refuses 127.0.0.1 and
        // localhost) and lies on the root file system (hence force).
        let brick = format!("{host}:{}", self.dir.join("brick").display());
        self.gluster(&["volume", "create", &self.vol, &brick, "force"]);
        self.gluster(&["volume", "start", &self.vol]);
        self.brick = wait_for(PATIENCE, "the brick's pid file", || {
            read_brick_pid(&self.vol).filter(|&p| alive(p))
        });
        self.record_pid(self.brick);
    }

    fn start_host_b(&mut self) {
        let ready = self.dir.join("b.ready");
        let log = File::create(self.logs().join("host-b.out")).expect("log file");
        // Host B: / made private (nothing mounted here reaches A and back),
        // the volume mounted, then an init that only waits. Killing it ends
        // the namespace: the kernel kills every process in it, B's FUSE
        // client among them, and the mount goes with the namespace.
        let script = r#"set -e
mount --make-rprivate /
mount -t glusterfs -o log-file="$3" 127.0.0.1:/"$2" "$1"
: > "$4"
exec sleep infinity"#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            script,
            "host-b",
        ])
        .arg(&self.b)
        .arg(&self.vol)
        .arg(self.logs().join("mount-b.log"))
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unshare (util-linux): {e}"));
        let unshare = child.id() as i32;
        self.record_pid(unshare);
        self.b_unshare = Some(child);
        self.b_init = wait_for(PATIENCE, "host B's init", || {
            self.assert_b_alive();
            children(unshare).first().copied()
        });
        wait_for(PATIENCE, "host B's mount", || {
            self.assert_b_alive();
            ready.exists().then_some(())
        });
        // Recorded as what it will be until killed (a killed run's init is
        // recognised by this command line).
        let init = self.b_init;
        wait_for(PATIENCE, "host B's init to become `sleep infinity`", || {
            self.assert_b_alive();
            (cmdline(init).as_deref() == Some("sleep infinity")).then_some(())
        });
        self.record_pid(self.b_init);
        let b = self.b.clone();
        self.b_fuse = wait_for(PATIENCE, "host B's FUSE client", || {
            fuse_client(&self.vol, &b)
        });
        self.record_pid(self.b_fuse);
    }

    fn assert_b_alive(&mut self) {
        let Some(child) = self.b_unshare.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "host B (unshare) exited ({status}):\n{}\n{}",
                tail(&self.logs().join("host-b.out"), 30),
                tail(&self.logs().join("mount-b.log"), 30)
            );
        }
    }

    fn mount_a(&mut self) {
        let log = self.logs().join("mount-a.log");
        let out = run_bounded(
            Command::new("mount")
                .args(["-t", "glusterfs", "-o"])
                .arg(format!("log-file={}", log.display()))
                .arg(format!("127.0.0.1:/{}", self.vol))
                .arg(&self.a),
            PATIENCE,
        );
        assert!(
            out.status.success(),
            "mount of {} on {:?} failed: {}\n{}",
            self.vol,
            self.a,
            String::from_utf8_lossy(&out.stderr),
            tail(&log, 30)
        );
        self.a_mounted = true;
        self.record(&format!("mount {}", self.a.display()));
        let a = self.a.clone();
        self.a_fuse = wait_for(PATIENCE, "host A's FUSE client", || {
            fuse_client(&self.vol, &a)
        });
        self.record_pid(self.a_fuse);
    }

    /// Runs the gluster CLI; panics with its output (and glusterd's log)
    /// when it fails.
    fn gluster(&self, args: &[&str]) -> Output {
        let out = run_bounded(
            Command::new("gluster").arg("--mode=script").args(args),
            PATIENCE,
        );
        assert!(
            out.status.success(),
            "gluster {}: {}{}\nlast lines of glusterd's log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.logs().join("glusterd.log"), 20)
        );
        out
    }

    fn record_pid(&mut self, pid: i32) {
        self.started.push(pid);
        // Right after spawn(), /proc may not show the command line yet.
        let cmd = wait_for(PATIENCE, "a started process's command line", || {
            cmdline(pid)
                .or_else(|| (!Path::new(&format!("/proc/{pid}")).exists()).then(String::new))
        });
        self.record(&format!("pid {pid} {cmd}"));
        if pid == self.brick {
            // The brick's socket and log lie outside the cluster's folder.
            let words: Vec<&str> = cmd.split(' ').collect();
            for flag in ["-S", "-l"] {
                if let Some(w) = words.windows(2).find(|w| w[0] == flag) {
                    self.record(&format!("file {}", w[1]));
                    self.files.push(PathBuf::from(w[1]));
                }
            }
        }
    }

    fn record(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(STATE_FILE)
            .unwrap_or_else(|e| panic!("cannot write {STATE_FILE}: {e}"));
        writeln!(f, "{line}").unwrap_or_else(|e| panic!("cannot write {STATE_FILE}: {e}"));
    }

    // ---- teardown --------------------------------------------------------

    /// Idempotent: every step checks what is left.
    fn teardown(&mut self) {
        // Host B: its init's death kills the namespace and its mount.
        if let Some(mut unshare) = self.b_unshare.take() {
            if self.b_init > 0 {
                kill(self.b_init, libc::SIGKILL);
            }
            let _ = unshare.kill();
            let _ = unshare.wait();
            wait_gone(self.b_fuse, PATIENCE);
        }
        if self.a_mounted {
            let plain = run_within(Command::new("umount").arg(&self.a), PATIENCE);
            if !plain.is_ok_and(|o| o.status.success()) {
                // Busy (a test's process still has a file open): detach it.
                let _ = run_within(Command::new("umount").arg("-l").arg(&self.a), PATIENCE);
            }
            self.a_mounted = false;
        }
        if self.a_fuse > 0 && !wait_gone(self.a_fuse, Duration::from_secs(10)) {
            kill(self.a_fuse, libc::SIGKILL);
            wait_gone(self.a_fuse, PATIENCE);
        }
        if let Some(mut glusterd) = self.glusterd.take() {
            for args in [
                ["volume", "stop", &self.vol, "force"].as_slice(),
                ["volume", "delete", &self.vol].as_slice(),
            ] {
                let _ = run_within(
                    Command::new("gluster").arg("--mode=script").args(args),
                    PATIENCE,
                );
            }
            if self.brick > 0 && alive(self.brick) {
                kill(self.brick, libc::SIGKILL);
            }
            kill(glusterd.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while glusterd.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = glusterd.kill();
                    let _ = glusterd.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The brick was glusterd's daemon: init reaps it, in its own time.
        if self.brick > 0 {
            wait_gone(self.brick, PATIENCE);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(format!("/var/run/gluster/vols/{}", self.vol));
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        let _ = fs::remove_file(STATE_FILE);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

// ---- the machine -------------------------------------------------------------

/// GlusterFS, FUSE, util-linux's namespace tools, and root: installs
/// GlusterFS when missing (never touching a QEMU package), fails saying
/// what is needed otherwise.
fn require_tools() {
    require_root();
    let gluster_missing = missing_gluster_tools();
    if !gluster_missing.is_empty() {
        install_glusterfs(&gluster_missing);
    }
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("getent", "libc-bin"),
    ] {
        assert!(
            find_tool(tool).is_some(),
            "{tool} not found: install {package} (apt-get install {package})"
        );
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: GlusterFS mounts through FUSE (modprobe fuse, or give the \
         container /dev/fuse)"
    );
}

fn missing_gluster_tools() -> Vec<&'static str> {
    ["glusterd", "gluster", "mount.glusterfs"]
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect()
}

/// Root, or a panic saying so (and what to install, if GlusterFS is
/// missing: only root can have the harness install it).
fn require_root() {
    if !is_root() {
        let gluster_missing = missing_gluster_tools();
        let install = if gluster_missing.is_empty() {
            String::new()
        } else {
            format!(
                " and GlusterFS ({} missing: apt-get install glusterfs-server glusterfs-client)",
                gluster_missing.join(", ")
            )
        };
        panic!(
            "the GlusterFS tests need root (glusterd, mount, namespaces){install}: run cargo \
             test as root"
        );
    }
}

/// `apt-get install glusterfs-server glusterfs-client`, after a simulation
/// has shown that it installs and removes no QEMU package (the machine's
/// QEMU 10.0.2 cannot be fetched again).
fn install_glusterfs(missing: &[&str]) {
    let packages = ["glusterfs-server", "glusterfs-client"];
    let apt = |args: &[&str]| {
        run_bounded(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(args),
            Duration::from_secs(600),
        )
    };
    let update = apt(&["update", "-qq"]);
    assert!(
        update.status.success(),
        "{missing:?} missing, and apt-get update failed: {}",
        String::from_utf8_lossy(&update.stderr)
    );
    let mut sim = vec!["-s", "install", "-y"];
    sim.extend(packages);
    let plan = apt(&sim);
    assert!(
        plan.status.success(),
        "{missing:?} missing, and `apt-get -s install {}` failed: {}",
        packages.join(" "),
        String::from_utf8_lossy(&plan.stderr)
    );
    let touched = qemu_packages_touched(&String::from_utf8_lossy(&plan.stdout));
    assert!(
        touched.is_empty(),
        "refusing to install {}: apt-get would install or remove {touched:?}, and the \
         machine's QEMU 10.0.2 must stay; install GlusterFS by hand",
        packages.join(" ")
    );
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages);
    let out = apt(&install);
    assert!(
        out.status.success(),
        "apt-get install {} failed: {}",
        packages.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    for t in missing {
        assert!(
            find_tool(t).is_some(),
            "{t} still missing after installing {}",
            packages.join(" ")
        );
    }
}

/// The QEMU packages an `apt-get -s` plan installs, upgrades or removes
/// (its `Inst NAME ...` / `Remv NAME ...` lines).
pub fn qemu_packages_touched(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next() {
                Some("Inst" | "Remv" | "Purg") => words.next(),
                _ => None,
            }
        })
        .filter(|name| name.starts_with("qemu"))
        .map(str::to_owned)
        .collect()
}

/// The brick is named by host name: make it resolve (CLUSTER.md).
fn resolve_own_host_name() {
    let host = host_name();
    let ok = |h: &str| {
        run_bounded(Command::new("getent").args(["hosts", h]), PATIENCE)
            .status
            .success()
    };
    if !ok(&host) {
        let mut f = OpenOptions::new()
            .append(true)
            .open("/etc/hosts")
            .unwrap_or_else(|e| panic!("{host} does not resolve and /etc/hosts: {e}"));
        writeln!(f, "127.0.0.1 {host}").expect("/etc/hosts can be written");
        assert!(
            ok(&host),
            "{host} does not resolve after adding it to /etc/hosts"
        );
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("/proc/sys/kernel/hostname")
        .trim()
        .to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Kills (SIGKILL) what a previous run recorded and left behind, each pid
/// only if it still runs the command recorded (a pid may have been reused);
/// unmounts its mount, removes its folders.
fn clean_up_killed_run() {
    let Ok(state) = fs::read_to_string(STATE_FILE) else {
        return;
    };
    let entries: Vec<(&str, &str)> = state
        .lines()
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    // Processes first: a mount detached while its client still runs would
    // make the client exit by itself, racing the check of its command line.
    let mut pids = Vec::new();
    for (_, rest) in entries.iter().filter(|(kind, _)| *kind == "pid") {
        let (pid, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if pid > 1 && !cmd.is_empty() && cmdline(pid).as_deref() == Some(cmd) {
            eprintln!("gluster harness: killing pid {pid} of a killed run: {cmd}");
            kill(pid, libc::SIGKILL);
            pids.push(pid);
        }
    }
    for (_, mount) in entries.iter().filter(|(kind, _)| *kind == "mount") {
        let mounted = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|m| m.split_whitespace().nth(1) == Some(mount));
        if mounted {
            eprintln!("gluster harness: unmounting {mount} of a killed run");
            let _ = run_within(Command::new("umount").arg("-l").arg(mount), PATIENCE);
        }
    }
    for pid in pids {
        wait_gone(pid, PATIENCE);
    }
    for (kind, path) in entries {
        match kind {
            "dir" => {
                let _ = fs::remove_dir_all(path);
            }
            "file" => {
                let _ = fs::remove_file(path);
            }
            _ => {}
        }
    }
    let _ = fs::remove_file(STATE_FILE);
}

/// One glusterd per machine: a running one that this harness did not start
/// (nor clean up) is somebody's, and the tests would use it.
fn refuse_foreign_glusterd() {
    let foreign: Vec<String> = proc_pids()
        .into_iter()
        .filter(|&p| comm(p).as_deref() == Some("glusterd") && alive(p))
        .map(|p| format!("pid {p}: {}", cmdline(p).unwrap_or_default()))
        .collect();
    assert!(
        foreign.is_empty(),
        "a glusterd that this test harness did not start is running ({}): only one can run \
         on a machine (port 24007); stop it before running the GlusterFS tests",
        foreign.join("; ")
    );
}

// ---- processes ---------------------------------------------------------------

/// Runs `cmd` to its end (stdin closed, output captured); killed, and the
/// test failed, after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    run_within(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_bounded`] that says what went wrong instead of panicking (for the
/// teardown, which runs in `Drop`, during a panic too: a second panic
/// there would abort the test binary).
pub fn run_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
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
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: wait: {e}")),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Polls `f` every 20 ms until it gives a value; panics naming `what`
/// after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid, in this namespace, of the program that `nsenter` (the child
/// of a command made by [`Cluster::on_b`]) runs on host B; waits for the
/// fork.
pub fn on_b_pid(nsenter: &Child) -> i32 {
    let pid = nsenter.id() as i32;
    wait_for(PATIENCE, "nsenter to start its program", || {
        children(pid).first().copied()
    })
}

/// Sends `sig` to `pid` (nothing when the pid is gone).
pub fn kill(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on a pid this harness recorded.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Running: in /proc and not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and
        // may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` has left /proc (reaped); false after `limit`.
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    if pid <= 0 {
        return true;
    }
    let deadline = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The command line, arguments joined by spaces (and newlines made
/// spaces: it is kept in a line of [`STATE_FILE`]).
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).replace('\n', " "))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

pub fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The glusterfs client serving `mount_point` for `vol` (it daemonises:
/// found by its command line, `... --volfile-id=/VOL MOUNT_POINT`).
fn fuse_client(vol: &str, mount_point: &Path) -> Option<i32> {
    let id = format!("--volfile-id=/{vol}");
    let dir = mount_point.to_str()?;
    proc_pids().into_iter().find(|&p| {
        comm(p).as_deref() == Some("glusterfs")
            && alive(p)
            && cmdline(p).is_some_and(|c| {
                let words: Vec<&str> = c.split(' ').collect();
                words.contains(&id.as_str()) && words.last() == Some(&dir)
            })
    })
}

fn read_brick_pid(vol: &str) -> Option<i32> {
    let dir = fs::read_dir(format!("/var/run/gluster/vols/{vol}")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .find_map(|e| fs::read_to_string(e.path()).ok()?.trim().parse().ok())
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({path:?}: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
