//! Holds the whole image named by its argument as a VM's disk until its
//! standard input ends: `held PID` when it has the locks, `released` after.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use fpl::{ChainLock, Mode, Options, Request};

fn main() -> ExitCode {
    let Some(image) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fpl-embed IMAGE");
        return ExitCode::from(2);
    };
    let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
    let disk = match ChainLock::acquire(&image, write, Options::default()) {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("fpl-embed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("held {}", std::process::id());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    if let Err(e) = disk.release() {
        eprintln!("fpl-embed: {e}");
        return ExitCode::FAILURE;
    }
    println!("released");
    ExitCode::SUCCESS
}
