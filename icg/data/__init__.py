"""Data layer: dataset readers, synthetic pedestrians, PK sampling, augmentation with source maps (on the CPU per
image, or on the device per batch), the decoded-image cache, datamodules."""

from icg.data.cache import CacheFileError, ImageCache
from icg.data.datamodule import (
    CUHK03NPDataModule,
    DukeMTMCDataModule,
    Market1501DataModule,
    MSMT17DataModule,
    ReIDDataModule,
    SyntheticDataModule,
)
from icg.data.datasets import CUHK03NP, MSMT17, DatasetLayoutError, DukeMTMCreID, ImageRecord, Market1501, ReIDDataset
from icg.data.device_augment import BatchAugmentation
from icg.data.sampler import PKSampler, ShardSampler
from icg.data.synthetic import (
    PART_LABELS,
    PartLabel,
    SyntheticImage,
    SyntheticSpec,
    generate_synthetic,
    plan_synthetic,
    render_synthetic,
)
from icg.data.transforms import (
    IMAGE_SUFFIXES,
    INVALID_SOURCE,
    AugmentParams,
    TrainTransform,
    UnreadableImagesError,
    eval_transform,
    find_unreadable_images,
    image_problem,
    load_images,
    read_image,
)

__all__ = [
    "AugmentParams",
    "BatchAugmentation",
    "CUHK03NP",
    "CUHK03NPDataModule",
    "CacheFileError",
    "DatasetLayoutError",
    "DukeMTMCDataModule",
    "DukeMTMCreID",
    "IMAGE_SUFFIXES",
    "INVALID_SOURCE",
    "ImageCache",
    "ImageRecord",
    "MSMT17",
    "MSMT17DataModule",
    "Market1501",
    "Market1501DataModule",
    "PART_LABELS",
    "PKSampler",
    "PartLabel",
    "ReIDDataModule",
    "ReIDDataset",
    "ShardSampler",
    "SyntheticDataModule",
    "SyntheticImage",
    "SyntheticSpec",
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
