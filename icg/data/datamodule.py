"""LightningDataModules for the four benchmarks and the synthetic pedestrians, sharing one base class.

Batches are dicts:

* train: ``image`` [B, 3, H, W] float, ``pid`` [B] (relabelled 0..num_classes-1), ``camid`` [B], ``index`` [B]
  (position in :attr:`ReIDDataModule.train_records`, the row of the model's ``part_labels`` buffer) and
  ``source`` [B, H, W] int64 (see :mod:`icg.data.transforms`);
* validation / test: query images first, then gallery images, with ``image``, ``pid``, ``camid`` and
  ``is_query`` [B] bool; each rank gets a disjoint shard, the metric gathers them;
* predict: ``image`` and ``index`` (position in :attr:`ReIDDataModule.predict_records`): the images of
  ``predict_dir`` when given (searched recursively, sorted), else query then gallery.

The trainer must run with ``use_distributed_sampler=False`` under DDP: the PK sampler already knows the ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import BatchSampler, DataLoader, Dataset

from icg.data.datasets import CUHK03NP, MSMT17, DukeMTMCreID, ImageRecord, Market1501, ReIDDataset
from icg.data.sampler import PKSampler, ShardSampler
from icg.data.synthetic import SyntheticSpec, plan_images, write_synthetic
from icg.data.transforms import (
    TrainTransform,
    UnreadableImagesError,
    eval_transform,
    find_unreadable_images,
    image_files,
    read_image,
)


class TrainImages(Dataset):
    """Training images with augmentation: items are dicts with image, pid, camid, index and source map."""

    def __init__(self, records: Sequence[ImageRecord], transform: TrainTransform) -> None:
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image, source = self.transform(read_image(record.path))
        return {"image": image, "pid": record.pid, "camid": record.camid, "index": index, "source": source}


class EvalImages(Dataset):
    """Images without augmentation: dicts with image, pid, camid, index and ``is_query`` (the first ``num_query``)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Any, num_query: int = 0) -> None:
        self.records, self.transform, self.num_query = records, transform, num_query

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image": self.transform(read_image(record.path)),
            "pid": record.pid,
            "camid": record.camid,
            "index": index,
            "is_query": index < self.num_query,
        }


class ReIDDataModule(LightningDataModule):
    """Base class: PK-sampled training, query + gallery evaluation, DDP-aware; subclasses say how to read the index.

    Args:
        root: the dataset folder or the folder that holds it.
        image_size: (height, width) fed to the network.
        num_identities: P, identities per training batch and GPU.
        num_instances: K, images per identity (batch size per GPU is P x K).
        eval_batch_size: batch size of validation, test and predict loaders.
        num_workers: data loading processes per GPU.
        flip_prob, padding, erasing_prob: augmentation (see :class:`~icg.data.transforms.TrainTransform`).
        seed: seed of the PK sampler (the same on every rank; augmentation randomness follows Lightning's seeding).
        predict_dir: a folder of images to embed with ``icg predict`` (default: the query and gallery images).
    """

    def __init__(
        self,
        root: str,
        image_size: tuple[int, int] = (256, 128),
        num_identities: int = 16,
        num_instances: int = 4,
        eval_batch_size: int = 128,
        num_workers: int = 4,
        flip_prob: float = 0.5,
        padding: int = 10,
        erasing_prob: float = 0.5,
        seed: int = 0,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.predict_dir = predict_dir
        self.image_size = tuple(image_size)
        self.num_identities, self.num_instances = num_identities, num_instances
        self.eval_batch_size, self.num_workers, self.seed = eval_batch_size, num_workers, seed
        self.train_transform = TrainTransform(self.image_size, flip_prob, padding, erasing_prob)
        self.eval_transform = eval_transform(self.image_size)
        self._dataset: ReIDDataset | None = None

    def read_dataset(self) -> ReIDDataset:
        """Reads the dataset index (file names only); subclasses choose the reader."""
        raise NotImplementedError

    @property
    def dataset(self) -> ReIDDataset:
        if self._dataset is None:
            self._dataset = self.read_dataset()
        return self._dataset

    @property
    def num_classes(self) -> int:
        """Number of training identities (the classifier's width)."""
        return self.dataset.num_train_pids

    @property
    def num_train_samples(self) -> int:
        """Number of training images (rows of the model's part-label buffer)."""
        return len(self.dataset.train)

    @property
    def train_records(self) -> list[ImageRecord]:
        return self.dataset.train

    @property
    def eval_records(self) -> list[ImageRecord]:
        """Query records, then gallery records: the order of validation and test batches."""
        return self.dataset.query + self.dataset.gallery

    def setup(self, stage: str) -> None:
        """Checks, before any step of ``fit``, ``validate``, ``test`` or ``predict``, every image the evaluation
        will read (query and gallery; the predict images for ``predict``) and lists all unreadable ones at once.

        Training images are read by the first epoch (the clustering pass of ICG reads them all before the first
        step); evaluation images would otherwise be read first at the end of an epoch, up to
        ``check_val_every_n_epoch`` epochs later. The check decodes at reduced scale in ``num_workers`` threads
        (see :func:`~icg.data.transforms.image_problem`), on global rank 0, whose verdict every rank follows.
        """
        records = self.predict_records if stage == "predict" else self.eval_records
        split = "predict" if stage == "predict" else "query and gallery"
        trainer = self.trainer
        problems: list[tuple[str, str]] = []
        if trainer is None or trainer.is_global_zero:
            problems = find_unreadable_images(
                [record.path for record in records],
                threads=self.num_workers,
                progress=trainer is not None and trainer.progress_bar_callback is not None,
                description=f"checking {split} images",
            )
        if trainer is not None:
            problems = trainer.strategy.broadcast(problems)
        if problems:
            listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
            raise UnreadableImagesError(
                f"{type(self).__name__}: {len(problems)} of the {len(records)} {split} images cannot be read "
                f"(checked before {stage} ran any step); replace or remove them:\n{listing}"
            )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        if world_size > 1 and getattr(self.trainer._accelerator_connector, "use_distributed_sampler", False):
            raise RuntimeError(
                f"{type(self).__name__}: run the Trainer with use_distributed_sampler=False under DDP; the PK "
                "sampler shards identities across ranks itself, Lightning's DistributedSampler would replace it"
            )
        sampler = PKSampler(
            [r.pid for r in self.train_records],
            self.num_identities,
            self.num_instances,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        batch_sampler = BatchSampler(sampler, self.num_identities * self.num_instances, drop_last=True)
        return self._loader(TrainImages(self.train_records, self.train_transform), batch_sampler=batch_sampler)

    def _eval_loader(self, records: Sequence[ImageRecord], num_query: int) -> DataLoader:
        rank, world_size = self._rank_and_world()
        return self._loader(
            EvalImages(records, self.eval_transform, num_query),
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(records), rank=rank, world_size=world_size),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_records, len(self.dataset.query))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @property
    def predict_records(self) -> list[ImageRecord]:
        """What ``icg predict`` embeds; records of ``predict_dir`` have pid and camid -1 (unknown)."""
        if self.predict_dir is None:
            return self.eval_records
        return [ImageRecord(str(path), -1, -1) for path in image_files(self.predict_dir)]

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_records, 0)

    def cluster_dataset(self) -> EvalImages:
        """Training images without augmentation (for the part-clustering pass), items indexed like training."""
        return EvalImages(self.train_records, self.eval_transform)


