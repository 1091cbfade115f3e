"""Part centroids shared by every identity (not in the paper): one spherical K-means over the foreground cells of all
identities, with each cell's height, so that label ``k`` is one cluster for every identity.

The paper clusters each identity on its own and numbers its clusters top to bottom; identities split the person
differently (one splits the upper body in three, another the legs), so label ``k`` names different body parts for
different identities and the shared part classifier learns a blend. Here a first pass keeps a sample of every
identity's foreground cells, with its row appended as an arc (:func:`height_points`), clusters the sample once and
numbers the centroids top to bottom; the labelling pass then gives each cell the label of its nearest centroid
(:func:`~icg.parts.labelling.cluster_part_labels` with ``centroids``). ``docs/DECISIONS.md`` has the measurement that
keeps it (:class:`~icg.parts.PartClustering`, ``shared_parts=True``).

The sample holds up to ``ceil(max_points / identities)`` foreground cells of each identity, drawn from
``(seed, the identity's position among the sorted ids)``; under DDP each identity has its own slot in a buffer the
ranks sum, so the sample, and the centroids, do not depend on how identities are spread over processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from icg.parts.kmeans import SphericalKMeans, parts_top_to_bottom

if TYPE_CHECKING:  # the labelling pass imports this module
    from icg.parts.labelling import IdentityCells

__all__ = ["HEIGHT_WEIGHT", "height_points", "shared_part_centroids"]

HEIGHT_WEIGHT = 2.0
"""``w``, the weight of a cell's height against its appearance (the value the shared parts were measured with)."""


def height_points(cells: Tensor, rows: Tensor, height: int, weight: float = HEIGHT_WEIGHT) -> Tensor:
    """Unit cell features ``[n, C]`` with their rows appended: ``[n, C + 2]`` points of norm 1.

    The row becomes the arc ``w (cos a, sin a)``, ``a = (pi / 2) row / (height - 1)``, and the point is divided by
    ``sqrt(1 + w^2)``: every point keeps one norm (spherical K-means needs no other), and the inner product of two
    cells gains ``w^2 cos(a - a')`` (over ``1 + w^2``), a similarity in height that falls smoothly from the same row
    to the opposite end of the map.
    """
    angle = rows.double() * (math.pi / 2 / max(height - 1, 1))
    arc = (weight * torch.stack([angle.cos(), angle.sin()], dim=1)).float()
    return torch.cat([cells, arc], dim=1) / math.sqrt(1 + weight**2)


def shared_part_centroids(
    identities: Iterable[IdentityCells],
    num_parts: int,
    *,
    num_identities: int,
    height: int,
    kmeans: SphericalKMeans,
    seed: int = 0,
    max_points: int = 20_000,
    reduce: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The shared part centroids (module docstring).

    Args:
        identities: this process's identities (:func:`~icg.parts.labelling.stream_identities`).
        num_parts: ``K``.
        num_identities: identities over all processes (the sample's slots).
        height: ``h`` of the maps.
        kmeans: the K-means back-end, with ``K`` clusters.
        seed: the draws of the sample and the seeding.
        max_points: the sample's size at most.
        reduce: sums a tensor over the processes (DDP; ``None`` in a single process).
        device: where ``reduce`` sums.

    Returns:
        ``float32 [K', C + 2]`` unit centroids, numbered top to bottom by the mean row of their sample cells; ``K' < K``
        only when a cluster came out empty, ``K' = 0`` when all identities together have fewer than ``K`` foreground
        cells (the caller then clusters each identity on its own).
    """
    if kmeans.num_clusters != num_parts:
        raise ValueError(f"shared_part_centroids: kmeans has {kmeans.num_clusters} clusters, num_parts is {num_parts}")
    per_identity = -(-max_points // max(num_identities, 1))
    local: list[tuple[int, Tensor]] = []  # (ordinal, [n, D + 1]: points and their rows)
    for identity in identities:
        rows = identity.cell_rows()
        if not len(rows):
            continue
        points = height_points(torch.cat(identity.cells), rows, height)
        drawn = np.random.default_rng((seed, identity.ordinal)).permutation(len(points))[:per_identity]
        keep = torch.from_numpy(np.sort(drawn))
        local.append((identity.ordinal, torch.cat([points[keep], rows[keep, None].float()], dim=1)))
    dim = local[0][1].shape[1] if local else 0
    if reduce is not None:  # a rank without identities learns the dimension from the others
        known = reduce(torch.tensor([dim, int(dim > 0)], dtype=torch.int64, device=device)).cpu()
        dim = int(known[0]) // max(int(known[1]), 1)
    if dim == 0:
        return torch.zeros(0, 0)
    # one slot per identity, zeros elsewhere: the sum over the ranks is the union, in the order of the sorted ids
    sample = torch.zeros(num_identities, per_identity, dim + 1)
    for ordinal, points in local:
        sample[ordinal, : len(points), :dim] = points
        sample[ordinal, : len(points), dim] = 1.0
    if reduce is not None:
        sample = reduce(sample.to(device)).cpu()
    sample = sample.flatten(0, 1)
    sample = sample[sample[:, dim] > 0]
    points, rows = sample[:, : dim - 1].contiguous(), sample[:, dim - 1]
    if len(points) < num_parts:
        return points.new_zeros(0, points.shape[1])
    assignment = kmeans.fit_predict(points.numpy(), rng=np.random.default_rng((seed, num_identities)))
    order = np.argsort(parts_top_to_bottom(assignment, rows.numpy(), num_parts))
    order = order[np.bincount(assignment, minlength=num_parts)[order] > 0]
    sums = torch.zeros(num_parts, points.shape[1]).index_add_(0, torch.from_numpy(assignment), points)
    return F.normalize(sums[torch.from_numpy(order)], dim=1)
