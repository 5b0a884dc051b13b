//! Section 7: whole images, as [`fpl::ChainLock`] and [`fpl::chain`] see
//! them.
//!
//! - Lock syscalls of a 3-file chain (`base.raw <- mid.qcow2 <- top.qcow2`,
//!   made with qemu-img) acquired and released with `ChainLock` and with
//!   `FPL_FLAG_CHAIN`, against what `qemu-io` spends opening and closing the
//!   same chain, member by member.
//! - "Who uses this base image?" over a pool of qcow2 overlays on shared raw
//!   bases, some held by holder processes: every chain resolved, then one
//!   `query_many` over the distinct members, holders named; the walks of
//!   `/proc` counted under strace.
//! - How resolve and `ChainLock` grow with the chain's depth, and the pool
//!   answer with the pool's size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fpl::chain::Member;
use fpl::{ChainLock, FileId, Lock, Mode, Options};

use crate::{
    count_host_fds, micros, millis, need, plot, qemu_trace, ratio, request, spawn_ready,
    time_per_call, Bench, Kids,
};

/// How many raw bases the pool's overlays share.
const BASES: usize = 10;

/// Overlays held per holder process.
const PER_HOLDER: usize = 50;

pub(crate) fn chain(b: &mut Bench) {
    need("strace", "strace");
    need("qemu-img", "qemu-utils");
    need("qemu-io", "qemu-utils");
    b.say("## 7. Whole images (backing chains)\n");
    syscalls(b);
    let pool = Pool::make(b, if b.quick { 1000 } else { 10_000 });
    let _holders = pool.hold();
    who_uses(b, &pool);
    growth(b, &pool);
}

// ------------------------------------------------------- 7.1 syscalls

/// `ChainLock::acquire` + `release`, for `--one chain`.
pub(crate) fn acquire_release(path: &Path, mode: Mode) {
    ChainLock::acquire(path, request(mode), Options::default())
        .and_then(ChainLock::release)
        .expect("chain acquire + release");
}

/// The same through the C ABI: `fpl_acquire` with `FPL_FLAG_CHAIN`, then
/// `fpl_release`, for `--one chain-c`.
pub(crate) fn acquire_release_c(path: &Path, mode: Mode) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    let mut lock = std::ptr::null_mut();
    // SAFETY: valid pointers; NULL err is allowed.
    let rc = unsafe {
        fpl::ffi::fpl_acquire(
            c_path.as_ptr(),
            mode.perm().bits(),
            mode.shared().bits(),
            fpl::ffi::FPL_FLAG_CHAIN,
            &mut lock,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "fpl_acquire with FPL_FLAG_CHAIN");
    // SAFETY: a live handle, released once.
    assert_eq!(unsafe { fpl::ffi::fpl_release(lock) }, 0, "fpl_release");
}

/// QEMU's lock calls on one file, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    /// F_OFD_SETLK taking bytes.
    lock: usize,
    /// F_OFD_GETLK over protocol bytes.
    test: usize,
    /// F_OFD_SETLK with F_UNLCK.
    unlock: usize,
    /// F_OFD_GETLK over the whole file: QEMU's OFD probe on /dev/null.
    probe: usize,
}

impl Tally {
    fn total(self) -> usize {
        self.lock + self.test + self.unlock + self.probe
    }
}

/// The file strace's `-y` names in `fd</path>`, by its last component.
fn file_of(line: &str) -> String {
    let file = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or("?", |(name, _)| name);
    Path::new(file)
        .file_name()
        .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned())
}

fn is_unlock(line: &str) -> bool {
    line.contains("l_type=F_UNLCK") && (line.contains("F_OFD_SETLK,") || line.contains("F_SETLK,"))
}

fn is_setlk(line: &str) -> bool {
    line.contains("F_OFD_SETLK,") || line.contains("F_SETLK,")
}

/// Splits QEMU's lock calls per file and kind (QEMU reads headers on the
/// descriptors it locks, so only the call itself tells them apart).
fn tally(lines: &[String]) -> BTreeMap<String, Tally> {
    let mut out: BTreeMap<String, Tally> = BTreeMap::new();
    for line in lines.iter().filter(|l| crate::is_lock_call(l)) {
        let t = out.entry(file_of(line)).or_default();
        if is_unlock(line) {
            t.unlock += 1;
        } else if is_setlk(line) {
            t.lock += 1;
        } else if line.contains("/dev/null>") {
            t.probe += 1;
        } else {
            t.test += 1;
        }
    }
    out
}

