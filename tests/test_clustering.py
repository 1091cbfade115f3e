"""Tests of the part clustering: K-means back-end, part ordering, streaming pass, callback schedule and resume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import Dataset

from icg.clustering import (
    ClusteringResult,
    PartClustering,
    SphericalKMeans,
    cluster_part_labels,
    height_embedding,
    kmeans_plusplus,
    parts_top_to_bottom,
    shared_part_centroids,
)
from icg.data import SyntheticDataModule
from icg.model import PixelPartClassifier
from icg.module import ICGModule
from icg.part_labels import PartLabels

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ crafted data
class MapDataset(Dataset):
    """Items whose ``image`` *is* the feature map, for an identity ``feature_fn``."""

    def __init__(self, maps: list[Tensor]) -> None:
        self.maps = maps

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.maps[index]}


def band_maps(
    num_images: int, *, height: int = 12, width: int = 4, channels: int = 8, seed: int = 0
) -> tuple[list[Tensor], list[Tensor]]:
    """Feature maps with three horizontal bands of distinct directions in a foreground box, and low-norm
    background; bands of unequal height, box shifted per image, band directions permuted per call.

    Returns:
        maps ``[C, h, w]`` and the expected labels ``[h, w]`` (1, 2, 3 top to bottom, 0 background).
    """
    rng = np.random.default_rng(seed)
    directions = rng.permutation(channels)[:3]
    maps, expected = [], []
    for _ in range(num_images):
        top = int(rng.integers(0, 2))
        bottom = height - int(rng.integers(0, 2))
        left = int(rng.integers(0, 2))
        # head short, torso long, legs medium
        cut1 = top + (bottom - top) // 5
        cut2 = top + 3 * (bottom - top) // 5
        fmap = 0.1 * torch.from_numpy(rng.random((channels, height, width))).float()
        labels = torch.zeros(height, width, dtype=torch.uint8)
        for part, (start, stop) in enumerate([(top, cut1), (cut1, cut2), (cut2, bottom)], start=1):
            noise = 0.05 * torch.from_numpy(rng.standard_normal((channels, stop - start, 2))).float()
            fmap[:, start:stop, left : left + 2] = noise
            fmap[directions[part - 1], start:stop, left : left + 2] += 1.0
            labels[start:stop, left : left + 2] = part
        maps.append(fmap)
        expected.append(labels)
    return maps, expected


class FakeModule(LightningModule):
    """The surface :class:`PartClustering` needs (:class:`icg.contracts.LabeledModel`)."""

    fg_threshold = 0.5
    fg_signal = "activation"

    def __init__(self, num_rows: int, label_size: tuple[int, int], num_parts: int = 3) -> None:
        super().__init__()
        self.part_labels = PartLabels(num_rows, num_parts, label_size)
        self.modes: list[bool] = []

    def feature_maps(self, images: Tensor) -> Tensor:
        self.modes.append(self.training)
        return images


def identity(images: Tensor) -> Tensor:
    return images


# ----------------------------------------------------------------------------------------------- K-means parts
def test_parts_top_to_bottom_hand_case() -> None:
    # cluster 2 sits on top (rows 0, 1), cluster 0 in the middle, cluster 1 at the bottom; cluster 3 is empty
    assignment = np.array([2, 2, 0, 0, 1, 1])
    rows = np.array([0, 1, 5, 6, 9, 9])
    assert parts_top_to_bottom(assignment, rows, 4).tolist() == [2, 3, 1, 4]


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


# ------------------------------------------------------------------------------------------- streaming pass
class RenamingKMeans(SphericalKMeans):
    """Spherical K-means whose cluster ids are rotated by ``shift``: the same partition under other names."""

    def __init__(self, num_clusters: int, shift: int) -> None:
        super().__init__(num_clusters)
        self.shift = shift

    def fit_predict(self, points: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        return (super().fit_predict(points, rng=rng) + self.shift) % self.num_clusters


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_bands_are_numbered_top_to_bottom_whatever_the_cluster_ids(shift: int) -> None:
    maps, expected, pids = [], [], []
    for pid in range(4):
        identity_maps, identity_expected = band_maps(3, seed=pid)
        maps += identity_maps
        expected += identity_expected
        pids += [pid] * 3
    result = cluster_part_labels(
        identity, MapDataset(maps), pids, 3, label_size=(12, 4), batch_size=5, kmeans=RenamingKMeans(3, shift)
    )
    assert result.labeled.all()
    assert torch.equal(result.labels, torch.stack(expected))
    assert result.clustered_identities == 4 and result.skipped_identities == 0
    fg_cells = sum(int((e > 0).sum()) for e in expected)
    assert result.foreground_cells == fg_cells and result.total_cells == 12 * 12 * 4
    part_cells = torch.stack(expected).flatten().bincount(minlength=4)[1:]
    assert torch.equal(result.part_cells, part_cells)


def test_identities_interleaved_in_the_dataset_are_grouped() -> None:
    maps_a, expected_a = band_maps(3, seed=10)
    maps_b, expected_b = band_maps(3, seed=11)
    # dataset rows alternate between the two identities; rows must keep their own labels
    maps = [maps_a[0], maps_b[0], maps_a[1], maps_b[1], maps_a[2], maps_b[2]]
    expected = [expected_a[0], expected_b[0], expected_a[1], expected_b[1], expected_a[2], expected_b[2]]
    result = cluster_part_labels(identity, MapDataset(maps), [7, 3, 7, 3, 7, 3], 3, label_size=(12, 4), batch_size=4)
    assert torch.equal(result.labels, torch.stack(expected))


def test_shards_cover_disjoint_identities_and_sum_to_the_whole() -> None:
    maps, pids = [], []
    for pid in range(5):
        maps += band_maps(2, seed=20 + pid)[0]
        pids += [pid] * 2
    dataset = MapDataset(maps)
    whole = cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4))
    shards = [
        cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), rank=r, world_size=2) for r in range(2)
    ]
    assert not (shards[0].labeled & shards[1].labeled).any()
    assert torch.equal(shards[0].labels + shards[1].labels, whole.labels)
    assert torch.equal(shards[0].labeled | shards[1].labeled, whole.labeled)


def test_same_seed_same_labels_and_the_seed_matters() -> None:
    # structureless features: the partition is decided by the seeding alone
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(6, 8, 4, generator=generator) for _ in range(6)]
    dataset, pids = MapDataset(maps), [0] * 3 + [1] * 3

    def run(seed: int) -> Tensor:
        module = FakeModule(len(maps), (8, 4))
        PartClustering(seed=seed).cluster(module, dataset, pids)
        return module.part_labels.labels.clone()

    first = run(0)
    assert torch.equal(first, run(0))
    assert any(not torch.equal(first, run(seed)) for seed in range(1, 5))


def test_too_few_foreground_cells_leaves_rows_unlabeled_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    maps, pids = band_maps(2, seed=30)[0], [0, 0]
    for pid in (1, 2):
        # one image with only two foreground cells: fewer than K = 3
        sparse = torch.full((8, 12, 4), 0.01)
        sparse[0, 3, 1] = sparse[0, 9, 2] = 1.0
        maps.append(sparse)
        pids.append(pid)
    module = FakeModule(len(maps), (12, 4))
    module.train()
    with caplog.at_level(logging.WARNING, logger="icg.clustering"):
        result = PartClustering().cluster(module, MapDataset(maps), pids)
    assert module.part_labels.labeled.tolist() == [True, True, False, False]
    assert not module.part_labels.labels[2:].any()
    assert result.skipped_identities == 2 and result.clustered_identities == 1
    records = [r for r in caplog.records if r.name == "icg.clustering"]
    assert len(records) == 1 and "2 of 3 identities" in records[0].getMessage()
    # the pass ran in eval mode and gave the module its mode back
    assert module.modes and not any(module.modes) and module.training


def person_on_backdrop_maps(pids: list[int], *, height: int = 12, width: int = 4) -> tuple[list[Tensor], list[Tensor]]:
    """Feature maps of people in three bands of their own directions (channels ``3p .. 3p + 2`` for identity
    ``p``), in a box that moves between images, over a backdrop that every image shares (channel ``3 * #ids``)
    and whose norm (3) is three times the person's: eq. 3 finds the backdrop, the identity contrast the person.

    Returns:
        maps ``[C, h, w]`` and the expected labels ``[h, w]`` (bands 1, 2, 3 top to bottom, 0 backdrop).
    """
    rng = np.random.default_rng(0)
    backdrop = 3 * len(set(pids))
    maps, expected = [], []
    for pid in pids:
        fmap = 0.02 * torch.from_numpy(rng.standard_normal((backdrop + 1, height, width))).float()
        fmap[backdrop] += 3.0
        labels = torch.zeros(height, width, dtype=torch.uint8)
        top, left = int(rng.integers(0, 3)), int(rng.integers(0, 2))
        for part in range(3):
            rows = slice(top + 3 * part, top + 3 * part + 3)
            fmap[:, rows, left : left + 2] = 0.02 * torch.randn(backdrop + 1, 3, 2)
            fmap[3 * pid + part, rows, left : left + 2] += 1.0
            labels[rows, left : left + 2] = part + 1
        maps.append(fmap)
        expected.append(labels)
    return maps, expected


def test_identity_signal_labels_the_person_where_the_norms_label_the_backdrop() -> None:
    pids = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # identity 3 has a single image: it cannot be compared, left unlabeled
    maps, expected = person_on_backdrop_maps(pids)
    dataset = MapDataset(maps)
    result = cluster_part_labels(
        identity, dataset, pids, 3, label_size=(12, 4), fg_signal="identity", fg_threshold="otsu", batch_size=4
    )
    assert torch.equal(result.labels[:9], torch.stack(expected[:9]))
    assert result.labeled.tolist() == [True] * 9 + [False]
    assert result.clustered_identities == 3 and result.skipped_identities == 1
    assert result.foreground_cells == 9 * 18
    # the paper's rule on the same maps marks the backdrop, whose norms are the larger
    by_norm = cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), fg_threshold="otsu")
    assert not (by_norm.labels[:9] > 0)[torch.stack(expected[:9]) > 0].any()
    with pytest.raises(ValueError, match="fg_signal"):
        cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), fg_signal="norm")
    with pytest.raises(ValueError, match="reference_images"):
        cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), reference_images=0)


def test_height_embedding_hand_case() -> None:
    # 5 rows: angles 0, pi/8, pi/4, 3 pi/8, pi/2
    points = height_embedding(torch.tensor([0, 2, 4]), 5, 2.0)
    half = 2.0 * np.sqrt(0.5)
    np.testing.assert_allclose(points.numpy(), [[2.0, 0.0], [half, half], [0.0, 2.0]], atol=1e-6)
    # the inner product falls with the distance in rows: w^2 at the same row, w^2 cos(pi / 4) two rows apart, 0
    # from top to bottom
    gram = (points @ points.T).numpy()
    np.testing.assert_allclose(gram[0], [4.0, 4.0 * np.sqrt(0.5), 0.0], atol=1e-6)


def uniform_person_maps(pids: list[int], *, height: int = 12, width: int = 4) -> list[Tensor]:
    """A person that looks the same from head to feet (one direction per identity, small noise) in the middle two
    columns, over a low-norm backdrop: appearance alone gives K-means no reason to cut it into bands."""
    generator = torch.Generator().manual_seed(0)
    maps = []
    for pid in pids:
        fmap = 0.05 * torch.rand(8, height, width, generator=generator)
        fmap[:, :, 1:3] = 0.1 * torch.randn(8, height, 2, generator=generator)
        fmap[pid, :, 1:3] += 1.0
        maps.append(fmap)
    return maps


def is_banded(labels: Tensor) -> bool:
    """In both columns of the person (1, 2) the labels never decrease downwards: every part is one band."""
    person = labels[:, 1:3].long()
    return bool((person[1:] >= person[:-1]).all())


def test_height_weight_makes_each_identity_s_clusters_bands_of_the_person() -> None:
    pids = [pid for pid in range(4) for _ in range(3)]
    dataset = MapDataset(uniform_person_maps(pids))

    def labels(height_weight: float) -> Tensor:
        result = cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), height_weight=height_weight)
        assert result.labeled.all() and result.foreground_cells == len(pids) * 12 * 2
        return result.labels

    banded = labels(2.0)
    assert all(is_banded(image) for image in banded)
    assert all(set(image[:, 1:3].unique().tolist()) == {1, 2, 3} for image in banded)
    assert not banded[:, :, [0, 3]].any()
    # the callback passes its weight on: same seed and iterations, same labels
    module = FakeModule(len(pids), (12, 4))
    PartClustering(height_weight=2.0).cluster(module, dataset, pids)
    assert torch.equal(module.part_labels.labels, banded)
    # the features alone cut the uniform person at random
    assert not all(is_banded(image) for image in labels(0.0))
    with pytest.raises(ValueError, match="height_weight"):
        cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), height_weight=-1.0)
    with pytest.raises(ValueError, match="height_weight"):
        PartClustering(height_weight=float("nan"))


def split_people_maps() -> tuple[list[Tensor], list[Tensor], list[int]]:
    """Three identities, three images each, whose people show different body parts in the middle two columns:
    identity 0 a head (rows 0-3, channel 0) over a torso (rows 4-11, channel 1), identity 1 a torso (rows 0-5) over
    legs (rows 6-11, channel 2), identity 2 all three (rows 0-3, 4-7, 8-11); a low-norm backdrop elsewhere.

    Returns:
        maps ``[8, 12, 4]``, the expected shared labels (head 1, torso 2, legs 3, backdrop 0) and the pids.
    """
    generator = torch.Generator().manual_seed(0)
    layouts = {0: [(0, 4, 1), (4, 12, 2)], 1: [(0, 6, 2), (6, 12, 3)], 2: [(0, 4, 1), (4, 8, 2), (8, 12, 3)]}
    maps, expected, pids = [], [], []
    for pid, layout in layouts.items():
        for _ in range(3):
            fmap = 0.05 * torch.rand(8, 12, 4, generator=generator)
            labels = torch.zeros(12, 4, dtype=torch.uint8)
            for start, stop, part in layout:
                fmap[:, start:stop, 1:3] = 0.05 * torch.randn(8, stop - start, 2, generator=generator)
                fmap[part - 1, start:stop, 1:3] += 1.0
                labels[start:stop, 1:3] = part
            maps.append(fmap)
            expected.append(labels)
            pids.append(pid)
    return maps, expected, pids


def test_shared_parts_give_a_body_part_one_label_for_every_identity() -> None:
    maps, expected, pids = split_people_maps()
    dataset = MapDataset(maps)
    centroids = shared_part_centroids(identity, dataset, pids, 3, label_size=(12, 4))
    # the clusters are the three body parts, numbered by their mean row over all identities: head (rows 0-3),
    # torso (mean row 5.4), legs (8.9)
    np.testing.assert_allclose(centroids[:, :3].abs().argmax(dim=1).numpy(), [0, 1, 2])
    result = cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), centroids=centroids)
    assert torch.equal(result.labels, torch.stack(expected))
    assert result.labeled.all() and result.clustered_identities == 3
    # the callback runs both passes
    module = FakeModule(len(pids), (12, 4))
    PartClustering(shared_parts=True).cluster(module, dataset, pids)
    assert torch.equal(module.part_labels.labels, torch.stack(expected))
    # per identity, the torso of identity 0 is part 2 and that of identity 1 part 1 (or split)
    per_identity = cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4)).labels
    assert not torch.equal(per_identity, torch.stack(expected))


def test_shared_centroids_do_not_depend_on_the_number_of_processes() -> None:
    maps, _, pids = split_people_maps()
    dataset = MapDataset(maps)
    options = dict(label_size=(12, 4), height_weight=1.0, max_points=40)
    whole = shared_part_centroids(identity, dataset, pids, 3, **options)
    assert whole.shape == (3, 8 + 2)
    np.testing.assert_allclose(whole.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # two ranks in threads: the reduction sums what both contribute, as a DDP all-reduce would
    barrier, shares = threading.Barrier(2), [None, None]

    def rank_reduce(rank: int) -> Callable[[Tensor], Tensor]:
        def reduce(tensor: Tensor) -> Tensor:
            shares[rank] = tensor.clone()
            barrier.wait()
            total = shares[0] + shares[1]
            barrier.wait()
            return total

        return reduce

    ranks: list[Tensor] = [torch.empty(0)] * 2

    def run(rank: int) -> None:
        ranks[rank] = shared_part_centroids(
            identity, dataset, pids, 3, rank=rank, world_size=2, reduce=rank_reduce(rank), **options
        )

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for centroids in ranks:
        torch.testing.assert_close(centroids, whole)
    with pytest.raises(ValueError, match="reduce"):
        shared_part_centroids(identity, dataset, pids, 3, label_size=(12, 4), world_size=2)
    with pytest.raises(ValueError, match="max_points"):
        shared_part_centroids(identity, dataset, pids, 3, label_size=(12, 4), max_points=0)
    with pytest.raises(ValueError, match="same feature_fn and height_weight"):
        cluster_part_labels(identity, dataset, pids, 3, label_size=(12, 4), centroids=whole)
    # two foreground cells in all cannot form three parts: no centroids, and the callback labels nothing
    sparse = torch.full((8, 12, 4), 0.01)
    sparse[0, 3, 1] = sparse[0, 9, 2] = 1.0
    assert shared_part_centroids(identity, MapDataset([sparse]), [0], 3, label_size=(12, 4)).shape == (0, 8)
    module = FakeModule(1, (12, 4))
    result = PartClustering(shared_parts=True).cluster(module, MapDataset([sparse]), [0])
    assert result.skipped_identities == 1 and not module.part_labels.labeled.any()


def test_bad_inputs_name_the_argument() -> None:
    maps = band_maps(2)[0]
    with pytest.raises(ValueError, match="3 pids"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0, 0], 3, label_size=(12, 4))
    with pytest.raises(ValueError, match="label_size"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0], 3, label_size=(16, 8))
    with pytest.raises(ValueError, match="part labels for 5 images"):
        PartClustering().cluster(FakeModule(5, (12, 4)), MapDataset(maps), [0, 0])
    with pytest.raises(ValueError, match="every_n_epochs"):
        PartClustering(every_n_epochs=0)


# ------------------------------------------------------------------------------------ refitting the classifier
def brute_force_statistics(
    maps: list[Tensor], labels: Tensor, labeled: Tensor, num_parts: int, position: bool
) -> tuple[Tensor, Tensor]:
    """``sum z z^T`` and ``sum z onehot(label)^T`` over every cell of the labelled images, one cell at a time;
    ``z`` = [unit feature, (the row centre in (-1, 1),) 1]."""
    size = maps[0].shape[0] + position + 1
    gram = torch.zeros(size, size, dtype=torch.float64)
    moments = torch.zeros(size, num_parts + 1, dtype=torch.float64)
    for fmap, image_labels, is_labeled in zip(maps, labels, labeled):
        if not is_labeled:
            continue
        height = fmap.shape[1]
        for y in range(height):
            for x in range(fmap.shape[2]):
                cell = fmap[:, y, x].double()
                row = [(y + 0.5) / height * 2 - 1] if position else []
                z = torch.cat([cell / cell.norm(), torch.tensor([*row, 1.0], dtype=torch.float64)])
                gram += torch.outer(z, z)
                moments[:, int(image_labels[y, x])] += z
    return gram, moments


@pytest.mark.parametrize(("fg_signal", "position"), [("activation", False), ("identity", False), ("identity", True)])
def test_classifier_statistics_sum_over_every_cell_of_the_labelled_images(fg_signal: str, position: bool) -> None:
    if fg_signal == "identity":
        pids = [0, 0, 0, 1, 1, 1, 2]  # identity 2 has one image: unlabeled, left out of the sums
        maps = person_on_backdrop_maps(pids)[0]
    else:
        maps, pids = band_maps(3, seed=40)[0], [0, 0, 0]
        sparse = torch.full((8, 12, 4), 0.01)  # identity 1: too few foreground cells, unlabeled
        sparse[0, 3, 1] = 1.0
        maps, pids = maps + [sparse], pids + [1]
    result = cluster_part_labels(
        identity,
        MapDataset(maps),
        pids,
        3,
        label_size=(12, 4),
        fg_signal=fg_signal,
        fg_threshold="otsu" if fg_signal == "identity" else 0.5,
        batch_size=4,
        classifier_inputs=PixelPartClassifier(8, 3, position=position).inputs,
    )
    assert not result.labeled[-1] and result.labeled[:-1].all()
    gram, moments = brute_force_statistics(maps, result.labels, result.labeled, 3, position)
    # float32 features summed image by image: float32 rounding
    torch.testing.assert_close(result.gram, gram, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.moments, moments, rtol=1e-5, atol=1e-5)
    assert cluster_part_labels(identity, MapDataset(maps), pids, 3, label_size=(12, 4)).gram is None


class ModuleWithClassifier(FakeModule):
    """:class:`FakeModule` with the part classifier that ``refit_classifier`` sets."""

    def __init__(
        self, num_rows: int, label_size: tuple[int, int], channels: int, num_parts: int = 3, position: bool = False
    ) -> None:
        super().__init__(num_rows, label_size, num_parts)
        self.part_classifier = PixelPartClassifier(channels, num_parts, position=position)


@pytest.mark.parametrize("method", ["least_squares", "discriminant"])
@pytest.mark.parametrize("position", [False, True])
def test_refit_makes_the_classifier_predict_the_new_labels(position: bool, method: str) -> None:
    maps, pids = [], []
    for pid in range(3):
        maps += band_maps(3, seed=50 + pid)[0]
        pids += [pid] * 3
    module = ModuleWithClassifier(len(maps), (12, 4), channels=8, position=position)
    before = module.part_classifier(torch.stack(maps)).argmax(dim=1)
    clustering = PartClustering(refit_classifier=True, refit_ridge=1e-3, refit_method=method)
    clustering.cluster(module, MapDataset(maps), pids)
    labels = module.part_labels.labels.long()
    assert not torch.equal(before, labels)
    predicted = module.part_classifier(torch.stack(maps)).argmax(dim=1)
    # a linear fit, not a perfect one: 94% of the cells (17% before)
    assert (predicted == labels).float().mean() > 0.9
    # without the option the classifier is left alone
    untouched = ModuleWithClassifier(len(maps), (12, 4), channels=8)
    weight = untouched.part_classifier.conv.weight.clone()
    PartClustering().cluster(untouched, MapDataset(maps), pids)
    assert torch.equal(untouched.part_classifier.conv.weight, weight)


def test_refit_needs_a_part_classifier_and_a_positive_ridge() -> None:
    maps = band_maps(2)[0]
    with pytest.raises(TypeError, match="part_classifier"):
        PartClustering(refit_classifier=True).cluster(FakeModule(2, (12, 4)), MapDataset(maps), [0, 0])
    with pytest.raises(ValueError, match="refit_ridge"):
        PartClustering(refit_ridge=0.0)
    with pytest.raises(ValueError, match="refit_method"):
        PartClustering(refit_method="lasso")


# ------------------------------------------------------------------------------------------ trainer and resume
@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the Trainer runs: their tensors are tiny, and on a small shared machine a second
    thread mostly waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clustering") / "synthetic"
    make_datamodule(root).prepare_data()
    return root


def make_datamodule(root: Path) -> SyntheticDataModule:
    return SyntheticDataModule(
        root=str(root),
        num_train_ids=4,
        num_test_ids=2,
        image_size=(64, 32),
        num_identities=2,
        num_instances=2,
        num_workers=0,
    )


def make_module(datamodule: SyntheticDataModule) -> ICGModule:
    torch.manual_seed(0)
    return ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=(64, 32),
        backbone="resnet18",
        weights=None,
        num_parts=3,
        warmup_epochs=1,
    )


class RecordingClustering(PartClustering):
    """Remembers at which epochs it clustered."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clustered_at: list[int] = []

    def cluster(self, module: LightningModule, *args: Any, **kwargs: Any) -> ClusteringResult:
        self.clustered_at.append(module.trainer.current_epoch)
        return super().cluster(module, *args, **kwargs)


class SaveAtEpochStart(Callback):
    """Saves a checkpoint in ``on_train_epoch_start`` of epoch 0, after the clustering callback: resuming from it,
    Lightning runs the epoch-start hooks of epoch 0 again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


class LabelSnapshots(Callback):
    """The module's labels as training sees them at each epoch start (after the clustering callback)."""

    def __init__(self) -> None:
        self.labels: dict[int, Tensor] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.labels[trainer.current_epoch] = pl_module.part_labels.labels.clone()


def fit(
    module: ICGModule,
    root: Path,
    workdir: Path,
    callbacks: list[Callback],
    max_epochs: int,
    ckpt_path: Path | None = None,
) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=make_datamodule(root), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_resume_keeps_labels_and_the_schedule(synthetic_root: Path, tmp_path: Path) -> None:
    datamodule = make_datamodule(synthetic_root)
    checkpoint = tmp_path / "epoch-start.ckpt"
    clustering = RecordingClustering(every_n_epochs=2, batch_size=64)
    module = make_module(datamodule)
    trainer = fit(module, synthetic_root, tmp_path, [clustering, SaveAtEpochStart(checkpoint)], max_epochs=1)
    assert clustering.clustered_at == [0]
    assert module.part_labels.labeled.all() and module.part_labels.labels.any()
    for k in range(1, 4):
        assert f"cluster/part_share/{k}" in trainer.callback_metrics
    assert 0.0 < float(trainer.callback_metrics["cluster/foreground_share"]) <= 1.0
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["state_dict"]["part_labels.labeled"].all()

    resumed = RecordingClustering(every_n_epochs=2, batch_size=64)
    snapshots = LabelSnapshots()
    fresh = make_module(datamodule)
    fit(fresh, synthetic_root, tmp_path, [resumed, snapshots], max_epochs=3, ckpt_path=checkpoint)
    # Lightning restarts epoch 0 with its start hooks: the labels come from the checkpoint, and epoch 0 is not
    # clustered again; epoch 2 is
    assert 0 in snapshots.labels
    assert resumed.clustered_at == [2]
    assert torch.equal(snapshots.labels[0], saved["state_dict"]["part_labels.labels"])
    assert torch.equal(snapshots.labels[1], saved["state_dict"]["part_labels.labels"])


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("shared", [False, True], ids=["per-identity", "shared-parts"])
def test_ddp_ranks_agree_with_a_single_process_run(synthetic_root: Path, tmp_path: Path, shared: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tests/scripts/ddp_clustering.py"), str(synthetic_root), str(tmp_path)]
    command += ["shared"] * shared
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = torch.load(tmp_path / "single.pt")
    assert reference["labeled"].all() and reference["labels"].any()
    for rank in ranks:
        assert torch.equal(rank["labels"], reference["labels"])
        assert torch.equal(rank["labeled"], reference["labeled"])
        # the refit sums its statistics over the ranks: one classifier, the single process's (up to the order
        # of the float sums)
        for name, value in reference["classifier"].items():
            torch.testing.assert_close(rank["classifier"][name], value, rtol=1e-4, atol=1e-5)
    # both ranks took part: each clustered a disjoint, non-empty share of the identities
    assert all(rank["local_identities"] > 0 for rank in ranks)
    assert sum(rank["local_identities"] for rank in ranks) == reference["identities"] == 4


def test_callback_does_nothing_for_a_model_without_parts() -> None:
    bot = ICGModule(num_classes=3, backbone="resnet18", weights=None, use_afm=False, use_ppc=False, use_fsg=False)
    trainer = SimpleNamespace(current_epoch=0, datamodule=None)
    PartClustering().on_train_epoch_start(trainer, bot)  # no datamodule needed, no error


def test_a_module_without_part_labels_is_named() -> None:
    class Plain(LightningModule):
        fg_threshold = 0.5
        fg_signal = "activation"

        def feature_maps(self, images: Tensor) -> Tensor:
            return images

    with pytest.raises(TypeError, match="PartClustering needs a LabeledModel.*Plain has no part_labels"):
        PartClustering().cluster(Plain(), MapDataset([torch.ones(2, 4, 2)]), [0])
    trainer = SimpleNamespace(current_epoch=0, datamodule=SimpleNamespace(num_workers=0))
    with pytest.raises(TypeError, match="ClusteringData.*SimpleNamespace has no cluster_dataset, train_records"):
        PartClustering().on_train_epoch_start(trainer, FakeModule(2, (4, 2)))
