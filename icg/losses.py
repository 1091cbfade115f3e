"""Losses of ICG (appendix A.1.2, eq. 17 and 19-22) and its baseline BoT (Luo et al. 2019).

Per branch ``b`` (global, foreground, parts, graph): ``L_b = CE_ls(logits) + triplet(f) + center_weight *
center(f)`` with ``f`` the feature before BN, ``logits`` a bias-free linear identity classifier of the after-BN
feature (BoT's BNNeck; it lives here, with everything else tied to the training identities), ``CE_ls`` the
cross-entropy with label smoothing 0.1 (``torch.nn.CrossEntropyLoss(label_smoothing=...)``, BoT's smoothed
cross-entropy) and the batch-hard triplet loss with BoT's margin 0.3. The total is

    ``L = feat_weight * sum_b L_b + sep_weight * L_sep + par_weight * L_par``

with ``L_sep`` / ``L_par`` the mean pixel cross-entropy of the foreground / part classifiers (eq. 17, 19).

BoT mode: when the network has only the global branch (AFM, PPC and FSG all off), the loss is BoT's,
``CE_ls + triplet + center_weight * center`` with weight 1: ``feat_weight`` balances the four ICG branches
against the pixel losses (eq. 22) and has nothing to balance in the baseline, which every ablation is compared
against.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.model.network import ICGOutput
from icg.parts.labels import IGNORE_INDEX

__all__ = ["LABEL_SMOOTHING", "MARGIN", "CenterLoss", "ICGLoss", "TripletLoss", "pixel_cross_entropy"]

MARGIN = 0.3
"""BoT's triplet margin."""
LABEL_SMOOTHING = 0.1
"""BoT's label smoothing of the identity cross-entropy."""


def _check_targets(features: Tensor, targets: Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"features must be [B, D], got shape {tuple(features.shape)}")
    if targets.shape != features.shape[:1]:
        raise ValueError(f"targets must be [B] = [{features.shape[0]}], got shape {tuple(targets.shape)}")


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    For each anchor, the farthest sample of the same identity and the closest of another identity:
    ``mean_a relu(d(a, p_hard) - d(a, n_hard) + margin)``. Anchors without another sample of their identity, or
    without any sample of another identity, form no triplet and are left out of the mean (a PK sampler never
    produces them, but an odd last batch might); with no valid anchor at all the loss is 0.

    Distances are computed in float32, also under autocast: ``||a||^2 + ||b||^2 - 2 a.b`` in bf16 loses the
    small differences between hard pairs.

    Args:
        margin: the ranking margin (BoT: 0.3).

    Shapes:
        ``forward``: features ``[B, D]``, targets ``[B]`` -> scalar.
    """

    def __init__(self, margin: float = MARGIN) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        _check_targets(features, targets)
        x = features.float()
        squared = x.pow(2).sum(dim=1)
        with torch.autocast(x.device.type, enabled=False):  # autocast would run the product in bf16 again
            gram = x @ x.T
        # clamp before sqrt: rounding can make d^2 slightly negative, and sqrt'(0) is infinite.
        dist = (squared[:, None] + squared[None, :] - 2.0 * gram).clamp_min(1e-12).sqrt()
        same = targets[:, None] == targets[None, :]
        not_self = ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
        positive = same & not_self
        negative = ~same
        has_positive = positive.any(dim=1)
        has_negative = negative.any(dim=1)
        # An anchor without positive (negative) gets 0 instead of an infinite hardest distance, and is then
        # masked out; torch.where rather than boolean indexing keeps the step free of host-device syncs.
        hardest_positive = torch.where(has_positive, dist.masked_fill(~positive, float("-inf")).amax(dim=1), 0.0)
        hardest_negative = torch.where(has_negative, dist.masked_fill(~negative, float("inf")).amin(dim=1), 0.0)
        valid = has_positive & has_negative
        per_anchor = torch.where(valid, F.relu(hardest_positive - hardest_negative + self.margin), 0.0)
        return per_anchor.sum() / valid.sum().clamp_min(1)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016) as in BoT: ``mean_i ||x_i - c_{y_i}||^2`` with learnable centres.

    The centres are this module's only parameter; BoT updates them with their own SGD (lr 0.5) and undoes the
    loss weight on their gradient, which is the training loop's business, not this module's.

    Args:
        num_classes: number of identities.
        feat_dim: ``D``.

    Shapes:
        ``forward``: features ``[B, D]``, targets ``[B]`` (ints in ``[0, num_classes)``) -> scalar.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        _check_targets(features, targets)
        if features.shape[1] != self.feat_dim:
            raise ValueError(f"features must have {self.feat_dim} columns, got shape {tuple(features.shape)}")
        if len(targets) and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(
                f"targets must lie in [0, {self.num_classes}), got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        return (features.float() - self.centers[targets].float()).pow(2).sum(dim=1).mean()


def pixel_cross_entropy(logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the labelled cells of a map (``L_sep``, ``L_par``).

    Cells labelled ``ignore_index`` (padding, erased pixels, no pseudo-label yet) are left out; a map without a
    single labelled cell gives 0 rather than the NaN of an empty mean.

    Args:
        logits: ``[B, classes, h, w]``.
        target: ``[B, h, w]`` long, values in ``[0, classes)`` or ``ignore_index``.
    """
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"target must be [B, h, w] = {[logits.shape[0], *logits.shape[2:]]} for logits "
            f"{tuple(logits.shape)}, got shape {tuple(target.shape)}"
        )
    # Sum over the labelled cells divided by their count (at least 1): the same as the "mean" reduction, but an
    # all-ignored map gives 0 without a data-dependent branch.
    summed = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return summed / (target != ignore_index).sum().clamp_min(1)