/// libfpl's lock calls on one member, by the step that made them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Steps {
    /// `Lock::acquire`: F_OFD_SETLK per run of bytes.
    lock: usize,
    /// `Lock::acquire`: F_OFD_GETLK over the tested bytes.
    test: usize,
    /// `Lock::release`: one F_UNLCK over the held span.
    unlock: usize,
    /// `Lock::release`: the F_OFD_GETLK over the whole file before close
    /// (no POSIX lock of the caller's may be dropped).
    close_test: usize,
    /// The first `chain::resolve`, before anything is locked: the same test
    /// before closing the descriptor the header was read from.
    resolve: usize,
    /// The second `chain::resolve`, with the chain held (is it still the
    /// same chain?): the test before close now finds libfpl's own locks and
    /// steps around each of them.
    recheck: usize,
}

impl Steps {
    fn total(self) -> usize {
        self.lock + self.test + self.unlock + self.close_test + self.resolve + self.recheck
    }
}

/// Splits libfpl's calls per member and step, following each descriptor:
/// one a header was read from (`pread64`) is resolve's until a lock is
/// taken on it (the chain lock locks the descriptors resolve read); the
/// others are the members' `Lock`s. Needs `openat`, `pread64` and `fcntl` in the trace.
fn steps(lines: &[String]) -> BTreeMap<String, Steps> {
    #[derive(Clone, Copy, PartialEq)]
    enum Fd {
        Fresh,
        Header,
        Locked,
        Released,
    }
    let fd_of = |line: &str| -> Option<i32> {
        let args = line.split_once('(')?.1;
        args.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut state: HashMap<i32, Fd> = HashMap::new();
    let mut locked_any = false;
    let mut out: BTreeMap<String, Steps> = BTreeMap::new();
    for line in lines {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        if call.starts_with("openat(") {
            let returned = line
                .rsplit_once("= ")
                .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
            if let Some(fd) = returned {
                state.insert(fd, Fd::Fresh);
            }
            continue;
        }
        let Some(fd) = fd_of(call) else { continue };
        if call.starts_with("pread64(") {
            // A header read on a descriptor a member's lock already uses
            // (the chain lock re-reads through it) leaves it the lock's.
            let st = state.entry(fd).or_insert(Fd::Fresh);
            if *st == Fd::Fresh {
                *st = Fd::Header;
            }
            continue;
        }
        if !crate::is_lock_call(line) {
            continue;
        }
        let s = out.entry(file_of(line)).or_default();
        let st = state.entry(fd).or_insert(Fd::Fresh);
        match *st {
            // The chain lock locks the descriptor resolve read from.
            Fd::Header if is_setlk(line) => {
                s.lock += 1;
                locked_any = true;
                *st = Fd::Locked;
            }
            Fd::Header if locked_any => s.recheck += 1,
            Fd::Header => s.resolve += 1,
            _ if is_unlock(line) => {
                s.unlock += 1;
                *st = Fd::Released;
            }
            _ if is_setlk(line) => {
                s.lock += 1;
                locked_any = true;
                *st = Fd::Locked;
            }
            Fd::Released => s.close_test += 1,
            Fd::Fresh | Fd::Locked => s.test += 1,
        }
    }
    out
}

/// The calls of one steady-state `--one WHAT MODE IMAGE` (between its
/// markers), with the descriptors' opens and header reads.
fn our_full_trace(b: &Bench, what: &str, mode: Mode, image: &Path) -> Vec<String> {
    let log = b.dir.join("strace-chain.log");
    let me = std::env::current_exe().expect("own path");
    let status = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fcntl,getppid,openat,pread64",
            "-o",
        ])
        .arg(&log)
        .arg(&me)
        .args(["--one", what, mode.name()])
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace runs (install strace)");
    assert!(status.success(), "strace --one {what}");
    let lines: Vec<String> = fs::read_to_string(&log)
        .expect("strace log")
        .lines()
        .map(str::to_owned)
        .collect();
    let marks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("getppid("))
        .map(|(i, _)| i)
        .collect();
    assert!(marks.len() >= 2, "no markers in the trace");
    lines[marks[0]..marks[1]].to_vec()
}

fn qemu_img(dir: &Path, args: &[&str]) {
    let ok = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .status()
        .expect("qemu-img runs (install qemu-utils)");
    assert!(ok.success(), "qemu-img {args:?}");
}

