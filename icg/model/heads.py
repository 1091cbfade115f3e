"""BNNeck (BoT, Luo et al. 2019): the batch normalisation every ICG branch ends in.

The metric losses (triplet, center) act on the feature before BN, the identity cross-entropy on a bias-free linear
classifier after BN, and retrieval uses the after-BN feature. The BN shift is frozen at 0 so that the after-BN
feature stays centred on the origin, where the cosine distance used at test time is meaningful. The identity
classifier is tied to the training identities and unused at inference, so it lives with the losses
(:class:`icg.losses.ICGLoss`), not in the network: an exported model has none, and a checkpoint evaluates on
another dataset without it.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BNNeck"]


class BNNeck(nn.Module):
    """BatchNorm1d with weight 1 and a frozen zero bias (BoT's initialisation).

    Args:
        in_features: ``D``, the feature size.

    Shapes:
        ``forward``: ``[B, D] -> (before BN [B, D], after BN [B, D])``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return features, self.bn(features)
