"""Image loading and the train/eval pipelines, built from ``torchvision.transforms.v2``.

Training images carry a *source map* through the same random geometric transforms as the image: a
``tv_tensors.Mask`` [H, W] whose value at each output pixel is the flat index ``y * W + x`` of the pixel of the
un-augmented resized image it came from, or :data:`INVALID_SOURCE` where the pixel is padding or was erased.
Part pseudo-labels are computed on un-augmented images (clustering pass), so the training step reads them
through this map and they stay aligned with the augmented pixels they describe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INVALID_SOURCE = -1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""File suffixes (lower case) read as images: by the dataset readers, ``icg predict`` and ``icg rank``."""


def image_files(folder: str | Path) -> list[Path]:
    """The image files (jpg, jpeg, png) below ``folder``, recursively, in sorted order; errors name the folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png image in {folder}")
    return files


def read_image(path: str) -> Tensor:
    """Decodes an image file to a uint8 RGB tensor [3, H, W]; the error names the file.

    PIL rather than ``torchvision.io``, whose decoders are deprecated since torchvision 0.29.
    """
    try:
        with Image.open(path) as image:
            return v2.functional.pil_to_tensor(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(f"cannot read image {path}: {error}") from error


class UnreadableImagesError(OSError):
    """Image files that cannot be decoded; the message lists every one with the reason."""


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` when it can.

    Cheap: the header and the size, then a decode at the smallest scale the format offers (JPEG: 1/8, through
    ``Image.draft``), which still reads every byte and so finds truncated or corrupt data.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"the image is empty ({width}x{height})"
            image.draft("RGB", (1, 1))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None


def find_unreadable_images(
    paths: Sequence[str | Path], *, threads: int = 1, progress: bool = False, description: str = "checking images"
) -> list[tuple[str, str]]:
    """``(path, reason)`` of every file of ``paths`` that :func:`image_problem` rejects, in the order of ``paths``.

    Decoding releases the GIL, so ``threads`` threads check files in parallel; ``progress`` shows a bar.
    """
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = tqdm(
            pool.map(image_problem, paths),
            total=len(paths),
            desc=description,
            disable=not progress,
            leave=False,
        )
        return [(str(path), problem) for path, problem in zip(paths, problems) if problem is not None]


def load_images(paths: Sequence[str | Path], transform: Callable[[Tensor], Tensor]) -> Tensor:
    """``[N, 3, H, W]``: the files read with :func:`read_image` and passed through ``transform``."""
    return torch.stack([transform(read_image(str(path))) for path in paths])


def resize(image: Tensor, image_size: Sequence[int]) -> Tensor:
    """uint8 ``[3, h, w]`` -> uint8 ``[3, H, W]``, antialiased: the one resize of training images, done per item on
    the CPU path and once per image by the decoded cache (:mod:`icg.data.cache`), which therefore hold the same
    pixels."""
    return F.resize(image, list(image_size), antialias=True)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws of the training augmentation for ``B`` images, one row per image.

    Drawn by :meth:`TrainTransform.draw` (torch's global generator, the CPU path) or
    :meth:`icg.data.device_augment.BatchAugmentation.draw` (a generator on the batch's device), and applied by
    :meth:`TrainTransform.apply` (one image) or :class:`~icg.data.device_augment.BatchAugmentation` (a batch): the
    same draws give the same images and source maps on either path.

    Attributes:
        flip: ``[B]`` bool, horizontal flip.
        top, left: ``[B]`` int64, the corner of the crop in the padded image, in ``[0, 2 * padding]``.
        erase: ``[B]`` bool, a box is erased.
        erase_box: ``[B, 4]`` int64 ``(top, left, height, width)`` of the erased box in the output image (zeros
            where ``erase`` is false).
    """

    flip: Tensor
    top: Tensor
    left: Tensor
    erase: Tensor
    erase_box: Tensor


