//! Shared by the integration tests: the built libfpl.so and temporary folders.

#![allow(dead_code)]

pub mod cabi;
pub mod gluster;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The crate's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder holding a freshly built `libfpl.so` (and `libfpl.so.1`).
///
/// `cargo test` does not build the cdylib, so build it here, with the same
/// cargo, into a target folder of its own (no lock shared with the running
/// `cargo test`).
pub fn libfpl_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = root().join("target").join("c-tests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(cargo)
            .args(["build", "--lib", "--quiet", "--target-dir"])
            .arg(&target)
            .current_dir(root())
            .output()
            .expect("cargo can be run");
        assert!(
            out.status.success(),
            "building libfpl.so failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target.join("debug");
        assert!(dir.join("libfpl.so").exists(), "no libfpl.so in {dir:?}");
        assert!(
            dir.join("libfpl.so.1").exists(),
            "no libfpl.so.1 link in {dir:?}"
        );
        dir
    })
    .clone()
}

/// Compiles C (or C++) sources against include/fpl.h and the built library,
/// with every warning an error. Returns the executable.
pub fn compile(sources: &[&Path], out: &Path, cxx: bool, extra: &[&str]) -> PathBuf {
    let lib = libfpl_dir();
    let (compiler, std) = if cxx {
        ("g++", "-std=c++11")
    } else {
        ("gcc", "-std=c11")
    };
    let mut cmd = Command::new(compiler);
    cmd.arg(std)
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        // DT_RPATH, not RUNPATH: `cargo test` sets LD_LIBRARY_PATH to
        // target/debug, where a libfpl.so.1 of an earlier `cargo build` may
        // lie, and LD_LIBRARY_PATH would win over RUNPATH.
        .arg("-Wl,--disable-new-dtags")
        .arg("-lfpl")
        .args(extra);
    let res = cmd
        .output()
        .unwrap_or_else(|e| panic!("{compiler} not found ({e}): install gcc and g++"));
    assert!(
        res.status.success(),
        "{compiler} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out.to_path_buf()
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("fpl-{tag}-{}-{i}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!("cannot create a temporary folder in {base:?}");
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// "10.0=/usr/bin:7.2=..." for the C suites; fails with what to do when a
/// version is missing.
pub fn qemu_dirs() -> String {
    static DIRS: OnceLock<String> = OnceLock::new();
    DIRS.get_or_init(|| {
        let qemu10 = PathBuf::from("/usr/bin");
        let version = Command::new(qemu10.join("qemu-img"))
            .arg("--version")
            .output();
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
pub fn run_suite(name: &str, limit: Duration) {
    run_suite_with(name, limit, &[]);
}

/// [`run_suite`] with extra environment variables for the suite.
pub fn run_suite_with(name: &str, limit: Duration, env: &[(&str, &Path)]) {
    run_suite_in(name, limit, env, Some(qemu_dirs()));
}

/// [`run_suite`] for a suite that needs no QEMU 7.2 (no `FPL_QEMU_DIRS`;
/// QEMU 10's tools are on PATH).
pub fn run_suite_without_qemu_dirs(name: &str, limit: Duration) {
    run_suite_in(name, limit, &[], None);
}

fn run_suite_in(name: &str, limit: Duration, env: &[(&str, &Path)], qemu: Option<String>) {
    let tmp = TempDir::new(name);
    let exe = compile(
        &[&root().join(format!("tests/c/{name}.c"))],
        &tmp.path().join(name),
        false,
        &["-pthread"],
    );
    let mut cmd = Command::new(&exe);
    if let Some(dirs) = qemu {
        cmd.env("FPL_QEMU_DIRS", dirs);
    }
    let mut child = cmd
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the C suite starts");
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
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

/// Child processes, killed and reaped however the test ends.
pub struct Kids(pub Vec<std::process::Child>);

impl Kids {
    /// `n` idle `sleep` processes: a host busy enough for the holder
    /// lookup to walk /proc with threads of its own (from 128 processes).
    pub fn sleepers(n: usize) -> Kids {
        Kids(
            (0..n)
                .map(|_| {
                    Command::new("sleep")
                        .arg("3600")
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("sleep runs")
                })
                .collect(),
        )
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
