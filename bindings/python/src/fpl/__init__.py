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

libfpl.so.1 is loaded on first use (not at import), from the first of:

1. the path in the ``FPL_LIBRARY`` environment variable, if set (never
   replaced by another library when it fails to load);
2. the copy inside this package, ``fpl/_lib/libfpl.so.1``, which a wheel
   built from bindings/python carries;
3. the system's ``libfpl.so.1``, as the loader finds it (``LD_LIBRARY_PATH``,
   the ld.so cache), else where ``ctypes.util.find_library("fpl")`` does.

When none is found, that first call raises :class:`Error` with
``errno.ENOENT`` (a ``FileNotFoundError``) saying what to install or set;
a library that cannot be used (another ABI, another architecture) raises
:class:`Error` with ``errno.ELIBBAD``.
"""

from ._chain import Member, chain
from ._errors import Conflict, Error, Opened
from ._lock import Lock, acquire, acquire_fd, check, version
from ._perm import MODES, Access, Format, HolderFlag, Mode, Perm, Role, StatusFlag
from ._query import Holder, Status, query, query_many

#: The version of libfpl these bindings were written for.
__version__ = "1.1.0"

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
