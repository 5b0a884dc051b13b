//! The programs of c-examples/, built with every warning an error and run
//! as their users would: against images that real QEMU processes hold.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::{compile, libfpl_dir, root, TempDir};
use support::{make_build, qemu_img_create, require, run, stdout, QemuIo};

fn example(name: &str, tmp: &TempDir) -> PathBuf {
    let src = root().join("c-examples").join(format!("{name}.c"));
    compile(&[&src], &tmp.path().join(name), false, &[])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn qemu_message(verb: &str, pid: u32, image: &Path) -> String {
    format!(
        "Failed to get {verb} lock (held by qemu-io, pid {pid})\nIs another process using the image [{}]?\n",
        image.display()
    )
}

#[test]
fn holders_names_qemu_and_what_it_uses() {
    let tmp = TempDir::new("ex-holders");
    let holders = example("holders", &tmp);
    let image = qemu_img_create(tmp.path(), "disk.qcow2");
    let out = run(Command::new(&holders).arg(&image));
    assert_eq!(stdout(&out), format!("{}: not locked\n", image.display()));

    let writer = QemuIo::hold(&image, false);
    let other = qemu_img_create(tmp.path(), "other.qcow2");
    let reader = QemuIo::hold(&other, true);
    let out = run(Command::new(&holders).arg(&image).arg(&other));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "{}: uses [consistent read] [write] [resize]; does not share [write] [resize]",
            image.display()
        )
    );
    assert!(
        lines[1].starts_with(&format!("  held by qemu-io, pid {}, fd ", writer.pid())),
        "{text}"
    );
    assert_eq!(
        lines[2],
        format!(
            "{}: uses [consistent read]; does not share [write] [resize]",
            other.display()
        )
    );
    assert!(
        lines[3].starts_with(&format!("  held by qemu-io, pid {}, fd ", reader.pid()))
            && lines[3].ends_with(": uses [consistent read]; does not share [write] [resize]"),
        "{text}"
    );

    let missing = Command::new(&holders)
        .arg(tmp.path().join("missing.img"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("No such file or directory"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn hold_keeps_qemu_out_while_the_command_runs() {
    let tmp = TempDir::new("ex-hold");
    let hold = example("hold", &tmp);
    let holders = example("holders", &tmp);
    let image = qemu_img_create(tmp.path(), "disk.qcow2");
    let qemu_io = require(
        "qemu-io",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    );

    // While the command runs, the image is held with the write preset...
    let out = run(Command::new(&hold).arg(&image).arg(&holders).arg(&image));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{}: uses [consistent read] [write] [resize]; does not share [write] [write unchanged] [resize]\n  held by hold, pid ",
            image.display()
        )),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        2,
        "only hold, not the command, holds it:\n{text}"
    );

    // ... so QEMU is refused a read-write open, in QEMU's own words ...
    let refused = Command::new(&hold)
        .arg(&image)
        .arg(&qemu_io)
        .args(["-f", "qcow2", "-c", "quit"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "qemu-io's own exit status");
    assert!(
        stderr(&refused).contains("Failed to get \"write\" lock"),
        "{}",
        stderr(&refused)
    );
    // ... while a shared reader is fine, and the lock ends with the command.
    let info = run(Command::new(&hold)
        .arg(&image)
        .arg(require("qemu-img", "QEMU's qemu-utils"))
        .args(["info", "-U"])
        .arg(&image));
    assert!(
        stdout(&info).contains("file format: qcow2"),
        "{}",
        stdout(&info)
    );
    assert!(fpl::query(&image, false).unwrap().held.is_empty());

    // While QEMU holds the image, the command never starts.
    let qemu = QemuIo::hold(&image, false);
    let marker = tmp.path().join("ran");
    let busy = Command::new(&hold)
        .arg(&image)
        .arg("touch")
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(75));
    assert_eq!(stderr(&busy), qemu_message("\"write\"", qemu.pid(), &image));
    assert!(
        !marker.exists(),
        "the command ran although the image was in use"
    );
}

#[test]
fn update_upgrades_and_downgrades_or_keeps_reading() {
    let tmp = TempDir::new("ex-update");
    let update = example("update", &tmp);
    let image = qemu_img_create(tmp.path(), "disk.qcow2");
    let out = run(Command::new(&update).arg(&image));
    assert_eq!(
        stdout(&out),
        "read-shared: bytes 100\nwrite: bytes 100 101 103 201 202 203\nread-shared again: bytes 100\n"
    );

    // A read-only QEMU (100, 201, 203) refuses the upgrade; the read lock stays.
    let qemu = QemuIo::hold(&image, true);
    let refused = Command::new(&update).arg(&image).output().unwrap();
    assert_eq!(refused.status.code(), Some(75));
    assert_eq!(
        stdout(&refused),
        "read-shared: bytes 100 201 203\nstill read-shared: bytes 100 201 203\n"
    );
    assert_eq!(
        stderr(&refused),
        qemu_message("\"write\"", qemu.pid(), &image)
    );
}

