"""Attention-based foreground mask (AFM), paper section 2.1, eq. 1-4 and 16-17.

The backbone map ``F_theta`` is reweighted by a learned spatial attention map, ``F_g = F_theta * S_A``
(eq. 2). A 1x1 convolution on ``F_g`` classifies every cell as background / foreground (eq. 16); its target is
the cell's activation ``||F_g(x, y)||_2`` divided by the image's largest activation, thresholded at 0.5 (eq. 3).
The foreground probability ``P_f`` then gives the foreground map ``F_f = F_g * P_f`` (eq. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ForegroundHead", "SpatialAttention", "foreground_target"]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al. 2018): one weight in (0, 1) per cell.

    The channel-wise mean and max of the map are stacked to ``[B, 2, h, w]`` and a 7x7 convolution followed by a
    sigmoid turns them into ``S_A``. The convolution has no bias, as in CBAM: a constant offset would only scale
    every cell alike, which the following BN layers undo anyway.

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

    Per image, the activation ``||F_g(x, y)||_2`` is divided by its maximum over the image; cells at or above
    ``threshold`` are foreground (1), the others background (0). The map is detached: the target must not pull
    the features towards itself. An all-zero image is all background (for ``threshold > 0``).

    Args:
        feature_map: ``F_g``, ``[B, C, h, w]``.
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
