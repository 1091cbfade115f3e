"""BNNeck (BoT, Luo et al. 2019): the head every ICG branch ends in.

The metric losses (triplet, center) act on the feature before BN, the identity cross-entropy on a bias-free
linear classifier after BN, and retrieval uses the after-BN feature. The BN shift is frozen at 0 so that the
after-BN feature stays centred on the origin, where the cosine distance used at test time is meaningful.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BNNeck"]


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free linear classifier.

    Initialisation follows BoT: BN weight 1 and bias 0, classifier weights ``N(0, 0.001^2)``.

    Args:
        in_features: ``D``, the feature size.
        num_classes: number of training identities.

    Shapes:
        ``forward``: ``[B, D] -> (before BN [B, D], after BN [B, D], logits [B, num_classes])``.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.bn = nn.BatchNorm1d(in_features)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        normalized = self.bn(features)
        return features, normalized, self.classifier(normalized)
