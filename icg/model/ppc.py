"""Pixel-wise human parts clustering (PPC), paper section 2.2, eq. 5-8 and 18-19.

A 1x1 convolution on the per-pixel L2-normalised map gives ``K + 1`` logits per cell, multiplied by a fixed scale
(:data:`LOGIT_SCALE`); their softmax is ``P_0 .. P_K`` with ``P_0`` the background. The classifier is trained
against the K-means pseudo-labels (``L_par``, pixel cross-entropy); the clustering lives outside the network.

Why a logit scale: on unit vectors a default-initialised 1x1 convolution gives logits within ``||w_k|| ~ 0.6``
of its bias, and Adam grows ``||w_k||`` by about its learning rate per step. The background, most of the labelled
cells, then wins the arg-max in every cell for thousands of steps: no part is ever visible, so the retrieval
distance (eq. 15) and the graph never see one (``../shared/diagnostics/ppc_sim.py``; ``docs/RESULTS.md`` measures
the scale against its absence). A scale keeps what the normalisation is for, a classification by the direction of
the features, the quantity the K-means labels are computed from: a bright and a dim cell of the same part get the
same label. It is the temperature of a cosine-softmax classifier (NormFace, CosFace).

Part features are *weighted means*, ``f_k = sum_xy P_k(x, y) F_g(x, y) / (sum_xy P_k(x, y) + eps)``, rather
than the plain average of ``F_g * P_k`` over all cells that eq. 7-8 suggest: with the plain average a part
covering few cells (shoes, a head partly cut off) would get a feature proportionally smaller than a large one,
so its norm would encode its area instead of its appearance. The weighted mean is the average feature of the
cells the part covers, whatever their number.

A part is *visible* in an image when it is the arg-max class of at least one cell (appendix A.1.1); only
visible parts enter the retrieval distance and the graph. Option ``assignment="foreground"``
(:func:`assign_parts`): a cell is background only when ``P_0`` beats the union of the parts (eq. 8), and a
foreground cell belongs to its most probable part; where the classifier spreads the person over several parts, the
arg-max gives most person cells to the background.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOGIT_SCALE",
    "PartAssignment",
    "PixelPartClassifier",
    "assign_parts",
    "check_part_assignment",
    "part_visibility",
    "parts_foreground_logits",
    "visible_parts",
    "weighted_mean_pool",
]


PartAssignment = Literal["argmax", "foreground"]
"""How a cell gets its part from ``[P_0 .. P_K]``: ``"argmax"`` over the ``K + 1`` classes, or ``"foreground"``:
first foreground or not by eq. 8 (``1 - P_0 > P_0``), then the most probable part."""


def check_part_assignment(assignment: PartAssignment, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``assignment`` is ``"argmax"`` or ``"foreground"``."""
    if assignment not in ("argmax", "foreground"):
        raise ValueError(f"{owner}: part_assignment must be 'argmax' or 'foreground', got {assignment!r}")


LOGIT_SCALE = 16.0
"""``s``, the logit scale of the pixel classifiers (module docstring)."""


class PixelPartClassifier(nn.Module):
    """Per-cell classifier over background + ``num_parts`` parts, on L2-normalised features (eq. 5-6).

    ``logits = LOGIT_SCALE * (W z + b)`` with ``z = x / ||x||``: normalising each cell makes the classification
    depend on its direction only, and the scale lets the logits reach the confidence that a cross-entropy asks for
    (module docstring).

    Args:
        in_channels: ``C`` of the feature map.
        num_parts: ``K``.
        assignment: how a cell gets its part from the logits, which decides the parts' visibility
            (:func:`assign_parts`): ``"argmax"`` (the paper) or ``"foreground"``.

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, K + 1, h, w]`` logits, channel 0 = background; ``assign``:
        ``[B, K + 1, h, w] -> [B, h, w]`` long.
    """

    def __init__(self, in_channels: int, num_parts: int, *, assignment: PartAssignment = "argmax") -> None:
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        check_part_assignment(assignment, "PixelPartClassifier")
        self.num_parts = num_parts
        self.assignment = assignment
        self.conv = nn.Conv2d(in_channels, num_parts + 1, kernel_size=1)

    def forward(self, feature_map: Tensor) -> Tensor:
        return LOGIT_SCALE * self.conv(F.normalize(feature_map, dim=1))

    def assign(self, part_logits: Tensor) -> Tensor:
        """The part of every cell (0 background) by this classifier's ``assignment``."""
        return assign_parts(part_logits, self.assignment)

    def extra_repr(self) -> str:
        return f"num_parts={self.num_parts}, assignment={self.assignment!r}"


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
