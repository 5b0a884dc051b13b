//! The pure protocol: which bytes to lock and which to test for a request.
//!
//! No file descriptors here. [`Request::plan`] turns (perm, shared, exact)
//! into a [`Plan`]: the bytes to hold (F_RDLCK, length 1 each) and the tests
//! to run (F_GETLK asking for F_WRLCK), in QEMU's order, each with the
//! permission its message names. PROTOCOL.md §2 (QEMU's `raw_apply_lock_bytes`
//! and `raw_check_lock_bytes`) and §4 (the strict rules) are the reference.

use std::fmt;

use crate::perm::{Perm, PermSet};

/// First "I use permission i" byte.
pub const USE_BASE: u32 = 100;
/// First "I do not share permission i" byte.
pub const UNSHARE_BASE: u32 = 200;
/// The byte libvirt's virtlockd leases (a POSIX lock on byte 0).
pub const LIBVIRT_BYTE: u32 = 0;
/// The graph-mod bytes that only QEMU <= 6.2 locks.
pub const LEGACY_BYTES: [u32; 2] = [104, 204];

/// A set of lock bytes among 100-103 and 200-203.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteSet {
    uses: PermSet,
    unshares: PermSet,
}

impl ByteSet {
    /// No byte.
    pub const EMPTY: ByteSet = ByteSet {
        uses: PermSet::NONE,
        unshares: PermSet::NONE,
    };

    /// The bytes 100+i for `uses` and 200+i for `unshares`.
    pub const fn new(uses: PermSet, unshares: PermSet) -> ByteSet {
        ByteSet { uses, unshares }
    }

    /// The permissions whose byte 100+i is in the set.
    pub const fn uses(self) -> PermSet {
        self.uses
    }

    /// The permissions whose byte 200+i is in the set.
    pub const fn unshares(self) -> PermSet {
        self.unshares
    }

    /// Whether `byte` is in the set.
    pub fn contains(self, byte: u32) -> bool {
        match byte {
            100..=103 => Perm::from_index(byte - USE_BASE).is_some_and(|p| self.uses.contains(p)),
            200..=203 => {
                Perm::from_index(byte - UNSHARE_BASE).is_some_and(|p| self.unshares.contains(p))
            }
            _ => false,
        }
    }

    /// The set with `byte` added (bytes outside 100-103/200-203 are ignored).
    pub fn with(self, byte: u32) -> ByteSet {
        match byte {
            100..=103 => Perm::from_index(byte - USE_BASE).map_or(self, |p| ByteSet {
                uses: self.uses.with(p),
                ..self
            }),
            200..=203 => Perm::from_index(byte - UNSHARE_BASE).map_or(self, |p| ByteSet {
                unshares: self.unshares.with(p),
                ..self
            }),
            _ => self,
        }
    }

    /// Bytes in either set.
    pub fn union(self, other: ByteSet) -> ByteSet {
        ByteSet {
            uses: self.uses.union(other.uses),
            unshares: self.unshares.union(other.unshares),
        }
    }

    /// Bytes in `self` but not in `other`.
    pub fn minus(self, other: ByteSet) -> ByteSet {
        ByteSet {
            uses: self.uses.minus(other.uses),
            unshares: self.unshares.minus(other.unshares),
        }
    }

    /// Whether every byte of `other` is in `self`.
    pub fn is_superset(self, other: ByteSet) -> bool {
        other.minus(self).is_empty()
    }

    /// Whether the set has no byte.
    pub fn is_empty(self) -> bool {
        self.uses.is_empty() && self.unshares.is_empty()
    }

    /// The bytes, ascending.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        let uses = self.uses.iter().map(Perm::use_byte);
        let unshares = self.unshares.iter().map(Perm::unshare_byte);
        uses.chain(unshares)
    }

    /// The bytes as maximal runs of adjacent bytes `(first, len)`, ascending:
    /// what one fcntl call each can lock, unlock or test.
    pub fn runs(self) -> Vec<(u32, u32)> {
        self.run_iter().collect()
    }

    /// [`ByteSet::runs`] without allocating.
    pub fn run_iter(self) -> impl Iterator<Item = (u32, u32)> {
        let mut bytes = self.iter().peekable();
        std::iter::from_fn(move || {
            let first = bytes.next()?;
            let mut len = 1;
            while bytes.next_if_eq(&(first + len)).is_some() {
                len += 1;
            }
            Some((first, len))
        })
    }
}

impl fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<u32> for ByteSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> ByteSet {
        iter.into_iter().fold(ByteSet::EMPTY, ByteSet::with)
    }
}

