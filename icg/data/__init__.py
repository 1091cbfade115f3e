"""Data layer: dataset readers, synthetic pedestrians, PK sampling, augmentation with source maps, datamodules."""

from icg.data.datamodule import (
    CUHK03NPDataModule,
    DukeMTMCDataModule,
    Market1501DataModule,
    MSMT17DataModule,
    ReIDDataModule,
    SyntheticDataModule,
)
from icg.data.datasets import CUHK03NP, MSMT17, DatasetLayoutError, DukeMTMCreID, ImageRecord, Market1501
from icg.data.sampler import PKSampler, ShardSampler
from icg.data.synthetic import PART_LABELS, PartLabel, SyntheticImage, generate_synthetic, plan_synthetic, render_synthetic
from icg.data.transforms import (
    INVALID_SOURCE,
    TrainTransform,
    UnreadableImagesError,
    eval_transform,
    find_unreadable_images,
    image_problem,
    load_images,
    read_image,
)

__all__ = [
    "CUHK03NP",
    "CUHK03NPDataModule",
    "DatasetLayoutError",
    "DukeMTMCDataModule",
    "DukeMTMCreID",
    "INVALID_SOURCE",
    "ImageRecord",
    "MSMT17",
    "MSMT17DataModule",
    "Market1501",
    "Market1501DataModule",
    "PART_LABELS",
    "PKSampler",
    "PartLabel",
    "ReIDDataModule",
    "ShardSampler",
    "SyntheticDataModule",
    "SyntheticImage",
    "TrainTransform",
    "UnreadableImagesError",
    "eval_transform",
    "find_unreadable_images",
    "generate_synthetic",
    "image_problem",
    "load_images",
    "plan_synthetic",
    "read_image",
    "render_synthetic",
]
