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


def make_market_tree(parent: Path) -> Path:
    """A Market-1501 tree inside its usual folder name: 3 train ids, distractors, junk and a non-image."""
    root = parent / "Market-1501-v15.09.15"
    write_images(
        root / "bounding_box_train",
        [
            "0002_c1s1_000451_03.jpg",
            "0002_c2s1_000551_01.jpg",
            "0007_c3s1_000101_01.jpg",
            "0011_c6s2_000101_01.jpg",
            "0011_c1s2_000201_01.jpg",
            "0011_c2s2_000301_01.jpg",
        ],
    )
    write_images(root / "query", ["0001_c1s1_001051_00.jpg", "0003_c4s1_001051_00.jpg"])
    write_images(
        root / "bounding_box_test",
        [
            "0001_c2s1_000151_01.jpg",
            "0003_c5s1_000151_01.jpg",
            "0000_c1s1_000151_01.jpg",
            "0000_c3s1_000152_01.jpg",
            "-1_c1s1_000401_03.jpg",
            "-1_c2s1_000402_03.jpg",
        ],
    )
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return root


def make_duke_tree(parent: Path) -> Path:
    root = parent / "DukeMTMC-reID"
    write_images(root / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c8_f0046183.jpg", "0005_c1_f1.jpg"])
    write_images(root / "query", ["0002_c7_f0046985.jpg"])
    write_images(root / "bounding_box_test", ["0002_c1_f0044158.jpg", "0009_c3_f0044159.jpg"])
    return root


def make_cuhk03np_tree(parent: Path) -> Path:
    """Both variants; detected has train ids 1 and 3, labeled 4, 5 and 6."""
    root = parent / "cuhk03-np"
    for name, train_ids in (("detected", ["0001", "0003"]), ("labeled", ["0004", "0005", "0006"])):
        write_images(root / name / "bounding_box_train", [f"{pid}_c1_1.png" for pid in train_ids])
        write_images(root / name / "query", ["0010_c1_1.png"])
        write_images(root / name / "bounding_box_test", ["0010_c2_1.png", "0011_c2_2.png"])
    return root


def make_msmt17_tree(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    """MSMT17 lists and images below ``root`` (``MSMT17_V1`` layout by default; V2 with mask_*_v2 folders)."""
    train = {
        "list_train.txt": [
            ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
            ("0000/0000_001_05_0303noon_0016_0.jpg", 0),
            ("0004/0004_000_15_0303morning_0015_1.jpg", 4),
        ],
        "list_val.txt": [("0002/0002_000_03_0303morning_0015_0.jpg", 2)],
    }
    test = {
        "list_query.txt": [("0000/0000_000_02_0303morning_0008_0.jpg", 0)],
        "list_gallery.txt": [
            ("0000/0000_001_07_0303morning_0009_0.jpg", 0),
            ("0001/0001_000_12_0303afternoon_0010_0.jpg", 1),
        ],
    }
    for lists, image_dir in ((train, train_dir), (test, test_dir)):
        for list_name, lines in lists.items():
            root.mkdir(parents=True, exist_ok=True)
            (root / list_name).write_text("".join(f"{path} {pid}\n" for path, pid in lines))
            for path, _ in lines:
                write_images(root / image_dir / Path(path).parent, [Path(path).name])
    return root


@pytest.fixture
def market_tree(tmp_path: Path) -> Path:
    return make_market_tree(tmp_path)
