//! `fpl check`: would taking the locks succeed now? Takes none.

use std::path::{Path, PathBuf};

use clap::Args;
use fpl::Error;

use crate::request::AccessArgs;
use crate::{escape, json, out, report, EXIT_CONFLICT, EXIT_ERROR, EXIT_OK};

/// `fpl check`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct CheckArgs {
    #[command(flatten)]
    pub access: AccessArgs,

    /// Print a JSON array, one object per image (format below).
    #[arg(short, long)]
    pub json: bool,

    /// The images (files or block devices).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
For each image, says whether the access would be granted, or QEMU's message
for the conflict and the process in the way. Nothing is locked.

With --chain, every file of each image is tested (its data file, its
backing chain), each with what QEMU takes on it for this access (a backing
file is only read, and protected from writers unless the access shares
write); the first file refused is named:
  top.qcow2: write would be refused on base.raw: Failed to get shared
  \"write\" lock (held by qemu-io, pid 4410)
  Is another process using the image [base.raw]?
An image whose chain cannot be resolved (a missing backing file, a loop, a
format fpl does not follow) is an error (exit status 2).

QEMU's locks cannot show a process that uses the image without them (QEMU
with locking=off, an incoming migration's destination): such an image is
granted. --no-unlocked-openers refuses it too, as a conflict (exit status
1), naming the process (found with one walk of /proc per image):
  vm.raw: write would be refused: 'vm.raw' is open read-write by qemu-io
  (pid 4410, fd 9) without locks: ...

Exit status: 0 if the access would be granted on every image, 1 if some image
is in use in a conflicting way (or, with --no-unlocked-openers, open without
locks), 2 if some image could not be tested (or the
command line is wrong, or the output could not be written; a closed pipe, as
with `| head`, is no error).

JSON (--json): an array with one object per image, in command-line order,
each on a line of its own:
  {\"path\": \"a.img\", \"ok\": true}
  {\"path\": \"b.img\", \"ok\": false, \"error\": MESSAGE, \"errno\": 11,
   \"conflict\": {\"byte\": 201, \"perm\": \"write\",
                \"message\": \"Failed to get \\\"write\\\" lock\",
                \"holder\": {\"pid\": 4410, \"name\": \"qemu-io\"} or null}}
   (with --chain, \"conflict\" also has \"member\": the file refused)
  {\"path\": \"d.img\", \"ok\": false, \"error\": MESSAGE, \"errno\": 16,
   \"opener\": {\"pid\": 4410, \"fd\": 9, \"name\": \"qemu-io\",
              \"access\": [\"read\", \"write\"]}}   (--no-unlocked-openers;
   with --chain also \"member\")
  {\"path\": \"c.img\", \"ok\": false, \"error\": MESSAGE, \"errno\": 2, \"hint\": ...}";

/// Runs `fpl check`; returns the exit status.
pub fn run(args: &CheckArgs) -> u8 {
    let request = args.access.request();
    let options = args.access.options();
    let what = args.access.describe();
    let outcomes: Vec<(&Path, Result<(), Error>)> = args
        .images
        .iter()
        .map(|path| {
            let outcome = if args.access.chain {
                fpl::ChainLock::check(path, request, options)
            } else {
                fpl::check(path, request, options)
            };
            (path.as_path(), outcome)
        })
        .collect();
    if args.json {
        json::print(
            outcomes
                .iter()
                .map(|(p, o)| json::check(p, o, args.access.chain))
                .collect(),
        );
    } else {
        for (path, outcome) in &outcomes {
            print_outcome(path, &what, outcome);
        }
    }
    exit_status(outcomes.iter().map(|(_, o)| o))
}

/// `a.img: exclusive would be granted`, or refused with QEMU's message on
/// standard output; an error on standard error. A refusal on another file
/// than the one named (a member of its chain) says which.
pub fn print_outcome(path: &Path, what: &str, outcome: &Result<(), Error>) {
    let shown = escape::path(path);
    match outcome {
        Ok(()) => out(&format!("{shown}: {what} would be granted")),
        Err(e) if report::refused(e) => {
            out(&format!(
                "{shown}: {what} would be refused{}: {}",
                report::on_member(path, e),
                escape::error(e)
            ));
        }
        Err(e) => report::print_error(path, e),
    }
}

/// 2 if anything could not be tested, else 1 if anything conflicts (or,
/// with `--no-unlocked-openers`, is open without locks), else 0.
pub fn exit_status<'a>(outcomes: impl Iterator<Item = &'a Result<(), Error>>) -> u8 {
    outcomes.fold(EXIT_OK, |worst, o| match o {
        Ok(()) => worst,
        Err(e) if report::refused(e) => worst.max(EXIT_CONFLICT),
        Err(_) => EXIT_ERROR,
    })
}
