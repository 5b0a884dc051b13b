"""Which bytes of an image are held, and by whom."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

from . import _errors
from ._library import ErrorStruct, HolderStruct, StatusStruct, lib
from ._lock import StrOrBytesPath
from ._perm import Access, HolderFlag, Perm, StatusFlag, query_flags


@dataclass(frozen=True)
class Holder:
    """One process descriptor holding bytes of the image, or (with
    ``openers=True``, :attr:`no_locks`) having it open without any."""

    pid: int
    #: the descriptor in that process, None if unknown
    fd: Optional[int]
    #: permission bytes (100+i) this descriptor locks
    perm: Perm
    #: unshare bytes (200+i) this descriptor locks
    unshared: Perm
    #: the process name (/proc/PID/comm), "" if unknown
    name: str
    #: how that descriptor was opened: READ, WRITE or both
    access: Access = Access.NONE
    #: HolderFlag.NO_LOCKS for an opener that holds none of the bytes,
    #: HolderFlag.INFERRED for a holder named without its lock lines,
    #: HolderFlag.OTHER_NODE (and NODE_LOCKS) for an opener using another
    #: device node of the same block device
    flags: HolderFlag = HolderFlag.NONE

    @property
    def no_locks(self) -> bool:
        """An opener: the process has the image open on this descriptor and
        holds none of its bytes (QEMU with ``locking=off``, an incoming
        migration's destination); ``perm`` and ``unshared`` are empty."""
        return bool(self.flags & HolderFlag.NO_LOCKS)

    @property
    def inferred(self) -> bool:
        """Named by inference, not seen holding: the file system keeps its
        locks out of /proc (FUSE: GlusterFS), bytes are held that no lock
        line accounts for, and this process has the image open. ``perm``
        and ``unshared`` are every such byte."""
        return bool(self.flags & HolderFlag.INFERRED)


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
    #: With ``openers=True``, the openers too (:attr:`Holder.no_locks`), in
    #: the same (pid, descriptor) order.
    holders: Tuple[Holder, ...]

    @property
    def openers(self) -> Tuple[Holder, ...]:
        """The holders that are openers: processes with the image open and
        none of its bytes (listed only with ``openers=True``). An image
        with openers is in use although :attr:`in_use` is False."""
        return tuple(h for h in self.holders if h.no_locks)

    @property
    def in_use(self) -> bool:
        """Whether somebody, this process included, holds a byte of QEMU's
        protocol: a permission byte (100-103), an unshare byte (200-203),
        QEMU 6.2's byte 104 or 204 (:attr:`legacy`) or libvirt's byte 0
        (:attr:`libvirt`). A holder this host cannot see (another host on
        shared storage, another PID namespace) counts: bytes are held
        whether or not :attr:`holders` names anybody.

        False means no process takes part in the protocol, not that nobody
        has the image open: openers (QEMU with ``locking=off``) hold no
        byte; ask ``query(path, openers=True)`` and see :attr:`openers`."""
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


def query(path: StrOrBytesPath, holders: bool = False, openers: bool = False) -> Status:
    """Which bytes are held on PATH, by anybody (this process included).
    With ``holders=True`` also find the processes holding them (a walk of
    /proc: ask only when you need names). With ``openers=True`` also list,
    from the same walk, the processes that have the image open and hold
    none of its bytes (:attr:`Holder.no_locks`: QEMU with
    ``locking=off``, an incoming migration's destination), which QEMU's
    protocol cannot see; this process is never one."""
    raw = os.fsencode(path)
    status = StatusStruct()
    err = ErrorStruct()
    listed = holders or openers
    cap = 8 if listed else 0
    while True:
        array = (HolderStruct * cap)()
        rc = lib().fpl_query(
            raw,
            query_flags(holders, openers),
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
    return _status(status, array[: status.n_holders] if listed else [])


def _holder(h: HolderStruct) -> Holder:
    return Holder(
        pid=h.pid,
        fd=h.fd if h.fd >= 0 else None,
        perm=Perm(h.perm),
        unshared=Perm(h.unshared),
        name=os.fsdecode(h.name),
        access=Access(h.access),
        flags=HolderFlag(h.flags),
    )


def _status(status: StatusStruct, holders: Iterable[HolderStruct]) -> Status:
    return Status(
        perm=Perm(status.perm),
        unshared=Perm(status.unshared),
        flags=StatusFlag(status.flags),
        holders=tuple(_holder(h) for h in holders),
    )


def query_many(
    paths: Iterable[StrOrBytesPath], holders: bool = False, openers: bool = False
) -> List[Union[Status, _errors.Error]]:
    """:func:`query` for many images at once: each image's bytes are
    tested, then the holders (and with ``openers=True`` the openers) of all
    of them are found with one walk of /proc, so asking about N images (the members of a chain, every disk of
    a host) costs about one :func:`query`.

    Returns one entry per path, in order: its :class:`Status`, or the
    :class:`Error` that ``query(path)`` would raise (returned, not raised,
    so that one missing image does not hide the others)::

        for path, found in zip(paths, fpl.query_many(paths, holders=True)):
            if isinstance(found, fpl.Error):
                print(found)
            else:
                print(path, [h.name for h in found.holders])
    """
    raws = [os.fsencode(p) for p in paths]
    n = len(raws)
    c_paths = (ctypes.c_char_p * n)(*raws)
    statuses = (StatusStruct * n)()
    results = (ctypes.c_int32 * n)()
    err = ErrorStruct()
    total = ctypes.c_size_t()
    listed = holders or openers
    cap = 8 * n if listed else 0
    while True:
        array = (HolderStruct * cap)()
        rc = lib().fpl_query_many(
            c_paths,
            n,
            query_flags(holders, openers),
            statuses,
            results,
            array if cap else None,
            cap,
            ctypes.byref(total),
            ctypes.byref(err),
        )
        # RC is the first image's failure (described in ERR); RESULTS says
        # which images failed. Anything else (a bad argument) wrote nothing.
        if rc != 0 and rc not in list(results):
            raise _errors.from_struct(err, rc, None)
        # Holders come and go between calls: ask again until all fit.
        if total.value <= cap:
            break
        cap = total.value + 8
    out: List[Union[Status, _errors.Error]] = []
    first = True
    start = 0
    for i in range(n):
        name = os.fsdecode(raws[i])
        if results[i] == 0:
            count = statuses[i].n_holders if listed else 0
            out.append(_status(statuses[i], array[start : start + count]))
            start += count
        elif first:
            # ERR describes the first image that could not be inspected.
            first = False
            out.append(_errors.from_struct(err, results[i], name))
        else:
            # Only its errno is known: worded like libfpl's messages.
            code = -results[i]
            label = _errno.errorcode.get(code, str(code))
            text = f"cannot inspect '{name}': {label}: {os.strerror(code)}"
            out.append(_errors.from_struct(ErrorStruct(), results[i], name, text))
    return out
