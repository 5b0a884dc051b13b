//! A refused check in a process that cannot create a single thread: the
//! holder lookup walks `/proc` on several threads when the host has many
//! processes, and a thread that cannot be made must leave its share to the
//! calling thread, never turn the conflict into a failure or a panic.
//!
//! `fpl check` runs as `nobody` (RLIMIT_NPROC does not bind root) under
//! `prlimit --nproc=1`, against a `qemu-io` holding the image, with enough
//! processes on the host (150 `sleep`s) that the walk wants several threads.
//! Needs root, util-linux (setpriv, prlimit) and QEMU 10's qemu-io.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Kids, TempDir};

const FPL: &str = env!("CARGO_BIN_EXE_fpl");

fn tool(name: &str, package: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install {package} (apt-get install {package})")
        })
}

fn qemu_io() -> PathBuf {
    ["/usr/bin/qemu-io", "/usr/local/bin/qemu-io"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("qemu-io not found: this test needs QEMU 10's qemu-io, preinstalled on this machine"))
}

/// `args` run as nobody, in a process (and its threads) limited to one task.
fn as_nobody_one_task(args: &[&str]) -> Output {
    Command::new(tool("setpriv", "util-linux"))
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(tool("prlimit", "util-linux"))
        .args(["--nproc=1", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

fn pids() -> usize {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .count()
}

#[test]
fn refused_check_without_threads_is_a_conflict() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test drops to nobody: run it as root"
    );
    let tmp = TempDir::new("no-threads");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = tmp.path().join("disk.raw");
    fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the image");
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).expect("chmod");

    // The setting binds: nobody under prlimit --nproc=1 cannot fork.
    let out = as_nobody_one_task(&["/bin/sh", "-c", "/bin/true & wait $!"]);
    assert!(
        !out.status.success(),
        "a shell as nobody with --nproc=1 could fork: the limit does not bind ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and can read the image.
    let out = as_nobody_one_task(&["/usr/bin/head", "-c", "1", image.to_str().expect("UTF-8")]);
    assert!(
        out.status.success(),
        "nobody cannot read {image:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Enough processes that the walk of /proc wants several threads.
    let mut kids = Kids(Vec::new());
    while pids() < 300 && kids.0.len() < 400 {
        kids.0.push(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        );
    }
    assert!(pids() >= 200, "only {} processes on the host", pids());

    let qemu = Kids(vec![Command::new(qemu_io())
        .args(["-f", "raw"])
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start qemu-io")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fpl::query(&image, false).map_or(true, |s| s.held.is_empty()) {
        assert!(Instant::now() < deadline, "qemu-io never locked the image");
        std::thread::sleep(Duration::from_millis(20));
    }

    // nobody runs a copy in the 0755 folder: the checkout's own folders
    // may be closed to other users (a tarball unpacked in a 0700 folder).
    let fpl = tmp.path().join("fpl");
    fs::copy(FPL, &fpl).expect("copy the fpl command");
    fs::set_permissions(&fpl, fs::Permissions::from_mode(0o755)).expect("chmod fpl");
    let fpl = fpl.to_str().expect("UTF-8 temp path");
    let path = image.to_str().expect("UTF-8 temp path");
    let out = as_nobody_one_task(&[fpl, "check", "--mode", "write", path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "fpl check panicked without threads:\n{stdout}{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "fpl check against qemu-io, unable to create threads, must report a conflict (exit 1):\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("Failed to get") || stderr.contains("Failed to get"),
        "no conflict in fpl check's output:\n{stdout}{stderr}"
    );

    // The same check with threads allowed says the same thing.
    let free = Command::new(tool("setpriv", "util-linux"))
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args([fpl, "check", "--mode", "write", path])
        .output()
        .expect("run setpriv");
    assert_eq!(free.status.code(), Some(1), "{free:?}");
    drop(qemu);
    drop(kids);
}
