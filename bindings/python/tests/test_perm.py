"""Permission sets as a newcomer writes them: sets of fpl.Perm, printed
with the fpl command's words; mistakes are ValueError or TypeError, never
a libfpl error."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

import fpl
from fpl import Perm

from conftest import HoldImage

SINGLE = [Perm.CONSISTENT_READ, Perm.WRITE, Perm.WRITE_UNCHANGED, Perm.RESIZE]
WORDS = {
    Perm.CONSISTENT_READ: "consistent-read",
    Perm.WRITE: "write",
    Perm.WRITE_UNCHANGED: "write-unchanged",
    Perm.RESIZE: "resize",
}


def test_perm_prints_the_fpl_commands_words() -> None:
    # The words `fpl status`, `fpl check --perm` and its JSON use.
    assert str(Perm.NONE) == "none"
    assert str(Perm.ALL) == "all"
    assert str(Perm.CONSISTENT_READ | Perm.WRITE) == "consistent-read,write"
    for n in range(1, 4):
        for combo in itertools.combinations(SINGLE, n):
            value = Perm(sum(combo))
            assert str(value) == ",".join(WORDS[p] for p in combo)
            assert f"{value}" == str(value) and "{}".format(value) == str(value)
    # A number format still formats the bits.
    assert f"{Perm.ALL:#04x}" == "0x0f" and f"{Perm.WRITE:d}" == "2"
    assert f"[{Perm.WRITE:>7}]" == "[  write]"
    # repr stays Python's.
    assert repr(Perm.WRITE) == "<Perm.WRITE: 2>"


def test_flags_print_the_json_words() -> None:
    assert str(fpl.Access.READ | fpl.Access.WRITE) == "read,write"
    assert str(fpl.Access.NONE) == "none"
    assert str(fpl.HolderFlag.NO_LOCKS) == "no-locks"
    assert str(fpl.StatusFlag.HOLDERS_PARTIAL | fpl.StatusFlag.LEGACY) == "legacy,holders-partial"
    # A bit a later libfpl 1.x may add has no name yet: shown, not dropped.
    assert str(fpl.HolderFlag(0x11)) == "no-locks,0x10"


def _generator() -> Iterator[Perm]:
    yield Perm.CONSISTENT_READ
    yield Perm.RESIZE


@pytest.mark.parametrize(
    "perm, shared",
    [
        ({Perm.CONSISTENT_READ, Perm.WRITE, Perm.RESIZE}, {Perm.CONSISTENT_READ}),
        (frozenset({Perm.CONSISTENT_READ, Perm.WRITE, Perm.RESIZE}), [Perm.CONSISTENT_READ]),
        ([Perm.CONSISTENT_READ, Perm.WRITE, Perm.RESIZE], (Perm.CONSISTENT_READ,)),
        (Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, Perm.CONSISTENT_READ),
        (0x0B, 0x01),
    ],
)
def test_perm_and_shared_take_sets_of_perm(image: Path, perm: object, shared: object) -> None:
    with fpl.acquire(image, perm=perm, shared=shared) as lock:  # type: ignore[arg-type]
        # The same request as the write preset.
        assert (lock.perm, lock.shared) == fpl.MODES["write"]
        assert type(lock.perm) is Perm
        assert str(lock.perm) == "consistent-read,write,resize"
        status = fpl.query(image)
        assert str(status.perm) == "consistent-read,write,resize"
        assert str(status.unshared) == "write,write-unchanged,resize"
        with pytest.raises(fpl.Conflict):
            fpl.check(image, perm={Perm.WRITE}, shared=set())
        lock.update(perm=_generator(), shared=Perm.ALL)
        assert (lock.perm, lock.shared) == (Perm.CONSISTENT_READ | Perm.RESIZE, Perm.ALL)
    chained = fpl.chain(image, perm={Perm.CONSISTENT_READ}, shared=[Perm.ALL])
    assert str(chained[0].perm) == "consistent-read" and str(chained[0].shared) == "all"


@pytest.mark.parametrize("bad", [0x10, 0x1F, -1, {Perm.WRITE, 0x40}, [0x100]])
def test_bits_that_are_no_permission_are_value_errors(image: Path, bad: object) -> None:
    for call in (fpl.acquire, fpl.check):
        with pytest.raises(ValueError, match="is not a permission") as info:
            call(image, perm=bad, shared=Perm.NONE)  # type: ignore[arg-type]
        assert not isinstance(info.value, fpl.Error)
        with pytest.raises(ValueError, match="^shared: "):
            call(image, perm=Perm.NONE, shared=bad)  # type: ignore[arg-type]
    with fpl.acquire(image, mode="read") as lock:
        with pytest.raises(ValueError):
            lock.update(perm=bad, shared=Perm.NONE)  # type: ignore[arg-type]
        assert (lock.perm, lock.shared) == fpl.MODES["read"]
    assert not fpl.query(image).in_use


@pytest.mark.parametrize("bad", ["write", b"write", True, 1.0, object(), [1.0], ["write"]])
def test_values_that_are_no_perms_are_type_errors(image: Path, bad: object) -> None:
    with pytest.raises(TypeError, match="fpl.Perm"):
        fpl.check(image, perm=bad, shared=Perm.NONE)  # type: ignore[arg-type]


def test_in_use_is_any_protocol_byte_held(image: Path, qemu_holding: HoldImage) -> None:
    free = fpl.query(image)
    assert not free.in_use and str(free.perm) == "none" and str(free.unshared) == "none"
    # Holding only "does not share" bytes is in use too.
    with fpl.acquire(image, perm=set(), shared=set()):
        status = fpl.query(image)
        assert (status.perm, status.unshared) == (Perm.NONE, Perm.ALL)
        assert status.in_use
    assert not fpl.query(image).in_use
    qemu_holding(image, read_only=True)
    status = fpl.query(image, holders=True)
    assert status.in_use
    assert (str(status.perm), str(status.unshared)) == ("consistent-read", "write,resize")
    texts: List[str] = [f"{h.name} {h.access} {h.perm}" for h in status.holders]
    assert texts == ["qemu-io read consistent-read"]


def test_bindings_readme_example_runs_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[-1]
    assert "perm={fpl.Perm.CONSISTENT_READ}" in example
    (tmp_path / "vm.qcow2").write_bytes(b"")
    ran = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "consistent-read all\nTrue\n"
