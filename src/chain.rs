//! Which files, with which request: the members of a QEMU image (the image,
//! its external data file, its backing chain and their data files) as QEMU
//! 7.2 and 10.0 open them, and the request each member gets
//! (CHAINS.md §1-2).
//!
//! Resolution reads only headers ([`crate::qcow2`]): each local member is
//! opened side-effect free with [`Image::open`] (a FIFO or a device other
//! than a block device is never opened for I/O) and its first
//! [`qcow2::PREFIX_LEN`] bytes read with one or two `pread`s; one
//! descriptor per member, all closed when [`resolve`] returns (the chain
//! lock keeps them, and locks those very descriptors). It takes no lock and knows nothing of fcntl: the chain lock sits
//! above it. [`derive()`] is the pure per-member table.
//!
//! Names resolve as QEMU resolves them: a relative backing name against the
//! directory of the overlay's path *as given* (no symlink resolution), an
//! absolute one as written, a relative data file name against the working
//! directory of the process; `json:{...}` names that reduce to a local file;
//! `nbd:` and other network protocols become [`Format::Remote`] members,
//! never opened. Formats libfpl does not follow (vmdk, qed, vhdx, ...) are
//! refused with `ENOTSUP` naming them, never treated as raw.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::fcntl::retry;
use crate::holders::FileId;
use crate::image::Image;
use crate::json;
use crate::perm::{Perm, PermSet};
use crate::protocol::Request;
use crate::qcow2::{self, Probe};

/// The deepest backing chain followed: 200 backing files below the image.
/// A longer chain is refused with `ELOOP`, like a loop: QEMU sets no limit,
/// but no real chain comes near it, and it bounds the work a hostile chain
/// can cause (each level is one open, one or two `pread`s, one close).
pub const MAX_DEPTH: u32 = 200;

/// What a member is to the image (`FPL_ROLE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The image named by the caller (`FPL_ROLE_IMAGE`).
    Image,
    /// A backing file, at depth 1 or more (`FPL_ROLE_BACKING`).
    Backing,
    /// A qcow2 member's external data file (`FPL_ROLE_DATA_FILE`).
    DataFile,
}

/// How QEMU reads a member (`FPL_FORMAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Raw: a pass-through (`FPL_FORMAT_RAW`). Data files are always raw.
    Raw,
    /// qcow2 (`FPL_FORMAT_QCOW2`).
    Qcow2,
    /// Reached through a network protocol (`nbd:`, `http:`, ...): listed,
    /// never opened, locked or followed (`FPL_FORMAT_REMOTE`).
    Remote,
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// As QEMU opens it: relative backing names joined to the overlay's
    /// directory as given; a relative data file name as written (relative
    /// to the working directory); a remote member's name as written.
    pub path: PathBuf,
    /// Its role.
    pub role: Role,
    /// Its format.
    pub format: Format,
    /// 0: the image and its data file; 1: its backing file and that file's
    /// data file; ...
    pub depth: u32,
    /// What a chain request takes on this member ([`derive()`]); for a file
    /// that appears twice (a shared data file), both requests together.
    pub request: Request,
    /// The inode, `None` for a remote member.
    pub file: Option<FileId>,
}

