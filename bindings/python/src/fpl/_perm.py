"""Permissions, presets and flags (docs/PROTOCOL.md section 4 of the source tree, include/fpl.h)."""

from __future__ import annotations

import enum
from typing import Dict, Iterable, Literal, Optional, Tuple, Union


class _Words(enum.IntFlag):
    """An IntFlag that prints as the ``fpl`` command's words: its members'
    names in lower case with hyphens, joined by commas (``read,write``),
    ``none`` when empty; bits without a name (from a later libfpl 1.x) as
    hexadecimal. A format spec with a number type (``{flags:x}``) formats
    the bits as a number."""

    def __str__(self) -> str:
        bits = int(self)
        if bits == 0:
            return "none"
        words = []
        for member in type(self):
            value = int(member)
            # Single bits only: Python 3.8 to 3.10 also list NONE and ALL.
            if value and value & (value - 1) == 0 and bits & value:
                words.append(str(member.name).lower().replace("_", "-"))
                bits &= ~value
        if bits:
            words.append(hex(bits))
        return ",".join(words)

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "bcdoxXn":
            return int.__format__(int(self), spec)
        return str.__format__(str(self), spec)


class Perm(_Words):
    """QEMU's permissions, as bits: ``perm`` (used, bytes 100+i) and
    ``shared``/``unshared`` (bytes 200+i) are sets of them.

    ``str()`` gives the words ``fpl --perm`` takes (QEMU's names):
    ``consistent-read,write``, ``all``, ``none``. Wherever a permission
    set is asked for (``perm=``, ``shared=``), a :class:`Perm`, a set or
    any iterable of them (``{Perm.CONSISTENT_READ, Perm.WRITE}``) or an
    ``int`` of ``FPL_PERM_*`` bits will do."""

    NONE = 0
    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08
    ALL = 0x0F

    def __str__(self) -> str:
        return "all" if int(self) == 0x0F else _Words.__str__(self)


class StatusFlag(_Words):
    """``Status.flags``."""

    NONE = 0
    #: byte 104 or 204 is held (QEMU <= 6.2's graph-mod)
    LEGACY = 0x01
    #: byte 0 is held (a libvirt virtlockd lease)
    LIBVIRT = 0x02
    #: some processes could not be inspected, so holders may be missing
    HOLDERS_PARTIAL = 0x04


#: The presets, by the names the ``fpl`` command uses.
Mode = Literal["read-shared", "read", "write", "exclusive"]

_RWR = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE
MODES: Dict[str, Tuple[Perm, Perm]] = {
    # read, sharing everything, like `qemu-img -U`
    "read-shared": (Perm.CONSISTENT_READ, Perm.ALL),
    # read a stable image: nobody may write or resize it meanwhile
    "read": (Perm.CONSISTENT_READ, Perm.CONSISTENT_READ),
    # read, write and resize; others may only read (like a VM's disk)
    "write": (_RWR, Perm.CONSISTENT_READ),
    # read, write and resize, sharing nothing
    "exclusive": (_RWR, Perm.NONE),
}

class Access(_Words):
    """``Holder.access``: how the holder's descriptor was opened."""

    NONE = 0
    READ = 0x01
    WRITE = 0x02


class HolderFlag(_Words):
    """``Holder.flags``."""

    NONE = 0
    #: an opener: has the image open and holds none of its bytes
    NO_LOCKS = 0x01
    #: the file system keeps its locks out of /proc (FUSE: GlusterFS, ...):
    #: named because it has the image open while its bytes are held
    INFERRED = 0x02
    #: with NO_LOCKS: another device node of the image's block device (a
    #: container's /dev): its locks are its node's, never the image's
    OTHER_NODE = 0x04
    #: with OTHER_NODE: it holds protocol bytes on its own node
    NODE_LOCKS = 0x08


class _OpenEnum(enum.IntEnum):
    """An IntEnum that keeps values a later libfpl 1.x may add, as
    ``UNKNOWN_<n>`` members, instead of failing on them."""

    @classmethod
    def _missing_(cls, value: object) -> Optional["_OpenEnum"]:
        if not isinstance(value, int) or value < 0:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class Role(_OpenEnum):
    """``Member.role``: what a file is to the image."""

    #: the image itself
    IMAGE = 0
    #: a backing file (at some depth)
    BACKING = 1
    #: a qcow2 external data file
    DATA_FILE = 2


class Format(_OpenEnum):
    """``Member.format``."""

    RAW = 0
    QCOW2 = 1
    #: reached through a protocol (``nbd:``, ...): listed, never opened,
    #: locked or followed (QEMU's client locks nothing there)
    REMOTE = 2


FLAG_EXACT = 0x01
FLAG_ALLOW_POSIX = 0x02
FLAG_CHAIN = 0x04
FLAG_NO_UNLOCKED_OPENERS = 0x08
QUERY_HOLDERS = 0x01
QUERY_OPENERS = 0x02

#: What ``perm=`` and ``shared=`` take: a Perm, an iterable of Perms (a
#: set, a list), or an int of FPL_PERM_* bits.
PermLike = Union[Perm, int, Iterable[Perm]]


def bits(value: PermLike, what: str) -> int:
    """The FPL_PERM_* bits of VALUE (a Perm, an iterable of them, an int).
    TypeError for anything else, ValueError for bits that are no
    permission."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: Iterable[object] = (value,)
    elif isinstance(value, (str, bytes, bool)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{what}={value!r}: give fpl.Perm values (Perm.WRITE, a set of them, or "
            "Perm.CONSISTENT_READ | Perm.WRITE)"
        )
    else:
        items = value
    result = 0
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(f"{what}: {item!r} is not an fpl.Perm")
        if item < 0 or item & ~int(Perm.ALL):
            raise ValueError(
                f"{what}: {int(item):#x} is not a permission: the bits are 0x01, 0x02, "
                "0x04 and 0x08 (Perm.ALL is 0x0f)"
            )
        result |= int(item)
    return result


def request(
    mode: Optional[str], perm: Optional[PermLike], shared: Optional[PermLike]
) -> Tuple[int, int]:
    """(perm, shared) from a preset or from explicit permissions."""
    if mode is not None:
        if perm is not None or shared is not None:
            raise TypeError("give a mode or perm and shared, not both")
        try:
            p, s = MODES[mode]
        except KeyError:
            raise ValueError(
                f"unknown mode {mode!r}: one of {', '.join(MODES)}"
            ) from None
        return int(p), int(s)
    if perm is None or shared is None:
        raise TypeError("give a mode, or both perm and shared")
    return bits(perm, "perm"), bits(shared, "shared")


def flags(
    exact: bool, allow_posix: bool, chain: bool = False, no_unlocked_openers: bool = False
) -> int:
    return (
        (FLAG_EXACT if exact else 0)
        | (FLAG_ALLOW_POSIX if allow_posix else 0)
        | (FLAG_CHAIN if chain else 0)
        | (FLAG_NO_UNLOCKED_OPENERS if no_unlocked_openers else 0)
    )


def query_flags(holders: bool, openers: bool) -> int:
    return (QUERY_HOLDERS if holders else 0) | (QUERY_OPENERS if openers else 0)
