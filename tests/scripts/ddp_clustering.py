"""Two-process DDP run (CPU, gloo) of :class:`icg.clustering.PartClustering`, for ``tests/test_clustering.py``.

Usage: ``python tests/scripts/ddp_clustering.py DATA_ROOT OUT_DIR [shared]`` where ``DATA_ROOT`` holds the synthetic
data of the test's datamodule; with ``shared``, the clustering runs with ``shared_parts=True`` (one K-means over
all identities, whose sample the ranks gather) and ``height_weight=1``. One epoch clusters at its start; each rank
then saves its ``labels``, ``labeled`` and the number of identities it clustered itself and its part classifier as
the clustering refitted it (before any training step) to ``OUT_DIR/rank<r>.pt``. Rank 0 also clusters a copy of
the initial model in a single process (no sharding, no reduction) and saves it to ``OUT_DIR/single.pt``.

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
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything  # noqa: E402

import icg.clustering  # noqa: E402
from icg.clustering import PartClustering  # noqa: E402
from icg.data import SyntheticDataModule  # noqa: E402
from icg.module import ICGModule  # noqa: E402

torch.set_num_threads(1)
local_identities: list[int] = []
_cluster_part_labels = icg.clustering.cluster_part_labels


def _recording(*args: Any, **kwargs: Any) -> icg.clustering.ClusteringResult:
    # what this rank clustered before the labels were summed across ranks
    result = _cluster_part_labels(*args, **kwargs)
    local_identities.append(result.clustered_identities)
    return result


icg.clustering.cluster_part_labels = _recording


class RefittedClassifier(Callback):
    """The part classifier right after the clustering (which runs first, at the same hook) refitted it."""

    state: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.state.update({k: v.clone() for k, v in pl_module.part_classifier.state_dict().items()})


def build(datamodule: SyntheticDataModule) -> ICGModule:
    return ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=(64, 32),
        backbone="resnet18",
        weights=None,
        num_parts=3,
    )


def clustering(shared: bool) -> PartClustering:
    return PartClustering(batch_size=1, refit_classifier=True, shared_parts=shared, height_weight=float(shared))


def main(root: str, out: Path, shared: bool) -> None:
    datamodule = SyntheticDataModule(
        root=root,
        num_train_ids=4,
        num_test_ids=2,
        image_size=(64, 32),
        num_identities=2,
        num_instances=2,
        num_workers=0,
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
        callbacks=[clustering(shared), RefittedClassifier()],
    )
    trainer.fit(module, datamodule=datamodule)
    torch.save(
        {
            **module.part_labels.state_dict(),
            "local_identities": local_identities[0],
            "classifier": RefittedClassifier.state,
        },
        out / f"rank{trainer.global_rank}.pt",
    )
    if trainer.global_rank == 0:
        single = build(datamodule)
        single.load_state_dict(initial)
        pids = [record.pid for record in datamodule.train_records]
        result = clustering(shared).cluster(single, datamodule.cluster_dataset(), pids)
        torch.save(
            {
                **single.part_labels.state_dict(),
                "identities": result.clustered_identities,
                "classifier": single.part_classifier.state_dict(),
            },
            out / "single.pt",
        )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:] == ["shared"])
