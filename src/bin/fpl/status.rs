//! `fpl status`: whether each image is free, or who holds it and for what,
//! in words. `/proc` is walked once for all the images, not once each.

use std::path::{Path, PathBuf};

use clap::Args;
use fpl::{Error, Held, Holder, Status};

use crate::{chain_status, escape, json, out, report, EXIT_ERROR, EXIT_OK};

/// `fpl status`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct StatusArgs {
    /// Print a JSON array, one object per image (format below).
    #[arg(long)]
    pub json: bool,

    /// Only test the lock bytes; do not look through /proc for the processes
    /// holding them.
    #[arg(long)]
    pub no_holders: bool,

    /// Show each image as the tree of files QEMU opens for it (its data
    /// file, its backing chain), who holds each, and which of the other
    /// images named refer to it (format below).
    #[arg(long)]
    pub chain: bool,

    /// The images (files or block devices).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
Each image is `free`, or one line per holder says what it uses and what it
does not share, in QEMU's words. Bytes held by nobody visible are reported as
`held by a process fpl cannot see` (another host sharing the file
system, another PID namespace, or a process fpl may not inspect): never as
free. Control characters in process names and paths are shown escaped
(`\\x1b`, `\\t`, `\\u{9b}`, and `\\\\` for a backslash); --json gives them exactly.

Exit status: 0 if every image could be inspected, 2 otherwise (or if the
output could not be written; a closed pipe, as with `| head`, is no error).

JSON (--json): an array with one object per image, in command-line order,
each on a line of its own:
  {\"path\": \"vm.qcow2\",
   \"perm\": [\"consistent-read\", \"write\", \"resize\"],  (bytes 100+i held)
   \"unshared\": [\"write\", \"resize\"],                   (bytes 200+i held)
   \"flags\": [],     (\"legacy\": 104/204 held, \"libvirt\": byte 0 held,
                     \"holders-partial\": some process could not be inspected)
   \"holders\": [{\"pid\": 4410, \"fd\": 12, \"name\": \"qemu-storage-da\",
                \"perm\": [...], \"unshared\": [...], \"flags\": [...]}]}
`holders` is left out with --no-holders. An image that could not be
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

/// Tests each image's bytes, then (with `holders`) names the holders of all
/// of them with one walk of `/proc` (`fpl::query_many`).
pub fn inspect(paths: &[PathBuf], holders: bool) -> Vec<Inspected> {
    fpl::query::query_many(paths, holders)
        .into_iter()
        .zip(paths)
        .map(|(outcome, path)| Inspected {
            path: path.clone(),
            outcome,
        })
        .collect()
}

/// Runs `fpl status`; returns the exit status.
pub fn run(args: &StatusArgs) -> u8 {
    let holders = !args.no_holders;
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
        for i in &inspected {
            match &i.outcome {
                Ok(status) => {
                    for line in describe_status(&i.path, status, holders) {
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

/// The lines `fpl status` prints for one inspected image.
pub fn describe_status(path: &Path, status: &Status, holders_looked_up: bool) -> Vec<String> {
    let path = escape::path(path);
    describe(status, holders_looked_up)
        .into_iter()
        .map(|line| format!("{path}: {line}"))
        .collect()
}

/// What `fpl status` says of one image, a line each, without the image's
/// name: `free`, `in use by qemu-io (pid 4410, fd 12): uses ...`, or bytes
/// held by a process fpl cannot see and a note on why.
pub fn describe(status: &Status, holders_looked_up: bool) -> Vec<String> {
    if status.held.is_empty() && status.holders.is_empty() {
        return vec!["free".to_owned()];
    }
    if !holders_looked_up {
        return vec![format!("in use: {}", describe_held(&status.held))];
    }
    let mut lines: Vec<String> = status
        .holders
        .iter()
        .map(|h| format!("in use by {}: {}", who(h), describe_held(&h.held)))
        .collect();
    // Bytes the test found that no holder in /proc accounts for.
    let seen = status
        .holders
        .iter()
        .fold(Held::default(), |all, h| all.union(h.held));
    let unseen = minus(status.held, seen);
    if !unseen.is_empty() {
        let (prefix, held) = if lines.is_empty() {
            ("held", status.held)
        } else {
            ("also held", unseen)
        };
        lines.push(format!(
            "{prefix} by a process fpl cannot see: {}",
            describe_held(&held)
        ));
        lines.push(if status.holders_partial {
            "note: some processes could not be inspected; \
             run fpl as root to name every holder"
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

/// `qemu-io (pid 4410, fd 12)`.
fn who(h: &Holder) -> String {
    if h.name.is_empty() {
        format!("pid {} (fd {})", h.pid, h.fd)
    } else {
        format!("{} (pid {}, fd {})", escape::escape(&h.name), h.pid, h.fd)
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

/// The bytes of `a` that `b` does not hold.
fn minus(a: Held, b: Held) -> Held {
    Held {
        perm: a.perm.minus(b.perm),
        unshared: a.unshared.minus(b.unshared),
        legacy: a.legacy && !b.legacy,
        libvirt: a.libvirt && !b.libvirt,
    }
}
