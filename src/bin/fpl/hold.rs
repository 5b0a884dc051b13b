//! `fpl hold`: take the locks on every image or on none, run a command (or
//! wait for a signal) while they are held, then release them.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::Args;
use fpl::chain::Role;
use fpl::{ChainLock, Error, FileId, Lock, Options};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::Pid;

use crate::job::{self, Job, Terminal};
use crate::request::AccessArgs;
use crate::signals::{die_of, signal_of, Signals, STOP};
use crate::{
    escape, out, report, status, stdout_failed, EXIT_HOLD_CONFLICT, EXIT_HOLD_ERROR,
    EXIT_HOLD_LOST, EXIT_OK,
};

/// How often `--wait` tries again.
const RETRY: Duration = Duration::from_millis(100);

/// `fpl hold`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct HoldArgs {
    #[command(flatten)]
    pub access: AccessArgs,

    /// If an image is in use in a conflicting way (or, with
    /// --no-unlocked-openers, open without locks), try again every 100 ms
    /// for up to SECONDS (fractions allowed) instead of failing at once.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub wait: Option<Duration>,

    /// While holding, make sure every SECONDS (fractions allowed) that the
    /// file system still holds every lock; 0 never does. A lock found lost
    /// ends the hold (exit status 76).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = parse_seconds,
        default_value = "10"
    )]
    pub verify_interval: Duration,

    /// The images (files or block devices).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,

    /// The command to run while the locks are held, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

const AFTER_HELP: &str = "\
Takes the locks on all the images, or on none: if one image cannot be locked,
those already locked are released. The locks are QEMU's, so QEMU processes
that conflict with them are refused while they are held.

With --chain, every file of each image is locked (its data file, its backing
chain), each with what QEMU takes on it for this access: a backing file is
only read, and protected from writers unless the access shares write. A
conflict on any file releases everything and names that file:
  fpl: top.qcow2: cannot take read on base.raw: Failed to get shared
  \"write\" lock (held by qemu-io, pid 4410)
  Is another process using the image [base.raw]?
An image whose chain cannot be resolved is an error (exit status 125).

QEMU's locks cannot show a process that uses the image without them (QEMU
with locking=off, an incoming migration's destination before it takes
over): hold takes such an image. With --no-unlocked-openers it refuses to,
as for a conflict (exit status 75), naming the process; fpl's locks are
taken first and /proc is walked after, so a QEMU starting meanwhile meets
them. With --wait it waits for the opener to go (an image in a hand-over),
then holds:
  fpl: vm.raw: open read-write by qemu-io (pid 4410, fd 9) without locks; waiting

With a command (after --), runs it with the locks held, passes SIGINT,
SIGTERM and SIGHUP on to it, releases the locks when it exits and exits with
its status. The command runs in a process group of its own, so that a signal
sent to fpl's whole group (kill -- -PGID, kill %1, kill 0) reaches it once,
from fpl; fpl hands it the terminal when fpl has it (Ctrl-C and Ctrl-Z then
go to the command; a stopped command stops fpl too, and fg or bg continue
both). The command does not inherit the lock descriptors: if fpl is
killed, the locks go with it, and so does the command (the kernel kills it
with SIGKILL: it never runs on without the locks). The command starts with the signal mask and
ignored signals fpl was started with, except SIGCHLD, always at its default
(ignored, fpl could not wait for the command).

Without a command, prints one line saying what it holds on standard output,
only once every lock is taken and at once (flushed), so that a script may
rely on the locks as soon as it has read the line:
  fpl hold --mode write vm.qcow2 > fifo & read line < fifo
It then holds the locks until it gets SIGINT (Ctrl-C), SIGTERM or SIGHUP. A signal fpl was started
ignoring stays ignored (nohup ignores SIGHUP; shells make background jobs
ignore SIGINT): the line names the signals that count.

