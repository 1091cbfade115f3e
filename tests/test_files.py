"""Outputs are written atomically in their own folder, follow the umask, and leave nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import icg.files
from icg.files import atomic_write, remove_orphans, staging_folder
from icg.predict import save_atomically
from icg.viz import save_png


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.fixture(params=["unnamed", "named"])
def temporary_kind(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of creating the temporary file: O_TMPFILE, and the named sibling of filesystems without it."""
    if request.param == "named":
        monkeypatch.setattr(icg.files, "_open_unnamed", lambda folder: None)
    return request.param


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_follow_the_umask(tmp_path: Path, umask_027, temporary_kind: str) -> None:
    # reference: what open() gives any program under this umask
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert _mode(plain) == 0o640
    assert _mode(atomic_write(tmp_path / "a.bin", lambda stream: stream.write(b"x"))) == 0o640
    assert _mode(save_atomically({"x": torch.ones(2)}, tmp_path / "features.pt")) == 0o640
    assert _mode(save_png(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "picture.png")) == 0o640
    assert _mode(staging_folder(tmp_path / "dataset")) == 0o750


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path, temporary_kind: str) -> None:
    target = atomic_write(tmp_path / "last.ckpt", lambda stream: stream.write(b"good"))

    def half_then_fail(stream) -> None:
        stream.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_orphans_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = tmp_path / f".last.ckpt.partial-{int(dead.stdout)}@{host}-0123abcd"
    live = tmp_path / f".last.ckpt.partial-{os.getpid()}@{host}-0123abcd"
    elsewhere = tmp_path / f".last.ckpt.partial-{int(dead.stdout)}@not-{host}-0123abcd"
    other_file = tmp_path / f".best.ckpt.partial-{int(dead.stdout)}@{host}-0123abcd"
    for path in (orphan, live, elsewhere, other_file):
        path.write_bytes(b"partial")
    atomic_write(tmp_path / "last.ckpt", lambda stream: stream.write(b"new"))
    assert not orphan.exists()
    assert live.exists() and elsewhere.exists() and other_file.exists()
    assert remove_orphans(tmp_path, "best.ckpt") == [other_file]


@pytest.mark.multiprocess
def test_a_killed_synthetic_generation_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    from icg.data import generate_synthetic

    root = tmp_path / "market"
    arguments = dict(num_train_ids=6, num_test_ids=4, image_size=(64, 32))
    script = f"from icg.data import generate_synthetic; generate_synthetic({str(root)!r}, **{arguments!r})"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        staged = _wait_for(lambda: [p for p in tmp_path.glob(".market.partial-*") if any(p.rglob("*.jpg"))])
        process.kill()
    finally:
        process.wait()
    assert process.returncode == -9 and staged[0].is_dir() and not root.exists()
    generate_synthetic(root, **arguments)
    assert (root / "synthetic.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["market"]


def _wait_for(condition, timeout: float = 60.0):
    """The first truthy value of ``condition()``, polled every 5 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError("timed out")
