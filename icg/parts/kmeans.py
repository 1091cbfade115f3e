"""Spherical K-means with faiss (the pseudo-labels' clustering, paper eq. 5): on the CPU, or on one CUDA device.

faiss, spherical (centroids renormalised every iteration, assignment by inner product), ``niter`` Lloyd iterations,
all points used (no subsampling). Centroids start from a k-means++ seeding drawn here with numpy, which avoids most
of the poor local optima that faiss's default seeding (``K`` random points) falls into when parts differ a lot in
size; it also works with any faiss version. On a CUDA device with a faiss build that has GPUs, K-means runs on that
device (one ``StandardGpuResources`` per :class:`SphericalKMeans`, reused), so each DDP rank clusters on its own
GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SphericalKMeans", "kmeans_plusplus", "parts_top_to_bottom"]

_POINTS_PER_THREAD = 2048  # CPU K-means: fewer points than this per OpenMP thread and threads cost more than they give


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "part clustering needs faiss: `pip install faiss-cpu` (or `pip install icg[cpu]`), or a faiss GPU "
            "build for CUDA machines (`pip install icg[gpu]`)"
        ) from error
    return faiss


def kmeans_plusplus(points: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of unit vectors: each new centre is drawn with probability
    proportional to the squared distance ``2 - 2 cos`` to the nearest centre drawn so far.

    Args:
        points: ``float32 [n, d]``, rows of unit norm, ``n >= num_clusters``.
        num_clusters: ``k``.
        rng: source of the draws.

    Returns:
        ``float32 [k, d]`` rows of ``points``.
    """
    n = len(points)
    chosen = [int(rng.integers(n))]
    nearest = np.maximum(2.0 - 2.0 * (points @ points[chosen[0]]), 0.0)
    for _ in range(1, num_clusters):
        total = float(nearest.sum())
        if total > 0.0:
            pick = int(np.searchsorted(np.cumsum(nearest), rng.random() * total, side="right"))
            chosen.append(min(pick, n - 1))
        else:
            # every point coincides with a centre already: any point will do
            chosen.append(int(rng.integers(n)))
        np.minimum(nearest, np.maximum(2.0 - 2.0 * (points @ points[chosen[-1]]), 0.0), out=nearest)
    return np.ascontiguousarray(points[chosen], dtype=np.float32)


class SphericalKMeans:
    """Spherical K-means with faiss, on the CPU or on one CUDA device, seeded by :func:`kmeans_plusplus`.

    Args:
        num_clusters: ``k``.
        niter: Lloyd iterations.
        device: where to run; a CUDA device is used when faiss was built with GPU support, the CPU otherwise.
            The GPU index lives on exactly this device (not spread over all GPUs, as ``faiss.Kmeans(gpu=True)``
            would), so each DDP rank clusters on its own GPU.
    """

    def __init__(self, num_clusters: int, *, niter: int = 20, device: torch.device | str | None = None) -> None:
        if num_clusters < 1:
            raise ValueError(f"SphericalKMeans: num_clusters must be >= 1, got {num_clusters}")
        if niter < 1:
            raise ValueError(f"SphericalKMeans: niter must be >= 1, got {niter}")
        self.faiss = _import_faiss()
        self.num_clusters = num_clusters
        self.niter = niter
        self.device = torch.device("cpu" if device is None else device)
        self.gpu_device: int | None = None
        if self.device.type == "cuda" and self.faiss.get_num_gpus() > 0:
            index = self.device.index
            self.gpu_device = index if index is not None else torch.cuda.current_device()
        self._gpu_resources: Any = None
        self._index: Any = None

    @property
    def on_gpu(self) -> bool:
        return self.gpu_device is not None

    def _flat_index(self, dim: int) -> Any:
        # one inner-product index per dimension, reused: faiss resets it at every iteration anyway
        if self._index is not None and self._index.d == dim:
            return self._index
        if self.on_gpu:
            if self._gpu_resources is None:
                self._gpu_resources = self.faiss.StandardGpuResources()
            config = self.faiss.GpuIndexFlatConfig()
            config.device = self.gpu_device
            self._index = self.faiss.GpuIndexFlatIP(self._gpu_resources, dim, config)
        else:
            self._index = self.faiss.IndexFlatIP(dim)
        return self._index

    def fit_predict(self, points: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Clusters ``points`` and returns the cluster of each.

        Args:
            points: ``float32 [n, d]`` unit vectors, ``n >= num_clusters``.
            rng: draws the k-means++ seeding.

        Returns:
            ``int64 [n]`` cluster ids in ``0..k-1`` (a cluster can end up empty).
        """
        n, dim = points.shape
        k = self.num_clusters
        if n < k:
            raise ValueError(f"SphericalKMeans: {n} points cannot form num_clusters={k} clusters")
        points = np.ascontiguousarray(points, dtype=np.float32)
        params = self.faiss.ClusteringParameters()
        params.niter = self.niter
        params.spherical = True
        params.verbose = False
        params.seed = int(rng.integers(2**31 - 1))
        # use every point (no subsampling) and keep faiss quiet about small identities
        params.max_points_per_centroid = -(-n // k)
        params.min_points_per_centroid = 1
        clustering = self.faiss.Clustering(dim, k, params)
        self.faiss.copy_array_to_vector(kmeans_plusplus(points, k, rng).ravel(), clustering.centroids)
        index = self._flat_index(dim)
        threads = self.faiss.omp_get_max_threads()
        if not self.on_gpu:
            # An identity's problem is small (~1,000 points): OpenMP's start-up and synchronisation then cost
            # more than the arithmetic (2 threads were 2.5x slower than 1 at 1,100 points and only 1.3x faster
            # at 5,000, on 2 cores). The setting is process-wide (torch shares the OpenMP runtime): restore it.
            self.faiss.omp_set_num_threads(max(1, min(threads, n // _POINTS_PER_THREAD)))
        try:
            clustering.train(points, index)
            centroids = self.faiss.vector_to_array(clustering.centroids).reshape(k, dim)
            index.reset()
            index.add(centroids)
            _, assignment = index.search(points, 1)
        finally:
            self.faiss.omp_set_num_threads(threads)
        return assignment[:, 0].astype(np.int64)


def parts_top_to_bottom(assignment: np.ndarray, rows: np.ndarray, num_clusters: int) -> np.ndarray:
    """Part label of each cluster: ``1..K`` in the order of the clusters' mean row (top first).

    Args:
        assignment: ``[n]`` cluster id of each cell, in ``0..K-1``.
        rows: ``[n]`` feature-map row of each cell.
        num_clusters: ``K``.

    Returns:
        ``int64 [K]``: entry ``c`` is the part label of cluster ``c``. Empty clusters come last; ties keep the
        cluster order.
    """
    counts = np.bincount(assignment, minlength=num_clusters)
    sums = np.bincount(assignment, weights=rows.astype(np.float64), minlength=num_clusters)
    mean_row = np.full(num_clusters, np.inf)
    np.divide(sums, counts, out=mean_row, where=counts > 0)
    order = np.argsort(mean_row, kind="stable")
    labels = np.empty(num_clusters, dtype=np.int64)
    labels[order] = np.arange(1, num_clusters + 1)
    return labels