While it holds, fpl makes sure every 10 seconds (--verify-interval) that the
file system still holds every lock it took (fpl_verify: this descriptor's own
lock records where the kernel keeps them, and a test from a new descriptor,
which asks the file system itself). A network file system can drop locks
while both sides go on writing: a GlusterFS brick that restarts, an NFS lease
that expires. A lock found lost ends the hold:
  fpl: lost the lock on [vm.raw]: byte 100 is no longer held
and a command is ended as on SIGTERM (passed on to its process group; fpl
waits for it to exit), then fpl releases what is left and exits with 76,
whatever the command's own status. A file system that cannot be reached
meanwhile (ENOTCONN while a server restarts) is said once, and verification
goes on: unreachable is not lost.

Exit status:
  0    the command exited 0; without a command, SIGTERM or SIGHUP ended the hold
  75   an image is in use in a conflicting way, or open without locks with
       --no-unlocked-openers (after --wait, if given)
  76   a lock was lost while held (the command was ended as on SIGTERM)
  125  fpl failed (an image cannot be opened or locked, a wrong command line,
       the line of a hold without command cannot be written)
  126  the command cannot be run
  127  the command cannot be found
  N    otherwise the command's own exit status N, or 128+N if signal N killed it
A command killed by SIGINT or SIGQUIT (Ctrl-C, Ctrl-\\) kills fpl by the same
signal once the locks are released, and SIGINT ends a hold without command
the same way: the shell then knows the user interrupted (a loop around fpl
stops), as it would without fpl. No core file is written for fpl.

Examples:
  fpl hold --mode exclusive vm.qcow2 -- cp vm.qcow2 /backup/
  fpl hold --mode read --wait 30 base.qcow2 -- qemu-img check base.qcow2
  fpl hold --mode write vm.qcow2 &";

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' is not a number of seconds from 0 up"))
}

/// Runs `fpl hold`; returns the exit status.
pub fn run(args: &HoldArgs) -> u8 {
    let locks = match acquire_waiting(args) {
        Ok(locks) => locks,
        Err(status) => return status,
    };
    let mut verifier = Verifier::new(args.verify_interval);
    let outcome = match args.command.split_first() {
        None => hold_until_signal(args, &locks, &mut verifier),
        Some((program, rest)) => run_command(program, rest, &locks, &mut verifier),
    };
    release_all(locks);
    match outcome {
        Ok(Ended::Status(status)) => status,
        Ok(Ended::Lost) => EXIT_HOLD_LOST,
        // Only now that the locks are released.
        Ok(Ended::Signal(signal)) => die_of(signal),
        Err(what) => {
            diag!("fpl: {what}");
            EXIT_HOLD_ERROR
        }
    }
}

/// How the hold ended.
enum Ended {
    /// Exit with this status.
    Status(u8),
    /// Die of this signal, as the command did (or as SIGINT asked).
    Signal(Signal),
    /// A lock was lost while held (the command, if any, was ended).
    Lost,
}

/// Makes sure, every `interval`, that the file system still holds every
/// lock of the hold.
struct Verifier {
    /// `None`: never (`--verify-interval 0`).
    interval: Option<Duration>,
    next: Instant,
    /// A verification could not be made, and that was said: said again only
    /// after one succeeds.
    unreachable_said: bool,
}

impl Verifier {
    fn new(interval: Duration) -> Verifier {
        let interval = (!interval.is_zero()).then_some(interval);
        Verifier {
            interval,
            next: Instant::now() + interval.unwrap_or_default(),
            unreachable_said: false,
        }
    }

    /// How long to wait before the next verification (`None`: for ever).
    fn left(&self) -> Option<Duration> {
        self.interval
            .map(|_| self.next.saturating_duration_since(Instant::now()))
    }