/// The request QEMU's block graph gives a member, for the caller's
/// `request` on the image (CHAINS.md §1-2; QEMU's
/// `bdrv_default_perms_for_storage` and `_for_cow`):
///
/// - a request that shares everything and uses no write (the read-shared
///   preset) is QEMU's force-share: every member gets the request's read
///   and shares everything (byte 100 only);
/// - the image's format node has the request; a backing file's format node
///   only reads (consistent read if the request reads) and shares
///   consistent read, write-unchanged, and write and resize only when the
///   request shares write (in strict mode: write and write-unchanged);
/// - a qcow2 file (metadata) always reads, writes and resizes when its node
///   is writable, and never shares write or resize;
/// - a raw file is its node's request, passed through;
/// - a data file follows its node's write and never shares resize.
///
/// `exact` is carried over: strict by default, byte for byte QEMU's with
/// [`Request::exact`]. `depth` 0 is the image (and its data file).
pub fn derive(request: Request, role: Role, format: Format, depth: u32) -> Request {
    let read = PermSet::NONE.with(Perm::ConsistentRead);
    let write_resize = PermSet::NONE.with(Perm::Write).with(Perm::Resize);
    let writes = |p: PermSet| {
        p.contains(Perm::Write) || p.contains(Perm::WriteUnchanged) || p.contains(Perm::Resize)
    };
    let out = |perm, shared| Request {
        perm,
        shared,
        exact: request.exact,
    };
    if request.shared == PermSet::ALL && !writes(request.perm) {
        return out(request.perm.minus(PermSet::ALL.minus(read)), PermSet::ALL);
    }
    let (perm, shared) = if depth == 0 && role != Role::Backing {
        (request.perm, request.shared)
    } else {
        let shares_write = request.shared.contains(Perm::Write)
            && (request.exact || request.shared.contains(Perm::WriteUnchanged));
        let mut shared = read.with(Perm::WriteUnchanged);
        if shares_write {
            shared = shared.union(write_resize);
        }
        (request.perm.minus(PermSet::ALL.minus(read)), shared)
    };
    match (role, format) {
        (Role::DataFile, _) => {
            let perm = if writes(perm) {
                perm.with(Perm::Write)
            } else {
                perm
            };
            out(perm, shared.without(Perm::Resize))
        }
        (_, Format::Qcow2) => {
            let mut perm = perm.with(Perm::ConsistentRead);
            if writes(perm) {
                perm = perm.union(write_resize);
            }
            out(perm, shared.minus(write_resize))
        }
        (_, Format::Raw | Format::Remote) => out(perm, shared),
    }
}

/// The members of the image at `path`, in the order QEMU opens them: the
/// image, its data file, its backing file, that file's data file, ...
/// Each carries its [`derive()`]d request. Takes no lock.
///
/// Errors (`Error::Chain`, QEMU's wording where it has one, with its
/// `Could not open backing file: ` prefix once per level):
/// - a member that cannot be opened: its errno (`ENOENT`, `EACCES`,
///   `EISDIR`; `EINVAL` for a FIFO or character device), `Could not open
///   backing file: Could not open 'sub/gone.raw': No such file or directory`;
/// - a malformed qcow2 header: [`qcow2::HeaderError::errno`], naming it;
/// - a format libfpl does not follow, a version or feature QEMU refuses, a
///   `json:` name that does not reduce to a local file: `ENOTSUP`;
/// - an unknown protocol or driver name: `EINVAL`;
/// - a loop, or more than [`MAX_DEPTH`] backing files: `ELOOP`.
pub fn resolve(path: &Path, request: Request) -> Result<Vec<Member>> {
    Ok(resolve_open(path, request)?
        .into_iter()
        .map(|o| o.member)
        .collect())
}

/// A member as [`resolve_open`] leaves it: still open, with the bytes its
/// header was read from, so that the chain lock locks the very
/// descriptors resolution read, and can read them again to see that
/// nothing changed.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) member: Member,
    /// `None` for a remote member.
    pub(crate) image: Option<Image>,
    /// The prefix read from it (empty for a data file, which is never
    /// parsed).
    pub(crate) prefix: Vec<u8>,
}

