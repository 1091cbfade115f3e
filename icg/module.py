"""``ICGModule``: the ICG network, its losses and BoT's training recipe as a LightningModule.

The module is the one place that holds the method's settings: it builds the network (:class:`~icg.model.ICGNet`) and
the loss (:class:`~icg.losses.ICGLoss`) from them. Part pseudo-labels live here, in ``part_labels``
(:class:`icg.parts.PartLabels`): the clustering callback (:class:`icg.parts.PartClustering`) fills them,
checkpoints carry them and the training step reads each batch's targets from them through the batch's source
maps. The foreground target of ``L_sep`` is computed online from the batch's ``F_g`` by the rule the clustering
uses (:mod:`icg.parts.foreground`), or, with ``fg_signal="identity"``, read from the pseudo-labels, which that rule
needs whole identities to compute; cells that show padding or an erased box are ignored by both pixel losses.

Internal signals are logged so that a run shows whether its parts form: ``train/visible_parts`` (parts that
are the arg-max of some cell, mean per image), ``train/part_entropy`` (mean entropy of the part probabilities,
nats), ``train/part_accuracy`` (the classifier against its own labels), ``train/foreground_share`` (of the
target), ``train/foreground_agreement`` (the online foreground target against the pseudo-labels' foreground)
and ``train/adjacency_deviation`` (mean ``|M - 0.5|`` of the FSG adjacency, 0 while it has not moved).
A warning says so when a whole epoch after the first clustering had no visible part.

Optimisation: AdamW with BoT's warm-up multi-step schedule, stepped per epoch. The weight decay is decoupled
from the gradient (Loshchilov & Hutter): with Adam's L2 penalty, a branch whose loss is weighted 0.2 (ICG's
``feat_weight``) or a pixel head weighted 0.1 is effectively decayed 5x or 10x more strongly than BoT's branch at
weight 1, so an ablation would compare regularisations as well as modules. BoT trains the center-loss
centres with their own plain SGD (lr 0.5) on the *unweighted* center-loss gradient; here the centres sit in a
second parameter group of the optimiser with learning rate 0, only so that Lightning unscales (fp16), all-reduces
(DDP) and zeroes their gradients, and :meth:`ICGModule.on_before_optimizer_step` applies that SGD step and
clears their gradients before Adam runs. Optimisation stays automatic (one optimiser, so ``global_step``,
``max_steps``, gradient accumulation and clipping keep their usual meaning).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from icg.checkpoints import AtomicCheckpointing, skip_identity_tensors
from icg.divergence import DivergenceGuard
from icg.features import ReIDFeatures, check_finite_features
from icg.losses import ICGLoss
from icg.metrics import ReIDMetric, format_rank_table
from icg.model import (
    FlexibleStructureGraph,
    ICGNet,
    ICGOutput,
    PartAssignment,
    PixelPartClassifier,
    SpatialAttention,
    build_backbone,
    to_reid_features,
)
from icg.model.backbone import IMAGENET_WEIGHTS
from icg.parts import (
    IGNORE_INDEX,
    FgSignal,
    FgThreshold,
    PartClustering,
    PartLabels,
    cell_sources,
    check_fg_signal,
    check_fg_threshold,
    foreground_target,
)


def warmup_multistep_factor(
    epoch: int, *, warmup_epochs: int, warmup_start: float, milestones: Sequence[int], gamma: float
) -> float:
    """BoT's learning-rate factor: linear from ``warmup_start`` to 1 over ``warmup_epochs``, then x ``gamma`` at
    each milestone."""
    warmup = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warmup = warmup_start * (1 - alpha) + alpha
    return warmup * gamma ** bisect_right(sorted(milestones), epoch)


class ICGModule(LightningModule):
    """Instance-level Consistent Graph (ICG) for person re-ID; with ``use_afm=use_ppc=use_fsg=False``, BoT.

    Args:
        num_classes: training identities (``datamodule.num_classes``).
        num_train_samples: training images, the rows of :attr:`part_labels` (``datamodule.num_train_samples``);
            needed when ``use_ppc``.
        image_size: (height, width) of the input, which fixes the size of the part-label maps.
        backbone: ``resnet18/34/50/101`` or ``mobilenet_v2`` (:data:`icg.model.BACKBONES`).
        weights: backbone weights, torchvision's convention: a weight name (default ``"IMAGENET1K_V1"``, which must
            be on disk when offline; ``"IMAGENET1K_V2"``, ``"DEFAULT"``), a file (a state dict or an icg
            checkpoint, of which only the backbone is taken) or ``None`` (random).
        output_stride: 16 (BoT's last stride 1), 8 (finer part maps; resnet50/101) or 32 (the backbone unchanged).
        num_parts: K, body parts of the PPC (the paper's best: 6).
        use_afm, use_ppc, use_fsg: the three ICG modules (``use_fsg`` needs ``use_ppc``).
        part_assignment: ``"argmax"`` (the paper: a cell's part is its arg-max over background and the K parts) or
            ``"foreground"`` (background against the union of the parts first, eq. 8); it decides which parts are
            visible (:func:`~icg.model.ppc.assign_parts`).
        fg_signal: what the foreground is read from (:mod:`icg.parts.foreground`). ``"activation"`` (the paper,
            eq. 3): the norms of ``F_g``, thresholded online for every batch and in the clustering. ``"identity"``:
            what recurs in an identity's images and not in other people's, decided by the clustering (needs
            ``use_ppc``); ``L_sep``'s target is then the pseudo-labels' foreground, and images without labels are
            not scored. ``docs/DECISIONS.md`` says which to use when.
        fg_threshold: how each image's foreground scores are split, in training and clustering alike: a share of the
            largest (the paper: 0.5) or ``"otsu"`` (chosen per image, :func:`~icg.parts.foreground.otsu_thresholds`).
        feat_weight, sep_weight, par_weight: ``alpha_feat``, ``alpha_sep``, ``alpha_par`` of eq. 22.
        center_weight: BoT's center-loss weight in each branch loss.
        lr, weight_decay: AdamW's; the decay is decoupled (module docstring), ``lr * weight_decay`` per step.
        warmup_epochs, warmup_start: linear warm-up from ``warmup_start * lr`` over ``warmup_epochs``.
        milestones, gamma: the learning rate is multiplied by ``gamma`` at each milestone epoch.
        center_lr: SGD learning rate of the center-loss centres (BoT: 0.5).
        rerank: k-reciprocal re-ranking in validation and test.
        channels_last: keep weights and inputs in channels-last memory format (faster convolutions on
            tensor-core GPUs, and on CPUs with oneDNN); results are the same up to float rounding.
        compile: ``torch.compile`` the network (``nn.Module.compile``: parameter names, and so checkpoints,
            are unchanged). The first steps are slow while it compiles.

    Mixed precision is the Trainer's business (``precision="bf16-mixed"``); everything here runs under it.
    """

    def __init__(
        self,
        num_classes: int,
        num_train_samples: int = 0,
        image_size: tuple[int, int] = (256, 128),
        backbone: str = "resnet50",
        weights: str | None = IMAGENET_WEIGHTS,
        output_stride: int = 16,
        num_parts: int = 6,
        use_afm: bool = True,
        use_ppc: bool = True,
        use_fsg: bool = True,
        part_assignment: PartAssignment = "argmax",
        fg_signal: FgSignal = "activation",
        fg_threshold: FgThreshold = 0.5,
        feat_weight: float = 0.2,
        sep_weight: float = 0.1,
        par_weight: float = 0.1,
        center_weight: float = 5e-4,
        lr: float = 3.5e-4,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 10,
        warmup_start: float = 0.1,
        milestones: tuple[int, ...] = (40, 70),
        gamma: float = 0.1,
        center_lr: float = 0.5,
        rerank: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_fg_threshold(fg_threshold, "ICGModule")
        check_fg_signal(fg_signal, "ICGModule")
        if fg_signal == "identity" and not use_ppc:
            raise ValueError(
                "ICGModule: fg_signal='identity' needs use_ppc=True: the part clustering decides the foreground"
            )
        if use_fsg and not use_ppc:
            raise ValueError("ICGModule: use_fsg=True needs use_ppc=True: the graph's nodes are the PPC part features")
        if use_ppc and num_train_samples < 1:
            raise ValueError(
                "ICGModule: use_ppc=True needs num_train_samples (the number of training images, "
                "datamodule.num_train_samples) to hold one part-label map per image"
            )
        if isinstance(weights, os.PathLike):  # hyperparameters hold plain values, which weights_only loads read
            weights = os.fspath(weights)
        self.save_hyperparameters()
        trunk = build_backbone(backbone, weights=weights, output_stride=output_stride)
        map_size = trunk.output_size(image_size)
        channels = trunk.out_channels
        self.net = ICGNet(
            trunk,
            attention=SpatialAttention() if use_afm else None,
            part_classifier=PixelPartClassifier(channels, num_parts, assignment=part_assignment) if use_ppc else None,
            graph=FlexibleStructureGraph(num_parts, channels) if use_fsg else None,
        )
        self.criterion = ICGLoss(
            num_classes,
            self.net.branch_dims,
            feat_weight=feat_weight,
            sep_weight=sep_weight,
            par_weight=par_weight,
            center_weight=center_weight,
        )
        self.part_labels = PartLabels(num_train_samples if use_ppc else 0, num_parts, map_size)
        self._epoch_visible_parts = torch.zeros(())
        self._visibility_warned = False
        self.val_metric = ReIDMetric(rerank=rerank)
        self.test_metric = ReIDMetric(rerank=rerank)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        if compile:
            self.net.compile()

    # ----------------------------------------------------------------------------------------------- inference
    def forward(self, images: Tensor) -> ICGOutput:
        return self.net(images.contiguous(memory_format=self.memory_format))

    @torch.no_grad()
    def extract(self, images: Tensor) -> ReIDFeatures:
        """After-BN retrieval features (global, foreground, parts [B, K, C], graph) and part visibility [B, K],
        computed in eval mode; compare them with :func:`icg.retrieval.icg_distance`. Raises
        :class:`~icg.divergence.NonFiniteFeaturesError` when the (diverged) weights give NaN or infinite values."""
        features = self.net.extract(images.contiguous(memory_format=self.memory_format))
        check_finite_features(features, "ICGModule.extract")
        return features

    def feature_maps(self, images: Tensor) -> Tensor:
        """``F_g`` [B, C, h, w], the map the part clustering reads (foreground by its norms, parts by its
        directions), as the training step's foreground target does; runs in the module's current mode."""
        return self.net.feature_map(images.contiguous(memory_format=self.memory_format))

    # ---------------------------------------------------------------------------------------------- training
    def pixel_targets(self, output: ICGOutput, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """Targets of ``L_sep`` and ``L_par`` for a training batch (``None`` for a module that is off).

        The part target is read from the pseudo-labels through the source map
        (:meth:`icg.parts.PartLabels.targets`). The foreground target is, with ``fg_signal="activation"``,
        the feature-norm rule (eq. 3) applied to the batch's ``F_g``; with ``"identity"``, the pseudo-labels'
        foreground, and images not clustered are ignored by both losses. Both are ``[B, h, w]`` long with
        ``IGNORE_INDEX`` where a cell shows padding or an erased box.
        """
        if not (self.net.use_afm or self.net.use_ppc):
            return None, None
        if self.fg_signal == "identity":
            zeros = output.feature_map.new_zeros(output.feature_map.shape[:1] + output.feature_map.shape[2:])
            part_target = self.part_labels.targets(batch["index"], batch["source"], zeros.long())
            part_target[~self.part_labels.labeled[batch["index"]]] = IGNORE_INDEX
            fg_target = None
            if self.net.use_afm:
                fg_target = torch.where(part_target == IGNORE_INDEX, IGNORE_INDEX, (part_target > 0).long())
            return fg_target, part_target
        foreground = foreground_target(output.feature_map, self.fg_threshold)
        fg_target = part_target = None
        if self.net.use_afm:
            valid = cell_sources(batch["source"], foreground.shape[-2:])[0]
            fg_target = foreground.masked_fill(~valid, IGNORE_INDEX)
        if self.net.use_ppc:
            part_target = self.part_labels.targets(batch["index"], batch["source"], foreground)
        return fg_target, part_target

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch["image"])
        fg_target, part_target = self.pixel_targets(output, batch)
        loss, logs = self.criterion(output, batch["pid"], fg_target, part_target)
        batch_size = len(batch["pid"])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in logs.items() if k != "total"}, batch_size=batch_size)
        self.log_dict(self._part_signals(output, fg_target, part_target), batch_size=batch_size)
        return loss

    @torch.no_grad()
    def _part_signals(self, output: ICGOutput, fg_target: Tensor | None, part_target: Tensor | None) -> dict:
        signals = {}
        if fg_target is not None:
            scored = fg_target != IGNORE_INDEX
            signals["train/foreground_share"] = (fg_target == 1).sum() / scored.sum().clamp_min(1)
        if output.part_logits is not None:
            visible = output.visibility.float().sum(dim=1)
            self._epoch_visible_parts = self._epoch_visible_parts.to(visible.device) + visible.sum()
            log_prob = output.part_logits.float().log_softmax(dim=1)
            scored = part_target != IGNORE_INDEX
            correct = (output.part_map == part_target) & scored
            signals["train/visible_parts"] = visible.mean()
            signals["train/part_entropy"] = -(log_prob.exp() * log_prob).sum(dim=1).mean()
            signals["train/part_accuracy"] = correct.sum() / scored.sum().clamp_min(1)
            if fg_target is not None:
                # do the pseudo-labels (clustered at epoch start) and the online foreground target agree?
                both = scored & (fg_target != IGNORE_INDEX)
                agree = ((part_target > 0) == (fg_target == 1)) & both
                signals["train/foreground_agreement"] = agree.sum() / both.sum().clamp_min(1)
        if self.net.graph is not None:
            signals["train/adjacency_deviation"] = (self.net.graph.adjacency - 0.5).abs().mean()
        return signals

    def on_train_epoch_start(self) -> None:
        self._epoch_visible_parts = torch.zeros((), device=self.device)

    def on_train_epoch_end(self) -> None:
        if not self.net.use_ppc or self._visibility_warned:
            return
        visible = self.trainer.strategy.reduce(self._epoch_visible_parts, reduce_op="sum")
        if bool(self.part_labels.labeled.any()) and float(visible) == 0.0:
            self._visibility_warned = True
            rank_zero_warn(
                f"ICGModule: no part was visible in any training image of epoch {self.current_epoch} (the part "
                "classifier predicts background in every cell), so the parts and graph branches and the part "
                "terms of the retrieval distance are empty. See train/part_accuracy, train/part_entropy and the "
                "part picture; docs/DECISIONS.md explains the mechanisms."
            )

    def configure_callbacks(self) -> list[Callback]:
        # The part labels are part of the method: an ICG model always gets a PartClustering, and every run a
        # divergence guard and atomic checkpoints, unless the Trainer already has one (the user's then wins).
        wanted = [AtomicCheckpointing, DivergenceGuard] + ([PartClustering] if self.net.use_ppc else [])
        return [kind() for kind in wanted if not any(isinstance(c, kind) for c in self.trainer.callbacks)]

    @property
    def fg_threshold(self) -> FgThreshold:
        """The foreground rule's threshold (eq. 3), shared by the training target and the part clustering."""
        threshold = self.hparams.fg_threshold
        return threshold if threshold == "otsu" else float(threshold)

    @property
    def fg_signal(self) -> FgSignal:
        """What the foreground is read from (``"activation"``, eq. 3, or ``"identity"``)."""
        return self.hparams.fg_signal

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # evaluation and prediction need the network only: a checkpoint trained on other identities (another
        # dataset) is accepted, its identity classifiers, centres and part labels are not loaded
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            skip_identity_tensors(self, checkpoint)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # BoT's centre update: SGD at center_lr on the unweighted center-loss gradient. A non-finite gradient
        # (fp16 overflow, when the scaler skips the whole step) leaves the centres alone, without a host sync.
        step = self.hparams.center_lr / self.criterion.center_loss_scale
        with torch.no_grad():
            for centers in self.criterion.centers:
                if centers.grad is not None:
                    grad = centers.grad
                    centers.sub_(torch.where(torch.isfinite(grad).all(), grad * step, 0.0))
                    centers.grad = None

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        centers = self.criterion.centers
        taken = {id(p) for p in centers}
        trained = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        optimizer = torch.optim.AdamW(
            [{"params": trained}, {"params": centers, "lr": 0.0, "weight_decay": 0.0}],
            lr=hp.lr,
            weight_decay=hp.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda epoch: warmup_multistep_factor(
                epoch,
                warmup_epochs=hp.warmup_epochs,
                warmup_start=hp.warmup_start,
                milestones=hp.milestones,
                gamma=hp.gamma,
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    # -------------------------------------------------------------------------------------------- evaluation
    def _update_metric(self, metric: ReIDMetric, batch: dict[str, Tensor]) -> None:
        features = to_reid_features(self(batch["image"]))
        metric.update(features, batch["pid"], batch["camid"], batch["is_query"], sample_index=batch["index"])

    def _finish_metric(self, metric: ReIDMetric, stage: str) -> None:
        results = metric.compute()
        metric.reset()
        # every rank computed the same values from the gathered state; sync_dist only says so to Lightning
        self.log_dict({f"{stage}/{name}": value for name, value in results.items()}, sync_dist=True)
        if self.trainer is not None and self.trainer.state.fn in ("validate", "test"):
            rank_zero_info(format_rank_table(results, title=f"{stage} ({type(self).__name__})"))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._update_metric(self.val_metric, batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_metric(self.val_metric, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._update_metric(self.test_metric, batch)

    def on_test_epoch_end(self) -> None:
        self._finish_metric(self.test_metric, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Features of a batch with the dataset positions they belong to (see :class:`icg.predict.FeatureWriter`)."""
        return {"index": batch["index"], "features": to_reid_features(self(batch["image"]))}
