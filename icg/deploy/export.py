"""Writing the inference path of an :class:`~icg.module.ICGModule` as an ONNX or TorchScript file (``icg export``);
:mod:`icg.deploy.exported` runs such a file and documents its contract.

The exported graph is what :meth:`ICGModule.extract <icg.module.ICGModule.extract>` computes. Exporters: ONNX through
``torch.onnx.export(dynamo=True)`` (``torch.export``, the exporter PyTorch develops; needs ``onnx`` and
``onnxscript``, the ``onnx`` extra), opset 18; TorchScript through ``torch.jit.trace``. Both trace one batch; the
network's Python-level checks (shapes, dtypes) hold for every batch size, so the traced graph is the same for all of
them, which the parity tests check against ``extract`` at two batch sizes.
"""

from __future__ import annotations

import copy
import json
import keyword
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.deploy.exported import (
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAMES,
    ExportedModel,
    ExportMetadata,
    quiet_torchscript,
    require_package,
)
from icg.files import atomic_write
from icg.model import ICGNet, to_reid_features

if TYPE_CHECKING:
    from icg.module import ICGModule

__all__ = ["ONNX_OPSET", "export_checkpoint", "export_onnx", "export_torchscript"]

ONNX_OPSET = 18
"""The ONNX opset of exported files: ONNX Runtime runs it from version 1.14 (2023) on."""

# the example batch of the traces: torch.export specialises a dimension of size 1, so it must be larger
_EXAMPLE_BATCH = 2


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
    """A copy of the network in eval mode, float32, standard memory format, that maps images to the tuple of its
    retrieval features in :data:`OUTPUT_NAMES` order (the components it has). The network holds no identity
    classifier (the loss does), so the file carries the inference weights only."""

    def __init__(self, net: ICGNet) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format).eval()
        self.net.heads = _IdentifierHeads(self.net.heads)
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
        require_package(name, "exporting to ONNX")
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
    extra = {METADATA_FILE: json.dumps(_metadata(module, example).to_strings())}
    with torch.no_grad(), quiet_torchscript():
        # the network's input checks read shapes; they hold for every batch, so their constant trace is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_InferencePath(module.net), (example,))
        return atomic_write(path, lambda stream: torch.jit.save(traced, stream, _extra_files=extra))


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
    from icg.predict import load_for_inference  # the training side: Lightning, the module

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