fn syscalls(b: &mut Bench) {
    b.say("### 7.1 Lock syscalls of a chain's acquire + release\n");
    let dir = b.dir.join("chain3");
    fs::create_dir_all(&dir).expect("chain dir");
    qemu_img(&dir, &["create", "-q", "-f", "raw", "base.raw", "16M"]);
    qemu_img(
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_img(
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    let top = dir.join("top.qcow2");
    let qemu_io = PathBuf::from("/usr/bin/qemu-io");
    b.say(format!(
        "Chain `base.raw <- mid.qcow2 <- top.qcow2` (qemu-img create). Counted with `strace -f -y -e trace=fcntl` as in section 1: libfpl's steady state (a warm-up first, so its one-time OFD probe is not counted) against `{}` opening and closing `top.qcow2` (its count includes its OFD probe on /dev/null). Target (issue 11): at most half of qemu-io's count.\n",
        qemu_io.display()
    ));
    let cases: [(Mode, &[&str]); 4] = [
        (Mode::ReadShared, &["-r", "-U"]),
        (Mode::Read, &["-r"]),
        (Mode::Write, &[]),
        (Mode::Exclusive, &[]),
    ];
    b.say("| preset | `ChainLock` | C `FPL_FLAG_CHAIN` | QEMU access | QEMU 10.0 | ratio | at most half? |");
    b.say("|---|---|---|---|---|---|---|");
    let mut details = Vec::new();
    for (mode, args) in cases {
        let trace = our_full_trace(b, "chain", mode, &top);
        let ours = steps(&trace);
        let count: usize = ours.values().map(|s| s.total()).sum();
        let lock_calls = trace.iter().filter(|l| crate::is_lock_call(l)).count();
        assert_eq!(count, lock_calls, "every lock call is put down to a step");
        let c = crate::our_calls(b, "chain-c", mode, &top);
        let theirs = qemu_trace(b, &qemu_io, args, &top);
        assert!(count > 0 && !theirs.is_empty(), "no lock calls seen");
        let access = if args.is_empty() {
            "`qemu-io` (read-write)".to_owned()
        } else {
            format!("`qemu-io {}`", args.join(" "))
        };
        let ok = 2 * count <= theirs.len();
        b.say(format!(
            "| {} | {count} | {c} | {access} | {} | {:.2} | {} |",
            mode.name(),
            theirs.len(),
            count as f64 / theirs.len() as f64,
            if ok {
                "yes".to_owned()
            } else {
                format!("**no** (half is {})", theirs.len() / 2)
            }
        ));
        details.push((mode, ours, tally(&theirs), ok));
    }
    b.say("\nWhere the calls go, per member. libfpl (`ChainLock`): **lock** and **test** are the member's `Lock::acquire` (F_OFD_SETLK per run of bytes, F_OFD_GETLK over the tested bytes), **unlock** and **close** its release (one F_UNLCK, then the F_OFD_GETLK over the whole file before close), **resolve** and **recheck** any lock call on a descriptor only resolution used (none since the chain lock locks the very descriptors resolution read the headers from, and re-reads them through those descriptors to see that nothing changed). qemu-io: lock / test / unlock, and its OFD probe on /dev/null.\n");
    b.say("| preset | file | lock | test | unlock | close | resolve | recheck | libfpl | qemu-io lock / test / unlock / probe | qemu-io |");
    b.say("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, ours, theirs, ok) in &details {
        // QEMU's probe first, then the members in the order both open them.
        let order = ["null", "top.qcow2", "mid.qcow2", "base.raw"];
        let mut files: Vec<&String> = theirs.keys().chain(ours.keys()).collect();
        let rank = |f: &str| order.iter().position(|o| *o == f).unwrap_or(order.len());
        files.sort_by(|x, y| (rank(x), x).cmp(&(rank(y), y)));
        files.dedup();
        let mut sum = Steps::default();
        let mut qsum = Tally::default();
        for f in files {
            let o = ours.get(f).copied().unwrap_or_default();
            let q = theirs.get(f).copied().unwrap_or_default();
            b.say(format!(
                "| {} | {f} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} |",
                mode.name(),
                o.lock,
                o.test,
                o.unlock,
                o.close_test,
                o.resolve,
                o.recheck,
                o.total(),
                q.lock,
                q.test,
                q.unlock,
                q.probe,
                q.total()
            ));
            sum = Steps {
                lock: sum.lock + o.lock,
                test: sum.test + o.test,
                unlock: sum.unlock + o.unlock,
                close_test: sum.close_test + o.close_test,
                resolve: sum.resolve + o.resolve,
                recheck: sum.recheck + o.recheck,
            };
            qsum = Tally {
                lock: qsum.lock + q.lock,
                test: qsum.test + q.test,
                unlock: qsum.unlock + q.unlock,
                probe: qsum.probe + q.probe,
            };
        }
        b.say(format!(
            "| **{}**{} | all | {} | {} | {} | {} | {} | {} | **{}** | {} / {} / {} / {} | **{}** |",
            mode.name(),
            if *ok { "" } else { " (target missed)" },
            sum.lock,
            sum.test,
            sum.unlock,
            sum.close_test,
            sum.resolve,
            sum.recheck,
            sum.total(),
            qsum.lock,
            qsum.test,
            qsum.unlock,
            qsum.probe,
            qsum.total()
        ));
    }
    b.say("");
}

// ----------------------------------------------------------- 7.2 pool

/// A pool of qcow2 overlays `ovl{i}.qcow2`, overlay `i` on base
/// `base{i % BASES}.raw`; overlays whose `(i / BASES) % 10 == 0` are held
/// (one in ten, on every base alike, so any prefix of the pool has the
/// same share held).
struct Pool {
    dir: PathBuf,
    bases: Vec<PathBuf>,
    overlays: Vec<PathBuf>,
}

fn is_held(i: usize) -> bool {
    (i / BASES) % 10 == 0
}

/// Writes `bytes` to `path` leaving its zero blocks as holes: an empty
/// qcow2 file is 192 KiB of mostly zeros, and 10,000 full copies would
/// write 2 GB for nothing.
fn sparse_copy(chunks: &[(u64, &[u8])], len: u64, path: &Path) {
    let f = fs::File::create(path).expect("create an overlay");
    for (at, data) in chunks {
        f.write_all_at(data, *at).expect("write an overlay");
    }
    f.set_len(len).expect("size an overlay");
}

impl Pool {
    fn make(b: &Bench, overlays: usize) -> Pool {
        let start = Instant::now();
        let dir = b.dir.join("chain-pool");
        fs::create_dir_all(&dir).expect("pool dir");
        let bases: Vec<PathBuf> = (0..BASES)
            .map(|j| {
                let name = format!("base{j}.raw");
                crate::make_image(&dir.join(&name));
                dir.join(name)
            })
            .collect();
        // One overlay per base made by qemu-img (the backing name, relative,
        // is in its header), copied for the others.
        let templates: Vec<Vec<u8>> = (0..BASES)
            .map(|j| {
                let name = format!("template{j}.qcow2");
                let base = format!("base{j}.raw");
                qemu_img(
                    &dir,
                    &[
                        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "raw", &name,
                    ],
                );
                let bytes = fs::read(dir.join(&name)).expect("read the template");
                fs::remove_file(dir.join(&name)).expect("remove the template");
                bytes
            })
            .collect();
        let chunks: Vec<Vec<(u64, &[u8])>> = templates
            .iter()
            .map(|t| {
                t.chunks(4096)
                    .enumerate()
                    .filter(|(_, c)| c.iter().any(|&x| x != 0))
                    .map(|(k, c)| ((k * 4096) as u64, c))
                    .collect()
            })
            .collect();
        let overlays: Vec<PathBuf> = (0..overlays)
            .map(|i| {
                let p = dir.join(format!("ovl{i}.qcow2"));
                let j = i % BASES;
                sparse_copy(&chunks[j], templates[j].len() as u64, &p);
                p
            })
            .collect();
        // Written back before anything is timed: writeback of 10,000 fresh
        // files would otherwise land in the first measurements.
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        println!(
            "(pool of {} overlays made in {})",
            overlays.len(),
            millis(start.elapsed())
        );
        Pool {
            dir,
            bases,
            overlays,
        }
    }

    /// Every chain's files, overlay then base, for the first `n` overlays.
    fn chain_files(&self, n: usize) -> Vec<PathBuf> {
        self.overlays[..n]
            .iter()
            .enumerate()
            .flat_map(|(i, o)| [o.clone(), self.bases[i % BASES].clone()])
            .collect()
    }

    fn held(&self) -> Vec<&PathBuf> {
        self.overlays
            .iter()
            .enumerate()
            .filter(|(i, _)| is_held(*i))
            .map(|(_, p)| p)
            .collect()
    }

    /// Holder processes, [`PER_HOLDER`] chains each, holding the write
    /// preset on every held overlay's chain with `ChainLock`: the overlay
    /// RWX, its base 100, 201 and 203, as a VM's disk.
    fn hold(&self) -> Kids {
        let me = std::env::current_exe().expect("own path");
        let held = self.held();
        let kids = Kids(
            held.chunks(PER_HOLDER)
                .map(|part| spawn_ready(Command::new(&me).arg("--hold-chains").args(part)))
                .collect(),
        );
        kids
    }
}

/// `--hold-chains PATH...`: a holder process, until its stdin closes.
pub(crate) fn hold_chains(paths: &[String]) {
    let locks: Vec<ChainLock> = paths
        .iter()
        .map(|p| {
            ChainLock::acquire(Path::new(p), request(Mode::Write), Options::default())
                .expect("a holder locks its chain")
        })
        .collect();
    println!("ready {}", locks.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// What one "who uses it?" pass found.
struct Answer {
    /// The distinct local members (by inode), each once.
    members: Vec<PathBuf>,
    /// For each of `members`, its status with holders.
    statuses: Vec<fpl::Result<fpl::Status>>,
    /// For each member, the overlays whose chain has it.
    users: Vec<Vec<usize>>,
    resolve: Duration,
    query: Duration,
}

/// Resolves every overlay's chain, then queries all distinct members at
/// once: `query_many` walks `/proc` once for all the held ones.
fn answer(overlays: &[PathBuf]) -> Answer {
    let start = Instant::now();
    let mut index: HashMap<FileId, usize> = HashMap::new();
    let mut members = Vec::new();
    let mut users: Vec<Vec<usize>> = Vec::new();
    for (i, o) in overlays.iter().enumerate() {
        let chain: Vec<Member> =
            fpl::chain::resolve(o, request(Mode::ReadShared)).expect("resolve an overlay");
        for m in chain {
            let Some(file) = m.file else { continue };
            let k = *index.entry(file).or_insert_with(|| {
                members.push(m.path.clone());
                users.push(Vec::new());
                members.len() - 1
            });
            users[k].push(i);
        }
    }
    let resolve = start.elapsed();
    let start = Instant::now();
    let statuses = fpl::query::query_many(&members, true);
    let query = start.elapsed();
    Answer {
        members,
        statuses,
        users,
        resolve,
        query,
    }
}

/// `--who-uses DIR COUNT`: one [`answer`] over the pool's first COUNT
/// overlays, for strace to count the walks of `/proc`.
pub(crate) fn who_uses_once(args: &[String]) {
    let dir = Path::new(&args[0]);
    let count: usize = args[1].parse().expect("count");
    let overlays: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("ovl{i}.qcow2")))
        .collect();
    let a = answer(&overlays);
    println!("members {}", a.members.len());
}

/// What one `--who-uses` run opened of `/proc`, under strace.
struct Walks {
    /// Opens of `/proc` itself (listing the processes).
    procs: usize,
    /// Processes whose `/proc/PID/fd` was opened.
    pids: usize,
    /// The most opens of one process's `/proc/PID/fd` (a walk opens it
    /// twice: `O_PATH` to stat its entries relative to it, and to list it).
    most_per_pid: usize,
}

fn count_walks(b: &Bench, dir: &Path, count: usize) -> Walks {
    let log = b.dir.join("walks.log");
    let me = std::env::current_exe().expect("own path");
    let status = Command::new("strace")
        .args(["-f", "-qq", "--seccomp-bpf", "-e", "trace=openat", "-o"])
        .arg(&log)
        .arg(&me)
        .arg("--who-uses")
        .arg(dir)
        .arg(count.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("strace runs");
    assert!(status.success(), "strace --who-uses");
    let text = fs::read_to_string(&log).expect("strace log");
    let mut procs = 0;
    let mut per_pid: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let Some(name) = line.split('"').nth(1) else {
            continue;
        };
        if name == "/proc" {
            procs += 1;
        } else if let Some(pid) = name
            .strip_prefix("/proc/")
            .and_then(|r| r.strip_suffix("/fd"))
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
        {
            *per_pid.entry(pid.to_owned()).or_default() += 1;
        }
    }
    Walks {
        procs,
        pids: per_pid.len(),
        most_per_pid: per_pid.values().copied().max().unwrap_or(0),
    }
}

fn who_uses(b: &mut Bench, pool: &Pool) {
    b.say("### 7.2 Who uses this base image? A pool of overlays\n");
    let n = pool.overlays.len();
    let held = pool.held().len();
    let holders = held.div_ceil(PER_HOLDER);
    // A warm-up pass (checked below), then the best of three.
    let a = answer(&pool.overlays);
    let (mut resolve, mut query) = (Duration::MAX / 4, Duration::MAX / 4);
    for _ in 0..3 {
        let again = answer(&pool.overlays);
        if again.resolve + again.query < resolve + query {
            (resolve, query) = (again.resolve, again.query);
        }
    }
    let mut floor = HeaderFloor::new(pool.chain_files(n).iter());
    floor.read_all();
    let header_floor = time_per_call(3, 1, || floor.read_all());
    // What reading less would leave: the same files, 4 KiB each (a
    // qemu-img-made header and its backing name fit in it).
    let mut small = HeaderFloor::reading(pool.chain_files(n).iter(), 4096);
    let small_floor = time_per_call(3, 1, || small.read_all());
    let total = resolve + query;
    // Every holder named: each held overlay by exactly one process, each
    // base by one descriptor per held chain on it.
    let mut named_overlays = 0;
    let mut base_lines = Vec::new();
    for (k, (path, status)) in a.members.iter().zip(&a.statuses).enumerate() {
        let status = status.as_ref().expect("query a member");
        if let Some(j) = pool.bases.iter().position(|p| p == path) {
            let in_use = a.users[k].iter().filter(|&&i| is_held(i)).count();
            let pids: HashSet<i32> = status.holders.iter().map(|h| h.pid).collect();
            assert_eq!(
                status.holders.len(),
                in_use,
                "base{j}.raw: one holder descriptor per held chain on it"
            );
            base_lines.push((j, a.users[k].len(), in_use, pids.len()));
        } else {
            let i = a.users[k][0];
            if is_held(i) {
                assert_eq!(
                    status.holders.len(),
                    1,
                    "{} has its holder named",
                    path.display()
                );
                named_overlays += 1;
            } else {
                assert!(status.held.is_empty(), "{} is free", path.display());
            }
        }
    }
    assert_eq!(
        named_overlays, held,
        "every held overlay has its holder named"
    );
    let walks = count_walks(b, &pool.dir, n);
    assert_eq!(walks.procs, 1, "one walk of /proc");
    assert!(walks.most_per_pid <= 2, "each process visited once");
    b.say(format!(
        "{n} qcow2 overlays on {BASES} raw bases (one overlay per base made by qemu-img, copied for the rest), {held} of them held by {holders} holder processes (`ChainLock`, write preset, {PER_HOLDER} chains each: the overlay RWX, its base 100, 201, 203). Host: {} descriptors. Every chain resolved with `fpl::chain::resolve`, then one `fpl::query::query_many` with holders over the {} distinct members (by inode). A warm-up pass, then the best of 3.\n",
        count_host_fds(),
        a.members.len()
    ));
    b.say("| step | time |");
    b.say("|---|---|");
    b.say(format!(
        "| resolve {n} chains | {} ({} per chain) |",
        millis(resolve),
        micros(resolve / n as u32)
    ));
    b.say(format!(
        "| (baseline: the {} headers read by hand, open + `pread` + close) | {} (resolve / this: {:.2}) |",
        2 * n,
        millis(header_floor),
        ratio(resolve, header_floor)
    ));
    b.say(format!(
        "| (the same floor reading 4 KiB per header) | {} (64 KiB / 4 KiB: {:.2}) |",
        millis(small_floor),
        ratio(header_floor, small_floor)
    ));
    b.say(format!(
        "| `query_many` over {} members, holders named | {} |",
        a.members.len(),
        millis(query)
    ));
    b.say(format!(
        "| **total** (target: under 1 s) | **{}** ({}) |",
        millis(total),
        if total < Duration::from_secs(1) {
            "met"
        } else {
            "**missed**"
        }
    ));
    b.say(format!(
        "\nHolders named: all {held} held overlays (one process each); every base names one descriptor per held chain on it, for example base0.raw: {} overlays, {} in use, by {} processes. Walks of /proc counted with `strace -f -e trace=openat` over the same pass (a child doing one resolve-all + `query_many`): `/proc` listed {} time; the `/proc/PID/fd` of {} processes opened, each at most {} times (one walk opens it `O_PATH` and lists it): **one walk**.\n",
        base_lines.first().map_or(0, |l| l.1),
        base_lines.first().map_or(0, |l| l.2),
        base_lines.first().map_or(0, |l| l.3),
        walks.procs,
        walks.pids,
        walks.most_per_pid,
    ));
    cli(b, pool);
}

/// `fpl status --chain` over the pool, if the CLI has it: this build's
/// `fpl`, or the one `FPL_BENCH_CLI` names (another branch's build).
fn cli(b: &mut Bench, pool: &Pool) {
    let other = std::env::var_os("FPL_BENCH_CLI").map(PathBuf::from);
    let fpl = other
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fpl")));
    let which = match &other {
        Some(p) => format!("`{}` (from FPL_BENCH_CLI)", p.display()),
        None => "this build of the CLI".to_owned(),
    };
    let help = crate::run_out(Command::new(&fpl).args(["status", "--help"]));
    if !help.contains("--chain") {
        b.say(format!("`fpl status --chain`: not in {which} (`fpl status --help` has no `--chain`), so not timed.\n"));
        return;
    }
    b.say("| `fpl status --chain --json` (spawned) | time | JSON written |");
    b.say("|---|---|---|");
    let mut sizes = vec![pool.overlays.len().min(1000), pool.overlays.len()];
    sizes.dedup();
    for n in sizes {
        let row = match status_chain(&fpl, &pool.overlays[..n]) {
            Timed::Done(t, bytes) => format!(
                "| {n} overlays | {} | {:.1} MB |",
                millis(t),
                bytes as f64 / 1e6
            ),
            Timed::Failed(why) => format!("| {n} overlays | failed: {why} | |"),
            Timed::Killed(bytes) => format!(
                "| {n} overlays | **over {} s** (killed) | {:.1} MB by then |",
                CLI_BUDGET.as_secs(),
                bytes as f64 / 1e6
            ),
        };
        b.say(row);
    }
    b.say(format!("\n({which}; with the holders above.)\n"));
}

/// How long one `fpl status --chain` may run before it is killed: the
/// machine is shared, and the answer "more than this" is enough.
const CLI_BUDGET: Duration = Duration::from_secs(120);

enum Timed {
    /// Its time and how many bytes it wrote.
    Done(Duration, u64),
    Failed(String),
    /// Killed at [`CLI_BUDGET`], after writing this many bytes.
    Killed(u64),
}

/// Runs `fpl status --chain --json` over `images`; its output is counted
/// (on a thread), not kept: a pool view can be large.
fn status_chain(fpl: &Path, images: &[PathBuf]) -> Timed {
    let start = Instant::now();
    let mut child = Command::new(fpl)
        .args(["status", "--chain", "--json"])
        .args(images)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fpl status --chain");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let counter =
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()).unwrap_or(0));
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
        text
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < CLI_BUDGET => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let t = start.elapsed();
    let bytes = counter.join().unwrap_or(0);
    let errors = errors.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Timed::Done(t, bytes),
        Some(s) => Timed::Failed(format!("{s}: {}", first_line_of(&errors))),
        None => Timed::Killed(bytes),
    }
}

