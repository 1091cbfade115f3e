"""``PartClustering``: the Lightning callback that recomputes the part pseudo-labels at the start of training epochs.

It owns the labelling's schedule and K-means; the foreground rule is the module's (``fg_signal``, ``fg_threshold``),
which the training step's target follows too, and the module offers the rest through
:class:`~icg.contracts.LabeledModel`.

* **Schedule and resume.** Clustering runs at the start of epochs ``0, n, 2n, ...``. The epoch of the last
  clustering is part of the callback's state (saved in checkpoints by Lightning), and an epoch whose labels already
  exist is not clustered again: resuming within a clustering epoch (Lightning runs its start hooks again when the
  checkpoint was written during them) keeps the checkpoint's labels, which come back with the module's buffers,
  until the next scheduled epoch.
* **DDP.** Each rank labels its share of the identities (:func:`~icg.parts.labelling.cluster_part_labels`), fills
  zeros elsewhere, and the buffers are summed across ranks (as int32: not every backend sums uint8), so every rank
  ends with the same labels.
* **Unlabeled identities** (too few foreground cells) keep no labels: the module falls back to ``K`` horizontal
  bands of the current foreground for them (with ``fg_signal="identity"`` they are not scored). One warning per pass
  gives their count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from icg.contracts import ClusteringData, LabeledModel, require
from icg.parts.kmeans import SphericalKMeans
from icg.parts.labelling import ClusteringResult, cluster_part_labels, stream_identities
from icg.parts.shared import shared_part_centroids

__all__ = ["PartClustering"]

log = logging.getLogger(__name__)


class PartClustering(Callback):
    """Recomputes the part pseudo-labels of an :class:`icg.ICGModule` every ``every_n_epochs`` epochs.

    At the start of epochs ``0, n, 2n, ...`` the module is put in eval mode, the datamodule's ``cluster_dataset()``
    (training images without augmentation) is streamed identity by identity in batches of the datamodule's
    ``eval_batch_size``, and the module's part labels are replaced on every rank (module docstring). Logs
    ``cluster/seconds``, ``cluster/foreground_share`` and ``cluster/part_share/k`` (share of the clustered foreground
    cells in part ``k``, ``k = 1..K``). Added to every ICG model's Trainer by
    :meth:`icg.ICGModule.configure_callbacks`; add one yourself to change its settings.

    Args:
        every_n_epochs: ``n``, epochs between clusterings (the paper: 1; its appendix also uses 2).
        niter: K-means (Lloyd) iterations.
        shared_parts: one K-means over the foreground cells of all identities, with each cell's height
            (:mod:`icg.parts.shared`; not in the paper, which clusters each identity on its own), so that label ``k``
            is one cluster for every identity. Costs a second pass over the training images.

    Outside a Trainer, :meth:`cluster` labels a module directly (a notebook, a test).
    """

    def __init__(self, *, every_n_epochs: int = 1, niter: int = 20, shared_parts: bool = False) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"PartClustering: every_n_epochs must be >= 1, got {every_n_epochs}")
        if niter < 1:
            raise ValueError(f"PartClustering: niter must be >= 1, got {niter}")
        self.every_n_epochs = every_n_epochs
        self.niter = niter
        self.shared_parts = shared_parts
        self.last_clustered_epoch: int | None = None
        self._kmeans: SphericalKMeans | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"last_clustered_epoch": self.last_clustered_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_clustered_epoch = state_dict["last_clustered_epoch"]

    def _kmeans_for(self, num_parts: int, device: torch.device) -> SphericalKMeans:
        # reused across passes so that the GPU resources are created once
        kmeans = self._kmeans
        if kmeans is None or kmeans.num_clusters != num_parts or kmeans.device != device:
            self._kmeans = SphericalKMeans(num_parts, niter=self.niter, device=device)
        return self._kmeans

    def cluster(
        self,
        module: LightningModule,
        dataset: Dataset,
        pids: Sequence[int],
        *,
        trainer: Trainer | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = False,
    ) -> ClusteringResult:
        """Clusters ``dataset`` and writes the labels into ``module.part_labels``.

        Args:
            module: a :class:`~icg.contracts.LabeledModel`: ``part_labels`` (:class:`~icg.parts.PartLabels`), the
                foreground rule (``fg_signal``, ``fg_threshold``) and ``feature_maps(images)`` giving ``F_g``
                ``[B, C, h, w]`` in the module's current mode; an :class:`icg.ICGModule` with ``use_ppc=True``.
            dataset: ``N`` items, dicts with an ``"image"``; item ``i`` is row ``i``.
            pids: identity of each item.
            trainer: under DDP, shards the identities over its ranks and sums the labels across them.
            batch_size, num_workers: of the pass's DataLoader.
            progress: show a progress bar.

        Returns:
            The labels and counts of all ranks (identical on every rank).
        """
        require(module, LabeledModel, "PartClustering")
        part_labels = module.part_labels
        if len(part_labels) == 0:
            raise ValueError(
                "PartClustering: the module has no part labels (no training images); build it with use_ppc=True"
            )
        if len(part_labels) != len(dataset):
            raise ValueError(
                f"PartClustering: the module has part labels for {len(part_labels)} images but the clustering dataset "
                f"holds {len(dataset)}; set num_train_samples to the datamodule's"
            )
        num_parts = part_labels.num_parts
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        device = module.device
        started = time.perf_counter()
        reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if world_size > 1 else None
        kmeans = self._kmeans_for(num_parts, device)
        options = dict(
            label_size=part_labels.size,
            fg_signal=module.fg_signal,
            fg_threshold=module.fg_threshold,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            rank=rank,
            world_size=world_size,
            progress=progress,
        )
        was_training = module.training
        module.eval()
        try:
            centroids = None
            if self.shared_parts:
                identities = stream_identities(module.feature_maps, dataset, pids, **options)
                num_identities = len(set(int(pid) for pid in pids))
                centroids = shared_part_centroids(
                    identities,
                    num_parts,
                    num_identities=num_identities,
                    height=part_labels.size[0],
                    kmeans=kmeans,
                    reduce=reduce,
                    device=device,
                )
            local = cluster_part_labels(
                module.feature_maps,
                dataset,
                pids,
                num_parts,
                kmeans=kmeans,
                centroids=centroids if centroids is not None and len(centroids) else None,
                **options,
            )
        finally:
            module.train(was_training)

        # each rank holds zeros outside its identities, so the sum over the ranks is the union
        labels = local.labels.to(device, torch.int32)
        labeled = local.labeled.to(device, torch.int32)
        counts = torch.tensor(
            [local.foreground_cells, local.total_cells, local.clustered_identities, local.skipped_identities],
            dtype=torch.int64,
        )
        counts = torch.cat([counts, local.part_cells]).to(device)
        if reduce is not None:
            labels, labeled, counts = reduce(labels), reduce(labeled), reduce(counts)
        part_labels.assign(labels, labeled.bool())
        counts = counts.cpu()
        result = ClusteringResult(
            labels=part_labels.labels,
            labeled=part_labels.labeled,
            foreground_cells=int(counts[0]),
            total_cells=int(counts[1]),
            clustered_identities=int(counts[2]),
            skipped_identities=int(counts[3]),
            part_cells=counts[4:],
            seconds=time.perf_counter() - started,
        )
        if result.skipped_identities and rank == 0:
            log.warning(
                "PartClustering: %d of %d identities have fewer than num_parts=%d foreground cells (or, with "
                "fg_signal='identity', a single image); their images stay unlabeled (the horizontal-band fallback; "
                "with fg_signal='identity', not scored by the pixel losses)",
                result.skipped_identities,
                result.skipped_identities + result.clustered_identities,
                num_parts,
            )
        return result

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs or self.last_clustered_epoch == epoch:
            return
        if not len(getattr(pl_module, "part_labels", ())):
            # a model without parts (BoT, or PPC switched off from a config that keeps this callback)
            if epoch == 0:
                rank_zero_info("PartClustering: the model has no part classifier (use_ppc=False); nothing to do")
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError(
                "PartClustering needs the Trainer's datamodule: pass it as trainer.fit(model, datamodule=...)"
            )
        require(datamodule, ClusteringData, "PartClustering")
        result = self.cluster(
            pl_module,
            datamodule.cluster_dataset(),
            [record.pid for record in datamodule.train_records],
            trainer=trainer,
            batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
        )
        self.last_clustered_epoch = epoch
        metrics = {"cluster/seconds": result.seconds, "cluster/foreground_share": result.foreground_share}
        metrics.update({f"cluster/part_share/{k}": float(s) for k, s in enumerate(result.part_share, start=1)})
        # the shares are identical on every rank already; syncing averages the ranks' seconds (nearly equal, as the
        # label sum waits for the slowest) and is what Lightning expects of epoch-level values under DDP
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
