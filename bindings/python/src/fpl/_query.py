"""Which bytes of an image are held, and by whom."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from . import _errors
from ._library import ErrorStruct, HolderStruct, StatusStruct, lib
from ._lock import StrOrBytesPath
from ._perm import QUERY_HOLDERS, Perm, StatusFlag


@dataclass(frozen=True)
class Holder:
    """One process descriptor holding bytes of the image."""

    pid: int
    #: the descriptor in that process, None if unknown
    fd: Optional[int]
    #: permission bytes (100+i) this descriptor locks
    perm: Perm
    #: unshare bytes (200+i) this descriptor locks
    unshared: Perm
    #: the process name (/proc/PID/comm), "" if unknown
    name: str


@dataclass(frozen=True)
class Status:
    """Which bytes of an image are held, by anybody."""

    #: permissions whose byte 100+i somebody holds
    perm: Perm
    #: permissions whose byte 200+i somebody holds
    unshared: Perm
    flags: StatusFlag
    #: the holders found, by pid then descriptor (empty unless asked for).
    #: Bytes held with no holder found mean a holder this host cannot see
    #: (another host, PID namespace or user): never "free".
    holders: Tuple[Holder, ...]

    @property
    def in_use(self) -> bool:
        """Somebody holds a byte of QEMU's protocol (or libvirt's)."""
        return bool(
            self.perm or self.unshared or self.flags & (StatusFlag.LEGACY | StatusFlag.LIBVIRT)
        )

    @property
    def legacy(self) -> bool:
        """Byte 104 or 204 is held: a QEMU 6.2 or older."""
        return bool(self.flags & StatusFlag.LEGACY)

    @property
    def libvirt(self) -> bool:
        """Byte 0 is held: a libvirt virtlockd lease."""
        return bool(self.flags & StatusFlag.LIBVIRT)

    @property
    def holders_partial(self) -> bool:
        """Some processes could not be inspected: holders may be missing."""
        return bool(self.flags & StatusFlag.HOLDERS_PARTIAL)


def query(path: StrOrBytesPath, holders: bool = False) -> Status:
    """Which bytes are held on PATH, by anybody (this process included).
    With ``holders=True`` also find the processes holding them (a walk of
    /proc: ask only when you need names)."""
    raw = os.fsencode(path)
    status = StatusStruct()
    err = ErrorStruct()
    cap = 8 if holders else 0
    while True:
        array = (HolderStruct * cap)()
        rc = lib().fpl_query(
            raw,
            QUERY_HOLDERS if holders else 0,
            ctypes.byref(status),
            array if cap else None,
            cap,
            ctypes.byref(err),
        )
        if rc != 0:
            raise _errors.from_struct(err, rc, os.fsdecode(raw))
        # Holders come and go between calls: ask again until all fit.
        if status.n_holders <= cap:
            break
        cap = status.n_holders + 8
    found: Tuple[Holder, ...] = ()
    if holders:
        found = tuple(
            Holder(
                pid=h.pid,
                fd=h.fd if h.fd >= 0 else None,
                perm=Perm(h.perm),
                unshared=Perm(h.unshared),
                name=os.fsdecode(h.name),
            )
            for h in array[: status.n_holders]
        )
    return Status(
        perm=Perm(status.perm),
        unshared=Perm(status.unshared),
        flags=StatusFlag(status.flags),
        holders=found,
    )
