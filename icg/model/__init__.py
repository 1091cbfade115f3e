"""The ICG network as plain ``nn.Module``s (no Lightning here): backbone, AFM, PPC, FSG, BNNeck heads."""

from __future__ import annotations

from icg.model.afm import (
    FgThreshold,
    ForegroundHead,
    SpatialAttention,
    check_fg_threshold,
    foreground_target,
    relative_activation,
)
from icg.model.backbone import PretrainedWeightsUnavailableError, ResNetBackbone, build_backbone, weights_cache_path
from icg.model.fsg import FlexibleStructureGraph
from icg.model.heads import BNNeck
from icg.model.network import BranchOutput, ICGNet, ICGOutput, to_reid_features
from icg.model.ppc import PixelPartClassifier, part_visibility, weighted_mean_pool

__all__ = [
    "BNNeck",
    "BranchOutput",
    "FgThreshold",
    "FlexibleStructureGraph",
    "ForegroundHead",
    "ICGNet",
    "ICGOutput",
    "PixelPartClassifier",
    "PretrainedWeightsUnavailableError",
    "ResNetBackbone",
    "SpatialAttention",
    "build_backbone",
    "check_fg_threshold",
    "foreground_target",
    "part_visibility",
    "relative_activation",
    "to_reid_features",
    "weighted_mean_pool",
    "weights_cache_path",
]
