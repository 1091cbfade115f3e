"""``benchmarks/gpu_check.sh --dry-run``: the GPU check's steps on the CPU with tiny sizes, so that it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_dry_and_prints_its_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "BUDGET_SECONDS": "400"}
    command = ["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run", "--data", str(tmp_path / "synthetic")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=450)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in done.stdout.splitlines() if line[:2] == "| "
    }
    # the CUDA tests were collected (and skipped here): the marker still selects them
    assert "skipped" in rows.pop("CUDA tests (pytest -m cuda)")
    expected = [
        f"{model} train images/s, {path}"
        for model in ("BoT", "ICG")
        for path in ("decoded, CPU-augmented, 0 workers", "memory cache, augmented on the device")
    ]
    expected += [
        "clustering pass at Market-1501 size (faiss on the CPU)",
        "ICG training epoch at Market-1501 size, cached",
        "clustering pass / training epoch",
        "evaluation 60 x 300: ICG distances (6 parts, 64-d)",
        "evaluation 60 x 300: ranking + mAP/mINP/CMC",
        "evaluation peak memory",
    ]
    assert list(rows) == ["measurement", *expected]
    for model_row in expected[:4]:
        assert float(rows[model_row].split()[0]) > 0