class ICGLoss(nn.Module):
    """The composed ICG objective (eq. 22), or BoT's loss when only the global branch is active.

    Holds what is tied to the training identities: one identity classifier (bias-free, BoT's ``N(0, 0.001^2)``
    initialisation) and one :class:`CenterLoss` per branch. The weights have no defaults here: the model's recipe
    (:class:`icg.ICGModule`) sets them.

    Args:
        num_classes: number of training identities.
        branch_dims: feature size (before BN) of each active branch, e.g. ``ICGNet.branch_dims``.
        feat_weight: ``alpha_feat``, weight of the sum of branch losses (1 in BoT mode, see the module doc).
        sep_weight: ``alpha_sep``, weight of the foreground pixel loss.
        par_weight: ``alpha_par``, weight of the part pixel loss.
        center_weight: weight of the center loss inside each branch loss.

    ``forward(output, pids, fg_target=None, part_target=None)`` returns the total loss and a dict of detached
    components for logging: ``"<branch>/ce"``, ``"<branch>/triplet"``, ``"<branch>/center"``,
    ``"<branch>/total"``, ``"sep"``, ``"par"``, ``"total"``. A missing pixel target (``None``) skips that pixel
    loss (e.g. before the first clustering), it is then logged as 0.
    """

    def __init__(
        self,
        num_classes: int,
        branch_dims: Mapping[str, int],
        *,
        feat_weight: float,
        sep_weight: float,
        par_weight: float,
        center_weight: float,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if "global" not in branch_dims:
            raise ValueError(f"branch_dims must contain 'global', got {list(branch_dims)}")
        self.branch_names = list(branch_dims)
        self.bot_mode = self.branch_names == ["global"]
        self.feat_weight = 1.0 if self.bot_mode else feat_weight
        self.sep_weight = sep_weight
        self.par_weight = par_weight
        self.center_weight = center_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
        self.triplet = TripletLoss()
        self.classifiers = nn.ModuleDict(
            {name: nn.Linear(dim, num_classes, bias=False) for name, dim in branch_dims.items()}
        )
        for classifier in self.classifiers.values():
            nn.init.normal_(classifier.weight, std=0.001)
        self.center = nn.ModuleDict({name: CenterLoss(num_classes, dim) for name, dim in branch_dims.items()})

    @property
    def centers(self) -> list[nn.Parameter]:
        """The center-loss centres, which take BoT's own SGD step (:meth:`icg.ICGModule.on_before_optimizer_step`)."""
        return [loss.centers for loss in self.center.values()]

    @property
    def center_loss_scale(self) -> float:
        """Factor multiplying each center loss in the total: divide the centres' gradients by it before their
        own SGD step, as BoT does, so that the centres move at lr 0.5 whatever the weights."""
        return self.feat_weight * self.center_weight

    def forward(
        self,
        output: ICGOutput,
        pids: Tensor,
        fg_target: Tensor | None = None,
        part_target: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if list(output.branches) != self.branch_names:
            raise ValueError(
                f"output has branches {list(output.branches)} but this loss was built for {self.branch_names}"
            )
        logs: dict[str, Tensor] = {}
        feat_loss = output.feature_map.new_zeros((), dtype=torch.float32)
        for name, branch in output.branches.items():
            ce = self.cross_entropy(self.classifiers[name](branch.bn_features).float(), pids)
            triplet = self.triplet(branch.features, pids)
            center = self.center[name](branch.features, pids)
            branch_loss = ce + triplet + self.center_weight * center
            feat_loss = feat_loss + branch_loss
            logs.update({f"{name}/ce": ce, f"{name}/triplet": triplet, f"{name}/center": center})
            logs[f"{name}/total"] = branch_loss
        total = self.feat_weight * feat_loss

        sep = self._pixel_loss(output.fg_logits, fg_target, "fg_target", "fg_logits (use_afm)")
        par = self._pixel_loss(output.part_logits, part_target, "part_target", "part_logits (use_ppc)")
        if sep is not None:
            total = total + self.sep_weight * sep
        if par is not None:
            total = total + self.par_weight * par
        zero = total.new_zeros(())
        logs["sep"] = zero if sep is None else sep
        logs["par"] = zero if par is None else par
        logs["total"] = total
        return total, {key: value.detach() for key, value in logs.items()}

    @staticmethod
    def _pixel_loss(logits: Tensor | None, target: Tensor | None, target_name: str, logits_name: str) -> Tensor | None:
        if target is None:
            return None
        if logits is None:
            raise ValueError(f"{target_name} was given but the output has no {logits_name}")
        return pixel_cross_entropy(logits, target)
