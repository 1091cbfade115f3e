"""Two-process DDP run (CPU, gloo) of :class:`icg.parts.PartClustering`, for ``tests/parts/test_callback.py``.

Usage: ``python tests/scripts/ddp_clustering.py DATA_ROOT OUT_DIR [shared]`` where ``DATA_ROOT`` holds the synthetic
data of the test's datamodule; with ``shared``, the clustering runs with ``shared_parts=True`` (one K-means over all
identities, whose sample the ranks gather). One epoch clusters at its start; each rank then saves its ``labels``,
``labeled`` and the number of identities it clustered itself to ``OUT_DIR/rank<r>.pt``. Rank 0 also clusters a copy
of the initial model in a single process (no sharding, no reduction) and saves it to ``OUT_DIR/single.pt``.

Features are extracted one image at a time on one thread, so that the two runs see bit-identical feature maps
(batch composition differs between them, and CPU convolutions may round differently for different batch sizes).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

import icg.parts.callback  # noqa: E402
from icg.data import SyntheticDataModule  # noqa: E402
from icg.module import ICGModule  # noqa: E402
from icg.parts import ClusteringResult, PartClustering  # noqa: E402

torch.set_num_threads(1)
local_identities: list[int] = []
_cluster_part_labels = icg.parts.callback.cluster_part_labels


def _recording(*args: Any, **kwargs: Any) -> ClusteringResult:
    # what this rank clustered before the labels were summed across ranks
    result = _cluster_part_labels(*args, **kwargs)
    local_identities.append(result.clustered_identities)
    return result


icg.parts.callback.cluster_part_labels = _recording


def build(datamodule: SyntheticDataModule) -> ICGModule:
    return ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=(64, 32),
        backbone="resnet18",
        weights=None,
        num_parts=3,
    )


def main(root: str, out: Path, shared: bool) -> None:
    datamodule = SyntheticDataModule(
        root=root,
        num_train_ids=4,
        num_test_ids=2,
        image_size=(64, 32),
        num_identities=2,
        num_instances=2,
        num_workers=0,
        eval_batch_size=1,
    )
    seed_everything(0)
    module = build(datamodule)
    initial = copy.deepcopy(module.state_dict())
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[PartClustering(shared_parts=shared)],
    )
    trainer.fit(module, datamodule=datamodule)
    torch.save(
        {
            **module.part_labels.state_dict(),
            "local_identities": local_identities[0],
        },
        out / f"rank{trainer.global_rank}.pt",
    )
    if trainer.global_rank == 0:
        single = build(datamodule)
        single.load_state_dict(initial)
        pids = [record.pid for record in datamodule.train_records]
        result = PartClustering(shared_parts=shared).cluster(single, datamodule.cluster_dataset(), pids, batch_size=1)
        torch.save(
            {**single.part_labels.state_dict(), "identities": result.clustered_identities},
            out / "single.pt",
        )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:] == ["shared"])
