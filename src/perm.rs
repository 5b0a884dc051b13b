//! Permission sets: QEMU's `BLK_PERM_*` bits that have lock bytes, and the
//! four presets of PROTOCOL.md §4.

use std::fmt;

use crate::error::Error;

/// One of QEMU's block permissions that has a lock byte (100+i / 200+i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// `BLK_PERM_CONSISTENT_READ`, bit 0x01, bytes 100 / 200.
    ConsistentRead,
    /// `BLK_PERM_WRITE`, bit 0x02, bytes 101 / 201.
    Write,
    /// `BLK_PERM_WRITE_UNCHANGED`, bit 0x04, bytes 102 / 202.
    WriteUnchanged,
    /// `BLK_PERM_RESIZE`, bit 0x08, bytes 103 / 203.
    Resize,
}

impl Perm {
    /// All four, in bit order (the order QEMU walks them).
    pub const ALL: [Perm; 4] = [
        Perm::ConsistentRead,
        Perm::Write,
        Perm::WriteUnchanged,
        Perm::Resize,
    ];

    /// The bit index i: the permission's bytes are 100+i and 200+i.
    pub const fn index(self) -> u32 {
        match self {
            Perm::ConsistentRead => 0,
            Perm::Write => 1,
            Perm::WriteUnchanged => 2,
            Perm::Resize => 3,
        }
    }

    /// The permission whose bit index is `i`, if any.
    pub const fn from_index(i: u32) -> Option<Perm> {
        match i {
            0 => Some(Perm::ConsistentRead),
            1 => Some(Perm::Write),
            2 => Some(Perm::WriteUnchanged),
            3 => Some(Perm::Resize),
            _ => None,
        }
    }

    /// The `FPL_PERM_*` bit.
    pub const fn bit(self) -> u32 {
        1 << self.index()
    }