/// Which of the protocol's bytes are held (by anybody, or by one holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Permissions whose byte 100+i is held.
    pub perm: PermSet,
    /// Permissions whose byte 200+i is held.
    pub unshared: PermSet,
    /// Byte 104 or 204 is held: QEMU <= 6.2's graph-mod permission.
    pub legacy: bool,
    /// Byte 0 is held: a libvirt virtlockd lease.
    pub libvirt: bool,
}

impl Held {
    /// Marks every protocol byte in `first ..= last` (`None`: to the end of
    /// the file) as held.
    pub fn add_range(&mut self, first: u64, last: Option<u64>) {
        let covers = |b: u32| first <= u64::from(b) && last.is_none_or(|l| u64::from(b) <= l);
        for p in Perm::ALL {
            if covers(p.use_byte()) {
                self.perm = self.perm.with(p);
            }
            if covers(p.unshare_byte()) {
                self.unshared = self.unshared.with(p);
            }
        }
        self.legacy |= LEGACY_BYTES.into_iter().any(covers);
        self.libvirt |= covers(LIBVIRT_BYTE);
    }

    /// Whether `byte` is held (any of 0, 100-104, 200-204).
    pub fn covers(&self, byte: u32) -> bool {
        match byte {
            LIBVIRT_BYTE => self.libvirt,
            104 | 204 => self.legacy,
            _ => ByteSet::new(self.perm, self.unshared).contains(byte),
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        *self == Held::default()
    }

    /// Both together.
    pub fn union(self, other: Held) -> Held {
        Held {
            perm: self.perm.union(other.perm),
            unshared: self.unshared.union(other.unshared),
            legacy: self.legacy || other.legacy,
            libvirt: self.libvirt || other.libvirt,
        }
    }

    /// What `self` holds that `other` does not.
    pub fn minus(self, other: Held) -> Held {
        Held {
            perm: self.perm.minus(other.perm),
            unshared: self.unshared.minus(other.unshared),
            legacy: self.legacy && !other.legacy,
            libvirt: self.libvirt && !other.libvirt,
        }
    }
}

/// One conflict test: "could I lock `byte` exclusively?" (F_GETLK, F_WRLCK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Test {
    /// The byte tested.
    pub byte: u32,
    /// The permission the caller asked for (testing 200+i) or refuses to
    /// share (testing 100+i): the one QEMU's message names.
    pub perm: Perm,
}

impl Test {
    /// Whether this test guards something the caller does not share (a test
    /// of a "use" byte): QEMU then says `Failed to get shared "..." lock`.
    pub fn is_shared(self) -> bool {
        self.byte < UNSHARE_BASE
    }
}

/// A request for locks: what the caller uses, what it shares, which rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The permissions the caller uses.
    pub perm: PermSet,
    /// The permissions the caller lets others use.
    pub shared: PermSet,
    /// Lock and test exactly what QEMU would (`FPL_FLAG_EXACT`); otherwise the
    /// strict rules of PROTOCOL.md §4 apply.
    pub exact: bool,
}

/// What to lock and what to test for a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The bytes to hold.
    pub lock: ByteSet,
    /// The tests, in the order QEMU runs them: the first that fails names
    /// the conflict.
    pub tests: Vec<Test>,
}

impl Plan {
    /// Every byte some test looks at.
    pub fn tested(&self) -> ByteSet {
        self.tests.iter().map(|t| t.byte).collect()
    }

    /// Whether going from `old` to `self` only loosens: nothing new to hold
    /// and nothing new to test, so no conflict can arise (PROTOCOL.md §2).
    pub fn only_loosens(&self, old: &Plan) -> bool {
        old.lock.is_superset(self.lock) && old.tested().is_superset(self.tested())
    }
}

impl Request {
    /// A request in strict mode.
    pub fn new(perm: PermSet, shared: PermSet) -> Request {
        Request {
            perm,
            shared,
            exact: false,
        }
    }

    /// The bytes to lock and the tests to run.
    pub fn plan(self) -> Plan {
        if self.exact {
            self.plan_exact()
        } else {
            self.plan_strict()
        }
    }

    /// QEMU's own rule: 100+i for each used bit, 200+i for each bit not
    /// shared; test 200+i for each used bit, then 100+i for each bit not shared.
    fn plan_exact(self) -> Plan {
        let unshared = self.shared.complement();
        let lock = ByteSet::new(self.perm, unshared);
        let mut tests = Vec::with_capacity(8);
        tests.extend(self.perm.iter().map(|perm| Test {
            byte: perm.unshare_byte(),
            perm,
        }));
        tests.extend(unshared.iter().map(|perm| Test {
            byte: perm.use_byte(),
            perm,
        }));
        Plan { lock, tests }
    }

