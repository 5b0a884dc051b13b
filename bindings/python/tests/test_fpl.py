"""libfpl from Python, against real QEMU processes (qemu-io) holding images."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Set

import pytest

import fpl
from fpl import Perm

from conftest import HoldImage, qemu_tool

REPO = Path(__file__).resolve().parents[3]
RWR = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE
# What `qemu-io -f qcow2` holds: bytes 100, 101, 103, 201, 203.
QEMU_RW_PERM = RWR
QEMU_RW_UNSHARED = Perm.WRITE | Perm.RESIZE


def test_library_version_is_the_bindings_version() -> None:
    assert fpl.version() == fpl.__version__
    expected = os.environ.get("FPL_EXPECTED_VERSION")
    if expected is not None:
        assert fpl.version() == expected


def test_write_lock_is_seen_then_released(image: Path) -> None:
    with fpl.acquire(image, mode="write") as lock:
        assert (lock.perm, lock.shared) == (RWR, Perm.CONSISTENT_READ)
        status = fpl.query(image, holders=True)
        assert status.perm == RWR
        assert status.unshared == Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE
        assert len(status.holders) == 1
        me = status.holders[0]
        assert me.pid == os.getpid()
        assert me.fd is not None and me.fd >= 0
        assert (me.perm, me.unshared) == (status.perm, status.unshared)
        # libfpl opens images read-only, whatever it locks.
        assert (me.access, me.flags) == (fpl.Access.READ, fpl.HolderFlag.NONE)
    assert lock.released
    after = fpl.query(image, holders=True)
    assert not after.in_use
    assert after.holders == ()
    lock.release()  # a second release does nothing


def test_qemu_writer_refuses_a_second_writer(image: Path, qemu_holding: HoldImage) -> None:
    qemu = qemu_holding(image)
    with pytest.raises(fpl.Conflict) as info:
        fpl.acquire(image, mode="write")
    e = info.value
    assert isinstance(e, BlockingIOError) and isinstance(e, OSError)
    assert e.errno == errno.EAGAIN
    assert (e.byte, e.perm, e.holder_pid) == (201, Perm.WRITE, qemu.pid)
    assert str(e) == e.message == e.strerror
    assert str(e).startswith(f'Failed to get "write" lock (held by qemu-io, pid {qemu.pid})')
    assert str(e).endswith(f"Is another process using the image [{image}]?")
    assert e.filename == str(image)
    # It survives pickling (multiprocessing, logging handlers).
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is fpl.Conflict
    assert (again.errno, again.byte, again.perm, again.holder_pid, str(again)) == (
        e.errno, e.byte, e.perm, e.holder_pid, str(e)
    )
    # Rolled back: only QEMU's bytes remain.
    status = fpl.query(image)
    assert (status.perm, status.unshared) == (QEMU_RW_PERM, QEMU_RW_UNSHARED)


def test_check_predicts_without_taking(image: Path, qemu_holding: HoldImage) -> None:
    fpl.check(image, mode="read-shared")
    fpl.check(image, mode="exclusive")
    assert not fpl.query(image).in_use
    qemu = qemu_holding(image)
    with pytest.raises(fpl.Conflict) as info:
        fpl.check(image, mode="read")  # read refuses to share write, which QEMU uses
    assert (info.value.byte, info.value.perm, info.value.holder_pid) == (101, Perm.WRITE, qemu.pid)
    assert str(info.value).startswith('Failed to get shared "write" lock')
    fpl.check(image, mode="read-shared")


def test_query_names_the_qemu_holder(image: Path, qemu_holding: HoldImage) -> None:
    qemu = qemu_holding(image)
    status = fpl.query(image, holders=True)
    assert (status.perm, status.unshared) == (QEMU_RW_PERM, QEMU_RW_UNSHARED)
    assert [(h.pid, h.name) for h in status.holders] == [(qemu.pid, "qemu-io")]
    assert status.holders[0].access == fpl.Access.READ | fpl.Access.WRITE
    assert (status.holders[0].perm, status.holders[0].unshared) == (QEMU_RW_PERM, QEMU_RW_UNSHARED)
    assert fpl.query(image).holders == ()  # not asked for


def test_upgrade_refused_then_granted(image: Path, qemu_holding: HoldImage) -> None:
    reader = qemu_holding(image, read_only=True)  # holds 100, 201, 203
    with fpl.acquire(image, mode="read-shared") as lock:
        with pytest.raises(fpl.Conflict) as info:
            lock.update(mode="write")
        assert (info.value.byte, info.value.holder_pid) == (201, reader.pid)
        # Left exactly as it was.
        assert (lock.perm, lock.shared) == (Perm.CONSISTENT_READ, Perm.ALL)
        status = fpl.query(image)
        assert (status.perm, status.unshared) == (Perm.CONSISTENT_READ, Perm.WRITE | Perm.RESIZE)

        reader.kill()
        reader.wait()
        lock.update(mode="write")
        assert lock.perm == RWR
        assert fpl.query(image).perm == RWR
        lock.update(mode="read-shared")  # loosening never conflicts
        status = fpl.query(image)
        assert (status.perm, status.unshared) == (Perm.CONSISTENT_READ, Perm.NONE)


def test_qemu_is_refused_while_python_holds(image: Path) -> None:
    def qemu_io_opens() -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [qemu_tool("qemu-io"), "-f", "qcow2", "-c", "quit", str(image)],
            capture_output=True,
            text=True,
        )

    with fpl.acquire(image, mode="write"):
        refused = qemu_io_opens()
        assert refused.returncode != 0
        assert 'Failed to get "write" lock' in refused.stderr
        assert f"Is another process using the image [{image}]?" in refused.stderr
    admitted = qemu_io_opens()
    assert admitted.returncode == 0, admitted.stderr


def test_unreleased_lock_warns_and_is_released(image: Path) -> None:
    lock = fpl.acquire(image, mode="write")
    with pytest.warns(ResourceWarning, match="unreleased"):
        del lock
        gc.collect()
    assert not fpl.query(image).in_use


def test_explicit_permissions_and_exact(image: Path) -> None:
    # Write-unchanged, sharing everything: QEMU locks byte 102; the strict
    # rules ask for write (101) instead.
    with fpl.acquire(image, perm=Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED, shared=Perm.ALL):
        assert fpl.query(image).perm == Perm.CONSISTENT_READ | Perm.WRITE
    with fpl.acquire(
        image, perm=Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED, shared=Perm.ALL, exact=True
    ):
        assert fpl.query(image).perm == Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED


def test_acquire_fd_outlives_the_file(image: Path) -> None:
    with open(image, "rb") as f:
        lock = fpl.acquire_fd(f, mode="exclusive")
    assert fpl.query(image).unshared == Perm.ALL  # the file is closed, the lock holds
    with pytest.raises(fpl.Conflict):
        fpl.acquire(image, mode="read-shared")
    lock.release()
    assert not fpl.query(image).in_use


def test_errors_are_oserrors_with_errno(tmp_path: Path, image: Path) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(FileNotFoundError) as nf:
        fpl.acquire(missing, mode="read")
    assert isinstance(nf.value, fpl.Error)
    assert nf.value.errno == errno.ENOENT and nf.value.filename == str(missing)
    assert str(missing) in str(nf.value)
    again = pickle.loads(pickle.dumps(nf.value))
    assert isinstance(again, FileNotFoundError) and isinstance(again, fpl.Error)
    assert (again.errno, str(again), again.filename) == (errno.ENOENT, str(nf.value), str(missing))

    with pytest.raises(IsADirectoryError) as isdir:
        fpl.query(tmp_path)
    assert isinstance(isdir.value, fpl.Error) and isdir.value.errno == errno.EISDIR

    # Bits that are no permission are the caller's mistake, caught before
    # libfpl is asked (test_perm.py has the rest).
    with pytest.raises(ValueError) as inval:
        fpl.check(image, perm=0x10, shared=0)
    assert not isinstance(inval.value, fpl.Error)

    with pytest.raises(ValueError):
        fpl.acquire(image, mode="writ")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fpl.acquire(image)
    with pytest.raises(TypeError):
        fpl.acquire(image, mode="write", perm=Perm.WRITE, shared=Perm.NONE)
    released = fpl.acquire(image, mode="read")
    released.release()
    with pytest.raises(ValueError):
        released.update(mode="write")


def test_non_utf8_path(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/disk-\xff.img"
    with open(raw, "wb"):
        pass
    with fpl.acquire(raw, mode="write") as lock:
        assert lock.path == raw
        with pytest.raises(fpl.Conflict) as info:
            fpl.check(raw, mode="write")
        # The message names the image (libfpl may show the byte as U+FFFD).
        assert re.search(r"/disk-.+\.img\]\?$", str(info.value)), str(info.value)
        assert fpl.query(raw).perm == RWR


def test_threads_conflict_like_processes(image: Path) -> None:
    holding = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with fpl.acquire(image, mode="exclusive"):
            holding.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(10)
        with pytest.raises(fpl.Conflict) as info:
            fpl.acquire(image, mode="read-shared")
        assert info.value.holder_pid == os.getpid()
    finally:
        done.set()
        thread.join()
    fpl.acquire(image, mode="read-shared").release()


def test_many_threads_each_with_their_own_image(tmp_path: Path) -> None:
    errors: List[BaseException] = []

    def work(n: int) -> None:
        path = tmp_path / f"{n}.img"
        path.write_bytes(b"")
        try:
            for _ in range(50):
                with fpl.acquire(path, mode="write") as lock:
                    lock.update(mode="read-shared")
                assert not fpl.query(path).in_use
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _run_python(code: str, env: Dict[str, str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_a_libfpl_of_another_abi_is_refused_by_name(tmp_path: Path) -> None:
    """A libfpl.so.0 (no fpl_chain) or a future 2.x is refused when loaded,
    naming the library and the SONAME these bindings need, rather than
    called with structures of the wrong size."""
    import shutil

    cc = shutil.which("cc")
    assert cc, "this test needs a C compiler (apt-get install gcc)"
    v0 = ["fpl_acquire", "fpl_acquire_fd", "fpl_update", "fpl_release", "fpl_check",
          "fpl_query", "fpl_query_many"]
    v1 = v0 + ["fpl_chain", "fpl_verify"]
    code = (
        "import errno, fpl\n"
        "try:\n"
        "    fpl.version()\n"
        "except fpl.Error as e:\n"
        "    print(e.errno == errno.ELIBBAD, e.filename)\n"
        "    raise\n"
    )
    for name, functions, version, expected in (
        ("libfpl-v0.so", v0, "0.1.0", "lacks fpl_chain: not a libfpl.so.1"),
        ("libfpl-v2.so", v1, "2.0.0", "is libfpl 2.0.0, not a libfpl.so.1"),
    ):
        source = tmp_path / (name + ".c")
        source.write_text(
            "".join(f"int {f}(void) {{ return -22; }}\n" for f in functions)
            + f'const char *fpl_version(void) {{ return "{version}"; }}\n'
        )
        lib = tmp_path / name
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        refused = _run_python(code, dict(env, FPL_LIBRARY=str(lib)), tmp_path)
        assert refused.returncode != 0
        assert refused.stdout == f"True {lib}\n", refused.stderr
        assert f"{lib} {expected}" in refused.stderr, refused.stderr


def test_package_is_typed() -> None:
    assert (Path(fpl.__file__).parent / "py.typed").is_file()


def _header_defines() -> Dict[str, str]:
    header = Path(os.environ.get("FPL_HEADER", REPO / "include" / "fpl.h"))
    return dict(re.findall(r"^#define (FPL_\w+) (.+)$", header.read_text(), re.M))


def test_constants_and_structs_agree_with_the_header() -> None:
    from fpl import _library, _perm

    defines = _header_defines()
    for perm in (Perm.CONSISTENT_READ, Perm.WRITE, Perm.WRITE_UNCHANGED, Perm.RESIZE, Perm.ALL):
        assert int(defines[f"FPL_PERM_{perm.name}"]) == perm
    for flag in (fpl.StatusFlag.LEGACY, fpl.StatusFlag.LIBVIRT, fpl.StatusFlag.HOLDERS_PARTIAL):
        assert int(defines[f"FPL_STATUS_{flag.name}"]) == flag
    assert int(defines["FPL_FLAG_EXACT"]) == _perm.FLAG_EXACT
    assert int(defines["FPL_FLAG_ALLOW_POSIX"]) == _perm.FLAG_ALLOW_POSIX
    assert int(defines["FPL_FLAG_CHAIN"]) == _perm.FLAG_CHAIN
    assert int(defines["FPL_FLAG_NO_UNLOCKED_OPENERS"]) == _perm.FLAG_NO_UNLOCKED_OPENERS
    assert int(defines["FPL_QUERY_HOLDERS"]) == _perm.QUERY_HOLDERS
    assert int(defines["FPL_QUERY_OPENERS"]) == _perm.QUERY_OPENERS
    assert int(defines["FPL_MESSAGE_SIZE"]) == _library.MESSAGE_SIZE
    assert int(defines["FPL_NAME_SIZE"]) == _library.NAME_SIZE
    assert int(defines["FPL_PATH_SIZE"]) == _library.PATH_SIZE
    for enum_type, prefix in (
        (fpl.Access, "FPL_ACCESS_"),
        (fpl.HolderFlag, "FPL_HOLDER_"),
        (fpl.Role, "FPL_ROLE_"),
        (fpl.Format, "FPL_FORMAT_"),
    ):
        in_header = {k[len(prefix):]: int(v) for k, v in defines.items() if k.startswith(prefix)}
        in_python = {m.name: int(m) for m in enum_type if m.name != "NONE"}
        assert in_python == in_header, prefix
    names = {"FPL_PERM_CONSISTENT_READ": Perm.CONSISTENT_READ, "FPL_PERM_WRITE": Perm.WRITE,
             "FPL_PERM_RESIZE": Perm.RESIZE, "FPL_PERM_ALL": Perm.ALL}
    for mode, (perm, shared) in fpl.MODES.items():
        key = "FPL_MODE_" + mode.upper().replace("-", "_")
        assert eval(defines[key + "_PERM"], {}, dict(names)) == perm, mode
        assert eval(defines[key + "_SHARE"], {}, dict(names)) == shared, mode

    header = Path(os.environ.get("FPL_HEADER", REPO / "include" / "fpl.h")).read_text()
    for struct in _library.SIZES:
        c_name = {"ErrorStruct": "fpl_error", "StatusStruct": "fpl_status",
                  "HolderStruct": "fpl_holder", "MemberStruct": "fpl_member"}[struct.__name__]
        body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (c_name, c_name), header, re.S)
        assert body, c_name
        fields = re.findall(r"^\s+\w+ (\w+)(?:\[\w+\])?;$", body.group(1), re.M)
        assert fields == [f[0] for f in struct._fields_], c_name


def test_struct_layouts_agree_with_a_c_compiler(tmp_path: Path) -> None:
    """Every field's offset and every structure's size, as cc lays out
    include/fpl.h, equals ctypes' (the reserved words included): libfpl
    writes into these structures, so any difference corrupts memory."""
    import shutil

    from fpl import _library

    cc = shutil.which("cc")
    assert cc, "this test needs a C compiler (apt-get install gcc)"
    header = Path(os.environ.get("FPL_HEADER", REPO / "include" / "fpl.h"))
    c_names = {_library.ErrorStruct: "fpl_error", _library.StatusStruct: "fpl_status",
               _library.HolderStruct: "fpl_holder", _library.MemberStruct: "fpl_member"}
    lines = []
    for struct_type, c_name in c_names.items():
        lines.append(f'printf("{c_name} sizeof %zu\\n", sizeof({c_name}));')
        for field, *_ in struct_type._fields_:
            lines.append(f'printf("{c_name} {field} %zu\\n", offsetof({c_name}, {field}));')
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n"
        f'#include "{header}"\n'
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), str(source)], check=True)
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    expected = []
    for struct_type, c_name in c_names.items():
        expected.append(f"{c_name} sizeof {ctypes.sizeof(struct_type)}")
        for field, *_ in struct_type._fields_:
            expected.append(f"{c_name} {field} {getattr(struct_type, field).offset}")
    assert printed.splitlines() == expected
    # And the sizes _library checks at import are ABI 1's.
    assert {c_names[t]: n for t, n in _library.SIZES.items()} == {
        "fpl_error": 304, "fpl_status": 32, "fpl_holder": 112, "fpl_member": 4148}


def test_readme_example_runs_as_written(tmp_path: Path, qemu_holding: HoldImage) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the README's Python section has a python block"
    subprocess.run(
        [qemu_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(tmp_path / "vm.qcow2"), "16M"],
        check=True,
    )
    env = dict(os.environ)
    free = _run_python(code.group(1), env, tmp_path)
    assert free.returncode == 0, free.stderr
    assert free.stdout == "writing\nreading\n"

    qemu = qemu_holding(tmp_path / "vm.qcow2")
    busy = _run_python(code.group(1), env, tmp_path)
    assert busy.returncode == 0, busy.stderr
    assert busy.stdout == (
        f'Failed to get "write" lock (held by qemu-io, pid {qemu.pid})\n'
        f"Is another process using the image [vm.qcow2]?\n"
        f"held by qemu-io (pid {qemu.pid})\n"
    )


# ---- soundness: forks and spawns never break the locks -------------------

# What the write preset locks: 100, 101, 103, 201, 202, 203.
WRITE_BYTES = [100, 101, 103, 201, 202, 203]
# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid.
FLOCK = "hh4xqqi4x"


def _held_bytes(path: Path) -> List[int]:
    """The bytes of interest somebody holds, as F_OFD_GETLK F_WRLCK from an
    open file description of its own sees them (independent of libfpl)."""
    held = []
    with open(path, "rb") as f:
        for byte in [*range(100, 105), *range(200, 205)]:
            probe = struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
            found = fcntl.fcntl(f.fileno(), fcntl.F_OFD_GETLK, probe)
            if struct.unpack(FLOCK, found)[0] != fcntl.F_UNLCK:
                held.append(byte)
    return held


def _qemu_write_refused(path: Path) -> bool:
    """`qemu-io -c 'write 0 4k'`: True if refused for a lock, False if it wrote."""
    done = subprocess.run(
        [qemu_tool("qemu-io"), "-f", "qcow2", "-c", "write 0 4k", str(path)],
        capture_output=True,
        text=True,
    )
    if 'Failed to get "write" lock' in done.stderr:
        return True
    assert done.returncode == 0 and "wrote 4096/4096" in done.stdout, (done.stdout, done.stderr)
    return False


def _in_child(parent: int, body: Callable[[], None]) -> None:
    """Runs BODY in a forked child (os.getpid() != PARENT), which must never
    return into pytest: exit status 0 if BODY ended with sys.exit(0) or
    returned, 1 if it raised."""
    try:
        body()
    except SystemExit as e:
        if os.getpid() != parent:
            os._exit(0 if e.code in (0, None) else 2)
        raise
    except BaseException:
        if os.getpid() != parent:
            os._exit(1)
        raise
    finally:
        if os.getpid() != parent:
            os._exit(0)


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_forked_child_leaving_the_with_block_keeps_the_parents_lock(image: Path) -> None:
    parent = os.getpid()

    def hold_and_fork() -> None:
        with fpl.acquire(image, mode="write"):
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # __exit__ runs in the child, on its copy of the lock
            assert _exit_code(pid) == 0, "the child's __exit__ failed"
            assert _held_bytes(image) == WRITE_BYTES, "the child's __exit__ released them"
            assert _qemu_write_refused(image), "qemu-io wrote while the parent holds the image"

    _in_child(parent, hold_and_fork)
    assert _held_bytes(image) == []
    assert not _qemu_write_refused(image)


def test_forked_child_collecting_the_lock_keeps_the_parents_lock(image: Path) -> None:
    parent = os.getpid()
    lock = fpl.acquire(image, mode="write")

    def collect() -> None:
        nonlocal lock
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del lock  # __del__ releases the child's copy
            gc.collect()

    pid = os.fork()
    if pid == 0:
        _in_child(parent, collect)
    assert _exit_code(pid) == 0
    assert _held_bytes(image) == WRITE_BYTES, "the child's __del__ released the parent's bytes"
    assert _qemu_write_refused(image)
    lock.release()
    assert _held_bytes(image) == []


def test_forked_childs_update_is_refused_with_eperm(image: Path) -> None:
    parent = os.getpid()
    r, w = os.pipe()
    lock = fpl.acquire(image, mode="write")

    def update() -> None:
        os.close(r)
        try:
            lock.update(mode="read-shared")
            report = "updated"
        except fpl.Error as e:
            report = f"errno {e.errno} {e}"
        lock.release()
        os.write(w, report.encode())

    with lock:
        pid = os.fork()
        if pid == 0:
            _in_child(parent, update)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read().decode()
        assert _exit_code(pid) == 0, report
        assert report.startswith(f"errno {errno.EPERM} "), report
        assert "another process" in report, report
        assert _held_bytes(image) == WRITE_BYTES
        assert (lock.perm, lock.shared) == (RWR, Perm.CONSISTENT_READ)


def _open_inodes(pid: int) -> Set[int]:
    """Inodes of the files process pid has open, skipping descriptors that
    close while the directory is read."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            inodes.add(fd.stat().st_ino)
        except FileNotFoundError:
            pass
    return inodes


