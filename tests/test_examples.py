"""The examples run: the quick-start notebook and the custom-dataset script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    monkeypatch.delenv("ICG_CHECKPOINT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "mAP" in text and "rank-1" in text
    # part maps, ranked list and adjacency are displayed as pictures
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3


@pytest.mark.slow
def test_custom_dataset_example_trains_and_validates(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_dataset.py"), "--root", str(tmp_path / "mine"), "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PersonFolders(" in result.stdout and "val/mAP" in result.stdout


@pytest.mark.slow
def test_embed_crops_example_trains_exports_and_ranks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed_crops.py"), "--root", str(tmp_path / "crops"), "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "query crops" in result.stdout and "rank-1 by ICG distance" in result.stdout
    assert (tmp_path / "crops" / "model.onnx").is_file() or (tmp_path / "crops" / "model.pt").is_file()
