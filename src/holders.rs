//! Naming the processes that hold an image's bytes, which QEMU cannot do.
//!
//! OFD locks report pid -1, so the owner is found the way util-linux's
//! lslocks (2.40+) finds it: walk `/proc/PID/fd`, keep the descriptors whose
//! inode is the image's (one `stat` each, no read), and match the `lock:`
//! lines of their `/proc/PID/fdinfo/FD` on device, inode and byte range.
//!
//! The device in lock lines is the file system's own (its super block's),
//! which is not always what `stat` says: on btrfs `st_dev` names the
//! subvolume. [`Mounts`] finds the lock lines' device from the mount the
//! image's descriptor is on.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::fdinfo::{lock_lines, LockClass};
use crate::protocol::Held;

/// The identity `stat` gives an inode: what `/proc/PID/fd` entries are
/// matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// An image to find holders of: its `stat` identity and the device its
/// lock lines name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// What `stat` says.
    pub id: FileId,
    /// Major number of the device in lock lines.
    pub major: u32,
    /// Minor number of the device in lock lines.
    pub minor: u32,
}

impl Target {
    /// A target whose lock lines name the `stat` device (true of most file
    /// systems; see [`Mounts::target`] for the exact answer).
    pub fn from_stat(id: FileId) -> Target {
        Target {
            id,
            major: libc::major(id.dev),
            minor: libc::minor(id.dev),
        }
    }
}

/// This process's mounts: mount id to the device of the mounted file
/// system, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    devices: HashMap<u64, (u32, u32)>,
    /// Every mounted file system's device.
    known: HashSet<(u32, u32)>,
}

impl Mounts {
    /// Reads `/proc/self/mountinfo` (empty if unreadable).
    pub fn read() -> Mounts {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let devices = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let id = fields.next()?.parse().ok()?;
                let _parent = fields.next()?;
                let (major, minor) = fields.next()?.split_once(':')?;
                Some((id, (major.parse().ok()?, minor.parse().ok()?)))
            })
            .collect::<HashMap<u64, (u32, u32)>>();
        let known = devices.values().copied().collect();
        Mounts { devices, known }
    }

    /// The target for an image open on `fd` with `stat` identity `id`: the
    /// lock lines' device is that of the mount `fd` is on (its fdinfo's
    /// `mnt_id`), or the `stat` device where that cannot be told.
    pub fn target(&self, fd: BorrowedFd<'_>, id: FileId) -> Target {
        let stat = Target::from_stat(id);
        // A `stat` device that is some mount's device is the lock lines'
        // device too; only others (btrfs subvolumes) need the mount looked up.
        if self.known.contains(&(stat.major, stat.minor)) {
            return stat;
        }
        let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
        let mount = fdinfo.ok().and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        match mount.and_then(|m| self.devices.get(&m)) {
            Some(&(major, minor)) => Target { id, major, minor },
            None => stat,
        }
    }
}

/// A process descriptor holding protocol bytes of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The process.
    pub pid: i32,
    /// The descriptor in that process.
    pub fd: i32,
    /// `/proc/PID/comm`, empty if unreadable.
    pub name: String,
    /// The bytes this descriptor holds.
    pub held: Held,
}

/// What one walk of `/proc` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// For each target, in order: its holders, by pid then descriptor.
    pub holders: Vec<Vec<Holder>>,
    /// Some process (or descriptor) could not be inspected: another user's
    /// without privilege, or a sandbox's PID 1. Its locks are unknown.
    pub refused: bool,
}

impl Scan {
    /// Whether holders of `held` may be missing for target `i`: some held
    /// byte has no holder found, and some process could not be inspected.
    /// (A byte with no holder while every process was inspected belongs to
    /// somebody this host cannot see: another NFS client, another PID
    /// namespace.)
    pub fn partial(&self, i: usize, held: Held) -> bool {
        let found = self
            .holders
            .get(i)
            .map(|hs| hs.iter().fold(Held::default(), |acc, h| acc.union(h.held)))
            .unwrap_or_default();
        self.refused && found.union(held) != found
    }
}

