"""Throughput of the training data pipeline (images/s): today's decoding loader against the decoded cache with the
augmentation on the device, and the memory the cache takes.

Reads Market-1501-sized JPEGs (128x64, like the real dataset's) written by the synthetic generator and trains at
256x128, through ``SyntheticDataModule``'s train loader, with the same augmentation on every path (flip,
pad + crop, normalise, erasing, source map):

* ``decode + CPU augmentation``: today's default; per worker: decode, resize, augment one image at a time.
* ``cache + device augmentation``: ``cache="memory"`` / ``"disk"``; the loader only indexes the decoded uint8
  images, and ``augment_batch`` augments the whole batch on ``--device`` (where Lightning's
  ``on_after_batch_transfer`` does it in training). On a CPU-only machine the device is the CPU and the
  augmentation runs in the main process, after the loader.
* ``memory cache, loader alone``: the same without the augmentation, i.e. what a loader worker does when a GPU
  augments.
* two halves, to show where the time goes: the cache with the CPU augmentation, and decoding with the device
  augmentation.

A rate is images over the wall time of ``--batches`` batches after the first (worker start-up), including the
move to the device and the augmentation there; medians of ``--repeats`` passes. The main process runs
``--threads`` torch threads (1: the same as one loader worker), so with 0 workers every path runs in one process on
one thread: the ratios printed last are per worker. The two paths of the headline ratio are measured in alternated
passes, so that a change in the machine's load hits both::

    python benchmarks/bench_data.py --workers 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from machine import describe, status_kib  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg import SyntheticDataModule

MARKET_TRAIN_IMAGES, MSMT17_TRAIN_IMAGES = 12936, 32621


def datamodule(args: argparse.Namespace, workers: int, **options) -> SyntheticDataModule:
    module = SyntheticDataModule(
        str(args.data),
        num_train_ids=150,
        num_test_ids=10,
        image_size=(256, 128),
        num_identities=16,
        num_instances=4,
        num_workers=workers,
        **options,
    )
    module.prepare_data()
    return module


class Pipeline:
    """A train loader with ``workers`` workers of the datamodule with ``options``, its batches moved to the device
    and, when the datamodule augments there and ``augment``, augmented there (``augment=False`` times the loader
    alone)."""

    def __init__(self, args: argparse.Namespace, workers: int, *, augment: bool = True, **options) -> None:
        self.module = datamodule(args, workers, **options)
        self.loader = self.module.train_dataloader()
        self.device, self.batches = torch.device(args.device), args.batches
        self.augment = augment and self.module.augment_on_device

    def rate(self) -> float:
        """Images/s of one pass over ``--batches`` batches; each pass starts the workers afresh."""
        iterator = iter(self.loader)
        next(iterator)  # worker start-up and the first batch are not timed
        start, images = time.perf_counter(), 0
        for _, batch in zip(range(self.batches), iterator):
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
            if self.augment:
                batch = self.module.augment_batch(batch)
            images += len(batch["image"])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return images / (time.perf_counter() - start)


def rates(args: argparse.Namespace, workers: int, **options) -> list[float]:
    """Images/s of ``--repeats`` passes of a :class:`Pipeline`."""
    pipeline = Pipeline(args, workers, **options)
    return [pipeline.rate() for _ in range(args.repeats)]


def report(name: str, workers: int, measured: list[float]) -> float:
    median = statistics.median(measured)
    runs = ", ".join(f"{rate:.0f}" for rate in measured)
    print(f"{name:<36} {workers} workers: median {median:6.0f} images/s (runs {runs})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="besides 0")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-bench-loader"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data/bench-loader-cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}")
    print(f"augmentation device: {args.device}; batches of 64 at 256x128 from 128x64 JPEGs")

    # first, while the heap holds no freed memory that the cache could reuse unseen
    datamodule(args, 0)  # generates the data if absent
    before, start = status_kib("VmRSS"), time.perf_counter()
    cache = datamodule(args, 0, cache="memory").image_cache()  # decoded in one thread
    build, grown, images = time.perf_counter() - start, (status_kib("VmRSS") - before) / 2**10, len(cache)
    del cache

    # per worker: both in this one process, passes alternated so that a change of the machine's load hits both
    decoding, cached = Pipeline(args, 0), Pipeline(args, 0, cache="memory")
    pairs = [(decoding.rate(), cached.rate()) for _ in range(args.repeats)]
    old_median = report("decode + CPU augmentation", 0, [old for old, _ in pairs])
    report("memory cache + device augmentation", 0, [new for _, new in pairs])
    ratios = [new / old for old, new in pairs]
    for workers in (w for w in args.workers if w > 0):
        report("decode + CPU augmentation", workers, rates(args, workers))
        report("memory cache + device augmentation", workers, rates(args, workers, cache="memory"))
    loader = report("memory cache, loader alone", 0, rates(args, 0, augment=False, cache="memory"))
    report("disk cache + device augmentation", 0, rates(args, 0, cache="disk", cache_dir=str(args.cache_dir)))
    report("memory cache + CPU augmentation", 0, rates(args, 0, cache="memory", augment_on_device=False))
    report("decode + device augmentation", 0, rates(args, 0, augment_on_device=True))

    per_image = 3 * 256 * 128
    print(
        f"memory cache: {images} images, {images * per_image / 2**20:.0f} MiB ({per_image // 1024} KiB per image; "
        f"resident memory grew {grown:.0f} MiB), decoded in {build:.1f} s with 1 thread; at 256x128: Market-1501 "
        f"{MARKET_TRAIN_IMAGES * per_image / 2**30:.2f} GiB, MSMT17 {MSMT17_TRAIN_IMAGES * per_image / 2**30:.2f} GiB"
    )
    print(
        f"per worker: cache + device augmentation / decoding loader: median {statistics.median(ratios):.1f}x "
        f"(alternated passes: {', '.join(f'{ratio:.1f}' for ratio in ratios)})"
    )
    # what a loader worker does when a GPU augments: index the cache and collate
    print(f"per worker: cache, loader alone / decoding loader: {loader / old_median:.0f}x")


if __name__ == "__main__":
    main()
