"""icg: Instance-level Consistent Graph (ICG) for person re-identification, in PyTorch Lightning.

Public API (everything the README and the examples use comes from here)::

    # train and evaluate
    from icg import ICGModule, build_module, PartClustering, PartLabels, run_cli
    from icg import Market1501DataModule, DukeMTMCDataModule, CUHK03NPDataModule, MSMT17DataModule
    from icg import SyntheticDataModule, generate_synthetic
    # a dataset of your own: a reader and a datamodule that uses it
    from icg import ReIDDataset, ImageRecord, DatasetLayoutError, IMAGE_SUFFIXES, ReIDDataModule
    # features, distances, metrics
    from icg import ReIDFeatures, icg_distance, k_reciprocal_rerank, evaluate_rank, ReIDMetric
    # images in and pictures out
    from icg import load_images, eval_transform, FeatureWriter, rank_folders
    from icg import part_maps, ranked_lists, top_k_matches, adjacency_heatmap, VisualizationCallback
    # deploy: exported models, an embedder for trackers, a gallery index re-ranked by eq. 15
    from icg import export_onnx, export_torchscript, ExportedModel, Embedder
    from icg import GalleryIndex, NormalizedFeatures, icg_distance_candidates
"""

from importlib.metadata import version

from icg.build import build_module
from icg.cli import run_cli
from icg.clustering import PartClustering
from icg.data import (
    IMAGE_SUFFIXES,
    CUHK03NPDataModule,
    DatasetLayoutError,
    DukeMTMCDataModule,
    ImageRecord,
    Market1501DataModule,
    MSMT17DataModule,
    ReIDDataModule,
    ReIDDataset,
    SyntheticDataModule,
    eval_transform,
    generate_synthetic,
    load_images,
)
from icg.embedder import Embedder
from icg.export import ExportedModel, export_onnx, export_torchscript
from icg.features import ReIDFeatures
from icg.losses import CenterLoss, ICGLoss, TripletLoss
from icg.metrics import RankResult, ReIDMetric, evaluate_rank
from icg.model import ICGNet
from icg.module import ICGModule
from icg.part_labels import PartLabels
from icg.predict import FeatureWriter, rank_folders
from icg.retrieval import GalleryIndex, NormalizedFeatures, icg_distance, icg_distance_candidates, k_reciprocal_rerank
from icg.viz import VisualizationCallback, adjacency_heatmap, part_maps, ranked_lists, top_k_matches

__version__ = version("icg")  # the one version source is pyproject.toml

__all__ = [
    "IMAGE_SUFFIXES",
    "CUHK03NPDataModule",
    "CenterLoss",
    "DatasetLayoutError",
    "DukeMTMCDataModule",
    "Embedder",
    "ExportedModel",
    "FeatureWriter",
    "GalleryIndex",
    "ICGLoss",
    "ICGModule",
    "ICGNet",
    "ImageRecord",
    "MSMT17DataModule",
    "Market1501DataModule",
    "NormalizedFeatures",
    "PartClustering",
    "PartLabels",
    "RankResult",
    "ReIDDataModule",
    "ReIDDataset",
    "ReIDFeatures",
    "ReIDMetric",
    "SyntheticDataModule",
    "TripletLoss",
    "VisualizationCallback",
    "adjacency_heatmap",
    "build_module",
    "eval_transform",
    "evaluate_rank",
    "export_onnx",
    "export_torchscript",
    "generate_synthetic",
    "icg_distance",
    "icg_distance_candidates",
    "k_reciprocal_rerank",
    "load_images",
    "part_maps",
    "rank_folders",
    "ranked_lists",
    "run_cli",
    "top_k_matches",
]
