//! The qcow2 header, parsed from bytes: what [`crate::chain`] needs to
//! follow an image (its backing file and that file's format, its external
//! data file), and the probe that tells qcow2 from raw and from the formats
//! libfpl does not follow.
//!
//! Pure: bytes in, header out, no descriptor in sight. The caller reads a
//! bounded prefix of the file, [`PREFIX_LEN`] bytes (one or two `pread`s),
//! and says whether that prefix is the whole file. Everything the header
//! points at (extensions, the backing file name) must lie inside the prefix:
//! `qemu-img create` writes them right after the header, in the first few
//! hundred bytes. Nothing here panics or allocates more than the prefix,
//! whatever the bytes.
//!
//! The checks follow QEMU's `qcow2_do_open` and `qcow2_read_extensions`
//! (QEMU 7.2 and 10.0 alike), with the same errno; libfpl is stricter only
//! where QEMU would read past what the file holds.

use std::fmt;

use nix::errno::Errno;

/// How many bytes of a file libfpl reads to probe and parse it: 64 KiB, the
/// default qcow2 cluster size, so an image made with default options has
/// its whole first cluster (header, extensions, backing file name) in it.
pub const PREFIX_LEN: usize = 64 * 1024;

/// The longest backing file, backing format or data file name, in bytes
/// (QEMU's limit for backing file names, `Backing file name too long`).
pub const MAX_NAME_LEN: usize = 1023;

/// The qcow2 (and qcow) magic, `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Header extension type: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension type: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension type: external data file name ("DATA").
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension type: end of the extension area.
pub const EXT_END: u32 = 0;

/// Incompatible feature bit 0: the image was not closed cleanly.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: the guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: a compression type other than zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature QEMU 7.2 and 10.0 know; any other bit makes
/// QEMU refuse the image.
pub const INCOMPAT_KNOWN: u64 = 0x1f;

/// Length of a version 2 header, and where its extensions start.
const V2_HEADER_LEN: u32 = 72;
/// Shortest version 3 header.
const V3_HEADER_LEN: u32 = 104;
/// QEMU's smallest and largest cluster sizes, as a power of two.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;

/// What the first bytes of a file say it is, as QEMU's format probe would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing QEMU recognises: raw (QEMU's fallback, whatever the bytes).
    Raw,
    /// qcow2 (magic and version 2 or more: QEMU's probe claims versions it
    /// then refuses to open, so does [`parse`]).
    Qcow2,
    /// A format QEMU knows and libfpl does not follow (its QEMU driver name:
    /// `vmdk`, `qed`, `vhdx`, `vdi`, `vpc`, `qcow`, `luks`, `parallels`,
    /// `bochs`, `cloop`, `dmg`).
    Other(&'static str),
}

/// Probes the first bytes of a file (`prefix`) named `file_name` (QEMU's
/// dmg probe looks only at the name).
pub fn probe(prefix: &[u8], file_name: &[u8]) -> Probe {
    if prefix.starts_with(&MAGIC) {
        return match be32(prefix, 4) {
            Some(1) => Probe::Other("qcow"),
            Some(v) if v >= 2 => Probe::Qcow2,
            // Version 0 (or a 4-byte file): neither qcow nor qcow2 claims it.
            _ => Probe::Raw,
        };
    }
    const MAGICS: [(&[u8], &str); 9] = [
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk"),
        (b"QED\0", "qed"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"LUKS\xba\xbe", "luks"),
        (b"Bochs Virtual HD Image", "bochs"),
        (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0", "cloop"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(m, _)| prefix.starts_with(m)) {
        return Probe::Other(name);
    }
    if prefix.starts_with(b"WithoutFreeSpace") || prefix.starts_with(b"WithouFreSpacExt") {
        return Probe::Other("parallels");
    }
    // VDI: the signature 0xbeda107f, little-endian, at offset 64.
    if prefix.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
        return Probe::Other("vdi");
    }
    if file_name.len() > 4 && file_name.ends_with(b".dmg") {
        return Probe::Other("dmg");
    }
    Probe::Raw
}

