//! A hypervisor's disk from start to hand-over, with libfpl's Rust API: the
//! locks a VM's disk needs at each step of its life, taken and changed so
//! that QEMU's tools (and any libfpl user) see what they would see with a
//! QEMU VM, and so that no writer can get in between two steps.
//!
//! ```text
//! cargo run --example hypervisor -- DIR [--step]
//! ```
//!
//! 1. **open**: makes `DIR/disk.qcow2` (with qemu-img) and locks the whole
//!    image as a running VM's disk: every file QEMU would open (overlay,
//!    backing chain, data file), all or nothing, refusing an image that a
//!    process has open without locks (a QEMU with `locking=off`).
//! 2. **run**: checks that the locks are still held, as a hypervisor on
//!    shared storage does now and then.
//! 3. **snapshot**: an external snapshot (QEMU's `blockdev-snapshot-sync`):
//!    the disk steps down to reading while writes are drained, the new
//!    overlay `DIR/snap1.qcow2` is made over it and locked as the VM's disk,
//!    which makes `disk.qcow2` a backing file, and only then is the old lock
//!    let go. `disk.qcow2` refuses writers all along.
//! 4. **pause**: the VM is paused for a backup: the disk steps down to
//!    reading (a backup may now read it, nobody may write it).
//! 5. **resume**: back to the VM's request, waiting while a reader is still
//!    there.
//! 6. **hand over**: live migration to a destination process (this program
//!    again, `--destination IMAGE`), in the steps of [`fpl::handover`], told
//!    over a pipe as a migration stream would; then this process lets go.
//!
//! Each step prints `stage NAME` once it is done. With `--step` the program
//! then waits for a line on its standard input before going on, so that
//! another program (tests/rust_crate.rs) can look at the image with QEMU's
//! tools in between.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use fpl::handover::{Phase, Side};
use fpl::{ChainLock, Mode, Options, Request};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A running VM's disk: read, write and resize, letting others only read.
const WRITE: Mode = Mode::Write;
/// A paused VM's disk, or a disk being drained: read, nobody writes.
const READ: Mode = Mode::Read;

fn request(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, image] if flag == "--destination" => destination(Path::new(image)),
        [dir] => lifecycle(Path::new(dir), false),
        [dir, flag] if flag == "--step" => lifecycle(Path::new(dir), true),
        _ => {
            eprintln!("usage: hypervisor DIR [--step]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hypervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn lifecycle(dir: &Path, step: bool) -> Result<()> {
    let stage = |name: &str| -> Result<()> {
        println!("stage {name}");
        std::io::stdout().flush()?;
        if step {
            std::io::stdin().read_line(&mut String::new())?;
        }
        Ok(())
    };

    // 1. open
    let disk = dir.join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &[&disk], "64M")?;
    let options = Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    };
    let mut vm = ChainLock::acquire(&disk, request(WRITE), options)?;
    stage("open")?;

    // 2. run
    vm.verify()?;
    stage("run")?;

    // 3. snapshot: drain (nothing is written to disk.qcow2 from here on),
    // make the overlay, lock it as the VM's disk, then let go of the old lock.
    vm.update(request(READ))?;
    let snap = dir.join("snap1.qcow2");
    qemu_img(
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b"],
        &[&disk, &snap],
        "64M",
    )?;
    let new = ChainLock::acquire(&snap, request(WRITE), options)?;
    vm.release()?;
    let mut vm = new;
    let files: Vec<String> = vm
        .members()
        .iter()
        .map(|m| m.path.display().to_string())
        .collect();
    println!("disk: {}", files.join(" over "));
    stage("snapshot")?;

    // 4. pause for a backup
    vm.update(request(READ))?;
    stage("pause")?;

    // 5. resume, once the backup has gone
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = vm.update(request(WRITE)) {
        if e.conflict().is_none() || Instant::now() > deadline {
            return Err(e.into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stage("resume")?;

    // 6. hand over to the destination
    let mut dest = Destination::start(&snap)?;
    let mut source = Side::source(vm);
    dest.expect("incoming")?;
    source.enter(Phase::Protecting)?;
    if let Err(e) = dest.ask("protect", "protecting") {
        source.enter(Phase::Active)?;
        return Err(format!("the destination cannot protect the image: {e}").into());
    }
    source.enter(Phase::Inactive)?;
    if let Err(e) = dest.ask("activate", "active") {
        // The destination is still protecting: it steps down, the source
        // takes the disk back.
        dest.ask("step-down", "inactive")?;
        source.enter(Phase::Protecting)?;
        source.enter(Phase::Active)?;
        return Err(format!("the destination cannot take over: {e}").into());
    }
    source.release()?;
    stage(&format!("handed-over {}", dest.child.id()))?;

    dest.ask("quit", "released")?;
    let status = dest.child.wait()?;
    if !status.success() {
        return Err(format!("the destination ended with {status}").into());
    }
    stage("done")
}

/// The destination process, driven over its standard input and output.
struct Destination {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Destination {
    fn start(image: &Path) -> Result<Destination> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--destination")
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the destination has no pipes".into());
        };
        Ok(Destination {
            child,
            to,
            from: BufReader::new(from),
        })
    }

    /// Sends `what`, then waits for `answer`.
    fn ask(&mut self, what: &str, answer: &str) -> Result<()> {
        writeln!(self.to, "{what}")?;
        self.expect(answer)
    }

    fn expect(&mut self, answer: &str) -> Result<()> {
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        match line.trim_end() {
            got if got == answer => Ok(()),
            "" => Err("the destination ended".into()),
            got => Err(got.to_owned().into()),
        }
    }
}

/// The destination's side: opens the image (Incoming), then does what the
/// source says, answering each step.
fn destination(image: &Path) -> Result<()> {
    let mut side = Side::destination(image, request(WRITE), Options::default())?;
    println!("incoming");
    let steps = [
        ("protect", Phase::Protecting, "protecting"),
        ("activate", Phase::Active, "active"),
        ("step-down", Phase::Inactive, "inactive"),
    ];
    for line in std::io::stdin().lines() {
        let line = line?;
        if line == "quit" {
            side.release()?;
            println!("released");
            return Ok(());
        }
        let Some(&(_, phase, answer)) = steps.iter().find(|(what, ..)| *what == line) else {
            println!("unknown step {line:?}");
            continue;
        };
        match side.enter(phase) {
            Ok(()) => println!("{answer}"),
            // One line: the source reads one answer per step.
            Err(e) => println!("{}", e.to_string().replace('\n', " ")),
        }
    }
    Ok(())
}

/// `qemu-img ARGS FILES... SIZE`, as a hypervisor makes its images.
fn qemu_img(args: &[&str], files: &[&PathBuf], size: &str) -> Result<()> {
    let status = Command::new("qemu-img")
        .args(args)
        .args(files)
        .arg(size)
        .status()
        .map_err(|e| format!("cannot run qemu-img ({e}): install QEMU's qemu-utils"))?;
    if !status.success() {
        return Err(format!("qemu-img {} failed: {status}", args.join(" ")).into());
    }
    Ok(())
}
