"""Models that leave Python: the inference path of an :class:`~icg.module.ICGModule` as an ONNX or TorchScript file
(``icg export``), and :class:`ExportedModel`, which runs such a file and gives :class:`~icg.features.ReIDFeatures`.

The exported graph is what :meth:`ICGModule.extract <icg.module.ICGModule.extract>` computes::

    images   [B, 3, H, W] float32, RGB, resized to the model's image size and normalised (mean / std below)
    global      [B, C]        after-BN global feature (always)
    foreground  [B, C]        after-BN foreground feature (AFM on)
    parts       [B, K, C]     after-BN part features (PPC on)
    graph       [B, C]        after-BN graph feature (FSG on)
    visibility  [B, K] bool   part k is the arg-max of some cell (PPC on)

A BoT checkpoint (all three modules off) gives one output, ``global``. The batch size is dynamic; the image size
is fixed by the export. Both formats carry the same metadata (:class:`ExportMetadata`): ONNX as
``metadata_props`` (keys ``icg.image_size``, ``icg.mean``, ``icg.std``, ``icg.outputs``, ``icg.num_parts``,
``icg.version``; JSON values), TorchScript as an extra file ``icg.json`` holding the same keys.

Exporters: ONNX through ``torch.onnx.export(dynamo=True)`` (``torch.export``, the exporter PyTorch develops;
needs ``onnx`` and ``onnxscript``, the ``onnx`` extra), opset 18; TorchScript through ``torch.jit.trace``. Both
trace one batch; the network's Python-level checks (shapes, dtypes) hold for every batch size, so the traced
graph is the same for all of them, which the parity tests check against ``extract`` at two batch sizes.
"""

from __future__ import annotations

import copy
import json
import keyword
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.features import ReIDFeatures
from icg.files import atomic_write
from icg.model import ICGNet, to_reid_features
from icg.module import ICGModule
from icg.predict import load_for_inference

__all__ = [
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "ExportMetadata",
    "ExportedModel",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
]

ONNX_OPSET = 18
"""The ONNX opset of exported files: ONNX Runtime runs it from version 1.14 (2023) on."""

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
_METADATA_FILE = "icg.json"  # the TorchScript archive's extra file
# the example batch of the traces: torch.export specialises a dimension of size 1, so it must be larger
_EXAMPLE_BATCH = 2


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


def _identifier(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) else name


class _IdentifierHeads(nn.ModuleDict):
    """The network's heads under names that are Python identifiers (``global`` becomes ``global_``), still indexed
    by the branch names: the code that ``torch.export`` and TorchScript generate reaches a module by its attribute
    path, and ``heads.global`` is a syntax error there."""

    def __init__(self, heads: nn.ModuleDict) -> None:
        super().__init__({_identifier(name): head for name, head in heads.items()})

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(_identifier(name))


class _InferencePath(nn.Module):
    """A copy of the network in eval mode, float32, standard memory format, without the identity classifiers, that
    maps images to the tuple of its retrieval features in :data:`OUTPUT_NAMES` order (the components it has)."""

    def __init__(self, net: ICGNet) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format).eval()
        self.net.heads = _IdentifierHeads(self.net.heads)
        for head in self.net.heads.values():
            # the identity classifiers are for training; a TorchScript archive would keep their weights (55 MB for
            # ResNet-50 ICG and 751 identities), the ONNX exporter drops them as unused
            head.classifier = nn.Identity()
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(value for _, value in to_reid_features(self.net(images)).items())


def _example(image_size: tuple[int, int]) -> Tensor:
    return torch.randn(_EXAMPLE_BATCH, 3, *image_size, generator=torch.Generator().manual_seed(0))


def _metadata(module: ICGModule, example: Tensor) -> ExportMetadata:
    """The metadata of ``module``'s export; the outputs are the components that ``extract`` gives for ``example``."""
    features = module.net.extract(example.to(module.device))
    return ExportMetadata(
        image_size=tuple(example.shape[2:]),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        outputs=tuple(OUTPUT_NAMES[name] for name, _ in features.items()),
        num_parts=features.num_parts,
        version=version("icg"),
    )


def export_onnx(module: ICGModule, path: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Writes the inference path of ``module`` as an ONNX file (atomically; module docstring for the graph).

    Args:
        module: a trained module (left unchanged: a copy is exported).
        path: the ``.onnx`` file to write.
        opset: the ONNX opset (default :data:`ONNX_OPSET`).

    Returns:
        ``path``.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (``pip install icg[onnx]``).
    """
    for name in ("onnx", "onnxscript"):
        _require(name, "exporting to ONNX")
    example = _example(tuple(module.hparams.image_size))
    metadata = _metadata(module, example)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            _InferencePath(module.net),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(metadata.outputs),
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata.to_strings().items():
        proto.metadata_props.add(key=key, value=value)
    return atomic_write(path, lambda stream: stream.write(proto.SerializeToString()))


def export_torchscript(module: ICGModule, path: str | Path) -> Path:
    """Writes the inference path of ``module`` as a TorchScript archive (atomically; module docstring).

    The traced module returns the tuple of outputs in the order of ``icg.outputs`` in the metadata; load it with
    ``torch.jit.load(path, _extra_files={"icg.json": ""})`` to read the metadata, or with :class:`ExportedModel`.

    Args:
        module: a trained module (left unchanged: a copy is exported).
        path: the file to write (``.pt`` or ``.ts`` by convention).

    Returns:
        ``path``.
    """
    example = _example(tuple(module.hparams.image_size))
    extra = {_METADATA_FILE: json.dumps(_metadata(module, example).to_strings())}
    with torch.no_grad(), _quiet_torchscript():
        # the network's input checks read shapes; they hold for every batch, so their constant trace is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_InferencePath(module.net), (example,))
        return atomic_write(path, lambda stream: torch.jit.save(traced, stream, _extra_files=extra))


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Hides torch's ``torch.jit.* is deprecated`` warnings: TorchScript is what trackers load (they cannot read a
    ``torch.export`` file), so it is exported on purpose; docs/DECISIONS.md says so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _require(name: str, purpose: str) -> Any:
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
            extra = {_METADATA_FILE: ""}
            with _quiet_torchscript():
                self._module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
            if not extra[_METADATA_FILE]:
                raise ValueError(f"{self.path} is a TorchScript archive without icg.json: not written by `icg export`")
            strings = json.loads(extra[_METADATA_FILE])
        else:
            self.format = "onnx"
            ort = _require("onnxruntime", f"running {self.path}")
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


def export_checkpoint(
    *,
    ckpt_path: str,
    output: str,
    format: Literal["onnx", "torchscript"] = "onnx",
    opset: int = ONNX_OPSET,
) -> Path:
    """``icg export``: writes the inference path of a checkpoint as an ONNX file or a TorchScript archive.

    Args:
        ckpt_path: a checkpoint written by ``icg fit``.
        output: the file to write (e.g. ``model.onnx``, ``model.pt``).
        format: ``onnx`` or ``torchscript``.
        opset: the ONNX opset (``onnx`` only).
    """
    module = load_for_inference(ckpt_path, device="cpu")
    if format == "onnx":
        path = export_onnx(module, output, opset=opset)
    elif format == "torchscript":
        path = export_torchscript(module, output)
    else:
        raise ValueError(f"--format must be onnx or torchscript, got {format!r}")
    metadata = ExportedModel(path).metadata
    print(
        f"{format} model written to {path}: images [B, 3, {metadata.image_size[0]}, {metadata.image_size[1]}] "
        f"-> {', '.join(metadata.outputs)}"
    )
    return path