class Market1501DataModule(ReIDDataModule):
    """Market-1501 (see :class:`~icg.data.datasets.Market1501` for the layout)."""

    def read_dataset(self) -> ReIDDataset:
        return Market1501(self.root)


class DukeMTMCDataModule(ReIDDataModule):
    """DukeMTMC-reID (see :class:`~icg.data.datasets.DukeMTMCreID` for the layout)."""

    def read_dataset(self) -> ReIDDataset:
        return DukeMTMCreID(self.root)


class CUHK03NPDataModule(ReIDDataModule):
    """CUHK03-NP; ``variant`` is ``"detected"`` or ``"labeled"`` (see :class:`~icg.data.datasets.CUHK03NP`)."""

    def __init__(self, root: str, variant: str = "detected", **kwargs: Any) -> None:
        self.variant = variant
        super().__init__(root, **kwargs)

    def read_dataset(self) -> ReIDDataset:
        return CUHK03NP(self.root, variant=self.variant)


class MSMT17DataModule(ReIDDataModule):
    """MSMT17, V1 or V2 layout (see :class:`~icg.data.datasets.MSMT17`)."""

    def read_dataset(self) -> ReIDDataset:
        return MSMT17(self.root)


class SyntheticDataModule(ReIDDataModule):
    """Synthetic pedestrians in the Market-1501 layout, generated under ``root`` by ``prepare_data`` if absent.

    The sizes (``num_classes``, ``num_train_samples``) come from the generator's plan, so they are known at
    construction without drawing a pixel. See :func:`icg.data.generate_synthetic` for what the images show.
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        num_train_ids: int = 100,
        num_test_ids: int = 100,
        generator_seed: int = 0,
        generated_size: tuple[int, int] = (128, 64),
        **kwargs: Any,
    ) -> None:
        self.spec = SyntheticSpec(
            num_train_ids=num_train_ids, num_test_ids=num_test_ids, seed=generator_seed, image_size=generated_size
        )
        plan = plan_images(self.spec)
        self._num_train_samples = sum(image.split == "train" for image in plan)
        self._num_classes = len({image.pid for image in plan if image.split == "train"})
        super().__init__(root, **kwargs)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_train_samples(self) -> int:
        return self._num_train_samples

    def prepare_data(self) -> None:
        write_synthetic(self.root, self.spec)

    def read_dataset(self) -> ReIDDataset:
        if not Path(self.root).is_dir():
            self.prepare_data()
        dataset = Market1501(self.root)
        if len(dataset.train) != self._num_train_samples:
            raise RuntimeError(
                f"SyntheticDataModule: {self.root} holds {len(dataset.train)} training images, the generator's "
                f"plan {self._num_train_samples}; it was generated with other arguments: remove it or change root"
            )
        return dataset
