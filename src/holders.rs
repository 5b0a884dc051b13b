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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::error::HolderId;
use crate::fdinfo::{self, lock_lines, Access, LockClass};
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
    /// For a device node, the block device it names (`st_rdev`): the
    /// openers scan also lists descriptors of *other* nodes of that device
    /// ([`Holder::node`]), whose locks this node never sees.
    pub block_device: Option<u64>,
}

impl Target {
    /// A target whose lock lines name the `stat` device (true of most file
    /// systems; see [`Mounts::target`] for the exact answer).
    pub fn from_stat(id: FileId) -> Target {
        Target {
            id,
            major: libc::major(id.dev),
            minor: libc::minor(id.dev),
            block_device: None,
        }
    }

    /// The same target, naming the block device a device node image names
    /// ([`crate::image::Image::block_device`]).
    pub fn with_block_device(self, block_device: Option<u64>) -> Target {
        Target {
            block_device,
            ..self
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
        self.target_on(id, || mount_id(fd))
    }

    /// [`Mounts::target`] with the mount id given by `mount` (asked only
    /// when the `stat` device is no mount's device).
    fn target_on(&self, id: FileId, mount: impl FnOnce() -> Option<u64>) -> Target {
        let stat = Target::from_stat(id);
        // A `stat` device that is some mount's device is the lock lines'
        // device too; only others (btrfs subvolumes) need the mount looked up.
        if self.known.contains(&(stat.major, stat.minor)) {
            return stat;
        }
        match mount().and_then(|m| self.devices.get(&m)) {
            Some(&(major, minor)) => Target {
                id,
                major,
                minor,
                block_device: None,
            },
            None => stat,
        }
    }
}

/// The id of the mount `fd` is on: `statx` (Linux 5.8+, one call), else
/// its fdinfo's `mnt_id`.
pub fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: statx on a descriptor with an empty path and AT_EMPTY_PATH
    // only writes the statx struct, for which all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0 {
        return Some(stx.stx_mnt_id);
    }
    fdinfo_mount_id(std::process::id() as i32, fd.as_raw_fd())
}

/// The `mnt_id` of descriptor `fd` of process `pid`, from its fdinfo.
fn fdinfo_mount_id(pid: i32, fd: i32) -> Option<u64> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
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
    /// How the descriptor was opened (`FPL_ACCESS_*`); both false when
    /// fdinfo did not say.
    pub access: Access,
    /// An opener, not a holder (`FPL_HOLDER_NO_LOCKS`): the process has the
    /// image open on this descriptor and holds none of its bytes on any
    /// descriptor (QEMU with `locking=off`, an incoming migration's
    /// destination, a node a block job dropped). `held` is then empty.
    pub no_locks: bool,
    /// For an opener of a block device: the *other* device node (same
    /// device, another inode) this descriptor has open
    /// (`FPL_HOLDER_OTHER_NODE`). Locks belong to a node's inode, so
    /// whatever it holds there (`Node::held`) is invisible through the
    /// image's node: it is an opener of the image (`no_locks`) even when
    /// it locks its own node. `None` for a descriptor of the image's inode.
    pub node: Option<Node>,
    /// A holder named by inference, not seen holding (`FPL_HOLDER_INFERRED`):
    /// the image's file system keeps its locks out of `/proc` (FUSE:
    /// GlusterFS, ...), bytes are held that no lock line accounts for, and
    /// this process has the image open. `held` is then every such byte:
    /// which of several inferred holders holds which cannot be told.
    pub inferred: bool,
}

/// Another device node of the same block device, as an opener of an image
/// uses it ([`Holder::node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node as the kernel names the descriptor (the link
    /// `/proc/PID/fd/FD`): for a process in another mount namespace (a
    /// container's own `/dev`), a name there that may not exist here.
    /// Empty if unreadable.
    pub path: PathBuf,
    /// The node's `stat` identity.
    pub id: FileId,
    /// The protocol bytes the descriptor holds on its own node
    /// (`FPL_HOLDER_NODE_LOCKS` when any): a QEMU with locking on, using
    /// the device through that node.
    pub held: Held,
}

