"""The training augmentation of a whole batch on the device the model runs on.

:class:`BatchAugmentation` takes a batch of resized uint8 images ``[B, 3, H, W]`` (from the decoded cache,
:mod:`icg.data.cache`, or from loader workers that only decode and resize) and does what
:class:`~icg.data.transforms.TrainTransform` does to each image on the CPU: horizontal flip, zero padding + random
crop, normalisation, random erasing with value 0, and the source map that keeps the part labels aligned. The
flip and the crop are one gather per batch (every output pixel reads its source pixel, or is padding), the
normalisation and the erasing elementwise ops, so a GPU augments thousands of images in a millisecond or two.

The random parameters are drawn per image from a ``torch.Generator`` on the batch's device (:meth:`draw`), with
torchvision's distributions; :meth:`__call__` applies given :class:`~icg.data.transforms.AugmentParams`, so the
tests apply the same draws on both paths and compare images and source maps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from icg.data.transforms import INVALID_SOURCE, AugmentParams, TrainTransform

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """:class:`~icg.data.transforms.TrainTransform`'s augmentation (its settings) for a batch on its device.

    Args:
        transform: the CPU transform whose image size, flip and erasing probabilities, padding, mean and std
            are used, and whose torchvision erasing sampler gives the box's scale and ratio ranges.
    """

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform

    def draw(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        """Draws the parameters of ``batch_size`` images on ``generator``'s device, from the distributions of
        torchvision's transforms: flip with ``flip_prob``; crop corner uniform in ``[0, 2 * padding]`` per axis;
        with ``erasing_prob``, the first of 10 attempts (area ``scale`` x H x W, log aspect ratio uniform in
        ``log ratio``, sides rounded) that fits strictly inside the image, at a uniform position; no box when
        none fits, as ``v2.RandomErasing`` does."""
        transform = self.transform
        device = generator.device
        height, width = transform.image_size

        def uniform(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        flip = uniform(batch_size) < transform.flip_prob
        corner = torch.zeros(2, batch_size, dtype=torch.int64, device=device)
        if transform.padding > 0:
            corner = torch.randint(0, 2 * transform.padding + 1, (2, batch_size), generator=generator, device=device)
        erase = uniform(batch_size) < transform.erasing_prob
        erase_box = torch.zeros(batch_size, 4, dtype=torch.int64, device=device)
        if transform.erasing is not None:
            (scale_low, scale_high), (ratio_low, ratio_high) = transform.erasing.scale, transform.erasing.ratio
            attempts = 10  # v2.RandomErasing's
            area = height * width * (scale_low + (scale_high - scale_low) * uniform(batch_size, attempts))
            log_low, log_high = math.log(ratio_low), math.log(ratio_high)
            aspect = torch.exp(log_low + (log_high - log_low) * uniform(batch_size, attempts))
            # torch.round and Python's round (torchvision's) both round halves to even
            box_height = torch.sqrt(area * aspect).round().long()
            box_width = torch.sqrt(area / aspect).round().long()
            fits = (box_height < height) & (box_width < width)
            first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 when none does)
            box_height, box_width = box_height.gather(1, first)[:, 0], box_width.gather(1, first)[:, 0]
            erase &= fits.any(dim=1)
            top = (uniform(batch_size) * (height - box_height + 1)).long()
            left = (uniform(batch_size) * (width - box_width + 1)).long()
            erase_box = torch.stack([top, left, box_height, box_width], dim=1) * erase[:, None]
        return AugmentParams(flip, corner[0], corner[1], erase, erase_box)

    def __call__(self, images: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        """Augments ``images`` uint8 ``[B, 3, H, W]`` with ``params`` (on the images' device).

        Returns:
            ``image`` float32 ``[B, 3, H, W]``, normalised, and ``source`` int64 ``[B, H, W]``: the flat index
            ``y * W + x`` of the pixel of the un-augmented image each output pixel shows, or
            :data:`~icg.data.transforms.INVALID_SOURCE` for padding and erased pixels.
        """
        transform = self.transform
        batch_size, channels, height, width = images.shape
        if (height, width) != transform.image_size:
            raise ValueError(
                f"BatchAugmentation: the batch is {height}x{width}, the training size is "
                f"{transform.image_size[0]}x{transform.image_size[1]}; the images must be resized first"
            )
        device, padding = images.device, transform.padding
        # Output pixel (y, x) shows pixel (y + top, x + left) of the padded, flipped image. Padding is symmetric, so
        # that is column (W + 2 * padding - 1) - (x + left) of the padded original where the image is flipped.
        # Gathering from the padded batch needs no bounds checks; the padding is black there already.
        rows = torch.arange(height, device=device)[None, :, None] + params.top[:, None, None]
        cols = torch.arange(width, device=device)[None, None, :] + params.left[:, None, None]
        cols = torch.where(params.flip[:, None, None], width + 2 * padding - 1 - cols, cols)
        padded = F.pad(images, [padding], fill=0) if padding > 0 else images
        padded_width = width + 2 * padding
        index = (rows * padded_width + cols).view(batch_size, 1, height * width).expand(-1, channels, -1)
        moved = padded.reshape(batch_size, channels, -1).gather(2, index).view(batch_size, channels, height, width)
        # in place on the new float tensor: large fresh allocations cost page faults on the CPU
        image = F.normalize(
            F.to_dtype(moved, torch.float32, scale=True), list(transform.mean), list(transform.std), inplace=True
        )
        # the erased box is in output coordinates: [B, H, 1] and [B, 1, W] tests, one [B, H, W] mask
        y, x = torch.arange(height, device=device)[None, :, None], torch.arange(width, device=device)[None, None, :]
        top, left, box_height, box_width = (value[:, None, None] for value in params.erase_box.unbind(dim=1))
        erased = (params.erase[:, None, None] & (y >= top) & (y < top + box_height)) & (
            (x >= left) & (x < left + box_width)
        )
        # value 0 after normalisation, the dataset mean, as the CPU path's F.erase
        image.mul_(~erased[:, None])
        # Source row and column in the un-augmented image; a padding row or column is pushed so far below zero that
        # every pixel on it has a negative flat index, which clamps to INVALID_SOURCE (-1).
        outside = -height * width
        rows = (rows - padding).masked_fill_((rows < padding) | (rows >= height + padding), outside)
        cols = (cols - padding).masked_fill_((cols < padding) | (cols >= width + padding), outside)
        source = (rows * width + cols).clamp_min_(INVALID_SOURCE).masked_fill_(erased, INVALID_SOURCE)
        return image, source
