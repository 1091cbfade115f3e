"""Benchmark of the re-ID evaluation: ICG distances (eq. 15) and ranking + mAP / mINP / CMC.

Cases (``--case``):

- ``market``: Market-1501 sizes (3,368 queries x 15,913 gallery, 751 ids, 6 cameras, 2048-d). Times the
  single-feature (global, BoT) distance, the ICG composite distance (global + foreground + graph + K = 6 parts
  with random visibility, all 2048-d), and ``evaluate_rank`` on the composite distances, against the textbook
  per-query numpy loop (stable argsort per query, run on ``--ref-queries`` queries and extrapolated to all).
  Ranking is also timed on a structureless random matrix, its worst case (no early last match to stop at).
- ``msmt17``: MSMT17 sizes (11,659 x 82,161, 3,060 ids, 15 cameras), features of ``--msmt-dim`` (default 256:
  2048-d composite features of the gallery alone would take 6 GB). Distances are computed chunk by chunk inside
  ``evaluate_rank`` (``icg_distance_rows``): time and peak memory, single feature and composite.

Each case runs in a fresh subprocess; its peak resident memory is read from ``/proc/self/status`` (VmHWM),
reset after the synthetic data is built, so it shows what the evaluation adds on top of its inputs.

The synthetic features have identity structure (identity prototype + camera offset + per-image noise of random
strength), so that mAP / mINP land in the range of trained models and the ranked lists look like real ones;
the figures reached are printed with the timings.

Usage: ``python benchmarks/bench_evaluation.py [--case market|msmt17|all] [--repeats 3] [--ref-queries 300]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg.metrics import evaluate_rank  # noqa: E402
from icg.retrieval import ReIDFeatures, icg_distance, icg_distance_rows  # noqa: E402

SIZES = {
    "market": dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6),
    "msmt17": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15),
}


def memory_status() -> dict[str, float]:
    """VmRSS and VmHWM in GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 2**20 for key in ("VmRSS", "VmHWM")}


def reset_peak_memory() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def synthetic_set(n: int, dim: int, num_ids: int, num_cams: int, parts: int, gen: torch.Generator, protos: dict):
    """Features with identity structure: ``prototype[id] + camera offset + sigma * noise`` per block."""
    pids = torch.randint(0, num_ids, (n,), generator=gen)
    cams = torch.randint(0, num_cams, (n,), generator=gen)
    # Cosine similarity of two images of one id is about 1 / (1 + scale^2), against noise of about 1 / sqrt(dim)
    # for different ids: keep their ratio at what 2048-d with scale 4 gives (ICG composite, Market size: mAP ~0.9,
    # mINP ~0.5), whatever the width.
    scale = math.sqrt(17.0 * math.sqrt(dim / 2048) - 1.0)
    sigma = scale * torch.exp(0.2 * torch.randn(n, 1, generator=gen))

    def block(name: str) -> torch.Tensor:
        proto, cam = protos[name]
        out = torch.randn(n, dim, generator=gen).mul_(sigma)
        return out.add_(proto[pids]).add_(cam[cams])

    if parts == 0:
        return ReIDFeatures(global_feat=block("global")), pids, cams
    part_feats = torch.stack([block(f"part{k}") for k in range(parts)], dim=1)
    return (
        ReIDFeatures(
            global_feat=block("global"),
            foreground=block("foreground"),
            parts=part_feats,
            graph=block("graph"),
            visibility=torch.rand(n, parts, generator=gen) < 0.8,
        ),
        pids,
        cams,
    )


def make_problem(size: dict[str, int], dim: int, parts: int, seed: int = 0):
    """Query and gallery ``(features, pids, cams)`` of the sizes ``size`` (an entry of :data:`SIZES`)."""
    gen = torch.Generator().manual_seed(seed)
    names = ["global"] + ([] if parts == 0 else ["foreground", "graph", *(f"part{k}" for k in range(parts))])
    protos = {
        name: (
            torch.randn(size["num_ids"], dim, generator=gen),
            0.5 * torch.randn(size["num_cams"], dim, generator=gen),
        )
        for name in names
    }
    query = synthetic_set(size["num_query"], dim, size["num_ids"], size["num_cams"], parts, gen, protos)
    gallery = synthetic_set(size["num_gallery"], dim, size["num_ids"], size["num_cams"], parts, gen, protos)
    return query, gallery


def reference_loop(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50) -> tuple[float, float]:
    """The textbook per-query evaluation (stable argsort, drop junk, cumulative matches): mAP and mINP (the CMC
    curve is built too, as the textbook loop does, so that it costs what it costs there)."""
    aps, inps, cmcs = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        matches = (g_pids[order] == q_pids[i])[~junk]
        if not matches.any():
            continue
        cmcs.append(np.minimum(matches.cumsum()[:max_rank], 1))
        hits = np.flatnonzero(matches)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        inps.append(len(hits) / (hits[-1] + 1))
    return float(np.mean(aps)), float(np.mean(inps))


