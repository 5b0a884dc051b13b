//! Naming the processes that hold an image's bytes, which QEMU cannot do.
//!
//! OFD locks report pid -1, so the owner is found the way util-linux's
//! lslocks (2.40+) finds it: walk `/proc/PID/fd`, keep the descriptors whose
//! inode is the image's (one `stat` each, no read), and match the `lock:`
//! lines of their `/proc/PID/fdinfo/FD` on device, inode and byte range.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;

use crate::fdinfo::{lock_lines, parse_lock_line, LockClass, LockLine};
use crate::protocol::Held;

/// The identity locks belong to: an inode on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
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

/// What a walk of `/proc` found for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Holders, by pid then descriptor.
    pub holders: Vec<Holder>,
    /// Some process could not be inspected (another user's, without
    /// privilege): bytes may be held by somebody not listed.
    pub partial: bool,
}

/// Finds the holders of protocol bytes (0, 100-104, 200-204) of each of
/// `targets`, walking `/proc` once for all of them. The result is in the
/// order of `targets`.
///
/// A process that cannot be inspected (PID 1 of a sandbox, another user's
/// process without privilege) matters only if it may hold the image's
/// bytes: then `/proc/locks`, which every process may read, is compared
/// with what was attributed, and an image with a lock nobody found is
/// marked [`Found::partial`].
pub fn scan(targets: &[FileId]) -> Vec<Found> {
    let mut found = vec![Found::default(); targets.len()];
    let mut seen: Vec<Vec<LockLine>> = vec![Vec::new(); targets.len()];
    let Ok(procs) = fs::read_dir("/proc") else {
        found.iter_mut().for_each(|f| f.partial = true);
        return found;
    };
    let mut pids: Vec<i32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut refused = false;
    for pid in pids {
        refused |= scan_process(pid, targets, &mut found, &mut seen).is_err();
    }
    if refused {
        mark_unattributed(targets, &seen, &mut found);
    }
    for f in &mut found {
        f.holders.sort_by_key(|h| (h.pid, h.fd));
    }
    found
}

/// Marks partial every target with a lock in `/proc/locks` that no
/// inspected descriptor showed.
fn mark_unattributed(targets: &[FileId], seen: &[Vec<LockLine>], found: &mut [Found]) {
    let Some(all) = read_proc_locks() else {
        found.iter_mut().for_each(|f| f.partial = true);
        return;
    };
    let lines: Vec<LockLine> = all.lines().filter_map(parse_lock_line).collect();
    for (i, id) in targets.iter().enumerate() {
        let (major, minor) = (libc::major(id.dev), libc::minor(id.dev));
        let key = |l: &LockLine| (l.class, l.write, l.first, l.last);
        let on_image = lines
            .iter()
            .filter(|l| l.class != LockClass::Other && l.is_on(major, minor, id.ino))
            .filter(|l| touches_protocol(l));
        // Descriptors sharing one description each show its locks, so
        // attributed lines may outnumber held ones; a count of held lines
        // above the attributed count means an owner was missed.
        for line in on_image {
            let held = lines
                .iter()
                .filter(|l| l.is_on(major, minor, id.ino) && key(l) == key(line))
                .count();
            let attributed = seen[i].iter().filter(|l| key(l) == key(line)).count();
            if held > attributed {
                found[i].partial = true;
                break;
            }
        }
    }
}

/// `/proc/locks`, read until two passes agree: the kernel produces it a
/// page at a time, each page under its own lock, so one pass taken while
/// other processes lock and unlock can miss or repeat entries.
fn read_proc_locks() -> Option<String> {
    let mut text = fs::read_to_string("/proc/locks").ok()?;
    for _ in 0..5 {
        let again = fs::read_to_string("/proc/locks").ok()?;
        if again == text {
            break;
        }
        text = again;
    }
    Some(text)
}

fn touches_protocol(line: &LockLine) -> bool {
    let mut held = Held::default();
    held.add_range(line.first, line.last);
    !held.is_empty()
}

/// Err(()) when the process (or one of its descriptors) could not be
/// inspected; a process that is gone is no error.
fn scan_process(
    pid: i32,
    targets: &[FileId],
    found: &mut [Found],
    seen: &mut [Vec<LockLine>],
) -> Result<(), ()> {
    let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => return Err(()),
    };
    let mut name: Option<String> = None;
    let mut refused = false;
    for entry in fds {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let meta = match fs::metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                refused = true;
                continue;
            }
            // Gone, or a descriptor stat cannot follow: not an image.
            Err(_) => continue,
        };
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let Some(index) = targets.iter().position(|t| *t == id) else {
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
        let lines: Vec<LockLine> = image_lines(&info, id).collect();
        let mut held = Held::default();
        for line in &lines {
            held.add_range(line.first, line.last);
        }
        seen[index].extend(lines);
        if held.is_empty() {
            continue;
        }
        let name = name.get_or_insert_with(|| process_name(pid)).clone();
        found[index].holders.push(Holder {
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

/// The fcntl lock lines of one fdinfo that are on `id`.
fn image_lines(fdinfo: &str, id: FileId) -> impl Iterator<Item = LockLine> + '_ {
    let (major, minor) = (libc::major(id.dev), libc::minor(id.dev));
    lock_lines(fdinfo).filter(move |l| l.class != LockClass::Other && l.is_on(major, minor, id.ino))
}

/// `/proc/PID/comm` without its newline, or "" if unreadable.
pub fn process_name(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}
