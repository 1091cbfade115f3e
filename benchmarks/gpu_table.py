"""One table of what a GPU machine does with icg: ICG and BoT training throughput with and without the decoded
cache, the part-clustering pass against a training epoch, evaluation at Market-1501 size and peak GPU memory.

``benchmarks/gpu_check.sh`` runs it after the CUDA tests. On the GPU (the defaults): ResNet-50, 256x128,
PK 16 x 4, bf16 mixed precision, channels-last, random weights; training reads synthetic pedestrians (128x64
JPEGs, like Market-1501's) either through today's loader (``--workers`` processes decode and augment on the CPU)
or from ``cache="memory"`` with the augmentation on the GPU (two workers only index the cache). A train rate is
the batch size over the median step time (data wait included) after ``--warmup`` steps; the first step of an
epoch is never timed. The clustering pass (faiss on the GPU where ``faiss-gpu`` is installed) and a training
epoch are extrapolated to Market-1501's 12,936 training images from the measured per-image costs. Evaluation:
ICG distances (global + foreground + graph + 6 parts, 2048-d) and ranking + mAP / CMC for 3,368 x 15,913 images
of features with identity structure (``bench_evaluation.py``), on the GPU.

``--dry-run`` runs the same code on the CPU with tiny sizes (ResNet-18, 64x32, a few steps, fp32, a small
evaluation) and prints the same table in well under a minute: CI runs it so that the script cannot rot::

    python benchmarks/gpu_table.py                 # on a GPU machine
    python benchmarks/gpu_table.py --dry-run       # anywhere
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from bench_evaluation import SIZES, make_problem  # scripts run with benchmarks/ on sys.path
from bench_training_speed import MARKET_TRAIN_IMAGES, StepTimer
from machine import describe
from quiet_trainer import quiet_trainer

from icg import ICGModule, PartClustering, SyntheticDataModule, evaluate_rank, icg_distance


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU's sizes, or the dry run's."""

    backbone: str
    image_size: tuple[int, int]
    identities: int  # P
    instances: int  # K
    train_ids: int
    workers: int  # of the decoding loader
    cache_workers: int  # of the cached loader, which only indexes
    warmup: int
    steps: int
    precision: str
    evaluation: dict[str, int]
    dim: int


GPU = Sizes(
    backbone="resnet50",
    image_size=(256, 128),
    identities=16,
    instances=4,
    train_ids=100,
    workers=8,
    cache_workers=2,
    warmup=5,
    steps=30,
    precision="bf16-mixed",
    evaluation=SIZES["market"],
    dim=2048,
)
DRY = Sizes(
    backbone="resnet18",
    image_size=(64, 32),
    identities=4,
    instances=2,
    train_ids=8,
    workers=0,
    cache_workers=0,
    warmup=1,
    steps=3,
    precision="32-true",
    evaluation={"num_query": 60, "num_gallery": 300, "num_ids": 20, "num_cams": 3},
    dim=64,
)


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def peak_memory(device: torch.device) -> str:
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else "n/a (CPU)"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    sizes: Sizes, device: torch.device, data: Path, *, icg: bool, cache: bool
) -> tuple[float, ICGModule, SyntheticDataModule]:
    """Trains ``warmup + steps`` steps; returns the median images/s, the module and the datamodule."""
    datamodule = SyntheticDataModule(
        str(data),
        num_train_ids=sizes.train_ids,
        num_test_ids=2,
        image_size=sizes.image_size,
        num_identities=sizes.identities,
        num_instances=sizes.instances,
        num_workers=sizes.cache_workers if cache else sizes.workers,
        cache="memory" if cache else None,
    )
    datamodule.prepare_data()
    modules = {} if icg else {"use_afm": False, "use_ppc": False, "use_fsg": False}
    module = ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=sizes.image_size,
        backbone=sizes.backbone,
        weights=None,
        channels_last=True,
        **modules,
    )
    timer = StepTimer()
    trainer = quiet_trainer(
        accelerator=device.type,
        precision=sizes.precision,
        benchmark=True,  # cuDNN picks its fastest kernels for the fixed input size
        max_steps=sizes.warmup + sizes.steps + 1,
        # clusters once, at the first epoch start, which no step time includes
        callbacks=[timer, PartClustering(every_n_epochs=10**6)],
    )
    reset_peak_memory(device)
    trainer.fit(module, datamodule=datamodule)
    steps = timer.times[sizes.warmup :]
    return sizes.identities * sizes.instances / statistics.median(steps), module, datamodule


