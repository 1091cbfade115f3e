"""The training augmentation of a whole batch on the device the model runs on.

:class:`BatchAugmentation` takes a batch of resized uint8 images ``[B, 3, H, W]`` (from the decoded cache,
:mod:`icg.data.cache`, or from loader workers that only decode and resize) and does what
:class:`~icg.data.transforms.TrainTransform` does to each image on the CPU: horizontal flip, zero padding + random
crop, normalisation, random erasing with value 0, and the source map that keeps the part labels aligned. On a GPU
the flip and the crop are one gather per batch (every output pixel reads its source pixel, or is padding) and the
normalisation and the erasing elementwise ops, a few kernel launches per batch; on the CPU, where index tensors
cost more than the copies they save, each image is a slice of the padded batch.

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
        self._statistics: dict[torch.device, tuple[Tensor, Tensor]] = {}

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
        """Augments ``images`` uint8 ``[B, 3, H, W]`` with ``params`` (on the images' device): on the CPU with
        :meth:`per_image` (slices), elsewhere with :meth:`batched` (one gather), which give the same result.

        Returns:
            ``image`` float32 ``[B, 3, H, W]``, normalised, and ``source`` int64 ``[B, H, W]``: the flat index
            ``y * W + x`` of the pixel of the un-augmented image each output pixel shows, or
            :data:`~icg.data.transforms.INVALID_SOURCE` for padding and erased pixels.
        """
        return self.per_image(images, params) if images.device.type == "cpu" else self.batched(images, params)

    def batched(self, images: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        """:meth:`__call__` in a fixed number of whole-batch operations (a GPU's way: a few kernel launches, no
        host synchronisation): flip, pad and crop are one gather from the padded batch, erasing a mask."""
        transform = self._check(images)
        batch_size, channels, height, width = images.shape
        device, padding = images.device, transform.padding
        # Output pixel (y, x) shows pixel (y + top, x + left) of the padded, flipped image. Padding is symmetric, so
        # that is column (W + 2 * padding - 1) - (x + left) of the padded original where the image is flipped.
        # Gathering from the padded batch needs no bounds checks; the padding is black there already.
        rows = torch.arange(height, device=device)[None, :, None] + params.top[:, None, None]
        cols = torch.arange(width, device=device)[None, None, :] + params.left[:, None, None]
        cols = torch.where(params.flip[:, None, None], width + 2 * padding - 1 - cols, cols)
        padded = F.pad(images, [padding], fill=0) if padding > 0 else images
        index = (rows * (width + 2 * padding) + cols).view(batch_size, 1, height * width).expand(-1, channels, -1)
        moved = padded.reshape(batch_size, channels, -1).gather(2, index).view(batch_size, channels, height, width)
        image = self._normalize(moved)
        # the erased box is in output coordinates: [B, H, 1] and [B, 1, W] tests, one [B, H, W] mask
        y, x = torch.arange(height, device=device)[None, :, None], torch.arange(width, device=device)[None, None, :]
        top, left, box_height, box_width = (value[:, None, None] for value in params.erase_box.unbind(dim=1))
        erased = (params.erase[:, None, None] & (y >= top) & (y < top + box_height)) & (
            (x >= left) & (x < left + box_width)
        )
        image.mul_(~erased[:, None])  # value 0 after normalisation, as the CPU path's F.erase
        # Source row and column in the un-augmented image; a padding row or column is pushed so far below zero that
        # every pixel on it has a negative flat index, which clamps to INVALID_SOURCE (-1).
        outside = -height * width
        rows = (rows - padding).masked_fill_((rows < padding) | (rows >= height + padding), outside)
        cols = (cols - padding).masked_fill_((cols < padding) | (cols >= width + padding), outside)
        source = (rows * width + cols).clamp_min_(INVALID_SOURCE).masked_fill_(erased, INVALID_SOURCE)
        return image, source

    def per_image(self, images: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        """:meth:`__call__` as copies of one slice per image (the CPU's way: memory copies and no index tensors,
        1.5x to 3x faster there than :meth:`batched` in our measurements; on a GPU each slice would be a kernel
        launch)."""
        transform = self._check(images)
        height, width = transform.image_size
        padding = transform.padding
        padded = F.pad(images, [padding], fill=0) if padding > 0 else images
        # the source maps of the padded original and of the padded flipped image (padding is symmetric)
        identity = F.pad(transform.identity_source[None], [padding], fill=INVALID_SOURCE)[0].to(images.device)
        sources = (identity, identity.flip(-1))
        moved = torch.empty_like(images)
        source = torch.empty(len(images), height, width, dtype=torch.int64, device=images.device)
        flips, tops, lefts = params.flip.tolist(), params.top.tolist(), params.left.tolist()
        for row, (flip, top, left) in enumerate(zip(flips, tops, lefts)):
            if flip:  # the crop of the flipped padded image: the mirrored columns of the padded original
                right = width + 2 * padding - left
                moved[row] = padded[row, :, top : top + height, right - width : right].flip(-1)
            else:
                moved[row] = padded[row, :, top : top + height, left : left + width]
            source[row] = sources[flip][top : top + height, left : left + width]
        image = self._normalize(moved)
        for row, (erase, (top, left, box_height, box_width)) in enumerate(
            zip(params.erase.tolist(), params.erase_box.tolist())
        ):
            if erase:  # value 0 after normalisation, as the CPU path's F.erase
                image[row, :, top : top + box_height, left : left + box_width] = 0
                source[row, top : top + box_height, left : left + box_width] = INVALID_SOURCE
        return image, source

    def _check(self, images: Tensor) -> TrainTransform:
        transform = self.transform
        if tuple(images.shape[-2:]) != transform.image_size:
            raise ValueError(
                f"BatchAugmentation: the batch is {images.shape[-2]}x{images.shape[-1]}, the training size is "
                f"{transform.image_size[0]}x{transform.image_size[1]}; the images must be resized first"
            )
        return transform

    def _normalize(self, images: Tensor) -> Tensor:
        """uint8 -> float32 normalised with the CPU path's ops (``F.to_dtype``, then ``F.normalize``'s ``sub_`` and
        ``div_``), in place on the new tensor (large fresh allocations cost page faults on the CPU). The mean and
        std are kept on each device: ``F.normalize`` copies them from host lists at every call, and a copy from
        pageable memory makes the host wait for the GPU, which would end the overlap of data and training."""
        device = images.device
        if device not in self._statistics:
            transform = self.transform
            self._statistics[device] = tuple(
                torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).to(device)
                for values in (transform.mean, transform.std)
            )
        mean, std = self._statistics[device]
        return F.to_dtype(images, torch.float32, scale=True).sub_(mean).div_(std)
