"""The ICG network as plain ``nn.Module``s (no Lightning here): backbone, AFM, PPC, FSG, BNNeck heads."""

from __future__ import annotations

from icg.model.afm import ForegroundHead, SpatialAttention
from icg.model.backbone import (
    BACKBONES,
    MobileNetV2Backbone,
    PretrainedWeightsUnavailableError,
    ResNetBackbone,
    build_backbone,
    weights_cache_path,
)
from icg.model.fsg import FlexibleStructureGraph
from icg.model.heads import BNNeck
from icg.model.network import BranchOutput, ICGNet, ICGOutput, to_reid_features
from icg.model.ppc import (
    LOGIT_SCALE,
    PartAssignment,
    PixelPartClassifier,
    assign_parts,
    part_visibility,
    weighted_mean_pool,
)

__all__ = [
    "BACKBONES",
    "LOGIT_SCALE",
    "BNNeck",
    "BranchOutput",
    "FlexibleStructureGraph",
    "ForegroundHead",
    "ICGNet",
    "ICGOutput",
    "MobileNetV2Backbone",
    "PartAssignment",
    "PixelPartClassifier",
    "PretrainedWeightsUnavailableError",
    "ResNetBackbone",
    "SpatialAttention",
    "assign_parts",
    "build_backbone",
    "part_visibility",
    "to_reid_features",
    "weighted_mean_pool",
    "weights_cache_path",
]
