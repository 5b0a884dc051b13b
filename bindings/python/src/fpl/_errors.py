"""Errors: OSError subclasses carrying libfpl's errno and message."""

from __future__ import annotations

import errno as _errno
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Type

from ._perm import Perm

if TYPE_CHECKING:  # _library raises these errors: no import at run time
    from ._library import ErrorStruct


class Error(OSError):
    """A libfpl call failed. ``errno`` is the error number (``errno.ENOENT``,
    ``errno.EACCES``, ...), ``strerror`` libfpl's message (which names the
    path), ``filename`` the path when there is one.

    Also an instance of the built-in class for its errno, so
    ``except FileNotFoundError`` works as it does for ``open()``.

    The first call also raises it when libfpl.so.1 cannot be found
    (``errno.ENOENT``, the message saying what to install or set) or
    cannot be used (``errno.ELIBBAD``: not loadable, another ABI)."""

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> Tuple[Any, ...]:
        # Rebuilt through the errno, so that the mixed classes pickle too.
        return (_rebuild, (self.errno, self.strerror, self.filename), self.__dict__)


class Conflict(Error, BlockingIOError):
    """Somebody holds the image in a way that conflicts with the request
    (``errno.EAGAIN``, as QEMU's lock test returns).

    ``str(conflict)`` is QEMU's message: ``Failed to get "write" lock`` and
    the holder, then ``Is another process using the image [PATH]?``."""

    #: the permission in conflict (asked for, or refused to share)
    perm: Perm = Perm.NONE
    #: the lock byte in conflict, e.g. 201
    byte: int = 0
    #: a process holding that byte, or None when it cannot be seen (another
    #: host, another PID namespace, another user's process)
    holder_pid: Optional[int] = None

    @property
    def message(self) -> str:
        """QEMU's message (the same as ``strerror``)."""
        return str(self.strerror)


class Opened(Error):
    """Another process has the image open and holds none of its bytes
    (``errno.EBUSY``): QEMU with ``locking=off``, or an incoming
    migration's destination before it takes over. Raised only when asked
    for with ``no_unlocked_openers=True``; nothing is left held.

    ``str(opened)`` names the file (with ``chain=True``: the member), the
    process and its descriptor: ``'vm.raw' is open read-write by qemu-io
    (pid 4410, fd 9) without locks: ...``. :func:`fpl.query` with
    ``openers=True`` lists such processes."""


_by_base: Dict[Type[OSError], Type[Error]] = {}


def _error_class(code: int) -> Type[Error]:
    """Error, mixed with the built-in class Python uses for CODE."""
    base = type(OSError(code, ""))
    if base is OSError:
        return Error
    cls = _by_base.get(base)
    if cls is None:
        cls = type(base.__name__, (Error, base), {"__module__": __name__})
        _by_base[base] = cls
    return cls


def _class_of(code: int) -> Type[Error]:
    if code == _errno.EAGAIN:
        return Conflict
    if code == _errno.EBUSY:
        return Opened
    return _error_class(code)


def _rebuild(code: int, text: str, filename: Optional[str]) -> Error:
    return _class_of(code)(code, text, filename)


def make(code: int, text: str, filename: Optional[str] = None) -> Error:
    """The exception for errno CODE (positive) with message TEXT."""
    return _class_of(code)(code, text, filename)


def message(err: ErrorStruct) -> str:
    """The error's message; non-UTF-8 path bytes survive as surrogates."""
    return os.fsdecode(err.message)


def from_struct(
    err: ErrorStruct, rc: int, filename: Optional[str], default: Optional[str] = None
) -> Error:
    """The exception for a failed call that returned RC and filled ERR
    (DEFAULT, or errno's name, when ERR has no message)."""
    code = -rc
    text = message(err) or default or _errno.errorcode.get(code, str(code))
    if code == _errno.EAGAIN:
        conflict = Conflict(code, text, filename)
        conflict.perm = Perm(err.perm)
        conflict.byte = err.byte
        conflict.holder_pid = err.holder_pid if err.holder_pid > 0 else None
        return conflict
    return _class_of(code)(code, text, filename)
