"""Shared part centroids: the height arc against a hand case, a body part given one label for every identity, and
centroids that do not depend on how identities are spread over processes."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from icg.parts import PartClustering, SphericalKMeans, cluster_part_labels, height_points, shared_part_centroids
from icg.parts.labelling import stream_identities
from tests.parts.helpers import FakeModule, MapDataset, identity

SIZE = (12, 4)


def test_height_points_hand_case() -> None:
    # 5 rows: angles 0, pi/8, pi/4, 3 pi/8, pi/2; a zero appearance leaves the arc, scaled by 1 / sqrt(1 + w^2)
    points = height_points(torch.zeros(3, 1), torch.tensor([0, 2, 4]), 5, weight=2.0) * math.sqrt(5)
    half = 2.0 * np.sqrt(0.5)
    np.testing.assert_allclose(points[:, 1:].numpy(), [[2.0, 0.0], [half, half], [0.0, 2.0]], atol=1e-6)
    # the inner product falls with the distance in rows: w^2 at the same row, w^2 cos(pi / 4) two rows apart, 0
    # from top to bottom
    np.testing.assert_allclose((points @ points.T)[0].numpy(), [4.0, 4.0 * np.sqrt(0.5), 0.0], atol=1e-6)
    unit = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    np.testing.assert_allclose(height_points(unit, torch.arange(6), 6).norm(dim=1).numpy(), 1.0, rtol=1e-6)


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
            fmap = 0.05 * torch.rand(8, *SIZE, generator=generator)
            labels = torch.zeros(*SIZE, dtype=torch.uint8)
            for start, stop, part in layout:
                fmap[:, start:stop, 1:3] = 0.05 * torch.randn(8, stop - start, 2, generator=generator)
                fmap[part - 1, start:stop, 1:3] += 1.0
                labels[start:stop, 1:3] = part
            maps.append(fmap)
            expected.append(labels)
            pids.append(pid)
    return maps, expected, pids


def centroids_of(dataset: MapDataset, pids: list[int], **options) -> Tensor:
    stream = stream_identities(
        identity,
        dataset,
        pids,
        label_size=SIZE,
        fg_signal="activation",
        fg_threshold=0.5,
        batch_size=4,
        num_workers=0,
        device=torch.device("cpu"),
        rank=options.pop("rank", 0),
        world_size=options.pop("world_size", 1),
        progress=False,
    )
    kmeans = SphericalKMeans(3)
    return shared_part_centroids(stream, 3, num_identities=len(set(pids)), height=SIZE[0], kmeans=kmeans, **options)


def test_shared_parts_give_a_body_part_one_label_for_every_identity() -> None:
    maps, expected, pids = split_people_maps()
    dataset = MapDataset(maps)
    centroids = centroids_of(dataset, pids)
    # the clusters are the three body parts, numbered by their mean row over all identities: head (rows 0-3),
    # torso (mean row 5.4), legs (8.9)
    np.testing.assert_allclose(centroids[:, :3].abs().argmax(dim=1).numpy(), [0, 1, 2])
    result = cluster_part_labels(identity, dataset, pids, 3, label_size=SIZE, centroids=centroids)
    truth = torch.stack(expected)
    person = truth > 0

    def agreement(labels: Tensor) -> float:
        return float((labels == truth)[person].float().mean())

    # the height pulls the top rows of identity 1's torso (rows 0-1) to the head's label: 12 of the 216 person
    # cells; every other cell gets its body part's label, and every image's parts are bands, top to bottom
    assert result.labeled.all() and result.clustered_identities == 3
    assert agreement(result.labels) == pytest.approx(1 - 12 / 216)
    assert torch.equal(result.labels[pids.index(2)], truth[pids.index(2)])
    person_columns = result.labels[:, :, 1:3].long()
    assert bool((person_columns[:, 1:] >= person_columns[:, :-1]).all())
    # the callback runs both passes
    module = FakeModule(len(pids), SIZE)
    PartClustering(shared_parts=True).cluster(module, dataset, pids)
    assert torch.equal(module.part_labels.labels, result.labels)
    # per identity, label k names another body part for each identity: the torso of identity 0 is part 2..3,
    # that of identity 1 part 1
    per_identity = cluster_part_labels(identity, dataset, pids, 3, label_size=SIZE).labels
    assert agreement(per_identity) < 0.7


def test_shared_centroids_do_not_depend_on_the_number_of_processes() -> None:
    maps, _, pids = split_people_maps()
    dataset = MapDataset(maps)
    whole = centroids_of(dataset, pids, max_points=40)
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
        ranks[rank] = centroids_of(dataset, pids, max_points=40, rank=rank, world_size=2, reduce=rank_reduce(rank))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for centroids in ranks:
        torch.testing.assert_close(centroids, whole)
    with pytest.raises(ValueError, match="centroids have 10 dimensions, the cells with their height 6"):
        cluster_part_labels(identity, MapDataset([m[:4] for m in maps]), pids, 3, label_size=SIZE, centroids=whole)


def test_too_few_cells_in_all_give_no_centroids_and_no_labels() -> None:
    sparse = torch.full((8, *SIZE), 0.01)
    sparse[0, 3, 1] = sparse[0, 9, 2] = 1.0  # two foreground cells in all cannot form three parts
    assert centroids_of(MapDataset([sparse]), [0]).shape == (0, 8 + 2)
    module = FakeModule(1, SIZE)
    result = PartClustering(shared_parts=True).cluster(module, MapDataset([sparse]), [0])
    assert result.skipped_identities == 1 and not module.part_labels.labeled.any()