/// [`resolve`], keeping every local member open (one descriptor each,
/// all open at once: what locking them needs anyway).
pub(crate) fn resolve_open(path: &Path, request: Request) -> Result<Vec<Opened>> {
    let mut members: Vec<Member> = Vec::new();
    let mut kept: Vec<(Option<Image>, Vec<u8>)> = Vec::new();
    let mut next = Some(Pending {
        target: Target::Local(path.to_path_buf()),
        format: None,
        role: Role::Image,
        depth: 0,
    });
    while let Some(node) = next.take() {
        let prefix = "Could not open backing file: ".repeat(node.depth as usize);
        if node.depth > MAX_DEPTH {
            return Err(chain_error(
                Errno::ELOOP,
                format!(
                    "The backing chain of '{}' is longer than {MAX_DEPTH} backing files",
                    path.to_string_lossy()
                ),
            ));
        }
        let local = match node.target {
            Target::Remote(name) => {
                members.push(member(
                    name,
                    node.role,
                    Format::Remote,
                    node.depth,
                    None,
                    request,
                ));
                kept.push((None, Vec::new()));
                break;
            }
            Target::Local(p) => p,
        };
        let (image, bytes, whole) = read_prefix(&local, &prefix)?;
        let file = image.file_id();
        let cannot = |e: String| chain_error_at(Errno::ENOTSUP, &prefix, &local, e);
        let format = match node.format {
            Some(f) => f,
            None => match qcow2::probe(&bytes, local.as_os_str().as_bytes()) {
                Probe::Raw => Hint::Raw,
                Probe::Qcow2 => Hint::Qcow2,
                Probe::Other(name) => Hint::Other(name),
            },
        };
        let format = match format {
            Hint::Raw => Format::Raw,
            Hint::Qcow2 => Format::Qcow2,
            Hint::Other(name) => {
                return Err(cannot(format!(
                    "it is a {name} image, and libfpl follows only raw and qcow2 images"
                )))
            }
        };
        if node.role != Role::Image {
            if let Some(m) = members
                .iter()
                .find(|m| m.file == Some(file) && m.role != Role::DataFile)
            {
                return Err(chain_error(
                    Errno::ELOOP,
                    format!(
                        "Backing file '{}' creates an infinite loop: it is '{}'",
                        local.to_string_lossy(),
                        m.path.to_string_lossy()
                    ),
                ));
            }
        }
        let header = (format == Format::Qcow2).then(|| qcow2::parse(&bytes, whole));
        push(
            &mut members,
            &mut kept,
            member(
                local.clone(),
                node.role,
                format,
                node.depth,
                Some(file),
                request,
            ),
            (Some(image), bytes),
        );
        let Some(header) = header else {
            break;
        };
        let header =
            header.map_err(|e| chain_error_at(e.errno(), &prefix, &local, e.to_string()))?;
        if let Some(name) = &header.data_file {
            let (target, _) = classify(name, None, &prefix)?;
            match target {
                Target::Remote(p) => {
                    members.push(member(
                        p,
                        Role::DataFile,
                        Format::Remote,
                        node.depth,
                        None,
                        request,
                    ));
                    kept.push((None, Vec::new()));
                }
                Target::Local(p) => {
                    let image = open(&p, &prefix)?;
                    let file = image.file_id();
                    push(
                        &mut members,
                        &mut kept,
                        member(
                            p,
                            Role::DataFile,
                            Format::Raw,
                            node.depth,
                            Some(file),
                            request,
                        ),
                        (Some(image), Vec::new()),
                    );
                }
            }
        }
        if let Some(name) = &header.backing_file {
            let prefix = "Could not open backing file: ".repeat(node.depth as usize + 1);
            let (target, json_format) = classify(name, Some(&local), &prefix)?;
            let format = match json_format {
                Some(f) => Some(f),
                None => header
                    .backing_format
                    .as_deref()
                    .map(|f| driver_hint(f, &prefix, name))
                    .transpose()?,
            };
            next = Some(Pending {
                target,
                format,
                role: Role::Backing,
                depth: node.depth + 1,
            });
        }
    }
    Ok(members
        .into_iter()
        .zip(kept)
        .map(|(member, (image, prefix))| Opened {
            member,
            image,
            prefix,
        })
        .collect())
}

