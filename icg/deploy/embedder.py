"""Features of person crops, for trackers and search services: :class:`Embedder`.

A multi-object tracker calls its re-ID model on the person crops of every frame, as numpy ``H x W x 3`` uint8
arrays cut out of the frame (any size, RGB or OpenCV's BGR). The embedder resizes and normalises them exactly as
evaluation does (:func:`icg.data.eval_transform`), runs them in batches through a checkpoint, an ONNX file or a
TorchScript archive, and returns L2-normalised features: the global feature, which a tracker's cosine matching
reads, and for ICG also the foreground, part, graph features and the part visibility that the ICG distance
(eq. 15, :func:`icg.icg_distance`) compares. An exported file runs without Lightning and the training code, which
only a checkpoint loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, read_image
from icg.deploy.exported import ExportedModel
from icg.features import NonFiniteFeaturesError, ReIDFeatures, check_finite_features

if TYPE_CHECKING:
    from icg.module import ICGModule

__all__ = ["Embedder"]


class Embedder:
    """Embeds person crops with a trained model, in batches.

    Args:
        model: a checkpoint of ``icg fit`` (``.ckpt``), a file of ``icg export`` (``.onnx`` or a TorchScript
            archive), or an :class:`~icg.module.ICGModule` or :class:`~icg.deploy.ExportedModel` already loaded.
        batch_size: crops per forward pass.
        device: where a checkpoint or a file runs (``cpu``, ``cuda``); a given module stays where it is.
        channels: the channel order of the crops given to :meth:`__call__`: ``rgb``, or ``bgr`` for OpenCV's frames.

    Returns from ``__call__(crops)`` (and :meth:`embed_files`): :class:`~icg.features.ReIDFeatures` on the CPU, one
    row per crop in order, every feature L2-normalised in float32 (parts each on its own), visibility ``[N, K]``
    bool. Compare them with ``features.global_feat @ other.global_feat.T`` (cosine) or :func:`icg.icg_distance`.
    """

    def __init__(
        self,
        model: str | Path | ICGModule | ExportedModel,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        channels: Literal["rgb", "bgr"] = "rgb",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if channels not in ("rgb", "bgr"):
            raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
        if isinstance(model, (str, Path)):
            path = Path(model)
            if path.suffix == ".ckpt":
                from icg.predict import load_for_inference  # the training side: Lightning, the module

                model = load_for_inference(path, device=device)
            else:
                model = ExportedModel(path, device=device)
        if isinstance(model, ExportedModel):
            self.image_size, mean, std = model.metadata.image_size, model.metadata.mean, model.metadata.std
            self._model = model
        elif callable(getattr(model, "extract", None)) and hasattr(model, "hparams"):
            module = model  # an ICGModule; extract runs in eval mode and restores the module's mode
            self.image_size = tuple(int(x) for x in module.hparams.image_size)
            mean, std = IMAGENET_MEAN, IMAGENET_STD  # what evaluation uses (icg.data.eval_transform)
            self._model = lambda images: module.extract(images.to(module.device))
        else:
            raise TypeError(f"model must be a file, an ICGModule or an ExportedModel, got {type(model).__name__}")
        self.batch_size = batch_size
        self.channels = channels
        self._transform = eval_transform(self.image_size, mean, std)
        self._empty: ReIDFeatures | None = None

    def __call__(self, crops: Sequence[np.ndarray]) -> ReIDFeatures:
        """Features of person crops, numpy ``H x W x 3`` uint8 arrays in the order :attr:`channels` says."""
        names = [f"crop {i}" for i in range(len(crops))]
        return self._embed((self._as_image(crop, i) for i, crop in enumerate(crops)), len(crops), names)

    def embed_files(self, paths: Sequence[str | Path], *, progress: bool = False) -> ReIDFeatures:
        """Features of image files (any format PIL reads; decoded as RGB); ``progress`` shows a bar."""
        return self._embed((read_image(str(path)) for path in paths), len(paths), [str(p) for p in paths], progress)

    def _as_image(self, crop: np.ndarray, index: int) -> Tensor:
        """A crop as a uint8 RGB tensor ``[3, H, W]``; the error names the crop's position."""
        if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            shape = getattr(crop, "shape", None)
            raise ValueError(
                f"crop {index} must be a numpy H x W x 3 uint8 array, got {type(crop).__name__} "
                f"{getattr(crop, 'dtype', '')} {tuple(shape) if shape is not None else ''}".rstrip()
            )
        if crop.shape[0] < 1 or crop.shape[1] < 1:
            raise ValueError(f"crop {index} is empty ({crop.shape[0]} x {crop.shape[1]})")
        if self.channels == "bgr":
            crop = crop[:, :, ::-1]
        # a copy: a crop is often a view of a frame, or read-only (np.asarray of a PIL image), which torch cannot share
        return torch.from_numpy(np.array(crop)).permute(2, 0, 1)

    def _embed(
        self, images: Iterable[Tensor], count: int, names: Sequence[str], progress: bool = False
    ) -> ReIDFeatures:
        if count == 0:
            return self._empty_record()
        batches = []
        with tqdm(total=count, desc="embedding", unit="image", disable=not progress) as bar:
            for start, chunk in _chunks(images, self.batch_size):
                try:
                    features = self._model(torch.stack([self._transform(image) for image in chunk]))
                    check_finite_features(features, "Embedder")
                except NonFiniteFeaturesError as error:  # name the files (or crops), not the rows of a batch
                    raise error.naming("Embedder", names[start : start + len(chunk)]) from None
                batches.append(features.normalized().to("cpu"))
                bar.update(len(chunk))
        return ReIDFeatures.cat(batches)

    def _empty_record(self) -> ReIDFeatures:
        """Features of no crop (a frame without detections): the model's components with 0 rows."""
        if self._empty is None:
            blank = torch.zeros(3, *self.image_size, dtype=torch.uint8)
            self._empty = self._embed([blank], 1, ["a blank image"])[:0]
        return self._empty


def _chunks(items: Iterable[Tensor], size: int) -> Iterator[tuple[int, list[Tensor]]]:
    """``(position of the first, items)`` of consecutive chunks of ``size`` items (the last may be shorter)."""
    chunk: list[Tensor] = []
    start = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start, chunk = start + size, []
    if chunk:
        yield start, chunk
