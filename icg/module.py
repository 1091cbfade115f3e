"""``ICGModule``: the ICG network, its losses and BoT's training recipe as a LightningModule.

Part pseudo-labels live here, in the buffer ``part_labels`` (one ``h x w`` map of uint8 per training image,
0 = background, 1..K = parts top to bottom) with ``labelled`` saying which rows hold clustering results. The
clustering callback (:class:`icg.clustering.PartClustering`) fills them; checkpoints carry them. A training
batch's ``source`` map (see :mod:`icg.data.transforms`) tells, for each cell of the augmented image's feature
map, which cell of the un-augmented image it shows, so that labels computed without augmentation are read at
the right place after flips, crops and erasing. Rows without clustering results yet fall back to horizontal
bands of the current foreground: with K bands over the image height, the coarse prior PCB-style models use.

Optimisation: Adam with BoT's warm-up multi-step schedule, stepped per epoch. BoT trains the center-loss
centres with their own plain SGD (lr 0.5) on the *unweighted* center-loss gradient; here the centres sit in a
last parameter group of the optimiser with learning rate 0, only so that Lightning unscales (fp16), all-reduces
(DDP) and zeroes their gradients, and :meth:`ICGModule.on_before_optimizer_step` applies that SGD step and
clears their gradients before Adam runs. Optimisation stays automatic (one optimiser, so ``global_step``,
``max_steps``, gradient accumulation and clipping keep their usual meaning).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Sequence

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from icg.checkpoints import AtomicCheckpointing, skip_identity_tensors
from icg.clustering import PartClustering
from icg.data.transforms import INVALID_SOURCE
from icg.divergence import DivergenceGuard, check_finite_features
from icg.losses import ICGLoss
from icg.metrics import ReIDMetric, format_rank_table
from icg.model import ICGNet, ICGOutput, foreground_target, to_reid_features
from icg.retrieval import ReIDFeatures

IGNORE_INDEX = -100


def feature_map_size(image_size: Sequence[int], output_stride: int = 16) -> tuple[int, int]:
    """Height and width of the backbone map for an input of ``image_size``: every stride-2 stage of a
    torchvision ResNet (stem conv, max-pool, layer2, layer3[, layer4]) rounds up."""
    height, width = image_size
    for _ in range(int(math.log2(output_stride))):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


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
        num_train_samples: training images, the rows of ``part_labels`` (``datamodule.num_train_samples``);
            needed when ``use_ppc``.
        image_size: (height, width) of the input, which fixes the size of the part-label maps.
        backbone: ``resnet18/34/50/101``.
        pretrained: start from torchvision's ImageNet weights (must be on disk when offline).
        num_parts: K, body parts of the PPC (the paper's best: 6).
        use_afm, use_ppc, use_fsg: the three ICG modules (``use_fsg`` needs ``use_ppc``).
        gcn_layers: GCN layers of the FSG.
        output_stride: 16 (BoT) or 8 (finer part maps; resnet50/101).
        fg_threshold: a cell is foreground when its feature norm is at least this share of the image's largest.
        feat_weight, sep_weight, par_weight: ``alpha_feat``, ``alpha_sep``, ``alpha_par`` of eq. 22.
        center_weight, margin, label_smoothing: BoT's per-branch loss settings.
        lr, weight_decay: Adam's (BoT: 3.5e-4, 5e-4).
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
        pretrained: bool = True,
        num_parts: int = 6,
        use_afm: bool = True,
        use_ppc: bool = True,
        use_fsg: bool = True,
        gcn_layers: int = 2,
        output_stride: int = 16,
        fg_threshold: float = 0.5,
        feat_weight: float = 0.2,
        sep_weight: float = 0.1,
        par_weight: float = 0.1,
        center_weight: float = 5e-4,
        margin: float = 0.3,
        label_smoothing: float = 0.1,
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
        self.save_hyperparameters()
        if use_ppc and num_train_samples < 1:
            raise ValueError(
                "ICGModule: use_ppc=True needs num_train_samples (the number of training images, "
                "datamodule.num_train_samples) to hold one part-label map per image"
            )
        self.net = ICGNet(
            num_classes,
            backbone=backbone,
            pretrained=pretrained,
            num_parts=num_parts,
            use_afm=use_afm,
            use_ppc=use_ppc,
            use_fsg=use_fsg,
            gcn_layers=gcn_layers,
            output_stride=output_stride,
        )
        self.criterion = ICGLoss(
            num_classes,
            self.net.branch_dims,
            feat_weight=feat_weight,
            sep_weight=sep_weight,
            par_weight=par_weight,
            center_weight=center_weight,
            margin=margin,
            label_smoothing=label_smoothing,
        )
        rows = num_train_samples if use_ppc else 0
        self.label_size = feature_map_size(image_size, output_stride)
        self.register_buffer("part_labels", torch.zeros(rows, *self.label_size, dtype=torch.uint8))
        self.register_buffer("labelled", torch.zeros(rows, dtype=torch.bool))
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
        """``F_g`` [B, C, h, w], the map the part clustering groups; runs in the module's current mode."""
        return self.net.feature_map(images.contiguous(memory_format=self.memory_format))

    # ---------------------------------------------------------------------------------------------- training
    def part_targets(self, index: Tensor, source: Tensor, foreground: Tensor) -> Tensor:
        """Part label of every feature cell of an augmented batch, read through its source map.

        Args:
            index: [B] rows of ``part_labels``.
            source: [B, H, W] flat index into the un-augmented image of each input pixel, or -1.
            foreground: [B, h, w] current foreground (0/1), used for rows not clustered yet.

        Returns:
            [B, h, w] long: 0 background, 1..K parts, ``IGNORE_INDEX`` where the cell shows padding or erasing.
        """
        height, width = source.shape[-2:]
        h, w = foreground.shape[-2:]
        if (h, w) != self.label_size:
            raise ValueError(
                f"ICGModule: the feature map is {h}x{w} but part labels are {self.label_size[0]}x"
                f"{self.label_size[1]}; set image_size to the datamodule's ({height}x{width})"
            )
        # the input pixel at the centre of each feature cell stands for the cell
        rows = ((torch.arange(h, device=source.device) + 0.5) * height / h).long()
        cols = ((torch.arange(w, device=source.device) + 0.5) * width / w).long()
        cell_source = source[:, rows[:, None], cols[None, :]]
        valid = cell_source != INVALID_SOURCE
        source_row = cell_source.clamp_min(0) // width
        source_col = cell_source.clamp_min(0) % width
        label_row, label_col = source_row * h // height, source_col * w // width
        clustered = self.part_labels[index[:, None, None], label_row, label_col].long()
        bands = 1 + source_row * self.hparams.num_parts // height
        fallback = torch.where(foreground.bool(), bands, 0)
        labels = torch.where(self.labelled[index][:, None, None], clustered, fallback)
        return labels.masked_fill(~valid, IGNORE_INDEX)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch["image"])
        foreground = None
        if self.net.use_afm or self.net.use_ppc:
            foreground = foreground_target(output.feature_map, self.hparams.fg_threshold)
        part_target = None
        if self.net.use_ppc:
            part_target = self.part_targets(batch["index"], batch["source"], foreground)
        loss, logs = self.criterion(
            output, batch["pid"], foreground if self.net.use_afm else None, part_target
        )
        batch_size = len(batch["pid"])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in logs.items() if k != "total"}, batch_size=batch_size)
        if foreground is not None:
            self.log("train/foreground_share", foreground.float().mean(), batch_size=batch_size)
        return loss

    def configure_callbacks(self) -> list[Callback]:
        # The part labels are part of the method: an ICG model always gets a PartClustering, and every run a
        # divergence guard and atomic checkpoints, unless the Trainer already has one (the user's then wins).
        wanted = [AtomicCheckpointing, DivergenceGuard] + ([PartClustering] if self.net.use_ppc else [])
        return [kind() for kind in wanted if not any(isinstance(c, kind) for c in self.trainer.callbacks)]

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
            for centers in self.criterion.parameters():
                if centers.grad is not None:
                    grad = centers.grad
                    centers.sub_(torch.where(torch.isfinite(grad).all(), grad * step, 0.0))
                    centers.grad = None

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        centers = list(self.criterion.parameters())
        center_ids = {id(p) for p in centers}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in center_ids]
        optimizer = torch.optim.Adam(
            [{"params": params}, {"params": centers, "lr": 0.0, "weight_decay": 0.0}],
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
