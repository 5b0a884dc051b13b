//! Handing an image over from one process to another, as QEMU's live
//! migration does, without the moment QEMU leaves nobody protecting it.
//!
//! A thin layer over [`ChainLock`]: each [`Phase`] is one request on the
//! whole image, and moving between phases is [`ChainLock::update`] (prepare
//! on every member, then commit, or abort so that a refusal leaves every
//! member exactly as it was). What it adds is the order and the requests.
//!
//! QEMU's sequence (CHAINS.md §4): the destination opens every file while
//! the source runs, holding no byte; at switchover the source inactivates
//! (top and mid keep 100, the base nothing); the destination then activates
//! and takes the VM disk's bytes. Between the two, nobody holds 201 or 203
//! on any file, and a writer that comes in then wins: the destination's
//! activation fails and neither VM runs.
//!
//! The hand-over here adds one step, [`Phase::Protecting`], which both
//! sides can hold at once (read, not sharing write or resize: 100, 201,
//! 203, plus 202 in strict mode), so that 201 and 203 are never free:
//!
//! | step | source | destination | 201/203 held by |
//! |---|---|---|---|
//! | 0 | [`Phase::Active`] | — | source |
//! | 1 | Active | opens: [`Phase::Incoming`] (100) | source |
//! | 2 | steps down: [`Phase::Protecting`] (never refused) | Incoming | source |
//! | 3 | Protecting | tightens: Protecting | both |
//! | 4 | steps down: [`Phase::Inactive`] (100; never refused) | Protecting | destination |
//! | 5 | Inactive | tightens: Active | destination |
//! | 6 | releases (exits) | Active | destination |
//!
//! Steps 3 and 5 are the only ones that can be refused. Taken out of order
//! they are refused, not harmful: the destination cannot protect while the
//! source still writes (step 3 before 2: `Failed to get shared "write"
//! lock`), nor activate while the source still protects (5 before 4).
//! A refusal leaves that side exactly as it was, and the way back is the
//! same steps in the other direction: the source goes Inactive → Protecting
//! (possible while the destination protects too) → Active once the
//! destination has stepped down to Incoming or released. A third process
//! that only reads and refuses writers (a `qemu-io -r`, a backup reading
//! the image) can join in steps 3 and 4, since readers are compatible with
//! readers; it then blocks step 5 and the source's way back until it
//! leaves, but no writer ever gets in.
//!
//! A short refusal can also come from a process merely trying its luck: a
//! QEMU that tries to open the image for writing locks its bytes for a few
//! system calls before it tests and gives up, and a tightening that tests
//! in that moment is refused (PROTOCOL.md §2: both may fail, both never
//! succeed). Such a refusal reads like any other, and its holder may be
//! gone by the time it is reported: retrying a few times, a few
//! milliseconds apart, is the answer.
//!
//! Where libfpl's states differ from QEMU's measured ones: QEMU's incoming
//! side holds no byte (libfpl's [`Phase::Incoming`] holds 100 on every
//! member, so the destination shows up in `/proc/locks` and `fpl query` as
//! a holder, not only as an opener), and QEMU's inactive source holds
//! nothing on a raw base (one chain request cannot leave one member
//! unlocked: [`Phase::Inactive`] holds 100 there too; that only refuses a
//! process that will not share consistent read, such as a mirror target).
//! [`Phase::Protecting`] has no QEMU counterpart; its bytes are those of a
//! read-only QEMU (`readonly=on`).
//!
//! The README's example (both sides written in one place for brevity; they
//! also work in one process, as two open file descriptions conflict):
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("fpl-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # std::env::set_current_dir(&dir)?; // a doc test is a process of its own
//! # let made = std::process::Command::new("qemu-img")
//! #     .args(["create", "-q", "-f", "qcow2", "top.qcow2", "1M"])
//! #     .status()
//! #     .expect("qemu-img runs (Debian: apt-get install qemu-utils)");
//! # assert!(made.success());
//! use std::path::Path;
//! use fpl::handover::{Phase, Side};
//! use fpl::{ChainLock, Mode, Options, Request};
//!
//! let active = Request::new(Mode::Write.perm(), Mode::Write.shared());
//! // The source, running:
//! let mut source = Side::source(ChainLock::acquire(Path::new("top.qcow2"), active, Options::default())?);
//! // The destination, in another process (told each step over the migration stream):
//! let mut dest = Side::destination(Path::new("top.qcow2"), active, Options::default())?;
//! source.enter(Phase::Protecting)?;
//! dest.enter(Phase::Protecting)?;
//! source.enter(Phase::Inactive)?;
//! if let Err(e) = dest.enter(Phase::Active) {
//!     // dest is still Protecting: step back, let the source take over again.
//!     eprintln!("{e}");
//!     dest.enter(Phase::Inactive)?;
//!     source.enter(Phase::Protecting)?;
//!     source.enter(Phase::Active)?;
//! }
//! # assert_eq!(dest.phase(), Phase::Active);
//! # source.release()?;
//! # dest.release()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use crate::chain_lock::ChainLock;
use crate::error::Result;
use crate::lock::Options;
use crate::perm::{Perm, PermSet};
use crate::protocol::Request;

/// Where one side of a hand-over stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The destination before it takes over: reads and shares everything
    /// (the read-shared preset; 100 on every member). QEMU's incoming side
    /// holds nothing at all.
    Incoming,
    /// Reads and refuses writers: 100, 201, 203 (and 202 in strict mode)
    /// on every member, like a read-only QEMU. Both sides can be here at
    /// once; this is what keeps the image protected across the hand-over.
    Protecting,
    /// The source after it handed over: reads and shares everything (100
    /// on every member), QEMU's inactive state (where QEMU leaves a raw
    /// base unlocked).
    Inactive,
    /// The request the image is used with (a VM disk: [`crate::Mode::Write`]).
    Active,
}

