"""Whole images from Python: chains listed and locked, lost locks found,
many images queried at once; against qemu-img's images and qemu-io holders."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import List

import pytest

import fpl
from fpl import Access, Format, HolderFlag, Perm, Role

from conftest import HoldImage, qemu_img, qemu_tool

CR = Perm.CONSISTENT_READ
RWR = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE
# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid.
FLOCK = "hh4xqqi4x"


def _qemu_io_write(path: Path, fmt: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [qemu_tool("qemu-io"), "-f", fmt, "-c", "write 0 512", str(path)],
        capture_output=True,
        text=True,
    )


def _statuses(paths: List[Path], holders: bool = False) -> List[fpl.Status]:
    """query_many, every image inspected."""
    found = fpl.query_many(paths, holders)
    assert all(isinstance(s, fpl.Status) for s in found), found
    return [s for s in found if isinstance(s, fpl.Status)]


def _descriptors_of(path: Path) -> List[int]:
    """This process's descriptors open on PATH's inode."""
    want = os.stat(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(int(name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            found.append(int(name))
    return found


def _drop_locks_behind_libfpls_back(path: Path) -> None:
    """Unlocks every byte of the open file descriptions this process has on
    PATH, as a file system that loses its locks does (a GlusterFS brick
    restart, an expired NFS lease): libfpl's handle is left believing it
    holds them."""
    fds = _descriptors_of(path)
    assert fds, f"no descriptor of this process is open on {path}"
    for fd in fds:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))


def test_chain_lists_both_members_with_qemus_derived_requests(chain_image: Path) -> None:
    base = chain_image.parent / "base.raw"
    # The write preset, like a VM's virtio disk (CHAINS.md section 1): the
    # qcow2 top reads, writes and resizes and shares only reading; the raw
    # backing file is only read and protected from writers (100, 201, 203).
    members = fpl.chain(chain_image, mode="write")
    assert members == [
        fpl.Member(str(chain_image), Role.IMAGE, Format.QCOW2, 0, RWR, CR),
        fpl.Member(str(base), Role.BACKING, Format.RAW, 1, CR, CR | Perm.WRITE_UNCHANGED),
    ]
    # Sharing everything is QEMU's force-share (-U): byte 100 only, everywhere.
    shared = fpl.chain(chain_image, mode="read-shared")
    assert [(m.perm, m.shared) for m in shared] == [(CR, Perm.ALL), (CR, Perm.ALL)]
    # A qemu-io-like user, sharing write: the raw backing file is then not
    # protected (100 only); the qcow2 top still unshares write and resize.
    qemu_io = fpl.chain(chain_image, perm=RWR, shared=Perm.ALL, exact=True)
    assert [(m.perm, m.shared) for m in qemu_io] == [
        (RWR, CR | Perm.WRITE_UNCHANGED),
        (CR, Perm.ALL),
    ]
    # It takes nothing.
    assert [fpl.query(m.path).in_use for m in members] == [False, False]


def test_chain_paths_are_as_qemu_opens_them_in_the_type_given(
    chain_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relative: the backing name joins the overlay's directory as given.
    monkeypatch.chdir(chain_image.parent.parent)
    rel = Path(chain_image.parent.name) / "top.qcow2"
    assert [m.path for m in fpl.chain(rel, mode="read")] == [
        str(rel),
        str(rel.parent / "base.raw"),
    ]
    # Bytes in, bytes out (as os.listdir does).
    raw = os.fsencode(chain_image)
    paths = [m.path for m in fpl.chain(raw, mode="read")]
    assert paths == [raw, os.fsencode(chain_image.parent / "base.raw")]


def test_chain_lists_a_data_file_and_a_remote_backing_file(tmp_path: Path) -> None:
    data, image = tmp_path / "d.raw", tmp_path / "x.qcow2"
    options = f"data_file={data},data_file_raw=on"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, str(image), "16M")
    assert fpl.chain(image, mode="write") == [
        fpl.Member(str(image), Role.IMAGE, Format.QCOW2, 0, RWR, CR),
        # A data file follows the request's write and never shares resize.
        fpl.Member(str(data), Role.DATA_FILE, Format.RAW, 0, RWR, CR),
    ]
    with fpl.acquire(image, mode="write", chain=True):
        assert [s.perm for s in _statuses([image, data])] == [RWR, RWR]

    # An NBD backing file is listed as written, never opened or locked.
    remote = tmp_path / "r.qcow2"
    url = "nbd://localhost:10809/exp"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", url, "-F", "raw", str(remote), "16M")
    members = fpl.chain(remote, mode="write")
    assert members[1] == fpl.Member(
        url, Role.BACKING, Format.REMOTE, 1, CR, CR | Perm.WRITE_UNCHANGED
    )
    with fpl.acquire(remote, mode="write", chain=True) as lock:
        lock.verify()
        assert fpl.query(remote).perm == RWR


def test_chain_longer_than_the_first_buffer_is_listed_whole(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "raw", str(tmp_path / "l0.raw"), "1M")
    below = "l0.raw"
    for i in range(1, 12):
        name = f"l{i}.qcow2"
        fmt = "raw" if i == 1 else "qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-b", below, "-F", fmt, str(tmp_path / name))
        below = name
    members = fpl.chain(tmp_path / below, mode="read")
    names = [os.path.basename(os.fsdecode(m.path)) for m in members]
    assert names == [f"l{i}.qcow2" for i in range(11, 0, -1)] + ["l0.raw"]
    assert [m.depth for m in members] == list(range(12))
    assert [m.role for m in members] == [Role.IMAGE] + [Role.BACKING] * 11
    assert members[-1].format == Format.RAW


def test_chain_with_a_missing_backing_file_is_refused_in_qemus_words(chain_image: Path) -> None:
    base = chain_image.parent / "base.raw"
    base.unlink()
    with pytest.raises(FileNotFoundError) as info:
        fpl.chain(chain_image, mode="read")
    assert isinstance(info.value, fpl.Error) and info.value.errno == errno.ENOENT
    assert str(info.value) == (
        f"Could not open backing file: Could not open '{base}': No such file or directory"
    )
    with pytest.raises(FileNotFoundError):
        fpl.acquire(chain_image, mode="read", chain=True)


def test_chain_lock_conflicts_on_a_member_and_names_it(
    chain_image: Path, qemu_holding: HoldImage
) -> None:
    base = chain_image.parent / "base.raw"
    writer = qemu_holding(base, fmt="raw")  # qemu-io writes base.raw: 100, 101, 103
    # The top alone is free...
    fpl.acquire(chain_image, mode="write").release()
    # ...the image is not: its backing file must be protected from writers.
    with pytest.raises(fpl.Conflict) as info:
        fpl.acquire(chain_image, mode="write", chain=True)
    e = info.value
    assert (e.byte, e.perm, e.holder_pid) == (101, Perm.WRITE, writer.pid)
    assert str(e) == (
        f'Failed to get shared "write" lock (held by qemu-io, pid {writer.pid})\n'
        f"Is another process using the image [{base}]?"
    )
    # All or nothing: the top, locked first, was rolled back.
    assert not fpl.query(chain_image).in_use
    # check says the same and takes nothing.
    with pytest.raises(fpl.Conflict) as checked:
        fpl.check(chain_image, mode="write", chain=True)
    assert str(checked.value) == str(e)
    fpl.check(chain_image, mode="write")
    fpl.check(chain_image, mode="read-shared", chain=True)


def test_chain_lock_holds_every_member_and_release_frees_them_all(chain_image: Path) -> None:
    base = chain_image.parent / "base.raw"
    with fpl.acquire(chain_image, mode="write", chain=True) as lock:
        assert lock.chain and repr(lock).startswith("<fpl.Lock chain ")
        top_status, base_status = fpl.query_many([chain_image, base], holders=True)
        assert isinstance(top_status, fpl.Status) and isinstance(base_status, fpl.Status)
        assert (top_status.perm, top_status.unshared) == (
            RWR,
            Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE,
        )
        # Strict rules: not sharing write also refuses write-unchanged (202).
        assert (base_status.perm, base_status.unshared) == (
            CR,
            Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE,
        )
        for status in (top_status, base_status):
            assert [(h.pid, h.access, h.flags) for h in status.holders] == [
                (os.getpid(), Access.READ, HolderFlag.NONE)
            ]
        # QEMU may not write the backing file meanwhile.
        refused = _qemu_io_write(base, "raw")
        assert refused.returncode != 0
        assert 'Failed to get "write" lock' in refused.stderr, refused.stderr
        lock.verify()
    assert lock.released
    assert [s.in_use for s in _statuses([chain_image, base])] == [False, False]
    admitted = _qemu_io_write(base, "raw")
    assert admitted.returncode == 0, admitted.stderr
    # A VM's virtio disk, exactly (it shares reading and write-unchanged):
    # QEMU's own bytes (CHAINS.md), top RWX (100, 101, 103, 201, 203) and
    # base RP (100, 201, 203).
    vm_disk = CR | Perm.WRITE_UNCHANGED
    with fpl.acquire(chain_image, perm=RWR, shared=vm_disk, exact=True, chain=True):
        assert [(s.perm, s.unshared) for s in _statuses([chain_image, base])] == [
            (RWR, Perm.WRITE | Perm.RESIZE),
            (CR, Perm.WRITE | Perm.RESIZE),
        ]


def test_chain_update_is_all_or_nothing(chain_image: Path, qemu_holding: HoldImage) -> None:
    base = chain_image.parent / "base.raw"
    writer = qemu_holding(base, fmt="raw")
    with fpl.acquire(chain_image, mode="read-shared", chain=True) as lock:
        with pytest.raises(fpl.Conflict) as info:
            lock.update(mode="write")
        assert info.value.holder_pid == writer.pid
        assert str(info.value).endswith(f"Is another process using the image [{base}]?")
        # Left exactly as it was, on every member.
        assert (lock.perm, lock.shared) == (CR, Perm.ALL)
        top_status = fpl.query(chain_image)
        assert (top_status.perm, top_status.unshared) == (CR, Perm.NONE)
        writer.kill()
        writer.wait()
        lock.update(mode="write")
        assert lock.perm == RWR
        assert fpl.query(chain_image).perm == RWR
        assert fpl.query(base).unshared == Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE
        lock.verify()


def test_query_many_names_the_qemu_holder_with_its_access(
    chain_image: Path, qemu_holding: HoldImage, tmp_path: Path
) -> None:
    base = chain_image.parent / "base.raw"
    qemu = qemu_holding(chain_image)  # qemu-io rw: top RWX, its raw base R
    missing = tmp_path / "missing.img"
    top_status, base_status, gone, gone_again = fpl.query_many(
        [chain_image, base, missing, os.fsencode(missing)], holders=True
    )
    assert isinstance(top_status, fpl.Status) and isinstance(base_status, fpl.Status)
    assert (top_status.perm, top_status.unshared) == (RWR, Perm.WRITE | Perm.RESIZE)
    assert [(h.pid, h.name, h.access, h.flags) for h in top_status.holders] == [
        (qemu.pid, "qemu-io", Access.READ | Access.WRITE, HolderFlag.NONE)
    ]
    # qemu-io reads the backing file, sharing everything: byte 100 only.
    assert (base_status.perm, base_status.unshared) == (CR, Perm.NONE)
    assert [(h.pid, h.name, h.access) for h in base_status.holders] == [
        (qemu.pid, "qemu-io", Access.READ)
    ]
    # One missing image does not hide the others: its error is returned.
    for e in (gone, gone_again):
        assert isinstance(e, FileNotFoundError) and isinstance(e, fpl.Error)
        assert e.errno == errno.ENOENT and e.filename == str(missing)
        assert str(missing) in str(e)
    # The first failure has libfpl's own message, the others their errno.
    with pytest.raises(FileNotFoundError) as alone:
        fpl.query(missing)
    assert str(gone) == str(alone.value)
    assert str(gone_again) == f"cannot inspect '{missing}': ENOENT: No such file or directory"
    # Holders are found only when asked for.
    assert [s.holders for s in _statuses([chain_image, base])] == [(), ()]
    assert fpl.query_many([]) == []


def test_query_many_grows_its_holder_buffer(image: Path) -> None:
    # 20 holders of one image, more than the first buffer holds.
    locks = [fpl.acquire(image, mode="read-shared") for _ in range(20)]
    try:
        (status,) = fpl.query_many([image], holders=True)
        assert isinstance(status, fpl.Status)
        assert len(status.holders) == 20
        assert {h.pid for h in status.holders} == {os.getpid()}
        assert len({h.fd for h in status.holders}) == 20
    finally:
        for lock in locks:
            lock.release()


def test_verify_holds_then_reports_a_lost_lock(image: Path) -> None:
    with fpl.acquire(image, mode="write") as lock:
        lock.verify()
        _drop_locks_behind_libfpls_back(image)
        with pytest.raises(fpl.Error) as info:
            lock.verify()
        assert info.value.errno == errno.ENOLCK
        assert not isinstance(info.value, fpl.Conflict)
        assert re.fullmatch(
            rf"lost the lock on \[{re.escape(str(image))}\]: byte 1\d\d is no longer held",
            str(info.value),
        ), str(info.value)
    with pytest.raises(ValueError):
        lock.verify()


def test_verify_of_a_chain_lock_names_the_member_that_lost_it(chain_image: Path) -> None:
    base = chain_image.parent / "base.raw"
    with fpl.acquire(chain_image, mode="write", chain=True) as lock:
        lock.verify()
        _drop_locks_behind_libfpls_back(base)
        with pytest.raises(fpl.Error) as info:
            lock.verify()
        assert info.value.errno == errno.ENOLCK
        assert f"lost the lock on [{base}]" in str(info.value)


def test_a_file_lock_stays_one(image: Path) -> None:
    # update passes the chain flag exactly when the lock was taken with it.
    with fpl.acquire(image, mode="read") as lock:
        assert not lock.chain
        lock.update(mode="write")
        assert fpl.query(image).perm == RWR
