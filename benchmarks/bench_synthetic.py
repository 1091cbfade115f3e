"""Speed of the synthetic pedestrian generator: planning, drawing alone, and a full generation to disk.

Usage: ``python benchmarks/bench_synthetic.py [--train-ids 100 --test-ids 100 --height 128 --width 64 --repeats 3]``

Prints the machine, then medians over ``--repeats`` runs: plan time, drawing throughput (images/s, no encoding or
writing), full ``generate_synthetic`` throughput (JPEG + PNG mask written to a temporary folder) and the ratio of
the two (the share of time spent encoding and writing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg.data.synthetic import generate_synthetic, plan_synthetic, render_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-ids", type=int, default=100)
    parser.add_argument("--test-ids", type=int, default=100)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = (args.height, args.width)

    print(f"machine: {describe()}")
    print(f"numpy {np.__version__}, Pillow {PIL.__version__}")

    plan_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        plan = plan_synthetic(args.train_ids, args.test_ids)
        plan_times.append(time.perf_counter() - start)
    print(
        f"plan: {len(plan)} images ({args.train_ids} train ids, {args.test_ids} test ids), "
        f"median {statistics.median(plan_times) * 1e3:.1f} ms"
    )

    draw_rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for image in plan:
            render_synthetic(image, size)
        draw_rates.append(len(plan) / (time.perf_counter() - start))
    draw = statistics.median(draw_rates)
    print(f"draw only, {size[0]}x{size[1]}: median {draw:.0f} images/s")

    write_rates = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            generate_synthetic(Path(folder) / "market", args.train_ids, args.test_ids, image_size=size)
            write_rates.append(len(plan) / (time.perf_counter() - start))
    write = statistics.median(write_rates)
    print(
        f"generate_synthetic (plan + draw + JPEG/PNG to disk), {size[0]}x{size[1]}: median {write:.0f} images/s, "
        f"{len(plan) / write:.1f} s for the dataset"
    )
    print(f"ratio draw-only / full generation: {draw / write:.2f}x (encoding and writing cost)")


if __name__ == "__main__":
    main()