/// What one walk of `/proc` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// For each target, in order: its holders, by pid then descriptor.
    pub holders: Vec<Vec<Holder>>,
    /// Some process (or descriptor) could not be inspected: another user's
    /// without privilege, or a sandbox's PID 1; or a bounded walk stopped
    /// before it. Its locks are unknown.
    pub refused: bool,
    /// The processes that could not be inspected, in pid order (a walk
    /// stopped by its deadline leaves out those it never reached).
    pub uninspected: Vec<i32>,
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

/// How long naming the holder of a conflict may walk `/proc` at most; past
/// it the conflict is reported without a holder. (A walk costs about 4 µs
/// per descriptor on the host: 200,000 descriptors take most of a second.)
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(1);

/// What naming the holder of a conflicting byte needs, kept in the
/// conflict so that the walk of `/proc` can wait until every lock the
/// caller will roll back is rolled back ([`crate::Error::look_up_holder`]).
/// Only the image's identity and mount id are kept (no read of
/// `/proc/self/mountinfo` until the lookup runs, which a caller skipping it
/// never pays for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lookup {
    id: FileId,
    mount: Option<u64>,
    /// The descriptor of this process that must not be named (the handle's
    /// own), while it is open.
    own_fd: Option<i32>,
}

impl Lookup {
    pub(crate) fn new(fd: BorrowedFd<'_>, id: FileId, own_fd: Option<i32>) -> Lookup {
        Lookup {
            id,
            mount: mount_id(fd),
            own_fd,
        }
    }

    /// A process holding `byte`, found within [`LOOKUP_BUDGET`]: another
    /// process if there is one (the walk stops at the first); in this one,
    /// never the handle's own descriptor.
    pub(crate) fn find(self, byte: u32) -> Option<HolderId> {
        let target = Mounts::read().target_on(self.id, || self.mount);
        let deadline = Instant::now() + LOOKUP_BUDGET;
        let stop = Stop::AtHolderOf(byte);
        let found = scan_with(&[target], Some(deadline), stop, false)
            .holders
            .pop()?;
        let me = std::process::id() as i32;
        let mut best = None;
        for h in found.into_iter().filter(|h| h.held.covers(byte)) {
            if h.pid != me {
                best = Some(h);
                break;
            }
            if Some(h.fd) != self.own_fd && best.is_none() {
                best = Some(h);
            }
        }
        best.map(|h| HolderId {
            pid: h.pid,
            name: h.name,
        })
    }
}

/// Finds the holders of protocol bytes (0, 100-104, 200-204) of each of
/// `targets`, walking `/proc` once for all of them.
pub fn scan(targets: &[Target]) -> Scan {
    scan_until(targets, None)
}

/// [`scan`], stopping at `deadline` if one is given: the processes not
/// walked by then count as not inspected ([`Scan::refused`]).
pub fn scan_until(targets: &[Target], deadline: Option<Instant>) -> Scan {
    scan_with(targets, deadline, Stop::Never, false)
}

/// [`scan`] that also lists the openers of each target in the same walk:
/// descriptors of processes that have it open and hold none of its bytes
/// ([`Holder::no_locks`]). For a target that is a block device
/// ([`Target::block_device`]), descriptors of other nodes of the same
/// device count too ([`Holder::node`]): the walk stats every descriptor
/// anyway, and `st_rdev` comes with that stat. This process is never
/// listed as an opener: its own descriptors (libfpl's, and the caller's)
/// are not another user, and neither is another process's copy of one of
/// them (the same open file description, `kcmp`: a child being forked,
/// before its exec closes the copies).
pub fn scan_openers(targets: &[Target]) -> Scan {
    scan_with(targets, None, Stop::Never, true)
}

/// When a walk may stop before every process is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Walk everything.
    Never,
    /// Once another process holding this byte of the (first) target is
    /// found: naming one holder of a conflict needs no more.
    AtHolderOf(u32),
}

