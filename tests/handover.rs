//! QEMU's live-migration hand-over between two libfpl processes
//! (`fpl::handover`, c-examples/handover.c): a source and a destination,
//! separate OS processes (the C example run twice, this test binary
//! re-executed in a role, or one of each), hand a chain image
//! (base.raw <- top.qcow2) over while qemu-io writers try to get in over
//! and over and a watcher tests bytes 201 and 203 of both files with
//! F_OFD_GETLK as fast as it can. Each side's bytes are read from its own
//! /proc/PID/fdinfo after every step.
//!
//! The watcher tests with F_OFD_GETLK (what `fpl::query` does) rather than
//! reading /proc/locks: the kernel answers a GETLK from the inode's lock
//! list under its lock, an atomic sample, while /proc/locks lists every
//! lock of the host (thousands on a busy test machine) a page per read(2),
//! so a read of it is no snapshot. The writers' own passing locks can only
//! hide a gap from the watcher, never make one up; the test of QEMU's own
//! sequence shows that it does see a real one.

mod common;
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{compile, root, TempDir};
use fpl::fcntl::{self, Flavor};
use fpl::handover::{Phase, Side};
use fpl::{ChainLock, Error, Mode, Options, Perm, Request};
use support::{require, run, QemuIo};

/// Set in the environment of a re-executed test binary: the image its role
/// hands over.
const ROLE_ENV: &str = "FPL_HANDOVER_ROLE_IMAGE";
/// Set too: the role uses a VM disk's request in exact mode (QEMU's bytes).
const EXACT_ENV: &str = "FPL_HANDOVER_ROLE_EXACT";

/// What the writers would write: never found in the image.
const PATTERN: u8 = 0x5a;
/// What the base holds from the start.
const BASE_PATTERN: u8 = 0x11;

/// How long each phase lasts, so that writers and the watcher see them all.
const PHASE: Duration = Duration::from_millis(150);

fn qemu_img(dir: &Path, args: &[&str]) {
    run(Command::new(require(
        "qemu-img",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    ))
    .current_dir(dir)
    .args(args));
}

/// base.raw (first sector 0x11) <- top.qcow2.
fn chain(tag: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new(tag);
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "raw", "base.raw", "16M"],
    );
    let base = dir.path().join("base.raw");
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -P {BASE_PATTERN:#x} 0 512"))
        .arg(&base));
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    let top = dir.path().join("top.qcow2");
    (dir, top, base)
}

// ---------------------------------------------------------------------
// The roles: one step per line on stdin, "ok STEP" or "refused ERRNO
// MESSAGE" on stdout, as c-examples/handover.c answers.

/// A side run by this test binary, re-executed: only does something in a
/// process started by [`Role::rust`].
#[test]
fn handover_role_process() {
    let Some(image) = std::env::var_os(ROLE_ENV) else {
        return;
    };
    let image = PathBuf::from(image);
    let active = if std::env::var_os(EXACT_ENV).is_some() {
        vm_disk_exact()
    } else {
        Request::new(Mode::Write.perm(), Mode::Write.shared())
    };
    let mut side: Option<Side> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let step = line.trim();
        let result = match (step, side.as_mut()) {
            ("release", _) => side.take().map_or(Ok(()), Side::release),
            ("active", None) => ChainLock::acquire(&image, active, Options::default())
                .map(|lock| side = Some(Side::source(lock))),
            ("incoming", None) => {
                Side::destination(&image, active, Options::default()).map(|s| side = Some(s))
            }
            (name, Some(s)) => match phase(name) {
                Some(p) => s.enter(p),
                None => Err(Error::invalid("unknown step")),
            },
            _ => Err(Error::invalid("unknown step")),
        };
        let mut out = std::io::stdout().lock();
        let _ = match result {
            Ok(()) => writeln!(out, "ok {step}"),
            Err(e) => writeln!(
                out,
                "refused -{} {}",
                e.errno(),
                e.to_string().replace('\n', "|")
            ),
        };
        let _ = out.flush();
    }
}

/// A VM disk's request as QEMU makes it: shares write-unchanged, exact.
fn vm_disk_exact() -> Request {
    Request {
        shared: Mode::Write.shared().with(Perm::WriteUnchanged),
        exact: true,
        ..Request::new(Mode::Write.perm(), Mode::Write.shared())
    }
}

