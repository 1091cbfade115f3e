"""Attention-based foreground mask (AFM), paper section 2.1, eq. 1-4 and 16-17.

The backbone map ``F_theta`` is reweighted by a learned spatial attention map, ``F_g = F_theta * S_A`` (eq. 2).
Every cell gets a foreground target from its activation (eq. 3): ``||F(x, y)||_2`` divided by the image's
largest activation, thresholded (0.5 in the paper). A foreground probability ``P_f`` is trained against it
(``L_sep``) and gives the foreground map ``F_f = F_g * P_f`` (eq. 4); ``P_f`` comes from the parts (eq. 8, see
:mod:`icg.model.network`) or from :class:`ForegroundHead`, a 1x1 convolution on ``F_g`` (eq. 16).

Which map the target reads. The paper thresholds "the normalized feature map after attention", ``F_g``. We
threshold ``F_theta``, before the attention, detached. Read after the attention, the target is self-fulfilling:
``L_sep``'s gradient reaches ``S_A`` through ``P_f``, and where the target is 0 it lowers the attention, which
lowers ``||F_g||`` there and keeps the target at 0. With a zero-padded 7x7 kernel on an 8x4 map the attention can
then learn pure position. Measured (``../shared/diagnostics/afm_sim.py``, ``L_sep`` alone on a frozen trunk):
the share of the target lying on the person fell from 0.78 to 0.00 within 50 steps and ``S_A`` ended as a
pattern of columns; the ablation's foreground precision was 12% against a chance level of 28%. From ``F_theta``
the target is what the backbone responds to, which the attention cannot move.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ForegroundHead", "SpatialAttention", "foreground_target"]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al. 2018): one weight in (0, 1) per cell.

    The channel-wise mean and max of the map are stacked to ``[B, 2, h, w]`` and a 7x7 convolution followed by a
    sigmoid turns them into ``S_A``. The convolution has no bias, as in CBAM.

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

    def forward(self, feature_map: Tensor) -> Tensor:
        pooled = torch.cat(
            [feature_map.mean(dim=1, keepdim=True), feature_map.amax(dim=1, keepdim=True)], dim=1
        )
        return torch.sigmoid(self.conv(pooled))


class ForegroundHead(nn.Module):
    """1x1 convolution classifying each cell of ``F_g`` as background (channel 0) or foreground (channel 1).

    Args:
        in_channels: ``C`` of the feature map.

    Shapes:
        ``forward``: ``[B, C, h, w] -> [B, 2, h, w]`` logits; ``P_f = logits.softmax(1)[:, 1]``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.conv(feature_map)


def foreground_target(feature_map: Tensor, threshold: float = 0.5) -> Tensor:
    """Foreground pseudo-label of every cell from its activation (eq. 3).

    Per image, the activation ``||F(x, y)||_2`` is divided by its maximum over the image; cells at or above
    ``threshold`` are foreground (1), the others background (0). The map is detached: the target must not pull
    the features towards itself. An all-zero image is all background (for ``threshold > 0``).

    Args:
        feature_map: ``[B, C, h, w]``; ICG passes ``F_theta``, the map before the attention (module docstring).
        threshold: in ``[0, 1]``.

    Returns:
        ``LongTensor [B, h, w]`` of 0 / 1.
    """
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must be [B, C, h, w], got shape {tuple(feature_map.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    activation = torch.linalg.vector_norm(feature_map.detach().float(), dim=1)
    peak = activation.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    relative = activation / peak[:, None, None]
    return (relative >= threshold).long()
