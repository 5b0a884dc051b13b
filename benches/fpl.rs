//! libfpl's benchmark. Every figure is a ratio against a baseline measured
//! in the same run, on the same machine:
//!
//! ```sh
//! cargo bench --bench fpl              # full run (a few minutes), writes target/bench/report.md
//! cargo bench --bench fpl -- --quick   # smoke run for CI (seconds)
//! cargo bench --bench fpl -- --only=holders   # one section
//! cargo bench --bench fpl -- --only=chain     # whole images (section 7)
//! ```
//!
//! 1. lock syscalls per acquire + release, counted with strace, against
//!    QEMU's own count for the same access (`qemu-io` open + close);
//! 2. latency of acquire + release, check and query against a hand-written
//!    minimal fcntl sequence for the same bytes (the floor);
//! 3. check and query against spawning `qemu-img info -U` (what tools do);
//! 4. holder lookup against `lslocks --json` and a naive /proc scan, on a
//!    host prepared with hundreds of processes holding thousands of
//!    descriptors plus real QEMU holders;
//! 5. the status of 10,000 images, 1,000 of them held (by a
//!    qemu-storage-daemon and by libfpl), with holders named, through the
//!    Rust API, the C ABI and `fpl status`; and how that cost grows with
//!    images and with descriptors on the host (plotted as SVG);
//! 6. a refused check on a host with 200,000 open descriptors, with the
//!    holder lookup and without it (`skip_holder_lookup`), against the same
//!    refused check on an idle host;
//! 7. whole images ([`chain`]): lock syscalls of a backing chain's acquire +
//!    release against qemu-io's for the same chain, "who uses this base
//!    image?" over a pool of 10,000 overlays, and how chain costs grow with
//!    depth and pool size.

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fpl::protocol::Request;
use fpl::{Lock, Mode, Options};

#[path = "fpl/chain.rs"]
mod chain;
#[path = "fpl/shared.rs"]
mod shared;

struct Bench {
    quick: bool,
    dir: PathBuf,
    out: String,
}

impl Bench {
    fn say(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }
}

/// Children killed when dropped.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--one") => return one_shot(&args[2], &args[3], Path::new(&args[4])),
        Some("--hold-files") => return hold_files(&args[2..]),
        Some("--hold-images") => return hold_images(&args[2..]),
        Some("--hold-dups") => return hold_dups(&args[2..]),
        Some("--hold-chains") => return chain::hold_chains(&args[2..]),
        Some("--who-uses") => return chain::who_uses_once(&args[2..]),
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench/tmp");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create target/bench/tmp");
    raise_fd_limit();
    let mut b = Bench {
        quick,
        dir,
        out: String::new(),
    };
    let host = uname();
    b.say(format!(
        "# libfpl benchmark{}\n\nMachine: {host}, {} cores. QEMU: {}.\n",
        if quick { " (quick mode)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line(&run_out(Command::new("qemu-img").arg("--version")))
    ));
    // `--only=SECTION` runs one section (syscalls, latency, qemu-img,
    // holders, bulk, refused, chain, shared).
    let only = args.iter().find_map(|a| a.strip_prefix("--only="));
    type Section = fn(&mut Bench);
    let sections: [(&str, Section); 8] = [
        ("syscalls", syscalls),
        ("latency", latency),
        ("qemu-img", versus_qemu_img),
        ("holders", holders),
        ("bulk", bulk),
        ("refused", refused),
        ("chain", chain::chain),
        ("shared", shared::shared),
    ];
    for (name, section) in sections {
        if only.is_none_or(|o| o == name) {
            section(&mut b);
        }
    }
    let report = root.join("target/bench/report.md");
    fs::write(&report, &b.out).expect("write the report");
    println!("\nreport: {}", report.display());
    let _ = fs::remove_dir_all(&b.dir);
}

// ------------------------------------------------------------ helpers

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn uname() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, Linux {}", kernel.trim())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

fn run_out(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} not found: install {package}");
}

fn make_image(path: &Path) {
    let f = fs::File::create(path).expect("create an image");
    f.set_len(1 << 20).expect("size an image");
}

fn qemu_image(dir: &Path, name: &str, format: &str) -> PathBuf {
    let p = dir.join(name);
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(&p)
        .arg("16M")
        .status()
        .expect("qemu-img runs (install qemu-utils)");
    assert!(ok.success(), "qemu-img create");
    p
}