fn phase(step: &str) -> Option<Phase> {
    match step {
        "incoming" => Some(Phase::Incoming),
        "protect" => Some(Phase::Protecting),
        "inactive" => Some(Phase::Inactive),
        "active" => Some(Phase::Active),
        _ => None,
    }
}

/// One side of the hand-over, in a process of its own.
struct Role {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    /// The role's answers, line by line, from a thread reading its stdout.
    answers: Receiver<String>,
    /// Refusals retried because a writer's attempt was in the way.
    retries: u32,
}

/// A refusal: the errno (negative) and QEMU's message, on one line.
#[derive(Debug)]
struct Refused(i32, String);

impl Role {
    fn c(name: &'static str, exe: &Path, image: &Path) -> Role {
        Role::start(name, Command::new(exe).arg(image))
    }

    fn rust(name: &'static str, image: &Path) -> Role {
        Role::start(name, &mut Role::rust_command(image))
    }

    /// A Rust side using a VM disk's request in exact mode.
    fn rust_exact(name: &'static str, image: &Path) -> Role {
        Role::start(name, Role::rust_command(image).env(EXACT_ENV, "1"))
    }

    fn rust_command(image: &Path) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "handover_role_process", "--nocapture", "-q"])
            .arg("--test-threads=1")
            .env(ROLE_ENV, image);
        cmd
    }

    fn start(name: &'static str, cmd: &mut Command) -> Role {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Role {
            name,
            child,
            stdin,
            answers,
            retries: 0,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one step and reads its answer.
    fn step(&mut self, step: &str) -> Result<(), Refused> {
        writeln!(self.stdin, "{step}").expect("the role reads its steps");
        self.stdin.flush().expect("the role reads its steps");
        loop {
            let line = self
                .answers
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{} gave no answer to {step:?}: {e}", self.name));
            let line = line.trim_end();
            if line == format!("ok {step}") {
                return Ok(());
            }
            if let Some(rest) = line.strip_prefix("refused ") {
                let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
                return Err(Refused(code.parse().expect("an errno"), message.to_owned()));
            }
            // Anything else is libtest's own chatter in a re-executed binary.
        }
    }

    /// A step that must succeed, retried while a writer merely trying its
    /// luck has its bytes locked for a moment (it locks, then tests, then
    /// gives up: both may fail, PROTOCOL.md §2). Each refusal must leave this side's bytes exactly as they were.
    fn must(&mut self, step: &str, files: &[&Path]) {
        for _ in 0..200 {
            let before = held_by(self.pid(), files);
            match self.step(step) {
                Ok(()) => return,
                Err(Refused(code, _)) if code == -libc::EAGAIN => {
                    assert_eq!(
                        held_by(self.pid(), files),
                        before,
                        "{}: a refused {step:?} changed its bytes",
                        self.name
                    );
                    self.retries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{}: {step:?} refused: {e:?}", self.name),
            }
        }
        panic!("{}: {step:?} refused 200 times", self.name);
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lock bytes process PID holds on each file, from its fdinfo.
fn held_by(pid: u32, files: &[&Path]) -> Vec<Vec<u32>> {
    files
        .iter()
        .map(|file| {
            let want = std::fs::metadata(file).expect("the image exists");
            let mut bytes = BTreeSet::new();
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the role runs");
            for fd in fds.flatten() {
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                if (meta.dev(), meta.ino()) != (want.dev(), want.ino()) {
                    continue;
                }
                let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
                let info = std::fs::read_to_string(info).unwrap_or_default();
                for line in fpl::fdinfo::lock_lines(&info) {
                    let last = line.last.unwrap_or(line.first);
                    bytes.extend((line.first..=last).map(|b| b as u32));
                }
            }
            bytes.into_iter().collect()
        })
        .collect()
}

const WRITE_TOP: &[u32] = &[100, 101, 103, 201, 202, 203];
const READ_PROTECTED: &[u32] = &[100, 201, 202, 203];
const READ: &[u32] = &[100];

fn bytes(top: &[u32], base: &[u32]) -> Vec<Vec<u32>> {
    vec![top.to_vec(), base.to_vec()]
}

// ---------------------------------------------------------------------
// The writers and the watcher.

/// One qemu-io attempt to write.
struct Attempt {
    file: PathBuf,
    start: Instant,
    end: Instant,
    succeeded: bool,
    stderr: String,
}

/// qemu-io writers, one per file, trying to write PATTERN at offset 0 over
/// and over until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Writers {
    fn start(top: &Path, base: &Path) -> Writers {
        let qemu_io = require(
            "qemu-io",
            "QEMU's qemu-utils; QEMU 10 comes with this machine",
        );
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(top, "qcow2"), (base, "raw")]
            .into_iter()
            .map(|(file, format)| {
                let (file, stop, qemu_io) = (file.to_path_buf(), stop.clone(), qemu_io.clone());
                std::thread::spawn(move || {
                    let mut attempts = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let out = Command::new(&qemu_io)
                            .args(["-f", format, "-c"])
                            .arg(format!("write -P {PATTERN:#x} 0 512"))
                            .arg(&file)
                            .stdin(Stdio::null())
                            .output()
                            .expect("qemu-io runs");
                        attempts.push(Attempt {
                            file: file.clone(),
                            start,
                            end: Instant::now(),
                            succeeded: out.status.success(),
                            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                        });
                    }
                    attempts
                })
            })
            .collect();
        Writers { stop, threads }
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("a writer thread"))
            .collect()
    }
}

