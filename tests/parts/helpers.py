"""Crafted feature maps and a minimal module for the part-labelling tests."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import Dataset

from icg.parts import PartLabels


class MapDataset(Dataset):
    """Items whose ``image`` *is* the feature map, for an identity ``feature_fn``."""

    def __init__(self, maps: list[Tensor]) -> None:
        self.maps = maps

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.maps[index]}


def band_maps(
    num_images: int, *, height: int = 12, width: int = 4, channels: int = 8, seed: int = 0
) -> tuple[list[Tensor], list[Tensor]]:
    """Feature maps with three horizontal bands of distinct directions in a foreground box, and low-norm
    background; bands of unequal height, box shifted per image, band directions permuted per call.

    Returns:
        maps ``[C, h, w]`` and the expected labels ``[h, w]`` (1, 2, 3 top to bottom, 0 background).
    """
    rng = np.random.default_rng(seed)
    directions = rng.permutation(channels)[:3]
    maps, expected = [], []
    for _ in range(num_images):
        top = int(rng.integers(0, 2))
        bottom = height - int(rng.integers(0, 2))
        left = int(rng.integers(0, 2))
        # head short, torso long, legs medium
        cut1 = top + (bottom - top) // 5
        cut2 = top + 3 * (bottom - top) // 5
        fmap = 0.1 * torch.from_numpy(rng.random((channels, height, width))).float()
        labels = torch.zeros(height, width, dtype=torch.uint8)
        for part, (start, stop) in enumerate([(top, cut1), (cut1, cut2), (cut2, bottom)], start=1):
            noise = 0.05 * torch.from_numpy(rng.standard_normal((channels, stop - start, 2))).float()
            fmap[:, start:stop, left : left + 2] = noise
            fmap[directions[part - 1], start:stop, left : left + 2] += 1.0
            labels[start:stop, left : left + 2] = part
        maps.append(fmap)
        expected.append(labels)
    return maps, expected


class FakeModule(LightningModule):
    """The surface :class:`PartClustering` needs (:class:`icg.contracts.LabeledModel`)."""

    fg_threshold = 0.5
    fg_signal = "activation"

    def __init__(self, num_rows: int, label_size: tuple[int, int], num_parts: int = 3) -> None:
        super().__init__()
        self.part_labels = PartLabels(num_rows, num_parts, label_size)
        self.modes: list[bool] = []

    def feature_maps(self, images: Tensor) -> Tensor:
        self.modes.append(self.training)
        return images


def identity(images: Tensor) -> Tensor:
    return images


def person_on_backdrop_maps(pids: list[int], *, height: int = 12, width: int = 4) -> tuple[list[Tensor], list[Tensor]]:
    """Feature maps of people in three bands of their own directions (channels ``3p .. 3p + 2`` for identity
    ``p``), in a box that moves between images, over a backdrop that every image shares (channel ``3 * #ids``)
    and whose norm (3) is three times the person's: eq. 3 finds the backdrop, the identity contrast the person.

    Returns:
        maps ``[C, h, w]`` and the expected labels ``[h, w]`` (bands 1, 2, 3 top to bottom, 0 backdrop).
    """
    rng = np.random.default_rng(0)
    backdrop = 3 * len(set(pids))
    maps, expected = [], []
    for pid in pids:
        fmap = 0.02 * torch.from_numpy(rng.standard_normal((backdrop + 1, height, width))).float()
        fmap[backdrop] += 3.0
        labels = torch.zeros(height, width, dtype=torch.uint8)
        top, left = int(rng.integers(0, 3)), int(rng.integers(0, 2))
        for part in range(3):
            rows = slice(top + 3 * part, top + 3 * part + 3)
            fmap[:, rows, left : left + 2] = 0.02 * torch.randn(backdrop + 1, 3, 2)
            fmap[3 * pid + part, rows, left : left + 2] += 1.0
            labels[rows, left : left + 2] = part + 1
        maps.append(fmap)
        expected.append(labels)
    return maps, expected
