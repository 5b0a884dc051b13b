"""QEMU-compatible image locks (file-posix byte-range locking), through
libfpl.so.1.

Take, change, test and inspect the locks QEMU puts on disk images, exactly
as QEMU does, and name the processes holding an image::

    import fpl

    try:
        with fpl.acquire("vm.qcow2", mode="write") as lock:
            ...                          # write the image
            lock.update(mode="read")     # done writing: others may read too
    except fpl.Conflict as e:
        print(e)                         # QEMU's message, the holder named

Whole images (a qcow2 overlay, its backing chain, its data file)::

    for m in fpl.chain("top.qcow2", mode="write"):
        print(m.path, m.role.name, m.perm, m.shared)
    with fpl.acquire("top.qcow2", mode="write", chain=True) as lock:
        lock.verify()                    # every member's bytes still held?

Processes that use an image without locks (QEMU with ``locking=off``, an
incoming migration's destination) are invisible to QEMU's protocol; ask
for them::

    status = fpl.query("vm.raw", holders=True, openers=True)
    print([h.pid for h in status.openers])
    fpl.acquire("vm.raw", mode="write", no_unlocked_openers=True)  # fpl.Opened

Permission sets (``perm=``, ``shared=``) are :class:`Perm` values, sets of
them, or ``Perm.CONSISTENT_READ | Perm.WRITE``; they print as the ``fpl``
command's words (``consistent-read,write``). ``Status.in_use`` is true
while anybody holds a byte of QEMU's protocol.

The library is loaded on first use: from the path in the ``FPL_LIBRARY``
environment variable if set, else as ``libfpl.so.1`` by the system's loader.
"""

from ._chain import Member, chain
from ._errors import Conflict, Error, Opened
from ._lock import Lock, acquire, acquire_fd, check, version
from ._perm import MODES, Access, Format, HolderFlag, Mode, Perm, Role, StatusFlag
from ._query import Holder, Status, query, query_many

#: The version of libfpl these bindings were written for.
__version__ = "1.0.0"

__all__ = [
    "MODES",
    "Access",
    "Conflict",
    "Error",
    "Format",
    "Holder",
    "HolderFlag",
    "Lock",
    "Member",
    "Mode",
    "Opened",
    "Perm",
    "Role",
    "Status",
    "StatusFlag",
    "acquire",
    "acquire_fd",
    "chain",
    "check",
    "query",
    "query_many",
    "version",
]