/// Every attempt was refused with QEMU's message, and each phase (between
/// two instants of `marks`) saw attempts on both files.
fn assert_all_refused(attempts: &[Attempt], marks: &[(String, Instant)], files: &[&Path]) {
    assert!(!attempts.is_empty());
    for a in attempts {
        assert!(
            !a.succeeded,
            "a writer got into {:?} during the hand-over",
            a.file
        );
        assert!(
            a.stderr.contains("Failed to get \"write\" lock"),
            "qemu-io on {:?} failed otherwise: {}",
            a.file,
            a.stderr
        );
    }
    for pair in marks.windows(2) {
        let ((name, from), (_, to)) = (&pair[0], &pair[1]);
        for file in files {
            assert!(
                attempts
                    .iter()
                    .any(|a| a.file == *file && a.start < *to && a.end > *from),
                "no writer tried {file:?} while {name}"
            );
        }
    }
    println!(
        "{} qemu-io attempts, all refused with 'Failed to get \"write\" lock'",
        attempts.len()
    );
}

/// What the watcher saw: samples taken, and for each file and byte (201,
/// 203) the samples in which nobody held it.
struct Watched {
    samples: u64,
    free: Vec<(PathBuf, u32, u64)>,
}

/// Tests bytes 201 and 203 of each file with F_OFD_GETLK from a description
/// of its own, as fast as it can, counting the samples where nobody held one.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Watched>,
}

impl Watcher {
    fn start(files: &[&Path]) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let files: Vec<(PathBuf, std::fs::File)> = files
            .iter()
            .map(|f| {
                (
                    f.to_path_buf(),
                    std::fs::File::open(f).expect("open the image"),
                )
            })
            .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = 0u64;
            let mut gaps: Vec<(PathBuf, u32, u64)> = files
                .iter()
                .flat_map(|(p, _)| [(p.clone(), 201, 0), (p.clone(), 203, 0)])
                .collect();
            while !flag.load(Ordering::Relaxed) {
                samples += 1;
                for (i, (_, file)) in files.iter().enumerate() {
                    for (j, byte) in [201u32, 203].into_iter().enumerate() {
                        let held = fcntl::test(file.as_fd(), Flavor::Ofd, byte, 1, true)
                            .expect("F_OFD_GETLK");
                        if held.is_none() {
                            gaps[2 * i + j].2 += 1;
                        }
                    }
                }
            }
            Watched {
                samples,
                free: gaps,
            }
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watcher thread")
    }
}

fn assert_no_gap(watched: Watched) {
    let Watched {
        samples,
        free: gaps,
    } = watched;
    assert!(samples > 1000, "the watcher sampled only {samples} times");
    for (file, byte, free) in &gaps {
        assert_eq!(
            *free, 0,
            "nobody held byte {byte} of {file:?} in {free} of {samples} samples"
        );
    }
    println!("watcher: {samples} samples, 201 and 203 held on both files in every one");
}

