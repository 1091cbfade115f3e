"""Pixel-wise human parts clustering (PPC), paper section 2.2, eq. 5-8 and 18-19.

A 1x1 convolution on the per-pixel L2-normalised map gives ``K + 1`` logits per cell, multiplied by a fixed
``logit_scale``; their softmax is ``P_0 .. P_K`` with ``P_0`` the background. The classifier is trained against
the K-means pseudo-labels (``L_par``, pixel cross-entropy); the clustering lives outside the network.

Why a logit scale: on unit vectors a default-initialised 1x1 convolution gives logits within ``||w_k|| ~ 0.6``
of its bias, and Adam grows ``||w_k||`` by about its learning rate per step. The background, 70-90% of the
labelled cells, then wins the arg-max in every cell for thousands of steps: no part is ever visible, so the
retrieval distance (eq. 15) and the graph never see one. Measured on frozen ResNet-18 cell features with fixed
positional labels (``../shared/diagnostics/ppc_sim.py``): 0.00 of 4 parts visible per image after 200 Adam
steps without a scale, 0.41 after 1,000; 4.00 with ``logit_scale=16`` (or without the normalisation, which makes
the logits depend on the feature norms instead). A scale keeps what the normalisation is for, a classification
by the direction of the features, the quantity the K-means labels are computed from: a bright and a dim cell of
the same part get the same label. It is the temperature of a cosine-softmax classifier (NormFace, CosFace).

Part features are *weighted means*, ``f_k = sum_xy P_k(x, y) F_g(x, y) / (sum_xy P_k(x, y) + eps)``, rather
than the plain average of ``F_g * P_k`` over all cells that eq. 7-8 suggest: with the plain average a part
covering few cells (shoes, a head partly cut off) would get a feature proportionally smaller than a large one,
so its norm would encode its area instead of its appearance. The weighted mean is the average feature of the
cells the part covers, whatever their number.

A part is *visible* in an image when it is the arg-max class of at least one cell (appendix A.1.1); only
visible parts enter the retrieval distance and the graph. Option ``assignment="foreground"``
(:func:`assign_parts`): a cell is background only when ``P_0`` beats the union of the parts (eq. 8), and a
foreground cell belongs to its most probable part. Measured from scratch (128x64, identity foreground): the
classifier put ``P_0`` at 0.42 on person cells and 0.82 on background, but split the rest over six parts, so the
arg-max marked 4% of the cells (0.73 visible parts per test image) where the union marked 34% (2.95).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PartAssignment",
    "PixelPartClassifier",
    "assign_parts",
    "check_part_assignment",
    "part_visibility",
    "parts_foreground_logits",
    "visible_parts",
    "weighted_mean_pool",
]


class PixelPartClassifier(nn.Module):
    """Per-cell classifier over background + ``num_parts`` parts, on L2-normalised features (eq. 5-6).

    ``logits = logit_scale * (W z + b)`` with ``z = x / ||x||`` (:meth:`inputs`): normalising each cell makes the
    classification depend on its direction only, and the scale lets the logits reach the confidence that a
    cross-entropy asks for (see the module docstring for the measurement).

    With ``position=True`` (not in the paper) ``z`` also holds the cell centre's row, in ``(-1, 1)`` from top to
    bottom: a linear term in the height lets the classifier tell apart cells that look alike but sit at different
    heights (dark hair and dark shoes), the ambiguity that mixes the parts of a classifier on appearance alone.
    Not the column: body parts are stacked, and a column term lets the parts split the person left from right.

    Args:
        in_channels: ``C`` of the feature map.
        num_parts: ``K``.
        logit_scale: ``s`` (> 0); 1 is the plain normalised classifier.
        position: append the cell's row coordinate to its unit feature.

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, K + 1, h, w]`` logits, channel 0 = background.
    """

    def __init__(self, in_channels: int, num_parts: int, *, logit_scale: float = 16.0, position: bool = False) -> None:
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.num_parts = num_parts
        self.logit_scale = logit_scale
        self.position = position
        self.conv = nn.Conv2d(in_channels + position, num_parts + 1, kernel_size=1)

    def inputs(self, feature_map: Tensor) -> Tensor:
        """What the 1x1 convolution reads: ``[B, C, h, w] -> [B, D, h, w]``, the unit features (``D = C``), and
        with ``position`` then the cell centres' row coordinate (``D = C + 1``)."""
        unit = F.normalize(feature_map, dim=1)
        if not self.position:
            return unit
        batch, _, height, width = feature_map.shape
        rows = (torch.arange(height, device=unit.device, dtype=unit.dtype) + 0.5) * (2 / height) - 1
        return torch.cat([unit, rows[:, None].expand(batch, 1, height, width)], dim=1)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.logit_scale * self.conv(self.inputs(feature_map))

    @torch.no_grad()
    def fit_least_squares(self, gram: Tensor, moments: Tensor, *, ridge: float = 1e-2) -> None:
        """Sets the weights to the ridge regression of the one-hot labels on the classifier's inputs.

        With ``z = [inputs, 1]`` (:meth:`inputs`) for every labelled cell, the weights ``[W | b]`` solve
        ``(sum z z^T + ridge * mean(diag) * I) [W | b]^T = sum z onehot(label)^T``: the classifier predicts the
        labels as well as a converged linear fit, at once (see :class:`icg.clustering.PartClustering`,
        ``refit_classifier``). The scores are near 1 for the label and 0 elsewhere, so with the logit scale the
        softmax is confident where the fit is.

        Args:
            gram: ``[D + 1, D + 1]``, ``sum z z^T`` (``D``: the channels of :meth:`inputs`).
            moments: ``[D + 1, K + 1]``, ``sum z onehot(label)^T`` (column 0 = background).
            ridge: regularisation relative to the mean diagonal of ``gram`` (> 0).
        """
        gram, moments = self._checked_sums("fit_least_squares", gram, moments, ridge)
        channels = self.conv.in_channels
        solution = torch.linalg.solve(self._ridged(gram, ridge), moments)
        self.conv.weight.copy_(solution[:channels].T.reshape_as(self.conv.weight))
        self.conv.bias.copy_(solution[channels])

    @torch.no_grad()
    def fit_discriminant(self, gram: Tensor, moments: Tensor, *, ridge: float = 1e-2) -> None:
        """Sets the weights to the linear discriminant (LDA) of the labels, from the same sums as
        :meth:`fit_least_squares`.

        Each class ``k`` is modelled as a Gaussian over the classifier's inputs with its own mean ``mu_k`` and the
        covariance ``Sigma`` shared by all classes (the within-class scatter over the cells, plus ``ridge`` times its
        mean diagonal), and the logits are the log-posteriors up to a constant:
        ``logit_k = z^T Sigma^-1 mu_k - mu_k^T Sigma^-1 mu_k / 2 + log(n_k / n)``. Unlike a least-squares fit of the
        one-hot labels, whose scores for classes ordered along one input (parts stacked by height) mask the middle
        ones, every class gets its own region. A class without cells is given the mean of all the cells and the prior
        of half a cell: a Gaussian like the others, so that its logit compares with theirs, and one that wins almost
        nowhere.

        Args:
            gram: ``[D + 1, D + 1]``, ``sum z z^T`` over all labelled cells, ``z = [inputs, 1]``.
            moments: ``[D + 1, K + 1]``, ``sum z onehot(label)^T`` (column 0 = background; the last row counts).
            ridge: shrinkage of the covariance, relative to its mean diagonal (> 0).
        """
        gram, moments = self._checked_sums("fit_discriminant", gram, moments, ridge)
        channels = self.conv.in_channels
        counts = moments[channels]
        present = counts > 0
        means = moments[:channels] / counts.clamp_min(1)
        means[:, ~present] = (moments[:channels].sum(dim=1) / counts.sum().clamp_min(1))[:, None]
        scatter = gram[:channels, :channels] - (means[:, present] * counts[present]) @ means[:, present].T
        covariance = scatter / (counts.sum() - int(present.sum())).clamp_min(1)
        solution = torch.linalg.solve(self._ridged(covariance, ridge), means)
        bias = -0.5 * (means * solution).sum(dim=0) + torch.log(counts.clamp_min(0.5) / counts.sum())
        # the logits above are log-posteriors; the forward pass multiplies by the scale, so it is divided out here
        self.conv.weight.copy_((solution.T / self.logit_scale).reshape_as(self.conv.weight))
        self.conv.bias.copy_(bias / self.logit_scale)

    def _checked_sums(self, caller: str, gram: Tensor, moments: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
        channels = self.conv.in_channels
        if gram.shape != (channels + 1, channels + 1) or moments.shape != (channels + 1, self.num_parts + 1):
            raise ValueError(
                f"{caller}: expected gram [{channels + 1}, {channels + 1}] and moments "
                f"[{channels + 1}, {self.num_parts + 1}], got {tuple(gram.shape)} and {tuple(moments.shape)}"
            )
        if not ridge > 0:
            raise ValueError(f"{caller}: ridge must be > 0, got {ridge}")
        return gram.double(), moments.double()

    @staticmethod
    def _ridged(matrix: Tensor, ridge: float) -> Tensor:
        penalty = ridge * matrix.diagonal().mean().clamp_min(torch.finfo(matrix.dtype).tiny)
        return matrix + penalty * torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)


