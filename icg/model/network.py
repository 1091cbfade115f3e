"""The ICG network: backbone, AFM, PPC, FSG and one BNNeck per branch (paper Fig. 2, appendix A.1.2).

Data flow for one batch ``[B, 3, H, W]`` (``C`` channels, ``h x w`` the backbone map, ``K`` parts)::

    F_theta = backbone(images)                             [B, C, h, w]
    F_g     = F_theta * S_A             (AFM)              [B, C, h, w]
    P_0..K  = softmax(s * PPC(L2norm(F_g)))     (PPC)      [B, K + 1, h, w]
    P_f     = 1 - P_0                   (eq. 8, default)   [B, h, w]
              or softmax(ForegroundHead(F_g))[:, 1]  (eq. 16, foreground_from_parts=False)
    parts   = weighted mean of F_g under P_1..P_K          [B, K, C]

    "global"     GAP(F_g)                                  [B, C]
    "foreground" weighted mean of F_g under P_f            [B, C]
    "parts"      parts, concatenated                       [B, K * C]
    "graph"      FSG(parts, visibility)                    [B, C]

Each branch goes through its own :class:`~icg.model.heads.BNNeck`. The parts branch has a single BNNeck on the
concatenated ``[B, K * C]`` vector, so its triplet, center and identity losses see the whole part set at once;
the after-BN vector viewed as ``[B, K, C]`` gives the per-part features used at retrieval time (BatchNorm1d is
per channel, so each part keeps its own normalisation).

The foreground. The paper gives two: a 1x1 head on ``F_g`` trained by ``L_sep`` (eq. 16-17), and the union of
the parts, ``P_f = sum_k P_k`` (eq. 8-9). With ``foreground_from_parts`` (the default when the PPC is on) the
network follows eq. 8-9: ``P_f = 1 - P_0`` and ``L_sep`` trains the part classifier's background-vs-rest split
(``fg_logits`` are ``[l_0, logsumexp(l_1..l_K)]``, whose softmax is exactly ``[P_0, 1 - P_0]``). The
foreground branch's identity losses then reach the part classifier, so the parts learn to cover what
identifies the person. Without the PPC, the AFM's own head gives ``P_f``.

The part classifier (and the foreground head) see the direction of ``F_g`` only (each cell L2-normalised, eq.
5-6): the same quantity the K-means pseudo-labels are computed from. A per-cell factor (``S_A``, ``P_f``) does
not change a direction, so classifying ``F_f = F_g * P_f`` (eq. 18) or ``F_g`` is the same; and the pixel
losses cannot change the cell norms that the foreground target is read from (see :mod:`icg.model.afm`).

Switches: the foreground branch exists with ``use_afm``, the parts branch with ``use_ppc``, the graph branch with
``use_fsg`` (which needs ``use_ppc``). With all three off the network is BoT: backbone, GAP, one BNNeck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from icg.features import ReIDFeatures
from icg.model.afm import ForegroundHead, SpatialAttention
from icg.model.backbone import IMAGENET_WEIGHTS, build_backbone, resolve_weights
from icg.model.fsg import FlexibleStructureGraph
from icg.model.heads import BNNeck
from icg.model.ppc import (
    PartAssignment,
    PixelPartClassifier,
    assign_parts,
    check_part_assignment,
    parts_foreground_logits,
    visible_parts,
    weighted_mean_pool,
)

__all__ = ["BranchOutput", "ICGNet", "ICGOutput", "to_reid_features"]


@dataclass
class BranchOutput:
    """One branch's BNNeck output.

    Attributes:
        features: before BN, ``[B, D]`` (triplet and center losses).
        bn_features: after BN, ``[B, D]`` (retrieval).
        logits: identity logits, ``[B, num_classes]`` (cross-entropy).
    """

    features: Tensor
    bn_features: Tensor
    logits: Tensor


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
        part_map: ``[B, h, w]`` long, the part of every cell (0 background; :func:`~icg.model.ppc.assign_parts`);
            ``None`` without PPC.
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
    """Instance-level Consistent Graph network for person re-ID.

    Args:
        num_classes: number of training identities (classifier outputs).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        weights: backbone weights: a torchvision weight name (default ``IMAGENET1K_V1``), a weights file (state
            dict or icg checkpoint) or ``None`` (random); see :mod:`icg.model.backbone`.
        num_parts: ``K``, the number of body parts of the PPC (default 6, the paper's best).
        use_afm: attention-based foreground mask and the foreground branch.
        use_ppc: pixel-wise part classifier and the parts branch.
        use_fsg: flexible structure graph and the graph branch (needs ``use_ppc``).
        foreground_from_parts: with the PPC on, ``P_f = 1 - P_0`` (eq. 8-9) instead of the AFM's own head
            (eq. 16); see the module docstring. Without the PPC the head is used either way.
        part_assignment: how a cell gets its part: ``"argmax"`` over background and the K parts (the paper), or
            ``"foreground"``: background against the union of the parts first (eq. 8), then the most probable part
            (:func:`~icg.model.ppc.assign_parts`). It decides the parts' visibility.
        pixel_logit_scale: ``s``, the logit scale of the part classifier and the foreground head (see
            :mod:`icg.model.ppc`).
        part_position: the part classifier also reads each cell's height (not in the paper; see
            :class:`~icg.model.ppc.PixelPartClassifier`).
        attention_kernel: kernel size of the AFM's spatial attention (CBAM: 7).
        gcn_layers: number of GCN layers in the FSG.
        output_stride: 16 (BoT, 16x8 maps at 256x128) or 8 (dilated, 32x16; resnet50/101 only).
        pool_eps: added to the weight sums of the weighted mean pooling.
        pretrained: deprecated spelling of ``weights`` (``True`` / ``False`` / a name or file).

    Shapes:
        ``forward``: ``[B, 3, H, W] -> ICGOutput``; ``extract``: ``[B, 3, H, W] -> ReIDFeatures``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "resnet50",
        weights: str | None = IMAGENET_WEIGHTS,
        num_parts: int = 6,
        use_afm: bool = True,
        use_ppc: bool = True,
        use_fsg: bool = True,
        foreground_from_parts: bool = True,
        part_assignment: PartAssignment = "argmax",
        pixel_logit_scale: float = 16.0,
        part_position: bool = False,
        attention_kernel: int = 7,
        gcn_layers: int = 2,
        output_stride: int = 16,
        pool_eps: float = 1e-6,
        pretrained: bool | str | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if use_fsg and not use_ppc:
            raise ValueError("use_fsg=True needs use_ppc=True: the graph's nodes are the PPC part features")
        if use_ppc and num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        check_part_assignment(part_assignment, "ICGNet")
        self.num_classes = num_classes
        self.num_parts = num_parts
        self.use_afm = use_afm
        self.use_ppc = use_ppc
        self.use_fsg = use_fsg
        self.foreground_from_parts = foreground_from_parts and use_afm and use_ppc
        self.part_assignment = part_assignment
        self.pool_eps = pool_eps

        self.backbone = build_backbone(
            backbone, weights=resolve_weights(weights, pretrained), output_stride=output_stride
        )
        channels = self.backbone.out_channels
        self.out_channels = channels
        self.attention = SpatialAttention(kernel_size=attention_kernel) if use_afm else None
        self.foreground_head = (
            ForegroundHead(channels, logit_scale=pixel_logit_scale)
            if use_afm and not self.foreground_from_parts
            else None
        )
        self.part_classifier = (
            PixelPartClassifier(channels, num_parts, logit_scale=pixel_logit_scale, position=part_position)
            if use_ppc
            else None
        )
        self.graph = FlexibleStructureGraph(num_parts, channels, num_layers=gcn_layers) if use_fsg else None
        self.heads = nn.ModuleDict({name: BNNeck(dim, num_classes) for name, dim in self.branch_dims.items()})

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
            foreground = weighted_mean_pool(feature_map, fg_prob, eps=self.pool_eps)[:, 0]
            output.branches["foreground"] = self._head("foreground", foreground)

        if output.part_logits is not None:
            part_prob = output.part_logits.softmax(dim=1)[:, 1:]
            parts = weighted_mean_pool(feature_map, part_prob, eps=self.pool_eps)
            output.part_map = assign_parts(output.part_logits, self.part_assignment)
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
