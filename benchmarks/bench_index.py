"""The gallery index against the exact ICG ranking: recall of the exact top-10, query time and memory.

Usage: ``python benchmarks/bench_index.py [--gallery 100000 --queries 500 --dim 512 --parts 6 --noise 0.8]``

A synthetic gallery of feature vectors with ICG's structure: identities of 10 images each, every identity a centre
per part (``[K, C]``) made of a direction shared by everyone, one of 16 attributes of that part (a shirt colour:
identities that share it look alike there) and its own; an image's parts are its identity's centres plus Gaussian
noise of a strength drawn per part and image (``noise`` x U(0.5, 1.5)), some parts invisible (each with probability
0.15, and in 30% of the images a bottom occlusion from a random part down); its global, foreground and graph
features are means of its *visible* parts plus noise of their own, so that an occluded image's global feature
drifts from its identity's, as a real one does. The queries are other images of gallery identities.

Exact: the dense ICG distance (eq. 15, :func:`icg.retrieval.icg_distance_rows`, in chunks of query rows) to every
gallery image, and its top 10. Approximate: :class:`icg.retrieval.GalleryIndex`, FAISS top-N on the searched
vector, re-ranked by the exact ICG distance. Reported per setting: recall@10 (the share of the exact top 10 that
the index returns), milliseconds per query (queries searched together, as a service would batch them), the
speed-up over the dense ranking, and the FAISS index's size. Memory is measured in fresh processes (a process's
resident size does not shrink when it frees): the dense ranking with the gallery's features loaded, and the
default index loaded from its files, with its features memory-mapped, before and after searching the queries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg.features import ReIDFeatures
from icg.retrieval import GalleryIndex, NormalizedFeatures, icg_distance_rows
from icg.retrieval.index import DEFAULT_CANDIDATES

GiB = 2**30
PER_IDENTITY = 10
ATTRIBUTES = 16  # per part: identities that share one (a shirt colour) look alike there


def synthetic_features(
    identities: torch.Tensor, centres: torch.Tensor, noise: float, generator: torch.Generator
) -> ReIDFeatures:
    """Features of one image per entry of ``identities`` (see the module docstring); ``centres`` ``[I, K, C]``."""
    count, (_, parts, dim) = len(identities), centres.shape
    strength = noise * torch.empty(count, parts, 1).uniform_(0.5, 1.5, generator=generator)
    part_features = centres[identities] + strength * torch.randn(count, parts, dim, generator=generator)
    visible = torch.rand(count, parts, generator=generator) > 0.15
    occluded = torch.rand(count, generator=generator) < 0.3
    first_hidden = torch.randint(1, parts, (count,), generator=generator)
    visible &= ~(occluded[:, None] & (torch.arange(parts)[None] >= first_hidden[:, None]))
    weights = visible.float()
    mean_visible = torch.einsum("nk,nkc->nc", weights, part_features) / weights.sum(1, keepdim=True).clamp_min(1)

    def branch(scale: float) -> torch.Tensor:
        return mean_visible + scale * noise * torch.randn(count, dim, generator=generator)

    return ReIDFeatures(
        global_feat=branch(0.3), foreground=branch(0.4), parts=part_features, graph=branch(0.5), visibility=visible
    )


def make_data(args: argparse.Namespace) -> tuple[ReIDFeatures, ReIDFeatures, torch.Tensor, torch.Tensor]:
    """Gallery and query features and their identities (module docstring)."""
    generator = torch.Generator().manual_seed(0)
    num_ids, parts, dim = args.gallery // PER_IDENTITY, args.parts, args.dim

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    prototypes = normal(parts, ATTRIBUTES, dim)
    attributes = torch.randint(0, ATTRIBUTES, (num_ids, parts), generator=generator)
    centres = (
        0.5 * normal(1, parts, dim)
        + 0.8 * prototypes[torch.arange(parts), attributes]
        + 0.6 * normal(num_ids, parts, dim)
    )
    gallery_ids = torch.arange(args.gallery) % num_ids
    chunks = [
        synthetic_features(gallery_ids[start : start + 10_000], centres, args.noise, generator)
        for start in range(0, args.gallery, 10_000)
    ]
    query_ids = torch.randint(0, num_ids, (args.queries,), generator=generator)
    return (
        ReIDFeatures.cat(chunks),
        synthetic_features(query_ids, centres, args.noise, generator),
        gallery_ids,
        query_ids,
    )


def nbytes(features: ReIDFeatures) -> int:
    return sum(value.numel() * value.element_size() for _, value in features.items())


def exact_top_k(query: ReIDFeatures, gallery: NormalizedFeatures, k: int, chunk: int = 64) -> torch.Tensor:
    rows = icg_distance_rows(query, gallery)
    return torch.cat(
        [rows(s, min(s + chunk, len(query))).topk(k, dim=1, largest=False).indices for s in range(0, len(query), chunk)]
    )


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=1).float()
    return hits.mean().item()


@dataclass
class Timed:
    seconds: float
    value: object


def timed(fn: Callable[[], object]) -> Timed:
    start = time.perf_counter()
    value = fn()
    return Timed(time.perf_counter() - start, value)


def resident_gib() -> dict[str, float]:
    """This process's resident memory (GiB): now (``VmRSS``), at its peak (``VmHWM``), and now in anonymous memory
    (``RssAnon``) and in pages of mapped files (``RssFile``, which the system can drop and read again)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) / 2**20 for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def child(mode: str, folder: Path, top_k: int) -> None:
    """``--child``: in a fresh process, the dense ranking (``exact``) or the saved index (``index``) on the saved
    queries; prints its memory as JSON (GiB: after the imports, after loading, peak after searching)."""
    query = NormalizedFeatures(**torch.load(folder / "query.pt", weights_only=True))
    report = {"start": resident_gib()["VmRSS"]}
    if mode == "exact":
        metadata = torch.load(
            folder / "gallery.meta.pt", weights_only=True
        )  # read into memory, as a dense ranking needs
        layout = tuple((name, tuple(shape)) for name, shape in metadata["layout"])
        gallery = NormalizedFeatures(metadata["vectors"], metadata["visibility"], layout)
        report["loaded"] = resident_gib()["VmRSS"]
        exact_top_k(query, gallery, top_k)
    else:
        index = GalleryIndex.load(folder / "gallery.faiss")
        report["loaded"] = resident_gib()["VmRSS"]
        index.search(query, top_k=top_k)
    end = resident_gib()
    report |= {"peak": end["VmHWM"], "anonymous": end["RssAnon"], "file": end["RssFile"]}
    print(json.dumps(report))