    /// Verifies every lock if it is time to; true when one is lost (and
    /// said). Other failures are said once, and verification goes on.
    fn lost(&mut self, locks: &[(PathBuf, Taken)]) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        if Instant::now() < self.next {
            return false;
        }
        let mut failed = None;
        for (path, taken) in locks {
            match taken.verify() {
                Ok(()) => {}
                Err(e @ Error::Lost { .. }) => {
                    let whose = match &e {
                        Error::Lost { path: file, .. } if file != path => {
                            format!(" (a file of {}'s chain)", escape::path(path))
                        }
                        _ => String::new(),
                    };
                    diag!("fpl: {}{whose}", escape::error(&e));
                    return true;
                }
                Err(e) => failed = failed.or(Some((path, e))),
            }
        }
        match failed {
            Some((path, e)) if !self.unreachable_said => {
                diag!(
                    "fpl: {}: cannot verify the lock: {}; trying again every {}",
                    escape::path(path),
                    escape::error(&e),
                    seconds(interval)
                );
                self.unreachable_said = true;
            }
            Some(_) => {}
            None => self.unreachable_said = false,
        }
        self.next = Instant::now() + interval;
        false
    }
}

/// `10 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// What is held for one image: its file, or every file of its chain.
enum Taken {
    File(Lock),
    Chain(ChainLock),
}

impl Taken {
    fn verify(&self) -> Result<(), Error> {
        match self {
            Taken::File(lock) => lock.verify(),
            Taken::Chain(lock) => lock.verify(),
        }
    }

    fn release(self) -> Result<(), Error> {
        match self {
            Taken::File(lock) => lock.release(),
            Taken::Chain(lock) => lock.release(),
        }
    }
}

/// Takes every lock, retrying conflicts (and, with `--no-unlocked-openers`,
/// openers without locks) until the `--wait` deadline.
/// On failure the message is printed and the exit status returned.
fn acquire_waiting(args: &HoldArgs) -> Result<Vec<(PathBuf, Taken)>, u8> {
    let deadline = args.wait.map(|w| Instant::now() + w);
    // What the last "waiting" line said, so that it is said again only
    // when the reason changes (a holder gone, an opener left in its place).
    let mut announced: Option<String> = None;
    loop {
        let Failure {
            path,
            error: mut e,
            held_by_self,
        } = match acquire_all(args) {
            Ok(locks) => return Ok(locks),
            Err(failure) => failure,
        };
        // Every lock of this attempt is released by now: only then is /proc
        // walked for the holder, and only for a line that is printed (never
        // on the silent retries of --wait).
        let left = deadline.and_then(|d| d.checked_duration_since(Instant::now()));
        match (report::refused(&e), left) {
            // A conflict with this hold's own locks never ends by waiting.
            (true, Some(left)) if !left.is_zero() && held_by_self.is_none() => {
                let reason = waiting_reason(&path, &e);
                if announced.as_ref() != Some(&reason) {
                    e.look_up_holder();
                    diag!("fpl: {}; waiting", waiting_line(&path, &e));
                    announced = Some(reason);
                }
                sleep(RETRY.min(left));
            }
            (true, _) => {
                e.look_up_holder();
                diag!(
                    "fpl: {}: cannot take {}{}: {}",
                    escape::path(&path),
                    args.access.describe(),
                    report::on_member(&path, &e),
                    escape::error(&e)
                );
                if let Some(note) = held_by_self {
                    diag!("fpl: note: {note}: this hold would conflict with itself");
                }
                return Err(EXIT_HOLD_CONFLICT);
            }
            (false, _) => {
                report::print_error(&path, &e);
                return Err(EXIT_HOLD_ERROR);
            }
        }
    }
}

/// What keeps `path` from being held, as a key that stays the same over
/// retries while the reason does: the image, the file of its chain and
/// QEMU's message for a conflict, the image, the file and the process for
/// an opener. Costs no walk of /proc.
fn waiting_reason(path: &Path, e: &Error) -> String {
    match e {
        Error::Opened { path: file, opener } => {
            format!("opened {:?} {:?} {} {}", path, file, opener.pid, opener.fd)
        }
        _ => format!(
            "conflict {:?} {:?} {}",
            path,
            report::member(path, e),
            e.conflict().map(|c| c.qemu_message()).unwrap_or_default()
        ),
    }
}