/// Builds plugin_host.c without linking libfpl: it must dlopen it.
fn plugin_host(tmp: &TempDir) -> PathBuf {
    let exe = tmp.path().join("plugin_host");
    run(Command::new(require("gcc", "apt-get install gcc"))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
            "-O1",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("c-examples/plugin_host.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-ldl"));
    let dynamic = stdout(&run(Command::new("readelf").arg("-d").arg(&exe)));
    assert!(
        !dynamic.contains("libfpl"),
        "plugin_host links libfpl:\n{dynamic}"
    );
    exe
}

#[test]
fn plugin_host_loads_uses_and_unloads_libfpl_1000_times() {
    let tmp = TempDir::new("ex-plugin");
    let exe = plugin_host(&tmp);
    let out = run(Command::new(&exe)
        .arg("1000")
        .env("LD_LIBRARY_PATH", libfpl_dir()));
    assert_eq!(
        stdout(&out),
        "1000 of 1000 cycles passed; libfpl.so.1 unloaded after dlclose\n"
    );

    // Without the library it says so and fails.
    let missing = Command::new(&exe)
        .env("LD_LIBRARY_PATH", tmp.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("libfpl.so.1: cannot open shared object file"));
}

/// Cycles under valgrind in the soak (`FPL_SOAK=1`): 1,000. Each dlopen
/// makes valgrind translate the library's code afresh, about 0.3 s a cycle
/// on this project's 2-core machines (5 to 6 minutes in all).
const SOAK_VALGRIND_CYCLES: u32 = 1000;

/// Cycles under valgrind in every run: enough for a leak per cycle to add
/// up past valgrind's threshold and for the lookup threads to run in most
/// cycles, in about 20 s. FPL_VALGRIND_CYCLES sets any other count.
const VALGRIND_CYCLES: u32 = 60;

#[test]
fn plugin_host_is_clean_under_valgrind() {
    let valgrind = require("valgrind", "apt-get install valgrind");
    let soak = std::env::var_os("FPL_SOAK").is_some_and(|v| v == "1");
    let cycles = std::env::var("FPL_VALGRIND_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak {
            SOAK_VALGRIND_CYCLES
        } else {
            VALGRIND_CYCLES
        });
    if !soak {
        println!(
            "valgrind: {cycles} cycles (FPL_SOAK=1 runs the {SOAK_VALGRIND_CYCLES}-cycle soak)"
        );
    }
    let tmp = TempDir::new("ex-valgrind");
    let exe = plugin_host(&tmp);
    // Enough processes on the host that the holder lookup walks /proc with
    // threads of its own: they must not keep the library loaded either.
    let _crowd = common::Kids::sleepers(160);
    // The release library, as installed: valgrind is much slower on debug code.
    let lib = make_build();
    let start = Instant::now();
    let out = Command::new(valgrind)
        .args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe)
        .arg(cycles.to_string())
        .env("LD_LIBRARY_PATH", &lib)
        // A /proc walk may outlast the holder lookup's budget under valgrind.
        .env("FPL_TEST_UNDER_VALGRIND", "1")
        .output()
        .expect("valgrind runs");
    let report = stderr(&out);
    println!(
        "valgrind: {cycles} cycles in {:.1} s\n{report}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "valgrind found errors or leaks:\n{report}"
    );
    assert_eq!(
        stdout(&out),
        format!("{cycles} of {cycles} cycles passed; libfpl.so.1 unloaded after dlclose\n")
    );
    assert!(
        report.contains("ERROR SUMMARY: 0 errors from 0 contexts"),
        "{report}"
    );
    assert!(
        report.contains("definitely lost: 0 bytes in 0 blocks")
            || report.contains("All heap blocks were freed"),
        "{report}"
    );
}

/// The C program of the README's "Using it from C", cut out of README.md
/// as it stands: it compiles alone with every warning an error, takes the
/// write lock on a free image (exit 0), and is refused beside a qemu-io
/// writer with QEMU's message naming qemu-io (exit 75).
#[test]
fn the_readme_c_program_compiles_alone_and_does_what_it_says() {
    let tmp = TempDir::new("ex-readme");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split_once("## Using it from C\n")
        .map(|(_, rest)| rest)
        .expect("the README has a C section");
    let program = section
        .split_once("```c\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(code, _)| code)
        .expect("the C section starts with a C program");
    let src = tmp.path().join("prog.c");
    std::fs::write(&src, program).expect("write prog.c");
    let prog = compile(&[&src], &tmp.path().join("prog"), false, &[]);

    let image = qemu_img_create(tmp.path(), "vm.qcow2");
    let out = Command::new(&prog).arg(&image).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let writer = QemuIo::hold(&image, false);
    let out = Command::new(&prog).arg(&image).output().expect("run");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "Failed to get \"write\" lock (held by qemu-io, pid {})",
            writer.pid()
        )),
        "{}",
        stderr(&out)
    );
    let out = Command::new(&prog)
        .arg(tmp.path().join("missing.qcow2"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ENOENT"), "{}", stderr(&out));
}