def measure_memory(mode: str, folder: Path, top_k: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, str(folder), "--top-k", str(top_k)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--dim", type=int, default=512, help="C, the width of every feature (ResNet-18: 512)")
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--noise", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 500, 1000, 2000])
    parser.add_argument(
        "--keys", nargs="*", default=["global", "concat"], choices=["global", "concat"], help="none: the default only"
    )
    parser.add_argument("--nlist", type=int, default=1024, help="IVF cells of the IVF settings (0: flat only)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--scratch", default=None, help="folder for the saved index (default: the system's temp)")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads (1: steadiest on a shared CPU)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], Path(args.child[1]), args.top_k)
        return
    __import__("faiss").omp_set_num_threads(args.threads)
    print(describe())
    print(f"faiss threads {__import__('faiss').omp_get_max_threads()}")

    data = timed(lambda: make_data(args))
    gallery, query, gallery_ids, query_ids = data.value
    raw = nbytes(gallery)
    gallery = NormalizedFeatures.of(gallery)  # what both hold: the gallery normalised once, as an index stores it
    print(
        f"gallery {len(gallery):,} images ({len(gallery) // PER_IDENTITY:,} identities), {len(query)} queries, "
        f"C = {args.dim}, K = {args.parts}: features {raw / GiB:.2f} GiB, normalised "
        f"{gallery.vectors.numel() * 4 / GiB:.2f} GiB (generated in {data.seconds:.0f} s)"
    )

    exact = timed(lambda: exact_top_k(query, gallery, args.top_k))
    exact_ms = 1000 * exact.seconds / len(query)
    same_id = (gallery_ids[exact.value] == query_ids[:, None]).float().mean().item()
    print(
        f"\nexact (dense eq. 15 on the normalised gallery, chunks of 64 queries): {exact_ms:.1f} ms / query; "
        f"{same_id:.2f} of its top {args.top_k} are the query's identity"
    )

    print(
        "\n| searched vector | FAISS index | candidates N | recall@10 | ms / query | speed-up | FAISS index size | "
        "build |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in args.keys:
        for nlist in [0] + ([args.nlist] if args.nlist else []):
            built = timed(lambda key=key, nlist=nlist: GalleryIndex.build(gallery, key=key, nlist=nlist))
            index = built.value
            size = index.index.ntotal * index.index.d * 4 / GiB
            for nprobe in args.nprobe if nlist else [1]:
                index.nprobe = nprobe
                name = f"IVF{nlist}, nprobe {nprobe}" if nlist else "flat"
                for candidates in args.candidates:
                    result = timed(
                        lambda index=index, n=candidates: index.search(query, top_k=args.top_k, candidates=n)
                    )
                    ms = 1000 * result.seconds / len(query)
                    print(
                        f"| {key} | {name} | {candidates} | {recall(result.value.indices, exact.value):.4f} | "
                        f"{ms:.2f} | {exact_ms / ms:.1f}x | {size:.2f} GiB | {built.seconds:.0f} s |",
                        flush=True,
                    )
            del index, built

    # the default setting through its files, the features memory-mapped (what `icg search` does), and the memory
    # of both ways, each in a fresh process
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        saved = timed(lambda: GalleryIndex.build(gallery, key="global").save(Path(folder) / "gallery.faiss"))
        loaded = timed(lambda: GalleryIndex.load(saved.value))
        result = timed(lambda: loaded.value.search(query, top_k=args.top_k))
        ms = 1000 * result.seconds / len(query)
        print(
            f"\nthe default index saved ({saved.seconds:.0f} s), loaded ({loaded.seconds:.1f} s) and searched (global, "
            f"flat, {DEFAULT_CANDIDATES} candidates): recall@10 {recall(result.value.indices, exact.value):.4f}, "
            f"{ms:.2f} ms / query ({exact_ms / ms:.1f}x)"
        )
        normalized_query = NormalizedFeatures.of(query)
        torch.save(normalized_query.__dict__, Path(folder) / "query.pt")
        for mode, what in (("exact", "dense ranking"), ("index", "index from its files")):
            memory = measure_memory(mode, Path(folder), args.top_k)
            print(
                f"memory of the {what} (fresh process, GiB): {memory['start']:.2f} after the imports, "
                f"{memory['loaded']:.2f} loaded, {memory['peak']:.2f} at the peak of {len(query)} queries; after them "
                f"{memory['anonymous']:.2f} anonymous and {memory['file']:.2f} in pages of mapped files"
            )


if __name__ == "__main__":
    main()