/// One entry of the feature name table (extension 0x6803f857).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// The bit number.
    pub bit: u8,
    /// Its name, up to 46 bytes.
    pub name: Vec<u8>,
}

/// The parts of a qcow2 header libfpl uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Cluster size as a power of two (9 to 21).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Incompatible feature bits (0 for version 2); only known ones get here.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// Where the extensions start (72 for version 2).
    pub header_length: u32,
    /// The backing file name as written (bytes: paths need not be UTF-8),
    /// `None` when there is none (offset 0, or an empty name: QEMU then
    /// opens no backing file either).
    pub backing_file: Option<Vec<u8>>,
    /// The backing format extension, when present (`raw`, `qcow2`, ...).
    pub backing_format: Option<Vec<u8>>,
    /// The external data file name, when incompatible bit 2 says the image
    /// has one (an extension without the bit is ignored, as QEMU does).
    pub data_file: Option<Vec<u8>>,
    /// The feature name table, empty when absent (it is optional).
    pub feature_names: Vec<FeatureName>,
}

impl Header {
    /// Whether the image keeps its data in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible & INCOMPAT_DATA_FILE != 0
    }
}

/// Which name a [`HeaderError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// The backing file name (header fields 8-19).
    BackingFile,
    /// The backing format extension.
    BackingFormat,
    /// The external data file extension.
    DataFile,
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Name::BackingFile => "backing file name",
            Name::BackingFormat => "backing format name",
            Name::DataFile => "data file name",
        })
    }
}

/// Why a header is refused. [`HeaderError::errno`] is the errno QEMU gives
/// for the same header (`EINVAL`, or `ENOTSUP` for a version or feature it
/// does not support).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file ends inside the fixed header.
    #[error("qcow2 header truncated: {have} bytes, the version {version} header needs {need}")]
    Truncated {
        /// Version read (0 when even that is missing).
        version: u32,
        /// Bytes the fixed header needs.
        need: usize,
        /// Bytes the file has.
        have: usize,
    },
    /// No `QFI\xfb` magic (QEMU: `Image is not in qcow2 format`).
    #[error("Image is not in qcow2 format")]
    BadMagic,
    /// Version other than 2 or 3 (`ENOTSUP`).
    #[error("Unsupported qcow2 version {0}")]
    UnsupportedVersion(u32),
    /// Cluster bits outside 9-21.
    #[error("Unsupported cluster size: 2^{0}")]
    BadClusterSize(u32),
    /// Version 3 header_length below 104.
    #[error("qcow2 header too short: header_length is {0}, at least 104 is needed")]
    HeaderTooShort(u32),
    /// header_length beyond the first cluster.
    #[error("qcow2 header exceeds cluster size: header_length is {0}")]
    HeaderTooLong(u32),
    /// Backing file offset beyond the first cluster.
    #[error("Invalid backing file offset {0}")]
    BadBackingOffset(u64),
    /// Incompatible feature bits QEMU does not know (`ENOTSUP`).
    #[error("Unsupported qcow2 feature(s): {0}")]
    UnknownFeatures(String),
    /// An extension longer than the room before the end of the extension
    /// area (the backing file name or the first cluster's end).
    #[error(
        "Header extension too large: extension 0x{kind:08x} at offset {offset} is {len} bytes"
    )]
    ExtensionTooLarge {
        /// Extension type.
        kind: u32,
        /// Offset of its 8-byte header.
        offset: u64,
        /// Its length field.
        len: u32,
    },
    /// A name longer than [`MAX_NAME_LEN`] (the backing format: longer
    /// than 15, QEMU's limit).
    #[error("{name} too long: {len} bytes")]
    NameTooLong {
        /// Which name.
        name: Name,
        /// Its length.
        len: u64,
    },
    /// The image uses a data file (bit 2) but names none, or an empty one
    /// (QEMU: `'data-file' is required for this image`).
    #[error("'data-file' is required for this image: the header names no data file")]
    MissingDataFile,
    /// Something the header points at lies past the end of the file.
    #[error("{what} at offset {offset}, {len} bytes, is past the end of the file ({size} bytes)")]
    PastEnd {
        /// What (e.g. `backing file name`, `header extension`).
        what: String,
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's size.
        size: usize,
    },
    /// Something the header points at lies past the prefix libfpl reads.
    #[error(
        "{what} at offset {offset}, {len} bytes, is beyond the first {limit} bytes libfpl reads"
    )]
    BeyondPrefix {
        /// What.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// [`PREFIX_LEN`].
        limit: usize,
    },
}

