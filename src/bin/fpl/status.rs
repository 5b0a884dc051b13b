//! `fpl status`: whether each image is free, or who holds it and for what,
//! and who has it open without locks, in words. `/proc` is walked once for
//! all the images, not once each, and finds holders and openers together.

use std::path::{Path, PathBuf};

use clap::Args;
use fpl::fdinfo::Access;
use fpl::query::Inspect;
use fpl::{Error, Held, Holder, Status};

use crate::{chain_status, escape, json, out, report, EXIT_CONFLICT, EXIT_ERROR, EXIT_OK};

/// `fpl status`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct StatusArgs {
    /// Print a JSON array, one object per image (format below).
    #[arg(short, long)]
    pub json: bool,

    /// Print nothing; the exit status says whether some image is in use
    /// (held, or open without locks): 0 if one is, 1 if every image is
    /// free, 2 if one could not be inspected. Like `fuser -s` or `grep -q`.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,

    /// Only test the lock bytes; do not look through /proc for the processes
    /// holding them, nor for those that have the image open without locks
    /// (`free` then only means that no byte is held).
    #[arg(long)]
    pub no_holders: bool,

    /// Show each image as the tree of files QEMU opens for it (its data
    /// file, its backing chain), who holds each, and which of the other
    /// images named refer to it (format below).
    #[arg(long)]
    pub chain: bool,

    /// Every image some process on this host holds QEMU's locks on, instead
    /// of IMAGEs named (found from /proc/locks and the holders'
    /// descriptors).
    #[arg(short, long, conflicts_with = "images")]
    pub all: bool,

    /// The images (files or block devices).
    #[arg(value_name = "IMAGE", required_unless_present = "all")]
    pub images: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
Each image is `free`, or one line per holder says what it uses and what it
does not share, in QEMU's words. Bytes held by nobody visible are reported as
`held on another host or out of sight` (another host sharing the file
system, another PID namespace, or a process fpl may not inspect): never as
free, and a note says which it can be. A holder is named by its process, and
also by its guest when its command line names one (`-name guest=vm01`, as
libvirt starts QEMU) and by its user when that is not fpl's own:
  vm01.qcow2: in use by qemu-system-x86 (pid 4410, fd 8, guest vm01, user
  libvirt-qemu): uses consistent read, write, resize; does not share write, resize

On a FUSE file system that locks on its server (GlusterFS), no process shows
its locks in /proc, not even on the holder's own host: a process that has the
image open while its bytes are held is named as their holder, inferred:
  vm.raw: in use by qemu-io (pid 4410, fd 9), inferred: uses write; ...

A process that has the image open and holds none of its bytes is an opener:
  vm.raw: open read-write by qemu-system-x86 (pid 4410, fd 12) without locks
That is how QEMU with locking=off (Proxmox VE's default) or an incoming
migration's destination uses an image: such an image is in use, not free,
though QEMU's protocol sees nothing (`fpl check` and `fpl hold` grant it
unless given --no-unlocked-openers). Openers are found in the same walk of
/proc as holders, among the processes fpl may inspect (run as root to see
every one); --no-holders looks for neither, and its `free` only says that
no byte is held.

--all looks at every image some process on this host holds QEMU's locks on
(found from /proc/locks, then named from the holders' descriptors; an image
in another mount namespace is shown as /proc/PID/fd/FD). It cannot find
images used without locks (QEMU with locking=off: name them), nor locks a
FUSE file system keeps on its server.

Control characters in process names and paths are shown escaped
(`\\x1b`, `\\t`, `\\u{9b}`, and `\\\\` for a backslash); --json gives them exactly.

Exit status: 0 if every image could be inspected, 2 otherwise (or if the
output could not be written; a closed pipe, as with `| head`, is no error).
With --quiet: 0 if some image (with --chain, some file of some image) is in
use, held or open without locks; 1 if every one is free (or --all found
none); 2 if none is in use and some could not be inspected.

