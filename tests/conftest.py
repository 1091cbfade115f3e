"""Shared test helpers: tiny dataset trees in the real datasets' layouts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 16), (120, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


_BYTES = {".jpg": _image_bytes("JPEG"), ".png": _image_bytes("PNG")}


def write_images(folder: Path, names: list[str]) -> None:
    """Writes small valid images with the given file names (format from the suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(_BYTES[Path(name).suffix])


@pytest.fixture
def market_tree(tmp_path: Path) -> Path:
    """A Market-1501 tree inside its usual folder name: 3 train ids (one with junk), distractors, junk."""
    root = tmp_path / "Market-1501-v15.09.15"
    write_images(
        root / "bounding_box_train",
        ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_01.jpg",
         "0011_c6s2_000101_01.jpg", "0011_c1s2_000201_01.jpg", "0011_c2s2_000301_01.jpg"],
    )
    write_images(root / "query", ["0001_c1s1_001051_00.jpg", "0003_c4s1_001051_00.jpg"])
    write_images(
        root / "bounding_box_test",
        ["0001_c2s1_000151_01.jpg", "0003_c5s1_000151_01.jpg", "0000_c1s1_000151_01.jpg",
         "0000_c3s1_000152_01.jpg", "-1_c1s1_000401_03.jpg", "-1_c2s1_000402_03.jpg"],
    )
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return root