fn scan_with(targets: &[Target], deadline: Option<Instant>, stop: Stop, openers: bool) -> Scan {
    let mut out = Scan {
        holders: vec![Vec::new(); targets.len()],
        refused: false,
        uninspected: Vec::new(),
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
    // returns. A thread that cannot be made (RLIMIT_NPROC, a cgroup's
    // pids.max) leaves its share to the calling thread.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(pids.len() / 64)
        .max(1);
    let chunk = pids.len().div_ceil(threads).max(1);
    // Set by whichever share meets what `stop` waits for; the others then
    // stop too.
    let found = Arc::new(AtomicBool::new(false));
    let parts: Vec<Share> = if threads == 1 {
        vec![scan_pids(&pids, targets, deadline, stop, openers, &found)]
    } else {
        let mut jobs: Vec<Job> = pids
            .chunks(chunk)
            .map(|part| {
                Job::start(
                    part.to_vec(),
                    targets.to_vec(),
                    deadline,
                    stop,
                    openers,
                    &found,
                )
            })
            .collect();
        jobs.iter_mut().map(Job::finish).collect()
    };
    for share in parts {
        out.refused |= share.refused;
        out.uninspected.extend(share.uninspected);
        for (all, some) in out.holders.iter_mut().zip(share.found) {
            all.extend(some);
        }
    }
    out.uninspected.sort_unstable();
    for hs in &mut out.holders {
        hs.sort_by_key(|h| (h.pid, h.fd));
    }
    out
}

/// A share of the walk on a thread of its own, made with `pthread_create`
/// rather than std's threads: spawning a std thread (or a scope) puts
/// thread-local state with destructors into the *calling* thread, and a
/// thread-local destructor keeps a shared library loaded, so a plugin host
/// could never unload libfpl.so again (dlclose would leave it mapped).
struct Job {
    work: Box<Work>,
    thread: Option<libc::pthread_t>,
}

struct Work {
    pids: Vec<i32>,
    targets: Vec<Target>,
    deadline: Option<Instant>,
    stop: Stop,
    openers: bool,
    found: Arc<AtomicBool>,
    out: Option<Share>,
}

/// What one share of the walk found.
#[derive(Default)]
struct Share {
    /// For each target, its holders among the share's processes.
    found: Vec<Vec<Holder>>,
    /// Some process was not inspected.
    refused: bool,
    /// Which ones.
    uninspected: Vec<i32>,
}

impl Share {
    /// A share whose processes went uninspected (its thread failed).
    fn lost() -> Share {
        Share {
            refused: true,
            ..Share::default()
        }
    }
}

extern "C" fn run_work(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the Work that Job::start boxed; Job::finish reads it
    // only after joining this thread, and nothing else touches it meanwhile.
    let work = unsafe { &mut *arg.cast::<Work>() };
    // A panic must never unwind out of a C thread start routine.
    work.out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scan_pids(
            &work.pids,
            &work.targets,
            work.deadline,
            work.stop,
            work.openers,
            &work.found,
        )
    }))
    .ok();
    std::ptr::null_mut()
}

impl Job {
    /// Starts the share on a new thread; where none can be made, it is done
    /// here and now.
    fn start(
        pids: Vec<i32>,
        targets: Vec<Target>,
        deadline: Option<Instant>,
        stop: Stop,
        openers: bool,
        found: &Arc<AtomicBool>,
    ) -> Job {
        let mut work = Box::new(Work {
            pids,
            targets,
            deadline,
            stop,
            openers,
            found: Arc::clone(found),
            out: None,
        });
        let arg: *mut Work = &mut *work;
        // SAFETY: pthread_t is plain data; the start routine gets a pointer
        // to the boxed Work, which outlives the thread (finish joins it
        // before the box can be dropped).
        let thread = unsafe {
            let mut thread: libc::pthread_t = std::mem::zeroed();
            let rc = libc::pthread_create(&mut thread, std::ptr::null(), run_work, arg.cast());
            (rc == 0).then_some(thread)
        };
        if thread.is_none() {
            work.out = Some(scan_pids(
                &work.pids,
                &work.targets,
                work.deadline,
                work.stop,
                work.openers,
                &work.found,
            ));
        }
        Job { work, thread }
    }