/// The writers' bytes are nowhere: the base still holds its pattern, the
/// guest sees it through top, and no sector of PATTERN is in either file.
fn assert_untouched(top: &Path, base: &Path) {
    let sector = [PATTERN; 512];
    for file in [top, base] {
        let data = std::fs::read(file).expect("read the image");
        assert!(
            !data.windows(512).any(|w| w == sector),
            "a writer's sector is in {file:?}"
        );
    }
    let data = std::fs::read(base).expect("read the base");
    assert!(data[..512].iter().all(|b| *b == BASE_PATTERN));
    let out = run(Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c"])
        .arg(format!("read -P {BASE_PATTERN:#x} 0 512"))
        .arg(top));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("read 512/512 bytes") && !text.contains("Pattern verification failed"),
        "{text}"
    );
}

fn c_example(tmp: &TempDir) -> PathBuf {
    compile(
        &[&root().join("c-examples/handover.c")],
        &tmp.path().join("handover"),
        false,
        &[],
    )
}

/// Marks the start of a phase, then lets it last.
fn mark(marks: &mut Vec<(String, Instant)>, name: &str) {
    marks.push((name.to_owned(), Instant::now()));
    std::thread::sleep(PHASE);
}

// ---------------------------------------------------------------------
// The tests.

/// The whole hand-over, each side's bytes after each step, no writer ever
/// in, no sample without 201 and 203 on both files.
/// `exact`: both sides use a VM disk's request in exact mode, and hold
/// QEMU's bytes (no 202).
fn hand_over(mut source: Role, mut dest: Role, top: &Path, base: &Path, exact: bool) {
    let (write_top, read_protected): (&[u32], &[u32]) = if exact {
        (&[100, 101, 103, 201, 203], &[100, 201, 203])
    } else {
        (WRITE_TOP, READ_PROTECTED)
    };
    let files = [top, base];
    source.must("active", &files);
    assert_eq!(
        held_by(source.pid(), &files),
        bytes(write_top, read_protected)
    );

    let watcher = Watcher::start(&files);
    let writers = Writers::start(top, base);
    let mut marks = Vec::new();
    mark(&mut marks, "the source is active");

    dest.must("incoming", &files);
    assert_eq!(held_by(dest.pid(), &files), bytes(READ, READ));
    // Out of order, the destination is refused and keeps what it held.
    let early = dest
        .step("protect")
        .expect_err("protect while the source writes");
    assert_eq!(early.0, -libc::EAGAIN);
    assert!(
        early.1.starts_with("Failed to get shared \"write\" lock"),
        "{early:?}"
    );
    assert_eq!(held_by(dest.pid(), &files), bytes(READ, READ));
    mark(&mut marks, "the destination is incoming");

    source.must("protect", &files);
    assert_eq!(
        held_by(source.pid(), &files),
        bytes(read_protected, read_protected)
    );
    mark(&mut marks, "the source protects");

    dest.must("protect", &files);
    assert_eq!(
        held_by(dest.pid(), &files),
        bytes(read_protected, read_protected)
    );
    // Activating before the source stepped down is refused, and harmless.
    let early = dest
        .step("active")
        .expect_err("active while the source protects");
    assert!(
        early.1.starts_with("Failed to get \"write\" lock"),
        "{early:?}"
    );
    assert_eq!(
        held_by(dest.pid(), &files),
        bytes(read_protected, read_protected)
    );
    mark(&mut marks, "both protect");

    source.must("inactive", &files);
    assert_eq!(held_by(source.pid(), &files), bytes(READ, READ));
    mark(&mut marks, "the source is inactive");

    dest.must("active", &files);
    assert_eq!(
        held_by(dest.pid(), &files),
        bytes(write_top, read_protected)
    );
    mark(&mut marks, "the destination is active");

    source.must("release", &files);
    assert_eq!(held_by(source.pid(), &files), bytes(&[], &[]));
    mark(&mut marks, "the source released");
    marks.push(("end".to_owned(), Instant::now()));

    let attempts = writers.finish();
    assert_no_gap(watcher.finish());
    assert_all_refused(&attempts, &marks, &files);
    assert_eq!(
        held_by(dest.pid(), &files),
        bytes(write_top, read_protected)
    );
    println!(
        "retries after a writer's passing lock: source {}, destination {}",
        source.retries, dest.retries
    );
    drop(dest);
    assert_untouched(top, base);
}

#[test]
fn c_source_hands_over_to_c_destination() {
    let (tmp, top, base) = chain("ho-c");
    let exe = c_example(&tmp);
    hand_over(
        Role::c("source", &exe, &top),
        Role::c("destination", &exe, &top),
        &top,
        &base,
        false,
    );
}

