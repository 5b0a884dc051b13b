//! Runs the C tests of tests/c against the built libfpl.so: the header
//! compiles as C11 and C++ with every warning an error, and the ABI behaves
//! as ABI.md says between real processes.

mod common;

use std::process::Command;

use common::{compile, root, TempDir};

#[test]
fn c_abi_tests_pass() {
    let tmp = TempDir::new("c-abi");
    let exe = compile(
        &[&root().join("tests/c/abi_test.c")],
        &tmp.path().join("abi_test"),
        false,
        &["-pthread"],
    );
    let out = Command::new(&exe)
        .env("TMPDIR", tmp.path())
        .output()
        .expect("the C test runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "C ABI tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn header_compiles_as_cpp() {
    let tmp = TempDir::new("cpp");
    let src = tmp.path().join("use.cpp");
    std::fs::write(
        &src,
        "#include \"fpl.h\"\n#include <cstdio>\nint main() {\n  fpl_error err;\n  \
         fpl_lock *lock = nullptr;\n  int rc = fpl_check(\"/nonexistent\", FPL_MODE_WRITE_PERM, \
         FPL_MODE_WRITE_SHARE, 0, &err);\n  std::printf(\"%d %s\\n\", rc, fpl_version());\n  \
         return fpl_release(lock);\n}\n",
    )
    .expect("write the C++ source");
    let exe = compile(&[&src], &tmp.path().join("use"), true, &[]);
    let out = Command::new(&exe).output().expect("the C++ program runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.trim(), format!("-2 {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn c_example_demo_shows_refusal_then_admission() {
    let tmp = TempDir::new("demo");
    let exe = compile(
        &[&root().join("c-examples/demo.c")],
        &tmp.path().join("fpl-demo"),
        false,
        &[],
    );
    let out = Command::new(&exe).output().expect("the demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}");
    assert!(text.contains("refused (byte 201"), "{text}");
    assert!(
        text.contains("Failed to get \"write\" lock (held by fpl-demo, pid "),
        "{text}"
    );
    assert!(
        text.contains("Is another process using the image ["),
        "{text}"
    );
    assert!(
        text.contains(
            "uses consistent read, write, resize; does not share write, write unchanged, resize"
        ),
        "{text}"
    );
    assert!(text.contains("got the write lock"), "{text}");
}