fn request(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

/// Times `f` run `n` times; the best of `rounds` blocks, per call.
fn time_per_call(rounds: usize, n: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed() / n as u32
        })
        .min()
        .unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

// ------------------------------------------------------- 1. syscalls

/// Under strace: one warm-up, a marker, the measured operation, a marker.
fn one_shot(what: &str, mode: &str, path: &Path) {
    let mode = Mode::from_name(mode).expect("a preset");
    let op = || match what {
        "acquire" => Lock::acquire(path, request(mode), Options::default())
            .and_then(Lock::release)
            .expect("acquire + release"),
        "check" => fpl::check(path, request(mode), Options::default()).expect("check"),
        "chain" => chain::acquire_release(path, mode),
        "chain-c" => chain::acquire_release_c(path, mode),
        _ => {
            fpl::query(path, false).expect("query");
        }
    };
    op();
    // SAFETY: getppid has no preconditions; it is the trace's marker.
    unsafe { libc::getppid() };
    op();
    // SAFETY: as above.
    unsafe { libc::getppid() };
}

fn is_lock_call(line: &str) -> bool {
    ["F_OFD_SETLK", "F_OFD_GETLK", "F_SETLK", "F_GETLK"]
        .iter()
        .any(|c| line.contains(&format!("{c},")))
}

/// The fcntl (and marker) calls of a command, one line each; `-y` names
/// each descriptor's file (`fcntl(4</dir/top.qcow2>, F_OFD_SETLK, ...)`),
/// which the chain section counts per member.
fn strace(b: &Bench, args: &[&std::ffi::OsStr]) -> Vec<String> {
    let log = b.dir.join("strace.log");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fcntl,fcntl64,getppid", "-o"])
        .arg(&log)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace runs (install strace)");
    assert!(status.success(), "strace {args:?}");
    fs::read_to_string(&log)
        .expect("strace log")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn our_calls(b: &Bench, what: &str, mode: Mode, image: &Path) -> usize {
    our_trace(b, what, mode, image).len()
}

/// The lock calls of one steady-state `what` (between the markers).
fn our_trace(b: &Bench, what: &str, mode: Mode, image: &Path) -> Vec<String> {
    let me = std::env::current_exe().expect("own path");
    let lines = strace(
        b,
        &[
            me.as_os_str(),
            "--one".as_ref(),
            what.as_ref(),
            mode.name().as_ref(),
            image.as_os_str(),
        ],
    );
    let marks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("getppid("))
        .map(|(i, _)| i)
        .collect();
    assert!(marks.len() >= 2, "no markers in the trace");
    lines[marks[0]..marks[1]]
        .iter()
        .filter(|l| is_lock_call(l))
        .cloned()
        .collect()
}

fn qemu_calls(b: &Bench, qemu_io: &Path, args: &[&str], image: &Path) -> usize {
    qemu_trace(b, qemu_io, args, image).len()
}

