//! Refusing beside unlocked openers (`FPL_FLAG_NO_UNLOCKED_OPENERS`): a
//! process that has an image open and holds none of its bytes (QEMU with
//! `locking=off`, an incoming migration's destination before it
//! activates) is invisible to the protocol, so a caller who asks is
//! refused with `EBUSY` while one exists.
//!
//! The caller's locks are taken (prepared) first and the openers looked for
//! after, with one walk of `/proc` over every file: a QEMU starting
//! meanwhile meets the locks, and one already running without locks is
//! seen. What this cannot see: a process that opens the image after the
//! walk without taking locks (nothing can stop it: locks are advisory),
//! and a process that opened it and is just about to lock it (a QEMU
//! starting with locking on, or another libfpl caller) is refused beside
//! like any opener for that instant. Processes inspecting an image
//! (`fpl status`, `qemu-img info -U`) have it open for a moment too.
//!
//! Block devices: locks belong to the device node's inode, so a QEMU using
//! `/dev/loop0` and a caller using another node of the same device (a
//! container's own `/dev`, made with mknod) never meet in the protocol.
//! The walk matches descriptors of other nodes by `st_rdev` and refuses
//! beside them too, whether or not they lock their own node. Users on other
//! hosts (a shared LUN) stay invisible.

use std::path::Path;

use crate::error::{Error, Result};
use crate::holders::{self, Mounts};
use crate::image::Image;

/// `Err(Error::Opened)` for the first of `files` (in order) that another
/// process has open without locks; one walk of `/proc` for all. For a
/// block device, a process using another node of the device counts too
/// (its locks, if any, are that node's).
pub(crate) fn refuse(files: &[(&Path, &Image)]) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mounts = Mounts::read();
    let targets: Vec<_> = files
        .iter()
        .map(|(_, image)| {
            mounts
                .target(image.fd(), image.file_id())
                .with_block_device(image.block_device())
        })
        .collect();
    let scan = holders::scan_openers(&targets);
    for ((path, _), found) in files.iter().zip(scan.holders) {
        if let Some(opener) = found.into_iter().find(|h| h.no_locks) {
            return Err(Error::Opened {
                path: path.to_path_buf(),
                opener: Box::new(opener),
            });
        }
    }
    Ok(())
}
