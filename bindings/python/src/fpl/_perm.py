"""Permissions, presets and flags (PROTOCOL.md section 4, include/fpl.h)."""

from __future__ import annotations

import enum
from typing import Dict, Literal, Optional, Tuple, Union


class Perm(enum.IntFlag):
    """QEMU's permissions, as bits: ``perm`` (used, bytes 100+i) and
    ``shared``/``unshared`` (bytes 200+i) are sets of them."""

    NONE = 0
    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08
    ALL = 0x0F


class StatusFlag(enum.IntFlag):
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

class Access(enum.IntFlag):
    """``Holder.access``: how the holder's descriptor was opened."""

    NONE = 0
    READ = 0x01
    WRITE = 0x02


class HolderFlag(enum.IntFlag):
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
QUERY_HOLDERS = 0x01

PermLike = Union[Perm, int]


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
    return int(perm), int(shared)


def flags(exact: bool, allow_posix: bool, chain: bool = False) -> int:
    return (
        (FLAG_EXACT if exact else 0)
        | (FLAG_ALLOW_POSIX if allow_posix else 0)
        | (FLAG_CHAIN if chain else 0)
    )