fn first_line_of(bytes: &[u8]) -> String {
    crate::first_line(&String::from_utf8_lossy(bytes))
}

// --------------------------------------------------------- 7.3 growth

/// The floor for resolution: each member's header read by hand (open for
/// reading, one `pread` of the [`fpl::qcow2::PREFIX_LEN`] bytes resolve
/// reads, close), the files known in advance: no `O_PATH` open and
/// reopen, no `fstat`, no test before close, no parsing.
struct HeaderFloor {
    paths: Vec<CString>,
    buf: Vec<u8>,
}

impl HeaderFloor {
    fn new<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> HeaderFloor {
        HeaderFloor::reading(paths, fpl::qcow2::PREFIX_LEN)
    }

    /// The floor with reads of `len` bytes instead.
    fn reading<'a>(paths: impl IntoIterator<Item = &'a PathBuf>, len: usize) -> HeaderFloor {
        HeaderFloor {
            paths: paths
                .into_iter()
                .map(|p| CString::new(p.as_os_str().as_bytes()).expect("no NUL"))
                .collect(),
            buf: vec![0; len],
        }
    }

    fn read_all(&mut self) {
        for p in &self.paths {
            // SAFETY: a valid C string, a buffer of the length passed, and
            // a descriptor closed once; results are checked.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                assert!(fd >= 0, "open a member");
                let n = libc::pread(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0);
                assert!(n > 0, "read a header");
                libc::close(fd);
            }
        }
    }
}