def evaluation(sizes: Sizes, device: torch.device) -> tuple[float, float, float]:
    """Seconds of the ICG distances and of ranking + metrics on ``device``, and the mAP reached."""
    (query, q_pids, q_cams), (gallery, g_pids, g_cams) = make_problem(sizes.evaluation, sizes.dim, parts=6)
    query, gallery = query.to(device), gallery.to(device)
    icg_distance(query[:8], gallery)  # kernels and workspace, not timed
    synchronize(device)
    start = time.perf_counter()
    distances = icg_distance(query, gallery)
    synchronize(device)
    distance_seconds, start = time.perf_counter() - start, time.perf_counter()
    result = evaluate_rank(distances, q_pids.to(device), g_pids.to(device), q_cams.to(device), g_cams.to(device))
    synchronize(device)
    return distance_seconds, time.perf_counter() - start, result.mAP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, the same table")
    parser.add_argument("--data", type=Path, default=None, help="synthetic data folder (generated if absent)")
    parser.add_argument("--tests", default="not run", help="summary line of the CUDA tests, shown in the table")
    args = parser.parse_args()
    sizes = DRY if args.dry_run else GPU
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or with --dry-run")
    device = torch.device("cpu" if args.dry_run else "cuda")
    data = args.data or Path(f"data/synthetic-gpu-check-{sizes.train_ids}")
    pl.seed_everything(0, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the table is the output
    import faiss  # after torch, as icg.parts.kmeans imports it (only when it clusters)

    rows: list[tuple[str, str]] = [("CUDA tests (pytest -m cuda)", args.tests)]
    rates = {}
    # ICG's cached run last: its module, on the device, is clustered below; nothing of it counts in BoT's memory
    for name, icg in (("BoT", False), ("ICG", True)):
        for cache in (False, True):
            rate, module, datamodule = train(sizes, device, data, icg=icg, cache=cache)
            rates[name, cache] = rate
            path = (
                "memory cache, augmented on the device" if cache else f"decoded, CPU-augmented, {sizes.workers} workers"
            )
            rows.append((f"{name} train images/s, {path}", f"{rate:.0f} (peak memory {peak_memory(device)})"))
    module.to(device)  # Lightning's teardown moved it to the CPU
    reset_peak_memory(device)
    pids = [record.pid for record in datamodule.train_records]
    result = PartClustering().cluster(module, datamodule.cluster_dataset(), pids)
    on_gpu = device.type == "cuda" and faiss.get_num_gpus() > 0
    per_image = result.seconds / datamodule.num_train_samples
    clustering = per_image * MARKET_TRAIN_IMAGES
    epoch = MARKET_TRAIN_IMAGES / rates["ICG", True]
    rows += [
        (
            f"clustering pass at Market-1501 size (faiss on the {'GPU' if on_gpu else 'CPU'})",
            f"{clustering:.1f} s ({1000 * per_image:.2f} ms/image, peak memory {peak_memory(device)})",
        ),
        ("ICG training epoch at Market-1501 size, cached", f"{epoch:.1f} s"),
        ("clustering pass / training epoch", f"{clustering / epoch:.2f}"),
    ]
    reset_peak_memory(device)
    distance_seconds, rank_seconds, mean_ap = evaluation(sizes, device)
    problem = f"{sizes.evaluation['num_query']:,} x {sizes.evaluation['num_gallery']:,}"
    rows += [
        (f"evaluation {problem}: ICG distances (6 parts, {sizes.dim}-d)", f"{distance_seconds:.2f} s"),
        (f"evaluation {problem}: ranking + mAP/mINP/CMC", f"{rank_seconds:.2f} s (mAP {mean_ap:.2f})"),
        ("evaluation peak memory", peak_memory(device)),
    ]

    print(f"machine: {describe()}")
    print(
        f"{'dry run: ' if args.dry_run else ''}{sizes.backbone}, {sizes.image_size[0]}x{sizes.image_size[1]}, "
        f"batch {sizes.identities} x {sizes.instances}, {sizes.precision}, channels-last, {sizes.steps} timed steps "
        f"after {sizes.warmup}, faiss {faiss.__version__} ({faiss.get_num_gpus()} GPUs)"
    )
    width = max(len(what) for what, _ in rows)
    print(f"| {'measurement':<{width}} | result |\n|{'-' * (width + 2)}|---|")
    for what, result_text in rows:
        print(f"| {what:<{width}} | {result_text} |")


if __name__ == "__main__":
    main()
