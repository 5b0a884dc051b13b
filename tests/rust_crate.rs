//! libfpl as a Rust crate that other hypervisors embed: the disk lifecycle
//! of examples/hypervisor.rs, looked at with QEMU's own tools between its
//! steps, and a crate that depends on libfpl with `default-features = false`
//! (tests/embed), which must get the library's runtime dependencies only.

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use common::TempDir;
use support::{require, root, run, stdout, QemuIo};

/// Builds with the same cargo into a target folder of its own (no lock
/// shared with the running `cargo test`); returns the folder.
fn cargo_build(args: &[&str], manifest: &Path, target: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo)
        .arg("build")
        .args(args)
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target));
    target.join("debug")
}

fn qemu_io(args: &[&str], image: &Path) -> Output {
    Command::new(require(
        "qemu-io",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    ))
    .args(["-f", "qcow2"])
    .args(args)
    .arg(image)
    .output()
    .expect("qemu-io runs")
}

fn qemu_img_info(image: &Path) -> Output {
    Command::new(require(
        "qemu-img",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    ))
    .arg("info")
    .arg(image)
    .output()
    .expect("qemu-img runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A qemu-io write is refused with QEMU's message for `image`.
fn assert_write_refused(image: &Path) {
    let out = qemu_io(&["-c", "write 0 512"], image);
    assert!(!out.status.success(), "qemu-io wrote {image:?}");
    let err = stderr(&out);
    assert!(
        err.contains("Failed to get \"write\" lock")
            && err.contains(&format!(
                "Is another process using the image [{}]?",
                image.display()
            )),
        "{err}"
    );
}

/// Who holds bytes of `image`: the pids, in order, without repeats.
fn holder_pids(image: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fpl::query(image, true)
        .expect("query")
        .holders
        .iter()
        .map(|h| h.pid)
        .collect();
    pids.dedup();
    pids
}

/// The example, run with `--step`: its stdout lines arrive on a channel.
struct Hypervisor {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Hypervisor {
    fn start(exe: &Path, dir: &Path) -> Hypervisor {
        let mut child = Command::new(exe)
            .arg(dir)
            .arg("--step")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the example starts");
        let stdin = child.stdin.take().expect("piped");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Hypervisor {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for `stage NAME...`, returning what follows NAME; other lines
    /// are passed over.
    fn stage(&mut self, name: &str) -> String {
        let want = format!("stage {name}");
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with(&want) => {
                    return line[want.len()..].trim().to_owned();
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!("no `{want}` from the example ({e:?}); it ended: {status:?}");
                }
            }
        }
    }

    /// Lets the example go on to its next step.
    fn next(&mut self) {
        writeln!(self.stdin, "next").expect("the example reads its input");
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hypervisor_example_keeps_qemu_out_at_every_step_and_leaves_nothing_held() {
    let tmp = TempDir::new("hypervisor");
    let bin = cargo_build(
        &["--example", "hypervisor"],
        &root().join("Cargo.toml"),
        &root().join("target").join("c-tests"),
    );
    let disk = tmp.path().join("disk.qcow2");
    let snap = tmp.path().join("snap1.qcow2");
    let mut vm = Hypervisor::start(&bin.join("examples").join("hypervisor"), tmp.path());
    let vm_pid = vm.child.id() as i32;

    vm.stage("open");
    assert_write_refused(&disk);
    let info = qemu_img_info(&disk);
    assert!(
        stderr(&info).contains("Failed to get shared \"write\" lock"),
        "qemu-img info read a running VM's disk: {}",
        stderr(&info)
    );
    assert_eq!(holder_pids(&disk), [vm_pid]);
    vm.next();

    vm.stage("run");
    vm.next();

    // The old top is now a backing file: nobody writes it, anyone may read
    // it (a read-only qemu-io, which refuses writers, opens it), and only
    // the VM holds it. The VM's lock from before the snapshot must be gone
    // (the hand-over below would show it, as a second holder).
    vm.stage("snapshot");
    assert_write_refused(&snap);
    assert_write_refused(&disk);
    let read = qemu_io(&["-r", "-c", "read 0 512"], &disk);
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(holder_pids(&snap), [vm_pid]);
    assert_eq!(holder_pids(&disk), [vm_pid]);
    vm.next();

    // Paused: a backup reads the disk (qemu-img info without -U opens it
    // refusing writers), nobody writes it.
    vm.stage("pause");
    let info = qemu_img_info(&snap);
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(
        stdout(&info).contains("backing file: "),
        "{}",
        stdout(&info)
    );
    assert_write_refused(&snap);
    // A backup that stays: the VM may not resume while it reads.
    let backup = QemuIo::hold(&snap, true);
    vm.next();
    match vm.lines.recv_timeout(Duration::from_millis(1500)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("the VM resumed beside a reader that refuses writers: {other:?}"),
    }
    drop(backup);

    vm.stage("resume");
    let info = qemu_img_info(&snap);
    assert!(!info.status.success(), "qemu-img info read a running disk");
    vm.next();

    // Handed over: every byte of both files is the destination's.
    let dest: i32 = vm
        .stage("handed-over")
        .parse()
        .expect("the destination's pid");
    assert_ne!(dest, vm_pid);
    assert_eq!(holder_pids(&snap), [dest]);
    assert_eq!(holder_pids(&disk), [dest]);
    assert_write_refused(&snap);
    vm.next();

    vm.stage("done");
    vm.next();
    let status = vm.child.wait().expect("the example ends");
    assert!(status.success(), "{status}");
    for image in [&snap, &disk] {
        assert!(
            fpl::query(image, false).expect("query").held.is_empty(),
            "{image:?} is still locked"
        );
    }
    let write = qemu_io(&["-c", "write 0 512"], &snap);
    assert!(write.status.success(), "{}", stderr(&write));
}

/// `cargo tree` lines of the embedding crate, without the tree's drawing.
fn tree(manifest: &Path, args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = run(Command::new(cargo)
        .args(["tree", "--locked", "--prefix", "none", "--manifest-path"])
        .arg(manifest)
        .args(args));
    stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_crate_without_default_features_gets_the_runtime_dependencies_only() {
    let manifest = root().join("tests").join("embed").join("Cargo.toml");
    // Normal and build dependencies: no cbindgen either.
    let direct = tree(
        &manifest,
        &["-p", "fpl", "-e", "normal,build", "--depth", "1"],
    );
    assert_eq!(direct, ["fpl", "libc", "nix", "thiserror"]);
    let everything = tree(&manifest, &["-e", "normal,build"]);
    for heavy in [
        "clap",
        "clap_mangen",
        "clap_complete",
        "serde_json",
        "cbindgen",
    ] {
        assert!(
            !everything.iter().any(|c| c == heavy),
            "{heavy} is built for an embedding crate: {everything:?}"
        );
    }

    // It builds, and its lock is the one QEMU respects.
    let tmp = TempDir::new("embed");
    let bin = cargo_build(&[], &manifest, &root().join("target").join("embed"));
    let image = support::qemu_img_create(tmp.path(), "vm.qcow2");
    let mut child = Command::new(bin.join("fpl-embed"))
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fpl-embed starts");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("fpl-embed says it holds the image");
    assert_eq!(line, format!("held {}\n", child.id()));
    assert_write_refused(&image);
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line)
        .expect("fpl-embed says it released");
    assert_eq!(line, "released\n");
    assert!(child.wait().expect("fpl-embed ends").success());
    let write = qemu_io(&["-c", "write 0 512"], &image);
    assert!(write.status.success(), "{}", stderr(&write));
}
