//! Which protocol bytes of an image are held, and by whom.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::fcntl::{self, Flavor};
use crate::holders::{self, FileId, Holder};
use crate::image::Image;
use crate::protocol::{Held, LIBVIRT_BYTE, UNSHARE_BASE, USE_BASE};

/// What [`query`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The bytes held by anybody (this process's other handles included).
    pub held: Held,
    /// The processes holding them, when asked for. Bytes can be held while
    /// none is found: a holder on another host sharing the file system, in
    /// another PID namespace, or one this process may not inspect.
    pub holders: Vec<Holder>,
    /// Some process could not be inspected.
    pub holders_partial: bool,
}

/// The ranges a query looks at: byte 0 (libvirt), 100-104, 200-204.
const RANGES: [(u32, u32); 3] = [(LIBVIRT_BYTE, 1), (USE_BASE, 5), (UNSHARE_BASE, 5)];

/// Reports the protocol bytes held on `path`; with `holders`, also names
/// the processes holding them.
pub fn query(path: &Path, holders: bool) -> Result<Status> {
    let image = Image::open(path)?;
    let held = held_bytes(image.fd())?;
    let mut status = Status {
        held,
        ..Status::default()
    };
    if holders {
        let id = FileId {
            dev: image.dev(),
            ino: image.ino(),
        };
        if let Some(found) = holders::scan(&[id]).pop() {
            status.holders = found.holders;
            status.holders_partial = found.partial;
        }
    }
    Ok(status)
}

/// The protocol bytes somebody holds, seen from a descriptor that holds
/// none: F_GETLK asking for F_WRLCK over each range finds a lock in the way;
/// the parts of the range on either side of it are searched again.
pub fn held_bytes(fd: BorrowedFd<'_>) -> Result<Held> {
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
        .map_err(|e| Error::os(e, "cannot test the image's bytes"))?;
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