impl Phase {
    /// The request of this phase, for an image used with `active`. The
    /// other phases carry `active`'s strict or exact rules.
    pub fn request(self, active: Request) -> Request {
        let read = PermSet::NONE.with(Perm::ConsistentRead);
        let with_rules = |perm, shared| Request {
            perm,
            shared,
            exact: active.exact,
        };
        match self {
            Phase::Incoming | Phase::Inactive => with_rules(read, PermSet::ALL),
            // Sharing write-unchanged as a VM does, so that exact mode holds
            // exactly a read-only QEMU's bytes (strict mode adds 202).
            Phase::Protecting => with_rules(read, read.with(Perm::WriteUnchanged)),
            Phase::Active => active,
        }
    }
}

/// One side of a hand-over: a [`ChainLock`] on the whole image, the
/// request it is used with when active, and the phase it is in.
#[derive(Debug)]
pub struct Side {
    lock: ChainLock,
    active: Request,
    phase: Phase,
}

impl Side {
    /// The source: a lock already held with the request the image is used
    /// with, in [`Phase::Active`].
    pub fn source(lock: ChainLock) -> Side {
        Side {
            active: lock.request(),
            lock,
            phase: Phase::Active,
        }
    }

    /// The destination: locks the image at `path` in [`Phase::Incoming`],
    /// to be tightened to `active` later. Refused only by a process that
    /// does not share consistent read.
    pub fn destination(path: &Path, active: Request, options: Options) -> Result<Side> {
        let lock = ChainLock::acquire(path, Phase::Incoming.request(active), options)?;
        Ok(Side {
            lock,
            active,
            phase: Phase::Incoming,
        })
    }

    /// Moves to `phase` ([`ChainLock::update`] with [`Phase::request`]),
    /// all or nothing over the members. On failure this side is exactly as
    /// it was, still in [`Side::phase`].
    pub fn enter(&mut self, phase: Phase) -> Result<()> {
        self.lock.update(phase.request(self.active))?;
        self.phase = phase;
        Ok(())
    }

    /// The phase this side is in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The request of [`Phase::Active`].
    pub fn active(&self) -> Request {
        self.active
    }

    /// The lock on the image (its members and per-file locks).
    pub fn lock(&self) -> &ChainLock {
        &self.lock
    }

    /// The lock, to go on using it after the hand-over.
    pub fn into_lock(self) -> ChainLock {
        self.lock
    }

