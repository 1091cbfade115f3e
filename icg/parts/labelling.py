"""Part pseudo-labels by per-identity spherical K-means (paper section 2.2), streaming one identity at a time.

For every identity, the foreground cells (:mod:`icg.parts.foreground`) of the feature maps ``F_g`` of *all* its
images are L2-normalised and clustered into ``K`` clusters; the clusters are numbered ``1..K`` from top to bottom
by the mean row of their cells, background cells are ``0``.

* **Streaming.** The pass walks the dataset sorted by identity and keeps only the current identity's features
  (float32, on the CPU), clustered when its last image has gone by: memory is bounded by the largest identity plus
  one batch, never by the training set. On CUDA the forward pass runs under bf16 autocast (fp16 where the GPU has
  no bf16); the features are taken back to float32.
* **Too few foreground cells.** An identity with fewer foreground cells than ``K`` (under the identity rule, also
  one with a single image, which has nothing to be compared with) is not clustered: its rows stay unlabeled.
* **Processes.** The sorted identities are dealt out to ranks (``ids[rank::world_size]``); each rank labels its
  own rows. Identity ``j`` of the sorted ids draws its K-means seeding from ``(seed, j)``, so the labels do not
  depend on how identities are spread over processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from icg.parts.foreground import (
    REFERENCE_IMAGES,
    FgSignal,
    FgThreshold,
    check_fg_signal,
    check_fg_threshold,
    foreground_target,
    identity_foreground,
)
from icg.parts.kmeans import SphericalKMeans, parts_top_to_bottom
from icg.parts.shared import height_points

__all__ = ["ClusteringResult", "IdentityCells", "cluster_part_labels", "stream_identities"]


@dataclass
class ClusteringResult:
    """Labels and counts of one clustering pass (over one rank's identities, or all of them once reduced).

    Attributes:
        labels: ``uint8 [N, h, w]``: 0 background, ``1..K`` parts top to bottom; 0 in rows not clustered.
        labeled: ``bool [N]``: the row holds clustering results.
        foreground_cells: foreground cells of the images seen.
        total_cells: all cells of the images seen.
        part_cells: ``int64 [K]`` cells given each part ``1..K``.
        clustered_identities: identities clustered.
        skipped_identities: identities with fewer foreground cells than ``K`` (left unlabeled).
        seconds: wall time of the pass.
    """

    labels: Tensor
    labeled: Tensor
    foreground_cells: int = 0
    total_cells: int = 0
    part_cells: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    clustered_identities: int = 0
    skipped_identities: int = 0
    seconds: float = 0.0

    @property
    def foreground_share(self) -> float:
        """Foreground cells / all cells."""
        return self.foreground_cells / max(self.total_cells, 1)

    @property
    def part_share(self) -> Tensor:
        """``float [K]``: each part's share of the clustered foreground cells (sums to 1 when any)."""
        return self.part_cells.double() / max(int(self.part_cells.sum()), 1)


@dataclass
class IdentityCells:
    """One identity as the pass reads it: its position among the sorted ids, its rows (dataset items), and per
    image the foreground mask ``bool [h, w]`` and the unit features of the foreground cells ``[n_i, C]``."""

    ordinal: int
    pid: int
    rows: list[int] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)
    cells: list[Tensor] = field(default_factory=list)

    def cell_rows(self) -> Tensor:
        """``int64 [n]``: the map row of every foreground cell, in the order of ``torch.cat(cells)``."""
        if not self.masks:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([mask.nonzero()[:, 0] for mask in self.masks])