    /// Waits for the share: its holders, and whether some process went
    /// uninspected (also when the thread failed).
    fn finish(&mut self) -> Share {
        if let Some(thread) = self.thread.take() {
            // SAFETY: a thread this Job created and nobody joined yet.
            let rc = unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
            if rc != 0 {
                // Not joined: the thread may still use the Work, so it is
                // never freed (a leak, never a use after free).
                let work = std::mem::replace(
                    &mut self.work,
                    Box::new(Work {
                        pids: Vec::new(),
                        targets: Vec::new(),
                        deadline: None,
                        stop: Stop::Never,
                        openers: false,
                        found: Arc::new(AtomicBool::new(false)),
                        out: None,
                    }),
                );
                std::mem::forget(work);
                return Share::lost();
            }
        }
        self.work.out.take().unwrap_or_else(Share::lost)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Never free the Work under a running thread.
        let _ = self.finish();
    }
}

/// The holders among `pids`, and whether one could not be inspected (or
/// was not, the deadline having passed).
fn scan_pids(
    pids: &[i32],
    targets: &[Target],
    deadline: Option<Instant>,
    stop: Stop,
    openers: bool,
    done: &AtomicBool,
) -> Share {
    let index: HashMap<FileId, usize> =
        targets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut devices: HashMap<u64, Vec<usize>> = HashMap::new();
    if openers {
        for (i, t) in targets.iter().enumerate() {
            if let Some(rdev) = t.block_device {
                devices.entry(rdev).or_default().push(i);
            }
        }
    }
    let index = Index {
        ids: index,
        devices,
    };
    let mut found = vec![Vec::new(); targets.len()];
    let mut refused = false;
    let mut uninspected = Vec::new();
    let me = std::process::id() as i32;
    for &pid in pids {
        if done.load(Ordering::Relaxed) {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            refused = true;
            break;
        }
        let openers = openers && pid != me;
        if scan_process(pid, targets, &index, openers, &mut found).is_err() {
            refused = true;
            uninspected.push(pid);
        }
        if let Stop::AtHolderOf(byte) = stop {
            let met = found
                .first()
                .is_some_and(|hs| hs.iter().any(|h| h.pid != me && h.held.covers(byte)));
            if met {
                done.store(true, Ordering::Relaxed);
            }
        }
    }
    Share {
        found,
        refused,
        uninspected,
    }
}

/// Which targets a descriptor's `stat` names.
struct Index {
    /// The targets' inodes.
    ids: HashMap<FileId, usize>,
    /// The block devices the targets that are device nodes name (`st_rdev`),
    /// when openers are looked for: another node of one of them is an
    /// opener of each of those targets.
    devices: HashMap<u64, Vec<usize>>,
}

/// A descriptor of a target holding none of its bytes: an opener, unless
/// the process holds bytes of that target on another descriptor.
struct Unlocked {
    target: usize,
    fd: i32,
    access: Access,
    /// Through another node of the block device: its identity and what the
    /// descriptor holds there.
    node: Option<(FileId, Held)>,
}

