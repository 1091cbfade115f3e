"""Training throughput and clustering cost of ICG with the real data pipeline, on whatever device is present.

Trains ``ICGModule`` (default ResNet-50, 256x128, PK 16 x 4 = 64 images per step) on synthetic pedestrians
through ``SyntheticDataModule``, its loaders and ``PartClustering``, and prints:

* train images/s: median over the timed steps (after warm-up) of batch size / step time, where a step is the
  time between two ``on_train_batch_end`` calls of one epoch (data wait + forward + loss + backward + Adam);
* clustering: seconds of one ``PartClustering`` pass over the training set, per image, and extrapolated to
  Market-1501's 12,936 training images (one pass per epoch in the paper's recipe).

The same script runs unchanged on a GPU (bf16, channels-last and ``torch.compile`` are flags)::

    python benchmarks/bench_training_speed.py                          # CPU defaults
    python benchmarks/bench_training_speed.py --precision bf16-mixed --channels-last --compile --workers 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from quiet_trainer import quiet_trainer

from icg import ICGModule, PartClustering, SyntheticDataModule

MARKET_TRAIN_IMAGES = 12936


class StepTimer(pl.Callback):
    """Seconds between consecutive ``on_train_batch_end`` calls of one epoch (a step, data wait included); the
    first step of an epoch is not timed, so the epoch start (part clustering, loader restart) never counts."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 128])
    parser.add_argument("--identities", type=int, default=16, help="P")
    parser.add_argument("--instances", type=int, default=4, help="K")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--train-ids", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-bench"))
    args = parser.parse_args()

    datamodule = SyntheticDataModule(
        str(args.data),
        num_train_ids=args.train_ids,
        num_test_ids=10,
        image_size=tuple(args.image_size),
        num_identities=args.identities,
        num_instances=args.instances,
        num_workers=args.workers,
    )
    datamodule.prepare_data()
    module = ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=tuple(args.image_size),
        backbone=args.backbone,
        weights=None,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    timer = StepTimer()
    clustering = PartClustering()
    warmup = 2
    trainer = quiet_trainer(
        precision=args.precision,
        max_steps=warmup + args.steps + 1,
        callbacks=[timer, clustering],
    )
    trainer.fit(module, datamodule=datamodule)

    batch = args.identities * args.instances
    steps = timer.times[warmup:]
    rates = [batch / t for t in steps]
    result = clustering.cluster(
        module,
        datamodule.cluster_dataset(),
        [r.pid for r in datamodule.train_records],
        trainer=trainer,
        num_workers=args.workers,
    )
    seconds = result.seconds
    per_image = seconds / datamodule.num_train_samples

    print(f"machine: {describe()}")
    print(
        f"model: ICG {args.backbone}, {args.image_size[0]}x{args.image_size[1]}, batch {batch}, "
        f"precision {args.precision}, channels_last={args.channels_last}, compile={args.compile}, "
        f"{args.workers} loader workers"
    )
    print(
        f"train: median {statistics.median(rates):.1f} images/s over {len(steps)} steps "
        f"(median step {statistics.median(steps):.2f} s; min {batch / max(steps):.1f}, max {batch / min(steps):.1f})"
    )
    print(
        f"clustering pass: {seconds:.1f} s for {datamodule.num_train_samples} images "
        f"({1000 * per_image:.1f} ms/image, extraction and K-means) "
        f"-> {per_image * MARKET_TRAIN_IMAGES / 60:.1f} min per epoch at Market-1501 size"
    )
    epoch = MARKET_TRAIN_IMAGES / statistics.median(rates)
    print(
        f"one Market-1501-sized training epoch at this rate: {epoch / 60:.1f} min; "
        f"clustering / training epoch = {per_image * MARKET_TRAIN_IMAGES / epoch:.2f}"
    )


if __name__ == "__main__":
    main()
