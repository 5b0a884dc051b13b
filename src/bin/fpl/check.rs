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
    #[arg(long)]
    pub json: bool,

    /// The images (files or block devices).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
For each image, says whether the access would be granted, or QEMU's message
for the conflict and the process in the way. Nothing is locked.

Exit status: 0 if the access would be granted on every image, 1 if some image
is in use in a conflicting way, 2 if some image could not be tested (or the
command line is wrong, or the output could not be written; a closed pipe, as
with `| head`, is no error).

JSON (--json): an array with one object per image, in command-line order,
each on a line of its own:
  {\"path\": \"a.img\", \"ok\": true}
  {\"path\": \"b.img\", \"ok\": false, \"error\": MESSAGE, \"errno\": 11,
   \"conflict\": {\"byte\": 201, \"perm\": \"write\",
                \"message\": \"Failed to get \\\"write\\\" lock\",
                \"holder\": {\"pid\": 4410, \"name\": \"qemu-io\"} or null}}
  {\"path\": \"c.img\", \"ok\": false, \"error\": MESSAGE, \"errno\": 2, \"hint\": ...}";

/// Runs `fpl check`; returns the exit status.
pub fn run(args: &CheckArgs) -> u8 {
    let request = args.access.request();
    let options = args.access.options();
    let what = args.access.describe();
    let outcomes: Vec<(&Path, Result<(), Error>)> = args
        .images
        .iter()
        .map(|path| (path.as_path(), fpl::check(path, request, options)))
        .collect();
    if args.json {
        json::print(outcomes.iter().map(|(p, o)| json::check(p, o)).collect());
    } else {
        for (path, outcome) in &outcomes {
            print_outcome(path, &what, outcome);
        }
    }
    exit_status(outcomes.iter().map(|(_, o)| o))
}

/// `a.img: exclusive would be granted`, or refused with QEMU's message on
/// standard output; an error on standard error.
pub fn print_outcome(path: &Path, what: &str, outcome: &Result<(), Error>) {
    let shown = escape::path(path);
    match outcome {
        Ok(()) => out(&format!("{shown}: {what} would be granted")),
        Err(e) if e.conflict().is_some() => {
            out(&format!(
                "{shown}: {what} would be refused: {}",
                escape::error(e)
            ));
        }
        Err(e) => report::print_error(path, e),
    }
}

/// 2 if anything could not be tested, else 1 if anything conflicts, else 0.
pub fn exit_status<'a>(outcomes: impl Iterator<Item = &'a Result<(), Error>>) -> u8 {
    outcomes.fold(EXIT_OK, |worst, o| match o {
        Ok(()) => worst,
        Err(e) if e.conflict().is_some() => worst.max(EXIT_CONFLICT),
        Err(_) => EXIT_ERROR,
    })
}