    /// PROTOCOL.md §4. Write-unchanged is write (rules 1, 2), resize needs
    /// write (rule 5); not sharing write means holding 201, 202 and 203 (rules
    /// 3, 4); using write tests 201 and 202, refusing it tests 101 and 102
    /// (rules 2, 7). Nothing ever locks 102, 104 or 204 (rules 1, 6).
    fn plan_strict(self) -> Plan {
        let (perm, unshared) = self.strict_sets();
        let mut lock = ByteSet::new(perm, unshared);
        if unshared.contains(Perm::Write) {
            lock = lock.with(Perm::WriteUnchanged.unshare_byte());
        }
        let mut tests = Vec::with_capacity(10);
        for p in perm.iter() {
            tests.push(Test {
                byte: p.unshare_byte(),
                perm: p,
            });
            if p == Perm::Write {
                tests.push(Test {
                    byte: Perm::WriteUnchanged.unshare_byte(),
                    perm: p,
                });
            }
        }
        for p in unshared.iter() {
            tests.push(Test {
                byte: p.use_byte(),
                perm: p,
            });
            if p == Perm::Write {
                tests.push(Test {
                    byte: Perm::WriteUnchanged.use_byte(),
                    perm: p,
                });
            }
        }
        Plan { lock, tests }
    }

    /// The permissions used and refused under the strict rules, with
    /// write-unchanged folded into write.
    fn strict_sets(self) -> (PermSet, PermSet) {
        let mut perm = self.perm;
        if perm.contains(Perm::WriteUnchanged) || perm.contains(Perm::Resize) {
            perm = perm.with(Perm::Write);
        }
        let perm = perm.without(Perm::WriteUnchanged);
        // Sharing write means sharing both kinds of write: refusing either
        // one refuses writers, and with them resizers (rule 4).
        let mut unshared = self.shared.complement();
        if unshared.contains(Perm::WriteUnchanged) || unshared.contains(Perm::Write) {
            unshared = unshared.with(Perm::Write).with(Perm::Resize);
        }
        (perm, unshared.without(Perm::WriteUnchanged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perm::Mode;

    const CR: u32 = 0x01;
    const W: u32 = 0x02;
    const WU: u32 = 0x04;
    const RS: u32 = 0x08;

    fn req(perm: u32, shared: u32, exact: bool) -> Request {
        Request {
            perm: PermSet::from_bits(perm).unwrap_or_default(),
            shared: PermSet::from_bits(shared).unwrap_or_default(),
            exact,
        }
    }

    fn bytes(plan: &Plan) -> Vec<u32> {
        plan.lock.iter().collect()
    }

    fn tests(plan: &Plan) -> Vec<u32> {
        plan.tests.iter().map(|t| t.byte).collect()
    }

    // The oracle, written byte by byte from PROTOCOL.md and independent of the
    // set algebra above: is `byte` locked / tested for (perm, shared)?
    fn exact_locks(byte: u32, perm: u32, shared: u32) -> bool {
        match byte {
            100..=103 => perm & (1 << (byte - 100)) != 0,
            200..=203 => shared & (1 << (byte - 200)) == 0,
            _ => false,
        }
    }

    fn strict_writes(perm: u32) -> bool {
        perm & (W | WU | RS) != 0
    }

    fn strict_refuses_write(shared: u32) -> bool {
        shared & W == 0 || shared & WU == 0
    }

    fn strict_locks(byte: u32, perm: u32, shared: u32) -> bool {
        match byte {
            100 => perm & CR != 0,
            101 => strict_writes(perm),
            102 => false,
            103 => perm & RS != 0,
            200 => shared & CR == 0,
            201 | 202 => strict_refuses_write(shared),
            203 => shared & RS == 0 || strict_refuses_write(shared),
            _ => false,
        }
    }

    fn strict_tests(byte: u32, perm: u32, shared: u32) -> bool {
        match byte {
            // Tests of unshare bytes guard what I use.
            200 => perm & CR != 0,
            201 | 202 => strict_writes(perm),
            203 => perm & RS != 0,
            // Tests of use bytes guard what I refuse to share.
            100 => shared & CR == 0,
            101 | 102 => strict_refuses_write(shared),
            103 => strict_locks(203, perm, shared),
            _ => false,
        }
    }

    fn exact_tests(byte: u32, perm: u32, shared: u32) -> bool {
        match byte {
            200..=203 => perm & (1 << (byte - 200)) != 0,
            100..=103 => shared & (1 << (byte - 100)) == 0,
            _ => false,
        }
    }

    const CANDIDATES: [u32; 12] = [0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 300];

    #[test]
    fn every_request_locks_and_tests_what_the_protocol_says() {
        for exact in [false, true] {
            for perm in 0..16 {
                for shared in 0..16 {
                    let plan = req(perm, shared, exact).plan();
                    for byte in CANDIDATES {
                        let (want_lock, want_test) = if exact {
                            (
                                exact_locks(byte, perm, shared),
                                exact_tests(byte, perm, shared),
                            )
                        } else {
                            (
                                strict_locks(byte, perm, shared),
                                strict_tests(byte, perm, shared),
                            )
                        };
                        assert_eq!(
                            plan.lock.contains(byte),
                            want_lock,
                            "lock {byte} perm={perm:x} shared={shared:x} exact={exact}"
                        );
                        assert_eq!(
                            plan.tested().contains(byte),
                            want_test,
                            "test {byte} perm={perm:x} shared={shared:x} exact={exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tests_run_in_qemus_order_and_name_the_callers_permission() {
        for exact in [false, true] {
            for perm in 0..16 {
                for shared in 0..16 {
                    let plan = req(perm, shared, exact).plan();
                    // QEMU tests every unshare byte (what I use) first, then
                    // every use byte (what I refuse), each group ascending.
                    let order = tests(&plan);
                    let mut sorted = order.clone();
                    sorted.sort_by_key(|b| (*b < 200, *b));
                    assert_eq!(order, sorted, "perm={perm:x} shared={shared:x}");
                    for t in &plan.tests {
                        let named = t.perm.index();
                        let offset = t.byte % 100;
                        // Only strict mode names write for a write-unchanged byte.
                        if offset == 2 && !exact {
                            assert_eq!(t.perm, Perm::Write);
                        } else {
                            assert_eq!(named, offset, "{t:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn presets_lock_the_bytes_of_the_protocol_table() {
        // PROTOCOL.md §4, column "bytes locked (strict)"; the presets never
        // share write-unchanged, so EXACT must lock the same bytes.
        let table: [(Mode, &[u32]); 4] = [
            (Mode::ReadShared, &[100]),
            (Mode::Read, &[100, 201, 202, 203]),
            (Mode::Write, &[100, 101, 103, 201, 202, 203]),
            (Mode::Exclusive, &[100, 101, 103, 200, 201, 202, 203]),
        ];
        for (mode, want) in table {
            for exact in [false, true] {
                let plan = Request {
                    perm: mode.perm(),
                    shared: mode.shared(),
                    exact,
                }
                .plan();
                assert_eq!(bytes(&plan), want, "{mode:?} exact={exact}");
            }
        }
    }

    #[test]
    fn exact_mode_matches_what_qemu_was_seen_holding() {
        // PROTOCOL.md §5: a VM's read-write qcow2 disk (perm CR|W|RS, shared
        // CR|WU) holds 100-101, 103, 201, 203; a read-only user sharing all
        // but write and resize holds 100, 201, 203; share-rw raw holds 100-101.
        assert_eq!(
            bytes(&req(CR | W | RS, CR | WU, true).plan()),
            [100, 101, 103, 201, 203]
        );
        assert_eq!(bytes(&req(CR, CR | WU, true).plan()), [100, 201, 203]);
        assert_eq!(bytes(&req(CR | W, 0x0f, true).plan()), [100, 101]);
        assert_eq!(
            tests(&req(CR | W | RS, CR | WU, true).plan()),
            [200, 201, 203, 101, 103]
        );
    }

    #[test]
    fn runs_merge_adjacent_bytes() {
        let plan = Request::new(Mode::Exclusive.perm(), Mode::Exclusive.shared()).plan();
        assert_eq!(plan.lock.runs(), [(100, 2), (103, 1), (200, 4)]);
        assert_eq!(ByteSet::EMPTY.runs(), []);
    }

    #[test]
    fn loosening_is_recognised() {
        let write = Request::new(Mode::Write.perm(), Mode::Write.shared()).plan();
        let read = Request::new(Mode::Read.perm(), Mode::Read.shared()).plan();
        let shared = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared()).plan();
        assert!(read.only_loosens(&write));
        assert!(shared.only_loosens(&read));
        assert!(!write.only_loosens(&read));
        assert!(!read.only_loosens(&shared));
    }
}