    /// Releases every member ([`ChainLock::release`]).
    pub fn release(self) -> Result<()> {
        self.lock.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{derive, Format, Role};
    use crate::perm::Mode;

    /// The bytes a phase holds on top.qcow2 and on its raw backing file.
    fn held(phase: Phase, active: Request) -> (Vec<u32>, Vec<u32>) {
        let request = phase.request(active);
        let on = |role, format, depth| -> Vec<u32> {
            derive(request, role, format, depth)
                .plan()
                .lock
                .iter()
                .collect()
        };
        (
            on(Role::Image, Format::Qcow2, 0),
            on(Role::Backing, Format::Raw, 1),
        )
    }

    fn write() -> Request {
        Request::new(Mode::Write.perm(), Mode::Write.shared())
    }

    /// A VM disk's request in exact mode: shares write-unchanged.
    fn vm_disk_exact() -> Request {
        Request {
            shared: Mode::Write.shared().with(Perm::WriteUnchanged),
            exact: true,
            ..write()
        }
    }

    #[test]
    fn each_phase_holds_the_documented_bytes() {
        let read = vec![100];
        let protected = vec![100, 201, 202, 203];
        assert_eq!(held(Phase::Incoming, write()), (read.clone(), read.clone()));
        assert_eq!(held(Phase::Inactive, write()), (read.clone(), read.clone()));
        assert_eq!(
            held(Phase::Protecting, write()),
            (protected.clone(), protected.clone())
        );
        assert_eq!(
            held(Phase::Active, write()),
            (vec![100, 101, 103, 201, 202, 203], protected)
        );
    }

    #[test]
    fn a_qcow2_backing_file_is_held_like_the_top_but_never_written() {
        let mid = |phase: Phase| -> Vec<u32> {
            derive(phase.request(write()), Role::Backing, Format::Qcow2, 1)
                .plan()
                .lock
                .iter()
                .collect()
        };
        // QEMU's inactive source keeps R on a qcow2 mid, as here.
        assert_eq!(mid(Phase::Inactive), vec![100]);
        assert_eq!(mid(Phase::Protecting), vec![100, 201, 202, 203]);
        assert_eq!(mid(Phase::Active), vec![100, 201, 202, 203]);
    }

    #[test]
    fn using_and_sharing_nothing_holds_nothing_as_qemus_incoming_side() {
        let nothing = Request::new(PermSet::NONE, PermSet::ALL);
        for (role, format, depth) in [
            (Role::Image, Format::Qcow2, 0),
            (Role::Backing, Format::Qcow2, 1),
            (Role::Backing, Format::Raw, 2),
        ] {
            assert!(derive(nothing, role, format, depth).plan().lock.is_empty());
        }
    }

    #[test]
    fn exact_mode_with_a_vm_disk_request_holds_qemus_bytes() {
        // CHAINS.md §4: RWX on top, RP on the base while active; a
        // read-only QEMU's RP for the protecting step; force-share's R.
        let rp = vec![100, 201, 203];
        let active = vm_disk_exact();
        assert_eq!(
            held(Phase::Active, active),
            (vec![100, 101, 103, 201, 203], rp.clone())
        );
        assert_eq!(held(Phase::Protecting, active), (rp.clone(), rp));
        assert_eq!(held(Phase::Inactive, active), (vec![100], vec![100]));
    }

    #[test]
    fn the_source_steps_down_without_tests() {
        // A loosening is never tested, so steps 2 and 4 cannot be refused.
        for active in [write(), vm_disk_exact()] {
            for (role, format, depth) in [
                (Role::Image, Format::Qcow2, 0),
                (Role::Backing, Format::Raw, 1),
                (Role::Image, Format::Raw, 0),
            ] {
                let plan = |p: Phase| derive(p.request(active), role, format, depth).plan();
                assert!(plan(Phase::Protecting).only_loosens(&plan(Phase::Active)));
                assert!(plan(Phase::Inactive).only_loosens(&plan(Phase::Protecting)));
                // The destination's steps tighten, and are tested (a backing
                // file's Active is its Protecting: nothing to tighten there).
                assert!(!plan(Phase::Protecting).only_loosens(&plan(Phase::Incoming)));
                if role == Role::Image {
                    assert!(!plan(Phase::Active).only_loosens(&plan(Phase::Protecting)));
                }
            }
        }
    }
}
