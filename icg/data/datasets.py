"""Index readers for the four re-ID benchmarks, in the layouts researchers already have on disk.

Each reader lists image files (it never opens them) and exposes ``train``, ``query`` and ``gallery`` as
lists of :class:`ImageRecord`. Train identities are relabelled ``0..num_train_pids-1`` in sorted order of the
original ids; query and gallery keep the ids written in the file names or list files, so that evaluation
compares the ids the dataset's authors assigned. Cameras are 0-based everywhere.

Decisions the original protocols leave to the loader:

* Market-1501: id ``-1`` ("junk") is dropped from every split; id ``0`` (distractors) stays in the gallery.
* MSMT17: train is ``list_train.txt`` + ``list_val.txt`` (the usual protocol); the camera is the third
  ``_``-separated field of the file name (``0000_000_01_...`` is camera 1, i.e. ``camid`` 0).
* A root may be the dataset folder itself or the folder that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from icg.data.transforms import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: its file, person id and 0-based camera id."""

    path: str
    pid: int
    camid: int


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing, incomplete, or holds a file that does not follow the dataset's naming."""


def _relabel(records: list[ImageRecord]) -> list[ImageRecord]:
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records]


class ReIDDataset:
    """Base class of the dataset readers: holds the three splits and checks that none is empty.

    Subclasses (the extension point for a dataset of your own, see ``examples/custom_dataset.py``) implement
    :meth:`read_splits` and :meth:`is_dataset_folder`, and set :attr:`folder_names` (the names the dataset folder
    usually has, tried below ``root`` when ``root`` itself is not the dataset folder) and :attr:`layout` (a
    picture of the expected tree, shown when something is missing).
    """

    folder_names: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[str] = ""

    def __init__(self, root: str | Path) -> None:
        self.root = self._find_root(Path(root).expanduser())
        train, self.query, self.gallery = self.read_splits(self.root)
        self.train = _relabel(train)
        for name in ("train", "query", "gallery"):
            if not getattr(self, name):
                raise DatasetLayoutError(
                    f"{type(self).__name__}: the {name} split under {self.root} is empty; "
                    f"expected layout:\n{self.layout}"
                )

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def __repr__(self) -> str:
        def stats(records: Sequence[ImageRecord]) -> str:
            return f"{len({r.pid for r in records})} ids / {len(records)} images"

        return (
            f"{type(self).__name__}(root={str(self.root)!r}, train={stats(self.train)}, "
            f"query={stats(self.query)}, gallery={stats(self.gallery)})"
        )

    def is_dataset_folder(self, path: Path) -> bool:
        """Whether ``path`` looks like this dataset's folder: ``root`` and ``root/<folder_names>`` are tried in
        turn, and the first that does is read. A cheap test of the layout, not a full check."""
        raise NotImplementedError

    def _find_root(self, root: Path) -> Path:
        if not root.is_dir():
            raise DatasetLayoutError(
                f"{type(self).__name__}: dataset root {root} does not exist; expected layout:\n{self.layout}"
            )
        for candidate in (root, *(root / name for name in self.folder_names)):
            if self.is_dataset_folder(candidate):
                return candidate
        raise DatasetLayoutError(
            f"{type(self).__name__}: no dataset found at {root} (also tried {', '.join(self.folder_names)} "
            f"inside it); expected layout:\n{self.layout}"
        )

    def read_splits(self, root: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        """``(train, query, gallery)`` records of the dataset folder ``root``, with the ids as found on disk
        (train ids are relabelled ``0..N-1`` afterwards) and 0-based cameras; raise :class:`DatasetLayoutError`
        for a file that does not follow the layout."""
        raise NotImplementedError


class _FolderPerSplitDataset(ReIDDataset):
    """Market-1501-style layout: one folder per split, id and camera in each file name (``0002_c1...``)."""

    split_folders: ClassVar[tuple[str, str, str]] = ("bounding_box_train", "query", "bounding_box_test")
    name_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(-?\d+)_c(\d+)")
    suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    example_name: ClassVar[str] = "0002_c1s1_000451_03.jpg"

    def is_dataset_folder(self, path: Path) -> bool:
        return path.is_dir() and any((path / folder).is_dir() for folder in self.split_folders)

    def read_splits(self, root: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        missing = [folder for folder in self.split_folders if not (root / folder).is_dir()]
        if missing:
            raise DatasetLayoutError(
                f"{type(self).__name__}: {root} lacks the folder(s) {', '.join(missing)}; "
                f"expected layout:\n{self.layout}"
            )
        train, query, gallery = (self._read_folder(root / folder) for folder in self.split_folders)
        return train, query, gallery

    def _read_folder(self, folder: Path) -> list[ImageRecord]:
        records = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in self.suffixes:
                continue
            match = self.name_pattern.match(path.name)
            if match is None:
                raise DatasetLayoutError(
                    f"{type(self).__name__}: file name {path} does not match the pattern "
                    f"'{self.name_pattern.pattern}' (<person id>_c<camera>...), as in {self.example_name}"
                )
            pid, cam = int(match.group(1)), int(match.group(2))
            if pid == -1:  # junk images: not part of the protocol
                continue
            if cam < 1:
                raise DatasetLayoutError(f"{type(self).__name__}: camera 0 in {path}; cameras start at c1")
            records.append(ImageRecord(str(path), pid, cam - 1))
        return records


class Market1501(_FolderPerSplitDataset):
    """Market-1501 (Zheng et al., ICCV 2015): 751 train ids, 3,368 queries, 15,913 gallery images.

    Args:
        root: ``Market-1501-v15.09.15`` itself or the folder that holds it.
    """

    folder_names = ("Market-1501-v15.09.15", "Market-1501", "market1501")
    layout = (
        "  Market-1501-v15.09.15/\n"
        "    bounding_box_train/0002_c1s1_000451_03.jpg ...\n"
        "    query/0001_c1s1_001051_00.jpg ...\n"
        "    bounding_box_test/0000_c1s1_000151_01.jpg ...  (0000 = distractor, -1 = junk)"
    )


class DukeMTMCreID(_FolderPerSplitDataset):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 702 train ids, 2,228 queries, 17,661 gallery images.

    Args:
        root: ``DukeMTMC-reID`` itself or the folder that holds it.
    """

    folder_names = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")
    layout = (
        "  DukeMTMC-reID/\n"
        "    bounding_box_train/0001_c2_f0046182.jpg ...\n"
        "    query/0005_c2_f0046985.jpg ...\n"
        "    bounding_box_test/0002_c1_f0044158.jpg ..."
    )
    example_name = "0001_c2_f0046182.jpg"


class CUHK03NP(_FolderPerSplitDataset):
    """CUHK03 in the new protocol (Zhong et al., CVPR 2017): 767 train ids, 1,400 queries, 5,332 gallery.

    Args:
        root: ``cuhk03-np`` itself or the folder that holds it.
        variant: ``"detected"`` (boxes from a detector, the harder setting) or ``"labeled"`` (hand-drawn boxes).
    """

    folder_names = ("cuhk03-np", "CUHK03-NP", "cuhk03_np")
    layout = (
        "  cuhk03-np/\n"
        "    detected/{bounding_box_train,query,bounding_box_test}/0001_c1_1.png ...\n"
        "    labeled/{bounding_box_train,query,bounding_box_test}/0001_c1_1.png ..."
    )
    example_name = "0001_c1_1.png"

    def __init__(self, root: str | Path, variant: str = "detected") -> None:
        if variant not in ("detected", "labeled"):
            raise ValueError(f"CUHK03NP: variant must be 'detected' or 'labeled', got {variant!r}")
        self.variant = variant
        super().__init__(root)

    def is_dataset_folder(self, path: Path) -> bool:
        return super().is_dataset_folder(path / self.variant)

    def read_splits(self, root: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        return super().read_splits(root / self.variant)


class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., CVPR 2018): 1,041 train ids (train + val lists), 11,659 queries, 82,161 gallery.

    Both releases are read: V1 (``MSMT17_V1/{train,test}``) and V2 (``MSMT17_V2/{mask_train_v2,mask_test_v2}``),
    each with ``list_{train,val,query,gallery}.txt`` whose lines are ``<path relative to the image folder> <pid>``.

    Args:
        root: ``MSMT17_V1``/``MSMT17_V2`` itself or the folder that holds it.
    """

    folder_names = ("MSMT17_V2", "MSMT17_V1", "MSMT17", "msmt17")
    layout = (
        "  MSMT17_V1/                        or   MSMT17_V2/\n"
        "    train/0000/0000_000_01_0303morning_0015_0.jpg ...   mask_train_v2/...\n"
        "    test/0000/0000_000_01_0303morning_0008_0.jpg ...    mask_test_v2/...\n"
        "    list_train.txt  list_val.txt  list_query.txt  list_gallery.txt\n"
        "      (each line: '<path relative to the image folder> <person id>')"
    )
    image_folders: ClassVar[tuple[tuple[str, str], ...]] = (("train", "test"), ("mask_train_v2", "mask_test_v2"))

    def is_dataset_folder(self, path: Path) -> bool:
        return (path / "list_train.txt").is_file() or any((path / train).is_dir() for train, _ in self.image_folders)

    def read_splits(self, root: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        folders = next(
            ((root / train, root / test) for train, test in self.image_folders if (root / train).is_dir()),
            None,
        )
        lists = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
        missing = [name for name in lists if not (root / name).is_file()]
        if folders is None or missing:
            what = ", ".join(missing + ([] if folders else ["train/ (V1) or mask_train_v2/ (V2)"]))
            raise DatasetLayoutError(f"MSMT17: {root} lacks {what}; expected layout:\n{self.layout}")
        train_dir, test_dir = folders
        train = self._read_list(root / "list_train.txt", train_dir) + self._read_list(root / "list_val.txt", train_dir)
        return (
            train,
            self._read_list(root / "list_query.txt", test_dir),
            self._read_list(root / "list_gallery.txt", test_dir),
        )

    @staticmethod
    def _read_list(list_file: Path, image_dir: Path) -> list[ImageRecord]:
        records = []
        for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                relpath, pid = fields[0], int(fields[1])
                camid = int(Path(relpath).name.split("_")[2]) - 1
            except (IndexError, ValueError):
                raise DatasetLayoutError(
                    f"MSMT17: {list_file}, line {line_number}: {line!r} is not "
                    "'<folder>/<pid>_<index>_<camera>_<...>.jpg <pid>' (e.g. "
                    "'0000/0000_000_01_0303morning_0015_0.jpg 0')"
                ) from None
            records.append(ImageRecord(str(image_dir / relpath), pid, camid))
        return records
