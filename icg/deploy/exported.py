"""Running a file of ``icg export`` (:class:`ExportedModel`) and what the file says about itself
(:class:`ExportMetadata`): the deployment side, which needs neither Lightning nor the training code.

The file's contract, which trackers rely on (a tracker's ONNX back-end reads only the first output)::

    images   [B, 3, H, W] float32, RGB, resized to the model's image size and normalised (mean / std below)
    global      [B, C]        after-BN global feature (always, and always the first output)
    foreground  [B, C]        after-BN foreground feature (AFM on)
    parts       [B, K, C]     after-BN part features (PPC on)
    graph       [B, C]        after-BN graph feature (FSG on)
    visibility  [B, K] bool   part k is the arg-max of some cell (PPC on)

A BoT checkpoint (all three modules off) gives one output, ``global``. The batch size is dynamic; the image size
is fixed by the export. Both formats carry the same metadata (:class:`ExportMetadata`): ONNX as
``metadata_props`` (keys ``icg.image_size``, ``icg.mean``, ``icg.std``, ``icg.outputs``, ``icg.num_parts``,
``icg.version``; JSON values), TorchScript as an extra file ``icg.json`` holding the same keys.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from icg.features import ReIDFeatures

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ExportMetadata", "ExportedModel"]

OUTPUT_NAMES = {
    "global_feat": "global",
    "foreground": "foreground",
    "parts": "parts",
    "graph": "graph",
    "visibility": "visibility",
}
"""The exported output of each :class:`~icg.features.ReIDFeatures` component, in output order."""

INPUT_NAME = "images"
_FIELDS = {output: field for field, output in OUTPUT_NAMES.items()}
METADATA_FILE = "icg.json"  # the TorchScript archive's extra file
# the example batch of the traces: torch.export specialises a dimension of size 1, so it must be larger


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about its input and outputs.

    Attributes:
        image_size: ``(H, W)`` of the input.
        mean, std: the per-channel (RGB) normalisation of the input, applied to pixel values in ``[0, 1]``.
        outputs: the output names, in order (a subset of :data:`OUTPUT_NAMES`' values).
        num_parts: ``K`` (0 without part features).
        version: the ``icg`` version that exported the file.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: tuple[str, ...]
    num_parts: int
    version: str

    def to_strings(self) -> dict[str, str]:
        """``{"icg.<field>": JSON value}``: the ONNX ``metadata_props`` (and TorchScript's ``icg.json``)."""
        return {f"icg.{name}": json.dumps(value) for name, value in self.__dict__.items()}

    @classmethod
    def from_strings(cls, strings: dict[str, str], source: str | Path) -> ExportMetadata:
        """Reads :meth:`to_strings`' form; ``source`` names the file in the error when a key is missing or wrong."""
        values = {}
        for name in cls.__dataclass_fields__:
            key = f"icg.{name}"
            if key not in strings:
                raise ValueError(
                    f"{source} has no {key} in its metadata: it was not written by `icg export` (or by an older one)"
                )
            try:
                values[name] = json.loads(strings[key])
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}: metadata {key} is not JSON ({error})") from None
        unknown = [name for name in values["outputs"] if name not in _FIELDS]
        if unknown:
            raise ValueError(f"{source}: metadata icg.outputs names unknown outputs {unknown}")
        return cls(
            image_size=tuple(values["image_size"]),
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
            outputs=tuple(values["outputs"]),
            num_parts=int(values["num_parts"]),
            version=str(values["version"]),
        )


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Hides torch's ``torch.jit.* is deprecated`` warnings: TorchScript is what trackers load (they cannot read a
    ``torch.export`` file), so it is exported on purpose; docs/DECISIONS.md says so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def require_package(name: str, purpose: str) -> Any:
    try:
        return __import__(name)
    except ImportError as error:
        raise ImportError(f"{purpose} needs {name}: `pip install icg[onnx]` (onnx, onnxscript, onnxruntime)") from error


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip file with a ``code/`` folder (a Lightning checkpoint is a zip without one)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


class ExportedModel:
    """Runs a file of :func:`export_onnx` (through ONNX Runtime) or :func:`export_torchscript`.

    Args:
        path: an ``.onnx`` file or a TorchScript archive written by ``icg export``.
        device: ``cpu`` or ``cuda``; ONNX Runtime uses its CUDA provider when asked for ``cuda`` and it has one.
        threads: ONNX Runtime's threads per run (default: its own choice, one per core); TorchScript runs with
            torch's (``torch.set_num_threads``).

    Attributes:
        format: ``"onnx"`` or ``"torchscript"``.
        metadata: the file's :class:`ExportMetadata` (image size and normalisation of the input, outputs).

    Shapes:
        ``__call__``: normalised images ``[B, 3, H, W]`` -> :class:`~icg.features.ReIDFeatures` on the CPU
        (``cuda`` TorchScript: on the GPU).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model {self.path} does not exist")
        self.device = torch.device(device)
        self.format: Literal["onnx", "torchscript"]
        if _is_torchscript(self.path):
            self.format = "torchscript"
            extra = {METADATA_FILE: ""}
            with quiet_torchscript():
                self._module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
            if not extra[METADATA_FILE]:
                raise ValueError(f"{self.path} is a TorchScript archive without icg.json: not written by `icg export`")
            strings = json.loads(extra[METADATA_FILE])
        else:
            self.format = "onnx"
            ort = require_package("onnxruntime", f"running {self.path}")
            available = ort.get_available_providers()
            wanted = ["CUDAExecutionProvider"] if self.device.type == "cuda" else []
            providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
            try:
                self._session = ort.InferenceSession(str(self.path), options, providers=providers)
            except Exception as error:  # onnxruntime raises its own exception types for a file it cannot read
                raise ValueError(f"{self.path} is neither a TorchScript archive nor an ONNX model: {error}") from None
            strings = self._session.get_modelmeta().custom_metadata_map
        self.metadata = ExportMetadata.from_strings(strings, self.path)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> ReIDFeatures:
        height, width = self.metadata.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, height, width):
            raise ValueError(f"{self.path} takes images [B, 3, {height}, {width}], got shape {tuple(images.shape)}")
        if self.format == "torchscript":
            outputs = self._module(images.to(self.device, torch.float32))
        else:
            array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
            outputs = [torch.from_numpy(x) for x in self._session.run(list(self.metadata.outputs), {INPUT_NAME: array})]
        return ReIDFeatures(**{_FIELDS[name]: value for name, value in zip(self.metadata.outputs, outputs)})
