"""The files of an image, as QEMU opens them: its backing chain and data
files."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import List, Optional, Union

from . import _errors, _perm
from ._library import ErrorStruct, MemberStruct, lib
from ._lock import StrOrBytesPath
from ._perm import Format, Mode, Perm, PermLike, Role


@dataclass(frozen=True)
class Member:
    """One file of an image."""

    #: as QEMU opens it: a relative backing name joined to the overlay's
    #: directory as given, symlinks not resolved; a relative data-file name
    #: as written (QEMU opens it from the working directory). ``bytes`` when
    #: the image's path was given as bytes, else ``str`` (undecodable bytes
    #: as surrogates, like ``os.listdir``).
    path: Union[str, bytes]
    role: Role
    format: Format
    #: 0: the image and its data file; 1: its backing file and that file's
    #: data file; ...
    depth: int
    #: what ``acquire(..., chain=True)`` takes on this member for the
    #: request asked about (QEMU's derivation, strict or ``exact``)
    perm: Perm
    shared: Perm


def chain(
    path: StrOrBytesPath,
    mode: Optional[Mode] = None,
    *,
    perm: Optional[PermLike] = None,
    shared: Optional[PermLike] = None,
    exact: bool = False,
) -> List[Member]:
    """The files of the image at PATH in the order QEMU opens them (the
    image first, then its data file, its backing file, ...), each with what
    ``acquire(path, mode, chain=True)`` would take on it. Reads only their
    headers and takes no lock.

    Raises :class:`Error` as QEMU words it when a member cannot be opened
    (``FileNotFoundError``: ``Could not open backing file: Could not open
    ...``), ``errno.ELOOP`` for a loop or a chain too deep, ``errno.EINVAL``
    for a malformed header, ``errno.ENOTSUP`` for a format libfpl does not
    follow."""
    p, s = _perm.request(mode, perm, shared)
    as_bytes = isinstance(os.fspath(path), bytes)
    raw = os.fsencode(path)
    err = ErrorStruct()
    n = ctypes.c_size_t()
    cap = 8
    while True:
        members = (MemberStruct * cap)()
        rc = lib().fpl_chain(
            raw, p, s, _perm.flags(exact, False), members, cap, ctypes.byref(n), ctypes.byref(err)
        )
        if rc != 0:
            raise _errors.from_struct(err, rc, os.fsdecode(raw))
        if n.value <= cap:
            break
        # The image's headers may change between calls: ask until all fit.
        cap = n.value
    return [
        Member(
            path=m.path if as_bytes else os.fsdecode(m.path),
            role=Role(m.role),
            format=Format(m.format),
            depth=m.depth,
            perm=Perm(m.perm),
            shared=Perm(m.shared),
        )
        for m in members[: n.value]
    ]