/// Finds the holders of protocol bytes (0, 100-104, 200-204) of each of
/// `targets`, walking `/proc` once for all of them.
pub fn scan(targets: &[Target]) -> Scan {
    let mut out = Scan {
        holders: vec![Vec::new(); targets.len()],
        refused: false,
    };
    if targets.is_empty() {
        return out;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        out.refused = true;
        return out;
    };
    let mut pids: Vec<i32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    // A host with many processes is walked by a few threads at once (each
    // descriptor costs a stat through /proc); they are joined before this
    // returns.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(pids.len() / 64)
        .max(1);
    let chunk = pids.len().div_ceil(threads);
    let parts: Vec<(Vec<Vec<Holder>>, bool)> = if threads == 1 {
        vec![scan_pids(&pids, targets)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = pids
                .chunks(chunk.max(1))
                .map(|part| s.spawn(move || scan_pids(part, targets)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| (Vec::new(), true)))
                .collect()
        })
    };
    for (found, refused) in parts {
        out.refused |= refused;
        for (all, some) in out.holders.iter_mut().zip(found) {
            all.extend(some);
        }
    }
    for hs in &mut out.holders {
        hs.sort_by_key(|h| (h.pid, h.fd));
    }
    out
}

/// The holders among `pids`, and whether one could not be inspected.
fn scan_pids(pids: &[i32], targets: &[Target]) -> (Vec<Vec<Holder>>, bool) {
    let index: HashMap<FileId, usize> =
        targets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut found = vec![Vec::new(); targets.len()];
    let mut refused = false;
    for &pid in pids {
        refused |= scan_process(pid, targets, &index, &mut found).is_err();
    }
    (found, refused)
}

/// Err(()) when the process (or one of its descriptors) could not be
/// inspected; a process that is gone is no error.
fn scan_process(
    pid: i32,
    targets: &[Target],
    index: &HashMap<FileId, usize>,
    found: &mut [Vec<Holder>],
) -> Result<(), ()> {
    // The descriptors are stat'ed relative to their folder: one path
    // component to resolve per descriptor instead of four.
    let mut dir = match Dir::open(
        format!("/proc/{pid}/fd").as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) | Err(Errno::ESRCH) => return Ok(()),
        Err(_) => return Err(()),
    };
    let fds: Vec<i32> = dir
        .iter()
        .filter_map(|e| e.ok()?.file_name().to_str().ok()?.parse().ok())
        .collect();
    let mut name: Option<String> = None;
    let mut refused = false;
    for fd in fds {
        let st = match fstatat(dir.as_fd(), fd.to_string().as_str(), AtFlags::empty()) {
            Ok(st) => st,
            Err(Errno::EACCES) | Err(Errno::EPERM) => {
                refused = true;
                continue;
            }
            // Gone, or a descriptor stat cannot follow: not an image.
            Err(_) => continue,
        };
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let Some(&index) = index.get(&id) else {
            continue;
        };
        let info = match fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            Ok(info) => info,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(_) => {
                refused = true;
                continue;
            }
        };
        let held = held_in(&info, &targets[index]);
        if held.is_empty() {
            continue;
        }
        let name = name.get_or_insert_with(|| process_name(pid)).clone();
        found[index].push(Holder {
            pid,
            fd,
            name,
            held,
        });
    }
    if refused {
        Err(())
    } else {
        Ok(())
    }
}

/// The protocol bytes the fcntl lock lines of one fdinfo hold on `target`.
fn held_in(fdinfo: &str, target: &Target) -> Held {
    let mut held = Held::default();
    for line in lock_lines(fdinfo) {
        if line.class != LockClass::Other && line.is_on(target.major, target.minor, target.id.ino) {
            held.add_range(line.first, line.last);
        }
    }
    held
}

/// `/proc/PID/comm` without its newline, or "" if unreadable.
pub fn process_name(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}