/// `a.raw: in use (Failed to get "write" lock, held by qemu-io (pid 4410))`,
/// `top.qcow2: base.raw in use (...)`, or `a.raw: open read-write by
/// qemu-io (pid 4410, fd 9) without locks`, for the "waiting" line.
fn waiting_line(path: &Path, e: &Error) -> String {
    let shown = escape::path(path);
    if let Error::Opened { path: file, opener } = e {
        let member = if file.as_path() == path {
            String::new()
        } else {
            format!("{} ", escape::path(file))
        };
        return format!("{shown}: {member}{}", status::opener_words(opener));
    }
    let held_by = e
        .conflict()
        .and_then(|c| c.holder.as_ref())
        .map_or_else(String::new, |h| {
            format!(", held by {} (pid {})", escape::escape(&h.name), h.pid)
        });
    let what =
        report::member(path, e).map_or_else(|| "in use".to_owned(), |m| format!("{m} in use"));
    format!(
        "{shown}: {what} ({}{held_by})",
        e.conflict().map(|c| c.qemu_message()).unwrap_or_default()
    )
}

/// One attempt at every image, in command-line order; on failure nothing
/// stays locked. Two names of one inode (symlink, hard link) are locked
/// once: the locks belong to the inode, and a second description of it
/// would conflict with the first. With `--chain`, each image is every file
/// of its chain (`fpl::ChainLock`, itself all or nothing).
fn acquire_all(args: &HoldArgs) -> Result<Vec<(PathBuf, Taken)>, Failure> {
    let request = args.access.request();
    // No holder is looked up while this attempt still holds other images:
    // the caller does it once everything is released.
    let options = Options {
        skip_holder_lookup: true,
        ..args.access.options()
    };
    let mut locks: Vec<(PathBuf, Taken)> = Vec::with_capacity(args.images.len());
    let mut inodes = Vec::with_capacity(args.images.len());
    for path in &args.images {
        if let Ok(meta) = std::fs::metadata(path) {
            let inode = (meta.dev(), meta.ino());
            if inodes.contains(&inode) {
                continue;
            }
            inodes.push(inode);
        }
        let taken = if args.access.chain {
            ChainLock::acquire(path, request, options).map(Taken::Chain)
        } else {
            Lock::acquire(path, request, options).map(Taken::File)
        };
        match taken {
            Ok(taken) => locks.push((path.clone(), taken)),
            Err(e) => {
                let held_by_self = taken_by(&locks, &e);
                release_all(locks);
                return Err(Failure {
                    path: path.clone(),
                    error: e,
                    held_by_self,
                });
            }
        }
    }
    Ok(locks)
}

/// Why an attempt failed.
struct Failure {
    /// The image named.
    path: PathBuf,
    error: Error,
    /// For a conflict on a file this attempt had already locked (an image
    /// named with its own backing file, `--chain`), which image took it.
    held_by_self: Option<String>,
}

/// When the conflict `e` is on a file `locks` already hold: says which
/// image named before took it, and as what.
fn taken_by(locks: &[(PathBuf, Taken)], e: &Error) -> Option<String> {
    let conflicted = e.conflict()?.path.as_deref()?;
    let meta = std::fs::metadata(conflicted).ok()?;
    let file = FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    let shown = escape::path(conflicted);
    locks.iter().find_map(|(path, taken)| {
        let member = match taken {
            Taken::File(lock) => (lock.file_id() == file).then_some(Role::Image),
            Taken::Chain(chain) => chain
                .members()
                .iter()
                .find(|m| m.file == Some(file))
                .map(|m| m.role),
        }?;
        Some(match member {
            Role::Image => format!("{shown} was named before, and is held already"),
            Role::Backing => format!(
                "{shown} is a backing file of {}, named before",
                escape::path(path)
            ),
            Role::DataFile => format!(
                "{shown} is the data file of {}, named before",
                escape::path(path)
            ),
        })
    })
}

