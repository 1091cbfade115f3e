"""Data layer: dataset readers, synthetic pedestrians, PK sampling, augmentation with source maps (on the CPU per
image, or on the device per batch), the decoded-image cache, datamodules.

Names are imported when first used, so that the image transforms (what deployment needs) come without Lightning,
which the datamodules need.
"""

from icg.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "icg.data.cache": ("CacheFileError", "ImageCache"),
        "icg.data.datamodule": (
            "CUHK03NPDataModule",
            "DukeMTMCDataModule",
            "Market1501DataModule",
            "MSMT17DataModule",
            "ReIDDataModule",
            "SyntheticDataModule",
        ),
        "icg.data.datasets": (
            "CUHK03NP",
            "MSMT17",
            "DatasetLayoutError",
            "DukeMTMCreID",
            "ImageRecord",
            "Market1501",
            "ReIDDataset",
        ),
        "icg.data.device_augment": ("BatchAugmentation",),
        "icg.data.sampler": ("PKSampler", "ShardSampler"),
        "icg.data.synthetic": (
            "PART_LABELS",
            "PartLabel",
            "SyntheticImage",
            "SyntheticSpec",
            "generate_synthetic",
            "plan_synthetic",
            "render_synthetic",
        ),
        "icg.data.transforms": (
            "IMAGE_SUFFIXES",
            "INVALID_SOURCE",
            "AugmentParams",
            "TrainTransform",
            "UnreadableImagesError",
            "eval_transform",
            "find_unreadable_images",
            "image_problem",
            "load_images",
            "read_image",
        ),
    },
)