/// A member still to be opened.
struct Pending {
    target: Target,
    /// The format the overlay names (extension or `json:` driver), if any.
    format: Option<Hint>,
    role: Role,
    depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    Raw,
    Qcow2,
    Other(&'static str),
}

enum Target {
    Local(PathBuf),
    Remote(PathBuf),
}

fn member(
    path: PathBuf,
    role: Role,
    format: Format,
    depth: u32,
    file: Option<FileId>,
    request: Request,
) -> Member {
    Member {
        path,
        role,
        format,
        depth,
        request: derive(request, role, format, depth),
        file,
    }
}

/// Adds `m`, or, when its file is already a member, folds its request into
/// that member's: a file is listed (and locked) once, with what both uses need.
fn push(
    members: &mut Vec<Member>,
    kept: &mut Vec<(Option<Image>, Vec<u8>)>,
    m: Member,
    open: (Option<Image>, Vec<u8>),
) {
    if let Some(old) = members
        .iter_mut()
        .find(|o| o.file.is_some() && o.file == m.file)
    {
        // The file is open already, as the earlier member: this
        // descriptor closes here.
        drop(open);
        old.request.perm = old.request.perm.union(m.request.perm);
        old.request.shared = PermSet::ALL.minus(
            old.request
                .shared
                .complement()
                .union(m.request.shared.complement()),
        );
    } else {
        members.push(m);
        kept.push(open);
    }
}

fn chain_error(errno: Errno, message: String) -> Error {
    Error::Chain { errno, message }
}

fn chain_error_at(errno: Errno, prefix: &str, path: &Path, why: String) -> Error {
    chain_error(
        errno,
        format!("{prefix}Could not open '{}': {why}", path.to_string_lossy()),
    )
}

/// Opens `path` as [`Image::open`] does, in QEMU's wording on failure.
fn open(path: &Path, prefix: &str) -> Result<Image> {
    Image::open(path).map_err(|e| match e {
        Error::Os { errno, .. } => chain_error_at(errno, prefix, path, errno.desc().to_owned()),
        other => chain_error_at(
            Errno::from_raw(other.errno()),
            prefix,
            path,
            match other {
                // Image::open names the file itself; say only why.
                Error::Invalid(_) => {
                    "not a regular file or block device (QEMU locks only images)".to_owned()
                }
                other => other.to_string(),
            },
        ),
    })
}

/// Opens `path` and reads its first [`qcow2::PREFIX_LEN`] bytes (a second
/// `pread` only when the first came back short: the end of the file, or a
/// signal). Returns the open image, the bytes, and whether they are the
/// whole file.
fn read_prefix(path: &Path, prefix: &str) -> Result<(Image, Vec<u8>, bool)> {
    let image = open(path, prefix)?;
    let (buf, whole) = prefix_of(&image, path, prefix)?;
    Ok((image, buf, whole))
}

/// The prefix of an open member, read again (by the chain lock, once it
/// holds the member): equal bytes mean an unchanged header.
pub(crate) fn reread(image: &Image, path: &Path) -> Result<Vec<u8>> {
    prefix_of(image, path, "").map(|(bytes, _)| bytes)
}

fn prefix_of(image: &Image, path: &Path, prefix: &str) -> Result<(Vec<u8>, bool)> {
    let mut buf = vec![0u8; qcow2::PREFIX_LEN];
    let mut have = 0;
    for _ in 0..2 {
        let n = retry(|| pread(image.fd(), &mut buf[have..], have)).map_err(|e| {
            chain_error_at(
                e,
                prefix,
                path,
                format!("cannot read the header: {}", e.desc()),
            )
        })?;
        have += n;
        if n == 0 || have == buf.len() {
            break;
        }
    }
    let whole = have < buf.len();
    buf.truncate(have);
    Ok((buf, whole))
}

/// `pread(2)` (nix's needs its `uio` feature, which libfpl does not enable).
fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: usize) -> nix::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: buf is valid for buf.len() bytes, and fd is open for the call.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// Network protocols: QEMU's client locks nothing there.
const REMOTE_PROTOCOLS: [&str; 18] = [
    "nbd",
    "nbd+tcp",
    "nbd+unix",
    "http",
    "https",
    "ftp",
    "ftps",
    "ssh",
    "gluster",
    "gluster+tcp",
    "gluster+unix",
    "gluster+rdma",
    "iscsi",
    "iser",
    "rbd",
    "nfs",
    "nvme",
    "vxhs",
];
/// Protocols that name a local file.
const LOCAL_PROTOCOLS: [&str; 3] = ["file", "host_device", "host_cdrom"];
/// QEMU's other protocol drivers: they wrap or invent files, and libfpl
/// does not follow them.
const OTHER_PROTOCOLS: [&str; 8] = [
    "blkdebug",
    "blkverify",
    "fat",
    "null-co",
    "null-aio",
    "throttle",
    "quorum",
    "vvfat",
];
/// QEMU's format drivers libfpl does not follow.
const OTHER_FORMATS: [&str; 11] = [
    "vmdk",
    "qed",
    "vhdx",
    "vdi",
    "vpc",
    "qcow",
    "luks",
    "parallels",
    "bochs",
    "cloop",
    "dmg",
];

