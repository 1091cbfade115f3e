"""What every benchmark prints first: the machine its numbers come from."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """CPU, cores, load, GPU if any, Python and torch versions, on one line."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), load average {os.getloadavg()[0]:.1f}"
        f"{gpu}; Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def status_kib(field: str) -> int:
    """A memory field of ``/proc/self/status`` (Linux), e.g. ``VmRSS`` (resident now) or ``VmHWM`` (peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
