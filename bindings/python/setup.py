"""Builds the fpl wheel with libfpl.so.1 inside it, as fpl/_lib/libfpl.so.1,
so that the package works where no libfpl is installed. (The metadata is in
pyproject.toml; this file only adds that build step.)

The library comes from the first of:

1. ``FPL_BUILD_LIBRARY=/path/to/libfpl.so.1``: that file, as it is;
2. ``cargo build --release --lib`` at the repository's root (two folders
   up; ``$CARGO`` if set, else ``cargo`` on PATH; ``CARGO_TARGET_DIR`` and
   cargo's configuration are honoured);
3. without cargo, a library already built in the root's target/release,
   with a warning that it may be older than the sources.

The copy is loaded once here to check that it is a libfpl.so.1 this
machine can run: the wheel is tagged for this platform
(``py3-none-linux_x86_64`` on x86_64 Linux: any CPython 3, no extension
module, one native library loaded through ctypes).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

SONAME = "libfpl.so.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _log(text: str) -> None:
    print(f"fpl build: {text}", file=sys.stderr, flush=True)


def _is_libfpl_root(root: Path) -> bool:
    try:
        manifest = (root / "Cargo.toml").read_text()
    except OSError:
        return False
    return '\nname = "fpl"\n' in manifest and (root / "src" / "ffi.rs").is_file()


def _cargo_build(cargo: str) -> Path:
    """cargo build --release --lib at ROOT; the cdylib it wrote."""
    _log(f"{cargo} build --release --lib (in {ROOT})")
    done = subprocess.run(
        [cargo, "build", "--release", "--lib", "--message-format=json-render-diagnostics"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"fpl build: cargo build --release --lib failed (exit {done.returncode}); "
            "its messages are above. Set FPL_BUILD_LIBRARY to a built libfpl.so.1 instead."
        )
    for line in done.stdout.decode(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        target = message.get("target", {})
        if message.get("reason") == "compiler-artifact" and "cdylib" in target.get("kind", []):
            for name in message.get("filenames", []):
                if name.endswith(".so"):
                    return Path(name)
    raise SystemExit("fpl build: cargo built no libfpl.so (no cdylib in its messages)")


def find_library() -> Path:
    """The libfpl.so.1 to put in the wheel."""
    given = os.environ.get("FPL_BUILD_LIBRARY")
    if given:
        _log(f"using FPL_BUILD_LIBRARY={given}")
        return Path(given)
    if not _is_libfpl_root(ROOT):
        raise SystemExit(
            f"fpl build: {ROOT} is not libfpl's repository (building from an sdist?): "
            "set FPL_BUILD_LIBRARY to a built libfpl.so.1"
        )
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if cargo:
        return _cargo_build(cargo)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = target / "release" / "libfpl.so"
    if built.is_file():
        _log(
            f"warning: cargo not found; using {built}, which may be older than the "
            "sources (install Rust, or set FPL_BUILD_LIBRARY)"
        )
        return built
    raise SystemExit(
        "fpl build: cargo not found and no libfpl built: install Rust "
        "(https://rustup.rs), or set FPL_BUILD_LIBRARY to a built libfpl.so.1"
    )


def check_library(path: Path) -> str:
    """PATH's version, if it is a libfpl.so.1 this machine can load."""
    try:
        handle = ctypes.CDLL(str(path))
        version_of = handle.fpl_version
    except (OSError, AttributeError) as e:
        raise SystemExit(f"fpl build: {path} is no libfpl this machine can load: {e}")
    version_of.restype = ctypes.c_char_p
    version = str(version_of().decode())
    if version.split(".")[0] != SONAME.rsplit(".", 1)[1]:
        raise SystemExit(f"fpl build: {path} is libfpl {version}, not a {SONAME}")
    return version


class BuildPyWithLibrary(build_py):
    """build_py, then libfpl.so.1 copied into the built package."""

    def run(self) -> None:
        super().run()
        source = find_library()
        version = check_library(source)
        dest = Path(self.build_lib) / "fpl" / "_lib" / SONAME
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A copy of the file, never a symlink (target/release/libfpl.so.1 is
        # one): a wheel has no symlinks.
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o755)
        _log(f"libfpl {version} from {source} -> {dest}")

    def get_outputs(self, include_bytecode: bool = True) -> List[str]:
        dest = os.path.join(self.build_lib, "fpl", "_lib", SONAME)
        return [*super().get_outputs(include_bytecode), dest]


class WithNativeLibrary(Distribution):
    """A distribution that is not pure Python: installed into platlib (a
    wheel's Root-Is-Purelib: false), tagged for a platform."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """A platform wheel (it carries a native library), for any Python 3:
    py3-none-<platform>, not py3-none-any and not cp3X-cp3X-<platform>,
    since nothing is compiled against Python."""

    def get_tag(self) -> Tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=WithNativeLibrary,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel},
)
