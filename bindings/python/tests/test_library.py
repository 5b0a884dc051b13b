"""Which libfpl.so.1 the package loads: FPL_LIBRARY, else the wheel's own
copy (fpl/_lib/libfpl.so.1), else the system's; an fpl.Error saying what
to do when there is none. And the wheel itself: tagged for the platform,
carrying the library, working in a fresh virtual environment where no
other libfpl can be found, against a QEMU holding an image."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import fpl
from fpl import _library

from conftest import HoldImage

REPO = Path(__file__).resolve().parents[3]
PACKAGE = Path(fpl.__file__).resolve().parent

# Prints the libfpl files this process mapped, one a line, after a first
# call; or the fpl.Error that call raised, as "Error ERRNO FILENAME: TEXT".
SHOW_LIBRARY = """\
import fpl
try:
    fpl.version()
except fpl.Error as e:
    print(f"Error {e.errno} {e.filename}: {e}")
else:
    with open("/proc/self/maps") as maps:
        for path in sorted({l.split()[-1] for l in maps if "libfpl" in l}):
            print(path)
"""


def _clean_env(**extra: str) -> Dict[str, str]:
    """This environment without anything that tells the loader or fpl
    where a libfpl is, plus EXTRA."""
    hidden = ("FPL_LIBRARY", "LD_LIBRARY_PATH", "LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(extra)
    return env


def _python(
    code: str, env: Dict[str, str], cwd: Path, python: str = sys.executable
) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([python, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)


def _mapped(code_result: "subprocess.CompletedProcess[str]") -> List[str]:
    assert code_result.returncode == 0, code_result.stderr
    return code_result.stdout.splitlines()


def _system_libfpl(cwd: Path) -> Optional[str]:
    """The libfpl.so.1 this host's loader finds with no help, if any."""
    probe = (
        "import ctypes, ctypes.util\n"
        "try:\n"
        "    ctypes.CDLL('libfpl.so.1'); print('libfpl.so.1')\n"
        "except OSError:\n"
        "    print(ctypes.util.find_library('fpl') or '')\n"
    )
    found = _python(probe, _clean_env(), cwd).stdout.strip()
    return found or None


@pytest.fixture
def without_copy(tmp_path: Path) -> Path:
    """A folder holding this fpl package without its fpl/_lib/ (as a
    source checkout is); put it on PYTHONPATH to import that one."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "fpl", ignore=shutil.ignore_patterns("_lib", "__pycache__"))
    return site


def _test_library() -> str:
    """A libfpl.so.1 other than the package's copy: FPL_TEST_LIBRARY
    (tests/bindings.rs passes its debug build), else the package's."""
    built = os.environ.get("FPL_TEST_LIBRARY") or _library.PACKAGED
    assert os.path.isfile(built), (
        f"no libfpl to test with: set FPL_TEST_LIBRARY, or install the wheel ({built} is missing)"
    )
    return built


def test_installed_package_loads_its_own_copy(tmp_path: Path) -> None:
    assert os.path.isfile(_library.PACKAGED), "the installed fpl package carries no libfpl.so.1"
    assert Path(_library.PACKAGED) == PACKAGE / "_lib" / "libfpl.so.1"
    assert _mapped(_python(SHOW_LIBRARY, _clean_env(), tmp_path)) == [_library.PACKAGED]


