//! Which protocol bytes of an image are held, and by whom.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::fcntl::{self, Flavor};
use crate::holders::{self, Holder, Mounts, Target};
use crate::image::Image;
use crate::protocol::{Held, LIBVIRT_BYTE, UNSHARE_BASE};

/// What [`query()`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The bytes held by anybody (this process's other handles included).
    pub held: Held,
    /// The processes holding them, when asked for. Bytes can be held while
    /// none is found: a holder on another host sharing the file system, in
    /// another PID namespace, or one this process may not inspect. With
    /// [`Inspect::openers`], also the openers ([`Holder::no_locks`]), in
    /// the same (pid, descriptor) order.
    pub holders: Vec<Holder>,
    /// Some process could not be inspected.
    pub holders_partial: bool,
    /// Which processes could not be inspected, when `holders_partial`, in
    /// pid order: to explain why.
    pub uninspected: Vec<i32>,
    /// Bytes are held that no lock line in `/proc` accounts for, on a file
    /// system that keeps its locks out of `/proc` (a FUSE file system that
    /// locks on its server, as GlusterFS's client does): a holder on this
    /// host would show no lock line, and the holders named are inferred
    /// ([`Holder::inferred`]). Only looked at when holders are asked for
    /// and bytes are held.
    pub hidden_locks: bool,
}

/// The range a query looks at: from byte 0 (libvirt) to 204. One F_GETLK
/// answers for a free image; locks on bytes outside the protocol only cost
/// a few more calls, as the search splits around them.
const RANGES: [(u32, u32); 1] = [(LIBVIRT_BYTE, UNSHARE_BASE + 5)];

/// What a query looks for beyond the bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspect {
    /// Name the processes holding the bytes (`FPL_QUERY_HOLDERS`).
    pub holders: bool,
    /// Also list the processes that have the image open and hold none of
    /// its bytes (`FPL_QUERY_OPENERS`), found in the same walk of `/proc`,
    /// which then runs for free images too. This process is never listed.
    /// For a block device, users of other device nodes of the same device
    /// are openers too ([`Holder::node`]): their locks are their node's.
    pub openers: bool,
}

/// Reports the protocol bytes held on `path`; with `holders`, also names
/// the processes holding them.
///
/// ```
/// use fpl::{query, Lock, Mode, Options, Request};
/// # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let image = dir.join("vm.img");
/// # std::fs::write(&image, vec![0u8; 1 << 20])?;
/// assert!(query(&image, false)?.held.is_empty()); // nobody holds anything
///
/// let lock = Lock::acquire(
///     &image,
///     Request::new(Mode::Read.perm(), Mode::Read.shared()),
///     Options::default(),
/// )?;
/// let status = query(&image, true)?;
/// assert!(status.held.covers(100) && status.held.covers(201)); // reads, refuses writers
/// assert_eq!(status.holders[0].pid, std::process::id() as i32);
/// # drop(lock);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn query(path: &Path, holders: bool) -> Result<Status> {
    query_with(
        path,
        Inspect {
            holders,
            openers: false,
        },
    )
}

/// [`query()`] with openers, or other things to look for.
pub fn query_with(path: &Path, inspect: Inspect) -> Result<Status> {
    query_many_with(&[path], inspect)
        .pop()
        .unwrap_or_else(|| Err(Error::invalid("no image")))
}

/// [`query()`] for many images at once: each image's bytes are tested, then
/// the holders of all the held ones are found with one walk of `/proc`, so
/// the cost grows with the host's descriptors plus the images, not their
/// product. Names of one inode (links) share its locks and its holders.
pub fn query_many<P: AsRef<Path>>(paths: &[P], holders: bool) -> Vec<Result<Status>> {
    query_many_with(
        paths,
        Inspect {
            holders,
            openers: false,
        },
    )
}

