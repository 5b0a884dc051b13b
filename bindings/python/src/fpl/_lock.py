"""Taking, changing, testing and releasing locks."""

from __future__ import annotations

import ctypes
import errno
import math
import os
import threading
import warnings
from types import TracebackType
from typing import IO, Optional, Type, Union

from . import _errors, _perm
from ._library import ErrorStruct, lib
from ._perm import Mode, Perm, PermLike

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class Lock:
    """QEMU's locks on one image, held until :meth:`release` (or the end of
    the ``with`` block). Made by :func:`acquire` and :func:`acquire_fd`.
    A lock acquired with ``chain=True`` holds every file of the image (see
    :func:`fpl.chain`) and stays a chain lock: :meth:`update`,
    :meth:`verify` and :meth:`release` act on all of them.

    The lock has a close-on-exec descriptor of its own; it is safe to use
    from several threads (calls on one lock are serialized)."""

    def __init__(
        self,
        handle: int,
        path: Optional[Union[str, bytes]],
        perm: int,
        shared: int,
        chain: bool = False,
    ) -> None:
        self._handle: Optional[int] = handle
        self._mutex = threading.Lock()
        #: the image's path, None for a lock taken on a descriptor
        self.path = path
        self._perm = Perm(perm)
        self._shared = Perm(shared)
        self._chain = chain

    @property
    def perm(self) -> Perm:
        """The permissions this lock uses."""
        return self._perm

    @property
    def shared(self) -> Perm:
        """The permissions this lock lets others use."""
        return self._shared

    @property
    def chain(self) -> bool:
        """Whether the lock covers the image's whole chain."""
        return self._chain

    @property
    def released(self) -> bool:
        return self._handle is None

    def update(
        self,
        mode: Optional[Mode] = None,
        *,
        perm: Optional[PermLike] = None,
        shared: Optional[PermLike] = None,
        exact: bool = False,
        no_unlocked_openers: bool = False,
    ) -> None:
        """Change the permissions (QEMU's prepare / commit / abort). On
        failure (:class:`Conflict` when somebody holds what is asked for,
        :class:`Opened` with ``no_unlocked_openers=True`` beside a process
        that has the image open without locks) the lock is left exactly as
        it was; loosening never conflicts. A chain lock changes every
        member, all or nothing."""
        p, s = _perm.request(mode, perm, shared)
        err = ErrorStruct()
        with self._mutex:
            if self._handle is None:
                raise ValueError("update of a released lock")
            rc = lib().fpl_update(
                self._handle,
                p,
                s,
                _perm.flags(exact, False, self._chain, no_unlocked_openers),
                ctypes.byref(err),
            )
            if rc != 0:
                raise _errors.from_struct(err, rc, self._filename())
            self._perm, self._shared = Perm(p), Perm(s)

    def verify(self) -> None:
        """Are all the bytes this lock took (for a chain lock: on every
        member) still held on the file? Tested from a new open file
        description, as other processes see it. Returns None if they are;
        raises :class:`Error` with ``errno.ENOLCK`` when they were lost (a
        file system that dropped them: a GlusterFS brick restart, an
        expired NFS lease), the message naming the file and the byte;
        ``errno.ENOTSUP`` for a lock taken with ``allow_posix=True`` that
        fell back to POSIX locks (its own process cannot test them).
        Changes nothing."""
        err = ErrorStruct()
        with self._mutex:
            if self._handle is None:
                raise ValueError("verify of a released lock")
            rc = lib().fpl_verify(self._handle, ctypes.byref(err))
        if rc != 0:
            raise _errors.from_struct(err, rc, self._filename())

    def release(self) -> None:
        """Unlock every byte this lock took and close its descriptor.
        Releasing twice does nothing."""
        with self._mutex:
            handle, self._handle = self._handle, None
        if handle is not None:
            rc = lib().fpl_release(handle)
            if rc != 0:
                raise _errors.from_struct(ErrorStruct(), rc, self._filename())

    def _filename(self) -> Optional[str]:
        return os.fsdecode(self.path) if self.path is not None else None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            try:
                warnings.warn(f"unreleased {self!r}", ResourceWarning, source=self)
                self.release()
            except Exception:  # noqa: BLE001 - nothing to report to in a finalizer
                pass

    def __repr__(self) -> str:
        state = "released" if self._handle is None else f"perm={self._perm!r}"
        kind = "fpl.Lock chain" if self._chain else "fpl.Lock"
        return f"<{kind} {self.path!r} {state}>"


def _encode(path: StrOrBytesPath) -> bytes:
    return os.fsencode(path)