def run_market(args) -> dict:
    out = {}
    (q1, qp, qc), (g1, gp, gc) = make_problem(SIZES["market"], args.dim, parts=0)
    out["distance_single_s"], _ = median_time(partial(icg_distance, q1, g1), args.repeats)
    del q1, g1
    (q, qp, qc), (g, gp, gc) = make_problem(SIZES["market"], args.dim, parts=6)
    out["distance_icg_s"], distmat = median_time(partial(icg_distance, q, g), args.repeats)
    del q, g
    out["rank_s"], result = median_time(lambda: evaluate_rank(distmat, qp, gp, qc, gc), args.repeats)
    out.update(mAP=result.mAP, mINP=result.mINP, rank1=float(result.cmc[0]))
    sub = slice(0, args.ref_queries)
    ref_time, ref = median_time(
        lambda: reference_loop(distmat[sub].numpy(), qp[sub].numpy(), gp.numpy(), qc[sub].numpy(), gc.numpy()), 1
    )
    check = evaluate_rank(distmat[sub], qp[sub], gp, qc[sub], gc)
    out["reference_matches"] = abs(check.mAP - ref[0]) < 1e-9 and abs(check.mINP - ref[1]) < 1e-9
    out["reference_s"] = ref_time * distmat.shape[0] / args.ref_queries
    noise = torch.rand(distmat.shape, generator=torch.Generator().manual_seed(1))
    out["rank_random_s"], _ = median_time(lambda: evaluate_rank(noise, qp, gp, qc, gc), args.repeats)
    ref_time, _ = median_time(
        lambda: reference_loop(noise[sub].numpy(), qp[sub].numpy(), gp.numpy(), qc[sub].numpy(), gc.numpy()), 1
    )
    out["reference_random_s"] = ref_time * distmat.shape[0] / args.ref_queries
    out["memory_gib"] = memory_status()
    return out


def run_msmt17(args, parts: int) -> dict:
    (q, qp, qc), (g, gp, gc) = make_problem(SIZES["msmt17"], args.msmt_dim, parts=parts)
    base = memory_status()
    reset_peak_memory()
    start = time.perf_counter()
    rows = icg_distance_rows(q, g)  # normalises both sets once
    distance_time = [time.perf_counter() - start]

    def timed_rows(lo: int, hi: int) -> torch.Tensor:
        tic = time.perf_counter()
        out = rows(lo, hi)
        distance_time[0] += time.perf_counter() - tic
        return out

    result = evaluate_rank(timed_rows, qp, gp, qc, gc)
    elapsed = time.perf_counter() - start
    peak = memory_status()
    return {
        "total_s": elapsed,
        "distance_s": distance_time[0],
        "mAP": result.mAP,
        "mINP": result.mINP,
        "rank1": float(result.cmc[0]),
        "rss_inputs_gib": base["VmRSS"],
        "peak_gib": peak["VmHWM"],
        "added_gib": peak["VmHWM"] - base["VmRSS"],
    }


def child(args) -> None:
    if args.child == "market":
        result = run_market(args)
    else:
        result = run_msmt17(args, parts=0 if args.child == "msmt17-global" else 6)
    print("RESULT " + json.dumps(result))


def spawn(case: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--repeats",
        str(args.repeats),
        "--dim",
        str(args.dim),
        "--msmt-dim",
        str(args.msmt_dim),
        "--ref-queries",
        str(args.ref_queries),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def report_market(r: dict, args) -> None:
    print(f"\nMarket-1501 size: 3,368 x 15,913, {args.dim}-d, 751 ids, 6 cameras (median of {args.repeats} runs)")
    print(f"  synthetic figures: mAP {r['mAP']:.3f}, mINP {r['mINP']:.3f}, rank-1 {r['rank1']:.3f}")
    single, icg = r["distance_single_s"], r["distance_icg_s"]
    print(f"  distance, global only         {single:8.3f} s")
    print(
        f"  distance, ICG (3 + 6 parts)   {icg:8.3f} s   = {icg / single:.2f}x single "
        f"(9 feature blocks: 9x the multiply-adds)"
    )
    print(f"  ranking + mAP/mINP/CMC        {r['rank_s']:8.3f} s")
    print(
        f"  numpy per-query loop          {r['reference_s']:8.3f} s   (run on {args.ref_queries} queries, "
        f"extrapolated; same mAP/mINP: {r['reference_matches']})"
    )
    print(f"  speed-up                      {r['reference_s'] / r['rank_s']:8.1f}x")
    print(
        f"  structureless random matrix:  ranking {r['rank_random_s']:.3f} s, loop {r['reference_random_s']:.3f} s"
        f" (extrapolated), speed-up {r['reference_random_s'] / r['rank_random_s']:.1f}x"
    )
    print(f"  process peak RSS              {r['memory_gib']['VmHWM']:8.2f} GiB")


def report_msmt(name: str, r: dict, args) -> None:
    print(f"\nMSMT17 size: 11,659 x 82,161, {args.msmt_dim}-d, {name}, distances chunked inside evaluate_rank")
    print(f"  synthetic figures: mAP {r['mAP']:.3f}, mINP {r['mINP']:.3f}, rank-1 {r['rank1']:.3f}")
    print(
        f"  total {r['total_s']:.2f} s: distances {r['distance_s']:.2f} s (including normalising the features "
        f"once), ranking + mAP/mINP/CMC {r['total_s'] - r['distance_s']:.2f} s"
    )
    print(
        f"  RSS with the inputs built   {r['rss_inputs_gib']:6.2f} GiB;  peak during evaluation "
        f"{r['peak_gib']:6.2f} GiB (+{r['added_gib']:.2f} GiB; the full 11,659 x 82,161 float32 matrix would be "
        f"{11659 * 82161 * 4 / 2**30:.2f} GiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["market", "msmt17", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=2048, help="feature width of the Market-size case")
    parser.add_argument("--msmt-dim", type=int, default=256, help="feature width of the MSMT17-size case")
    parser.add_argument("--ref-queries", type=int, default=300, help="queries the numpy loop runs on")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"machine: {describe()}; numpy {np.__version__}")
    if args.case in ("market", "all"):
        report_market(spawn("market", args), args)
    if args.case in ("msmt17", "all"):
        report_msmt("global feature only", spawn("msmt17-global", args), args)
        report_msmt("ICG composite (3 + 6 parts)", spawn("msmt17-icg", args), args)


if __name__ == "__main__":
    main()
