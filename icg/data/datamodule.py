"""LightningDataModules for the four benchmarks and the synthetic pedestrians, sharing one base class.

Batches are dicts:

* train: ``image`` [B, 3, H, W] float, ``pid`` [B] (relabelled 0..num_classes-1), ``camid`` [B], ``index`` [B]
  (position in :attr:`ReIDDataModule.train_records`, the row of the model's ``part_labels`` buffer) and
  ``source`` [B, H, W] int64 (see :mod:`icg.data.transforms`). With ``augment_on_device`` the loader yields the
  resized uint8 ``image`` without ``source``, and :meth:`ReIDDataModule.on_after_batch_transfer` augments the batch
  on the model's device into exactly this form before the training step sees it;
* validation / test: query images first, then gallery images, with ``image``, ``pid``, ``camid`` and
  ``is_query`` [B] bool; each rank gets a disjoint shard, the metric gathers them;
* predict: ``image`` and ``index`` (position in :attr:`ReIDDataModule.predict_records`): the images of
  ``predict_dir`` when given (searched recursively, sorted), else query then gallery.

The trainer must run with ``use_distributed_sampler=False`` under DDP: the PK sampler already knows the ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset

from icg.data.cache import ImageCache, default_cache_dir
from icg.data.datasets import CUHK03NP, MSMT17, DukeMTMCreID, ImageRecord, Market1501, ReIDDataset
from icg.data.device_augment import BatchAugmentation
from icg.data.sampler import PKSampler, ShardSampler
from icg.data.synthetic import SyntheticSpec, plan_images, write_synthetic
from icg.data.transforms import (
    TrainTransform,
    UnreadableImagesError,
    eval_transform,
    find_unreadable_images,
    image_files,
    read_image,
    resize,
)


class TrainImages(Dataset):
    """Training images: items are dicts with image, pid, camid, index and, when augmented here, the source map.

    Args:
        records: the training images.
        transform: the augmentation, and the training size decoded files are resized to.
        cache: the images decoded and resized already (item ``i`` is record ``i``); None decodes each file.
        augment: augment here, on the CPU; False yields the resized uint8 image ``[3, H, W]`` and no source map,
            for :class:`~icg.data.device_augment.BatchAugmentation` on the model's device.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: TrainTransform,
        *,
        cache: ImageCache | None = None,
        augment: bool = True,
    ) -> None:
        self.records, self.transform, self.cache, self.augment = records, transform, cache, augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.cache is not None:
            image = self.cache[index]
        else:
            image = resize(read_image(record.path), self.transform.image_size)
        item = {"image": image, "pid": record.pid, "camid": record.camid, "index": index}
        if self.augment:
            item["image"], item["source"] = self.transform.augment(image)
        return item