fn release_all(locks: Vec<(PathBuf, Taken)>) {
    for (path, lock) in locks {
        if let Err(e) = lock.release() {
            // Exiting closes the descriptor, which drops the locks anyway.
            report::print_error(&path, &e);
        }
    }
}

/// Holds until a stop signal. SIGINT (Ctrl-C) ends fpl by SIGINT, so that
/// the shell loop or script that ran it stops too, as it would have for
/// any program; SIGTERM and SIGHUP are the planned ends of a hold: exit 0.
fn hold_until_signal(
    args: &HoldArgs,
    locks: &[(PathBuf, Taken)],
    verifier: &mut Verifier,
) -> Result<Ended, String> {
    let signals = Signals::block(&STOP, false)?;
    let names: Vec<_> = locks
        .iter()
        .map(|(path, taken)| match taken {
            Taken::Chain(chain) if chain.members().len() > 1 => {
                let n = chain.members().len() - 1;
                let files = if n == 1 { "file" } else { "files" };
                format!("{} and {n} {files} of its chain", escape::path(path))
            }
            _ => escape::path(path),
        })
        .collect();
    out(&format!(
        "fpl: holding {} ({}) until {}; pid {}",
        names.join(", "),
        args.access.describe(),
        signals.describe_stop(),
        std::process::id()
    ));
    // A hold nobody can learn of would keep QEMU out for no one.
    if stdout_failed() {
        return Err("the hold is released: nobody could be told of it".to_owned());
    }
    loop {
        let Some(info) = signals.next_within(verifier.left())? else {
            if verifier.lost(locks) {
                return Ok(Ended::Lost);
            }
            continue;
        };
        match signal_of(&info) {
            Some(Signal::SIGINT) => return Ok(Ended::Signal(Signal::SIGINT)),
            Some(s) if STOP.contains(&s) => return Ok(Ended::Status(EXIT_OK)),
            _ => {}
        }
    }
}

fn run_command(
    program: &OsString,
    rest: &[OsString],
    locks: &[(PathBuf, Taken)],
    verifier: &mut Verifier,
) -> Result<Ended, String> {
    // Started with SIGCHLD ignored (SIG_IGN survives exec), the kernel would
    // reap the command itself and send no SIGCHLD: fpl would wait for ever
    // and never see its status. The command inherits the default too, as
    // most programs expect.
    // SAFETY: no handler is installed, only the default action restored.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map_err(|e| format!("cannot restore SIGCHLD: {e}"))?;
    // SIGCHLD must be blocked before the child exists: unblocked, its
    // default action would discard it. SIGCONT tells that fpl was continued
    // (it still continues fpl, blocked); SIGTTOU is blocked for tcsetpgrp
    // from the background (see `job`).
    let mut wanted = STOP.to_vec();
    wanted.extend([Signal::SIGCHLD, Signal::SIGCONT, Signal::SIGTTOU]);
    let signals = Signals::block(&wanted, false)?;
    let shown = escape::escape(&program.to_string_lossy()).into_owned();
    let terminal = Terminal::open();
    let give = terminal.fpl_in_foreground();
    let mut command = Command::new(program);
    command.args(rest);
    die_with_fpl(&mut command);
    job::own_group(&mut command, &terminal, give);
    let child = match signals.restore_in_child(&mut command).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            diag!("fpl: cannot run '{shown}': command not found");
            return Ok(Ended::Status(127));
        }
        Err(e) => {
            diag!("fpl: cannot run '{shown}': {e}");
            return Ok(Ended::Status(126));
        }
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let job = Job::started(pid, &terminal, give);
    let waited = wait_forwarding(&job, &signals, &terminal, locks, verifier);
    job.ended(&terminal);
    let (status, lost) = waited?;
    if lost {
        return Ok(Ended::Lost);
    }
    Ok(ended_as(status))
}