/// Err(()) when the process (or one of its descriptors) could not be
/// inspected; a process that is gone is no error.
fn scan_process(
    pid: i32,
    targets: &[Target],
    index: &Index,
    openers: bool,
    found: &mut [Vec<Holder>],
) -> Result<(), ()> {
    // The descriptors are stat'ed relative to their folder: one path
    // component to resolve per descriptor instead of four. The folder is
    // listed by std and held open (O_PATH) by a descriptor of our own, so
    // that a process exiting meanwhile can never leak either.
    let folder = format!("/proc/{pid}/fd");
    let dir = match nix::fcntl::open(
        folder.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) | Err(Errno::ESRCH) => return Ok(()),
        Err(_) => return Err(()),
    };
    let fds: Vec<i32> = match fs::read_dir(&folder) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => return Err(()),
    };
    let mut name: Option<String> = None;
    let mut refused = false;
    // Descriptors of a target that hold nothing, and the targets on which
    // this process holds bytes: it is an opener only of the others.
    let mut unlocked: Vec<Unlocked> = Vec::new();
    let mut holds: HashSet<usize> = HashSet::new();
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
        let own = index.ids.get(&id).copied();
        // Another node of a target's block device: a different inode, so
        // none of its locks are the target's. Only openers care, and the
        // stat above already says (st_mode, st_rdev): no extra call.
        let others: &[usize] =
            if !openers || index.devices.is_empty() || !is_block_device(st.st_mode) {
                &[]
            } else {
                index.devices.get(&st.st_rdev).map_or(&[], Vec::as_slice)
            };
        let other_node = others.iter().any(|&j| targets[j].id != id);
        if own.is_none() && !other_node {
            continue;
        }
        let info = match fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            Ok(info) => info,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(_) => {
                refused = true;
                continue;
            }
        };
        let access = fdinfo::access(&info).unwrap_or_default();
        if other_node {
            let node_held = held_on_own_inode(&info, st.st_ino);
            for &target in others.iter().filter(|&&j| targets[j].id != id) {
                unlocked.push(Unlocked {
                    target,
                    fd,
                    access,
                    node: Some((id, node_held)),
                });
            }
        }
        let Some(index) = own else {
            continue;
        };
        let held = held_in(&info, &targets[index]);
        if held.is_empty() {
            if openers {
                unlocked.push(Unlocked {
                    target: index,
                    fd,
                    access,
                    node: None,
                });
            }
            continue;
        }
        holds.insert(index);
        let name = name.get_or_insert_with(|| process_name(pid)).clone();
        found[index].push(Holder {
            pid,
            fd,
            name,
            held,
            access,
            no_locks: false,
            node: None,
            inferred: false,
        });
    }
    for u in unlocked {
        if holds.contains(&u.target) {
            continue;
        }
        // A copy of one of this process's own descriptors (a child it is
        // forking, before its exec closes the copy; a descriptor passed
        // over a socket) is this process's open file description, not
        // another user of the image.
        if u.node.is_none() && shares_our_description(pid, u.fd, targets[u.target].id) {
            continue;
        }
        let name = name.get_or_insert_with(|| process_name(pid)).clone();
        let node = u.node.map(|(id, held)| Node {
            path: fs::read_link(format!("/proc/{pid}/fd/{}", u.fd)).unwrap_or_default(),
            id,
            held,
        });
        found[u.target].push(Holder {
            pid,
            fd: u.fd,
            name,
            held: Held::default(),
            access: u.access,
            no_locks: true,
            node,
            inferred: false,
        });
    }
    if refused {
        Err(())
    } else {
        Ok(())
    }
}

/// Whether descriptor `fd` of process `pid` is the same open file
/// description as one of this process's descriptors of the inode `id`
/// (`kcmp(KCMP_FILE)`). False where kcmp is unavailable (a kernel without
/// CONFIG_CHECKPOINT_RESTORE, a seccomp filter) or not allowed.
fn shares_our_description(pid: i32, fd: i32, id: FileId) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let me = std::process::id() as i32;
    if pid == me {
        return false;
    }
    let Ok(ours) = fs::read_dir("/proc/self/fd") else {
        return false;
    };
    ours.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&own| {
            fs::metadata(format!("/proc/self/fd/{own}")).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev() == id.dev && m.ino() == id.ino
            })
        })
        .any(|own| {
            // SAFETY: kcmp only compares kernel objects; it reads and
            // writes no memory of this process.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    libc::c_long::from(me),
                    libc::c_long::from(pid),
                    KCMP_FILE,
                    libc::c_long::from(own),
                    libc::c_long::from(fd),
                )
            };
            rc == 0
        })
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

/// The protocol bytes a descriptor's fdinfo shows held on its own inode
/// `ino`. An fdinfo lists only the locks of its own open file description,
/// all on that description's inode, so the inode number suffices (the
/// device in lock lines is the file system's, not always `st_dev`).
fn held_on_own_inode(fdinfo: &str, ino: u64) -> Held {
    let mut held = Held::default();
    for line in lock_lines(fdinfo) {
        if line.class != LockClass::Other && line.ino == ino {
            held.add_range(line.first, line.last);
        }
    }
    held
}

