"""Spherical K-means: the k-means++ seeding, separated clusters found, the process's threads left alone."""

from __future__ import annotations

import numpy as np
import torch

from icg.parts import SphericalKMeans, kmeans_plusplus


def test_kmeans_plusplus_spreads_centers_over_separated_groups() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.eye(4, 16, dtype=np.float32), [50, 5, 5, 40], axis=0)
    centers = kmeans_plusplus(groups, 4, rng)
    # D^2 sampling never picks a point that coincides with a centre already drawn while others are left
    assert sorted(int(c.argmax()) for c in centers) == [0, 1, 2, 3]


def test_spherical_kmeans_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, size=400)
    points = np.eye(5, 32, dtype=np.float32)[truth] + 0.1 * rng.standard_normal((400, 32)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    found = SphericalKMeans(5, niter=10).fit_predict(points, rng=np.random.default_rng(0))
    # same partition up to renaming: a bijection between found and true ids
    pairs = set(zip(found.tolist(), truth.tolist()))
    assert len(pairs) == 5 and len({a for a, _ in pairs}) == 5


def test_spherical_kmeans_leaves_the_process_thread_count_as_it_found_it() -> None:
    # faiss and torch share one OpenMP runtime: the single-threaded K-means of a small identity must not leave
    # torch on one thread afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        points = np.eye(4, 16, dtype=np.float32)[np.arange(40) % 4]
        SphericalKMeans(4, niter=2).fit_predict(points, rng=np.random.default_rng(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