JSON (--json): an array with one object per image, in command-line order,
each on a line of its own:
  {\"path\": \"vm.qcow2\",
   \"perm\": [\"consistent-read\", \"write\", \"resize\"],  (bytes 100+i held)
   \"unshared\": [\"write\", \"resize\"],                   (bytes 200+i held)
   \"flags\": [],     (\"legacy\": 104/204 held, \"libvirt\": byte 0 held,
                     \"holders-partial\": some process could not be inspected)
   \"holders\": [{\"pid\": 4410, \"fd\": 12, \"name\": \"qemu-system-x86\",
                \"guest\": \"vm01\",   (from -name guest=vm01; or null)
                \"uid\": 64055, \"user\": \"libvirt-qemu\",  (or null, null)
                \"perm\": [...], \"unshared\": [...], \"flags\": [...],
                \"access\": [\"read\", \"write\"]}]}
`guest` is the guest's name on the holder's command line, `uid` its effective
uid and `user` that user's name (the uid when it has none), given for fpl's
own user too. An opener is in `holders` too, with empty perm and unshared and
\"flags\": [\"no-locks\"]. `holders` is left out with --no-holders. An image that could not be
inspected: {\"path\": ..., \"error\": MESSAGE, \"errno\": N} (plus \"hint\").

--chain: each image is the tree of the files QEMU opens for it: the image,
its data file, its backing file and so on down the chain (as QEMU resolves
their names: backing files relative to the overlay's folder, data files to
the working directory), each with its format, depth and holders. Under each
file, the other IMAGEs named that refer to it, so that `fpl status --chain
pool/*` shows, for each base image, who holds it and which overlays need it:
  base.raw: raw image
    in use by qemu-io (pid 4410, fd 9): uses consistent read; shares everything
    backing file of a.qcow2 (depth 1)
    backing file of b.qcow2 (depth 1)
Remote members (nbd: ...) are listed, never opened. /proc is walked once for
all the files of all the images. An image whose chain cannot be resolved (a
missing backing file, a loop, a format fpl does not follow) is an error.
JSON: {\"path\": IMAGE, \"members\": [MEMBER, ...]}, top first, each MEMBER
  {\"path\": \"base.raw\", \"role\": \"image\" | \"backing\" | \"data-file\",
   \"format\": \"raw\" | \"qcow2\" | \"remote\", \"depth\": 1,
   \"perm\", \"unshared\", \"flags\", \"holders\" as above (or \"error\", \"errno\";
   none of them for a remote member),
   \"overlays\": [{\"path\": \"a.qcow2\", \"role\": \"backing\", \"depth\": 1}]}
where `overlays` lists the IMAGEs named whose chain holds this file below
their top, with its role and depth there.";

/// One image's outcome.
pub struct Inspected {
    /// The image as named on the command line.
    pub path: PathBuf,
    /// What is held (and by whom, if looked up), or why it could not be told.
    pub outcome: Result<Status, Error>,
}

/// Tests each image's bytes, then (with `holders`) names the holders and
/// the openers of all of them with one walk of `/proc`
/// (`fpl::query::query_many_with`).
pub fn inspect(paths: &[PathBuf], holders: bool) -> Vec<Inspected> {
    fpl::query::query_many_with(paths, looked_up(holders))
        .into_iter()
        .zip(paths)
        .map(|(outcome, path)| Inspected {
            path: path.clone(),
            outcome,
        })
        .collect()
}

/// What `status` looks for in `/proc`: holders and openers, or nothing
/// (`--no-holders`).
pub fn looked_up(holders: bool) -> Inspect {
    Inspect {
        holders,
        openers: holders,
    }
}

/// Runs `fpl status`; returns the exit status.
pub fn run(args: &StatusArgs) -> u8 {
    if args.all {
        let images: Vec<PathBuf> = fpl::holders::images_in_use()
            .into_iter()
            .map(|i| i.path)
            .collect();
        if images.is_empty() && !args.json && !args.quiet {
            out("no image on this host is held (as far as /proc/locks shows)");
            return EXIT_OK;
        }
        let named = StatusArgs {
            json: args.json,
            quiet: args.quiet,
            no_holders: args.no_holders,
            chain: args.chain,
            all: false,
            images,
        };
        return run_named(&named, named.images.is_empty());
    }
    run_named(args, false)
}

/// `fpl status` of the images named (`none`: `--all` found none, so that
/// JSON prints `[]` and `--quiet` says free).
fn run_named(args: &StatusArgs, none: bool) -> u8 {
    if none {
        if args.json {
            json::print(Vec::new());
        }
        return if args.quiet { EXIT_CONFLICT } else { EXIT_OK };
    }
    let holders = !args.no_holders;
    if args.quiet {
        return in_use_status(args, holders);
    }
    if args.chain {
        return chain_status::run(&args.images, holders, args.json);
    }
    let inspected = inspect(&args.images, holders);
    let all_ok = inspected.iter().all(|i| i.outcome.is_ok());
    if args.json {
        let objects = inspected
            .iter()
            .map(|i| match &i.outcome {
                Ok(status) => json::status(&i.path, status, holders),
                Err(e) => json::error(&i.path, e),
            })
            .collect();
        json::print(objects);
    } else {
        let mut notes = Notes::default();
        for i in &inspected {
            match &i.outcome {
                Ok(status) => {
                    for line in describe_status(&i.path, status, holders, &mut notes) {
                        out(&line);
                    }
                }
                Err(e) => report::print_error(&i.path, e),
            }
        }
    }
    if all_ok {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}

/// `fpl status --quiet`: 0 if some image (with --chain, some file of some
/// image) is in use, 1 if all are free, 2 if one could not be inspected.
fn in_use_status(args: &StatusArgs, holders: bool) -> u8 {
    // Per image or file: in use, free, or not inspected (None).
    let in_use = |r: &Result<Status, Error>| {
        r.as_ref()
            .ok()
            .map(|s| !s.held.is_empty() || !s.holders.is_empty())
    };
    let mut answers: Vec<Option<bool>> = Vec::new();
    if args.chain {
        for tree in chain_status::inspect(&args.images, holders) {
            match &tree.members {
                Ok(members) => answers.extend(
                    members
                        .iter()
                        .filter_map(|m| m.status.as_deref().map(in_use)),
                ),
                Err(_) => answers.push(None),
            }
        }
    } else {
        answers.extend(
            inspect(&args.images, holders)
                .iter()
                .map(|i| in_use(&i.outcome)),
        );
    }
    if answers.contains(&Some(true)) {
        EXIT_OK
    } else if answers.contains(&None) {
        EXIT_ERROR
    } else {
        EXIT_CONFLICT
    }
}

/// The notes already given in this run, so that each is given once.
#[derive(Debug, Default)]
pub struct Notes {
    /// What an opener is has been said.
    openers: bool,
    /// How an inferred holder is known has been said.
    inferred: bool,
}

/// The lines `fpl status` prints for one inspected image.
pub fn describe_status(
    path: &Path,
    status: &Status,
    holders_looked_up: bool,
    notes: &mut Notes,
) -> Vec<String> {
    let path = escape::path(path);
    describe(status, holders_looked_up, notes)
        .into_iter()
        .map(|line| format!("{path}: {line}"))
        .collect()
}

/// What `fpl status` says of one image, a line each, without the image's
/// name: `free`, `in use by qemu-io (pid 4410, fd 12): uses ...`, `open
/// read-write by qemu-io (pid 4410, fd 12) without locks` (with a note the
/// first time in `notes`), or bytes held on another host or out of sight and a
/// note on why.
pub fn describe(status: &Status, holders_looked_up: bool, notes: &mut Notes) -> Vec<String> {
    if !holders_looked_up {
        // Nothing was looked for in /proc: openers cannot be known.
        if status.held.is_empty() {
            return vec!["free (no byte held; openers not looked for)".to_owned()];
        }
        return vec![format!("in use: {}", describe_held(&status.held))];
    }
    if status.held.is_empty() && status.holders.is_empty() {
        return vec!["free".to_owned()];
    }
    let mut lines: Vec<String> = status
        .holders
        .iter()
        .map(|h| {
            if h.no_locks {
                opener_words(h)
            } else if h.inferred {
                format!("in use by {}, inferred: {}", who(h), describe_held(&h.held))
            } else {
                format!("in use by {}: {}", who(h), describe_held(&h.held))
            }
        })
        .collect();
    let holding = status.holders.iter().filter(|h| !h.no_locks).count();
    if holding < status.holders.len() && !notes.openers {
        notes.openers = true;
        lines.push(
            "note: a process that has the image open and holds no lock is how QEMU \
             with locking=off (Proxmox VE's default) or an incoming migration's \
             destination looks: the image is in use, not free, although QEMU's locks \
             do not show it"
                .to_owned(),
        );
    }
    if status.holders.iter().any(|h| h.inferred) && !notes.inferred {
        notes.inferred = true;
        lines.push(
            "note: this file system (FUSE) keeps its locks on its server, out of /proc: \
             no process shows a lock line, so the processes that have the image open \
             while its bytes are held are named as their holders, inferred, not seen \
             (a lock lives only as long as a descriptor of its file); the holder may \
             also be on another host"
                .to_owned(),
        );
    }
    // Bytes the test found that no holder in /proc accounts for.
    let seen = status
        .holders
        .iter()
        .fold(Held::default(), |all, h| all.union(h.held));
    let unseen = status.held.minus(seen);
    if !unseen.is_empty() {
        let (prefix, held) = if holding == 0 {
            ("held", status.held)
        } else {
            ("also held", unseen)
        };
        lines.push(format!(
            "{prefix} on another host or out of sight: {}",
            describe_held(&held)
        ));
        lines.push(if status.holders_partial {
            uninspected_note(&status.uninspected)
        } else if status.hidden_locks {
            "note: no process on this host has the image open: the holder runs on \
             another host sharing the file system (or in another PID namespace)"
                .to_owned()
        } else {
            "note: no process fpl can see holds these bytes: the holder \
             may run on another host sharing the file system, or in another PID \
             namespace"
                .to_owned()
        });
    }
    lines
}

/// Why holders may be missing: some processes could not be inspected. A
/// caller who is not root is told to be; root is told which processes the
/// kernel still keeps from it, and what sets them apart.
fn uninspected_note(pids: &[i32]) -> String {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 || pids.is_empty() {
        return "note: some processes could not be inspected; \
                run fpl as root to name every holder"
            .to_owned();
    }
    const SHOWN: usize = 3;
    let mut named: Vec<String> = pids
        .iter()
        .take(SHOWN)
        .map(|&pid| match fpl::holders::process_name(pid) {
            name if name.is_empty() => format!("{pid}"),
            name => format!("{pid} ({})", escape::escape(&name)),
        })
        .collect();
    if pids.len() > SHOWN {
        named.push(format!("{} more", pids.len() - SHOWN));
    }
    let (them, it) = match named.as_slice() {
        [one] => (format!("pid {one}"), "it"),
        [rest @ .., last] => (format!("pids {} and {last}", rest.join(", ")), "they"),
        [] => (String::new(), "they"),
    };
    let (its, holds) = if it == "it" {
        ("its", "holds")
    } else {
        ("their", "hold")
    };
    let why = if pids.iter().any(|&pid| has_capabilities_beyond_ours(pid)) {
        format!(
            "the kernel keeps {its} descriptors from fpl: {it} {holds} capabilities fpl \
             lacks (fpl runs with fewer, or {it} {is} a sandbox's or container runtime's \
             init)",
            is = if it == "it" { "is" } else { "are" },
        )
    } else {
        format!(
            "the kernel keeps {its} descriptors from fpl (a security module's policy, \
             or a user namespace that root here does not own)"
        )
    };
    format!(
        "note: {them} could not be inspected, even by root: {why}; a holder among \
         them cannot be named"
    )
}

/// Whether process `pid` has permitted capabilities this process does not
/// have in effect (`/proc/PID/status`), false if either cannot be read.
fn has_capabilities_beyond_ours(pid: i32) -> bool {
    let caps = |path: String, field: &str| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix(field))?;
        u64::from_str_radix(line.trim(), 16).ok()
    };
    match (
        caps(format!("/proc/{pid}/status"), "CapPrm:"),
        caps("/proc/self/status".to_owned(), "CapEff:"),
    ) {
        (Some(theirs), Some(ours)) => theirs & !ours != 0,
        _ => false,
    }
}

/// `open read-write by qemu-io (pid 4410, fd 12) without locks`.
pub fn opener_words(h: &Holder) -> String {
    format!("open {}by {} without locks", open_mode(h.access), who(h))
}

/// `read-write `, `read-only `, `write-only `: how an opener's descriptor
/// was opened; nothing when fdinfo did not say.
fn open_mode(a: Access) -> &'static str {
    match (a.read, a.write) {
        (true, true) => "read-write ",
        (true, false) => "read-only ",
        (false, true) => "write-only ",
        (false, false) => "",
    }
}

/// `qemu-io (pid 4410, fd 12)`; for a QEMU whose command line names its
/// guest (`-name guest=vm01`, as libvirt starts it), `qemu-system-x86 (pid
/// 4410, fd 12, guest vm01)`; and the process's user when it is not fpl's
/// own (`..., user libvirt-qemu)`).
fn who(h: &Holder) -> String {
    let mut more = String::new();
    let id = identity(h.pid);
    if let Some(guest) = &id.guest {
        more.push_str(&format!(", guest {}", escape::escape(guest)));
    }
    if let Some((uid, user)) = &id.user {
        // SAFETY: geteuid cannot fail.
        if *uid != unsafe { libc::geteuid() } {
            more.push_str(&format!(", user {}", escape::escape(user)));
        }
    }
    if h.name.is_empty() {
        format!("pid {} (fd {}{more})", h.pid, h.fd)
    } else {
        format!(
            "{} (pid {}, fd {}{more})",
            escape::escape(&h.name),
            h.pid,
            h.fd
        )
    }
}

/// Who a holder's process is, beyond its name: its guest and its user.
pub struct Identity {
    /// [`guest_name`].
    pub guest: Option<String>,
    /// [`user_of`].
    pub user: Option<(u32, String)>,
}

/// The identity of process `pid`, read once per run: a process holds
/// many images (a pool's VMs, a chain's members) and is described once
/// per holder line or JSON object.
pub fn identity(pid: i32) -> std::rc::Rc<Identity> {
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashMap<i32, std::rc::Rc<Identity>>> =
            Default::default();
    }
    SEEN.with(|seen| {
        seen.borrow_mut()
            .entry(pid)
            .or_insert_with(|| {
                std::rc::Rc::new(Identity {
                    guest: guest_name(pid),
                    user: user_of(pid),
                })
            })
            .clone()
    })
}

