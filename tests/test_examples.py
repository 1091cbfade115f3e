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


def run_example(script: str, root: Path, cwd: Path) -> str:
    """Runs ``examples/<script> --root <root> --epochs 1`` from ``cwd``; returns its output, after checking it ran."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--root", str(root), "--epochs", "1"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_custom_dataset_example_trains_and_validates(tmp_path: Path) -> None:
    out = run_example("custom_dataset.py", tmp_path / "mine", tmp_path)
    assert "PersonFolders(" in out and "val/mAP" in out


@pytest.mark.slow
def test_embed_crops_example_trains_exports_and_ranks(tmp_path: Path) -> None:
    out = run_example("embed_crops.py", tmp_path / "crops", tmp_path)
    assert "query crops" in out and "rank-1 by ICG distance" in out
    assert (tmp_path / "crops" / "model.onnx").is_file() or (tmp_path / "crops" / "model.pt").is_file()
