"""Attention-based foreground mask (AFM), paper section 2.1, eq. 1-4 and 16-17: the spatial attention and, for a
model without parts, the foreground head.

The backbone map ``F_theta`` is reweighted by a learned spatial attention map, ``F_g = F_theta * S_A`` (eq. 2).
Every cell gets a foreground target from ``F_g`` (eq. 3, :mod:`icg.parts.foreground`); a foreground probability
``P_f`` is trained against it (``L_sep``) and gives the foreground map ``F_f = F_g * P_f`` (eq. 4). With the PPC,
``P_f`` is the union of the parts (eq. 8, :mod:`icg.model.network`); without it, :class:`ForegroundHead` gives it.

What may shape the target. A target read from the network's own activations can fulfil itself: if ``L_sep`` can
lower the norm of the cells it calls background, they stay background whatever they show. With a head on the raw
``F_g``, ``L_sep``'s gradient reached ``S_A`` and the attention learned pure position
(``../shared/diagnostics/afm_sim.py``). Here both pixel classifiers read the L2-normalised ``F_g``: the gradient of
a function of ``x / ||x||`` is orthogonal to ``x``, so ``L_sep`` and ``L_par`` give ``S_A`` exactly zero gradient
and cannot change a cell's norm (to first order). The target is shaped by the identity losses alone, through the
attention and the backbone, which is the paper's premise: the attention learns to weight the cells that identify
the person.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.model.ppc import PixelPartClassifier

__all__ = ["ForegroundHead", "SpatialAttention"]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al. 2018) that redistributes weight between cells: mean 1 per image.

    The channel-wise mean and max of the map are stacked to ``[B, 2, h, w]``, a ``k x k`` convolution (CBAM: 7x7,
    no bias) and a sigmoid turn them into weights, and the weights are divided by their mean over the image. The
    convolution starts at zero: ``S_A = 1`` everywhere until training moves it.

    Why the mean is fixed: with a free overall scale the attention collapses. BNNeck makes the identity
    cross-entropy blind to the feature scale, while the triplet and center losses on the features before BN
    shrink with it, so the easiest descent is ``S_A -> 0`` everywhere but a few corner cells, which eq. 3 then
    calls the foreground (``docs/DECISIONS.md``). With the mean fixed, the attention can only make some cells count
    more than others, which is what it is for; eq. 3 divides by the image's largest activation, so it is unchanged
    by the normalisation.

    Args:
        kernel_size: odd size of the convolution (CBAM's 7); padding keeps ``h x w``.

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
    """Classifies each cell of ``F_g`` as background (channel 0) or foreground (channel 1), eq. 16, in a model
    without parts.

    The part classifier with a single part: a 1x1 convolution of the L2-normalised cells, times the logit scale.
    Normalised, so that ``L_sep`` cannot change a cell's norm, which its own target is read from (module
    docstring); scaled, so that its logits can become confident (see :mod:`icg.model.ppc`).

    Args:
        in_channels: ``C`` of the feature map.

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, 2, h, w]`` logits; ``P_f = logits.softmax(1)[:, 1]``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, 1)