def parts_foreground_logits(part_logits: Tensor) -> Tensor:
    """Two-way background / foreground logits of the union of the parts (eq. 8).

    ``[l_0, logsumexp(l_1 .. l_K)]``: their softmax is exactly ``[P_0, P_1 + ... + P_K] = [P_0, 1 - P_0]``, so
    a cross-entropy on them (``L_sep``) trains the part classifier's background-vs-person split.

    Shapes:
        ``[B, K + 1, h, w] -> [B, 2, h, w]``.
    """
    if part_logits.dim() != 4 or part_logits.shape[1] < 2:
        raise ValueError(f"part_logits must be [B, K + 1, h, w] with K >= 1, got shape {tuple(part_logits.shape)}")
    return torch.stack([part_logits[:, 0], part_logits[:, 1:].logsumexp(dim=1)], dim=1)


def weighted_mean_pool(feature_map: Tensor, weights: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Average of the feature map under each of several non-negative weight maps.

    ``out[b, k] = sum_xy weights[b, k, x, y] * feature_map[b, :, x, y] / (sum_xy weights[b, k, x, y] + eps)``.
    ``eps`` makes a weight map that is zero everywhere give a zero feature rather than NaN.

    Args:
        feature_map: ``[B, C, h, w]``.
        weights: ``[B, K, h, w]``, e.g. ``P_1 .. P_K`` or ``P_f[:, None]``.

    Returns:
        ``[B, K, C]``.
    """
    if feature_map.dim() != 4 or weights.dim() != 4:
        raise ValueError(
            f"feature_map and weights must be 4-d, got shapes {tuple(feature_map.shape)} and {tuple(weights.shape)}"
        )
    if weights.shape[0] != feature_map.shape[0] or weights.shape[2:] != feature_map.shape[2:]:
        raise ValueError(
            f"weights {tuple(weights.shape)} must match feature_map {tuple(feature_map.shape)} in batch and "
            f"spatial size"
        )
    weighted_sum = torch.einsum("bkhw,bchw->bkc", weights.to(feature_map.dtype), feature_map)
    # The normaliser is summed in float32 at least: under bf16 autocast a sum of 128+ probabilities loses digits.
    precise = torch.promote_types(weights.dtype, torch.float32)
    mass = weights.to(precise).sum(dim=(2, 3)) + eps
    return (weighted_sum.to(precise) / mass[:, :, None]).to(weighted_sum.dtype)


PartAssignment = Literal["argmax", "foreground"]
"""How a cell gets its part from ``[P_0 .. P_K]``: ``"argmax"`` over the ``K + 1`` classes, or ``"foreground"``:
first foreground or not by eq. 8 (``1 - P_0 > P_0``), then the most probable part."""


def check_part_assignment(assignment: PartAssignment, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``assignment`` is ``"argmax"`` or ``"foreground"``."""
    if assignment not in ("argmax", "foreground"):
        raise ValueError(f"{owner}: part_assignment must be 'argmax' or 'foreground', got {assignment!r}")


def assign_parts(part_logits: Tensor, assignment: PartAssignment = "argmax") -> Tensor:
    """The part of every cell: 0 background, ``1..K`` a part.

    With ``"argmax"`` a cell whose person probability ``1 - P_0`` is spread over several parts goes to the
    background as soon as ``P_0`` beats each part alone, although it beats their union; ``"foreground"`` decides
    background against the union of the parts (eq. 8, the foreground of eq. 9) and only then which part.

    Args:
        part_logits: ``[B, K + 1, h, w]``, channel 0 = background.
        assignment: ``"argmax"`` or ``"foreground"``.

    Returns:
        ``LongTensor [B, h, w]``.
    """
    if part_logits.dim() != 4 or part_logits.shape[1] < 2:
        raise ValueError(f"part_logits must be [B, K + 1, h, w] with K >= 1, got shape {tuple(part_logits.shape)}")
    check_part_assignment(assignment, "assign_parts")
    if assignment == "argmax":
        return part_logits.argmax(dim=1)
    background = part_logits[:, 0] >= part_logits[:, 1:].logsumexp(dim=1)
    return torch.where(background, 0, part_logits[:, 1:].argmax(dim=1) + 1)


def visible_parts(part_map: Tensor, num_parts: int) -> Tensor:
    """Which of parts ``1..K`` a part map assigns to at least one cell: ``[B, h, w] -> BoolTensor [B, K]``."""
    parts = torch.arange(1, num_parts + 1, device=part_map.device)
    # a comparison with every part rather than a scatter of the winners: the same result, and one that the ONNX
    # exporter and the TorchScript tracer both translate (the tracer has no scatter_ with a bool value)
    return (part_map.flatten(1)[:, None, :] == parts[None, :, None]).any(dim=2)


def part_visibility(part_logits: Tensor, assignment: PartAssignment = "argmax") -> Tensor:
    """Which parts are assigned to at least one cell (:func:`assign_parts`).

    Args:
        part_logits: ``[B, K + 1, h, w]``, channel 0 = background.
        assignment: ``"argmax"`` or ``"foreground"``.

    Returns:
        ``BoolTensor [B, K]``; column ``k`` is part ``k + 1``.
    """
    return visible_parts(assign_parts(part_logits, assignment), part_logits.shape[1] - 1)
