//! The command of `fpl hold` as a job of its own: its own process group,
//! and the terminal when fpl has it, like a shell runs a job.
//!
//! Why: fpl passes SIGINT, SIGTERM and SIGHUP on to its command. Were the
//! command in fpl's process group, a signal sent to the whole group (`kill
//! -- -PGID`, a shell's `kill %1`, `kill 0` from a script in the group, a
//! supervisor stopping a job) would reach it twice: once directly, once from
//! fpl. No rule about the sender tells the cases apart (a group kill from
//! outside looks like a kill of fpl alone), so the command gets a group of
//! its own: every signal for fpl's group reaches fpl only, and fpl passes
//! each on once, to the command's group (the command and the processes it
//! started, as a group kill would have reached them).
//!
//! A process group of its own takes the command out of the terminal's
//! foreground, where Ctrl-C, Ctrl-\ and Ctrl-Z go, and where reading the
//! terminal is allowed. So when fpl's group is in the foreground, fpl hands
//! the terminal to the command's group (both fpl and the child do, so that
//! the command never starts in the background), takes it back when the
//! command stops or ends, and stops itself when the command stops (Ctrl-Z),
//! so that the shell sees the job stopped; continued (`fg`, `bg`), it hands
//! the terminal over again if it is in the foreground and continues the
//! command. Ctrl-C then reaches the command alone, once, from the terminal.
//!
//! `tcsetpgrp` from a background process raises SIGTTOU unless blocked:
//! fpl blocks it while the command runs.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpgrp, getpid, Pid};

/// fpl's controlling terminal, if it has one.
pub struct Terminal(Option<OwnedFd>);

impl Terminal {
    /// Opens `/dev/tty` (without making it the controlling terminal of a
    /// process that has none).
    pub fn open() -> Terminal {
        let tty = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
            .ok();
        Terminal(tty.map(OwnedFd::from))
    }

    fn fd(&self) -> Option<RawFd> {
        self.0.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The terminal's foreground process group.
    fn foreground(&self) -> Option<Pid> {
        // SAFETY: tcgetpgrp only reads the descriptor's terminal state.
        let group = unsafe { libc::tcgetpgrp(self.fd()?) };
        (group > 0).then(|| Pid::from_raw(group))
    }

    /// Whether fpl's process group is in the foreground.
    pub fn fpl_in_foreground(&self) -> bool {
        self.foreground() == Some(getpgrp())
    }

    /// Makes `group` the foreground process group if `from` is.
    fn hand_over(&self, from: Pid, group: Pid) {
        if let Some(fd) = self.fd() {
            if self.foreground() == Some(from) {
                // SAFETY: a plain call on a descriptor fpl owns.
                unsafe { libc::tcsetpgrp(fd, group.as_raw()) };
            }
        }
    }
}

/// The command, started in a process group of its own.
pub struct Job {
    /// The command's pid, which is also its process group's id.
    pub pid: Pid,
}

/// Makes `command` start in a process group of its own and, if `give` (fpl
/// is in the terminal's foreground), with the terminal.
pub fn own_group<'a>(command: &'a mut Command, terminal: &Terminal, give: bool) -> &'a mut Command {
    let tty = if give { terminal.fd() } else { None };
    // SAFETY: between fork and exec; setpgid, getpid and tcsetpgrp are
    // async-signal-safe and nothing is allocated. SIGTTOU is blocked
    // (inherited from fpl) until the mask is restored after this closure.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = tty {
                libc::tcsetpgrp(fd, libc::getpid());
            }
            Ok(())
        })
    }
}

impl Job {
    /// Right after the spawn: the same as the child does, whichever runs
    /// first (a shell's habit), so that fpl never waits on a child still in
    /// its group.
    pub fn started(pid: Pid, terminal: &Terminal, give: bool) -> Job {
        // SAFETY: plain calls; failing (the child already exec'd and set
        // it, or is gone) changes nothing.
        unsafe { libc::setpgid(pid.as_raw(), pid.as_raw()) };
        if give {
            terminal.hand_over(getpgrp(), pid);
        }
        Job { pid }
    }

    /// Passes `signal` on to the command's process group (the command
    /// alone if it left the group).
    pub fn signal(&self, signal: Signal) {
        if kill(Pid::from_raw(-self.pid.as_raw()), signal).is_err() {
            let _ = kill(self.pid, signal);
        }
    }

    /// The command stopped by `signal`: fpl takes the terminal back and
    /// stops too, so that whoever controls fpl's job sees it stopped. Its
    /// SIGCONT comes back through [`Job::continued`].
    pub fn stopped(&self, signal: Signal, terminal: &Terminal) {
        terminal.hand_over(self.pid, getpgrp());
        // SIGTTOU is blocked in fpl, and a signal fpl ignores would not
        // stop it: SIGSTOP then. (In an orphaned process group the kernel
        // discards the others, and fpl waits with its stopped command, as a
        // shell's job would stay stopped.)
        let own = match signal {
            Signal::SIGTSTP | Signal::SIGTTIN if !crate::signals::is_ignored(signal) => signal,
            _ => Signal::SIGSTOP,
        };
        let _ = kill(getpid(), own);
    }

    /// fpl was continued: the command is too, with the terminal if fpl has
    /// the foreground (`fg`), without it if not (`bg`).
    pub fn continued(&self, terminal: &Terminal) {
        terminal.hand_over(getpgrp(), self.pid);
        self.signal(Signal::SIGCONT);
    }

    /// The command ended: the terminal goes back to fpl's group, if the
    /// command's group still has it.
    pub fn ended(&self, terminal: &Terminal) {
        terminal.hand_over(self.pid, getpgrp());
    }
}
