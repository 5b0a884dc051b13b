//! What libfpl survives (issue: reliability): crashes, faults injected into
//! fcntl(2) by an LD_PRELOAD shim, other descriptors closing, exec, 64
//! threads, hostile input and unprivileged use — tests/c/reliability.c.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{root, run_suite_with, TempDir};

#[test]
fn survives_crashes_faults_threads_and_hostile_input() {
    let tmp = TempDir::new("shim");
    let shim = tmp.path().join("fault_shim.so");
    let out = Command::new("gcc")
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o",
        ])
        .arg(&shim)
        .arg(root().join("tests/c/fault_shim.c"))
        .arg("-ldl")
        .output()
        .expect("gcc runs: install gcc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_suite_with(
        "reliability",
        Duration::from_secs(300),
        &[("FPL_SHIM", &shim)],
    );
}
