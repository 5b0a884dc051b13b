//! The QEMU compatibility suite: C programs compiled against include/fpl.h
//! (tests/c/qemu_*.c) that start real QEMU processes — QEMU 10.0 from the
//! machine and QEMU 7.2 unpacked by scripts/fetch-qemu-7.2 — and check
//! libfpl against QEMU's locks and QEMU against libfpl's.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{compile, root, TempDir};

/// "10.0=/usr/bin:7.2=..." for the C suites; fails with what to do when a
/// version is missing.
fn qemu_dirs() -> String {
    static DIRS: OnceLock<String> = OnceLock::new();
    DIRS.get_or_init(|| {
        let qemu10 = PathBuf::from("/usr/bin");
        let version = Command::new(qemu10.join("qemu-img")).arg("--version").output();
        let ok = version
            .as_ref()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("version 10."))
            .unwrap_or(false);
        assert!(
            ok,
            "QEMU 10 (qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon in /usr/bin) is missing: \
             it comes preinstalled with the machine's qemu-utils 10.0.2"
        );
        let out = Command::new(root().join("scripts/fetch-qemu-7.2"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/fetch-qemu-7.2 runs");
        assert!(
            out.status.success(),
            "QEMU 7.2 could not be unpacked by scripts/fetch-qemu-7.2 (it needs root and \
             Debian's package registry)"
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        format!("10.0={}:7.2={dir}", qemu10.display())
    })
    .clone()
}

/// Compiles tests/c/NAME.c and runs it (in its own process group, killed
/// whole after LIMIT), asserting that every check passed.
fn run_suite(name: &str, limit: Duration) {
    let tmp = TempDir::new(name);
    let exe = compile(
        &[&root().join(format!("tests/c/{name}.c"))],
        &tmp.path().join(name),
        false,
        &["-pthread"],
    );
    let mut child = Command::new(&exe)
        .env("TMPDIR", tmp.path())
        .env("FPL_QEMU_DIRS", qemu_dirs())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the C suite starts");
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the suite") {
            break Some(status);
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the suite's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the suite left behind in its group goes too.
    // SAFETY: as above; ESRCH when the group is empty.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = status.unwrap_or_else(|| panic!("{name} did not finish within {limit:?}"));
    assert!(status.success(), "{name} failed ({status}):\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn qemu_holds_libfpl_observes_and_competes() {
    run_suite("qemu_holders", Duration::from_secs(240));
}

#[test]
fn libfpl_holds_qemu_competes() {
    run_suite("qemu_competes", Duration::from_secs(300));
}

#[test]
fn live_changes_updates_links_and_legacy_holders() {
    run_suite("qemu_live", Duration::from_secs(240));
}