/// Whether a `stat` mode is a block device's.
fn is_block_device(mode: libc::mode_t) -> bool {
    mode & libc::S_IFMT == libc::S_IFBLK
}

/// `/proc/PID/comm` without its newline, or "" if unreadable. The kernel
/// cuts names at 15 bytes, possibly inside a UTF-8 character: such a name
/// (or any that is not UTF-8) is shown with U+FFFD in place of the broken
/// bytes, never dropped.
pub fn process_name(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/comm"))
        .map(|bytes| {
            let name = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            String::from_utf8_lossy(name).into_owned()
        })
        .unwrap_or_default()
}

/// An image some process on this host holds protocol bytes of, found by
/// [`images_in_use`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// A name of it: the holder's `/proc/PID/fd/FD` link when that names
    /// the same inode here, else the `/proc/PID/fd/FD` path itself (a
    /// process in another mount namespace, a deleted file), which opens
    /// the same inode.
    pub path: PathBuf,
    /// Its `stat` identity.
    pub id: FileId,
}

/// Every image on this host whose protocol bytes (0, 100-104, 200-204) some
/// process holds with a POSIX or OFD lock, each once, in the order first
/// met walking `/proc` by pid: `/proc/locks` says which inodes have such
/// locks (it names no OFD holder), then one walk of `/proc/PID/fd` finds a
/// descriptor of each, for its name. What it cannot find: locks the kernel
/// does not record (a FUSE file system that locks on its server), locks of
/// processes this one may not inspect (their inodes are known, their names
/// not: they are left out), and images used without locks.
pub fn images_in_use() -> Vec<InUse> {
    let text = fs::read_to_string("/proc/locks").unwrap_or_default();
    // (lock lines' device, inode) of every protocol lock.
    let mut locked: HashSet<(u32, u32, u64)> = HashSet::new();
    for line in text.lines() {
        let Some(l) = fdinfo::parse_lock_line(line) else {
            continue;
        };
        let protocol = |first: u64, last: u64| l.first <= last && l.last.is_none_or(|e| e >= first);
        if l.class != LockClass::Other
            && (protocol(0, 0) || protocol(100, 104) || protocol(200, 204))
        {
            locked.insert((l.major, l.minor, l.ino));
        }
    }
    if locked.is_empty() {
        return Vec::new();
    }
    let inodes: HashSet<u64> = locked.iter().map(|&(_, _, ino)| ino).collect();
    let mounts = Mounts::read();
    let mut found: Vec<InUse> = Vec::new();
    let mut seen: HashSet<(u32, u32, u64)> = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    let mut pids: Vec<i32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let folder = format!("/proc/{pid}/fd");
        let Ok(dir) = nix::fcntl::open(
            folder.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for fd in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(st) = fstatat(dir.as_fd(), fd.to_string().as_str(), AtFlags::empty()) else {
                continue;
            };
            let kind = st.st_mode & libc::S_IFMT;
            if !inodes.contains(&st.st_ino) || (kind != libc::S_IFREG && kind != libc::S_IFBLK) {
                continue;
            }
            let id = FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            };
            // The lock lines' device: the stat device, or (btrfs) that of
            // the mount the descriptor is on.
            let target = mounts.target_on(id, || fdinfo_mount_id(pid, fd));
            let key = (target.major, target.minor, id.ino);
            if !locked.contains(&key) || !seen.insert(key) {
                continue;
            }
            let link = format!("/proc/{pid}/fd/{fd}");
            let named = fs::read_link(&link)
                .ok()
                .filter(|p| {
                    fs::metadata(p).is_ok_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.dev() == id.dev && m.ino() == id.ino
                    })
                })
                .unwrap_or_else(|| PathBuf::from(&link));
            found.push(InUse { path: named, id });
        }
    }
    found
}
