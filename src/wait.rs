//! Waiting for an image in use: the bounded retry of `fpl hold --wait`,
//! for the libraries (`Lock::acquire_within`, `ChainLock::acquire_within`,
//! `fpl_acquire_wait`).

use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lock::Options;

/// How often a waiting acquire tries again, as `fpl hold --wait` does.
pub const RETRY: Duration = Duration::from_millis(100);

/// Whether `e` is "in use": a conflict (`EAGAIN`), or an opener without
/// locks (`EBUSY`, with `refuse_unlocked_openers`). Waiting may end those;
/// nothing else.
pub fn in_use(e: &Error) -> bool {
    e.conflict().is_some() || matches!(e, Error::Opened { .. })
}

/// Runs `attempt` until it succeeds, fails for another reason than the
/// image being in use, or `timeout` has passed since the first try (which
/// is always made: a zero timeout tries once). Tries every [`RETRY`]. The
/// retries skip the holder lookup; the last error gets it unless `options`
/// skip it, so /proc is walked once, for the error returned.
pub fn retrying<T>(
    timeout: Duration,
    options: Options,
    mut attempt: impl FnMut(Options) -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now().checked_add(timeout);
    let quiet = Options {
        skip_holder_lookup: true,
        ..options
    };
    loop {
        let mut e = match attempt(quiet) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if in_use(&e) && !left.is_zero() {
            sleep(RETRY.min(left));
            continue;
        }
        if !options.skip_holder_lookup {
            e.look_up_holder();
        }
        return Err(e);
    }
}
