from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import icg.data.cache
from icg.data.cache import CacheFileError, ImageCache
from icg.data.transforms import TrainTransform, read_image

SIZE = (32, 16)


def _write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Random JPEG and PNG images of several sizes (so the resize has work to do), in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        height, width = (int(side) for side in rng.integers(12, 80, size=2))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = folder / f"{number:04d}_c1s1_{number:06d}_01.{'png' if number % 3 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _reference(path: str) -> torch.Tensor:
    # what the CPU pipeline does to a file: torchvision's antialiased resize of the decoded image
    return v2.Resize(SIZE, antialias=True)(read_image(path))


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    return _write_images(tmp_path / "images", 9)


def test_memory_cache_holds_the_resized_images(images: list[str]) -> None:
    cache = ImageCache.in_memory(images, SIZE, threads=2)
    assert len(cache) == 9 and cache.nbytes == 9 * 3 * 32 * 16
    unaugmented = TrainTransform(SIZE, flip_prob=0.0, padding=0, erasing_prob=0.0)
    for index, path in enumerate(images):
        assert cache[index].dtype == torch.uint8
        assert torch.equal(cache[index], _reference(path))
        # the CPU path gives the same image from the file as from the cache
        assert torch.equal(unaugmented(read_image(path))[0], unaugmented.augment(cache[index])[0])


def test_disk_cache_holds_the_resized_images_and_is_reused(images: list[str], tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cache"
    cache = ImageCache.on_disk(images, SIZE, folder=folder, threads=2)
    for index, path in enumerate(images):
        assert torch.equal(cache[index], _reference(path))
    data = cache.path
    assert data.parent == folder and data.name.startswith("train-32x16-") and data.suffix == ".npy"
    manifest = json.loads(data.with_suffix(".json").read_text())
    assert manifest["images"] == 9 and manifest["image_size"] == [32, 16]
    assert sorted(path.name for path in folder.iterdir()) == sorted([data.name, data.with_suffix(".json").name])

    def no_decoding(*args, **kwargs):
        raise AssertionError("an up-to-date cache was decoded again")

    monkeypatch.setattr(icg.data.cache, "_decoded", no_decoding)
    again = ImageCache.on_disk(images, SIZE, folder=folder)
    assert again.path == data and torch.equal(again[8], _reference(images[8]))


def test_disk_cache_is_rebuilt_when_a_file_changes(images: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    first = ImageCache.on_disk(images, SIZE, folder=folder)
    before = first.path.stat().st_ino
    _write_images(tmp_path / "other", 1, seed=7)[0]
    Path(images[4]).write_bytes((tmp_path / "other" / "0000_c1s1_000000_01.jpg").read_bytes())
    os.utime(images[4], ns=(0, 10**9))  # another mtime whatever the clock's resolution
    second = ImageCache.on_disk(images, SIZE, folder=folder)
    assert second.path == first.path and second.path.stat().st_ino != before
    assert torch.equal(second[4], _reference(images[4]))
    # another list of files (another split, CUHK03-NP's other variant) gets a file of its own
    third = ImageCache.on_disk(images[:5], SIZE, folder=folder)
    assert third.path != first.path and first.path.exists() and len(third) == 5


def test_a_build_that_dies_leaves_nothing_that_is_trusted(images: list[str], tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cache"
    old = ImageCache.on_disk(images, SIZE, folder=folder)
    os.utime(images[0], ns=(0, 10**9))  # the files changed: the next open rebuilds
    read = icg.data.cache.read_image

    def dies_half_way(path: str) -> torch.Tensor:
        if path == images[5]:
            raise KeyboardInterrupt  # a kill in the middle of the build
        return read(path)

    monkeypatch.setattr(icg.data.cache, "read_image", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ImageCache.on_disk(images, SIZE, folder=folder)
    # the old data file is intact but no longer vouched for; no partial file is left
    assert not old.path.with_suffix(".json").exists()
    assert sorted(path.name for path in folder.iterdir()) == [old.path.name]
    with pytest.raises(FileNotFoundError, match="no up-to-date decoded-image cache"):
        ImageCache.on_disk(images, SIZE, folder=folder, build=False)
    monkeypatch.setattr(icg.data.cache, "read_image", read)
    rebuilt = ImageCache.on_disk(images, SIZE, folder=folder)
    assert all(torch.equal(rebuilt[i], _reference(path)) for i, path in enumerate(images))


def test_a_damaged_cache_file_is_a_clear_error(images: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    data = ImageCache.on_disk(images, SIZE, folder=folder).path
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 2])
    with pytest.raises(CacheFileError, match=rf"{data.name} has {len(content) // 2} bytes.*delete both files"):
        ImageCache.on_disk(images, SIZE, folder=folder)
    data.write_bytes(b"not an array" + content[12:])  # the right size, a broken header
    with pytest.raises(CacheFileError, match=rf"cannot read .*{data.name}"):
        ImageCache.on_disk(images, SIZE, folder=folder)
    np.save(data, np.zeros((len(content) - 128,), dtype=np.uint8))  # a valid array of the wrong shape
    with pytest.raises(CacheFileError, match=r"holds uint8 \(\d+,\), expected uint8 \(9, 3, 32, 16\)"):
        ImageCache.on_disk(images, SIZE, folder=folder)


def test_a_missing_image_is_named(images: list[str], tmp_path: Path) -> None:
    Path(images[3]).unlink()
    with pytest.raises(FileNotFoundError, match=Path(images[3]).name):
        ImageCache.on_disk(images, SIZE, folder=tmp_path / "cache")


def test_a_disk_cache_pickles_without_its_pixels(images: list[str], tmp_path: Path) -> None:
    cache = ImageCache.on_disk(images, SIZE, folder=tmp_path / "cache")
    cache[0]  # maps the file in this process
    pickled = pickle.dumps(cache)
    assert len(pickled) < 1000  # the path and shape, not 9 images (what spawn-started loader workers receive)
    assert torch.equal(pickle.loads(pickled)[2], _reference(images[2]))
