//! Mutual exclusion under races (tests/c/race.c): 8 processes x 1,000
//! rounds of libfpl writers (strict and EXACT), real QEMU writers and
//! libfpl readers on one image, with a checker inside every critical
//! section. The soak run is the same program for minutes:
//!
//! ```sh
//! FPL_SOAK_SECONDS=300 cargo test --release --test race -- --ignored --nocapture
//! ```

mod common;

use std::path::Path;
use std::time::Duration;

use common::run_suite_with;

#[test]
fn no_two_writers_ever_inside() {
    run_suite_with("race", Duration::from_secs(600), &[]);
}

#[test]
#[ignore = "a soak of several minutes: run it on purpose (see the file's docs)"]
fn soak() {
    let seconds = std::env::var("FPL_SOAK_SECONDS").unwrap_or_else(|_| "300".to_owned());
    let limit = seconds
        .parse::<u64>()
        .expect("FPL_SOAK_SECONDS is a number")
        + 120;
    run_suite_with(
        "race",
        Duration::from_secs(limit),
        &[("FPL_SOAK_SECONDS", Path::new(&seconds))],
    );
}

/// The checker can fail: with libfpl's workers not locking at all, it must
/// report violations.
#[test]
fn the_checker_catches_writers_that_do_not_lock() {
    use std::process::Command;

    let tmp = common::TempDir::new("race-unlocked");
    let exe = common::compile(
        &[&common::root().join("tests/c/race.c")],
        &tmp.path().join("race"),
        false,
        &["-pthread"],
    );
    let out = Command::new(&exe)
        .env("TMPDIR", tmp.path())
        .env("FPL_QEMU_DIRS", common::qemu_dirs())
        .env("FPL_RACE_NO_LOCKS", "1")
        .env("FPL_RACE_ROUNDS", "100")
        .output()
        .expect("the race program runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        !out.status.success(),
        "no violation found without locks:\n{text}"
    );
    assert!(
        errors.contains("was not alone")
            || errors.contains("another writer's data")
            || errors.contains("met a writer")
            || errors.contains("saw the image change"),
        "{errors}"
    );
}
