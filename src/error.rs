//! libfpl's errors, their messages (QEMU's wording for conflicts) and their
//! one mapping to errno.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::holders;
use crate::perm::Perm;

/// Everything that can go wrong. [`Error::errno`] is the negative errno the
/// C ABI returns; `Display` is the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Somebody holds a byte that this request conflicts with (`-EAGAIN`).
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// A bad argument (`-EINVAL`).
    #[error("{0}")]
    Invalid(String),
    /// An image's chain cannot be resolved ([`crate::chain`]): a member that
    /// cannot be opened, a malformed header, a loop. `message` is QEMU's
    /// wording where QEMU has one (`Could not open backing file: Could not
    /// open 'base.raw': No such file or directory`), without errno's name.
    #[error("{message}")]
    Chain {
        /// The errno the C ABI returns (ENOENT, EINVAL, ELOOP, ENOTSUP, ...).
        errno: Errno,
        /// The whole message.
        message: String,
    },
    /// Bytes a handle took are no longer held on the file (`-ENOLCK`): the
    /// file system dropped them (a GlusterFS brick restart, an NFS lease
    /// that expired). Found by [`crate::Lock::verify`].
    #[error("lost the lock on [{}]: byte {byte} is no longer held", path.to_string_lossy())]
    Lost {
        /// The file whose byte is gone.
        path: PathBuf,
        /// The first byte found missing.
        byte: u32,
    },
    /// Another process has the image open and holds none of its bytes
    /// (`-EBUSY`), refused because the caller asked
    /// ([`crate::Options::refuse_unlocked_openers`],
    /// `FPL_FLAG_NO_UNLOCKED_OPENERS`). For a block device, also a process
    /// using the device through another node ([`holders::Holder::node`]).
    #[error("{}", opened_message(path, opener))]
    Opened {
        /// The file (with a chain: the member) that is open.
        path: PathBuf,
        /// The process and descriptor that has it open.
        opener: Box<holders::Holder>,
    },
    /// A system call failed; `what` says what was being done.
    #[error("{what}: {errno}")]
    Os {
        /// The OS error.
        errno: Errno,
        /// What libfpl was doing, e.g. `cannot open '/x.img'`.
        what: String,
    },
}

impl Error {
    /// A bad argument.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }

    /// A failed system call.
    pub fn os(errno: Errno, what: impl Into<String>) -> Error {
        Error::Os {
            errno,
            what: what.into(),
        }
    }

    /// Testing byte `byte` failed with `errno`: the file system refuses
    /// byte-range locks (NFS without lockd, some FUSE file systems).
    pub fn test_failed(errno: Errno, byte: u32, path: Option<&Path>) -> Error {
        let name = path.map_or_else(String::new, |p| format!(" of '{}'", p.to_string_lossy()));
        Error::os(
            errno,
            format!(
                "Failed to test byte {byte}{name} (the file system may not support \
                 byte-range locks)"
            ),
        )
    }

    /// The positive errno: `EAGAIN` for a conflict, `EINVAL` for a bad
    /// argument, the OS error otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Conflict(_) => libc::EAGAIN,
            Error::Invalid(_) => libc::EINVAL,
            Error::Lost { .. } => libc::ENOLCK,
            Error::Opened { .. } => libc::EBUSY,
            Error::Os { errno, .. } | Error::Chain { errno, .. } => *errno as i32,
        }
    }

    /// The conflict, if this is one.
    pub fn conflict(&self) -> Option<&Conflict> {
        match self {
            Error::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// For a conflict whose holder was not looked up (the request asked
    /// [`crate::Options::skip_holder_lookup`]), finds a process holding the
    /// byte now, with one bounded walk of `/proc`. Meant for callers that
    /// take several locks: release them all first, then look up, so that no
    /// lock of theirs is held while `/proc` is walked. Does nothing for other
    /// errors, or once done.
    pub fn look_up_holder(&mut self) {
        if let Error::Conflict(c) = self {
            if let Some(lookup) = c.lookup.take() {
                c.holder = lookup.find(c.byte);
            }
        }
    }
}

/// How a conflict was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// Locking the byte failed: somebody holds it exclusively (a whole-file
    /// write lock of other software). QEMU: `Failed to lock byte N`.
    Lock,
    /// Testing found the byte held by somebody else.
    Test,
}

/// A process holding bytes of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderId {
    /// Its pid.
    pub pid: i32,
    /// Its name (`/proc/PID/comm`), empty if unknown.
    pub name: String,
}

/// A refused request: which byte, which permission, who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Lock or test.
    pub kind: ConflictKind,
    /// The byte in conflict (e.g. 201).
    pub byte: u32,
    /// The permission the message names: the one the caller asked for or
    /// refused to share (in strict mode, write for bytes 102/202).
    pub perm: Perm,
    /// The image, as the caller named it (or as `/proc/self/fd` names a
    /// descriptor), for QEMU's hint.
    pub path: Option<PathBuf>,
    /// A process holding the byte, when one could be found.
    pub holder: Option<HolderId>,
    /// What [`Error::look_up_holder`] needs, until it has run.
    pub(crate) lookup: Option<holders::Lookup>,
}