/// The lock calls of `qemu-io ARGS -c quit IMAGE`, its OFD probe included.
fn qemu_trace(b: &Bench, qemu_io: &Path, args: &[&str], image: &Path) -> Vec<String> {
    let mut all: Vec<&std::ffi::OsStr> = vec![qemu_io.as_os_str()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    all.push("-c".as_ref());
    all.push("quit".as_ref());
    all.push(image.as_os_str());
    strace(b, &all)
        .into_iter()
        .filter(|l| is_lock_call(l))
        .collect()
}

fn syscalls(b: &mut Bench) {
    need("strace", "strace");
    b.say("## 1. Lock syscalls per acquire + release\n");
    b.say("Counted with `strace -f -e trace=fcntl`: libfpl's steady state (after its one-time OFD probe), against `qemu-io` opening and closing the image for the same access (QEMU's count includes its probe on /dev/null).\n");
    let raw = qemu_image(&b.dir, "sys.raw", "raw");
    let qcow2 = qemu_image(&b.dir, "sys.qcow2", "qcow2");
    let mut qemus = vec![("10.0", PathBuf::from("/usr/bin/qemu-io"))];
    let q72 = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/qemu-7.2/usr/bin/qemu-io");
    if q72.exists() {
        qemus.push(("7.2", q72));
    }
    let cases: [(Mode, &str, &[&str], &Path); 4] = [
        (
            Mode::ReadShared,
            "qemu-io -f raw -U -r",
            &["-f", "raw", "-U", "-r"],
            &raw,
        ),
        (
            Mode::Read,
            "qemu-io -f qcow2 -r",
            &["-f", "qcow2", "-r"],
            &qcow2,
        ),
        (
            Mode::Write,
            "qemu-io -f qcow2 (read-write)",
            &["-f", "qcow2"],
            &qcow2,
        ),
        (
            Mode::Exclusive,
            "qemu-io -f qcow2 (read-write)",
            &["-f", "qcow2"],
            &qcow2,
        ),
    ];
    let mut header = "| preset | libfpl | QEMU access |".to_owned();
    let mut rule = "|---|---|---|".to_owned();
    for (v, _) in &qemus {
        write!(header, " QEMU {v} | ratio |").ok();
        rule.push_str("---|---|");
    }
    b.say(header);
    b.say(rule);
    for (mode, label, args, image) in cases {
        let ours = our_calls(b, "acquire", mode, image);
        let mut row = format!("| {} | {ours} | `{label}` |", mode.name());
        for (_, q) in &qemus {
            let theirs = qemu_calls(b, q, args, image);
            write!(row, " {theirs} | {:.2} |", ours as f64 / theirs as f64).ok();
        }
        b.say(row);
    }
    // QEMU's raw read-write open, the other figure PROTOCOL.md quotes.
    let mut row = "| (raw read-write) | — | `qemu-io -f raw` |".to_owned();
    for (_, q) in &qemus {
        write!(row, " {} | |", qemu_calls(b, q, &["-f", "raw"], &raw)).ok();
    }
    b.say(row);
    let check = our_calls(b, "check", Mode::Write, &qcow2);
    let query = our_calls(b, "query", Mode::Write, &qcow2);
    b.say(format!(
        "\nfpl_check (write, free image): {check} lock syscalls; fpl_query (free image): {query}.\n"
    ));
}

// -------------------------------------------------------- 2. latency

/// The floor: the fewest calls that take these bytes and test them, by hand.
struct Floor {
    path: CString,
    lock_runs: Vec<(u32, u32)>,
    test_span: (u32, u32),
}

impl Floor {
    fn new(path: &Path, mode: Mode) -> Floor {
        let plan = request(mode).plan();
        let tested = plan.tested();
        let first = tested.iter().next().unwrap_or(200);
        let last = tested.iter().last().unwrap_or(200);
        Floor {
            path: CString::new(path.as_os_str().as_bytes()).expect("no NUL"),
            lock_runs: plan.lock.runs(),
            test_span: (first, last - first + 1),
        }
    }

    fn open(&self) -> OwnedFd {
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open");
        // SAFETY: a fresh descriptor we own.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }

    fn fl(ty: i32, first: u32, len: u32) -> libc::flock {
        // SAFETY: flock is plain data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = first.into();
        fl.l_len = len.into();
        fl
    }

    fn acquire_release(&self) {
        let fd = self.open();
        for &(first, len) in &self.lock_runs {
            let fl = Floor::fl(libc::F_RDLCK, first, len);
            // SAFETY: fcntl on our descriptor with a valid flock.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        }
        self.test(&fd);
        // Closing the only descriptor drops the locks.
    }

    fn test(&self, fd: &OwnedFd) {
        let mut fl = Floor::fl(libc::F_WRLCK, self.test_span.0, self.test_span.1);
        // SAFETY: as above.
        unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    }

    fn check(&self) {
        let fd = self.open();
        self.test(&fd);
    }
}

fn latency(b: &mut Bench) {
    b.say("## 2. Latency against the floor\n");
    b.say("The floor is a hand-written minimal sequence for the same bytes: open, one F_OFD_SETLK per run of adjacent bytes, one F_OFD_GETLK over the tested span, close (for check and query: open, one F_OFD_GETLK, close). Best of 7 blocks, per call, on a free image.\n");
    let (rounds, n) = if b.quick { (3, 300) } else { (7, 20_000) };
    let image = b.dir.join("lat.img");
    make_image(&image);
    let c_path = CString::new(image.as_os_str().as_bytes()).expect("no NUL");
    b.say("| operation | libfpl (Rust) | libfpl (C ABI) | floor | ratio Rust | ratio C |");
    b.say("|---|---|---|---|---|---|");
    for mode in Mode::ALL {
        let floor = Floor::new(&image, mode);
        let f = time_per_call(rounds, n, || floor.acquire_release());
        let r = time_per_call(rounds, n, || {
            Lock::acquire(&image, request(mode), Options::default())
                .and_then(Lock::release)
                .expect("acquire");
        });
        let c = time_per_call(rounds, n, || {
            let mut lock = std::ptr::null_mut();
            // SAFETY: valid pointers; NULL err is allowed.
            let rc = unsafe {
                fpl::ffi::fpl_acquire(
                    c_path.as_ptr(),
                    mode.perm().bits(),
                    mode.shared().bits(),
                    0,
                    &mut lock,
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(rc, 0);
            // SAFETY: a live handle.
            unsafe { fpl::ffi::fpl_release(lock) };
        });
        b.say(format!(
            "| acquire + release {} | {} | {} | {} | {:.2} | {:.2} |",
            mode.name(),
            micros(r),
            micros(c),
            micros(f),
            ratio(r, f),
            ratio(c, f)
        ));
    }
    for mode in [Mode::ReadShared, Mode::Write] {
        let floor = Floor::new(&image, mode);
        let f = time_per_call(rounds, n, || floor.check());
        let r = time_per_call(rounds, n, || {
            fpl::check(&image, request(mode), Options::default()).expect("check")
        });
        let c = time_per_call(rounds, n, || {
            // SAFETY: valid pointers.
            let rc = unsafe {
                fpl::ffi::fpl_check(
                    c_path.as_ptr(),
                    mode.perm().bits(),
                    mode.shared().bits(),
                    0,
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(rc, 0);
        });
        b.say(format!(
            "| check {} | {} | {} | {} | {:.2} | {:.2} |",
            mode.name(),
            micros(r),
            micros(c),
            micros(f),
            ratio(r, f),
            ratio(c, f)
        ));
    }
    let floor = Floor {
        path: c_path.clone(),
        lock_runs: Vec::new(),
        test_span: (0, 205),
    };
    let f = time_per_call(rounds, n, || floor.check());
    let r = time_per_call(rounds, n, || {
        fpl::query(&image, false).expect("query");
    });
    b.say(format!(
        "| query (no holders) | {} | — | {} | {:.2} | — |\n",
        micros(r),
        micros(f),
        ratio(r, f)
    ));
}

// ----------------------------------------------- 3. vs qemu-img info -U

fn versus_qemu_img(b: &mut Bench) {
    b.say("## 3. Against spawning `qemu-img info -U`\n");
    let image = qemu_image(&b.dir, "info.qcow2", "qcow2");
    let spawns = if b.quick { 3 } else { 30 };
    let start = Instant::now();
    for _ in 0..spawns {
        let ok = Command::new("qemu-img")
            .args(["info", "-U"])
            .arg(&image)
            .stdout(Stdio::null())
            .status()
            .expect("qemu-img");
        assert!(ok.success());
    }
    let info = start.elapsed() / spawns;
    let n = if b.quick { 200 } else { 5000 };
    let check = time_per_call(3, n, || {
        fpl::check(&image, request(Mode::Write), Options::default()).expect("check")
    });
    let query = time_per_call(3, n, || {
        fpl::query(&image, false).expect("query");
    });
    b.say("| operation | time | qemu-img info -U / this |");
    b.say("|---|---|---|");
    b.say(format!(
        "| `qemu-img info -U` (spawned) | {} | 1 |",
        millis(info)
    ));
    b.say(format!(
        "| fpl_check (write) | {} | {:.0}x faster |",
        micros(check),
        ratio(info, check)
    ));
    b.say(format!(
        "| fpl_query (no holders) | {} | {:.0}x faster |\n",
        micros(query),
        ratio(info, query)
    ));
}

// ------------------------------------------------- 4. holder lookup

/// A child holding `count` descriptors of files in `dir` (every fifth
/// with an OFD read lock on byte 100), until its stdin closes.
fn hold_files(args: &[String]) {
    let dir = Path::new(&args[0]);
    let count: usize = args[1].parse().expect("count");
    let files: usize = args[2].parse().expect("files");
    let mut held = Vec::new();
    for i in 0..count {
        let p = dir.join(format!("f{}", i % files));
        let Ok(f) = fs::File::open(&p) else { continue };
        if i % 5 == 0 {
            let fl = Floor::fl(libc::F_RDLCK, 100, 1);
            // SAFETY: fcntl on our descriptor.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        }
        held.push(f);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// A child holding the write preset on every image listed, until stdin closes.
fn hold_images(paths: &[String]) {
    let locks: Vec<Lock> = paths
        .iter()
        .filter_map(|p| Lock::acquire(Path::new(p), request(Mode::Write), Options::default()).ok())
        .collect();
    println!("ready {}", locks.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn spawn_ready(cmd: &mut Command) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a holder");
    let out = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.starts_with("ready"), "holder said {line:?}");
    child
}

/// Fills the host with `procs` processes holding `per` descriptors each.
fn populate(b: &Bench, procs: usize, per: usize) -> Kids {
    let files = b.dir.join("files");
    fs::create_dir_all(&files).expect("files dir");
    for i in 0..200 {
        let p = files.join(format!("f{i}"));
        if !p.exists() {
            fs::write(&p, b"x").expect("a file");
        }
    }
    let me = std::env::current_exe().expect("own path");
    Kids(
        (0..procs)
            .map(|_| {
                spawn_ready(
                    Command::new(&me)
                        .arg("--hold-files")
                        .arg(&files)
                        .arg(per.to_string())
                        .arg("200"),
                )
            })
            .collect(),
    )
}

fn count_host_fds() -> usize {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|s| s.parse::<u32>().is_ok())
                })
                .map(|e| fs::read_dir(e.path().join("fd")).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

/// The naive scan: read every descriptor's fdinfo and parse its lock lines.
fn naive_holders(image: &Path) -> usize {
    let meta = fs::metadata(image).expect("stat");
    let (major, minor, ino) = (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    let mut found = 0;
    for proc_entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            if fpl::fdinfo::lock_lines(&info).any(|l| l.is_on(major, minor, ino)) {
                found += 1;
            }
        }
    }
    found
}

fn holders(b: &mut Bench) {
    need("lslocks", "util-linux");
    b.say("## 4. Holder lookup\n");
    let (procs, per) = if b.quick { (20, 20) } else { (300, 20) };
    let _kids = populate(b, procs, per);
    let image = qemu_image(&b.dir, "held.qcow2", "qcow2");
    let mut qemu = Kids(Vec::new());
    for i in 0..3 {
        let other = qemu_image(&b.dir, &format!("q{i}.qcow2"), "qcow2");
        qemu.0.push(
            Command::new("qemu-io")
                .args(["-f", "qcow2"])
                .arg(if i == 0 { &image } else { &other })
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("qemu-io"),
        );
    }
    // Wait for QEMU's locks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fpl::query(&image, true).map_or(true, |s| s.holders.is_empty()) {
        assert!(Instant::now() < deadline, "qemu-io never locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fds = count_host_fds();
    let locks = fs::read_to_string("/proc/locks").map_or(0, |s| s.lines().count());
    b.say(format!(
        "Host: {} processes holding {fds} descriptors, {locks} locks, 3 qemu-io holders.\n",
        procs + 3
    ));
    let n = if b.quick { 3 } else { 20 };
    let ours = time_per_call(3, n, || {
        let s = fpl::query(&image, true).expect("query");
        assert_eq!(s.holders.len(), 1);
    });
    // Openers come from the same walk: the cost over holders alone.
    let with_openers = time_per_call(3, n, || {
        let s = fpl::query::query_with(
            &image,
            fpl::query::Inspect {
                holders: true,
                openers: true,
            },
        )
        .expect("query");
        assert_eq!(s.holders.iter().filter(|h| !h.no_locks).count(), 1);
    });
    let naive = time_per_call(3, n, || {
        assert!(naive_holders(&image) >= 1);
    });
    let lslocks = time_per_call(1, n, || {
        let out = Command::new("lslocks")
            .arg("--json")
            .output()
            .expect("lslocks");
        assert!(out.status.success());
    });
    b.say("| holder lookup | time | / libfpl |");
    b.say("|---|---|---|");
    b.say(format!(
        "| libfpl `fpl_query` with holders | {} | 1 |",
        millis(ours)
    ));
    b.say(format!(
        "| libfpl `fpl_query` with holders and openers (`FPL_QUERY_OPENERS`, same walk) | {} | {:.2} |",
        millis(with_openers),
        ratio(with_openers, ours)
    ));
    b.say(format!(
        "| naive scan (every fdinfo read) | {} | {:.1} |",
        millis(naive),
        ratio(naive, ours)
    ));
    b.say(format!(
        "| `lslocks --json` (spawned; cannot name OFD holders before util-linux 2.40) | {} | {:.1} |\n",
        millis(lslocks),
        ratio(lslocks, ours)
    ));
}

// ------------------------------------------------------------ 5. bulk

fn bulk(b: &mut Bench) {
    need("qemu-storage-daemon", "qemu-utils");
    b.say("## 5. Status of many images\n");
    let (images, held) = if b.quick { (1000, 100) } else { (10_000, 1000) };
    let dir = b.dir.join("pool");
    fs::create_dir_all(&dir).expect("pool dir");
    let paths: Vec<PathBuf> = (0..images)
        .map(|i| dir.join(format!("img{i}.raw")))
        .collect();
    for p in &paths {
        make_image(p);
    }
    // Half the held ones by one qemu-storage-daemon (NBD exports of read-only
    // file nodes), half by a libfpl process.
    let by_qemu = &paths[..held / 2];
    let by_libfpl = &paths[held / 2..held];
    let sock = b.dir.join("qsd.sock");
    let mut qsd = Command::new("qemu-storage-daemon");
    qsd.arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", sock.display()));
    for (i, p) in by_qemu.iter().enumerate() {
        qsd.arg("--blockdev").arg(format!(
            "driver=file,node-name=f{i},filename={},read-only=on",
            p.display()
        ));
        qsd.arg("--export")
            .arg(format!("type=nbd,id=e{i},node-name=f{i},name=e{i}"));
    }
    let mut kids = Kids(vec![qsd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon")]);
    let me = std::env::current_exe().expect("own path");
    kids.0.push(spawn_ready(
        Command::new(&me).arg("--hold-images").args(by_libfpl),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while fpl::query(&by_qemu[by_qemu.len() - 1], false).map_or(true, |s| s.held.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _busy_host = populate(b, if b.quick { 10 } else { 100 }, 20);
    let fds = count_host_fds();
    b.say(format!(
        "{images} images, {held} held ({} by one qemu-storage-daemon, {} by a libfpl process); host: {fds} descriptors.\n",
        by_qemu.len(),
        by_libfpl.len()
    ));

    // Rust API.
    let start = Instant::now();
    let all = fpl::query::query_many(&paths, true);
    let rust = start.elapsed();
    let named = all
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|s| !s.holders.is_empty()))
        .count();
    assert_eq!(named, held, "every held image has its holder named");

    // C ABI.
    let c_paths: Vec<CString> = paths
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).expect("no NUL"))
        .collect();
    let ptrs: Vec<*const libc::c_char> = c_paths.iter().map(|c| c.as_ptr()).collect();
    let mut statuses: Vec<fpl::ffi::fpl_status> = (0..images)
        .map(|_| fpl::ffi::fpl_status::default())
        .collect();
    let mut results = vec![0i32; images];
    let mut hs: Vec<fpl::ffi::fpl_holder> = (0..held * 2)
        .map(|_| fpl::ffi::fpl_holder::default())
        .collect();
    let mut total = 0usize;
    let start = Instant::now();
    // SAFETY: every array has the length passed.
    let rc = unsafe {
        fpl::ffi::fpl_query_many(
            ptrs.as_ptr(),
            images,
            fpl::ffi::FPL_QUERY_HOLDERS,
            statuses.as_mut_ptr(),
            results.as_mut_ptr(),
            hs.as_mut_ptr(),
            hs.len(),
            &mut total,
            std::ptr::null_mut(),
        )
    };
    let c = start.elapsed();
    assert_eq!(rc, 0);
    assert!(total >= held);

    // The CLI.
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/fpl");
    let cli_time = if cli.exists() {
        let start = Instant::now();
        let out = Command::new(&cli)
            .arg("status")
            .arg("--json")
            .args(&paths)
            .output()
            .expect("fpl status");
        let t = start.elapsed();
        assert!(out.status.success(), "fpl status failed");
        Some(t)
    } else {
        None
    };
    b.say("| path | time for all images |");
    b.say("|---|---|");
    b.say(format!("| Rust `query_many` | {} |", millis(rust)));
    b.say(format!("| C `fpl_query_many` | {} |", millis(c)));
    match cli_time {
        Some(t) => b.say(format!("| `fpl status --json` (spawned) | {} |", millis(t))),
        None => b.say("| `fpl status --json` | (build it with `cargo build --release`) |"),
    }
    b.say("");
    growth(b, &paths, held);
}

fn growth(b: &mut Bench, paths: &[PathBuf], held: usize) {
    b.say("### How the cost grows\n");
    let steps: Vec<usize> = if b.quick {
        vec![paths.len() / 4, paths.len()]
    } else {
        vec![1000, 2500, 5000, 10_000]
    };
    let mut by_images = Vec::new();
    for &n in &steps {
        let t = time_per_call(3, 1, || {
            fpl::query::query_many(&paths[..n], true);
        });
        by_images.push((n as f64, t.as_secs_f64() * 1e3));
    }
    let mut by_fds = Vec::new();
    let subset = &paths[..held.max(1) * 2];
    let extra: Vec<usize> = if b.quick {
        vec![0, 10]
    } else {
        vec![0, 200, 500, 1000]
    };
    for procs in extra {
        let _kids = populate(b, procs, 20);
        let fds = count_host_fds();
        let t = time_per_call(3, 1, || {
            fpl::query::query_many(subset, true);
        });
        by_fds.push((fds as f64, t.as_secs_f64() * 1e3));
    }
    b.say("| images (host fixed) | ms |");
    b.say("|---|---|");
    for (n, ms) in &by_images {
        b.say(format!("| {n} | {ms:.1} |"));
    }
    b.say(format!(
        "\n| descriptors on the host ({} images, half held) | ms |",
        subset.len()
    ));
    b.say("|---|---|");
    for (n, ms) in &by_fds {
        b.say(format!("| {n} | {ms:.1} |"));
    }
    let svg = plot(
        (&by_images, "images queried", "ms"),
        (&by_fds, "descriptors on the host", "ms"),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/growth.svg");
    fs::write(&path, svg).expect("write the plot");
    b.say(format!("\nPlot: `{}`\n", path.display()));
}

/// One chart: its points, the label of its x axis, the unit of its y values.
type Chart<'a> = (&'a [(f64, f64)], &'a str, &'a str);

/// Two small line charts side by side, as SVG.
fn plot(left: Chart<'_>, right: Chart<'_>) -> String {
    fn chart(x0: f64, (data, xlabel, unit): Chart<'_>) -> String {
        let (w, h, pad) = (360.0, 240.0, 50.0);
        let xmax = data.iter().map(|p| p.0).fold(1.0, f64::max);
        let ymax = data.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.15;
        let pt = |(x, y): (f64, f64)| {
            (
                x0 + pad + x / xmax * (w - 2.0 * pad),
                h - pad - y / ymax * (h - 2.0 * pad),
            )
        };
        let mut s = String::new();
        let pts: Vec<String> = data
            .iter()
            .map(|&p| {
                let (x, y) = pt(p);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        write!(
            s,
            r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#333"/><line x1="{a}" y1="{d}" x2="{a}" y2="{b}" stroke="#333"/>"##,
            a = x0 + pad,
            b = h - pad,
            c = x0 + w - pad,
            d = pad
        )
        .ok();
        write!(
            s,
            r##"<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{}"/>"##,
            pts.join(" ")
        )
        .ok();
        for &p in data {
            let (x, y) = pt(p);
            write!(
                s,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="#1565c0"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.0} {unit}</text><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.0}</text>"##,
                y - 8.0,
                p.1,
                h - pad + 13.0,
                p.0
            )
            .ok();
        }
        write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{xlabel}</text><text x="{:.1}" y="{:.1}" font-size="12">{unit}</text>"##,
            x0 + w / 2.0,
            h - 12.0,
            x0 + 10.0,
            pad - 10.0
        )
        .ok();
        s
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="740" height="240" font-family="sans-serif">{}{}</svg>
"##,
        chart(0.0, left),
        chart(370.0, right)
    )
}

// ------------------------------------------- 6. refused on a busy host

/// A child holding `count` duplicates of one descriptor of `path` (no lock
/// on any), until its stdin closes. As root it raises its own descriptor
/// limit to fit them.
fn hold_dups(args: &[String]) {
    let count: usize = args[0].parse().expect("count");
    let path = Path::new(&args[1]);
    let want = (count + 64) as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit on a local struct; failing leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let f = fs::File::open(path).expect("open the file to duplicate");
    let mut dups = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(d) = f.as_fd().try_clone_to_owned() else {
            break;
        };
        dups.push(d);
    }
    println!("ready {}", dups.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(dups);
}

/// One refused write check; whether the conflict named its holder.
fn refused_check(image: &Path, skip_holder_lookup: bool) -> bool {
    let options = Options {
        skip_holder_lookup,
        ..Options::default()
    };
    let e = fpl::check(image, request(Mode::Write), options).expect_err("a refused check");
    let conflict = e.conflict().expect("a conflict");
    conflict.holder.is_some()
}

fn refused(b: &mut Bench) {
    b.say(
        "## 6. A refused check on a busy host
",
    );
    let image = qemu_image(&b.dir, "refused.qcow2", "qcow2");
    let _qemu = Kids(vec![Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fpl::query(&image, false).map_or(true, |s| s.held.is_empty()) {
        assert!(Instant::now() < deadline, "qemu-io never locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Idle host first: the baseline.
    let idle_fds = count_host_fds();
    let idle_lookup = time_per_call(5, 20, || {
        assert!(refused_check(&image, false), "holder named on an idle host");
    });
    let idle_skip = time_per_call(7, 2000, || {
        assert!(!refused_check(&image, true));
    });
    // Then the busy host: helpers holding duplicates of one descriptor,
    // each as many as its descriptor limit allows (without
    // CAP_SYS_RESOURCE the hard limit stays), until the host holds `total`.
    let total = if b.quick { 20_000 } else { 200_000 };
    let file = b.dir.join("dup-me");
    fs::write(&file, b"x").expect("a file");
    let me = std::env::current_exe().expect("own path");
    let mut kids = Kids(Vec::new());
    let mut held = 0;
    while held < total {
        let mut child = Command::new(&me)
            .arg("--hold-dups")
            .arg((total - held).min(50_000).to_string())
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a helper");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("ready line");
        kids.0.push(child);
        let n: usize = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("helper said {line:?}"));
        assert!(n > 0, "a helper could open no descriptor");
        held += n;
    }
    let helpers = kids.0.len();
    let fds = count_host_fds();
    let mut named = 0;
    let mut calls = 0;
    let (rounds, n) = if b.quick { (1, 2) } else { (3, 3) };
    let busy_lookup = time_per_call(rounds, n, || {
        calls += 1;
        named += usize::from(refused_check(&image, false));
    });
    let busy_skip = time_per_call(7, 2000, || {
        assert!(!refused_check(&image, true));
    });
    b.say(format!(
        "Refused `fpl::check` (write) against a `qemu-io` holder. Idle host: {idle_fds} descriptors; busy host: {fds} ({helpers} helper processes holding {held} of them). Holder named within the lookup budget ({} s) in {named} of {calls} calls on the busy host.\n",
        fpl::holders::LOOKUP_BUDGET.as_secs_f64()
    ));
    b.say("| refused check (write) | idle host | busy host | busy / idle |");
    b.say("|---|---|---|---|");
    b.say(format!(
        "| with holder lookup (default) | {} | {} | {:.1} |",
        micros(idle_lookup),
        micros(busy_lookup),
        ratio(busy_lookup, idle_lookup)
    ));
    b.say(format!(
        "| `skip_holder_lookup` | {} | {} | {:.2} |",
        micros(idle_skip),
        micros(busy_skip),
        ratio(busy_skip, idle_skip)
    ));
    b.say(format!(
        "| lookup / skip | {:.0}x | {:.0}x | |\n",
        ratio(idle_lookup, idle_skip),
        ratio(busy_lookup, busy_skip)
    ));
}
