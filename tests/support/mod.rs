//! Shared by the tests of how C, C++, Go and Python users use libfpl: tools
//! that must be installed, `make` / `make install`, QEMU holders and the
//! README's code blocks. (`tests/common` builds the debug libfpl.so.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The crate's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of TOOL, or a failure saying which package to install: a
/// missing tool never skips a test.
pub fn require(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not found on PATH: install it ({install})"))
}

/// Runs CMD, failing with its output unless it exits 0.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[package]` version written in Cargo.toml (read from the file, not
/// from cargo's environment, so the checks compare with what is committed).
pub fn cargo_toml_version() -> String {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml readable");
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(rest) = line.strip_prefix("version") {
                let value = rest.trim_start().trim_start_matches('=').trim();
                return value.trim_matches('"').to_owned();
            }
        }
    }
    panic!("no [package] version in Cargo.toml");
}

/// The folder `make` builds into for the tests: a target folder of its own,
/// so that no cargo lock is shared with the running `cargo test`.
pub fn make_target_dir() -> PathBuf {
    root().join("target").join("c-tests")
}

/// Runs `make` (cargo build --release) once per test process; returns the
/// folder holding libfpl.so, libfpl.a and, if built, the fpl command.
pub fn make_build() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        require("make", "apt-get install make");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        run(Command::new("make")
            .arg("--no-print-directory")
            .arg(format!("CARGO={cargo}"))
            .arg(format!("CARGO_TARGET_DIR={}", make_target_dir().display()))
            .current_dir(root()));
        let dir = make_target_dir().join("release");
        assert!(
            dir.join("libfpl.so").is_file(),
            "make built no libfpl.so in {dir:?}"
        );
        assert!(
            dir.join("libfpl.a").is_file(),
            "make built no libfpl.a in {dir:?}"
        );
        dir
    })
    .clone()
}

/// `make install` (or another target) with VARS, after `make`. The
/// loader's cache of the machine is left alone (LDCONFIG=true).
pub fn make(target: &str, vars: &[(&str, &Path)]) -> Output {
    make_build();
    let mut cmd = Command::new("make");
    cmd.arg("--no-print-directory")
        .arg(target)
        .arg(format!("CARGO_TARGET_DIR={}", make_target_dir().display()))
        .arg("LDCONFIG=true")
        .current_dir(root());
    for (name, value) in vars {
        cmd.arg(format!("{name}={}", value.display()));
    }
    run(&mut cmd)
}

/// A fresh qcow2 image made by qemu-img.
pub fn qemu_img_create(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    run(Command::new(require(
        "qemu-img",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    ))
    .args(["create", "-q", "-f", "qcow2"])
    .arg(&path)
    .arg("16M"));
    path
}

/// `qemu-io -f qcow2 [-r] IMAGE` reading commands from a pipe, returned
/// once it is among the image's holders: it holds the image until killed
/// (on drop, however the test ends).
pub struct QemuIo(pub Child);

impl QemuIo {
    pub fn hold(image: &Path, read_only: bool) -> QemuIo {
        let mut cmd = Command::new(require(
            "qemu-io",
            "QEMU's qemu-utils; QEMU 10 comes with this machine",
        ));
        cmd.args(["-f", "qcow2"]);
        if read_only {
            cmd.arg("-r");
        }
        let child = cmd
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io starts");
        let mut qemu = QemuIo(child);
        let pid = qemu.pid() as i32;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // qemu-io itself among the holders: bytes held by somebody else
            // (an image already locked) do not say that qemu-io has locked.
            let status = fpl::query(image, true).expect("query the image");
            if status.holders.iter().any(|h| h.pid == pid) {
                return qemu;
            }
            if let Ok(Some(exit)) = qemu.0.try_wait() {
                panic!("qemu-io exited ({exit}) before locking {image:?}");
            }
            assert!(Instant::now() < deadline, "qemu-io never locked {image:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first ```LANG block after the README heading HEADING (a whole line).
pub fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md readable");
    let start = readme
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let mut lines = readme.lines().skip(start + 1);
    let fence = format!("```{lang}");
    lines
        .by_ref()
        .find(|l| l.starts_with("## ") || *l == fence)
        .filter(|l| *l == fence)
        .unwrap_or_else(|| panic!("no ```{lang} block under {heading:?} in README.md"));
    let mut block = String::new();
    for line in lines.take_while(|l| *l != "```") {
        block.push_str(line);
        block.push('\n');
    }
    block
}
