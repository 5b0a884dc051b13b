//! libfpl: take, change, test and inspect QEMU's image locks (file-posix
//! byte-range locking) from any program, exactly as QEMU does.
//!
//! QEMU marks what it does with an image by shared OFD read locks on single
//! bytes: 100+i for "I use permission i", 200+i for "I do not share it".
//! A process locks its bytes first, then tests for conflicting ones, and
//! rolls back on conflict ([`Lock::acquire`]). By default libfpl follows the
//! stricter rules proposed for new software on qemu-devel in 2021;
//! [`Request::exact`] makes it lock and test byte for byte what QEMU would.
//! [`query()`] reports which bytes are held and names the processes holding
//! them, which QEMU itself cannot do.
//!
//! ```no_run
//! use std::path::Path;
//! use fpl::{Lock, Mode, Options, Request};
//!
//! let req = Request::new(Mode::Write.perm(), Mode::Write.shared());
//! match Lock::acquire(Path::new("vm.qcow2"), req, Options::default()) {
//!     Ok(lock) => { /* write the image */ lock.release()?; }
//!     Err(e) => eprintln!("{e}"), // Failed to get "write" lock (held by ...)
//! }
//! # Ok::<(), fpl::Error>(())
//! ```
//!
//! The C ABI (`include/fpl.h`) is in [`ffi`]; PROTOCOL.md and the README
//! describe the protocol.

#![deny(missing_docs)]

pub mod chain;
pub mod chain_lock;
mod closing;
pub mod error;
pub mod fcntl;
pub mod fdinfo;
pub mod ffi;
pub mod handover;
pub mod holders;
pub mod image;
mod json;
pub mod lock;
mod openers;
mod panic;
pub mod perm;
pub mod protocol;
pub mod qcow2;
pub mod query;
pub mod wait;

pub use chain_lock::ChainLock;
pub use error::{Conflict, ConflictKind, Error, HolderId, Result};
pub use holders::{FileId, Holder, Node};
pub use lock::{check, Lock, Options};
pub use perm::{Mode, Perm, PermSet};
pub use protocol::{ByteSet, Held, Request};
pub use query::{query, Status};