class EvalImages(Dataset):
    """Images without augmentation: dicts with image, pid, camid, index and ``is_query`` (the first ``num_query``).

    ``cache`` (item ``i`` is record ``i``, resized already) replaces the decoding; ``transform``'s resize then has
    nothing to do, so the images are the same.
    """

    def __init__(
        self, records: Sequence[ImageRecord], transform: Any, num_query: int = 0, *, cache: ImageCache | None = None
    ) -> None:
        self.records, self.transform, self.num_query, self.cache = records, transform, num_query, cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.cache[index] if self.cache is not None else read_image(record.path)
        return {
            "image": self.transform(image),
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
        cache: keep the training images decoded at ``image_size`` (:class:`~icg.data.cache.ImageCache`):
            ``"memory"`` (each process, each DDP rank too, decodes the whole training split at ``setup``),
            ``"disk"`` (one memory-mapped file in ``cache_dir``, built once and reused while the files are
            unchanged; DDP ranks share it), or None (decode every image each time it is read).
        cache_dir: folder of the disk cache (default ``$XDG_CACHE_HOME/icg`` or ``~/.cache/icg``).
        augment_on_device: augment training batches on the model's device
            (:class:`~icg.data.device_augment.BatchAugmentation`, in :meth:`on_after_batch_transfer`) instead of
            in the loader workers; default: when ``cache`` is set.
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
        cache: Literal["memory", "disk"] | None = None,
        cache_dir: str | None = None,
        augment_on_device: bool | None = None,
    ) -> None:
        super().__init__()
        if cache not in (None, "memory", "disk"):
            raise ValueError(f"{type(self).__name__}: cache must be None, 'memory' or 'disk', got {cache!r}")
        self.save_hyperparameters()
        self.root = root
        self.predict_dir = predict_dir
        self.image_size = tuple(image_size)
        self.num_identities, self.num_instances = num_identities, num_instances
        self.eval_batch_size, self.num_workers, self.seed = eval_batch_size, num_workers, seed
        self.train_transform = TrainTransform(self.image_size, flip_prob, padding, erasing_prob)
        self.eval_transform = eval_transform(self.image_size)
        self.cache, self.cache_dir = cache, cache_dir
        self.augment_on_device = cache is not None if augment_on_device is None else augment_on_device
        self.batch_augmentation = BatchAugmentation(self.train_transform)
        self._dataset: ReIDDataset | None = None
        self._image_cache: ImageCache | None = None
        self._generator: tuple[tuple[Any, ...], torch.Generator] | None = None

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

        For ``fit`` with a ``cache``, the decoded training images are then built or opened (:meth:`image_cache`).
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
        if stage == "fit":
            self.image_cache()  # now, on every rank, rather than in the first loader

    def image_cache(self) -> ImageCache | None:
        """The training images decoded at ``image_size`` (``cache``), built or opened on first use; None without
        a cache. Under DDP every rank must ask for it at the same point (``setup`` does)."""
        if self.cache is not None and self._image_cache is None:
            self._image_cache = self._open_image_cache()
        return self._image_cache

    def _open_image_cache(self) -> ImageCache:
        paths = [record.path for record in self.train_records]
        trainer = self.trainer
        options = {
            "threads": max(1, self.num_workers),
            "progress": trainer is not None and trainer.progress_bar_callback is not None,
        }
        if self.cache == "memory":
            # every rank holds the whole split: the PK sampler deals identities to ranks afresh each epoch
            return ImageCache.in_memory(paths, self.image_size, **options)
        folder = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        if trainer is None or trainer.world_size == 1:
            return ImageCache.on_disk(paths, self.image_size, folder=folder, **options)
        # Global rank 0 builds the file, then the local rank 0 of every node checks it (and builds it where the
        # folder is a node's own disk), then all ranks map it. Each round ends in a collective, so every rank
        # learns of a failed build instead of waiting for a file that will not come.
        for builder in (trainer.is_global_zero, trainer.local_rank == 0):
            error: Exception | None = None
            if builder:
                try:
                    ImageCache.on_disk(paths, self.image_size, folder=folder, **options)
                except Exception as caught:  # re-raised below, after the other ranks heard of it
                    error = caught
            if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
                raise error or RuntimeError(
                    f"{type(self).__name__}: the decoded-image cache in {folder} could not be built; see the "
                    "error of global or local rank 0"
                )
        return ImageCache.on_disk(paths, self.image_size, folder=folder, build=False)

    def augment_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """A training batch of resized uint8 images (``augment_on_device``) augmented on its device: ``image``
        float ``[B, 3, H, W]`` and ``source`` int64 ``[B, H, W]`` added, as the CPU path's batches.

        ``generator`` (on the images' device) draws the parameters; by default one seeded from torch's initial
        seed (``seed_everything``), the global rank and the current epoch, so a run draws the same augmentations
        again, also when it is resumed from the end of an epoch, and ranks draw differently.
        """
        images = batch["image"]
        if generator is None:
            generator = self._augment_generator(images.device)
        image, source = self.batch_augmentation(images, self.batch_augmentation.draw(len(images), generator))
        return {**batch, "image": image, "source": source}

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        rank, _ = self._rank_and_world()
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        key = (str(device), rank, epoch)
        if self._generator is None or self._generator[0] != key:
            seed = int(np.random.SeedSequence([torch.initial_seed(), rank, epoch]).generate_state(1)[0])
            self._generator = (key, torch.Generator(device=device).manual_seed(seed))
        return self._generator[1]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augments training batches on the model's device when ``augment_on_device`` (Lightning calls this after
        moving each batch there); validation, test and predict batches pass unchanged."""
        trainer = self.trainer
        if self.augment_on_device and trainer is not None and trainer.training:
            return self.augment_batch(batch)
        return batch

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
        dataset = TrainImages(
            self.train_records, self.train_transform, cache=self.image_cache(), augment=not self.augment_on_device
        )
        return self._loader(dataset, batch_sampler=batch_sampler)

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
        return EvalImages(self.train_records, self.eval_transform, cache=self.image_cache())


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

    Args:
        root, num_train_ids, num_test_ids: where, and how many identities.
        generator_seed, generated_size: the generator's seed and image size.
        generator_settings: the generator's other settings (fields of :class:`~icg.data.SyntheticSpec`: cameras,
            images per identity, bags, occluders, ...), for a population of another kind.
        **kwargs: of :class:`ReIDDataModule`.
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        num_train_ids: int = 100,
        num_test_ids: int = 100,
        generator_seed: int = 0,
        generated_size: tuple[int, int] = (128, 64),
        generator_settings: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.spec = SyntheticSpec(
            num_train_ids=num_train_ids,
            num_test_ids=num_test_ids,
            seed=generator_seed,
            image_size=generated_size,
            **(generator_settings or {}),
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
