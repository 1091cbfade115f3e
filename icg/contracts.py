"""What icg's callbacks expect of the LightningModule and the LightningDataModule they run with.

:class:`icg.ICGModule` and :class:`icg.ReIDDataModule` offer all of it; a user who plugs in a module or a
datamodule of their own learns at once, from :func:`require`, which member is missing, rather than from an
``AttributeError`` deep inside a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:  # the members' types only: the callbacks that import this must not import their modules back
    from icg.data.datasets import ImageRecord, ReIDDataset
    from icg.features import ReIDFeatures
    from icg.model import ICGNet
    from icg.parts.labels import PartLabels

__all__ = ["ClusteringData", "LabeledModel", "PicturedModel", "PredictionData", "ReIDData", "require"]


class LabeledModel(Protocol):
    """A model with part labels to fill (:class:`icg.parts.PartClustering`)."""

    part_labels: PartLabels
    fg_threshold: float | str
    fg_signal: str
    device: torch.device

    def feature_maps(self, images: Tensor) -> Tensor:
        """``F_g`` ``[B, C, h, w]`` of a batch, in the model's current mode."""


class ClusteringData(Protocol):
    """The training images without augmentation, and who is on them (:class:`icg.parts.PartClustering`)."""

    num_workers: int
    eval_batch_size: int
    train_records: Sequence[ImageRecord]

    def cluster_dataset(self) -> Dataset:
        """Item ``i``: a dict with the ``"image"`` of training image ``i``, evaluation transform only."""


class PicturedModel(Protocol):
    """A model whose parts, ranking and graph can be drawn (:class:`icg.viz.VisualizationCallback`)."""

    net: ICGNet
    part_labels: PartLabels
    device: torch.device

    def extract(self, images: Tensor) -> ReIDFeatures: ...


class ReIDData(Protocol):
    """Training records, query and gallery, and the evaluation transform (:class:`icg.viz.VisualizationCallback`)."""

    train_records: Sequence[ImageRecord]
    dataset: ReIDDataset
    eval_transform: Callable[[Tensor], Tensor]


class PredictionData(Protocol):
    """The images that ``icg predict`` embeds, in order (:class:`icg.predict.FeatureWriter`)."""

    predict_records: Sequence[ImageRecord]


def _members(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return sorted(names)


def require(obj: object, protocol: type, user: str) -> None:
    """Raises a ``TypeError`` naming what ``obj`` lacks when it does not offer ``protocol``'s members."""
    missing = [name for name in _members(protocol) if not hasattr(obj, name)]
    if missing:
        raise TypeError(
            f"{user} needs a {protocol.__name__} ({(protocol.__doc__ or '').strip()}): {type(obj).__name__} has no "
            f"{', '.join(missing)}. icg's ICGModule and ReIDDataModule offer them."
        )
