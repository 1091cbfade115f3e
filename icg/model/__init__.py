"""The ICG network as plain ``nn.Module``s (no Lightning here): backbone, AFM, PPC, FSG, BNNeck heads."""

from __future__ import annotations

from icg.model.afm import (
    FgSignal,
    FgThreshold,
    ForegroundHead,
    SpatialAttention,
    check_fg_signal,
    check_fg_threshold,
    foreground_target,
    identity_contrast,
    otsu_thresholds,
    relative_activation,
    split_foreground,
)
from icg.model.backbone import PretrainedWeightsUnavailableError, ResNetBackbone, build_backbone, weights_cache_path
from icg.model.fsg import FlexibleStructureGraph
from icg.model.heads import BNNeck
from icg.model.network import BranchOutput, ICGNet, ICGOutput, to_reid_features
from icg.model.ppc import PartAssignment, PixelPartClassifier, assign_parts, part_visibility, weighted_mean_pool

__all__ = [
    "BNNeck",
    "BranchOutput",
    "FgSignal",
    "FgThreshold",
    "FlexibleStructureGraph",
    "ForegroundHead",
    "ICGNet",
    "ICGOutput",
    "PartAssignment",
    "PixelPartClassifier",
    "PretrainedWeightsUnavailableError",
    "ResNetBackbone",
    "SpatialAttention",
    "assign_parts",
    "build_backbone",
    "check_fg_signal",
    "check_fg_threshold",
    "foreground_target",
    "identity_contrast",
    "otsu_thresholds",
    "part_visibility",
    "relative_activation",
    "split_foreground",
    "to_reid_features",
    "weighted_mean_pool",
    "weights_cache_path",
]
