"""Openers from Python: processes that have an image open and hold none of
its bytes (here a real qemu-io with file.locking=off), listed by
``query(..., openers=True)`` and refused beside with
``no_unlocked_openers=True`` (``fpl.Opened``, EBUSY)."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest

import fpl
from conftest import HoldImage, open_fd, qemu_img
from fpl import Access, HolderFlag, Perm


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", str(path), "16M")
    return path


def test_query_lists_openers_only_when_asked(
    raw: Path, qemu_unlocked: HoldImage, qemu_holding: HoldImage, tmp_path: Path
) -> None:
    writer = qemu_unlocked(raw)
    fd = open_fd(writer.pid, raw)
    # QEMU's protocol sees a free image: the hazard.
    plain = fpl.query(raw, holders=True)
    assert not plain.in_use and plain.holders == ()

    status = fpl.query(raw, holders=True, openers=True)
    assert not status.in_use
    assert status.holders == status.openers
    assert status.openers == (
        fpl.Holder(
            pid=writer.pid, fd=fd, perm=Perm.NONE, unshared=Perm.NONE, name="qemu-io",
            access=Access.READ | Access.WRITE, flags=HolderFlag.NO_LOCKS,
        ),
    )
    assert status.openers[0].no_locks
    # openers=True alone lists the openers too.
    assert fpl.query(raw, openers=True).openers == status.openers

    # A QEMU that locks is a holder, not an opener; query_many walks once
    # for both images.
    locked = tmp_path / "locked.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(locked), "16M")
    holder = qemu_holding(locked)
    found = fpl.query_many([raw, locked], holders=True, openers=True)
    assert not isinstance(found[0], fpl.Error) and not isinstance(found[1], fpl.Error)
    assert [h.pid for h in found[0].openers] == [writer.pid]
    assert found[1].openers == ()
    assert found[1].holders and all(h.pid == holder.pid for h in found[1].holders)
    assert all(not h.no_locks for h in found[1].holders)
    without = fpl.query_many([raw, locked], holders=True)
    assert not isinstance(without[0], fpl.Error)
    assert without[0].holders == ()


def test_read_only_opener_has_read_access(raw: Path, qemu_unlocked: HoldImage) -> None:
    reader = qemu_unlocked(raw, read_only=True)
    (opener,) = fpl.query(raw, openers=True).openers
    assert (opener.pid, opener.access) == (reader.pid, Access.READ)


def test_acquire_and_check_refuse_beside_an_opener_when_asked(
    raw: Path, qemu_unlocked: HoldImage
) -> None:
    writer = qemu_unlocked(raw)
    fd = open_fd(writer.pid, raw)
    # Without the flag, granted: QEMU's protocol alone cannot see it.
    fpl.check(raw, "write")
    with fpl.acquire(raw, "write"):
        pass

    with pytest.raises(fpl.Opened) as info:
        fpl.acquire(raw, "read", no_unlocked_openers=True)
    e = info.value
    assert isinstance(e, fpl.Error) and not isinstance(e, fpl.Conflict)
    assert e.errno == errno.EBUSY and e.filename == str(raw)
    assert str(e).startswith(
        f"'{raw}' is open read-write by qemu-io (pid {writer.pid}, fd {fd}) without locks"
    )
    assert not fpl.query(raw).in_use, "nothing left held after the refusal"
    with pytest.raises(fpl.Opened):
        fpl.check(raw, "read-shared", no_unlocked_openers=True)
    with open(raw, "rb") as f, pytest.raises(fpl.Opened):
        fpl.acquire_fd(f, "read", no_unlocked_openers=True)
    # An update asking for the rule is refused and leaves the lock as it was.
    with fpl.acquire(raw, "read-shared") as lock:
        with pytest.raises(fpl.Opened):
            lock.update("read", no_unlocked_openers=True)
        assert lock.perm == Perm.CONSISTENT_READ and lock.shared == Perm.ALL
    # It survives pickling as the same class.
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is fpl.Opened and again.errno == errno.EBUSY

    # Once the opener is gone the flag changes nothing.
    writer.kill()
    writer.wait()
    with fpl.acquire(raw, "write", no_unlocked_openers=True):
        assert fpl.query(raw).in_use


def test_chain_is_refused_beside_an_opener_of_any_member(
    chain_image: Path, qemu_unlocked: HoldImage
) -> None:
    base = chain_image.parent / "base.raw"
    qemu_unlocked(base)
    # The top alone is nobody's; the chain is not.
    fpl.check(chain_image, "read", no_unlocked_openers=True)
    with pytest.raises(fpl.Opened) as info:
        fpl.acquire(chain_image, "read", chain=True, no_unlocked_openers=True)
    assert str(info.value).startswith(f"'{base}' is open read-write by qemu-io")
    assert not fpl.query(base).in_use and not fpl.query(chain_image).in_use
    with fpl.acquire(chain_image, "read", chain=True):
        pass


def test_an_opener_refusal_is_not_the_processs_own_descriptor(raw: Path) -> None:
    # This process has the image open for I/O: never an opener of its own.
    with open(raw, "r+b"):
        assert fpl.query(raw, openers=True).openers == ()
        with fpl.acquire(raw, "write", no_unlocked_openers=True):
            pass