/// [`query_many()`] with openers, or other things to look for.
pub fn query_many_with<P: AsRef<Path>>(paths: &[P], inspect: Inspect) -> Vec<Result<Status>> {
    let mounts = (inspect.holders || inspect.openers).then(Mounts::read);
    let mut targets: Vec<Target> = Vec::new();
    let mut results: Vec<(Result<Status>, Option<usize>)> = paths
        .iter()
        .map(|path| {
            let image = match Image::open(path.as_ref()) {
                Ok(image) => image,
                Err(e) => return (Err(e), None),
            };
            let held = match held_bytes_named(image.fd(), Some(path.as_ref())) {
                Ok(held) => held,
                Err(e) => return (Err(e), None),
            };
            let status = Status {
                held,
                // Until the walk says whether lock lines account for them.
                hidden_locks: inspect.holders && !held.is_empty() && locks_hidden(image.fd()),
                ..Status::default()
            };
            // Free images need no walk of /proc, unless openers are asked.
            let index = match &mounts {
                Some(mounts) if !held.is_empty() || inspect.openers => {
                    let target = mounts
                        .target(image.fd(), image.file_id())
                        .with_block_device(image.block_device());
                    Some(
                        targets
                            .iter()
                            .position(|t| *t == target)
                            .unwrap_or_else(|| {
                                targets.push(target);
                                targets.len() - 1
                            }),
                    )
                }
                _ => None,
            };
            (Ok(status), index)
        })
        .collect();
    if !targets.is_empty() {
        // Inferring holders where locks are hidden needs the openers.
        let hidden = results
            .iter()
            .any(|(r, _)| r.as_ref().is_ok_and(|s| s.hidden_locks));
        let scan = if inspect.openers || hidden {
            holders::scan_openers(&targets)
        } else {
            holders::scan(&targets)
        };
        for (result, index) in &mut results {
            if let (Ok(status), Some(i)) = (result, *index) {
                status.holders_partial = scan.partial(i, status.held);
                if status.holders_partial {
                    status.uninspected.clone_from(&scan.uninspected);
                }
                let mut found = scan.holders[i].clone();
                if status.hidden_locks {
                    status.hidden_locks = infer(&mut found, status.held);
                }
                status.holders = found
                    .into_iter()
                    .filter(|h| {
                        if h.no_locks {
                            inspect.openers
                        } else {
                            inspect.holders
                        }
                    })
                    .collect();
            }
        }
    }
    results.into_iter().map(|(r, _)| r).collect()
}

/// Where the image's locks are hidden from `/proc` and bytes are `held`
/// that no lock line accounts for, the openers of the image (processes that
/// have it open and show no lock) are their holders, inferred: an OFD or
/// POSIX lock lives only as long as an open descriptor of its file, so a
/// holder on this host is among them. Each gets every unaccounted byte.
/// False when lock lines account for every byte (a FUSE file system that
/// leaves locking to the kernel).
fn infer(found: &mut [Holder], held: Held) -> bool {
    let seen = found
        .iter()
        .filter(|h| !h.no_locks)
        .fold(Held::default(), |all, h| all.union(h.held));
    let unseen = held.minus(seen);
    if unseen.is_empty() {
        return false;
    }
    for h in found.iter_mut().filter(|h| h.no_locks && h.node.is_none()) {
        h.no_locks = false;
        h.inferred = true;
        h.held = unseen;
    }
    true
}

/// Whether the file system of `fd` keeps its locks where `/proc` cannot
/// show them: a FUSE file system that implements locking itself (GlusterFS,
/// ...) sends every lock to its server and the kernel records none. (A FUSE
/// file system that leaves locking to the kernel shows lock lines, which
/// account for every held byte, and nothing is inferred.)
pub(crate) fn locks_hidden(fd: BorrowedFd<'_>) -> bool {
    use nix::sys::statfs::{fstatfs, FUSE_SUPER_MAGIC};
    fstatfs(fd).is_ok_and(|st| st.filesystem_type() == FUSE_SUPER_MAGIC)
}

/// The protocol bytes somebody holds, seen from a descriptor that holds
/// none: F_GETLK asking for F_WRLCK over each range finds a lock in the way;
/// the parts of the range on either side of it are searched again.
pub fn held_bytes(fd: BorrowedFd<'_>) -> Result<Held> {
    held_bytes_named(fd, None)
}

fn held_bytes_named(fd: BorrowedFd<'_>, path: Option<&Path>) -> Result<Held> {
    // POSIX F_GETLK does not see this process's own POSIX locks; OFD does.
    let flavor = if fcntl::ofd_available(fd) {
        Flavor::Ofd
    } else {
        Flavor::Posix
    };
    let mut held = Held::default();
    for (first, len) in RANGES {
        search(
            fd,
            flavor,
            u64::from(first),
            u64::from(first + len - 1),
            &mut held,
        )
        .map_err(|e| Error::test_failed(e, first, path))?;
    }
    Ok(held)
}

fn search(
    fd: BorrowedFd<'_>,
    flavor: Flavor,
    first: u64,
    last: u64,
    held: &mut Held,
) -> Result<(), Errno> {
    // Both ends are within 0..=204, so the conversions cannot fail.
    let (Ok(start), Ok(len)) = (u32::try_from(first), u32::try_from(last - first + 1)) else {
        return Err(Errno::EINVAL);
    };
    let Some(found) = fcntl::test(fd, flavor, start, len, true)? else {
        return Ok(());
    };
    let lo = found.first.max(first);
    let hi = found.last.map_or(last, |l| l.min(last));
    held.add_range(lo, Some(hi));
    if lo > first {
        search(fd, flavor, first, lo - 1, held)?;
    }
    if hi < last {
        search(fd, flavor, hi + 1, last, held)?;
    }
    Ok(())
}