/// QEMU's `path_has_protocol`: a colon before any slash.
fn protocol_of(name: &[u8]) -> Option<&[u8]> {
    let end = name.iter().position(|&b| b == b':' || b == b'/')?;
    (name[end] == b':').then(|| &name[..end])
}

/// QEMU's `path_combine`: `name` relative to the directory of `base` as
/// written (everything up to its last slash).
fn combine(base: &Path, name: &[u8]) -> PathBuf {
    let base = base.as_os_str().as_bytes();
    if name.first() == Some(&b'/') {
        return PathBuf::from(OsStr::from_bytes(name));
    }
    let dir = base
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(&[][..], |i| &base[..=i]);
    PathBuf::from(OsStr::from_bytes(&[dir, name].concat()))
}

/// The format a backing format name (extension or `json:` driver) chooses.
fn driver_hint(name: &[u8], prefix: &str, backing: &[u8]) -> Result<Hint> {
    let name_str = String::from_utf8_lossy(name);
    match &*name_str {
        "raw" | "file" | "host_device" | "host_cdrom" => Ok(Hint::Raw),
        "qcow2" => Ok(Hint::Qcow2),
        n => match OTHER_FORMATS.iter().find(|f| **f == n) {
            Some(f) => Ok(Hint::Other(f)),
            None => Err(chain_error(
                Errno::EINVAL,
                format!(
                    "{prefix}Could not open '{}': Unknown driver '{n}'",
                    String::from_utf8_lossy(backing)
                ),
            )),
        },
    }
}

/// Where a backing or data file name leads, and the format a `json:` name
/// sets. `relative_to` is the overlay for a backing name, `None` for a data
/// file name (relative to the working directory).
fn classify(
    name: &[u8],
    relative_to: Option<&Path>,
    prefix: &str,
) -> Result<(Target, Option<Hint>)> {
    let lossy = String::from_utf8_lossy(name).into_owned();
    let as_path = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
    let Some(proto) = protocol_of(name) else {
        return Ok((
            Target::Local(match relative_to {
                Some(base) => combine(base, name),
                None => as_path(name),
            }),
            None,
        ));
    };
    let proto = String::from_utf8_lossy(proto).into_owned();
    let refuse =
        |errno, why: String| chain_error(errno, format!("{prefix}Could not open '{lossy}': {why}"));
    if proto == "json" {
        return json_name(&name[5..], prefix, &lossy, name);
    }
    if LOCAL_PROTOCOLS.contains(&proto.as_str()) {
        // A protocol prefix is never joined to the overlay's directory.
        return Ok((Target::Local(as_path(&name[proto.len() + 1..])), None));
    }
    if REMOTE_PROTOCOLS.contains(&proto.as_str()) {
        return Ok((Target::Remote(as_path(name)), None));
    }
    if OTHER_PROTOCOLS.contains(&proto.as_str()) {
        return Err(refuse(
            Errno::ENOTSUP,
            format!("libfpl does not follow the '{proto}' protocol"),
        ));
    }
    // QEMU's wording names no file here.
    Err(chain_error(
        Errno::EINVAL,
        format!("{prefix}Unknown protocol '{proto}'"),
    ))
}