/// QEMU's bytes exactly (RWX, RP, R) at every step, in exact mode.
#[test]
fn exact_mode_hands_over_with_qemus_bytes() {
    let (_tmp, top, base) = chain("ho-exact");
    hand_over(
        Role::rust_exact("source", &top),
        Role::rust_exact("destination", &top),
        &top,
        &base,
        true,
    );
}

#[test]
fn rust_source_hands_over_to_rust_destination() {
    let (_tmp, top, base) = chain("ho-rust");
    hand_over(
        Role::rust("source", &top),
        Role::rust("destination", &top),
        &top,
        &base,
        false,
    );
}

/// A reader that refuses writers (`qemu-io -r`) joins while both sides
/// protect: the destination's activation is refused and leaves it exactly
/// as it was, the source steps back up to protecting but cannot write
/// while the reader stays, and takes write back once the reader and the
/// destination are gone. No writer gets in, no gap at any point.
#[test]
fn refused_activation_goes_back_to_the_source() {
    let (tmp, top, base) = chain("ho-fail");
    let files = [top.as_path(), base.as_path()];
    let mut source = Role::rust("source", &top);
    let mut dest = Role::c("destination", &c_example(&tmp), &top);

    source.must("active", &files);
    let watcher = Watcher::start(&files);
    let writers = Writers::start(&top, &base);
    let mut marks = Vec::new();
    mark(&mut marks, "the source is active");
    dest.must("incoming", &files);
    source.must("protect", &files);
    dest.must("protect", &files);
    mark(&mut marks, "both protect");

    let reader = QemuIo::hold(&top, true);
    // qemu-io -r: a read-only QEMU on top, a raw base under it only read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held_by(reader.pid(), &files) != bytes(&[100, 201, 203], READ) {
        assert!(
            Instant::now() < deadline,
            "qemu-io -r holds {:?}",
            held_by(reader.pid(), &files)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    source.must("inactive", &files);
    mark(&mut marks, "a reader joined, the source is inactive");

    let protected = bytes(READ_PROTECTED, READ_PROTECTED);
    assert_eq!(held_by(dest.pid(), &files), protected);
    let refused = dest.step("active").expect_err("a reader refuses writers");
    assert_eq!(refused.0, -libc::EAGAIN);
    // The holder named is the reader, unless one of the writers was in its
    // passing lock of 201 when the holder was looked up.
    let (head, tail) = (
        "Failed to get \"write\" lock (held by qemu-io, pid ",
        format!(")|Is another process using the image [{}]?", top.display()),
    );
    assert!(
        refused.1.starts_with(head) && refused.1.ends_with(&tail),
        "{refused:?}"
    );
    if refused.1 != format!("{head}{}{tail}", reader.pid()) {
        println!("the refusal named a passing writer: {refused:?}");
    }
    assert_eq!(
        held_by(dest.pid(), &files),
        protected,
        "the destination as it was"
    );
    assert_eq!(held_by(source.pid(), &files), bytes(READ, READ));
    mark(&mut marks, "the destination was refused");

    // The source steps back up: protecting is possible beside the others...
    source.must("protect", &files);
    assert_eq!(held_by(source.pid(), &files), protected);
    // ... writing is not while anybody else refuses writers.
    let again = source
        .step("active")
        .expect_err("the reader is still there");
    assert!(
        again.1.starts_with("Failed to get \"write\" lock"),
        "{again:?}"
    );
    assert_eq!(
        held_by(source.pid(), &files),
        protected,
        "the source as it was"
    );
    dest.must("inactive", &files);
    assert_eq!(held_by(dest.pid(), &files), bytes(READ, READ));
    dest.must("release", &files);
    assert_eq!(held_by(dest.pid(), &files), bytes(&[], &[]));
    mark(&mut marks, "the destination gave up");
    drop(reader);
    mark(&mut marks, "the reader left");

    source.must("active", &files);
    assert_eq!(
        held_by(source.pid(), &files),
        bytes(WRITE_TOP, READ_PROTECTED)
    );
    mark(&mut marks, "the source is active again");
    marks.push(("end".to_owned(), Instant::now()));

    let attempts = writers.finish();
    assert_no_gap(watcher.finish());
    assert_all_refused(&attempts, &marks, &files);
    drop(source);
    assert_untouched(&top, &base);
}

/// QEMU's own sequence, for comparison: the source goes straight from
/// active to inactive and the destination straight from incoming to
/// active. In between nobody holds 201 or 203: the watcher sees it, and a
/// writer that tries then gets in (CHAINS.md §4). This is the gap the
/// protecting step closes, and the proof that the checks above can fail.
#[test]
fn qemus_own_sequence_leaves_a_gap_that_the_checks_see() {
    let (tmp, top, base) = chain("ho-qemu");
    let files = [top.as_path(), base.as_path()];
    let exe = c_example(&tmp);
    let mut source = Role::c("source", &exe, &top);
    let mut dest = Role::c("destination", &exe, &top);
    source.must("active", &files);
    dest.must("incoming", &files);

    let watcher = Watcher::start(&files);
    source.must("inactive", &files);
    let writer = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {PATTERN:#x} 0 512"))
        .arg(&top)
        .output()
        .expect("qemu-io runs");
    std::thread::sleep(Duration::from_millis(20));
    dest.must("active", &files);
    let Watched {
        samples,
        free: gaps,
    } = watcher.finish();

    assert!(
        writer.status.success(),
        "the writer was refused in the gap: {}",
        String::from_utf8_lossy(&writer.stderr)
    );
    for (file, byte, free) in &gaps {
        assert!(
            *free > 0,
            "the watcher missed the gap on {byte} of {file:?}"
        );
    }
    println!("watcher: {samples} samples, gaps {gaps:?}");
    drop((source, dest));
    let data = std::fs::read(&top).expect("read top");
    assert!(
        data.windows(512).any(|w| w == [PATTERN; 512]),
        "the writer's sector should be in top.qcow2"
    );
}

/// The README's Rust example is the module's doc example (run by the doc
/// tests), as written, without the doc test's hidden setup lines.
#[test]
fn readme_example_is_the_compiled_doc_example() {
    let readme = support::readme_block(
        "## Migrating an image between hypervisors (QEMU's hand-over)",
        "rust",
    );
    let module = std::fs::read_to_string(root().join("src/handover.rs")).expect("the module");
    let mut doc = String::new();
    let mut lines = module
        .lines()
        .map(|l| {
            l.strip_prefix("//!")
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
        })
        .map_while(|l| l)
        .skip_while(|l| *l != "```")
        .skip(1);
    for line in lines.by_ref().take_while(|l| *l != "```") {
        if !line.starts_with("# ") {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    assert_eq!(readme, doc);
}

/// A libfpl destination in Incoming holds 100, so it is a holder: a caller
/// refusing beside processes that have the image open without locks
/// (`refuse_unlocked_openers`) is not refused by it. QEMU's own incoming
/// side (every file open read-only, no byte; a `qemu-io -r` with
/// `file.locking=off` stands in for it) is such an opener.
#[test]
fn a_libfpl_incoming_side_is_a_holder_not_an_opener() {
    let (tmp, top, base) = chain("ho-open");
    let files = [top.as_path(), base.as_path()];
    let active = Request::new(Mode::Write.perm(), Mode::Write.shared());
    let careful = Options {
        refuse_unlocked_openers: true,
        ..Options::default()
    };
    let mut dest = Role::c("destination", &c_example(&tmp), &top);
    dest.must("incoming", &files);
    ChainLock::check(&top, Phase::Protecting.request(active), careful)
        .expect("a holder of 100 is not an opener");
    dest.must("release", &files);

    let mut qemu = Command::new(require(
        "qemu-io",
        "QEMU's qemu-utils; QEMU 10 comes with this machine",
    ))
    .args(["-r", "--image-opts"])
    .arg(format!(
        "driver=qcow2,file.driver=file,file.filename={},file.locking=off",
        top.display()
    ))
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .expect("qemu-io starts");
    let opened = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(top.as_path()))
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !opened(qemu.id()) {
        assert!(Instant::now() < deadline, "qemu-io never opened {top:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(held_by(qemu.id(), &files)[0], Vec::<u32>::new());
    let refused = ChainLock::check(&top, Phase::Protecting.request(active), careful)
        .expect_err("QEMU's incoming side is an opener");
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(refused.errno(), libc::EBUSY, "{refused}");
    assert!(refused.to_string().contains("without locks"), "{refused}");
}