def test_fpl_library_overrides_the_packages_copy(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "libfpl.so.1"
    other.parent.mkdir()
    shutil.copyfile(_test_library(), other)
    loaded = _python(SHOW_LIBRARY, _clean_env(FPL_LIBRARY=str(other)), tmp_path)
    assert _mapped(loaded) == [str(other)]


def test_missing_fpl_library_is_an_error_never_a_fallback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "libfpl.so.1"
    # The package's copy and LD_LIBRARY_PATH would both do: neither is used.
    env = _clean_env(FPL_LIBRARY=str(missing), LD_LIBRARY_PATH=str(Path(_test_library()).parent))
    refused = _python(SHOW_LIBRARY, env, tmp_path)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith(f"Error {errno.ENOENT} {missing}: FPL_LIBRARY={missing}: ")
    assert "unset FPL_LIBRARY" in refused.stdout


def test_without_a_copy_the_systems_loader_finds_it(tmp_path: Path, without_copy: Path) -> None:
    library_dir = tmp_path / "lib"
    library_dir.mkdir()
    shutil.copyfile(_test_library(), library_dir / "libfpl.so.1")
    env = _clean_env(PYTHONPATH=str(without_copy), LD_LIBRARY_PATH=str(library_dir))
    where = _python("import fpl; print(fpl.__file__)", env, tmp_path)
    assert where.stdout.strip() == str(without_copy / "fpl" / "__init__.py"), where.stderr
    assert _mapped(_python(SHOW_LIBRARY, env, tmp_path)) == [str(library_dir / "libfpl.so.1")]


def test_no_library_anywhere_raises_fpl_error_saying_what_to_do(
    tmp_path: Path, without_copy: Path
) -> None:
    env = _clean_env(PYTHONPATH=str(without_copy))
    # Importing never needs the library; the first call does.
    imported = _python("import fpl; print(fpl.Perm.WRITE)", env, tmp_path)
    assert imported.stdout == "write\n", imported.stderr

    system = _system_libfpl(tmp_path)
    shown = _python(SHOW_LIBRARY, env, tmp_path)
    if system is not None:
        # This host has a libfpl installed: the third place is used.
        lines = _mapped(shown)
        assert len(lines) == 1 and os.path.basename(lines[0]).startswith("libfpl.so"), lines
        return
    assert shown.returncode == 0, shown.stderr
    copy = without_copy / "fpl" / "_lib" / "libfpl.so.1"
    assert shown.stdout.startswith(f"Error {errno.ENOENT} None: libfpl.so.1 not found: "), shown
    for advice in (f"has no copy ({copy})", "pip install", "make install", "FPL_LIBRARY"):
        assert advice in shown.stdout, (advice, shown.stdout)

    # An fpl.Error, a FileNotFoundError, from whichever call comes first.
    code = (
        "import errno, fpl\n"
        "try:\n"
        "    fpl.query('vm.qcow2')\n"
        "except fpl.Error as e:\n"
        "    assert isinstance(e, FileNotFoundError) and e.errno == errno.ENOENT, repr(e)\n"
        "    print('caught')\n"
    )
    caught = _python(code, env, tmp_path)
    assert caught.stdout == "caught\n", caught.stderr


# ---- the wheel ------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel tests/bindings.rs built (FPL_WHEEL), else one built here
    with `pip wheel bindings/python` (which runs cargo build --release)."""
    given = os.environ.get("FPL_WHEEL")
    if given:
        yield Path(given)
        return
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
         str(REPO / "bindings" / "python")],
        check=True,
    )
    (built,) = out.glob("*.whl")
    yield built


def test_wheel_is_tagged_for_this_platform_and_carries_libfpl(wheel: Path) -> None:
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"libfpl-{fpl.__version__}-py3-none-{platform}.whl"
    with zipfile.ZipFile(wheel) as archive:
        info = archive.read(f"libfpl-{fpl.__version__}.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: false\n" in info
        assert f"Tag: py3-none-{platform}\n" in info
        names = archive.namelist()
        assert "fpl/_lib/libfpl.so.1" in names and "fpl/py.typed" in names
        library = archive.read("fpl/_lib/libfpl.so.1")
    assert library[:4] == b"\x7fELF"
    # A real library (not a symlink's target name), loadable here, of ABI 1,
    # the same version as the package.
    assert len(library) > 100_000
    unpacked = wheel.parent / "unpacked-libfpl.so.1"
    unpacked.write_bytes(library)
    handle = ctypes.CDLL(str(unpacked))
    handle.fpl_version.restype = ctypes.c_char_p
    assert handle.fpl_version().decode() == fpl.__version__


def test_wheel_works_in_a_fresh_venv_with_no_other_libfpl(
    tmp_path: Path, wheel: Path, image: Path, qemu_holding: HoldImage
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    qemu = qemu_holding(image)
    code = (
        "import sys, fpl\n"
        "image = sys.argv[1]\n"
        "print(fpl.__file__)\n"
        "try:\n"
        "    fpl.acquire(image, mode='write')\n"
        "except fpl.Conflict as e:\n"
        "    print(e.holder_pid, e.byte, e.perm)\n"
        "status = fpl.query(image, holders=True)\n"
        "print(status.in_use, [(h.pid, h.name) for h in status.holders])\n"
        "with fpl.acquire(image, perm={fpl.Perm.CONSISTENT_READ}, shared=fpl.Perm.ALL) as lock:\n"
        "    print(lock.perm, lock.shared)\n"
        "with open('/proc/self/maps') as maps:\n"
        "    print(sorted({l.split()[-1] for l in maps if 'libfpl' in l}))\n"
    )
    ran = subprocess.run(
        [python, "-c", code, str(image)],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert ran.stdout.splitlines() == [
        str(site / "fpl" / "__init__.py"),
        f"{qemu.pid} 201 write",
        f"True [({qemu.pid}, 'qemu-io')]",
        "consistent-read all",
        str([str(site / "fpl" / "_lib" / "libfpl.so.1")]),
    ]
