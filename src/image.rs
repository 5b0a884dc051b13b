//! Opening an image (or adopting a caller's descriptor) and checking that it
//! is something QEMU locks: a regular file or a block device.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::error::{Error, Result};

/// An open image: a descriptor of our own (close-on-exec) and the identity
/// of the inode, which is what the kernel's locks belong to.
#[derive(Debug)]
pub struct Image {
    fd: OwnedFd,
    path: Option<PathBuf>,
    dev: u64,
    ino: u64,
}

impl Image {
    /// Opens `path` read-only, close-on-exec, without becoming a controlling
    /// terminal and without blocking on a FIFO.
    pub fn open(path: &Path) -> Result<Image> {
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(Error::invalid(format!(
                "path '{}' contains a NUL byte",
                path.to_string_lossy()
            )));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        // nix builds the C string on the stack for ordinary lengths.
        let fd = open(path, flags, Mode::empty())
            .map_err(|e| Error::os(e, format!("cannot open '{}'", path.to_string_lossy())))?;
        Image::checked(fd, Some(path.to_path_buf()))
    }

    /// Adopts a duplicate (close-on-exec) of the caller's `fd`: it shares the
    /// caller's open file description, and with it the OFD locks.
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<Image> {
        let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| Error::os(e, "cannot duplicate the descriptor (is it an open file?)"))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let dup = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        let flags = fcntl(dup.as_fd(), FcntlArg::F_GETFL)
            .map_err(|e| Error::os(e, "cannot read the descriptor's flags"))?;
        let access = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
        if access == OFlag::O_WRONLY || flags & libc::O_PATH != 0 {
            // A read lock needs a descriptor open for reading.
            return Err(Error::os(
                Errno::EBADF,
                "the descriptor is not open for reading (read locks need O_RDONLY or O_RDWR)",
            ));
        }
        Image::checked(dup, None)
    }

    fn checked(fd: OwnedFd, path: Option<PathBuf>) -> Result<Image> {
        let st = fstat(fd.as_fd()).map_err(|e| Error::os(e, "cannot stat the image"))?;
        let name = || {
            path.as_deref().map_or_else(
                || "the descriptor".to_owned(),
                |p| format!("'{}'", p.to_string_lossy()),
            )
        };
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG | SFlag::S_IFBLK => {}
            SFlag::S_IFDIR => {
                return Err(Error::os(
                    Errno::EISDIR,
                    format!("{} is a directory, not an image", name()),
                ))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{} is not a regular file or block device: QEMU locks only images",
                    name()
                )))
            }
        }
        Ok(Image {
            fd,
            path,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The image's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The device of the inode (`st_dev`).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The inode's `stat` identity.
    pub fn file_id(&self) -> crate::holders::FileId {
        crate::holders::FileId {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// The inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The path for messages: the caller's, or what `/proc/self/fd` says for
    /// an adopted descriptor.
    pub fn display_path(&self) -> Option<PathBuf> {
        self.path.clone().or_else(|| {
            use std::os::fd::AsRawFd;
            std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).ok()
        })
    }
}
