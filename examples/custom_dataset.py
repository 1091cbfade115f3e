"""Training ICG on your own images: a folder per person, camera in the file name.

Layout this example reads (any names; the camera is the part of the file name before the first "_")::

    my_dataset/
      train/<person>/<camera>_<anything>.jpg
      query/<person>/<camera>_<anything>.jpg
      gallery/<person>/<camera>_<anything>.jpg

Two small classes are all it takes: a reader (a :class:`icg.ReIDDataset` that lists the three splits in
:meth:`~icg.ReIDDataset.read_splits`) and a datamodule that uses it; sampling, augmentation, DDP, evaluation and
the CLI come for free, and :func:`icg.build_module` sizes the model for the data.

Run it (it first writes a small demo folder from the synthetic pedestrians)::

    python examples/custom_dataset.py --root data/my_dataset --epochs 2

or, with your own folder, from the command line::

    python -m icg fit --config synthetic --data examples.custom_dataset.FolderDataModule --data.root my_dataset

(from the repository root, so that ``examples`` is importable).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import lightning.pytorch as pl

from icg import (
    IMAGE_SUFFIXES,
    DatasetLayoutError,
    ImageRecord,
    ReIDDataModule,
    ReIDDataset,
    build_module,
    generate_synthetic,
)


class PersonFolders(ReIDDataset):
    """``<root>/{train,query,gallery}/<person>/<camera>_<anything>.<jpg|png>``."""

    layout = "  <root>/{train,query,gallery}/<person>/<camera>_<anything>.jpg"

    def is_dataset_folder(self, path: Path) -> bool:
        return (path / "train").is_dir()

    def read_splits(self, root: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        persons = {p.name for split in ("train", "query", "gallery") for p in (root / split).glob("*/")}
        person_ids = {name: i + 1 for i, name in enumerate(sorted(persons))}
        camera_ids: dict[str, int] = {}
        splits = []
        for split in ("train", "query", "gallery"):
            records = []
            for path in sorted((root / split).glob("*/*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if "_" not in path.name:
                    raise DatasetLayoutError(f"{path}: expected '<camera>_<anything>{path.suffix}'")
                camera = camera_ids.setdefault(path.name.split("_")[0], len(camera_ids))
                records.append(ImageRecord(str(path), person_ids[path.parent.name], camera))
            splits.append(records)
        return splits[0], splits[1], splits[2]


class FolderDataModule(ReIDDataModule):
    """A datamodule for :class:`PersonFolders`; every other argument is :class:`ReIDDataModule`'s."""

    def read_dataset(self) -> ReIDDataset:
        return PersonFolders(self.root)


def write_demo_folder(root: Path) -> None:
    """Copies a small synthetic Market-1501 tree into the person-folder layout."""
    market = generate_synthetic(root.parent / f"{root.name}-market", num_train_ids=12, num_test_ids=8, seed=3)
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        for image in (market / folder).glob("*.jpg"):
            person, camera = image.name.split("_")[:2]
            if person in ("0000", "-1"):
                continue
            target = root / split / person / f"{camera[:2]}_{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/my_dataset"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not args.root.exists():
        write_demo_folder(args.root)
    datamodule = FolderDataModule(str(args.root), image_size=(64, 32), num_identities=4, num_instances=2, num_workers=0)
    print(datamodule.dataset)
    model = build_module(datamodule, backbone="resnet18", weights=None, warmup_epochs=1)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        use_distributed_sampler=False,
        default_root_dir=str(args.root.parent / "runs-custom"),
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.validate(model, datamodule=datamodule)


if __name__ == "__main__":
    main()