def _unit_cells(feature_map: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B, h * w, C]``, every cell L2-normalised (float32)."""
    return F.normalize(feature_map.float().flatten(2).transpose(1, 2), dim=2)


def stream_identities(
    feature_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    pids: Sequence[int],
    *,
    label_size: tuple[int, int],
    fg_signal: FgSignal,
    fg_threshold: FgThreshold,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    rank: int,
    world_size: int,
    progress: bool,
) -> Iterator[IdentityCells]:
    """This rank's identities (``ids[rank::world_size]`` of the sorted ids), one at a time and complete, with the
    foreground of each image decided by ``fg_signal`` and ``fg_threshold``. Arguments as in
    :func:`cluster_part_labels`."""
    height, width = label_size
    identities = sorted(set(int(pid) for pid in pids))
    ordinal = {pid: j for j, pid in enumerate(identities)}
    rows_of: dict[int, list[int]] = {pid: [] for pid in identities[rank::world_size]}
    for row, pid in enumerate(pids):
        if int(pid) in rows_of:
            rows_of[int(pid)].append(row)
    order = [row for rows in rows_of.values() for row in rows]
    if device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    else:
        autocast = torch.autocast(device.type, enabled=False)

    def batches(rows: Sequence[int]) -> Iterator[Tensor]:
        loader = DataLoader(
            Subset(dataset, rows),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            if not isinstance(batch, dict) or "image" not in batch:
                raise TypeError("cluster_part_labels: dataset items must be dicts with an 'image' tensor")
            with torch.no_grad(), autocast:
                feature_map = feature_fn(batch["image"].to(device, non_blocking=True))
            if feature_map.dim() != 4 or tuple(feature_map.shape[-2:]) != (height, width):
                raise ValueError(
                    f"cluster_part_labels: feature_fn gave shape {tuple(feature_map.shape)}, expected "
                    f"[B, C, {height}, {width}] (label_size)"
                )
            yield feature_map.float()

    if fg_signal == "identity":
        # the same images for every rank and every identity: spread evenly over the dataset
        spread = np.linspace(0, len(dataset) - 1, min(REFERENCE_IMAGES, len(dataset))).round()
        reference_rows = np.unique(spread).astype(np.int64).tolist()
        references = torch.cat([_unit_cells(feature_map) for feature_map in batches(reference_rows)])
        reference_pids = torch.tensor([int(pids[row]) for row in reference_rows], device=device)

    def complete(identity: IdentityCells) -> IdentityCells:
        """Under the identity rule the foreground is decided now that all the identity's images are in."""
        if fg_signal == "identity":
            others = reference_pids != identity.pid
            if len(identity.cells) < 2 or not bool(others.any()):
                identity.masks = [torch.zeros(height, width, dtype=torch.bool) for _ in identity.cells]
            else:
                stacked = torch.stack(identity.cells).to(device)
                masks = identity_foreground(stacked, references[others], label_size, fg_threshold)
                identity.masks = list(masks.cpu())
            identity.cells = [cells[mask.flatten()] for cells, mask in zip(identity.cells, identity.masks)]
        return identity

    current: IdentityCells | None = None
    position = 0
    with tqdm(total=len(order), desc="part clustering", unit="img", disable=not progress, leave=False) as bar:
        for feature_map in batches(order):
            cells = _unit_cells(feature_map).cpu()
            if fg_signal == "activation":
                masks = foreground_target(feature_map, fg_threshold).bool().cpu()
            for i, image_cells in enumerate(cells):
                row = order[position]
                position += 1
                pid = int(pids[row])
                if current is None or current.pid != pid:
                    if current is not None:
                        yield complete(current)
                    current = IdentityCells(ordinal[pid], pid)
                current.rows.append(row)
                if fg_signal == "activation":  # only the foreground is kept
                    current.masks.append(masks[i])
                    image_cells = image_cells[masks[i].flatten()]
                current.cells.append(image_cells)
            bar.update(len(cells))
    if current is not None:
        yield complete(current)


