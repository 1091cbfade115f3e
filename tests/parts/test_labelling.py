"""The streaming labelling pass: parts numbered top to bottom, identities grouped, shards that sum to the whole, the
seed, the identity rule, and errors that name the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from icg.parts import SphericalKMeans, cluster_part_labels, parts_top_to_bottom
from tests.parts.helpers import MapDataset, band_maps, identity, person_on_backdrop_maps


def test_parts_top_to_bottom_hand_case() -> None:
    # cluster 2 sits on top (rows 0, 1), cluster 0 in the middle, cluster 1 at the bottom; cluster 3 is empty
    assignment = np.array([2, 2, 0, 0, 1, 1])
    rows = np.array([0, 1, 5, 6, 9, 9])
    assert parts_top_to_bottom(assignment, rows, 4).tolist() == [2, 3, 1, 4]


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
        return cluster_part_labels(identity, dataset, pids, 3, label_size=(8, 4), seed=seed).labels

    first = run(0)
    assert torch.equal(first, run(0))
    assert any(not torch.equal(first, run(seed)) for seed in range(1, 5))


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


def test_bad_inputs_name_the_argument() -> None:
    maps = band_maps(2)[0]
    with pytest.raises(ValueError, match="3 pids"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0, 0], 3, label_size=(12, 4))
    with pytest.raises(ValueError, match="label_size"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0], 3, label_size=(16, 8))
    with pytest.raises(ValueError, match="kmeans has 4 clusters, num_parts is 3"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0], 3, label_size=(12, 4), kmeans=SphericalKMeans(4))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        cluster_part_labels(identity, MapDataset(maps), [0, 0], 3, label_size=(12, 4), seed=-1)
