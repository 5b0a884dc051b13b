//! `fpl`: inspect, test and take QEMU's image locks from the command line.
//! The first user of libfpl's Rust API.
//!
//! - `fpl status [--chain] [--json | --quiet] [--no-holders] (IMAGE... |
//!   --all)`: free, or who holds each image and for what, in QEMU's words
//!   (the holder's guest and user too), and who has it open without locks
//!   (QEMU with `locking=off`); with `--chain`, for every file of each
//!   image (its backing chain, its data file), and which of the images
//!   named refer to each. `--quiet` answers "in use?" in the exit status.
//! - `fpl check (--mode MODE | --perm LIST --share LIST) [--chain] [--exact]
//!   [--no-unlocked-openers] IMAGE...`: would taking the locks succeed?
//!   Exit 0 yes, 1 conflict (or an opener without locks, when asked), 2 error.
//! - `fpl hold ... [--chain] IMAGE... [-- COMMAND...]`: hold the locks on all
//!   images (with `--chain`, on every file of each) while a command runs,
//!   or until a signal.
//! - `fpl demo`: the above against a real qemu-storage-daemon.
//! - `fpl completions SHELL`: the bash, zsh or fish completion script.
//!
//! `--json` prints one JSON array with one object per image, in command-line
//! order; [`json`] documents the objects. For `status`, `check` and `demo`,
//! exit status 2 means an error (including a wrong command line); `hold`
//! keeps the statuses a command rarely uses for itself (75 conflict, 76
//! a lock lost, 125 error), since it exits with its command's status otherwise.

/// `eprintln!` without its panic: a diagnostic nobody can read (standard
/// error a closed pipe, a full disk) is lost, and the exit status still
/// tells the outcome. Defined before the modules so that they can use it.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::diag_line(format_args!($($arg)*))
    };
}

