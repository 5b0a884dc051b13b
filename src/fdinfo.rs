//! Parser for the `lock:` lines of `/proc/PID/fdinfo/FD` (the same format as
//! `/proc/locks`). Pure: text in, values out, never a panic.
//!
//! ```text
//! lock:   1: OFDLCK ADVISORY  READ -1 fe:00:10010712 100 101
//! lock:   2: POSIX  ADVISORY  WRITE 4410 00:2e:1234 0 0
//! ```
//! (a tab follows `lock:`). Fields: id, (`->` for a waiter), class, mode, type, pid, `MAJ:MIN:INODE`
//! with major and minor in hex, first byte, last byte or `EOF`.

/// Which lock family a line describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockClass {
    /// fcntl POSIX lock (owned by a process).
    Posix,
    /// fcntl open-file-description lock.
    Ofd,
    /// Anything else (flock, leases, delegations): not QEMU's protocol.
    Other,
}

/// One lock line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLine {
    /// POSIX, OFD or other.
    pub class: LockClass,
    /// WRITE (exclusive) rather than READ.
    pub write: bool,
    /// The pid the kernel reports (-1 for OFD locks).
    pub pid: i32,
    /// Device major number of the inode.
    pub major: u32,
    /// Device minor number of the inode.
    pub minor: u32,
    /// Inode number.
    pub ino: u64,
    /// First byte.
    pub first: u64,
    /// Last byte, `None` for `EOF`.
    pub last: Option<u64>,
}

impl LockLine {
    /// Whether the lock covers `byte`.
    pub fn covers(&self, byte: u64) -> bool {
        self.first <= byte && self.last.is_none_or(|last| byte <= last)
    }

    /// Whether the lock is on the inode `ino` of device `major:minor`.
    pub fn is_on(&self, major: u32, minor: u32, ino: u64) -> bool {
        self.major == major && self.minor == minor && self.ino == ino
    }
}

/// Parses the text after `lock:` (or a `/proc/locks` line); `None` for a
/// waiter (`->`) or anything malformed.
pub fn parse_lock_line(line: &str) -> Option<LockLine> {
    let mut words = line.split_ascii_whitespace();
    let id = words.next()?;
    if !id.ends_with(':') {
        return None;
    }
    let class = words.next()?;
    if class == "->" {
        // A blocked request, not a held lock.
        return None;
    }
    let class = match class {
        "POSIX" => LockClass::Posix,
        "OFDLCK" => LockClass::Ofd,
        _ => LockClass::Other,
    };
    let _mode = words.next()?;
    let write = match words.next()? {
        "WRITE" => true,
        "READ" => false,
        _ => return None,
    };
    let pid: i32 = words.next()?.parse().ok()?;
    let mut id = words.next()?.split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let ino: u64 = id.next()?.parse().ok()?;
    if id.next().is_some() {
        return None;
    }
    let first: u64 = words.next()?.parse().ok()?;
    let last = match words.next()? {
        "EOF" => None,
        n => Some(n.parse::<u64>().ok()?),
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some(LockLine {
        class,
        write,
        pid,
        major,
        minor,
        ino,
        first,
        last,
    })
}

/// The lock lines of an fdinfo file.
pub fn lock_lines(fdinfo: &str) -> impl Iterator<Item = LockLine> + '_ {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .filter_map(parse_lock_line)
}

/// How a descriptor was opened, from the `flags:` line of its fdinfo
/// (octal open flags; the low two bits are the access mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access {
    /// Opened for reading (`O_RDONLY` or `O_RDWR`).
    pub read: bool,
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub write: bool,
}

impl Access {
    /// As `FPL_ACCESS_*` bits: read 0x01, write 0x02.
    pub const fn bits(self) -> u32 {
        (self.read as u32) | ((self.write as u32) << 1)
    }
}

/// The access mode of an fdinfo file; `None` without a readable `flags:`
/// line (an `O_PATH` descriptor reports mode 0, read, like `O_RDONLY`).
pub fn access(fdinfo: &str) -> Option<Access> {
    let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:"))?;
    let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
    Some(match flags & 0o3 {
        0 => Access {
            read: true,
            write: false,
        },
        1 => Access {
            read: false,
            write: true,
        },
        2 => Access {
            read: true,
            write: true,
        },
        _ => Access::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lines_the_kernel_writes() {
        let text = "pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t10010712\n\
                    lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:10010712 100 101\n\
                    lock:\t2: OFDLCK ADVISORY  READ -1 fe:00:10010712 103 103\n\
                    lock:\t3: POSIX  ADVISORY  WRITE 4410 00:2e:77 0 EOF\n";
        let lines: Vec<_> = lock_lines(text).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].class, LockClass::Ofd);
        assert_eq!(
            (lines[0].major, lines[0].minor, lines[0].ino),
            (0xfe, 0, 10010712)
        );
        assert_eq!((lines[0].first, lines[0].last), (100, Some(101)));
        assert!(lines[0].covers(101) && !lines[0].covers(102));
        assert_eq!(lines[2].class, LockClass::Posix);
        assert!(lines[2].write);
        assert_eq!(lines[2].pid, 4410);
        assert_eq!(lines[2].last, None);
        assert!(lines[2].covers(u64::MAX));
        assert_eq!(access(text).map(Access::bits), Some(0x01));
    }

    #[test]
    fn access_modes_come_from_the_flags_line() {
        assert_eq!(access("flags:\t0100002\n").map(Access::bits), Some(0x03));
        assert_eq!(
            access("pos:\t0\nflags:\t02000001\n").map(Access::bits),
            Some(0x02)
        );
        assert_eq!(access("flags:\t0100000\n").map(Access::bits), Some(0x01));
        assert_eq!(access("flags:\t03\n").map(Access::bits), Some(0));
        assert_eq!(access("flags:\tzz\n"), None);
        assert_eq!(access("pos:\t0\n"), None);
    }

    #[test]
    fn waiters_and_garbage_are_skipped() {
        assert_eq!(
            parse_lock_line("1: -> POSIX ADVISORY WRITE 1 08:01:2 0 0"),
            None
        );
        assert_eq!(parse_lock_line(""), None);
        assert_eq!(
            parse_lock_line("1: POSIX ADVISORY WRITE x 08:01:2 0 0"),
            None
        );
        assert_eq!(parse_lock_line("1: POSIX ADVISORY WRITE 1 08:01 0 0"), None);
        assert_eq!(
            parse_lock_line("1: POSIX ADVISORY WRITE 1 08:01:2 5 4"),
            None
        );
        assert_eq!(parse_lock_line("1: POSIX ADVISORY WRITE 1 08:01:2 0"), None);
    }
}
