"""Finding and loading libfpl.so.0, and its C types (include/fpl.h)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Optional

#: The SONAME these bindings speak to: any libfpl 0.x.
SONAME = "libfpl.so.0"
MESSAGE_SIZE = 256
NAME_SIZE = 64


class ErrorStruct(ctypes.Structure):
    """``fpl_error``."""

    _fields_ = [
        ("code", ctypes.c_int32),
        ("perm", ctypes.c_uint32),
        ("byte", ctypes.c_uint32),
        ("holder_pid", ctypes.c_int32),
        ("message", ctypes.c_char * MESSAGE_SIZE),
    ]


class StatusStruct(ctypes.Structure):
    """``fpl_status``."""

    _fields_ = [
        ("perm", ctypes.c_uint32),
        ("unshared", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("n_holders", ctypes.c_uint32),
    ]


class HolderStruct(ctypes.Structure):
    """``fpl_holder``."""

    _fields_ = [
        ("pid", ctypes.c_int32),
        ("fd", ctypes.c_int32),
        ("perm", ctypes.c_uint32),
        ("unshared", ctypes.c_uint32),
        ("name", ctypes.c_char * NAME_SIZE),
    ]


_u32 = ctypes.c_uint32
_err = ctypes.POINTER(ErrorStruct)

# name: (result type, argument types), as declared in include/fpl.h; the
# lock handle (fpl_lock *) is an opaque pointer.
_PROTOTYPES = {
    "fpl_acquire": (
        ctypes.c_int,
        [ctypes.c_char_p, _u32, _u32, _u32, ctypes.POINTER(ctypes.c_void_p), _err],
    ),
    "fpl_acquire_fd": (
        ctypes.c_int,
        [ctypes.c_int, _u32, _u32, _u32, ctypes.POINTER(ctypes.c_void_p), _err],
    ),
    "fpl_update": (ctypes.c_int, [ctypes.c_void_p, _u32, _u32, _u32, _err]),
    "fpl_release": (ctypes.c_int, [ctypes.c_void_p]),
    "fpl_check": (ctypes.c_int, [ctypes.c_char_p, _u32, _u32, _u32, _err]),
    "fpl_query": (
        ctypes.c_int,
        [
            ctypes.c_char_p,
            _u32,
            ctypes.POINTER(StatusStruct),
            ctypes.POINTER(HolderStruct),
            ctypes.c_size_t,
            _err,
        ],
    ),
    "fpl_version": (ctypes.c_char_p, []),
}

_loaded: Optional[ctypes.CDLL] = None
_loading = threading.Lock()


def _open() -> ctypes.CDLL:
    explicit = os.environ.get("FPL_LIBRARY")
    if explicit:
        # An explicit choice is never silently replaced by another library.
        return ctypes.CDLL(explicit)
    try:
        # The loader's own search: LD_LIBRARY_PATH, RUNPATH, the ld.so cache.
        return ctypes.CDLL(SONAME)
    except OSError as first:
        found = ctypes.util.find_library("fpl")
        if found is None:
            raise OSError(
                f"{SONAME} not found ({first}): install libfpl (make install, "
                "then ldconfig) or set FPL_LIBRARY to the library's path"
            ) from None
        return ctypes.CDLL(found)


def lib() -> ctypes.CDLL:
    """The loaded libfpl, with every function's prototype set (loaded once)."""
    global _loaded
    with _loading:
        if _loaded is None:
            handle = _open()
            for name, (restype, argtypes) in _PROTOTYPES.items():
                try:
                    function = getattr(handle, name)
                except AttributeError:
                    raise OSError(
                        f"{handle._name} lacks {name}: not a compatible libfpl"
                    ) from None
                function.restype = restype
                function.argtypes = argtypes
            version = handle.fpl_version().decode()
            if version.split(".")[0] != SONAME.rsplit(".", 1)[1]:
                raise OSError(f"{handle._name} is libfpl {version}, not a {SONAME}")
            _loaded = handle
        return _loaded


def message(err: ErrorStruct) -> str:
    """The error's message; non-UTF-8 path bytes survive as surrogates."""
    return os.fsdecode(err.message)