/// Makes the kernel kill the command when fpl dies. fpl holds the locks, not
/// the command: a fpl killed by a signal it cannot catch (SIGKILL, or any
/// fatal one it does not handle) would leave the command running on an
/// image QEMU may now open. SIGKILL because it is the only signal the command
/// cannot catch, ignore or block: the point is that it stops, not that it
/// may clean up (fpl's own end was no cleaner). The parent death signal
/// follows the thread that forked; fpl runs the command from its only
/// thread. The kernel forgets it when the command executes a set-user-ID
/// program, and the command's own children are not affected.
fn die_with_fpl(command: &mut Command) {
    let fpl = std::process::id();
    // SAFETY: runs between fork and exec; prctl and getppid are
    // async-signal-safe, and nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // fpl may have died before prctl: then nobody would send it.
            if u32::try_from(libc::getppid()).ok() != Some(fpl) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Waits for the command to end, passing the stop signals on to its
/// process group and following it when it stops and fpl is continued, and
/// verifying the locks meanwhile: a lost one ends the command as SIGTERM
/// would (true with its status).
fn wait_forwarding(
    job: &Job,
    signals: &Signals,
    terminal: &Terminal,
    locks: &[(PathBuf, Taken)],
    verifier: &mut Verifier,
) -> Result<(ExitStatus, bool), String> {
    let mut lost = false;
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes the status into `raw`.
        let got =
            unsafe { libc::waitpid(job.pid.as_raw(), &mut raw, libc::WNOHANG | libc::WUNTRACED) };
        if got == job.pid.as_raw() {
            if !libc::WIFSTOPPED(raw) {
                return Ok((ExitStatus::from_raw(raw), lost));
            }
            if let Ok(signal) = Signal::try_from(libc::WSTOPSIG(raw)) {
                job.stopped(signal, terminal);
            }
            continue;
        }
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("cannot wait: {e}"));
        }
        let wait = if lost { None } else { verifier.left() };
        let info = match signals.next_within(wait) {
            Ok(Some(info)) => info,
            Ok(None) => {
                if verifier.lost(locks) {
                    diag!("fpl: ending the command as on SIGTERM");
                    job.signal(Signal::SIGTERM);
                    lost = true;
                }
                continue;
            }
            // Without signals, at least wait for the command (the locks
            // must outlast it).
            Err(_) => return wait_blocking(job.pid).map(|status| (status, lost)),
        };
        match signal_of(&info) {
            Some(Signal::SIGCONT) => job.continued(terminal),
            Some(signal) if STOP.contains(&signal) => job.signal(signal),
            _ => {}
        }
    }
}

/// Waits for the command to end, nothing else.
fn wait_blocking(pid: Pid) -> Result<ExitStatus, String> {
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes the status into `raw`.
        if unsafe { libc::waitpid(pid.as_raw(), &mut raw, 0) } == pid.as_raw() {
            return Ok(ExitStatus::from_raw(raw));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(format!("cannot wait: {e}"));
        }
    }
}

/// How fpl ends for a command that ended with `status`. A command killed by
/// SIGINT or SIGQUIT (Ctrl-C, Ctrl-\) kills fpl by the same signal: a shell
/// tells "the user interrupted" from an exit status 130 only that way
/// (`while :; do fpl hold ... -- cmd; done` stops). Otherwise the command's
/// exit status, or 128+N for a command killed by signal N, as shells report it.
fn ended_as(status: ExitStatus) -> Ended {
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(s @ (Signal::SIGINT | Signal::SIGQUIT)) => Ended::Signal(s),
        _ => Ended::Status(exit_status_of(status)),
    }
}

/// The command's exit status, or 128+N for a command killed by signal N.
fn exit_status_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(EXIT_HOLD_ERROR),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(EXIT_HOLD_ERROR),
        (None, None) => EXIT_HOLD_ERROR,
    }
}
