"""Deployment: exporting a trained model (:mod:`.export`), running the exported file (:mod:`.exported`), embedding
person crops for trackers (:mod:`.embedder`) and the ``icg index`` / ``icg search`` commands (:mod:`.gallery`).

Everything here that reads an exported file (``ExportedModel``, ``Embedder``, ``icg index``, ``icg search``)
imports neither Lightning nor the training code; only a checkpoint (``.ckpt``) brings them in.
"""

from icg.deploy.embedder import Embedder
from icg.deploy.export import ONNX_OPSET, export_checkpoint, export_onnx, export_torchscript
from icg.deploy.exported import INPUT_NAME, OUTPUT_NAMES, ExportedModel, ExportMetadata
from icg.deploy.gallery import index_folder, search_index

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "Embedder",
    "ExportMetadata",
    "ExportedModel",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
    "index_folder",
    "search_index",
]
