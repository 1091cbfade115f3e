"""Flexible structure graph (FSG), paper section 2.3, eq. 10-12.

The K part features are the nodes of a graph whose adjacency ``M`` (K x K, entries in [0, 1]) is learned and
shared by all images. In each image only the visible parts take part: ``M_b = M * (v v^T)`` with ``v`` the
visibility vector, so an invisible part neither sends nor receives messages.

Normalisation (eq. 12): ``M_hat = (I + D)^-1/2 (M_b + I) (I + D)^-1/2``. The paper calls ``D`` "the diagonal
matrix of M"; we read it as the degree matrix of ``M_b`` (``D_ii = sum_j M_b[i, j]``). Then ``I + D`` is
exactly the degree matrix of ``M_b + I``, and eq. 12 is Kipf & Welling's renormalisation trick, which the
paper says it adopts. (Reading ``D`` as ``diag(M)`` instead would ignore how strongly a node is connected.)
An invisible node keeps only its self-loop, with weight 1.

Layers (eq. 11): ``H <- LeakyReLU(M_hat H Theta)``, negative slope 0.2, ``Theta`` a bias-free C x C linear map,
batched over the images. Read-out: the mean of the visible nodes' final features, ``F_s`` ``[B, C]``; an image
with no visible part gets a zero vector.

``M`` is parametrised as ``sigmoid(A)`` with ``A`` free, initialised to 0 so that every entry starts at 0.5:
the sigmoid's slope is largest there, and no pair of parts is favoured before training says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FlexibleStructureGraph"]


class FlexibleStructureGraph(nn.Module):
    """GCN over the visible part features with a learned adjacency.

    Args:
        num_parts: ``K``, the number of nodes.
        channels: ``C``, the node feature size (kept through the layers).
        num_layers: number of GCN layers (>= 1).
        negative_slope: of the LeakyReLU after each layer.

    Shapes:
        ``forward``: parts ``[B, K, C]``, visibility ``[B, K]`` bool ``-> F_s [B, C]``.
    """

    def __init__(self, num_parts: int, channels: int, *, num_layers: int = 2, negative_slope: float = 0.2) -> None:
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_parts = num_parts
        self.channels = channels
        self.negative_slope = negative_slope
        self.adjacency_logits = nn.Parameter(torch.zeros(num_parts, num_parts))
        self.layers = nn.ModuleList(nn.Linear(channels, channels, bias=False) for _ in range(num_layers))

    @property
    def adjacency(self) -> Tensor:
        """The current ``M`` (``[K, K]``, entries in [0, 1]), detached, for inspection and pictures."""
        return torch.sigmoid(self.adjacency_logits.detach())

    def normalized_adjacency(self, visibility: Tensor) -> Tensor:
        """``M_hat`` of eq. 12 for each image, ``[B, K] bool -> [B, K, K]`` (float32 at least, also under
        autocast: the degrees are sums of K weights and go through a reciprocal square root)."""
        self._check_visibility(visibility)
        dtype = torch.promote_types(self.adjacency_logits.dtype, torch.float32)
        mask = visibility.to(dtype)
        restricted = torch.sigmoid(self.adjacency_logits.to(dtype))[None] * (mask[:, :, None] * mask[:, None, :])
        inv_sqrt_degree = torch.rsqrt(1.0 + restricted.sum(dim=2))
        eye = torch.eye(self.num_parts, dtype=dtype, device=visibility.device)
        return inv_sqrt_degree[:, :, None] * (restricted + eye) * inv_sqrt_degree[:, None, :]

    def forward(self, parts: Tensor, visibility: Tensor) -> Tensor:
        if parts.dim() != 3 or parts.shape[1:] != (self.num_parts, self.channels):
            raise ValueError(f"parts must be [B, {self.num_parts}, {self.channels}], got shape {tuple(parts.shape)}")
        self._check_visibility(visibility)
        if visibility.shape[0] != parts.shape[0]:
            raise ValueError(f"visibility has batch {visibility.shape[0]} but parts has {parts.shape[0]}")
        adjacency = self.normalized_adjacency(visibility)
        hidden = parts
        for layer in self.layers:
            transformed = layer(hidden)
            hidden = F.leaky_relu(
                torch.bmm(adjacency.to(transformed.dtype), transformed), negative_slope=self.negative_slope
            )
        mask = visibility.to(hidden.dtype)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.einsum("bk,bkc->bc", mask, hidden) / count

    def _check_visibility(self, visibility: Tensor) -> None:
        if visibility.dtype != torch.bool or visibility.dim() != 2 or visibility.shape[1] != self.num_parts:
            raise ValueError(
                f"visibility must be a bool tensor [B, {self.num_parts}], got {visibility.dtype} "
                f"{tuple(visibility.shape)}"
            )
