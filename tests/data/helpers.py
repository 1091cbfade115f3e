"""Images that say where each of their pixels is, shared by the alignment tests of both augmentation paths."""

from __future__ import annotations

import torch

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """uint8 ``[3, height, width]``: red = column + 1, green = row + 1, blue = 7 (0 never occurs); needs
    ``height, width < 255``."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([cols + 1, rows + 1, torch.full_like(rows, 7)]).to(torch.uint8)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """The uint8 values (as floats) of a normalised image ``[..., 3, H, W]``, rounded."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).round()
