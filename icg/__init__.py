"""icg: Instance-level Consistent Graph (ICG) for person re-identification, in PyTorch Lightning.

Public API::

    from icg import ICGModule, PartClustering, ReIDMetric, SyntheticDataModule, Market1501DataModule
    from icg import icg_distance, evaluate_rank, ReIDFeatures
"""

from icg.clustering import PartClustering
from icg.data import (
    CUHK03NPDataModule,
    DukeMTMCDataModule,
    Market1501DataModule,
    MSMT17DataModule,
    ReIDDataModule,
    SyntheticDataModule,
    generate_synthetic,
)
from icg.losses import CenterLoss, ICGLoss, TripletLoss
from icg.metrics import RankResult, ReIDMetric, evaluate_rank
from icg.model import ICGNet
from icg.module import ICGModule
from icg.retrieval import ReIDFeatures, icg_distance, k_reciprocal_rerank
from icg.viz import VisualizationCallback

__version__ = "0.1.0"

__all__ = [
    "CUHK03NPDataModule",
    "CenterLoss",
    "DukeMTMCDataModule",
    "ICGLoss",
    "ICGModule",
    "ICGNet",
    "MSMT17DataModule",
    "Market1501DataModule",
    "PartClustering",
    "RankResult",
    "ReIDDataModule",
    "ReIDFeatures",
    "ReIDMetric",
    "SyntheticDataModule",
    "TripletLoss",
    "VisualizationCallback",
    "evaluate_rank",
    "generate_synthetic",
    "icg_distance",
    "k_reciprocal_rerank",
]
