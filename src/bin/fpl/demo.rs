//! `fpl demo`: a real QEMU process holds a fresh qcow2 image; fpl names it,
//! is refused what QEMU would refuse, is admitted what QEMU would admit,
//! and sees the image free once QEMU is gone.
//!
//! Everything happens in a temporary folder that is removed, with the
//! daemon stopped, on every way out: success, failure, panic, SIGINT,
//! SIGTERM or SIGHUP (those are blocked and looked at between steps, so
//! cleaning up is never cut short).

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::signals::{Signals, STOP};
use crate::{check, out, status, EXIT_ERROR, EXIT_OK};

const IMAGE: &str = "vm.qcow2";
const SOCKET: &str = "nbd.sock";
const LOG: &str = "qemu-storage-daemon.log";
/// How long the daemon may take to lock the image, or to stop.
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Why the demo stopped early.
enum Stop {
    Failed(String),
    Signal(i32),
}

impl From<String> for Stop {
    fn from(msg: String) -> Stop {
        Stop::Failed(msg)
    }
}

/// What must be undone: the daemon, the folder, our working directory.
struct Demo {
    signals: Signals,
    dir: Option<PathBuf>,
    home: Option<PathBuf>,
    daemon: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = stop(&mut daemon);
        }
        if let Some(home) = self.home.take() {
            let _ = std::env::set_current_dir(home);
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                diag!("fpl: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Runs `fpl demo`; returns the exit status.
pub fn run() -> u8 {
    let signals = match Signals::block(&STOP, true) {
        Ok(fd) => fd,
        Err(msg) => {
            diag!("fpl: demo: {msg}");
            return EXIT_ERROR;
        }
    };
    let mut demo = Demo {
        signals,
        dir: None,
        home: None,
        daemon: None,
    };
    let outcome = demo.steps();
    drop(demo);
    match outcome {
        Ok(()) => EXIT_OK,
        Err(Stop::Failed(msg)) => {
            diag!("fpl: demo: {msg}");
            EXIT_ERROR
        }
        Err(Stop::Signal(signo)) => {
            diag!("fpl: demo: interrupted by signal {signo}; cleaned up");
            u8::try_from(128 + signo).unwrap_or(EXIT_ERROR)
        }
    }
}

impl Demo {
    /// Stops with `Stop::Signal` if a stop signal has arrived.
    fn interrupted(&self) -> Result<(), Stop> {
        match self.signals.pending() {
            Some(signal) => Err(Stop::Signal(signal as i32)),
            None => Ok(()),
        }
    }

    /// A command for `program` that starts with fpl's original signal mask.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        self.signals.restore_in_child(&mut command);
        command
    }

    fn steps(&mut self) -> Result<(), Stop> {
        let qemu_img = find_program("qemu-img")?;
        let daemon_program = find_program("qemu-storage-daemon")?;

        let dir = make_temp_dir()?;
        self.dir = Some(dir.clone());
        self.home = std::env::current_dir().ok();
        std::env::set_current_dir(&dir)
            .map_err(|e| format!("cannot enter {}: {e}", dir.display()))?;
        out(&format!("$ cd {}", dir.display()));

        out(&format!("$ qemu-img create -f qcow2 {IMAGE} 64M"));
        let created = self
            .command(&qemu_img)
            .args(["create", "-q", "-f", "qcow2", IMAGE, "64M"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", qemu_img.display()))?;
        if !created.status.success() {
            return Err(Stop::Failed(format!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            )));
        }
        self.interrupted()?;

        let daemon_args = [
            "--blockdev".to_owned(),
            format!("driver=file,node-name=file0,filename={IMAGE}"),
            "--blockdev".to_owned(),
            "driver=qcow2,node-name=disk0,file=file0".to_owned(),
            "--nbd-server".to_owned(),
            format!("addr.type=unix,addr.path={SOCKET}"),
            "--export".to_owned(),
            "type=nbd,id=exp0,node-name=disk0,writable=on".to_owned(),
        ];
        out(&format!(
            "$ qemu-storage-daemon {} &    # a QEMU process using the image read-write",
            daemon_args.join(" ")
        ));
        let log = File::create(LOG).map_err(|e| format!("cannot create {LOG}: {e}"))?;
        let daemon = self
            .command(&daemon_program)
            .args(&daemon_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", daemon_program.display()))?;
        let daemon_pid = daemon.id();
        self.daemon = Some(daemon);
        self.wait_for_locks()?;

        let image = PathBuf::from(IMAGE);
        let holders = show_status(&image)?;
        if !holders.iter().any(|h| h.pid as u32 == daemon_pid) {
            out(&format!(
                "  (qemu-storage-daemon, pid {daemon_pid}, was not found in /proc)"
            ));
        }
        self.interrupted()?;

        if show_check(&image, fpl::Mode::Exclusive).is_ok() {
            return Err(Stop::Failed(
                "exclusive access was granted while qemu-storage-daemon writes the image: \
                 the daemon did not lock it as expected"
                    .to_owned(),
            ));
        }
        out(&format!(
            "$ qemu-img info {IMAGE}    # QEMU refuses for the same reason"
        ));
        let info = self
            .command(&qemu_img)
            .args(["info", IMAGE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", qemu_img.display()))?;
        for line in String::from_utf8_lossy(&info.stderr).lines() {
            out(line);
        }
        self.interrupted()?;

        let _ = show_check(&image, fpl::Mode::ReadShared);
        self.interrupted()?;

        out(&format!(
            "$ kill {daemon_pid}    # stop qemu-storage-daemon"
        ));
        if let Some(mut daemon) = self.daemon.take() {
            stop(&mut daemon)?;
        }
        show_status(&image)?;
        out(&format!("$ rm -r {}", dir.display()));
        Ok(())
    }

    /// Polls until the daemon holds the write byte, it exits, or patience
    /// runs out.
    fn wait_for_locks(&mut self) -> Result<(), Stop> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.interrupted()?;
            if let Some(daemon) = self.daemon.as_mut() {
                if let Ok(Some(status)) = daemon.try_wait() {
                    return Err(Stop::Failed(format!(
                        "qemu-storage-daemon exited ({status}) before locking the image: {}",
                        read_log()
                    )));
                }
            }
            let held = fpl::query(Path::new(IMAGE), false)
                .map_err(|e| format!("cannot inspect {IMAGE}: {e}"))?
                .held;
            if held.perm.contains(fpl::Perm::Write) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Stop::Failed(format!(
                    "qemu-storage-daemon did not lock the image within {} s: {}",
                    PATIENCE.as_secs(),
                    read_log()
                )));
            }
            sleep(POLL);
        }
    }
}

/// Prints `fpl status IMAGE` as the command would; returns the holders.
fn show_status(image: &Path) -> Result<Vec<fpl::Holder>, String> {
    out(&format!("$ fpl status {}", image.display()));
    let mut holders = Vec::new();
    for i in status::inspect(&[image.to_path_buf()], true) {
        let st = i
            .outcome
            .map_err(|e| format!("cannot inspect {}: {e}", image.display()))?;
        status::describe_status(&i.path, &st, true, &mut status::Notes::default())
            .iter()
            .for_each(|line| out(line));
        holders.extend(st.holders);
    }
    Ok(holders)
}

/// Prints `fpl check --mode MODE IMAGE` as the command would.
fn show_check(image: &Path, mode: fpl::Mode) -> fpl::Result<()> {
    out(&format!(
        "$ fpl check --mode {} {}",
        mode.name(),
        image.display()
    ));
    let request = fpl::Request::new(mode.perm(), mode.shared());
    let outcome = fpl::check(image, request, fpl::Options::default());
    check::print_outcome(image, mode.name(), &outcome);
    outcome
}

fn read_log() -> String {
    let text = fs::read_to_string(LOG).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        "it printed nothing".to_owned()
    } else {
        text.to_owned()
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `PATIENCE`.
fn stop(child: &mut Child) -> Result<(), String> {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    if matches!(child.try_wait(), Ok(None)) {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(POLL);
        }
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    child
        .wait()
        .map(drop)
        .map_err(|e| format!("cannot wait for qemu-storage-daemon: {e}"))
}

/// The program's path in `PATH`, or what to install.
fn find_program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "{name} is not installed (not found in PATH): the demo needs QEMU's \
                 qemu-img and qemu-storage-daemon; install qemu-utils (e.g. \
                 `apt install qemu-utils`)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new folder only we can enter, under the system's temporary folder.
fn make_temp_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700);
    let mut last_error = None;
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "fpl-demo-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(format!(
                    "cannot create a folder in {}: {e} (set TMPDIR to a writable folder)",
                    base.display()
                ))
            }
        }
    }
    Err(format!(
        "cannot create a folder in {}: {}",
        base.display(),
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}
