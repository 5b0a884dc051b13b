"""QEMU-compatible image locks (file-posix byte-range locking), through
libfpl.so.0.

Take, change, test and inspect the locks QEMU puts on disk images, exactly
as QEMU does, and name the processes holding an image::

    import fpl

    try:
        with fpl.acquire("vm.qcow2", mode="write") as lock:
            ...                          # write the image
            lock.update(mode="read")     # done writing: others may read too
    except fpl.Conflict as e:
        print(e)                         # QEMU's message, the holder named

The library is loaded on first use: from the path in the ``FPL_LIBRARY``
environment variable if set, else as ``libfpl.so.0`` by the system's loader.
"""

from ._errors import Conflict, Error
from ._lock import Lock, acquire, acquire_fd, check, version
from ._perm import MODES, Mode, Perm, StatusFlag
from ._query import Holder, Status, query

#: The version of libfpl these bindings were written for.
__version__ = "0.1.0"

__all__ = [
    "MODES",
    "Conflict",
    "Error",
    "Holder",
    "Lock",
    "Mode",
    "Perm",
    "Status",
    "StatusFlag",
    "acquire",
    "acquire_fd",
    "check",
    "query",
    "version",
]