/// `l0.raw <- l1.qcow2 <- ... <- l{depth}.qcow2`, made with `qemu-img
/// create -u` (no open of the chain below: each level costs one spawn).
fn deep_chain(b: &Bench, depth: usize) -> Vec<PathBuf> {
    let dir = b.dir.join("chain-deep");
    fs::create_dir_all(&dir).expect("deep chain dir");
    crate::make_image(&dir.join("l0.raw"));
    let mut files = vec![dir.join("l0.raw")];
    for k in 1..=depth {
        let below = format!("l{}.{}", k - 1, if k == 1 { "raw" } else { "qcow2" });
        let fmt = if k == 1 { "raw" } else { "qcow2" };
        let name = format!("l{k}.qcow2");
        qemu_img(
            &dir,
            &[
                "create", "-q", "-u", "-f", "qcow2", "-b", &below, "-F", fmt, &name, "1M",
            ],
        );
        files.push(dir.join(name));
    }
    files
}

fn growth(b: &mut Bench, pool: &Pool) {
    b.say("### 7.3 How the cost grows\n");
    let depths: Vec<usize> = if b.quick {
        vec![1, 2, 5, 10]
    } else {
        vec![1, 2, 5, 10, 50, 200]
    };
    let deepest = *depths.last().unwrap_or(&1);
    let files = deep_chain(b, deepest);
    let rounds = if b.quick { 2 } else { 5 };
    // The baseline: one file's Lock, write preset, in this process.
    let single = time_per_call(rounds, if b.quick { 200 } else { 3000 }, || {
        Lock::acquire(&files[1], request(Mode::Write), Options::default())
            .and_then(Lock::release)
            .expect("acquire");
    });
    b.say(format!(
        "Chain depth: `l0.raw <- l1.qcow2 <- ... <- lN.qcow2` (N backing files below the image, N + 1 members); resolve (`fpl::chain::resolve`) and `ChainLock` acquire + release (write preset), best of {rounds} blocks, per call. Baselines in the same process: one file's `Lock` acquire + release (write preset) {}, and the header floor (each member's header read by hand: open, one `pread` of the {} KiB resolve reads, close; files known in advance).\n",
        micros(single),
        fpl::qcow2::PREFIX_LEN / 1024
    ));
    b.say("| backing files | members | resolve | per member | / header floor | `ChainLock` acquire + release | per member | / (members x one `Lock`) | / (2 resolves + members x one `Lock`) |");
    b.say("|---|---|---|---|---|---|---|---|---|");
    let mut by_depth = Vec::new();
    for &d in &depths {
        let top = &files[d];
        let members = d + 1;
        let n = (if b.quick { 200 } else { 4000 } / members).max(3);
        let got = fpl::chain::resolve(top, request(Mode::Write)).expect("resolve");
        assert_eq!(got.len(), members, "depth {d}: every member found");
        let resolve = time_per_call(rounds, n, || {
            fpl::chain::resolve(top, request(Mode::Write)).expect("resolve");
        });
        let mut floor = HeaderFloor::new(&files[..=d]);
        let header_floor = time_per_call(rounds, n, || floor.read_all());
        let lock = time_per_call(rounds, n, || {
            ChainLock::acquire(top, request(Mode::Write), Options::default())
                .and_then(ChainLock::release)
                .expect("chain acquire + release");
        });
        b.say(format!(
            "| {d} | {members} | {} | {} | {:.2} | {} | {} | {:.2} | {:.2} |",
            micros(resolve),
            micros(resolve / members as u32),
            ratio(resolve, header_floor),
            micros(lock),
            micros(lock / members as u32),
            ratio(lock, single * members as u32),
            ratio(lock, resolve * 2 + single * members as u32)
        ));
        by_depth.push((d as f64, lock.as_secs_f64() * 1e6));
    }
    let sizes: Vec<usize> = if b.quick {
        vec![100, pool.overlays.len()]
    } else {
        vec![100, 1000, 10_000]
    };
    b.say("\nPool size: the first N overlays of the pool above (one in ten held), resolve all + one `query_many` over the distinct members; a warm-up pass, then the best of 3.\n");
    b.say("| overlays | held | distinct members | resolve | / header floor | `query_many` | total | per overlay | total / 100-overlay total |");
    b.say("|---|---|---|---|---|---|---|---|---|");
    let mut by_pool = Vec::new();
    let mut first = None;
    for &n in &sizes {
        let part = &pool.overlays[..n.min(pool.overlays.len())];
        let mut best: Option<Answer> = None;
        answer(part);
        for _ in 0..3 {
            let a = answer(part);
            if best
                .as_ref()
                .is_none_or(|x| a.resolve + a.query < x.resolve + x.query)
            {
                best = Some(a);
            }
        }
        let Some(a) = best else { continue };
        let mut floor = HeaderFloor::new(pool.chain_files(part.len()).iter());
        let header_floor = time_per_call(3, 1, || floor.read_all());
        let total = a.resolve + a.query;
        let base = *first.get_or_insert(total);
        b.say(format!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.1} |",
            part.len(),
            (0..part.len()).filter(|&i| is_held(i)).count(),
            a.members.len(),
            millis(a.resolve),
            ratio(a.resolve, header_floor),
            millis(a.query),
            millis(total),
            micros(total / part.len() as u32),
            ratio(total, base)
        ));
        by_pool.push((part.len() as f64, total.as_secs_f64() * 1e3));
    }
    b.say("\n```");
    bars(
        b,
        "backing files",
        &by_depth,
        "µs ChainLock acquire + release",
    );
    bars(b, "overlays", &by_pool, "ms resolve all + query_many");
    b.say("```");
    let svg = plot(
        (
            &by_depth,
            "backing files (ChainLock acquire + release)",
            "µs",
        ),
        (&by_pool, "overlays (resolve + query_many)", "ms"),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/chain-growth.svg");
    fs::write(&path, svg).expect("write the plot");
    b.say(format!("\nPlot: `{}`\n", path.display()));
}

/// A text bar chart of `data` (x, y), bars proportional to y, for the
/// report itself (the SVG beside it has linear axes, where small x crowd).
fn bars(b: &mut Bench, xlabel: &str, data: &[(f64, f64)], unit: &str) {
    const WIDTH: f64 = 50.0;
    let max = data.iter().map(|p| p.1).fold(1e-12, f64::max);
    b.say(format!("{xlabel:>14} | {unit}"));
    for &(x, y) in data {
        let n = (y / max * WIDTH).round() as usize;
        b.say(format!("{x:>14} | {} {y:.0}", "#".repeat(n.max(1))));
    }
}