def acquire(
    path: StrOrBytesPath,
    mode: Optional[Mode] = None,
    *,
    perm: Optional[PermLike] = None,
    shared: Optional[PermLike] = None,
    exact: bool = False,
    allow_posix: bool = False,
    chain: bool = False,
    no_unlocked_openers: bool = False,
    wait: Optional[float] = None,
) -> Lock:
    """Open PATH read-only and take QEMU's locks for MODE (``"read-shared"``,
    ``"read"``, ``"write"``, ``"exclusive"``) or for explicit ``perm`` and
    ``shared`` (:class:`Perm` sets). Use it as a context manager::

        with fpl.acquire("vm.qcow2", mode="write") as lock:
            ...

    ``exact=True`` locks and tests byte for byte what QEMU would, instead of
    the strict rules for new software. ``allow_posix=True`` falls back to
    process-wide POSIX locks on kernels without OFD locks.

    ``chain=True`` locks every file of the image as QEMU opens it (the
    image, its qcow2 data file, its backing chain: :func:`fpl.chain`), each
    with the request QEMU derives for it, all or nothing: a conflict on any
    member leaves none held and names that member's path.

    ``no_unlocked_openers=True`` also refuses, with :class:`Opened`
    (``errno.EBUSY``), while another process has the image (with
    ``chain=True``: any member) open and holds none of its bytes: QEMU with
    ``locking=off``, an incoming migration's destination. QEMU's protocol
    cannot see those; the locks are taken first, then /proc is walked once,
    and everything is released if one is found.

    ``wait=SECONDS`` (libfpl 1.1, ``fpl_acquire_wait``) tries again every
    100 ms while the image is in use (a conflict; with
    ``no_unlocked_openers``, an opener) for up to SECONDS, as ``fpl hold
    --wait`` does, then raises the last conflict with its holder named; 0
    tries once. It blocks the calling thread meanwhile. A negative or
    non-finite wait is a ``ValueError``; with a libfpl 1.0 library, an
    :class:`Error` with ``errno.ENOSYS``.

    Raises :class:`Conflict` when somebody holds the image in a way that
    conflicts (nothing is left held), another :class:`Error` otherwise
    (``FileNotFoundError``, ``IsADirectoryError``, ...)."""
    p, s = _perm.request(mode, perm, shared)
    raw = _encode(path)
    handle = ctypes.c_void_p()
    err = ErrorStruct()
    flags = _perm.flags(exact, allow_posix, chain, no_unlocked_openers)
    if wait is None:
        rc = lib().fpl_acquire(raw, p, s, flags, ctypes.byref(handle), ctypes.byref(err))
    else:
        if isinstance(wait, bool) or not isinstance(wait, (int, float)):
            raise TypeError(f"wait must be a number of seconds, not {wait!r}")
        if not math.isfinite(wait) or wait < 0:
            raise ValueError(f"wait must be a number of seconds from 0 up, not {wait!r}")
        library = lib()
        if not hasattr(library, "fpl_acquire_wait"):
            raise _errors.make(
                errno.ENOSYS,
                f"{library._name} is libfpl {version()}: wait= needs libfpl 1.1 "
                "(fpl_acquire_wait)",
                os.fsdecode(raw),
            )
        ms = min(math.ceil(wait * 1000), 0xFFFF_FFFF)
        rc = library.fpl_acquire_wait(
            raw, p, s, flags, ms, ctypes.byref(handle), ctypes.byref(err)
        )
    if rc != 0:
        raise _errors.from_struct(err, rc, os.fsdecode(raw))
    assert handle.value is not None
    return Lock(handle.value, os.fspath(path), p, s, chain)


def acquire_fd(
    fd: Union[int, IO[bytes], IO[str]],
    mode: Optional[Mode] = None,
    *,
    perm: Optional[PermLike] = None,
    shared: Optional[PermLike] = None,
    exact: bool = False,
    allow_posix: bool = False,
    no_unlocked_openers: bool = False,
) -> Lock:
    """As :func:`acquire`, on a descriptor (or a file object) the caller
    opened for reading. The locks belong to its open file description; the
    lock keeps a duplicate, so closing FD does not release them."""
    p, s = _perm.request(mode, perm, shared)
    number = fd if isinstance(fd, int) else fd.fileno()
    handle = ctypes.c_void_p()
    err = ErrorStruct()
    rc = lib().fpl_acquire_fd(
        number,
        p,
        s,
        _perm.flags(exact, allow_posix, False, no_unlocked_openers),
        ctypes.byref(handle),
        ctypes.byref(err),
    )
    if rc != 0:
        raise _errors.from_struct(err, rc, None)
    assert handle.value is not None
    return Lock(handle.value, None, p, s)


def check(
    path: StrOrBytesPath,
    mode: Optional[Mode] = None,
    *,
    perm: Optional[PermLike] = None,
    shared: Optional[PermLike] = None,
    exact: bool = False,
    allow_posix: bool = False,
    chain: bool = False,
    no_unlocked_openers: bool = False,
) -> None:
    """Would :func:`acquire` with these arguments succeed right now? Takes no
    lock. Returns None if it would; raises the :class:`Conflict` (or
    :class:`Opened`, or other :class:`Error`) that acquire would raise."""
    p, s = _perm.request(mode, perm, shared)
    raw = _encode(path)
    err = ErrorStruct()
    rc = lib().fpl_check(
        raw,
        p,
        s,
        _perm.flags(exact, allow_posix, chain, no_unlocked_openers),
        ctypes.byref(err),
    )
    if rc != 0:
        raise _errors.from_struct(err, rc, os.fsdecode(raw))


def version() -> str:
    """The loaded libfpl's version, e.g. ``"1.0.0"``."""
    return str(lib().fpl_version().decode())
