//! What a holder looks like across GlusterFS's two "hosts", and locks the
//! file system loses: the holder's own host names it by inference (FUSE
//! keeps lock lines out of /proc), the other host says "held on another
//! host or out of sight"; `fpl_verify` tells a lock a brick restart dropped
//! from one still held, and `fpl hold` notices within two intervals, ten
//! restarts in a row. The test bed is tests/common/gluster.rs (root,
//! /dev/fuse, GlusterFS: installed when missing).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::gluster::{run_bounded, wait_for, Cluster};
use fpl::{Error, Lock, Mode, Options, Request};

const FPL: &str = env!("CARGO_BIN_EXE_fpl");

/// How long anything here may take at most (a broken setup, not a slow one).
const PATIENCE: Duration = Duration::from_secs(30);

fn raw_image(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(path)
        .arg("1M")
        .output()
        .expect("qemu-img (QEMU 10, preinstalled: qemu-utils) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child killed and reaped however the test ends.
struct Running {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line of its standard output.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .expect("stdout piped")
            .read_line(&mut line)
            .expect("read the child's output");
        line
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fpl hold MODE IMAGE [-- COMMAND]` on host A, holding once its line is
/// read (without a command) or once host A sees the bytes held.
fn hold_on_a(args: &[&str], image: &Path, command: &[&str]) -> Running {
    let mut cmd = Command::new(FPL);
    cmd.arg("hold").args(args).arg(image);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fpl runs");
    let mut run = Running {
        stdout: None,
        child,
    };
    run.stdout = run.child.stdout.take().map(BufReader::new);
    if command.is_empty() {
        let line = run.line();
        assert!(line.starts_with("fpl: holding "), "{line:?}");
    } else {
        wait_for(PATIENCE, "fpl hold to take its locks", || {
            (!fpl::query(image, false).ok()?.held.is_empty()).then_some(())
        });
    }
    run
}

/// `fpl ARGS` on host B.
fn fpl_on_b(cluster: &Cluster, args: &[&str], image: &Path) -> Output {
    let mut cmd = cluster.on_b(FPL);
    cmd.args(args).arg(image);
    run_bounded(&mut cmd, PATIENCE)
}

/// Whether host B sees any byte of `image` held (asked through the file
/// system from B's own mount); `None` while B's mount cannot answer (a
/// brick on its way back).
fn held_seen_from_b(cluster: &Cluster, image: &Path) -> Option<bool> {
    let out = fpl_on_b(cluster, &["status", "--json", "--no-holders"], image);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let perm = v[0]["perm"].as_array()?.len();
    let unshared = v[0]["unshared"].as_array()?.len();
    Some(perm + unshared > 0)
}

/// On the holder's host the holder is named, inferred (FUSE hides its lock
/// lines): in text, in JSON and in the C ABI's flags; on the other host the
/// bytes are "held on another host or out of sight", never free, with no
/// advice to run as root (B's /proc is all inspectable) and no process
/// guessed there. Both for `fpl hold` and for QEMU's qemu-io.
#[test]
fn holders_are_inferred_on_their_host_and_out_of_sight_on_the_other() {
    let cluster = Cluster::start();
    let image = cluster.a("disk.raw");
    raw_image(&image);
    let on_b = cluster.b("disk.raw");
    let path = image.display().to_string();

    for holder in ["fpl", "qemu-io"] {
        let run = if holder == "fpl" {
            hold_on_a(&["--mode", "write"], &image, &[])
        } else {
            // qemu-io waits on its standard input, which a sleeping shell
            // keeps open: QEMU's own write lock.
            let child = Command::new("qemu-io")
                .args(["-f", "raw"])
                .arg(&image)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("qemu-io runs");
            let run = Running {
                child,
                stdout: None,
            };
            wait_for(PATIENCE, "qemu-io to lock the image", || {
                (!fpl::query(&image, false).ok()?.held.is_empty()).then_some(())
            });
            run
        };
        let pid = run.pid();

        let out = run_bounded(Command::new(FPL).arg("status").arg(&image), PATIENCE);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let first = stdout.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("{path}: in use by {holder} (pid {pid}, fd "))
                && first.contains("), inferred: uses consistent read, write"),
            "{holder} on A: {stdout}"
        );
        assert!(
            stdout.contains("keeps its locks on its server, out of /proc"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("out of sight"),
            "A accounts for every byte: {stdout}"
        );

        let out = run_bounded(
            Command::new(FPL).args(["status", "--json"]).arg(&image),
            PATIENCE,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let holders = v[0]["holders"].as_array().expect("holders").clone();
        assert_eq!(holders.len(), 1, "{v}");
        assert_eq!(holders[0]["pid"], pid, "{v}");
        assert_eq!(holders[0]["flags"], serde_json::json!(["inferred"]), "{v}");
        assert_eq!(v[0]["perm"], holders[0]["perm"], "{v}");

        let c = fpl::query(&image, true).expect("query on A");
        assert!(c.hidden_locks, "{c:?}");
        assert!(
            c.holders.iter().all(|h| h.inferred && h.pid == pid),
            "{c:?}"
        );

        let out = fpl_on_b(&cluster, &["status"], &on_b);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        let b_path = on_b.display().to_string();
        assert!(
            lines.first().is_some_and(|l| l.starts_with(&format!(
                "{b_path}: held on another host or out of sight: uses consistent read, write"
            ))),
            "{holder} seen from B: {stdout}"
        );
        assert_eq!(
            lines.get(1).copied(),
            Some(
                format!(
                    "{b_path}: note: no process on this host has the image open: the holder \
                     runs on another host sharing the file system (or in another PID namespace)"
                )
                .as_str()
            ),
            "{stdout}"
        );
        assert_eq!(lines.len(), 2, "{stdout}");
        assert!(
            !stdout.contains("free") && !stdout.contains("as root"),
            "{stdout}"
        );
        drop(run);
        wait_for(PATIENCE, "the bytes to be free again", || {
            fpl::query(&image, false)
                .ok()?
                .held
                .is_empty()
                .then_some(())
        });
    }
}

/// No false alarm, and no missed loss: a lock held on GlusterFS verifies,
/// again and again, also while host B holds the same bytes (read-shared
/// beside read-shared); a brick restart drops every lock, and verify then
/// says ENOLCK naming the byte. While the brick is away, verify fails with
/// the file system's own errno, never ENOLCK, and never Ok (B's lock, which
/// would hide the loss from a test, is dropped too).
#[test]
fn verify_tells_a_lock_the_brick_dropped_from_one_still_held() {
    let mut cluster = Cluster::start();
    let image = cluster.a("disk.raw");
    raw_image(&image);
    let shared = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
    let lock = Lock::acquire(&image, shared, Options::default()).expect("read-shared on A");
    // Host B holds the same bytes.
    let mut cmd = cluster.on_b(FPL);
    cmd.args(["hold", "--mode", "read-shared", "--verify-interval", "0"])
        .arg(cluster.b("disk.raw"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut b_hold = Running {
        child: cmd.spawn().expect("fpl on B"),
        stdout: None,
    };
    b_hold.stdout = b_hold.child.stdout.take().map(BufReader::new);
    let line = b_hold.line();
    assert!(line.starts_with("fpl: holding "), "{line:?}");
    for _ in 0..50 {
        lock.verify().expect("held: no false alarm");
    }

    cluster.restart_brick();
    let deadline = Instant::now() + PATIENCE;
    let mut errors = Vec::new();
    let lost = loop {
        match lock.verify() {
            Err(e @ Error::Lost { .. }) => break e,
            Err(e) => errors.push(e.errno()),
            Ok(()) => panic!("verify says held after the brick dropped every lock"),
        }
        assert!(Instant::now() < deadline, "never lost: {errors:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lost.errno(), libc::ENOLCK);
    assert!(
        lost.to_string()
            .starts_with(&format!("lost the lock on [{}]: byte 1", image.display())),
        "{lost}"
    );
    assert!(
        !errors.contains(&libc::ENOLCK),
        "unreachable is not lost: {errors:?}"
    );
    drop(b_hold);
    let _ = lock.release();
}

/// `fpl hold --verify-interval 1` on host A, ten brick restarts in a row:
/// every loss is reported (`lost the lock on`, exit status 76) within two
/// intervals of the moment host B can see the bytes free; with a command,
/// the command is ended (SIGTERM, as a signal to fpl would end it), and its
/// own status is not fpl's.
#[test]
fn hold_reports_every_lost_lock_within_two_intervals() {
    let mut cluster = Cluster::start();
    let image = cluster.a("disk.raw");
    raw_image(&image);
    let on_b = cluster.b("disk.raw");
    let interval = Duration::from_secs(1);
    let mut delays = Vec::new();
    for round in 0..10 {
        let with_command = round % 2 == 0;
        let command: &[&str] = if with_command {
            &["sleep", "1000"]
        } else {
            &[]
        };
        let mut run = hold_on_a(
            &["--mode", "write", "--verify-interval", "1"],
            &image,
            command,
        );
        wait_for(PATIENCE, "host B to see the hold", || {
            held_seen_from_b(&cluster, &on_b).filter(|&h| h)
        });
        cluster.restart_brick();
        wait_for(PATIENCE, "host B to see the bytes free", || {
            held_seen_from_b(&cluster, &on_b).filter(|&h| !h)
        });
        let free_at = Instant::now();
        let status = wait_for(PATIENCE, "fpl hold to notice", || {
            run.child.try_wait().expect("try_wait")
        });
        let delay = free_at.elapsed();
        let mut stderr = String::new();
        if let Some(mut e) = run.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert_eq!(status.code(), Some(76), "round {round}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "fpl: lost the lock on [{}]: byte ",
                image.display()
            )),
            "round {round}: {stderr}"
        );
        if with_command {
            assert!(
                stderr.contains("ending the command as on SIGTERM"),
                "round {round}: {stderr}"
            );
        }
        assert!(
            delay <= 2 * interval,
            "round {round}: noticed {delay:?} after the bytes were free: {stderr}"
        );
        if round < 2 {
            eprintln!("round {round}, fpl hold said:\n{stderr}");
        }
        delays.push(delay);
    }
    eprintln!("losses noticed after {delays:?}");
}
