"""Fixtures: images made by qemu-img, and QEMU processes holding them."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import fpl


def qemu_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: these tests need QEMU's qemu-utils (qemu-img, qemu-io)",
            pytrace=False,
        )
    return path


def qemu_img(*args: str) -> None:
    done = subprocess.run([qemu_tool("qemu-img"), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"qemu-img {' '.join(args)}: {done.stderr}"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A fresh 16 MiB qcow2 image."""
    path = tmp_path / "disk.qcow2"
    subprocess.run(
        [qemu_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(path), "16M"], check=True
    )
    return path


@pytest.fixture
def chain_image(tmp_path: Path) -> Path:
    """top.qcow2 over base.raw (a relative backing name), made by qemu-img;
    returns top's path (base.raw is beside it)."""
    qemu_img("create", "-q", "-f", "raw", str(tmp_path / "base.raw"), "16M")
    qemu_img(
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(tmp_path / "top.qcow2")
    )
    return tmp_path / "top.qcow2"


HoldImage = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def qemu_holding() -> Iterator[HoldImage]:
    """Starts `qemu-io -f FMT [-r] IMAGE` (FMT qcow2 unless given) reading
    commands from a pipe: it holds the image until the pipe closes. Returns
    once QEMU's bytes show up; every process is killed when the test ends."""
    started: List["subprocess.Popen[bytes]"] = []

    def hold(
        path: Path, read_only: bool = False, fmt: str = "qcow2"
    ) -> "subprocess.Popen[bytes]":
        args = [qemu_tool("qemu-io"), "-f", fmt] + (["-r"] if read_only else []) + [str(path)]
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        started.append(proc)
        deadline = time.monotonic() + 20
        while not fpl.query(path).in_use:
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"qemu-io exited ({proc.returncode}): {proc.stderr.read()!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"qemu-io never locked {path}")
            time.sleep(0.02)
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()
