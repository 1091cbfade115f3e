"""ReIDMetric under DDP: 2 CPU processes (gloo), each updating with its own uneven shard.

Usage: ``python tests/scripts/ddp_metric.py OUT.npz``. The launcher starts both ranks as subprocesses (it
imports no torch itself, so a run costs one import time, not two) and fails if either fails. Rank 0 writes the
full data set and, as JSON in the ``results`` entry, what ``compute`` returned for two runs: ``features``
(plain sharding) and ``deduplicated`` (rank 1 repeats some of rank 0's images, as ``DistributedSampler``
padding does, with ``sample_index`` given). ``tests/test_metrics.py`` checks both against a single-process
reference over the full data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

NUM_IMAGES = 70
SPLIT = 31  # rank 0 holds images 0..30, rank 1 the rest: uneven shards make torchmetrics pad and trim


def make_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "global_feat": rng.normal(size=(NUM_IMAGES, 6)).astype(np.float32),
        "foreground": rng.normal(size=(NUM_IMAGES, 6)).astype(np.float32),
        "parts": rng.normal(size=(NUM_IMAGES, 4, 5)).astype(np.float32),
        "graph": rng.normal(size=(NUM_IMAGES, 4)).astype(np.float32),
        "visibility": rng.random((NUM_IMAGES, 4)) < 0.6,
        "pids": rng.integers(0, 8, NUM_IMAGES),
        "camids": rng.integers(0, 3, NUM_IMAGES),
        "is_query": rng.random(NUM_IMAGES) < 0.3,
    }


def run(rank: int, world_size: int, out: str) -> None:
    import torch  # here, not at the top: the launcher does not need them
    import torch.distributed as dist

    from icg.metrics import ReIDMetric
    from icg.retrieval import ReIDFeatures

    dist.init_process_group("gloo", rank=rank, world_size=world_size)  # MASTER_ADDR / MASTER_PORT from the env
    data = {name: torch.from_numpy(value) for name, value in make_data().items()}
    features = ReIDFeatures(
        **{name: data[name] for name in ("global_feat", "foreground", "parts", "graph", "visibility")}
    )
    mine = torch.arange(SPLIT) if rank == 0 else torch.arange(SPLIT, NUM_IMAGES)
    results = {}
    for run_name, extra in (("features", None), ("deduplicated", torch.tensor([3, 0, 17]))):
        index = mine if extra is None or rank == 0 else torch.cat([mine, extra])
        metric = ReIDMetric()
        for batch in index.split(8):  # several updates per rank
            metric.update(
                features[batch],
                data["pids"][batch],
                data["camids"][batch],
                data["is_query"][batch],
                sample_index=None if extra is None else batch,
            )
        results[run_name] = {name: value.item() for name, value in metric.compute().items()}
    if rank == 0:
        np.savez(out, results=json.dumps(results), **make_data())
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: str, world_size: int = 2, timeout: float = 150.0) -> int:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world_size)}
    procs = [
        subprocess.Popen([sys.executable, __file__, out], env={**env, "RANK": str(rank)}) for rank in range(world_size)
    ]
    try:
        codes = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return max(abs(code) for code in codes)


if __name__ == "__main__":
    if "RANK" in os.environ:
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1])
    else:
        sys.exit(launch(sys.argv[1]))
