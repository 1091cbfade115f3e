"""``docs/RESULTS.md`` is what ``benchmarks/results.py`` makes of the run logs: nobody edits it by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_results_document_is_generated_from_the_logs() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "results.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
