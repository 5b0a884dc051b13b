"""Finding and loading libfpl.so.1, and its C types (include/fpl.h, ABI 1)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import threading
from typing import Optional

from . import _errors

#: The SONAME these bindings speak to: any libfpl 1.x.
SONAME = "libfpl.so.1"
MESSAGE_SIZE = 256
NAME_SIZE = 64
PATH_SIZE = 4096


class ErrorStruct(ctypes.Structure):
    """``fpl_error``."""

    _fields_ = [
        ("code", ctypes.c_int32),
        ("perm", ctypes.c_uint32),
        ("byte", ctypes.c_uint32),
        ("holder_pid", ctypes.c_int32),
        ("message", ctypes.c_char * MESSAGE_SIZE),
        ("reserved", ctypes.c_uint32 * 8),
    ]


class StatusStruct(ctypes.Structure):
    """``fpl_status``."""

    _fields_ = [
        ("perm", ctypes.c_uint32),
        ("unshared", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("n_holders", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 4),
    ]


class HolderStruct(ctypes.Structure):
    """``fpl_holder``."""

    _fields_ = [
        ("pid", ctypes.c_int32),
        ("fd", ctypes.c_int32),
        ("perm", ctypes.c_uint32),
        ("unshared", ctypes.c_uint32),
        ("name", ctypes.c_char * NAME_SIZE),
        ("access", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 6),
    ]


class MemberStruct(ctypes.Structure):
    """``fpl_member``."""

    _fields_ = [
        ("role", ctypes.c_uint32),
        ("format", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("perm", ctypes.c_uint32),
        ("shared", ctypes.c_uint32),
        ("path", ctypes.c_char * PATH_SIZE),
        ("reserved", ctypes.c_uint32 * 8),
    ]


# ABI 1's sizes: the caller allocates these structures, so a field added,
# dropped or resized here would make libfpl write past them. (The tests
# also compare every offset with a C compiler's, from include/fpl.h.)
SIZES = {ErrorStruct: 304, StatusStruct: 32, HolderStruct: 112, MemberStruct: 4148}
for _struct, _size in SIZES.items():
    if ctypes.sizeof(_struct) != _size:  # pragma: no cover - a broken edit
        raise ImportError(
            f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, not ABI 1's {_size}"
        )


_u32 = ctypes.c_uint32
_err = ctypes.POINTER(ErrorStruct)

# Functions of libfpl 1.1, looked up only when a 1.1 library is loaded.
_PROTOTYPES_1_1 = {
    "fpl_acquire_wait": (
        ctypes.c_int,
        [
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ErrorStruct),
        ],
    ),
}

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
    "fpl_query_many": (
        ctypes.c_int,
        [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_size_t,
            _u32,
            ctypes.POINTER(StatusStruct),
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(HolderStruct),
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
            _err,
        ],
    ),
    "fpl_chain": (
        ctypes.c_int,
        [
            ctypes.c_char_p,
            _u32,
            _u32,
            _u32,
            ctypes.POINTER(MemberStruct),
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
            _err,
        ],
    ),
    "fpl_verify": (ctypes.c_int, [ctypes.c_void_p, _err]),
    "fpl_version": (ctypes.c_char_p, []),
}

_loaded: Optional[ctypes.CDLL] = None
_loading = threading.Lock()

#: The copy of libfpl a wheel carries (put there when the wheel is built:
#: bindings/python/setup.py); absent in a source checkout.
PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", SONAME)

INSTALL_HINT = (
    "pip install the package from libfpl's bindings/python (its wheel carries "
    f"{SONAME}), or install libfpl (make, then make install as root, e.g. "
    "sudo make install, then ldconfig), "
    f"or set FPL_LIBRARY to the path of a {SONAME}"
)


def _load(path: str, origin: str) -> ctypes.CDLL:
    """dlopen PATH (named by ORIGIN), as an fpl.Error when it cannot be."""
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        text = f"{path} ({origin}) cannot be loaded: {e}"
        raise _errors.make(_errno.ELIBBAD, text, path) from None


def _open() -> ctypes.CDLL:
    explicit = os.environ.get("FPL_LIBRARY")
    if explicit:
        # An explicit choice is never silently replaced by another library.
        if os.sep in explicit and not os.path.exists(explicit):
            raise _errors.make(
                _errno.ENOENT,
                f"FPL_LIBRARY={explicit}: no such file (unset FPL_LIBRARY to use "
                f"the fpl package's or the system's {SONAME})",
                explicit,
            )
        return _load(explicit, "FPL_LIBRARY")
    if os.path.exists(PACKAGED):
        # The wheel's own copy, built from the same sources as this package;
        # if it cannot be loaded, saying so beats picking another libfpl.
        return _load(PACKAGED, "the fpl package's copy")
    try:
        # The loader's own search: LD_LIBRARY_PATH, RUNPATH, the ld.so cache.
        return ctypes.CDLL(SONAME)
    except OSError as first:
        # Else wherever the toolchain would find -lfpl (LIBRARY_PATH, ...);
        # lib() then refuses a libfpl of another ABI by name.
        found = ctypes.util.find_library("fpl")
        if found is None:
            raise _errors.make(
                _errno.ENOENT,
                f"{SONAME} not found: FPL_LIBRARY is not set, the fpl package "
                f"has no copy ({PACKAGED}) and the system's loader has none "
                f"({first}); {INSTALL_HINT}",
            ) from None
        return _load(found, "the system's libfpl")


def lib() -> ctypes.CDLL:
    """The loaded libfpl, with every function's prototype set (loaded once,
    on first use). Raises fpl.Error (errno.ENOENT) when none is found,
    errno.ELIBBAD when the one found cannot be used."""
    global _loaded
    with _loading:
        if _loaded is None:
            handle = _open()
            for name, (restype, argtypes) in _PROTOTYPES.items():
                try:
                    function = getattr(handle, name)
                except AttributeError:
                    raise _errors.make(
                        _errno.ELIBBAD,
                        f"{handle._name} lacks {name}: not a {SONAME} (libfpl ABI 1)",
                        handle._name,
                    ) from None
                function.restype = restype
                function.argtypes = argtypes
            # Added in 1.1 (fpl_acquire_wait@@LIBFPL_1.1): optional, so
            # that a 1.0 library still serves everything else.
            for name, (restype, argtypes) in _PROTOTYPES_1_1.items():
                function = getattr(handle, name, None)
                if function is not None:
                    function.restype = restype
                    function.argtypes = argtypes
            version = handle.fpl_version().decode()
            if version.split(".")[0] != SONAME.rsplit(".", 1)[1]:
                raise _errors.make(
                    _errno.ELIBBAD,
                    f"{handle._name} is libfpl {version}, not a {SONAME}",
                    handle._name,
                )
            _loaded = handle
        return _loaded
