//! `fpl status`: whether each image is free, or who holds it and for what,
//! in words. `/proc` is walked once for all the images, not once each.

use std::path::{Path, PathBuf};

use clap::Args;
use fpl::{Error, Held, Holder, Status};

use crate::{escape, json, out, report, EXIT_ERROR, EXIT_OK};

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
inspected: {\"path\": ..., \"error\": MESSAGE, \"errno\": N} (plus \"hint\").";

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
    if status.held.is_empty() && status.holders.is_empty() {
        return vec![format!("{path}: free")];
    }
    if !holders_looked_up {
        return vec![format!("{path}: in use: {}", describe_held(&status.held))];
    }
    let mut lines: Vec<String> = status
        .holders
        .iter()
        .map(|h| format!("{path}: in use by {}: {}", who(h), describe_held(&h.held)))
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
            "{path}: {prefix} by a process fpl cannot see: {}",
            describe_held(&held)
        ));
        lines.push(if status.holders_partial {
            format!(
                "{path}: note: some processes could not be inspected; \
                 run fpl as root to name every holder"
            )
        } else {
            format!(
                "{path}: note: no process fpl can see holds these bytes: the holder \
                 may run on another host sharing the file system, or in another PID \
                 namespace"
            )
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