/// A `json:{...}` name: a local file when its options reduce to one (driver
/// raw or qcow2 over `file.filename`, or driver file with `filename`),
/// remote when its protocol is a network one, refused otherwise.
fn json_name(
    text: &[u8],
    prefix: &str,
    lossy: &str,
    whole: &[u8],
) -> Result<(Target, Option<Hint>)> {
    let refuse =
        |errno, why: &str| chain_error(errno, format!("{prefix}Could not open '{lossy}': {why}"));
    let value = std::str::from_utf8(text)
        .ok()
        .and_then(json::parse)
        .filter(|v| matches!(v, json::Value::Object(_)))
        .ok_or_else(|| refuse(Errno::EINVAL, "Could not parse the JSON options"))?;
    let flat = json::flatten(&value);
    let get = |key: &str| {
        flat.iter().find(|(k, _)| k == key).map(|(_, v)| match v {
            json::Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    };
    let string = |key: &str| -> Result<Option<&str>> {
        match get(key) {
            None => Ok(None),
            Some(Some(s)) => Ok(Some(s)),
            Some(None) => Err(refuse(
                Errno::EINVAL,
                &format!("Invalid parameter type for '{key}', expected: string"),
            )),
        }
    };
    let protocol_driver = |d: &str| -> Result<bool> {
        if LOCAL_PROTOCOLS.contains(&d) {
            Ok(false)
        } else if REMOTE_PROTOCOLS.contains(&d) {
            Ok(true)
        } else {
            Err(refuse(
                Errno::ENOTSUP,
                &format!("libfpl does not follow json: names with the '{d}' driver"),
            ))
        }
    };
    let local = |f: &str| Target::Local(PathBuf::from(f));
    let remote = || Target::Remote(PathBuf::from(OsStr::from_bytes(whole)));
    let driver = string("driver")?;
    let format = match driver {
        None => None,
        Some("raw") => Some(Hint::Raw),
        Some("qcow2") => Some(Hint::Qcow2),
        Some(d) if LOCAL_PROTOCOLS.contains(&d) => {
            let f = string("filename")?
                .ok_or_else(|| refuse(Errno::EINVAL, "Parameter 'filename' is required"))?;
            return Ok((local(f), Some(Hint::Raw)));
        }
        Some(d) if REMOTE_PROTOCOLS.contains(&d) => return Ok((remote(), None)),
        Some(d) if OTHER_FORMATS.contains(&d) => {
            return Err(refuse(
                Errno::ENOTSUP,
                &format!("it is a {d} image, and libfpl follows only raw and qcow2 images"),
            ))
        }
        Some(d) => return Err(refuse(Errno::EINVAL, &format!("Unknown driver '{d}'"))),
    };
    if let Some(f) = string("file.filename")? {
        if protocol_driver(string("file.driver")?.unwrap_or("file"))? {
            return Ok((remote(), None));
        }
        return Ok((local(f), format));
    }
    if let Some(d) = string("file.driver")? {
        if protocol_driver(d)? {
            return Ok((remote(), None));
        }
    }
    if let Some(f) = string("filename")? {
        // A plain name under a format driver: QEMU finds its protocol from it.
        let (target, _) = classify(f.as_bytes(), None, prefix)?;
        return Ok((target, format));
    }
    Err(refuse(
        Errno::ENOTSUP,
        "libfpl follows json: names only when they reduce to a file name",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perm::Mode;

    /// The members of CHAINS.md's tables.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Qcow2Image,
        RawImage,
        Qcow2Backing,
        RawBacking,
        DataFile,
        BackingDataFile,
    }

    const KINDS: [Kind; 6] = [
        Kind::Qcow2Image,
        Kind::RawImage,
        Kind::Qcow2Backing,
        Kind::RawBacking,
        Kind::DataFile,
        Kind::BackingDataFile,
    ];

    fn derived(kind: Kind, req: Request) -> Vec<u32> {
        let (role, format, depth) = match kind {
            Kind::Qcow2Image => (Role::Image, Format::Qcow2, 0),
            Kind::RawImage => (Role::Image, Format::Raw, 0),
            Kind::Qcow2Backing => (Role::Backing, Format::Qcow2, 1),
            Kind::RawBacking => (Role::Backing, Format::Raw, 2),
            Kind::DataFile => (Role::DataFile, Format::Raw, 0),
            Kind::BackingDataFile => (Role::DataFile, Format::Raw, 1),
        };
        derive(req, role, format, depth)
            .plan()
            .lock
            .iter()
            .collect()
    }

    // Written by hand from CHAINS.md §1-2 (R = 100; RP = 100,201,203; RWX =
    // 100,101,103,201,203), with the presets' perm/shared of PROTOCOL.md §4
    // (read and write share consistent read only, so never write-unchanged:
    // 202 joins 201 wherever write is refused). Strict mode locks the same
    // bytes for these presets.
    const R: &[u32] = &[100];
    const RO: &[u32] = &[100, 201, 202, 203];
    const RP: &[u32] = &[100, 201, 203];
    const RW: &[u32] = &[100, 101, 103, 201, 202, 203];
    const X: &[u32] = &[100, 101, 103, 200, 201, 202, 203];

    fn table(mode: Mode, kind: Kind) -> &'static [u32] {
        use Kind::*;
        match (mode, kind) {
            // Force-share: every member 100 only.
            (Mode::ReadShared, _) => R,
            // The image gets the request (a qcow2 one unshares write and
            // resize, which these presets never share anyway).
            (Mode::Read, Qcow2Image | RawImage | DataFile) => RO,
            (Mode::Write, Qcow2Image | RawImage | DataFile) => RW,
            (Mode::Exclusive, Qcow2Image | RawImage | DataFile) => X,
            // Backing files (and their data files) are only read, and
            // share write-unchanged: RP whoever uses the image, as under a VM.
            (_, Qcow2Backing | RawBacking | BackingDataFile) => RP,
        }
    }

    #[test]
    fn every_preset_and_member_kind_matches_the_hand_table() {
        for mode in Mode::ALL {
            for kind in KINDS {
                for exact in [false, true] {
                    let req = Request {
                        perm: mode.perm(),
                        shared: mode.shared(),
                        exact,
                    };
                    let want = table(mode, kind);
                    // Strict mode adds 202 wherever it refuses write.
                    let want: Vec<u32> = if !exact && want.contains(&201) && !want.contains(&202) {
                        let mut w = want.to_vec();
                        w.push(202);
                        w.sort_unstable();
                        w
                    } else {
                        want.to_vec()
                    };
                    assert_eq!(derived(kind, req), want, "{mode:?} {kind:?} exact={exact}");
                }
            }
        }
    }

    fn qemu_user(perm: u32, shared: u32) -> Request {
        Request {
            perm: PermSet::from_bits(perm).unwrap_or_default(),
            shared: PermSet::from_bits(shared).unwrap_or_default(),
            exact: true,
        }
    }

    #[test]
    fn qemus_users_get_the_bytes_chains_md_measured() {
        // qemu-io rw / qemu-nbd: uses CR|W|RS, shares all.
        let io = qemu_user(0x0b, 0x0f);
        // A VM's rw virtio disk: uses CR|W|RS, shares CR|WU.
        let vm = qemu_user(0x0b, 0x05);
        // A VM with readonly=on: uses CR, shares CR|WU.
        let ro = qemu_user(0x01, 0x05);
        let rwx: &[u32] = &[100, 101, 103, 201, 203];
        let rows: [(Request, Kind, &[u32]); 15] = [
            (io, Kind::Qcow2Image, rwx),
            (io, Kind::RawBacking, R),
            (io, Kind::Qcow2Backing, RP),
            (io, Kind::DataFile, &[100, 101, 103, 203]),
            (io, Kind::RawImage, &[100, 101, 103]),
            (vm, Kind::Qcow2Image, rwx),
            (vm, Kind::RawBacking, RP),
            (vm, Kind::Qcow2Backing, RP),
            (vm, Kind::DataFile, rwx),
            (ro, Kind::Qcow2Image, RP),
            (ro, Kind::RawBacking, RP),
            (ro, Kind::Qcow2Backing, RP),
            (ro, Kind::DataFile, RP),
            (vm, Kind::BackingDataFile, RP),
            (io, Kind::BackingDataFile, &[100, 203]),
        ];
        for (req, kind, want) in rows {
            assert_eq!(derived(kind, req), want, "{req:?} {kind:?}");
        }
    }

    #[test]
    fn names_resolve_as_qemu_joins_them() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            combine(Path::new("sub/top.qcow2"), b"base.raw"),
            p("sub/base.raw")
        );
        assert_eq!(combine(Path::new("top.qcow2"), b"base.raw"), p("base.raw"));
        assert_eq!(combine(Path::new("/a/b/t"), b"../c"), p("/a/b/../c"));
        assert_eq!(combine(Path::new("sub/t"), b"/abs"), p("/abs"));
        assert_eq!(protocol_of(b"nbd:host:10809"), Some(&b"nbd"[..]));
        assert_eq!(protocol_of(b"sub/a:b"), None);
        assert_eq!(protocol_of(b"plain"), None);
    }

    #[test]
    fn json_names_reduce_to_files_or_are_refused() {
        let c = |s: &str| classify(s.as_bytes(), Some(Path::new("d/top")), "");
        let local = |r: Result<(Target, Option<Hint>)>| match r {
            Ok((Target::Local(p), h)) => Some((p, h)),
            _ => None,
        };
        assert_eq!(
            local(c(
                r#"json:{"driver":"raw","file":{"driver":"file","filename":"/b.raw"}}"#
            )),
            Some((PathBuf::from("/b.raw"), Some(Hint::Raw)))
        );
        assert_eq!(
            local(c(r#"json:{"driver":"qcow2","file.filename":"b.qcow2"}"#)),
            Some((PathBuf::from("b.qcow2"), Some(Hint::Qcow2)))
        );
        assert_eq!(
            local(c(r#"json:{"driver":"file","filename":"/f"}"#)),
            Some((PathBuf::from("/f"), Some(Hint::Raw)))
        );
        assert!(matches!(
            c(r#"json:{"driver":"raw","file":{"driver":"nbd","server":{}}}"#),
            Ok((Target::Remote(_), None))
        ));
        for (bad, errno) in [
            (
                r#"json:{"driver":"vmdk","file.filename":"/x"}"#,
                Errno::ENOTSUP,
            ),
            (r#"json:{"driver":"zork"}"#, Errno::EINVAL),
            (r#"json:{"driver":"raw"}"#, Errno::ENOTSUP),
            (
                r#"json:{"driver":"raw","file":{"driver":"blkdebug"}}"#,
                Errno::ENOTSUP,
            ),
            ("json:{", Errno::EINVAL),
            ("json:[]", Errno::EINVAL),
            ("zork:x", Errno::EINVAL),
            ("blkdebug:x:y", Errno::ENOTSUP),
        ] {
            assert_eq!(c(bad).err().map(|e| e.errno()), Some(errno as i32), "{bad}");
        }
        assert!(matches!(
            c("nbd+unix:///x?socket=/s"),
            Ok((Target::Remote(_), None))
        ));
        assert_eq!(local(c("file:rel")), Some((PathBuf::from("rel"), None)));
    }

    #[test]
    fn a_shared_file_is_listed_once_with_both_requests() {
        let id = Some(FileId { dev: 1, ino: 2 });
        let w = Request::new(Mode::Write.perm(), Mode::Write.shared());
        let (mut members, mut kept) = (Vec::new(), Vec::new());
        push(
            &mut members,
            &mut kept,
            member("d".into(), Role::DataFile, Format::Raw, 1, id, w),
            (None, Vec::new()),
        );
        push(
            &mut members,
            &mut kept,
            member("d".into(), Role::DataFile, Format::Raw, 0, id, w),
            (None, Vec::new()),
        );
        assert_eq!((members.len(), kept.len()), (1, 1));
        assert_eq!(members[0].request.perm, Mode::Write.perm());
        assert_eq!(members[0].depth, 1);
    }
}
