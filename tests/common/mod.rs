//! Shared by the integration tests: the built libfpl.so and temporary folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crate's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder holding a freshly built `libfpl.so` (and `libfpl.so.0`).
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
            dir.join("libfpl.so.0").exists(),
            "no libfpl.so.0 link in {dir:?}"
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