def test_release_frees_the_bytes_while_a_preexec_child_blocks(image: Path) -> None:
    """Popen's child runs preexec_fn with copies of every descriptor (close_fds
    comes after it): released meanwhile, the bytes are free at once."""
    lock = fpl.acquire(image, mode="write")
    ino = os.stat(image).st_ino
    gate_r, gate_w = os.pipe()
    started = threading.Event()
    spawned: Dict[str, "subprocess.Popen[bytes]"] = {}
    tid: List[int] = []

    def wait_at_the_gate() -> None:
        os.read(gate_r, 1)

    def spawn() -> None:
        tid.append(threading.get_native_id())
        started.set()
        spawned["child"] = subprocess.Popen(["true"], preexec_fn=wait_at_the_gate)

    spawner = threading.Thread(target=spawn)
    spawner.start()
    try:
        started.wait()
        children = Path(f"/proc/self/task/{tid[0]}/children")
        deadline = time.monotonic() + 20
        while not children.read_text().split():
            assert time.monotonic() < deadline, "the preexec_fn child never appeared"
            time.sleep(0.005)
        child = int(children.read_text().split()[0])
        # The child closes its own pipe ends before preexec_fn runs: a
        # descriptor listed a moment ago may be gone when it is stat()ed.
        while ino not in _open_inodes(child):
            assert time.monotonic() < deadline, "no copy of the descriptor"
            time.sleep(0.005)
        lock.release()
        assert _held_bytes(image) == [], "release() returned while the child kept the bytes"
    finally:
        os.write(gate_w, b"x")
        spawner.join()
        os.close(gate_r)
        os.close(gate_w)
    assert spawned["child"].wait() == 0


def test_acquire_wait_gives_up_then_takes_the_image_once_qemu_quits(
    image: Path, qemu_holding: HoldImage
) -> None:
    """wait= (libfpl 1.1): the last conflict after the timeout, holder
    named; the image once qemu-io quits, not before; bad waits refused."""
    qemu = qemu_holding(image)
    start = time.monotonic()
    with pytest.raises(fpl.Conflict) as refused:
        fpl.acquire(image, mode="write", wait=0.3)
    assert time.monotonic() - start >= 0.3
    assert refused.value.holder_pid == qemu.pid
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            fpl.acquire(image, mode="write", wait=bad)
    with pytest.raises(TypeError):
        fpl.acquire(image, mode="write", wait="soon")  # type: ignore[arg-type]

    def quit_later() -> None:
        time.sleep(0.4)
        qemu.kill()
        qemu.wait()

    quitter = threading.Thread(target=quit_later)
    start = time.monotonic()
    quitter.start()
    with fpl.acquire(image, mode="write", wait=20) as lock:
        assert time.monotonic() - start >= 0.4
        assert lock.path == os.fspath(image)
    quitter.join()
