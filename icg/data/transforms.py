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
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
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


class _SourceAwareRandomErasing(v2.RandomErasing):
    """``v2.RandomErasing`` that also marks the erased box invalid in a source map (v2 passes masks through)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if params["v"] is None:
                return inpt
            erased = inpt.clone()
            erased[..., params["i"] : params["i"] + params["h"], params["j"] : params["j"] + params["w"]] = (
                INVALID_SOURCE
            )
            return erased
        return super().transform(inpt, params)


class TrainTransform:
    """Resize, then jointly for image and source map: flip, pad + random crop, normalise, random erasing.

    Follows BoT's recipe (Luo et al., 2019); erased boxes are filled with 0 after normalisation, i.e. with the
    dataset mean, and padding is black.

    Args:
        image_size: (height, width) of the network input.
        flip_prob: probability of a horizontal flip.
        padding: pixels of zero padding before the random crop back to ``image_size`` (0 disables it).
        erasing_prob: probability of random erasing.

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
        self.image_size = tuple(image_size)
        self.resize = v2.Resize(self.image_size, antialias=True)
        augment: list[v2.Transform] = [v2.RandomHorizontalFlip(flip_prob)]
        if padding > 0:
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: INVALID_SOURCE}
            augment.append(v2.RandomCrop(self.image_size, padding=padding, fill=fill))
        augment += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        if erasing_prob > 0:
            augment.append(_SourceAwareRandomErasing(erasing_prob, value=0))
        self.augment = v2.Compose(augment)
        height, width = self.image_size
        self._identity_source = torch.arange(height * width, dtype=torch.int64).view(height, width)

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        image = tv_tensors.Image(self.resize(image))
        image, source = self.augment(image, tv_tensors.Mask(self._identity_source))
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