    /// QEMU's name in messages (`bdrv_perm_names`): `consistent read`, `write`, ...
    pub const fn qemu_name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write unchanged",
            Perm::Resize => "resize",
        }
    }

    /// QEMU's name as a command-line word (`consistent-read`, `write-unchanged`, ...).
    pub const fn cli_name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent-read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write-unchanged",
            Perm::Resize => "resize",
        }
    }

    /// The "I use it" byte, 100+i.
    pub const fn use_byte(self) -> u32 {
        100 + self.index()
    }

    /// The "I do not share it" byte, 200+i.
    pub const fn unshare_byte(self) -> u32 {
        200 + self.index()
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// A set of [`Perm`]s, as the `FPL_PERM_*` bits of a `uint32_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermSet(u8);

impl PermSet {
    /// No permission.
    pub const NONE: PermSet = PermSet(0);
    /// All four permissions (`FPL_PERM_ALL`).
    pub const ALL: PermSet = PermSet(0x0f);

    /// The set holding exactly the `FPL_PERM_*` bits in `bits`; `None` when a
    /// bit outside `FPL_PERM_ALL` is set.
    pub const fn from_bits(bits: u32) -> Option<PermSet> {
        if bits & !0x0f != 0 {
            None
        } else {
            Some(PermSet(bits as u8))
        }
    }

    /// The `FPL_PERM_*` bits.
    pub const fn bits(self) -> u32 {
        self.0 as u32
    }

    /// Whether `p` is in the set.
    pub const fn contains(self, p: Perm) -> bool {
        self.0 & (p.bit() as u8) != 0
    }

    /// Whether every permission of `other` is in the set.
    pub const fn is_superset(self, other: PermSet) -> bool {
        other.0 & !self.0 == 0
    }

    /// The set with `p` added.
    pub const fn with(self, p: Perm) -> PermSet {
        PermSet(self.0 | p.bit() as u8)
    }

    /// The set with `p` removed.
    pub const fn without(self, p: Perm) -> PermSet {
        PermSet(self.0 & !(p.bit() as u8))
    }

    /// Permissions in either set.
    pub const fn union(self, other: PermSet) -> PermSet {
        PermSet(self.0 | other.0)
    }

    /// Permissions in `self` but not in `other`.
    pub const fn minus(self, other: PermSet) -> PermSet {
        PermSet(self.0 & !other.0)
    }

    /// The permissions not in the set.
    pub const fn complement(self) -> PermSet {
        PermSet(!self.0 & 0x0f)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Perm> {
        Perm::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// Parses a comma-separated list of QEMU's names (`consistent-read`,
    /// `write`, `write-unchanged`, `resize`), or `all` / `none`.
    pub fn parse_list(list: &str) -> Result<PermSet, Error> {
        match list.trim() {
            "all" => return Ok(PermSet::ALL),
            "none" | "" => return Ok(PermSet::NONE),
            _ => {}
        }
        let mut set = PermSet::NONE;
        for word in list.split(',') {
            let word = word.trim();
            let p = Perm::ALL
                .into_iter()
                .find(|p| p.cli_name() == word)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown permission '{word}': use consistent-read, write, \
                         write-unchanged, resize, all or none"
                    ))
                })?;
            set = set.with(p);
        }
        Ok(set)
    }

    /// QEMU's names joined with ", " (e.g. `consistent read, write`), or `nothing`.
    pub fn describe(self) -> String {
        if self.is_empty() {
            return "nothing".to_owned();
        }
        self.iter()
            .map(Perm::qemu_name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl TryFrom<u32> for PermSet {
    type Error = Error;

    fn try_from(bits: u32) -> Result<PermSet, Error> {
        PermSet::from_bits(bits).ok_or_else(|| {
            Error::invalid(format!(
                "invalid permission bits 0x{bits:x}: only FPL_PERM_ALL (0x0f) may be set"
            ))
        })
    }
}

impl FromIterator<Perm> for PermSet {
    fn from_iter<I: IntoIterator<Item = Perm>>(iter: I) -> PermSet {
        iter.into_iter().fold(PermSet::NONE, PermSet::with)
    }
}

/// The access presets of PROTOCOL.md §4: the two kinds of access that make
/// sense for an outside tool, plus the shape a running VM's disk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Read, sharing everything: like `qemu-img -U`. Locks byte 100.
    ReadShared,
    /// Read a stable image: nobody may write or resize it meanwhile.
    Read,
    /// Read, write and resize, letting others only read: like a VM's disk.
    Write,
    /// Read, write and resize, sharing nothing.
    Exclusive,
}

impl Mode {
    /// All presets, from the loosest.
    pub const ALL: [Mode; 4] = [Mode::ReadShared, Mode::Read, Mode::Write, Mode::Exclusive];

    /// The permissions the preset uses.
    pub const fn perm(self) -> PermSet {
        match self {
            Mode::ReadShared | Mode::Read => PermSet(0x01),
            Mode::Write | Mode::Exclusive => PermSet(0x0b),
        }
    }

    /// The permissions the preset shares with others.
    pub const fn shared(self) -> PermSet {
        match self {
            Mode::ReadShared => PermSet::ALL,
            Mode::Read | Mode::Write => PermSet(0x01),
            Mode::Exclusive => PermSet::NONE,
        }
    }

    /// The preset's name (`read-shared`, `read`, `write`, `exclusive`).
    pub const fn name(self) -> &'static str {
        match self {
            Mode::ReadShared => "read-shared",
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::Exclusive => "exclusive",
        }
    }

    /// The preset called `name`.
    pub fn from_name(name: &str) -> Result<Mode, Error> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown mode '{name}': use read-shared, read, write or exclusive"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_outside_all_are_refused() {
        for bits in [0x10, 0x20, 0x80, 0x100, 0x8000_0000, u32::MAX] {
            assert!(PermSet::try_from(bits).is_err(), "0x{bits:x}");
        }
        for bits in 0..16 {
            assert_eq!(PermSet::try_from(bits).map(PermSet::bits).ok(), Some(bits));
        }
    }

    #[test]
    fn lists_parse_qemu_names() {
        assert_eq!(PermSet::parse_list("all").ok(), Some(PermSet::ALL));
        assert_eq!(PermSet::parse_list("none").ok(), Some(PermSet::NONE));
        assert_eq!(
            PermSet::parse_list("consistent-read,write,resize").ok(),
            Some(Mode::Write.perm())
        );
        assert!(PermSet::parse_list("read").is_err());
    }

    #[test]
    fn presets_match_the_abi() {
        assert_eq!(Mode::ReadShared.perm().bits(), 0x01);
        assert_eq!(Mode::ReadShared.shared().bits(), 0x0f);
        assert_eq!(Mode::Read.shared().bits(), 0x01);
        assert_eq!(Mode::Write.perm().bits(), 0x0b);
        assert_eq!(Mode::Exclusive.shared().bits(), 0);
    }
}
