//! The QEMU compatibility suite: C programs compiled against include/fpl.h
//! (tests/c/qemu_*.c) that start real QEMU processes — QEMU 10.0 from the
//! machine and QEMU 7.2 unpacked by scripts/fetch-qemu-7.2 — and check
//! libfpl against QEMU's locks and QEMU against libfpl's.

mod common;

use std::time::Duration;

use common::run_suite;

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
