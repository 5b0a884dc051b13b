//! The C ABI tests (tests/c/abi_test.c) under valgrind memcheck and in an
//! AddressSanitizer + UndefinedBehaviorSanitizer build: 0 errors, nothing
//! definitely lost.

mod common;

use std::process::Command;

use common::{compile, root, TempDir};

fn assert_clean(what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{what} found problems ({}):\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn c_tests_are_clean_under_valgrind() {
    let tmp = TempDir::new("valgrind");
    let exe = compile(
        &[&root().join("tests/c/abi_test.c")],
        &tmp.path().join("abi_test"),
        false,
        &["-pthread"],
    );
    let out = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
        .arg(&exe)
        // A /proc walk may outlast the holder lookup's budget under valgrind.
        .env("FPL_TEST_UNDER_VALGRIND", "1")
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap_or_else(|e| panic!("valgrind cannot run ({e}): install valgrind"));
    assert_clean("valgrind memcheck", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("definitely lost"), "{stderr}");
}

#[test]
fn c_tests_are_clean_under_asan_and_ubsan() {
    let tmp = TempDir::new("asan");
    let exe = compile(
        &[&root().join("tests/c/abi_test.c")],
        &tmp.path().join("abi_test"),
        false,
        &[
            "-pthread",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ],
    );
    let out = Command::new(&exe)
        .env("TMPDIR", tmp.path())
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=98",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("the sanitized C tests run");
    assert_clean("AddressSanitizer/UBSan", &out);
}
