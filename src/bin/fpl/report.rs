//! How a failure on one image is told to the user: the library's message,
//! the image it concerns, and what to do about it.

use std::path::Path;

use fpl::Error;

use crate::escape;

/// Whether `e` refuses the access because the image is in use: a conflict
/// with a holder (`EAGAIN`), or an opener without locks (`EBUSY`, asked
/// for with `--no-unlocked-openers`). Both are "in use" for the exit
/// status (check: 1, hold: 75), and `hold --wait` waits for both to go.
pub fn refused(e: &Error) -> bool {
    fpl::wait::in_use(e)
}

/// What the user can do about `e`, when the errno says it.
pub fn hint(e: &Error) -> Option<&'static str> {
    if refused(e) {
        return None;
    }
    match e.errno() {
        libc::ENOENT => Some("check the path: fpl never creates images"),
        libc::EACCES | libc::EPERM => Some(
            "fpl opens images read-only: it needs read permission on the image \
             and search permission on its folders (or run it as the image's owner)",
        ),
        // Resolving a chain locks nothing: there ENOTSUP is a format fpl
        // does not follow, which the message names.
        libc::ENOLCK | libc::EOPNOTSUPP if !matches!(e, Error::Chain { .. }) => Some(
            "the file system refuses byte-range locks (some FUSE mounts; NFS without \
             its lock service): QEMU fails to lock images there too. Use a local file \
             system or fix the mount. Only on a kernel without open file description \
             locks (before Linux 3.15) does --allow-posix help",
        ),
        libc::EISDIR => Some("name the image file, not its folder"),
        _ => None,
    }
}

/// The message for `e` on `path`, with the path in front unless the message
/// already names it; untrusted text escaped (see `escape`).
pub fn message(path: &Path, e: &Error) -> String {
    let shown = escape::path(path);
    let msg = escape::error(e);
    if msg.contains(&format!("'{shown}'")) {
        msg
    } else {
        format!("{shown}: {msg}")
    }
}

/// Prints `e` on standard error as `fpl: MESSAGE`, and the hint if any.
pub fn print_error(path: &Path, e: &Error) {
    diag!("fpl: {}", message(path, e));
    if let Some(hint) = hint(e) {
        diag!("fpl: hint: {hint}");
    }
}

/// The file the conflict `e` is on, shown, when it is another file than
/// `path` (a member of its chain).
pub fn member(path: &Path, e: &Error) -> Option<String> {
    match e.conflict().and_then(|c| c.path.as_deref()) {
        Some(member) if member != path => Some(escape::path(member)),
        _ => None,
    }
}

/// ` on base.raw` when the conflict `e` is on a member of `path`'s chain,
/// else nothing.
pub fn on_member(path: &Path, e: &Error) -> String {
    member(path, e).map_or_else(String::new, |m| format!(" on {m}"))
}