/// The guest's name a QEMU process was started with: `-name vm01`, `-name
/// guest=vm01,debug-threads=on` (libvirt's form), `--name ...`; `None` for
/// any other process or a command line that cannot be read.
fn guest_name(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(arg) = args.next() {
        if arg != b"-name" && arg != b"--name" {
            continue;
        }
        let value = String::from_utf8_lossy(args.next()?).into_owned();
        // QEMU's option syntax: `,,` is a literal comma.
        let value = value.replace(",,", "\u{0}");
        for (i, part) in value.split(',').enumerate() {
            let part = part.replace('\u{0}', ",");
            if let Some(name) = part.strip_prefix("guest=") {
                return Some(name.to_owned());
            }
            if i == 0 && !part.contains('=') {
                return Some(part);
            }
        }
        return None;
    }
    None
}

/// The effective uid of process `pid` (`/proc/PID/status`) and its user's
/// name (the uid itself when it has none).
fn user_of(pid: i32) -> Option<(u32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((uid, user_name(uid).unwrap_or_else(|| uid.to_string())))
}

/// The name of user `uid`, through the C library (NSS: /etc/passwd, LDAP,
/// ...).
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data; getpwuid_r writes it and strings into
    // buf (of the length given), and sets result to it or to NULL.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// What held bytes mean, in QEMU's words: `uses consistent read, write;
/// does not share write`.
pub fn describe_held(held: &Held) -> String {
    let mut parts = Vec::new();
    if !held.perm.is_empty() {
        parts.push(format!("uses {}", held.perm.describe()));
        if held.unshared.is_empty() {
            parts.push("shares everything".to_owned());
        }
    }
    if !held.unshared.is_empty() {
        parts.push(format!("does not share {}", held.unshared.describe()));
    }
    if held.legacy {
        parts.push("holds the graph-mod bytes 104/204 of QEMU 6.2 or older".to_owned());
    }
    if held.libvirt {
        parts.push("holds libvirt's lease on byte 0 (virtlockd)".to_owned());
    }
    parts.join("; ")
}