def cluster_part_labels(
    feature_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    pids: Sequence[int],
    num_parts: int,
    *,
    label_size: tuple[int, int],
    fg_signal: FgSignal = "activation",
    fg_threshold: FgThreshold = 0.5,
    kmeans: SphericalKMeans | None = None,
    centroids: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> ClusteringResult:
    """Part pseudo-labels of one rank's identities (module docstring).

    The caller sets the model's mode (eval) beforehand; this function runs ``feature_fn`` under ``no_grad`` (and
    bf16/fp16 autocast on CUDA).

    Args:
        feature_fn: images ``[B, 3, H, W]`` on ``device`` -> feature maps ``F_g`` ``[B, C, h, w]``.
        dataset: items are dicts with an ``"image"`` tensor; item ``i`` is row ``i`` of the labels.
        pids: identity of each item (``len(dataset)`` of them).
        num_parts: ``K``.
        label_size: ``(h, w)`` of the feature maps and labels.
        fg_signal: the foreground score of a cell: ``"activation"`` (eq. 3) or ``"identity"`` (the identity
            contrast; identities with a single image are left unlabeled); see :mod:`icg.parts.foreground`.
        fg_threshold: how each image's scores are split: a share in ``[0, 1]``, or ``"otsu"``.
        kmeans: the K-means back-end to reuse (default: a new :class:`~icg.parts.kmeans.SphericalKMeans` with
            ``num_parts`` clusters on ``device``).
        centroids: ``[K', C + 2]`` part centroids shared by all identities
            (:func:`~icg.parts.shared.shared_part_centroids`): each foreground cell, with its height
            (:func:`~icg.parts.shared.height_points`), gets the label of its nearest centroid (``1..K'`` in their
            order) instead of a K-means of its identity.
        seed: the K-means seeding's seed (>= 0); identity ``j`` of the sorted ids draws from ``(seed, j)``.
        batch_size, num_workers: of the pass's DataLoader.
        device: where ``feature_fn`` runs (default CPU).
        rank, world_size: this process labels the sorted identities ``ids[rank::world_size]``.
        progress: show a progress bar.

    Returns:
        The labels of this rank's rows (zeros elsewhere) and its counts.
    """
    started = time.perf_counter()
    caller = "cluster_part_labels"
    if num_parts < 1:
        raise ValueError(f"{caller}: num_parts must be >= 1, got {num_parts}")
    if len(pids) != len(dataset):
        raise ValueError(f"{caller}: got {len(pids)} pids for a dataset of {len(dataset)} items")
    check_fg_signal(fg_signal, caller)
    check_fg_threshold(fg_threshold, caller)
    if seed < 0:
        raise ValueError(f"{caller}: seed must be >= 0, got {seed}")
    if batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"{caller}: rank must be in [0, world_size={world_size}), got {rank}")
    device = torch.device("cpu" if device is None else device)
    if kmeans is None:
        kmeans = SphericalKMeans(num_parts, device=device)
    elif kmeans.num_clusters != num_parts:
        raise ValueError(f"{caller}: kmeans has {kmeans.num_clusters} clusters, num_parts is {num_parts}")
    if centroids is not None and (centroids.dim() != 2 or not 0 < len(centroids) <= num_parts):
        raise ValueError(
            f"{caller}: centroids must be [K', D] with 0 < K' <= num_parts={num_parts}, got {tuple(centroids.shape)}"
        )
    height, width = label_size
    result = ClusteringResult(
        labels=torch.zeros(len(dataset), height, width, dtype=torch.uint8),
        labeled=torch.zeros(len(dataset), dtype=torch.bool),
        part_cells=torch.zeros(num_parts, dtype=torch.int64),
    )
    for identity in stream_identities(
        feature_fn,
        dataset,
        pids,
        label_size=label_size,
        fg_signal=fg_signal,
        fg_threshold=fg_threshold,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        rank=rank,
        world_size=world_size,
        progress=progress,
    ):
        counts = [int(mask.sum()) for mask in identity.masks]
        result.total_cells += len(identity.masks) * height * width
        result.foreground_cells += sum(counts)
        if sum(counts) < num_parts:
            result.skipped_identities += 1
            continue
        cells = torch.cat(identity.cells)
        rows = identity.cell_rows()
        if centroids is not None:
            points = height_points(cells, rows, height)
            if points.shape[1] != centroids.shape[1]:
                raise ValueError(
                    f"{caller}: centroids have {centroids.shape[1]} dimensions, the cells with their height "
                    f"{points.shape[1]}; compute them with shared_part_centroids on the same feature_fn"
                )
            parts = (points @ centroids.float().T).argmax(dim=1) + 1
        else:
            assignment = kmeans.fit_predict(cells.numpy(), rng=np.random.default_rng((seed, identity.ordinal)))
            parts = torch.from_numpy(parts_top_to_bottom(assignment, rows.numpy(), num_parts)[assignment])
        result.part_cells += torch.bincount(parts - 1, minlength=num_parts)
        for row, mask, cell_parts in zip(identity.rows, identity.masks, parts.split(counts)):
            result.labels[row][mask] = cell_parts.to(torch.uint8)
            result.labeled[row] = True
        result.clustered_identities += 1
    result.seconds = time.perf_counter() - started
    return result
