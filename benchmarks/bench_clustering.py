"""Cost of the part clustering: K-means at Market-1501 scale, the pass against a training epoch, and its memory.

Usage: ``python benchmarks/bench_clustering.py [--ids 751 --parts 6 --niter 20 --memory-ids 100 --epochs 3]``
(``--skip kmeans,epoch,memory`` leaves parts out; ``--fg-signal identity`` times (a) with the identity contrast,
which compares every cell with the identity's other images and 64 reference images; ``--shared-parts`` times (b)
with the part centroids shared by all identities, a sampling pass before the labelling pass).

(a) **K-means alone, Market-1501 sized**: ``--ids`` identities with 10..24 images each (mean 17, Market-1501 has
    17.2), 16x8 feature maps of 2048 channels, ``K = --parts``. The maps are drawn, not computed: per identity,
    ``K`` random unit prototypes laid out as horizontal bands (shifted per image) plus Gaussian noise, on the
    middle 4 of 8 columns (foreground, half the cells); the other columns are low-norm noise (background). They
    are streamed through :func:`icg.parts.cluster_part_labels` on the CPU; the time inside
    :meth:`SphericalKMeans.fit_predict` (k-means++ seeding + faiss) is summed, and the whole pass (drawing maps
    included) is timed too. Target: K-means <= 30 s on 2 cores.
(b) **Clustering pass / one training epoch**: ICGModule with resnet18 (ImageNet-free init) at 256x128 (16x8
    maps, as with resnet50) on SyntheticDataModule (``--epoch-ids`` identities, P=4 x K=4 batches, no workers),
    ``--epochs`` epochs with :class:`PartClustering` at every epoch start; medians of the pass
    (``cluster/seconds``) and of the training epoch that follows it. Target: ratio <= 0.5.
(c) **Peak memory** of the workload of (a) with ``--memory-ids`` x 1, 2, 4 identities, each in a fresh
    subprocess: ``VmHWM`` after resetting it once the imports are done (``/proc/self/clear_refs``, Linux), next to
    the RSS at that point; the pass adds a 32 MiB noise pool of its own. Flat means streaming: holding all maps
    would take 1 MiB per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from machine import describe, status_kib  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from quiet_trainer import quiet_trainer
from torch import Tensor
from torch.utils.data import Dataset

from icg.data import SyntheticDataModule
from icg.module import ICGModule
from icg.parts import ClusteringResult, PartClustering, SphericalKMeans, cluster_part_labels

CHANNELS, HEIGHT, WIDTH = 2048, 16, 8
POOL = 32  # noise maps reused across images: drawing 1 MiB of noise per image would dominate the pass


def machine() -> str:
    import faiss

    return (
        f"machine: {describe()}\n"
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


class Workload(Dataset):
    """Market-1501-like identities; items carry only (identity, image number), the maps are drawn by ``maps``."""

    def __init__(self, num_ids: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        counts = rng.integers(10, 25, size=num_ids)
        self.pids = np.repeat(np.arange(num_ids), counts).tolist()
        # cells of noise with norm about 1
        noise = rng.standard_normal((POOL, CHANNELS, HEIGHT, WIDTH), dtype=np.float32) / CHANNELS**0.5
        self.noise = torch.from_numpy(noise)

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": torch.tensor([self.pids[index], index])}

    def maps(self, items: Tensor, num_parts: int) -> Tensor:
        """``[B, 2]`` (identity, image) -> ``[B, C, 16, 8]``: background cells of norm ~0.1; foreground cells (the
        middle 4 columns) the identity's part prototype of their band (norm 1) plus noise of norm ~0.5."""
        pids, index = items[:, 0], items[:, 1]
        out = 0.1 * self.noise[index % POOL]
        prototypes = torch.stack(
            [
                torch.from_numpy(np.random.default_rng(pid).standard_normal((num_parts, CHANNELS), dtype=np.float32))
                for pid in pids.tolist()
            ]
        )
        prototypes /= prototypes.norm(dim=2, keepdim=True)
        # the person moves up or down a row between images
        rows = (torch.arange(HEIGHT)[None] + (index % 3 - 1)[:, None]).clamp(0, HEIGHT - 1)
        bands = prototypes.gather(1, (rows * num_parts // HEIGHT)[:, :, None].expand(-1, -1, CHANNELS))
        out[..., 2:6] = bands.transpose(1, 2)[..., None] + 5.0 * out[..., 2:6]
        return out


class TimedKMeans(SphericalKMeans):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []

    def fit_predict(self, points: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        start = time.perf_counter()
        result = super().fit_predict(points, rng=rng)
        self.seconds.append(time.perf_counter() - start)
        return result


def run_workload(
    num_ids: int, num_parts: int, niter: int, fg_signal: str = "activation"
) -> tuple[float, TimedKMeans, ClusteringResult]:
    workload = Workload(num_ids)
    kmeans = TimedKMeans(num_parts, niter=niter)
    start = time.perf_counter()
    result = cluster_part_labels(
        lambda items: workload.maps(items, num_parts),
        workload,
        workload.pids,
        num_parts,
        label_size=(HEIGHT, WIDTH),
        fg_signal=fg_signal,
        batch_size=128,
        kmeans=kmeans,
    )
    return time.perf_counter() - start, kmeans, result


def bench_kmeans(args: argparse.Namespace) -> None:
    seconds, kmeans, result = run_workload(args.ids, args.parts, args.niter, args.fg_signal)
    print(
        f"(a) K-means, foreground signal {args.fg_signal}, {args.ids} ids, {len(result.labels)} images, "
        f"2048x16x8 maps, foreground "
        f"{result.foreground_share:.0%} ({result.foreground_cells / args.ids:.0f} cells per id), K={args.parts}, "
        f"niter={args.niter}, CPU:\n"
        f"    K-means total {sum(kmeans.seconds):.1f} s (median {statistics.median(kmeans.seconds) * 1e3:.1f} ms "
        f"per id), whole pass incl. drawing the maps {seconds:.1f} s; "
        f"{result.clustered_identities} clustered, {result.skipped_identities} skipped"
    )


class EpochTimer(Callback):
    """Times each training epoch; placed after PartClustering (callbacks run in list order), so it excludes the
    clustering pass."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.started = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self.started)


class TimedClustering(PartClustering):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []

    def cluster(self, *args: object, **kwargs: object) -> ClusteringResult:
        result = super().cluster(*args, **kwargs)
        self.seconds.append(result.seconds)
        return result


def bench_epoch(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as root:
        datamodule = SyntheticDataModule(
            root=str(Path(root) / "synthetic"),
            num_train_ids=args.epoch_ids,
            num_test_ids=4,
            image_size=(256, 128),
            num_identities=4,
            num_instances=4,
            num_workers=0,
        )
        torch.manual_seed(0)
        module = ICGModule(
            num_classes=datamodule.num_classes,
            num_train_samples=datamodule.num_train_samples,
            backbone="resnet18",
            weights=None,
            num_parts=args.parts,
        )
        clustering, timer = TimedClustering(niter=args.niter, shared_parts=args.shared_parts), EpochTimer()
        trainer = quiet_trainer(
            accelerator="cpu",
            max_epochs=args.epochs,
            default_root_dir=root,
            callbacks=[clustering, timer],
        )
        trainer.fit(module, datamodule=datamodule)
        steps = trainer.num_training_batches
    cluster, epoch = statistics.median(clustering.seconds), statistics.median(timer.seconds)
    print(
        f"(b) ICGModule resnet18 at 256x128 on SyntheticDataModule ({args.epoch_ids} ids, "
        f"{'shared parts, ' if args.shared_parts else ''}"
        f"{datamodule.num_train_samples} images, {steps} batches of 16 per epoch), medians of {args.epochs} epochs:\n"
        f"    clustering pass {cluster:.1f} s, training epoch {epoch:.1f} s, ratio {cluster / epoch:.2f} "
        f"(per epoch: {', '.join(f'{c / e:.2f}' for c, e in zip(clustering.seconds, timer.seconds))})"
    )


def memory_child(num_ids: int, num_parts: int, niter: int) -> None:
    import_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # start the high-water mark afresh (Linux >= 4.0): importing torch peaks above what it keeps
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    seconds, _, result = run_workload(num_ids, num_parts, niter)
    print(
        json.dumps(
            {
                "images": len(result.labels),
                "import_peak_kib": import_peak,
                "before_kib": before,
                "peak_kib": status_kib("VmHWM"),
                "seconds": seconds,
            }
        )
    )


def bench_memory(args: argparse.Namespace) -> None:
    rows = []
    for factor in (1, 2, 4):
        num_ids = args.memory_ids * factor
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(num_ids),
                "--parts",
                str(args.parts),
                "--niter",
                str(args.niter),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append((num_ids, json.loads(done.stdout.strip().splitlines()[-1])))
    print("(c) memory of the pass in a fresh process (VmHWM, reset after the imports):")
    for num_ids, row in rows:
        print(
            f"    {num_ids:4d} ids ({row['images']:5d} images, {row['images']} MiB of maps if held): "
            f"RSS after imports {row['before_kib'] / 1024:.0f} MiB, peak during the pass {row['peak_kib'] / 1024:.0f} "
            f"MiB (+{(row['peak_kib'] - row['before_kib']) / 1024:.0f} MiB; {row['seconds']:.1f} s)"
        )
    growth = [row["peak_kib"] - row["before_kib"] for _, row in rows]
    peaks = [row["peak_kib"] for _, row in rows]
    print(f"    growth 4x / 1x ids: {growth[-1] / growth[0]:.2f} (peak {peaks[-1] / peaks[0]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--epoch-ids", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory-ids", type=int, default=100)
    parser.add_argument(
        "--fg-signal", default="activation", choices=["activation", "identity"], help="the foreground rule of (a)"
    )
    parser.add_argument(
        "--shared-parts", action="store_true", help="(b) with PartClustering(shared_parts=True): two passes"
    )
    parser.add_argument("--skip", default="", help="comma-separated: kmeans, epoch, memory")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.parts, args.niter)
        return
    skip = set(filter(None, args.skip.split(",")))
    print(machine())
    if "kmeans" not in skip:
        bench_kmeans(args)
    if "epoch" not in skip:
        bench_epoch(args)
    if "memory" not in skip:
        bench_memory(args)


if __name__ == "__main__":
    main()
