//! Opening an image (or adopting a caller's descriptor) and checking that it
//! is something QEMU locks: a regular file or a block device.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};

use crate::closing;
use crate::error::{Error, Result};
use crate::fcntl::retry;

/// An open image: a descriptor of our own (close-on-exec) and the identity
/// of the inode, which is what the kernel's locks belong to. Dropping it
/// closes the descriptor without dropping the process's POSIX locks on the
/// inode (see the private module `closing`).
#[derive(Debug)]
pub struct Image {
    /// Always `Some` until dropped.
    fd: Option<OwnedFd>,
    path: Option<PathBuf>,
    dev: u64,
    ino: u64,
    /// The block device (`st_rdev`) when the image is a device node.
    block_device: Option<u64>,
    /// An OFD test over the whole file found no lock at all: in particular
    /// none of this process's POSIX locks, so closing needs no test.
    no_posix_locks: bool,
}

impl Image {
    /// Opens `path` for reading, close-on-exec, without side effects: the
    /// name is first opened with `O_PATH` (which opens nothing for I/O) and
    /// its type checked, and only a regular file or block device is then
    /// reopened, through that very inode, read-only, without becoming a
    /// controlling terminal and without blocking. A FIFO, a terminal or a
    /// watchdog device is never opened for I/O.
    pub fn open(path: &Path) -> Result<Image> {
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(Error::invalid(format!(
                "path '{}' contains a NUL byte",
                path.to_string_lossy()
            )));
        }
        let cannot = |e| Error::os(e, format!("cannot open '{}'", path.to_string_lossy()));
        let located = retry(|| open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()))
            .map_err(cannot)?;
        let st = stat_image(located.as_fd(), Some(path))?;
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        // The /proc link reopens the inode O_PATH found, whatever happened to
        // the name since. Without /proc the name is opened again and must
        // still be the same inode.
        let link = format!("/proc/self/fd/{}", located.as_raw_fd());
        let fd = match retry(|| open(link.as_str(), flags, Mode::empty())) {
            Err(Errno::ENOENT) => retry(|| open(path, flags, Mode::empty())),
            other => other,
        }
        .map_err(cannot)?;
        let image = Image::checked(fd, Some(path.to_path_buf()))?;
        if (image.dev, image.ino) != (st.st_dev, st.st_ino) {
            return Err(Error::os(
                Errno::EAGAIN,
                format!(
                    "'{}' was replaced while it was being opened: try again",
                    path.to_string_lossy()
                ),
            ));
        }
        Ok(image)
    }

    /// Adopts a duplicate (close-on-exec) of the caller's `fd`: it shares the
    /// caller's open file description, and with it the OFD locks.
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<Image> {
        // Everything is checked on the caller's descriptor first: a duplicate
        // closed on a refusal would drop the caller's POSIX locks.
        let flags = retry(|| fcntl(fd, FcntlArg::F_GETFL)).map_err(|e| {
            Error::os(
                e,
                "cannot read the descriptor's flags (is it an open file?)",
            )
        })?;
        let access = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
        if access == OFlag::O_WRONLY || flags & libc::O_PATH != 0 {
            // A read lock needs a descriptor open for reading.
            return Err(Error::os(
                Errno::EBADF,
                "the descriptor is not open for reading (read locks need O_RDONLY or O_RDWR)",
            ));
        }
        stat_image(fd, None)?;
        let dup = retry(|| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)))
            .map_err(|e| Error::os(e, "cannot duplicate the descriptor (is it an open file?)"))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let dup = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        Image::checked(dup, None)
    }

    /// A new open file description of the same inode (read-only,
    /// close-on-exec), through `/proc/self/fd`: what it sees of the locks
    /// is what another process sees, this image's own included.
    pub fn reopen(&self) -> Result<Image> {
        let link = format!("/proc/self/fd/{}", self.fd().as_raw_fd());
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let name = self.display_path();
        let shown = name.as_deref().map_or_else(
            || "the image".to_owned(),
            |p| format!("'{}'", p.to_string_lossy()),
        );
        let fd = retry(|| open(link.as_str(), flags, Mode::empty()))
            .map_err(|e| Error::os(e, format!("cannot open {shown} again")))?;
        let image = Image::checked(fd, self.path.clone())?;
        if image.file_id() != self.file_id() {
            return Err(Error::os(
                Errno::ESTALE,
                format!("{shown} opened again is another file"),
            ));
        }
        Ok(image)
    }

    /// The Image owns `fd` before anything can fail, so that every way out
    /// closes it through [`closing::close`].
    fn checked(fd: OwnedFd, path: Option<PathBuf>) -> Result<Image> {
        let mut image = Image {
            fd: Some(fd),
            path,
            dev: 0,
            ino: 0,
            block_device: None,
            no_posix_locks: false,
        };
        let st = stat_image(image.fd(), image.path.as_deref())?;
        image.dev = st.st_dev;
        image.ino = st.st_ino;
        image.block_device = is_block_device(&st).then_some(st.st_rdev);
        Ok(image)
    }

    /// Records that an OFD test over the whole file, made since the last
    /// lock of this process could have been taken, found no lock at all.
    pub(crate) fn saw_no_locks(&mut self) {
        self.no_posix_locks = true;
    }

    /// The image's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.fd {
            Some(fd) => fd.as_fd(),
            // Only Drop takes it, and nothing runs after Drop.
            None => unreachable!("image descriptor used after drop"),
        }
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

    /// For a device node, the block device it names (`st_rdev`). Locks
    /// belong to the node's inode, not to the device: another node of the
    /// same device (a container's `/dev`) has locks of its own.
    pub fn block_device(&self) -> Option<u64> {
        self.block_device
    }

    /// The path for messages: the caller's, or what `/proc/self/fd` says for
    /// an adopted descriptor.
    pub fn display_path(&self) -> Option<PathBuf> {
        self.path
            .clone()
            .or_else(|| std::fs::read_link(format!("/proc/self/fd/{}", self.fd().as_raw_fd())).ok())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            closing::close(fd, self.no_posix_locks);
        }
    }
}

/// Whether `st` is a block device node.
fn is_block_device(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFBLK
}

/// `fstat` of an image's descriptor, refusing what QEMU does not lock.
fn stat_image(fd: BorrowedFd<'_>, path: Option<&Path>) -> Result<FileStat> {
    let st = fstat(fd).map_err(|e| Error::os(e, "cannot stat the image"))?;
    let name = || {
        path.map_or_else(
            || "the descriptor".to_owned(),
            |p| format!("'{}'", p.to_string_lossy()),
        )
    };
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG | SFlag::S_IFBLK => Ok(st),
        SFlag::S_IFDIR => Err(Error::os(
            Errno::EISDIR,
            format!("{} is a directory, not an image", name()),
        )),
        _ => Err(Error::invalid(format!(
            "{} is not a regular file or block device: QEMU locks only images",
            name()
        ))),
    }
}
