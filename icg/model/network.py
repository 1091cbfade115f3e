"""The ICG network: backbone, AFM, PPC, FSG and one BNNeck per branch (paper Fig. 2, appendix A.1.2).

Data flow for one batch ``[B, 3, H, W]`` (``C`` channels, ``h x w`` the backbone map, ``K`` parts)::

    F_theta = backbone(images)                             [B, C, h, w]
    F_g     = F_theta * S_A             (AFM)              [B, C, h, w]
    P_0..K  = softmax(s * PPC(L2norm(F_g)))     (PPC)      [B, K + 1, h, w]
    P_f     = 1 - P_0                   (eq. 8)            [B, h, w]
              or softmax(ForegroundHead(F_g))[:, 1]  (AFM without PPC)
    parts   = weighted mean of F_g under P_1..P_K          [B, K, C]

    "global"     GAP(F_g)                                  [B, C]
    "foreground" weighted mean of F_g under P_f            [B, C]
    "parts"      parts, concatenated                       [B, K * C]
    "graph"      FSG(parts, visibility)                    [B, C]

Each branch goes through its own :class:`~icg.model.heads.BNNeck`. The parts branch has a single BNNeck on the
concatenated ``[B, K * C]`` vector, so its triplet, center and identity losses see the whole part set at once;
the after-BN vector viewed as ``[B, K, C]`` gives the per-part features used at retrieval time (BatchNorm1d is
per channel, so each part keeps its own normalisation).

The foreground. With the PPC on, the network follows eq. 8-9: ``P_f = sum_k P_k = 1 - P_0`` and ``L_sep``
(eq. 16-17) trains the part classifier's background-vs-rest split (``fg_logits`` are ``[l_0, logsumexp(l_1..l_K)]``,
whose softmax is exactly ``[P_0, 1 - P_0]``). The foreground branch's identity losses then reach the part
classifier, so the parts learn to cover what identifies the person. Without the PPC, the AFM's own head
(:class:`~icg.model.afm.ForegroundHead`) gives ``P_f``.

The part classifier (and the foreground head) see the direction of ``F_g`` only (each cell L2-normalised, eq.
5-6): the same quantity the K-means pseudo-labels are computed from. A per-cell factor (``S_A``, ``P_f``) does
not change a direction, so classifying ``F_f = F_g * P_f`` (eq. 18) or ``F_g`` is the same; and the pixel
losses cannot change the cell norms that the foreground target is read from (see :mod:`icg.model.afm`).

Switches: the foreground branch exists with the AFM's attention, the parts branch with the PPC's classifier, the
graph branch with the FSG (which needs the PPC). With all three off the network is BoT: backbone, GAP, one BNNeck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from icg.features import ReIDFeatures
from icg.model.afm import ForegroundHead, SpatialAttention
from icg.model.fsg import FlexibleStructureGraph
from icg.model.heads import BNNeck
from icg.model.ppc import PixelPartClassifier, parts_foreground_logits, visible_parts, weighted_mean_pool

__all__ = ["BranchOutput", "ICGNet", "ICGOutput", "to_reid_features"]


@dataclass
class BranchOutput:
    """One branch's BNNeck output.

    Attributes:
        features: before BN, ``[B, D]`` (triplet and center losses).
        bn_features: after BN, ``[B, D]`` (retrieval, and the identity classifier of the loss).
    """

    features: Tensor
    bn_features: Tensor


@dataclass
class ICGOutput:
    """Everything one forward pass of :class:`ICGNet` produces.

    Attributes:
        feature_map: ``F_g`` ``[B, C, h, w]`` (after the spatial attention when the AFM is on); the foreground
            target of :func:`~icg.model.afm.foreground_target` is computed from it.
        backbone_map: ``F_theta`` ``[B, C, h, w]``, the backbone's map before the attention (the attention map
            ``S_A`` is ``attention(backbone_map)``).
        branches: the active branches in the order global, foreground, parts, graph.
        fg_logits: foreground logits ``[B, 2, h, w]`` (channel 1 = foreground; from the parts or the AFM head),
            ``None`` without AFM.
        part_logits: part classifier ``[B, K + 1, h, w]`` (channel 0 = background), ``None`` without PPC.
        part_map: ``[B, h, w]`` long, the part of every cell (0 background;
            :meth:`~icg.model.ppc.PixelPartClassifier.assign`); ``None`` without PPC.
        visibility: ``[B, K]`` bool, part ``k + 1`` is assigned to some cell; ``None`` without PPC.
        part_bn_features: the parts branch's after-BN feature as ``[B, K, C]``; ``None`` without PPC.
    """

    feature_map: Tensor
    backbone_map: Tensor
    branches: dict[str, BranchOutput] = field(default_factory=dict)
    fg_logits: Tensor | None = None
    part_logits: Tensor | None = None
    part_map: Tensor | None = None
    visibility: Tensor | None = None
    part_bn_features: Tensor | None = None


def to_reid_features(output: ICGOutput) -> ReIDFeatures:
    """The after-BN retrieval features of an :class:`ICGOutput` (branches that are off give ``None``)."""

    def bn(name: str) -> Tensor | None:
        branch = output.branches.get(name)
        return None if branch is None else branch.bn_features

    return ReIDFeatures(
        global_feat=output.branches["global"].bn_features,
        foreground=bn("foreground"),
        parts=output.part_bn_features,
        graph=bn("graph"),
        visibility=output.visibility,
    )


class ICGNet(nn.Module):
    """Instance-level Consistent Graph network for person re-ID, assembled from its modules.

    Which modules are given decides the branches (module docstring): no ``attention``, ``part_classifier`` or
    ``graph`` is BoT (backbone, GAP, one BNNeck). :class:`icg.ICGModule` builds the network from its settings.

    Args:
        backbone: the trunk, ``[B, 3, H, W] -> [B, C, h, w]``, with ``out_channels`` (``C``); see
            :func:`~icg.model.backbone.build_backbone`.
        attention: the AFM's spatial attention (:class:`~icg.model.afm.SpatialAttention`); ``None``: no AFM and no
            foreground branch.
        part_classifier: the PPC's pixel classifier with ``K`` parts (:class:`~icg.model.ppc.PixelPartClassifier`);
            ``None``: no PPC and no parts branch.
        graph: the FSG over the ``K`` part features (:class:`~icg.model.fsg.FlexibleStructureGraph`); needs the part
            classifier; ``None``: no graph branch.

    Shapes:
        ``forward``: ``[B, 3, H, W] -> ICGOutput``; ``extract``: ``[B, 3, H, W] -> ReIDFeatures``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        attention: SpatialAttention | None = None,
        part_classifier: PixelPartClassifier | None = None,
        graph: FlexibleStructureGraph | None = None,
    ) -> None:
        super().__init__()
        if graph is not None and part_classifier is None:
            raise ValueError("ICGNet: the graph (use_fsg) needs the part classifier (use_ppc): its nodes are the parts")
        if graph is not None and graph.num_parts != part_classifier.num_parts:
            raise ValueError(
                f"ICGNet: the graph has {graph.num_parts} nodes but the part classifier {part_classifier.num_parts} "
                "parts"
            )
        self.backbone = backbone
        self.out_channels = backbone.out_channels
        self.attention = attention
        self.part_classifier = part_classifier
        # eq. 8: with parts, the foreground is their union; without, the AFM's own head (eq. 16)
        use_head = attention is not None and part_classifier is None
        self.foreground_head = ForegroundHead(self.out_channels) if use_head else None
        self.graph = graph
        self.heads = nn.ModuleDict({name: BNNeck(dim) for name, dim in self.branch_dims.items()})

    @property
    def use_afm(self) -> bool:
        return self.attention is not None

    @property
    def use_ppc(self) -> bool:
        return self.part_classifier is not None

    @property
    def use_fsg(self) -> bool:
        return self.graph is not None

    @property
    def num_parts(self) -> int:
        """``K`` (0 without the PPC)."""
        return 0 if self.part_classifier is None else self.part_classifier.num_parts

    @property
    def branch_dims(self) -> dict[str, int]:
        """Feature size of each active branch, in forward order (what :class:`~icg.losses.ICGLoss` needs)."""
        dims = {"global": self.out_channels}
        if self.use_afm:
            dims["foreground"] = self.out_channels
        if self.use_ppc:
            dims["parts"] = self.num_parts * self.out_channels
        if self.use_fsg:
            dims["graph"] = self.out_channels
        return dims

    def forward(self, images: Tensor) -> ICGOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        backbone_map = self.backbone(images)
        feature_map = self._attend(backbone_map)
        output = ICGOutput(feature_map=feature_map, backbone_map=backbone_map)
        output.branches["global"] = self._head("global", feature_map.mean(dim=(2, 3)))

        if self.part_classifier is not None:
            output.part_logits = self.part_classifier(feature_map)
        if self.use_afm:
            if self.foreground_head is None:
                output.fg_logits = parts_foreground_logits(output.part_logits)
            else:
                output.fg_logits = self.foreground_head(feature_map)
            fg_prob = output.fg_logits.softmax(dim=1)[:, 1:]
            foreground = weighted_mean_pool(feature_map, fg_prob)[:, 0]
            output.branches["foreground"] = self._head("foreground", foreground)

        if output.part_logits is not None:
            part_prob = output.part_logits.softmax(dim=1)[:, 1:]
            parts = weighted_mean_pool(feature_map, part_prob)
            output.part_map = self.part_classifier.assign(output.part_logits)
            output.visibility = visible_parts(output.part_map, self.num_parts)
            output.branches["parts"] = self._head("parts", parts.flatten(1))
            output.part_bn_features = output.branches["parts"].bn_features.view_as(parts)
            if self.graph is not None:
                output.branches["graph"] = self._head("graph", self.graph(parts, output.visibility))
        return output

    def feature_map(self, images: Tensor) -> Tensor:
        """``F_g`` ``[B, C, h, w]``: the backbone map, after the spatial attention when the AFM is on."""
        return self._attend(self.backbone(images))

    def _attend(self, backbone_map: Tensor) -> Tensor:
        if self.attention is None:
            return backbone_map
        return backbone_map * self.attention(backbone_map)

    @torch.no_grad()
    def extract(self, images: Tensor) -> ReIDFeatures:
        """Retrieval features of ``images`` in eval mode (the training mode is restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            return to_reid_features(self(images))
        finally:
            self.train(was_training)

    def _head(self, name: str, features: Tensor) -> BranchOutput:
        return BranchOutput(*self.heads[name](features))
