//! Signals as events: the signals fpl reacts to are blocked and read from a
//! signalfd, so no handler runs at an arbitrary point and nothing is lost
//! between two looks. Children get back the signal mask fpl started with
//! (the standard library lets them inherit the current one).

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{siginfo, SfdFlags, SignalFd};

/// The signals that end a hold or the demo, and that `hold` passes on.
pub const STOP: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Blocked signals, readable from a descriptor.
pub struct Signals {
    fd: SignalFd,
    /// The mask before blocking: what children start with.
    original: SigSet,
    /// The signals actually watched.
    watched: Vec<Signal>,
}

impl Signals {
    /// Blocks `wanted` and opens a signalfd for them; `nonblocking` makes
    /// [`Signals::pending`] usable. A stop signal this process was told to
    /// ignore (`nohup` ignores SIGHUP) is left alone: blocking it would
    /// queue it, and it would end the hold after all.
    pub fn block(wanted: &[Signal], nonblocking: bool) -> Result<Signals, String> {
        let watched: Vec<Signal> = wanted
            .iter()
            .copied()
            .filter(|s| !STOP.contains(s) || !is_ignored(*s))
            .collect();
        let mut mask = SigSet::empty();
        for s in &watched {
            mask.add(*s);
        }
        let mut original = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut original))
            .map_err(|e| format!("cannot block signals: {e}"))?;
        let mut flags = SfdFlags::SFD_CLOEXEC;
        if nonblocking {
            flags |= SfdFlags::SFD_NONBLOCK;
        }
        let fd = SignalFd::with_flags(&mask, flags)
            .map_err(|e| format!("cannot open a signalfd: {e}"))?;
        Ok(Signals {
            fd,
            original,
            watched,
        })
    }

    /// The watched signals among `STOP`, for messages: `SIGINT (Ctrl-C), SIGTERM or SIGHUP`.
    pub fn describe_stop(&self) -> String {
        let names: Vec<&str> = STOP
            .iter()
            .filter(|s| self.watched.contains(s))
            .map(|s| match s {
                Signal::SIGINT => "SIGINT (Ctrl-C)",
                other => other.as_str(),
            })
            .collect();
        match names.split_last() {
            None => "it is killed".to_owned(),
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        }
    }

    /// Waits for the next watched signal.
    pub fn next(&self) -> Result<siginfo, String> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => return Ok(info),
                Ok(None) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("cannot read signals: {e}")),
            }
        }
    }

    /// Waits for the next watched signal for at most `timeout` (for ever
    /// if `None`): `None` when the time is up first.
    pub fn next_within(&self, timeout: Option<Duration>) -> Result<Option<siginfo>, String> {
        let Some(timeout) = timeout else {
            return self.next().map(Some);
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: a wait that ends early would only come back here.
            let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if left.is_zero() => return Ok(None),
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("cannot wait for signals: {e}")),
            }
            match self.fd.read_signal() {
                Ok(Some(info)) => return Ok(Some(info)),
                Ok(None) | Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
                Err(e) => return Err(format!("cannot read signals: {e}")),
            }
        }
    }

    /// A stop signal that has arrived, if any (needs `nonblocking`).
    pub fn pending(&self) -> Option<Signal> {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signal = signal_of(&info)?;
            if STOP.contains(&signal) {
                return Some(signal);
            }
        }
        None
    }

    /// Makes `command` start with the signal mask this process started with.
    pub fn restore_in_child<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let original = self.original;
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe calls are allowed: it makes one,
        // pthread_sigmask, and allocates nothing.
        unsafe {
            command.pre_exec(move || original.thread_set_mask().map_err(std::io::Error::from))
        }
    }
}

/// Ends this process by `signal`, the way careful wrappers pass on a
/// signal that ended their child: default action, unblocked, raised. No
/// core file: the command's SIGQUIT is not fpl's crash. Returns 128+N only
/// if fpl somehow survives it.
pub fn die_of(signal: Signal) -> u8 {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let mut set = SigSet::empty();
    set.add(signal);
    // SAFETY: setrlimit reads a valid struct; no handler is installed, only
    // the default action restored.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
    }
    let _ = nix::sys::signal::raise(signal);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    u8::try_from(128 + signal as i32).unwrap_or(u8::MAX)
}

/// The signal a signalfd record is about.
pub fn signal_of(info: &siginfo) -> Option<Signal> {
    Signal::try_from(i32::try_from(info.ssi_signo).ok()?).ok()
}

/// Whether `signal`'s disposition is SIG_IGN.
pub fn is_ignored(signal: Signal) -> bool {
    // SAFETY: a null new action only reads the current one into `old`, a
    // plain C struct for which all-zero is a valid value.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal as libc::c_int, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