impl Conflict {
    /// QEMU's first line: `Failed to get "write" lock`, `Failed to get shared
    /// "write" lock` or `Failed to lock byte 100`.
    pub fn qemu_message(&self) -> String {
        match self.kind {
            ConflictKind::Lock => format!("Failed to lock byte {}", self.byte),
            ConflictKind::Test if self.byte < 200 => {
                format!("Failed to get shared \"{}\" lock", self.perm)
            }
            ConflictKind::Test => format!("Failed to get \"{}\" lock", self.perm),
        }
    }

    /// QEMU's hint, `Is another process using the image [PATH]?`.
    pub fn hint(&self) -> String {
        let path = self.path.as_deref().map_or_else(
            || "?".to_owned(),
            |p: &Path| p.to_string_lossy().into_owned(),
        );
        format!("Is another process using the image [{path}]?")
    }
}

impl fmt::Display for Conflict {
    /// `Failed to get "write" lock (held by qemu-io, pid 4410)` then QEMU's
    /// hint on the next line, as QEMU prints it. The holder comes before the
    /// path so that a long path cut short in `fpl_error.message` never hides it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.qemu_message())?;
        if let Some(h) = &self.holder {
            if h.name.is_empty() {
                write!(f, " (held by pid {})", h.pid)?;
            } else {
                write!(f, " (held by {}, pid {})", h.name, h.pid)?;
            }
        }
        write!(f, "\n{}", self.hint())
    }
}

/// libfpl's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`Error::Opened`]'s message. The process comes before the explanation,
/// so that a message cut short in `fpl_error.message` still names it.
fn opened_message(path: &Path, opener: &holders::Holder) -> String {
    let who = format!(
        "{} (pid {}, fd {})",
        if opener.name.is_empty() {
            "a process"
        } else {
            opener.name.as_str()
        },
        opener.pid,
        opener.fd
    );
    let mode = open_mode(opener.access);
    let path = path.to_string_lossy();
    let Some(node) = &opener.node else {
        return format!(
            "'{path}' is open {mode} by {who} without locks: a QEMU with locking=off, \
             or an incoming migration's destination, uses an image this way, so it \
             may be in use although no byte is held"
        );
    };
    let through = if node.path.as_os_str().is_empty() {
        "another node".to_owned()
    } else {
        format!("'{}'", node.path.to_string_lossy())
    };
    let there = if node.held.is_empty() {
        "it holds none there either".to_owned()
    } else {
        format!("it holds {} there", held_list(node.held))
    };
    format!(
        "'{path}' is open {mode} through {through} by {who}, whose locks this node does \
         not see ({there}): the same block device through another device node, so it \
         may be in use although no byte is held here"
    )
}

/// `byte 100`, `bytes 100, 101, 201` for messages.
fn held_list(held: crate::protocol::Held) -> String {
    let mut bytes: Vec<u32> = Vec::new();
    if held.libvirt {
        bytes.push(crate::protocol::LIBVIRT_BYTE);
    }
    bytes.extend(crate::protocol::ByteSet::new(held.perm, held.unshared).iter());
    let mut all: Vec<String> = bytes.iter().map(u32::to_string).collect();
    if held.legacy {
        // Held does not say which of the two (QEMU <= 6.2's graph-mod).
        all.push("104/204".to_owned());
    }
    match all.len() {
        1 => format!("byte {}", all[0]),
        _ => format!("bytes {}", all.join(", ")),
    }
}

/// `read-write`, `read-only`, `write-only` for messages.
pub(crate) fn open_mode(a: crate::fdinfo::Access) -> &'static str {
    match (a.read, a.write) {
        (true, true) => "read-write",
        (false, true) => "write-only",
        _ => "read-only",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdinfo::Access;
    use crate::holders::{FileId, Holder, Node};
    use crate::protocol::Held;

    fn opener(node: Option<Node>) -> Error {
        Error::Opened {
            path: PathBuf::from("/dev/xvdb"),
            opener: Box::new(Holder {
                pid: 4410,
                fd: 9,
                name: "qemu-system-x86".into(),
                held: Held::default(),
                access: Access {
                    read: true,
                    write: true,
                },
                no_locks: true,
                node,
                inferred: false,
            }),
        }
    }

    #[test]
    fn an_opener_through_another_node_is_named_with_its_node_and_bytes() {
        let mut held = Held::default();
        held.add_range(0, Some(0));
        held.add_range(100, Some(101));
        held.add_range(104, Some(104));
        let node = |path: &str, held| Node {
            path: PathBuf::from(path),
            id: FileId { dev: 6, ino: 93 },
            held,
        };
        let e = opener(Some(node("/dev/loop0", held)));
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(
            e.to_string().starts_with(
                "'/dev/xvdb' is open read-write through '/dev/loop0' by qemu-system-x86 \
                 (pid 4410, fd 9), whose locks this node does not see (it holds bytes 0, \
                 100, 101, 104/204 there): the same block device through another device node"
            ),
            "{e}"
        );
        let mut one = Held::default();
        one.add_range(100, Some(100));
        let e = opener(Some(node("", one))).to_string();
        assert!(
            e.contains("through another node by qemu-system-x86")
                && e.contains("(it holds byte 100 there)"),
            "{e}"
        );
        let e = opener(Some(node("/dev/loop0", Held::default()))).to_string();
        assert!(e.contains("(it holds none there either)"), "{e}");
        // The same inode: the message of an unlocked opener, as before.
        let e = opener(None).to_string();
        assert!(
            e.starts_with(
                "'/dev/xvdb' is open read-write by qemu-system-x86 (pid 4410, fd 9) without locks"
            ),
            "{e}"
        );
    }
}
