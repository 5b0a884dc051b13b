//! The access a command asks for: a preset (`--mode`) or QEMU's permission
//! lists (`--perm` / `--share`), with `--exact`, `--chain` and `--allow-posix`.

use clap::{ArgGroup, Args};
use fpl::{Mode, Options, PermSet, Request};

const MODE_HELP: &str = "A preset:
  read-shared  read, sharing everything (like `qemu-img -U`)
  read         read a stable image: nobody may write or resize it meanwhile
  write        read, write and resize; others may only read (like a VM's disk)
  exclusive    read, write and resize, sharing nothing";

/// The options `check` and `hold` share.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("access").required(true).args(["mode", "perm"])))]
pub struct AccessArgs {
    /// A preset: read-shared, read, write or exclusive.
    #[arg(short, long, value_name = "MODE", value_parser = parse_mode, long_help = MODE_HELP)]
    pub mode: Option<Mode>,

    /// The permissions to use: a comma-separated list of QEMU's names
    /// (consistent-read, write, write-unchanged, resize), or all, or none.
    #[arg(long, value_name = "LIST", value_parser = parse_perm_list, requires = "share")]
    pub perm: Option<PermSet>,

    /// The permissions to let others use, as for --perm.
    #[arg(long, value_name = "LIST", value_parser = parse_perm_list, requires = "perm", conflicts_with = "mode")]
    pub share: Option<PermSet>,

    /// Lock and test exactly the bytes QEMU would, instead of the stricter
    /// rules for new software (which never lock byte 102, treat
    /// write-unchanged as write and make resize imply write).
    #[arg(long)]
    pub exact: bool,

    /// Every file of each image: its data file and its backing chain too,
    /// each with what QEMU would take on it for this access (a backing
    /// file is only read). A refusal names the file.
    #[arg(long)]
    pub chain: bool,

    /// Also refuse while another process has the image (with --chain: any
    /// of its files) open without holding any of its locks: QEMU with
    /// locking=off, or an incoming migration's destination before it
    /// takes over. QEMU's protocol cannot see them: fpl looks in /proc
    /// after taking (for check: testing) the locks. Refused like a
    /// conflict (check: exit status 1, hold: 75).
    #[arg(long)]
    pub no_unlocked_openers: bool,

    /// On a kernel without open file description locks (before Linux 3.15),
    /// fall back to process-wide POSIX locks instead of failing.
    #[arg(long)]
    pub allow_posix: bool,
}

impl AccessArgs {
    /// The library request.
    pub fn request(&self) -> Request {
        let (perm, shared) = match self.mode {
            Some(mode) => (mode.perm(), mode.shared()),
            None => (
                self.perm.unwrap_or(PermSet::NONE),
                self.share.unwrap_or(PermSet::NONE),
            ),
        };
        Request {
            perm,
            shared,
            exact: self.exact,
        }
    }

    /// The library options.
    pub fn options(&self) -> Options {
        Options {
            allow_posix: self.allow_posix,
            refuse_unlocked_openers: self.no_unlocked_openers,
            ..Options::default()
        }
    }

    /// The access in the words the user gave: `exclusive`, or
    /// `perm consistent-read,write, share consistent-read`.
    pub fn describe(&self) -> String {
        match self.mode {
            Some(mode) => mode.name().to_owned(),
            None => {
                let req = self.request();
                format!(
                    "perm {}, share {}",
                    list_words(req.perm),
                    list_words(req.shared)
                )
            }
        }
    }
}

/// A permission set as `--perm` takes it: `consistent-read,write`, `all`, `none`.
pub fn list_words(set: PermSet) -> String {
    if set.is_empty() {
        "none".to_owned()
    } else if set == PermSet::ALL {
        "all".to_owned()
    } else {
        set.iter()
            .map(|p| p.cli_name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_mode(name: &str) -> Result<Mode, String> {
    Mode::from_name(name).map_err(|e| e.to_string())
}

fn parse_perm_list(list: &str) -> Result<PermSet, String> {
    PermSet::parse_list(list).map_err(|e| e.to_string())
}
