"""icg: Instance-level Consistent Graph (ICG) for person re-identification, in PyTorch Lightning.

Public API (everything the README and the examples use comes from here)::

    # train and evaluate
    from icg import ICGModule, build_module, PartClustering, PartLabels, run_cli
    from icg import Market1501DataModule, DukeMTMCDataModule, CUHK03NPDataModule, MSMT17DataModule
    from icg import SyntheticDataModule, generate_synthetic
    # a dataset of your own: a reader and a datamodule that uses it
    from icg import ReIDDataset, ImageRecord, DatasetLayoutError, IMAGE_SUFFIXES, ReIDDataModule
    # the network and its losses, as plain nn.Modules
    from icg import ICGNet, ICGLoss, TripletLoss, CenterLoss
    # features, distances, metrics
    from icg import ReIDFeatures, icg_distance, k_reciprocal_rerank, evaluate_rank, RankResult, ReIDMetric
    # images in and pictures out
    from icg import load_images, eval_transform, FeatureWriter, rank_folders
    from icg import part_maps, ranked_lists, top_k_matches, adjacency_heatmap, VisualizationCallback
    # deploy: exported models, an embedder for trackers, a gallery index re-ranked by eq. 15
    from icg import export_onnx, export_torchscript, ExportedModel, Embedder
    from icg import GalleryIndex, NormalizedFeatures, icg_distance_candidates

Names are imported when first used: ``from icg import Embedder`` loads neither Lightning nor the training code.
"""

from importlib.metadata import version

from icg.lazy import lazy_exports

__version__ = version("icg")  # the one version source is pyproject.toml

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "icg.build": ("build_module",),
        "icg.cli.lightning_cli": ("run_cli",),
        "icg.data": (
            "IMAGE_SUFFIXES",
            "CUHK03NPDataModule",
            "DatasetLayoutError",
            "DukeMTMCDataModule",
            "ImageRecord",
            "Market1501DataModule",
            "MSMT17DataModule",
            "ReIDDataModule",
            "ReIDDataset",
            "SyntheticDataModule",
            "eval_transform",
            "generate_synthetic",
            "load_images",
        ),
        "icg.deploy": ("Embedder", "ExportedModel", "export_onnx", "export_torchscript"),
        "icg.features": ("ReIDFeatures",),
        "icg.losses": ("CenterLoss", "ICGLoss", "TripletLoss"),
        "icg.metrics": ("RankResult", "ReIDMetric", "evaluate_rank"),
        "icg.model": ("ICGNet",),
        "icg.module": ("ICGModule",),
        "icg.parts": ("PartClustering", "PartLabels"),
        "icg.predict": ("FeatureWriter", "rank_folders"),
        "icg.retrieval": (
            "GalleryIndex",
            "NormalizedFeatures",
            "icg_distance",
            "icg_distance_candidates",
            "k_reciprocal_rerank",
        ),
        "icg.viz": ("VisualizationCallback", "adjacency_heatmap", "part_maps", "ranked_lists", "top_k_matches"),
    },
)
