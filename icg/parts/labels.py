"""The part pseudo-labels of the training images, and the one place that reads them for a training batch.

Labels are computed by :class:`icg.parts.PartClustering` on un-augmented images and stored here, one
``h x w`` map per training image (``uint8``: 0 background, ``1..K`` parts top to bottom), with a flag per image
saying whether it holds clustering results. They live in the LightningModule as buffers: checkpoints carry them
and data-loading workers never hold stale copies.

A training batch is augmented; its ``source`` map (see :mod:`icg.data.transforms`) says, for each input pixel,
which pixel of the un-augmented image it shows. :meth:`PartLabels.targets` reads the label of every feature
cell at the source of the pixel that stands for the cell (:func:`cell_centers`), so that labels stay aligned
after flips, crops and erasing; a cell showing padding or an erased box gets :data:`IGNORE_INDEX`. Images not
clustered yet fall back to ``K`` horizontal bands of the current foreground, the coarse prior PCB-style models
use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from icg.data.transforms import INVALID_SOURCE

__all__ = ["IGNORE_INDEX", "PartLabels", "cell_centers", "cell_sources"]

IGNORE_INDEX = -100
"""Target of a cell that no pixel loss may score (padding, erased): ``torch.nn.CrossEntropyLoss``'s default."""


def cell_centers(size: Sequence[int], image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The input pixel that stands for each cell of an ``h x w`` feature map of an ``H x W`` image: the center of
    the cell's ``H/h x W/w`` block, ``((i + 0.5) * H / h, (j + 0.5) * W / w)`` rounded down. Returns the rows
    ``[h]`` and columns ``[w]``; the training step reads labels there and the benchmarks sample true masks there.
    """
    (h, w), (height, width) = size, image_size
    rows = ((torch.arange(h) + 0.5) * height / h).long()
    cols = ((torch.arange(w) + 0.5) * width / w).long()
    return rows, cols


def cell_sources(source: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Where each feature cell of an augmented batch comes from in the un-augmented images.

    Args:
        source: ``[B, H, W]`` flat index into the un-augmented image of each input pixel, or
            :data:`~icg.data.transforms.INVALID_SOURCE` (padding, erased).
        size: ``(h, w)`` of the feature map.

    Returns:
        ``valid [B, h, w]`` bool (the cell's center shows an image pixel), and the ``row`` and ``col``
        ``[B, h, w]`` of that pixel in the un-augmented image (0 where not valid).
    """
    height, width = source.shape[-2:]
    rows, cols = cell_centers(size, (height, width))
    cell_source = source[:, rows.to(source.device)[:, None], cols.to(source.device)[None, :]]
    valid = cell_source != INVALID_SOURCE
    cell_source = cell_source.clamp_min(0)
    return valid, cell_source // width, cell_source % width


class PartLabels(nn.Module):
    """Part pseudo-labels of ``num_images`` training images, ``num_parts`` parts, maps of ``size`` cells.

    The buffers ``labels`` (``uint8 [N, h, w]``) and ``labeled`` (``bool [N]``) are what checkpoints carry;
    :meth:`assign` replaces them (the clustering), :meth:`targets` reads them for a training batch.

    Args:
        num_images: ``N``, the training images (rows; 0 for a model without parts).
        num_parts: ``K``.
        size: ``(h, w)`` of the feature map the labels describe.
    """

    def __init__(self, num_images: int, num_parts: int, size: Sequence[int]) -> None:
        super().__init__()
        if num_images < 0:
            raise ValueError(f"PartLabels: num_images must be >= 0, got {num_images}")
        if not 1 <= num_parts <= torch.iinfo(torch.uint8).max:
            raise ValueError(f"PartLabels: num_parts must be in [1, 255], got {num_parts}")
        self.num_parts = num_parts
        self.size = (int(size[0]), int(size[1]))
        self.register_buffer("labels", torch.zeros(num_images, *self.size, dtype=torch.uint8))
        self.register_buffer("labeled", torch.zeros(num_images, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.labels)

    def extra_repr(self) -> str:
        return f"num_images={len(self)}, num_parts={self.num_parts}, size={self.size}"

    @torch.no_grad()
    def assign(self, labels: Tensor, labeled: Tensor) -> None:
        """Replaces every image's labels (``[N, h, w]``, values ``0..K``) and flags (``[N]``)."""
        if labels.shape != self.labels.shape or labeled.shape != self.labeled.shape:
            raise ValueError(
                f"PartLabels.assign: expected labels {tuple(self.labels.shape)} and flags {tuple(self.labeled.shape)}, "
                f"got {tuple(labels.shape)} and {tuple(labeled.shape)}"
            )
        if len(labels) and int(labels.max()) > self.num_parts:
            raise ValueError(f"PartLabels.assign: labels go up to {int(labels.max())}, num_parts is {self.num_parts}")
        self.labels.copy_(labels)
        self.labeled.copy_(labeled)

    def targets(self, index: Tensor, source: Tensor, foreground: Tensor) -> Tensor:
        """Part label of every feature cell of an augmented batch, read through its source map.

        Args:
            index: ``[B]`` training-image rows.
            source: ``[B, H, W]`` flat index into the un-augmented image of each input pixel, or -1.
            foreground: ``[B, h, w]`` current foreground (0/1), used for images not clustered yet.

        Returns:
            ``[B, h, w]`` long: 0 background, ``1..K`` parts, :data:`IGNORE_INDEX` where the cell shows padding
            or erasing.
        """
        height, width = source.shape[-2:]
        h, w = foreground.shape[-2:]
        if (h, w) != self.size:
            raise ValueError(
                f"PartLabels: the feature map is {h}x{w} but the part labels are {self.size[0]}x{self.size[1]}; "
                f"set the model's image_size to the datamodule's ({height}x{width})"
            )
        valid, source_row, source_col = cell_sources(source, (h, w))
        label_row, label_col = source_row * h // height, source_col * w // width
        clustered = self.labels[index[:, None, None], label_row, label_col].long()
        bands = 1 + source_row * self.num_parts // height
        fallback = torch.where(foreground.bool(), bands, 0)
        labels = torch.where(self.labeled[index][:, None, None], clustered, fallback)
        return labels.masked_fill(~valid, IGNORE_INDEX)