impl HeaderError {
    /// The errno for this error: `ENOTSUP` for an unsupported version or
    /// feature, `EINVAL` for everything malformed.
    pub fn errno(&self) -> Errno {
        match self {
            HeaderError::UnsupportedVersion(_) | HeaderError::UnknownFeatures(_) => Errno::ENOTSUP,
            _ => Errno::EINVAL,
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// The bytes of `[offset, offset + len)` of the file, or why they cannot be had.
fn span<'a>(
    bytes: &'a [u8],
    whole_file: bool,
    what: &dyn Fn() -> String,
    offset: u64,
    len: u64,
) -> Result<&'a [u8], HeaderError> {
    let end = offset.checked_add(len);
    if let Some(end) = end {
        if let (Ok(start), Ok(end)) = (usize::try_from(offset), usize::try_from(end)) {
            if let Some(s) = bytes.get(start..end) {
                return Ok(s);
            }
        }
    }
    Err(if whole_file {
        HeaderError::PastEnd {
            what: what(),
            offset,
            len,
            size: bytes.len(),
        }
    } else {
        HeaderError::BeyondPrefix {
            what: what(),
            offset,
            len,
            limit: bytes.len(),
        }
    })
}

/// A name as QEMU keeps it: a C string, so it ends at the first NUL.
fn c_string(raw: &[u8]) -> Vec<u8> {
    raw.iter().take_while(|b| **b != 0).copied().collect()
}

/// Parses the header at the start of `bytes`: the first [`PREFIX_LEN`]
/// bytes of the file, or all of it when shorter, which `whole_file` says
/// (it chooses between [`HeaderError::PastEnd`] and
/// [`HeaderError::BeyondPrefix`]).
pub fn parse(bytes: &[u8], whole_file: bool) -> Result<Header, HeaderError> {
    if !bytes.starts_with(&MAGIC) {
        return if bytes.len() < 4 && MAGIC.starts_with(bytes) && whole_file {
            Err(HeaderError::Truncated {
                version: 0,
                need: V2_HEADER_LEN as usize,
                have: bytes.len(),
            })
        } else {
            Err(HeaderError::BadMagic)
        };
    }
    let version = be32(bytes, 4).unwrap_or(0);
    let truncated = |need: u32| HeaderError::Truncated {
        version,
        need: need as usize,
        have: bytes.len(),
    };
    if bytes.len() < 8 {
        return Err(truncated(V2_HEADER_LEN));
    }
    if !(2..=3).contains(&version) {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let fixed = if version == 2 {
        V2_HEADER_LEN
    } else {
        V3_HEADER_LEN
    };
    if bytes.len() < fixed as usize {
        return Err(truncated(fixed));
    }
    // Every read below is inside `fixed` bytes, which `bytes` has.
    let field32 = |at| be32(bytes, at).unwrap_or(0);
    let field64 = |at| be64(bytes, at).unwrap_or(0);
    let backing_offset = field64(8);
    let backing_len = field32(16);
    let cluster_bits = field32(20);
    let size = field64(24);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(HeaderError::BadClusterSize(cluster_bits));
    }
    let cluster_size = 1u64 << cluster_bits;
    let (incompatible, compatible, autoclear, header_length) = if version == 2 {
        (0, 0, 0, V2_HEADER_LEN)
    } else {
        (field64(72), field64(80), field64(88), field32(100))
    };
    if header_length < fixed {
        return Err(HeaderError::HeaderTooShort(header_length));
    }
    if u64::from(header_length) > cluster_size {
        return Err(HeaderError::HeaderTooLong(header_length));
    }
    if backing_offset > cluster_size {
        return Err(HeaderError::BadBackingOffset(backing_offset));
    }

    // The extensions lie between the header and the backing file name (or
    // the end of the first cluster when there is no backing file).
    let ext_end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster_size
    };
    let mut header = Header {
        version,
        cluster_bits,
        size,
        incompatible,
        compatible,
        autoclear,
        header_length,
        backing_file: None,
        backing_format: None,
        data_file: None,
        feature_names: Vec::new(),
    };
    let mut data_file = None;
    let mut offset = u64::from(header_length);
    while offset < ext_end {
        // The end of the file (or of the extension area) on an extension
        // boundary ends the list, as zeros would for QEMU.
        if whole_file && offset >= bytes.len() as u64 {
            break;
        }
        let what = || "header extension".to_owned();
        let ext = span(bytes, whole_file, &what, offset, 8)?;
        let kind = be32(ext, 0).unwrap_or(0);
        let len = be32(ext, 4).unwrap_or(0);
        let data_at = offset + 8;
        if data_at > ext_end || u64::from(len) > ext_end - data_at {
            return Err(HeaderError::ExtensionTooLarge { kind, offset, len });
        }
        if kind == EXT_END {
            break;
        }
        let what = || format!("header extension 0x{kind:08x}");
        let data = span(bytes, whole_file, &what, data_at, u64::from(len))?;
        match kind {
            EXT_BACKING_FORMAT => {
                // QEMU keeps it in a 16-byte buffer.
                if len >= 16 {
                    return Err(HeaderError::NameTooLong {
                        name: Name::BackingFormat,
                        len: len.into(),
                    });
                }
                header.backing_format = Some(c_string(data));
            }
            EXT_DATA_FILE => {
                if len as usize > MAX_NAME_LEN {
                    return Err(HeaderError::NameTooLong {
                        name: Name::DataFile,
                        len: len.into(),
                    });
                }
                data_file = Some(c_string(data));
            }
            EXT_FEATURE_TABLE => {
                header.feature_names = data
                    .chunks_exact(48)
                    .map(|e| FeatureName {
                        kind: e[0],
                        bit: e[1],
                        name: c_string(&e[2..]),
                    })
                    .collect();
            }
            _ => {}
        }
        offset = data_at + ((u64::from(len) + 7) & !7);
    }

