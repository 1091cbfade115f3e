"""Deployment runs without the training side: in a fresh interpreter, ``Embedder`` on an exported file and
``icg index`` / ``icg search`` leave Lightning, jsonargparse and the training module unimported, and ``import icg``
does not import the command line. And the ONNX file keeps the contract a tracker's ONNX back-end relies on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.deploy import export_onnx, export_torchscript
from tests.deploy.test_export import SIZE, TOLERANCE, images, tiny_module

TRAINING = ("lightning", "jsonargparse", "icg.module", "icg.cli.lightning_cli", "icg.clustering")


def run_fresh(code: str) -> dict:
    """Runs ``code`` in a new interpreter; it must print one JSON line last, which is returned."""
    script = "import json, sys\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("deploy")
    module = tiny_module("icg")
    try:
        return export_onnx(module, folder / "model.onnx")
    except ImportError:  # without the onnx extra, the TorchScript file stands in
        return export_torchscript(module, folder / "model.pt")


def test_import_icg_loads_neither_the_command_line_nor_lightning() -> None:
    loaded = run_fresh(
        """
        import icg
        print(json.dumps({"loaded": [m for m in sys.modules if m in ("icg.cli", "lightning", "jsonargparse")]}))
        """
    )
    assert loaded == {"loaded": []}


@pytest.mark.slow
def test_an_exported_file_embeds_indexes_and_searches_without_the_training_side(
    exported_file: Path, tmp_path: Path
) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), np.uint8)).save(gallery / f"{i}.png")
    result = run_fresh(
        f"""
        import numpy as np
        from icg import Embedder
        features = Embedder({str(exported_file)!r})([np.zeros((50, 20, 3), np.uint8)])
        after_embedder = [m for m in {TRAINING!r} if m in sys.modules]
        from icg.cli import main
        main(["index", "--model", {str(exported_file)!r}, "--folder", {str(gallery)!r},
              "--output", {str(tmp_path / "gallery.faiss")!r}, "--device", "cpu"])
        main(["search", "--index", {str(tmp_path / "gallery.faiss")!r}, "--query", {str(gallery / "0.png")!r},
              "--top_k", "3", "--device", "cpu"])
        print(json.dumps({{"rows": len(features), "after_embedder": after_embedder,
                           "after_search": [m for m in {TRAINING!r} if m in sys.modules]}}))
        """
    )
    assert result == {"rows": 1, "after_embedder": [], "after_search": []}


@pytest.mark.slow
def test_the_onnx_file_has_one_image_input_and_the_global_feature_first(tmp_path: Path) -> None:
    """What a tracker's ONNX back-end does: feed ``[B, 3, H, W]`` normalised with ImageNet's mean and std to the one
    input and read the first output only; that must be the global feature of ``extract``."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module = tiny_module("icg")
    path = export_onnx(module, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    (single,) = graph.input
    dims = single.type.tensor_type.shape.dim
    assert single.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(dims) == 4 and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *SIZE]
    assert graph.output[0].name == "global"
    properties = {prop.key: json.loads(prop.value) for prop in onnx.load(str(path)).metadata_props}
    assert properties["icg.mean"] == list(IMAGENET_MEAN) and properties["icg.std"] == list(IMAGENET_STD)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(3, seed=4)
    first = session.run(None, {single.name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(first), module.extract(x).global_feat, rtol=0, atol=TOLERANCE)
