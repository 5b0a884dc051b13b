//! Tests of the `fpl` command against real QEMU processes.