    // QEMU refuses unknown incompatible features after reading the
    // extensions, so that it can name them from the feature table.
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let names: Vec<String> = (0..64)
            .filter(|bit| unknown & (1u64 << bit) != 0)
            .map(|bit| {
                header
                    .feature_names
                    .iter()
                    .find(|f| f.kind == 0 && u32::from(f.bit) == bit)
                    .map_or_else(
                        || format!("Unknown incompatible feature: {:x}", 1u64 << bit),
                        |f| String::from_utf8_lossy(&f.name).into_owned(),
                    )
            })
            .collect();
        return Err(HeaderError::UnknownFeatures(names.join(", ")));
    }

    if header.has_data_file() {
        match data_file {
            Some(name) if !name.is_empty() => header.data_file = Some(name),
            _ => return Err(HeaderError::MissingDataFile),
        }
    }

    if backing_offset != 0 {
        if backing_len as usize > MAX_NAME_LEN
            || u64::from(backing_len) > cluster_size - backing_offset
        {
            return Err(HeaderError::NameTooLong {
                name: Name::BackingFile,
                len: backing_len.into(),
            });
        }
        let what = || "backing file name".to_owned();
        let raw = span(bytes, whole_file, &what, backing_offset, backing_len.into())?;
        let name = c_string(raw);
        // An empty name is no backing file, for QEMU too.
        if !name.is_empty() {
            header.backing_file = Some(name);
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header of 112 bytes, then the given extensions, then an
    /// end marker, then the backing name (if any).
    pub(crate) fn v3(exts: &[(u32, &[u8])], incompat: u64, backing: Option<&[u8]>) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        for (kind, data) in exts {
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            while h.len() % 8 != 0 {
                h.push(0);
            }
        }
        h.extend_from_slice(&[0; 8]);
        if let Some(name) = backing {
            let at = h.len() as u64;
            h[8..16].copy_from_slice(&at.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h.extend_from_slice(name);
        }
        h
    }

    #[test]
    fn a_v3_header_with_backing_and_format() {
        let h = v3(&[(EXT_BACKING_FORMAT, b"raw")], 0, Some(b"base.raw"));
        let p = parse(&h, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.version, 3);
        assert_eq!(p.backing_file.as_deref(), Some(&b"base.raw"[..]));
        assert_eq!(p.backing_format.as_deref(), Some(&b"raw"[..]));
        assert_eq!(p.data_file, None);
        assert_eq!(probe(&h, b"x"), Probe::Qcow2);
    }

    #[test]
    fn a_v2_header_reads_extensions_too() {
        let mut h = v3(&[(EXT_BACKING_FORMAT, b"qcow2")], 0, None);
        // Turn it into version 2: extensions right after 72 bytes.
        h[4..8].copy_from_slice(&2u32.to_be_bytes());
        let tail = h.split_off(112);
        h.truncate(72);
        h.extend_from_slice(&tail);
        let at = h.len() as u64;
        h.extend_from_slice(b"b.qcow2");
        h[8..16].copy_from_slice(&at.to_be_bytes());
        h[16..20].copy_from_slice(&7u32.to_be_bytes());
        let p = parse(&h, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.version, 2);
        assert_eq!(p.header_length, 72);
        assert_eq!(p.backing_format.as_deref(), Some(&b"qcow2"[..]));
        assert_eq!(p.backing_file.as_deref(), Some(&b"b.qcow2"[..]));
    }

    #[test]
    fn the_data_file_needs_bit_2() {
        let h = v3(&[(EXT_DATA_FILE, b"d.raw")], INCOMPAT_DATA_FILE, None);
        let p = parse(&h, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.data_file.as_deref(), Some(&b"d.raw"[..]));
        let h = v3(&[(EXT_DATA_FILE, b"d.raw")], 0, None);
        assert_eq!(parse(&h, true).map(|p| p.data_file), Ok(None));
        let h = v3(&[], INCOMPAT_DATA_FILE, None);
        assert_eq!(parse(&h, true), Err(HeaderError::MissingDataFile));
        let h = v3(&[(EXT_DATA_FILE, b"")], INCOMPAT_DATA_FILE, None);
        assert_eq!(parse(&h, true), Err(HeaderError::MissingDataFile));
    }

    #[test]
    fn unknown_features_are_refused_by_name() {
        let mut table = vec![0u8; 48];
        table[1] = 7;
        table[2..6].copy_from_slice(b"zork");
        let h = v3(&[(EXT_FEATURE_TABLE, &table)], 1 << 7 | 1 << 9, None);
        let e = parse(&h, true).err();
        assert_eq!(
            e.as_ref().map(ToString::to_string).as_deref(),
            Some("Unsupported qcow2 feature(s): zork, Unknown incompatible feature: 200")
        );
        assert_eq!(e.map(|e| e.errno()), Some(Errno::ENOTSUP));
    }

    #[test]
    fn malformed_headers_give_their_errors() {
        let good = v3(&[], 0, Some(b"base"));
        let mut v4 = good.clone();
        v4[7] = 4;
        assert_eq!(parse(&v4, true), Err(HeaderError::UnsupportedVersion(4)));
        let mut v1 = good.clone();
        v1[7] = 1;
        assert_eq!(parse(&v1, true), Err(HeaderError::UnsupportedVersion(1)));
        assert_eq!(probe(&v1, b""), Probe::Other("qcow"));
        assert!(matches!(
            parse(&good[..50], true),
            Err(HeaderError::Truncated { .. })
        ));
        let mut long = good.clone();
        long[16..20].copy_from_slice(&1024u32.to_be_bytes());
        assert!(matches!(
            parse(&long, true),
            Err(HeaderError::NameTooLong {
                name: Name::BackingFile,
                ..
            })
        ));
        let mut past = good.clone();
        past[16..20].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(
            parse(&past, true),
            Err(HeaderError::PastEnd { .. })
        ));
        assert!(matches!(
            parse(&past, false),
            Err(HeaderError::BeyondPrefix { .. })
        ));
        let mut empty = good.clone();
        empty[16..20].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(parse(&empty, true).map(|h| h.backing_file), Ok(None));
        let mut bits = good.clone();
        bits[23] = 30;
        assert_eq!(parse(&bits, true), Err(HeaderError::BadClusterSize(30)));
        let mut ext = v3(&[(0x1234, b"abc")], 0, None);
        ext[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse(&ext, true),
            Err(HeaderError::ExtensionTooLarge { .. })
        ));
        let fmt = v3(&[(EXT_BACKING_FORMAT, &[b'x'; 16])], 0, None);
        assert!(matches!(
            parse(&fmt, true),
            Err(HeaderError::NameTooLong {
                name: Name::BackingFormat,
                ..
            })
        ));
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        let h = v3(&[], 0, Some(b"b\xff\xfe.raw"));
        assert_eq!(
            parse(&h, true).map(|h| h.backing_file),
            Ok(Some(b"b\xff\xfe.raw".to_vec()))
        );
    }

    #[test]
    fn probes_name_other_formats() {
        assert_eq!(probe(b"KDMV\x01\0\0\0", b"a"), Probe::Other("vmdk"));
        assert_eq!(probe(b"QED\0", b"a"), Probe::Other("qed"));
        assert_eq!(probe(b"vhdxfile....", b"a"), Probe::Other("vhdx"));
        assert_eq!(probe(b"LUKS\xba\xbe\0\x01", b"a"), Probe::Other("luks"));
        assert_eq!(probe(b"WithoutFreeSpace", b"a"), Probe::Other("parallels"));
        assert_eq!(probe(b"conectix", b"a"), Probe::Other("vpc"));
        let mut vdi = vec![0u8; 72];
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(probe(&vdi, b"a"), Probe::Other("vdi"));
        assert_eq!(probe(b"", b"x.dmg"), Probe::Other("dmg"));
        assert_eq!(probe(b"", b"x"), Probe::Raw);
        assert_eq!(probe(b"QFI\xfb\0\0\0\0", b"x"), Probe::Raw);
        assert_eq!(probe(&[0u8; 512], b"x"), Probe::Raw);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn real() -> Vec<u8> {
            let mut table = vec![0u8; 96];
            table[2..7].copy_from_slice(b"dirty");
            table[48] = 1;
            v3(
                &[
                    (EXT_BACKING_FORMAT, b"qcow2"),
                    (EXT_DATA_FILE, b"data.raw"),
                    (EXT_FEATURE_TABLE, &table),
                ],
                INCOMPAT_DATA_FILE,
                Some(b"../base.qcow2"),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                     whole in any::<bool>()) {
                let _ = parse(&bytes, whole);
                let _ = probe(&bytes, &bytes);
            }

            #[test]
            fn mutated_real_headers_never_panic(
                edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..12),
                cut in 0usize..400,
                whole in any::<bool>(),
            ) {
                let mut h = real();
                for (at, b) in edits {
                    if let Some(x) = h.get_mut(at) {
                        *x = b;
                    }
                }
                h.truncate(cut.max(1));
                if let Ok(p) = parse(&h, whole) {
                    // Whatever parses keeps its promises.
                    prop_assert!(p.version == 2 || p.version == 3);
                    prop_assert!(p.incompatible & !INCOMPAT_KNOWN == 0);
                    for n in [&p.backing_file, &p.data_file].into_iter().flatten() {
                        prop_assert!(!n.is_empty() && n.len() <= MAX_NAME_LEN && !n.contains(&0));
                    }
                    prop_assert_eq!(p.has_data_file(), p.data_file.is_some());
                }
            }
        }

        #[test]
        fn the_real_header_parses() {
            let p = parse(&real(), true).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.data_file.as_deref(), Some(&b"data.raw"[..]));
            assert_eq!(p.feature_names.len(), 2);
        }
    }
}
