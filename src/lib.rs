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
//! ```
//! use fpl::{Lock, Mode, Options, Request};
//! # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let image = dir.join("vm.img");
//! std::fs::write(&image, vec![0u8; 1 << 20])?; // a raw image
//!
//! // What a running VM's disk holds: read, write and resize, sharing only reads.
//! let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
//! let lock = Lock::acquire(&image, write, Options::default())?;
//!
//! // A second writer is refused, with QEMU's words. (Here the same process
//! // opens the image again: two open file descriptions conflict like two
//! // processes do.)
//! let refused = Lock::acquire(&image, write, Options::default()).unwrap_err();
//! let conflict = refused.conflict().expect("a conflict, not an OS error");
//! assert_eq!(conflict.byte, 201); // the first lock byte found in the way
//! assert!(refused.to_string().starts_with("Failed to get \"write\" lock"));
//!
//! lock.release()?; // or drop it
//! Lock::acquire(&image, write, Options::default())?.release()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Changing a held lock is [`Lock::update`], locks on a whole image (its
//! backing chain and data file) are [`ChainLock`], a lock that a shared file
//! system may have dropped is checked with [`Lock::verify`], and a
//! hypervisor's whole disk lifecycle (open, run, snapshot, downgrade, hand
//! over) is `examples/hypervisor.rs` (`cargo run --example hypervisor --
//! DIR`).
//!
//! Features: `cli` (default) builds the `fpl` command and what only it
//! needs. An embedding crate that wants the library alone sets
//! `default-features = false`; it then depends on `libc`, `nix` and
//! `thiserror` only.
//!
//! The C ABI (`include/fpl.h`) is in [`ffi`]; docs/PROTOCOL.md and the README
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
