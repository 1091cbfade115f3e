"""Attention-based foreground mask (AFM), paper section 2.1, eq. 1-4 and 16-17.

The backbone map ``F_theta`` is reweighted by a learned spatial attention map, ``F_g = F_theta * S_A`` (eq. 2).
Every cell gets a foreground target from its activation after the attention (eq. 3): ``||F_g(x, y)||_2``
divided by the image's largest, thresholded (0.5 in the paper). A foreground probability ``P_f`` is trained
against it (``L_sep``) and gives the foreground map ``F_f = F_g * P_f`` (eq. 4); ``P_f`` comes from the parts
(eq. 8, see :mod:`icg.model.network`) or from :class:`ForegroundHead` (eq. 16).

What may shape the target. A target read from the network's own activations can fulfil itself: if ``L_sep``
can lower the norm of the cells it calls background, they stay background whatever they show. With the head of
eq. 16 on the raw ``F_g``, ``L_sep``'s gradient reached ``S_A`` and did exactly that: with a zero-padded 7x7
kernel on an 8x4 map the attention learned pure position (``../shared/diagnostics/afm_sim.py``, ``L_sep`` alone
on a frozen trunk: the share of the target lying on the person fell from 0.78 to 0.00 within 50 steps, ``S_A``
ended as a pattern of columns; the ablation's foreground precision was 12% against a chance level of 28%). Here
both pixel classifiers read the L2-normalised ``F_g``: the gradient of a function of ``x / ||x||`` is
orthogonal to ``x``, so ``L_sep`` and ``L_par`` give ``S_A`` exactly zero gradient and cannot change a cell's
norm (to first order). The target is then shaped by the identity losses alone, through the attention and the
backbone, which is the paper's premise: the attention learns to weight the cells that identify the person.

Why not the map before the attention, ``F_theta``: measured on synthetic pedestrians, a BoT ResNet-18's cell
norms are *lower* on the person than on the background (their AUC as a person detector: 0.13 after 8 epochs,
higher at the image borders, an effect of zero padding), so without an attention there is nothing to threshold.
``benchmarks/foreground_rule.py`` measures the rule for a given backbone.

Which threshold. The paper's is a fixed share, 0.5 of the image's largest activation. It reads the *level* of the
norms, and fine-tuning moves that level: from a stand-in for ImageNet weights whose norms single out the person
(``benchmarks/pretrain_synthetic.py``; at 0.5, 22% of the cells, 82% of them on the person), ICG's training
flattened the norms until 0.5 marked 84% of the cells, at 29% precision (chance 26%), while the norms still ranked
person above background (AUC 0.73; development population, 256x128). ``threshold="otsu"`` splits each image's
relative norms where the between-group variance is largest (Otsu 1979): it follows the contrast, whatever the
level; on the same population it kept the pseudo-foreground at 26% of the cells (58% precision) and the predicted
one at 78% precision. From scratch it is worse: see ``docs/DECISIONS.md`` and ``benchmarks/RESULTS-256x128.md``.

Another signal, for training from scratch. A network trained from random weights on synthetic pedestrians has
*larger* norms on the background (AUC 0.1-0.3 as a person detector), so no threshold of eq. 3 finds the person.
:func:`identity_contrast` reads the cells' directions instead: the person is what an identity's images share and
other people's images do not. It needs several images and other identities, so the part clustering computes it
(``fg_signal="identity"``) and the training step takes ``L_sep``'s target from the pseudo-labels.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.model.ppc import PixelPartClassifier

__all__ = [
    "FgSignal",
    "FgThreshold",
    "ForegroundHead",
    "SpatialAttention",
    "check_fg_signal",
    "check_fg_threshold",
    "foreground_target",
    "identity_contrast",
    "otsu_thresholds",
    "relative_activation",
    "split_foreground",
]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al. 2018) that redistributes weight between cells: mean 1 per image.

    The channel-wise mean and max of the map are stacked to ``[B, 2, h, w]``, a ``k x k`` convolution (CBAM: 7x7,
    no bias) and a sigmoid turn them into weights, and the weights are divided by their mean over the image. The
    convolution starts at zero: ``S_A = 1`` everywhere until training moves it.

    Why the mean is fixed: with a free overall scale the attention collapses. BNNeck makes the identity
    cross-entropy blind to the feature scale, while the triplet and center losses on the features before BN
    shrink with it, so the easiest descent is ``S_A -> 0`` everywhere. Measured on synthetic pedestrians (ICG
    from scratch, 4 epochs): the convolution's weights turned negative, ``S_A`` was below 0.05 in every cell but
    the top-left ones (0.2-0.3), and the foreground rule of eq. 3, read from ``||F_g||``, marked those corners:
    the picture of parts on background corners. With the mean fixed, the attention can only make some cells
    count more than others, which is what it is for; eq. 3 divides by the image's largest activation, so it is
    unchanged by the normalisation.

    Args:
        kernel_size: odd size of the convolution; padding keeps ``h x w``.

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, 1, h, w]``; multiply it into the map yourself (``F_g = x * S_A``).
    """

    def __init__(self, *, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        # Starts neutral (S_A = 1 everywhere, F_g = F_theta): a random start would rescale the cells of a pretrained
        # backbone at random before the first clustering reads them.
        nn.init.zeros_(self.conv.weight)

    def forward(self, feature_map: Tensor) -> Tensor:
        pooled = torch.cat([feature_map.mean(dim=1, keepdim=True), feature_map.amax(dim=1, keepdim=True)], dim=1)
        # sigmoid(z) / mean(sigmoid(z)), in log space: a saturated sigmoid (0 in every cell) still gives weights
        log_weights = F.logsigmoid(self.conv(pooled)).flatten(2)
        cells = log_weights.shape[-1]
        log_mean = torch.logsumexp(log_weights, dim=-1, keepdim=True) - math.log(cells)
        return (log_weights - log_mean).exp().view_as(pooled[:, :1])


class ForegroundHead(PixelPartClassifier):
    """Classifies each cell of ``F_g`` as background (channel 0) or foreground (channel 1), eq. 16.

    The part classifier with a single part: a 1x1 convolution of the L2-normalised cells, times a logit scale.
    Normalised, so that ``L_sep`` cannot change a cell's norm, which its own target is read from (module
    docstring); scaled, so that its logits can become confident (see :mod:`icg.model.ppc`).

    Args:
        in_channels: ``C`` of the feature map.
        logit_scale: ``s`` (> 0).

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, 2, h, w]`` logits; ``P_f = logits.softmax(1)[:, 1]``.
    """

    def __init__(self, in_channels: int, *, logit_scale: float = 16.0) -> None:
        super().__init__(in_channels, 1, logit_scale=logit_scale)


FgThreshold = float | str
"""A foreground rule: a share of the image's largest activation in ``[0, 1]`` (eq. 3), or ``"otsu"``."""


def check_fg_threshold(threshold: FgThreshold, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``threshold`` is a valid foreground rule."""
    if threshold == "otsu" or (
        isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0.0 <= threshold <= 1.0
    ):
        return
    raise ValueError(f"{owner}: fg_threshold must be in [0, 1] or 'otsu', got {threshold!r}")


FgSignal = Literal["activation", "identity"]
"""What a cell's foreground score is: its activation (eq. 3) or its identity contrast (:func:`identity_contrast`)."""


def check_fg_signal(signal: FgSignal, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``signal`` is ``"activation"`` or ``"identity"``."""
    if signal not in ("activation", "identity"):
        raise ValueError(f"{owner}: fg_signal must be 'activation' or 'identity', got {signal!r}")


def relative_activation(feature_map: Tensor) -> Tensor:
    """The activation of eq. 3: per image, ``||F(x, y)||_2`` divided by its maximum over the image.

    Args:
        feature_map: ``[B, C, h, w]`` (not detached here: detach it for a target).

    Returns:
        float32 ``[B, h, w]`` in ``[0, 1]``; an all-zero image gives zeros.
    """
    activation = torch.linalg.vector_norm(feature_map.float(), dim=1)
    peak = activation.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return activation / peak[:, None, None]


def otsu_thresholds(values: Tensor) -> Tensor:
    """Per row, the value that splits the row into two groups of largest between-group variance (Otsu 1979).

    Args:
        values: ``[B, n]``, ``n >= 2``.

    Returns:
        ``[B]``: the smallest value of the upper group (``values >= threshold`` is that group).
    """
    ordered = values.sort(dim=1).values
    n = ordered.shape[1]
    below = torch.arange(1, n, device=values.device, dtype=ordered.dtype)  # size of the lower group
    cumulative = ordered.cumsum(dim=1)
    lower_mean = cumulative[:, :-1] / below
    upper_mean = (cumulative[:, -1:] - cumulative[:, :-1]) / (n - below)
    between = below * (n - below) * (upper_mean - lower_mean) ** 2
    return ordered.gather(1, between.argmax(dim=1, keepdim=True) + 1)[:, 0]


def split_foreground(relative: Tensor, threshold: FgThreshold = 0.5) -> Tensor:
    """Foreground (1) and background (0) of every cell from a per-image score in ``[0, 1]``: the cells at or above
    ``threshold``, or with ``threshold="otsu"`` the upper group of Otsu's split of the image's scores.

    Args:
        relative: ``[B, h, w]`` scores, each image's largest 1 (:func:`relative_activation`,
            :func:`identity_contrast` rescaled).
        threshold: in ``[0, 1]``, or ``"otsu"``.

    Returns:
        ``LongTensor [B, h, w]`` of 0 / 1. An image of equal scores is all foreground (all background for a fixed
        threshold above its scores).
    """
    check_fg_threshold(threshold, "split_foreground")
    if threshold == "otsu":
        if relative[0].numel() < 2:
            return torch.ones_like(relative, dtype=torch.long)
        return (relative >= otsu_thresholds(relative.flatten(1))[:, None, None]).long()
    return (relative >= threshold).long()


def foreground_target(feature_map: Tensor, threshold: FgThreshold = 0.5) -> Tensor:
    """Foreground pseudo-label of every cell from its activation (eq. 3).

    Per image, the activation ``||F(x, y)||_2`` is divided by its maximum over the image; cells at or above
    ``threshold`` are foreground (1), the others background (0). With ``threshold="otsu"`` the threshold is
    chosen per image as Otsu's, the split of the relative activations into two groups of largest between-group
    variance, so that the rule follows the contrast between person and background and not the activations'
    overall level (see the module docstring). The map is detached: the target must not pull the features
    towards itself. An all-zero image is all background (for ``threshold > 0``; Otsu: all foreground).

    Args:
        feature_map: ``F_g``, ``[B, C, h, w]`` (the map after the attention; see the module docstring).
        threshold: in ``[0, 1]``, or ``"otsu"``.

    Returns:
        ``LongTensor [B, h, w]`` of 0 / 1.
    """
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must be [B, C, h, w], got shape {tuple(feature_map.shape)}")
    check_fg_threshold(threshold, "foreground_target")
    return split_foreground(relative_activation(feature_map.detach()), threshold)


def identity_contrast(cells: Tensor, references: Tensor, *, chunk: int = 4096) -> Tensor:
    """How much more each cell recurs in its identity's other images than in other people's images.

    For a cell of image ``i``: the mean, over the identity's other images, of its best cosine similarity to a
    cell of that image, minus the same mean over the reference images (other identities). The person is what
    the images of one identity share and other identities do not; a backdrop, seen by one camera, recurs in
    other people's images too, and cells at the image border look alike everywhere. It asks nothing of the
    features' norms, which a network trained from scratch makes larger on the background (module docstring).

    Args:
        cells: ``[n, m, C]`` unit cell features of the ``n >= 2`` images of one identity, ``m = h * w`` cells each.
        references: ``[r, m, C]`` unit cell features of ``r >= 1`` images of other identities.
        chunk: rows of the similarity matrices computed at once (bounds memory).

    Returns:
        ``[n, m]`` float32 scores in ``[-2, 2]``.
    """
    n, m, dim = cells.shape
    if n < 2 or len(references) < 1 or references.shape[1:] != (m, dim):
        raise ValueError(
            f"identity_contrast: needs [n >= 2, m, C] cells and [r >= 1, m, C] references, got "
            f"{tuple(cells.shape)} and {tuple(references.shape)}"
        )
    flat, reference_flat = cells.reshape(n * m, dim).float(), references.reshape(-1, dim).float()
    image = torch.arange(n, device=cells.device).repeat_interleave(m)
    scores = []
    for start in range(0, n * m, chunk):
        rows = flat[start : start + chunk]
        best_own = (rows @ flat.T).view(len(rows), n, m).amax(dim=2)  # [rows, n]: best match in each image
        own_image = image[start : start + chunk, None]
        best_own = best_own.masked_fill(own_image == torch.arange(n, device=cells.device), 0.0)
        best_other = (rows @ reference_flat.T).view(len(rows), -1, m).amax(dim=2)
        scores.append(best_own.sum(dim=1) / (n - 1) - best_other.mean(dim=1))
    return torch.cat(scores).view(n, m)
