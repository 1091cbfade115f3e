"""Decode + augment throughput of the training pipeline (images/s), per number of loader workers.

Reads Market-1501-sized JPEGs (128x64, like the real dataset's) written by the synthetic generator, resizes to
256x128 and applies the training augmentation with its source map, through ``SyntheticDataModule``'s train
loader. A fast GPU trains ResNet-50 ICG at several hundred images/s, so this says how many workers keep it
busy: workers needed = GPU images/s / (images/s of one worker).

    python benchmarks/bench_data.py --workers 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg import SyntheticDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-bench-loader"))
    args = parser.parse_args()
    print(f"machine: {describe()}")
    for workers in args.workers:
        datamodule = SyntheticDataModule(
            str(args.data),
            num_train_ids=150,
            num_test_ids=10,
            image_size=(256, 128),
            num_identities=16,
            num_instances=4,
            num_workers=workers,
        )
        datamodule.prepare_data()
        loader = datamodule.train_dataloader()
        rates = []
        for _ in range(3):  # repeats; each pass starts the workers afresh
            iterator = iter(loader)
            next(iterator)  # worker start-up and the first batch are not timed
            start, images = time.perf_counter(), 0
            for _, batch in zip(range(args.batches), iterator):
                images += len(batch["image"])
            rates.append(images / (time.perf_counter() - start))
            del iterator
        print(
            f"{workers} workers: median {statistics.median(rates):.0f} images/s (decode + resize + flip + "
            f"pad/crop + normalise + erasing + source map), runs {', '.join(f'{r:.0f}' for r in rates)}"
        )


if __name__ == "__main__":
    main()