// The crate root is src/bin/fpl.rs, so its modules are named by path.
#[path = "fpl/chain_status.rs"]
mod chain_status;
#[path = "fpl/check.rs"]
mod check;
#[path = "fpl/demo.rs"]
mod demo;
#[path = "fpl/escape.rs"]
mod escape;
#[path = "fpl/hold.rs"]
mod hold;
#[path = "fpl/job.rs"]
mod job;
#[path = "fpl/json.rs"]
mod json;
#[path = "fpl/report.rs"]
mod report;
#[path = "fpl/request.rs"]
mod request;
#[path = "fpl/signals.rs"]
mod signals;
#[path = "fpl/status.rs"]
mod status;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Exit status: everything as asked (granted, inspected, held).
pub const EXIT_OK: u8 = 0;
/// Exit status: an image is in use in a conflicting way (or, with
/// `--no-unlocked-openers`, open without locks: `EBUSY` counts as a
/// conflict, since waiting or asking the user is the answer to both).
pub const EXIT_CONFLICT: u8 = 1;
/// Exit status: something could not be done (and clap's usage errors).
pub const EXIT_ERROR: u8 = 2;
/// `hold`'s exit status for a conflict: EX_TEMPFAIL of sysexits.h ("try
/// again later"), like `flock -E`, a status commands rarely use, so that a
/// caller can tell "an image was busy" from "the command failed".
pub const EXIT_HOLD_CONFLICT: u8 = 75;
/// `hold`'s exit status when the file system lost a lock while it held it
/// (a verification found a byte gone): the command was ended as on a
/// signal. Next to 75, and as rare among commands' own statuses.
pub const EXIT_HOLD_LOST: u8 = 76;
/// `hold`'s exit status for its own errors (and wrong command lines), as
/// timeout, env and chroot use it: 1 and 2 belong to the command.
pub const EXIT_HOLD_ERROR: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "fpl",
    version,
    about = "Inspect, test and take QEMU's image locks",
    long_about = "Inspect, test and take QEMU's image locks (the byte-range \
                  locks QEMU's file-posix driver puts on disk images), so that \
                  scripts and other programs can share images with QEMU safely.",
    after_help = "Examples:
  fpl status vm.qcow2 base.raw
  fpl status --chain pool/*
  fpl check --mode exclusive vm.qcow2
  fpl check --no-unlocked-openers --mode write vm.raw
  fpl hold --chain --mode read vm.qcow2 -- qemu-img convert -O raw vm.qcow2 vm.raw
  fpl hold --mode exclusive vm.qcow2 -- cp vm.qcow2 /backup/
  fpl demo

`fpl COMMAND --help` tells more about each command."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show whether images are free, or who holds them and for what.
    Status(status::StatusArgs),
    /// Test whether an access would be granted now (takes no lock).
    Check(check::CheckArgs),
    /// Take the locks on images while a command runs, or until a signal.
    Hold(hold::HoldArgs),
    /// Show fpl at work against a real qemu-storage-daemon, in a temporary folder.
    #[command(
        long_about = "Shows fpl at work against a real QEMU process: creates a \
                      qcow2 image in a temporary folder, has qemu-storage-daemon \
                      export it read-write, shows `fpl status` naming the daemon, \
                      `fpl check` refusing exclusive access with QEMU's message and \
                      admitting read-shared access, then stops the daemon and shows \
                      the image free. The folder is removed and the daemon stopped \
                      on every way out, Ctrl-C included. Needs qemu-img and \
                      qemu-storage-daemon (package qemu-utils)."
    )]
    Demo,
    /// Print the shell completion script for SHELL (bash, zsh or fish).
    #[command(
        long_about = "Prints the completion script of fpl for SHELL on standard \
                      output, as make install puts it: bash (in \
                      share/bash-completion/completions/fpl), zsh \
                      (share/zsh/site-functions/_fpl) or fish \
                      (share/fish/vendor_completions.d/fpl.fish)."
    )]
    Completions {
        /// bash, zsh or fish.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages fpl(1), fpl-status(1), ... into DIR.
    #[command(hide = true)]
    Manpages {
        /// The folder to write them in (it must exist).
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// Set once a line could not be written on standard output.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes a line on standard output. A closed pipe (`fpl status | head`)
/// means the reader has what it wanted: not an error, and quiet. Any other
/// failure (a full disk) is told once on standard error, and
/// [`stdout_failed`] makes the exit status an error.
pub fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            if !STDOUT_FAILED.swap(true, Ordering::Relaxed) {
                diag!("fpl: cannot write to standard output: {e}");
            }
        }
    }
}

/// Whether [`out`] failed to write some line (a closed pipe aside).
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}

/// Writes one line on standard error, ignoring write errors (see `diag!`).
pub fn diag_line(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `fpl hold` with a wrong command line must not exit 2, a status its
        // command may exit with. fpl has no options before the command name.
        Err(e) if e.use_stderr() && std::env::args_os().nth(1).is_some_and(|a| a == "hold") => {
            let _ = e.print();
            return ExitCode::from(EXIT_HOLD_ERROR);
        }
        Err(e) => e.exit(),
    };
    let status = match &cli.command {
        Cmd::Status(args) => status::run(args),
        Cmd::Check(args) => check::run(args),
        // `hold` tells its own failures apart from its command's.
        Cmd::Hold(args) => return ExitCode::from(hold::run(args)),
        Cmd::Demo => demo::run(),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "fpl", &mut script);
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&script).and_then(|()| stdout.flush()) {
                Ok(()) => EXIT_OK,
                // `fpl completions bash | head`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
                Err(e) => {
                    diag!("fpl: cannot write to standard output: {e}");
                    EXIT_ERROR
                }
            }
        }
        Cmd::Manpages { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::generate_to(cmd, dir) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    diag!(
                        "fpl: cannot write the manual pages into {}: {e}",
                        dir.display()
                    );
                    EXIT_ERROR
                }
            }
        }
    };
    // Output that did not reach its reader is a failure like any other.
    if stdout_failed() {
        return ExitCode::from(EXIT_ERROR);
    }
    ExitCode::from(status)
}