class TrainTransform:
    """Resize, then jointly for image and source map: flip, pad + random crop, normalise, random erasing.

    Follows BoT's recipe (Luo et al., 2019); erased boxes are filled with 0 after normalisation, i.e. with the
    dataset mean, and padding is black. The random parameters are drawn by :meth:`draw` and applied by
    :meth:`apply` with ``torchvision.transforms.v2.functional`` ops; the draws are torchvision's own, in the order
    of ``v2.Compose([RandomHorizontalFlip, RandomCrop, ToDtype, Normalize, RandomErasing])``, so an image comes out
    as that pipeline makes it for the same seed. :class:`~icg.data.device_augment.BatchAugmentation` applies the
    same parameters to a whole batch on its device.

    Args:
        image_size: (height, width) of the network input.
        flip_prob: probability of a horizontal flip.
        padding: pixels of zero padding before the random crop back to ``image_size`` (0 disables it).
        erasing_prob: probability of random erasing (torchvision's box: area 0.02-0.33 of the image, aspect ratio
            0.3-3.3, up to 10 attempts).
        mean, std: normalisation per channel.

    Returns from ``__call__(image uint8 [3, h, w])``: ``(image float32 [3, H, W], source int64 [H, W])``.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 128),
        flip_prob: float = 0.5,
        padding: int = 10,
        erasing_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.flip_prob, self.padding, self.erasing_prob = flip_prob, padding, erasing_prob
        self.mean, self.std = tuple(mean), tuple(std)
        # torchvision's samplers (their make_params) draw the crop corner and the erased box
        self.crop = v2.RandomCrop(self.image_size, padding=padding) if padding > 0 else None
        self.erasing = v2.RandomErasing(erasing_prob, value=0) if erasing_prob > 0 else None
        height, width = self.image_size
        self._shape = [tv_tensors.Image(torch.empty(3, height, width, dtype=torch.uint8))]  # what make_params reads
        self.identity_source = torch.arange(height * width, dtype=torch.int64).view(height, width)

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.augment(resize(image, self.image_size))

    def augment(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Augments a resized uint8 image ``[3, H, W]`` with fresh draws: ``(image float32, source int64 [H, W])``."""
        return self.apply(image, self.draw())

    def draw(self, batch_size: int = 1) -> AugmentParams:
        """Draws the parameters of ``batch_size`` images from torch's global generator, image after image, with
        the calls ``v2.Compose`` of the same transforms makes (an ``rng() < p`` test per random transform, then
        its ``make_params``)."""
        flip = torch.zeros(batch_size, dtype=torch.bool)
        corner = torch.zeros(2, batch_size, dtype=torch.int64)
        erase = torch.zeros(batch_size, dtype=torch.bool)
        erase_box = torch.zeros(batch_size, 4, dtype=torch.int64)
        for row in range(batch_size):
            # v2's random-apply test: the transform is skipped when torch.rand(1) >= p
            flip[row] = bool(torch.rand(1) < self.flip_prob)
            if self.crop is not None:
                params = self.crop.make_params(self._shape)
                corner[:, row] = torch.tensor([params["top"], params["left"]])
            if self.erasing is not None and bool(torch.rand(1) < self.erasing_prob):
                params = self.erasing.make_params(self._shape)
                if params["v"] is not None:  # None: no box fitted in 10 attempts, nothing is erased
                    erase[row] = True
                    erase_box[row] = torch.tensor([params["i"], params["j"], params["h"], params["w"]])
        return AugmentParams(flip, corner[0], corner[1], erase, erase_box)

    def apply(self, image: Tensor, params: AugmentParams, row: int = 0) -> tuple[Tensor, Tensor]:
        """Applies row ``row`` of ``params`` to a resized uint8 image ``[3, H, W]``: ``(image float32 [3, H, W],
        source int64 [H, W])``."""
        image, source = tv_tensors.Image(image), tv_tensors.Mask(self.identity_source)
        if params.flip[row]:
            image, source = F.horizontal_flip(image), F.horizontal_flip(source)
        if self.padding > 0:
            corner = (int(params.top[row]), int(params.left[row]), *self.image_size)
            image = F.crop(F.pad(image, [self.padding], fill=0), *corner)
            source = F.crop(F.pad(source, [self.padding], fill=INVALID_SOURCE), *corner)
        image = F.normalize(F.to_dtype(image, torch.float32, scale=True), list(self.mean), list(self.std))
        if params.erase[row]:
            top, left, height, width = params.erase_box[row].tolist()
            image = F.erase(image, top, left, height, width, torch.tensor(0.0))
            source = source.clone()
            source[top : top + height, left : left + width] = INVALID_SOURCE
        return image.as_subclass(Tensor), source.as_subclass(Tensor)


def eval_transform(
    image_size: tuple[int, int] = (256, 128),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize and normalise: uint8 [3, h, w] -> float32 [3, H, W]."""
    return v2.Compose(
        [v2.Resize(tuple(image_size), antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )
