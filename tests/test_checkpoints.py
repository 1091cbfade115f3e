"""Checkpoints survive a kill during a save, `last` is found again, and evaluation skips identity tensors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from icg.checkpoints import (
    AtomicCheckpointIO,
    find_last_checkpoint,
    identity_tensor_names,
    run_version,
    skip_identity_tensors,
)
from icg.module import ICGModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def other_filesystem_tmpdir(tmp_path: Path):
    """A $TMPDIR on another filesystem than ``tmp_path`` where the machine has one (/dev/shm), as on clusters."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        folder = Path(tempfile.mkdtemp(dir=shm, prefix="icg-test-"))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        folder = tmp_path / "tmpdir"
        folder.mkdir()
        yield folder


def _disk_state(*folders: Path) -> list:
    """What a save changes on disk: the names in ``folders`` and the identity of each file."""
    state = []
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
            info = entry.stat()
            state.append((entry.path, info.st_ino, info.st_size, info.st_mtime_ns))
    return state


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, other_filesystem_tmpdir: Path) -> None:
    """SIGKILL at the first sign of the third save on disk (a temporary file appearing anywhere, or last.ckpt
    changing): the second checkpoint stays whole, $TMPDIR stays empty, the next save leaves no partial file."""
    checkpoints = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(other_filesystem_tmpdir)}
    command = [
        sys.executable,
        str(REPO / "tests" / "scripts" / "save_checkpoints.py"),
        str(tmp_path / "data"),
        str(checkpoints),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        durations = []
        for line in process.stdout:
            if line.startswith("saved"):
                durations.append(float(line.split()[1]))
            elif line.startswith("saving") and len(durations) == 2:
                before = _disk_state(checkpoints, other_filesystem_tmpdir)
                deadline = time.monotonic() + 0.9 * min(durations)
                while _disk_state(checkpoints, other_filesystem_tmpdir) == before and time.monotonic() < deadline:
                    time.sleep(0.0005)
                process.kill()
                break
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9 and len(durations) == 2
    assert list(other_filesystem_tmpdir.iterdir()) == []  # nothing orphaned in $TMPDIR
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["padding"].shape == (25_000_000,) and "state_dict" in checkpoint
    # the next save (a resumed run's) removes a partial file the kill may have left beside last.ckpt
    assert all(".partial-" in p.name for p in checkpoints.iterdir() if p.name != "last.ckpt")
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, checkpoints / "last.ckpt")
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]


def test_last_is_the_newest_last_checkpoint_of_the_run_folder(tmp_path: Path) -> None:
    older = tmp_path / "lightning_logs" / "version_3" / "checkpoints" / "last.ckpt"
    newer = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    for path, mtime in ((older, 1_000), (newer, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    assert find_last_checkpoint(tmp_path) == newer
    assert run_version(newer) == 1 and run_version(tmp_path / "last.ckpt") is None


def test_last_without_a_last_checkpoint_says_what_to_pass(tmp_path: Path) -> None:
    best = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "best-epoch=009.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path .*best-epoch=009\.ckpt.*leave out --ckpt_path"):
        find_last_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint at all"):
        find_last_checkpoint(tmp_path / "elsewhere")


def _module(num_classes: int, num_train_samples: int, num_parts: int = 3) -> ICGModule:
    return ICGModule(
        num_classes=num_classes,
        num_train_samples=num_train_samples,
        image_size=(64, 32),
        backbone="resnet18",
        weights=None,
        num_parts=num_parts,
    )


def test_evaluation_skips_only_the_tensors_tied_to_the_training_identities() -> None:
    trained = _module(num_classes=8, num_train_samples=40)
    evaluated = _module(num_classes=5, num_train_samples=30)
    checkpoint = {"state_dict": {k: v.clone() for k, v in trained.state_dict().items()}}
    skipped = skip_identity_tensors(evaluated, checkpoint)
    evaluated.load_state_dict(checkpoint["state_dict"])  # strict: every tensor present and of the right shape
    # reference: the tensors whose shape follows the number of identities or images
    differing = {k for k, v in trained.state_dict().items() if v.shape != evaluated.state_dict()[k].shape}
    assert {entry.split()[0] for entry in skipped} == differing <= identity_tensor_names(evaluated)
    for name, value in trained.state_dict().items():
        if name not in differing:
            assert torch.equal(evaluated.state_dict()[name], value), name
    # retrieval uses none of the skipped tensors: the features are the trained model's
    images = torch.randn(2, 3, 64, 32)
    for a, b in zip(trained.eval().extract(images).items(), evaluated.eval().extract(images).items()):
        assert torch.allclose(a[1].float(), b[1].float()), a[0]


def test_a_checkpoint_of_another_architecture_still_fails_to_load() -> None:
    checkpoint = {"state_dict": _module(8, 40, num_parts=3).state_dict()}
    evaluated = _module(8, 40, num_parts=4)
    skip_identity_tensors(evaluated, checkpoint)
    with pytest.raises(RuntimeError, match="part_classifier"):
        evaluated.load_state_dict(checkpoint["state_dict"])


def test_weight_shapes_tell_the_settings_that_shape_the_weights() -> None:
    from icg.checkpoints import weight_shapes
    from icg.module import ICGModule

    base = dict(num_classes=8, num_train_samples=20, image_size=(256, 128), backbone="resnet18", num_parts=6)
    shapes = weight_shapes(ICGModule, base)
    assert "net.part_classifier.conv.weight" in shapes and not any(name.startswith("criterion.") for name in shapes)
    # tied to the training identities or images: another dataset evaluates with the same weights
    for other in ({"num_classes": 3}, {"num_train_samples": 5}, {"fg_threshold": "otsu"}, {"image_size": (128, 64)}):
        assert weight_shapes(ICGModule, {**base, **other}) == shapes, other
    # the parts, the switches, the backbone
    for other in ({"num_parts": 4}, {"use_fsg": False}, {"backbone": "resnet34"}, {"backbone": "mobilenet_v2"}):
        assert weight_shapes(ICGModule, {**base, **other}) != shapes, other
