"""Part pseudo-labels by per-identity spherical K-means (paper section 2.2): the ``PartClustering`` callback.

For every training identity, the foreground cells of the feature maps of *all* its training images (no
augmentation, model in eval mode) are L2-normalised and clustered into ``K`` clusters; the clusters are
numbered ``1..K`` from top to bottom by the mean row of their cells, background cells are ``0``. The pass reads
``F_g``, the map after the attention, with the rule of the training step's foreground target: by default a cell
is foreground when its norm is at least ``fg_threshold`` of the image's largest
(:func:`icg.model.foreground_target`), so that the labels and the target agree on what the person is. With the
module's ``fg_signal="identity"`` the foreground is instead what recurs in the identity's other images and not
in other people's (:func:`icg.model.identity_contrast`), and the training step takes its target from these
labels. The labels go
into the module's :class:`~icg.part_labels.PartLabels` (``uint8 [N, h, w]`` maps and ``bool [N]`` flags), where
the training step reads them.

Decisions the paper leaves open:

* **Streaming.** The pass walks the training set sorted by identity, keeps only the current identity's
  foreground features (float32, on the CPU) and clusters them when its last image has gone by, so memory is
  bounded by the largest identity plus one batch, never by the training set. On CUDA the forward pass runs
  under bf16 autocast (fp16 where the GPU has no bf16); the features are taken back to float32.
* **K-means.** faiss, spherical (centroids renormalised every iteration, assignment by inner product),
  ``niter`` Lloyd iterations, all points used (no subsampling). Centroids start from a k-means++ seeding
  drawn here with numpy, which avoids most of the poor local optima that faiss's default seeding (``K``
  random points) falls into when parts differ a lot in size; it also works with any faiss version. The
  random stream of an identity depends only on ``seed`` and the identity's position among the sorted ids,
  so the labels do not depend on how identities are spread over processes. On a CUDA module with a faiss
  build that has GPUs, K-means runs on the process's own device (one ``StandardGpuResources`` per
  :class:`SphericalKMeans`, reused).
* **Height (option, not in the paper).** With ``height_weight > 0`` a cell's row joins its feature in K-means
  (:func:`height_embedding`), so that the clusters of every identity are bands of the person and label ``k``
  names more nearly the same body part across identities (see :class:`PartClustering`).
* **Shared parts (option, not in the paper).** With ``shared_parts=True`` one K-means runs over a sample of the
  foreground cells of all identities (:func:`shared_part_centroids`, a first pass) and a second pass labels every
  cell by its nearest centroid, so that label ``k`` is one cluster for every identity (see
  :class:`PartClustering`).
* **Too few foreground cells.** An identity with fewer foreground cells than ``K`` (under the identity rule, also
  one with a single image, which has nothing to be compared with) is not clustered: its rows
  are left unlabeled (flag ``False``, labels 0), so the module falls back to ``K`` horizontal bands of
  the current foreground for them. One warning per pass gives their count.
* **DDP.** The sorted identities are dealt out to ranks (``ids[rank::world_size]``); each rank extracts and
  clusters its own, fills zeros elsewhere, and the buffers are summed across ranks (as int32: not every backend
  sums uint8), so every rank ends with the same labels. With shared parts the ranks' samples are summed the same
  way (one slot per identity), and every rank clusters the same union, in the order of the sorted ids.
* **Schedule and resume.** Clustering runs at the start of epochs ``0, n, 2n, ...``. The epoch of the last
  clustering is part of the callback's state (saved in checkpoints by Lightning), and an epoch whose labels
  already exist is not clustered again: resuming within a clustering epoch (Lightning runs its start hooks
  again when the checkpoint was written during them) keeps the checkpoint's labels, which come back with the
  module's buffers, until the next scheduled epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from icg.contracts import ClusteringData, LabeledModel, require
from icg.model import (
    FgSignal,
    FgThreshold,
    PixelPartClassifier,
    check_fg_signal,
    check_fg_threshold,
    foreground_target,
    identity_contrast,
    split_foreground,
)

__all__ = [
    "ClusteringResult",
    "PartClustering",
    "RefitMethod",
    "SphericalKMeans",
    "cluster_part_labels",
    "height_embedding",
    "kmeans_plusplus",
    "parts_top_to_bottom",
    "shared_part_centroids",
]

log = logging.getLogger(__name__)

RefitMethod = Literal["least_squares", "discriminant"]
"""How :class:`PartClustering` refits the part classifier to new labels: the ridge regression of the one-hot labels
(:meth:`~icg.model.PixelPartClassifier.fit_least_squares`) or the linear discriminant
(:meth:`~icg.model.PixelPartClassifier.fit_discriminant`)."""


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


@dataclass
class ClusteringResult:
    """Labels and statistics of one clustering pass (over one rank's identities, or all of them once reduced).

    Attributes:
        labels: ``uint8 [N, h, w]``: 0 background, ``1..K`` parts top to bottom; 0 in rows not clustered.
        labeled: ``bool [N]``: the row holds clustering results.
        foreground_cells: foreground cells of the images seen.
        total_cells: all cells of the images seen.
        part_cells: ``int64 [K]`` cells given each part ``1..K``.
        clustered_identities: identities clustered.
        skipped_identities: identities with fewer foreground cells than ``K`` (left unlabeled).
        seconds: wall time of the pass.
        gram, moments: with ``classifier_inputs``, the sums over every cell of the labelled images of
            ``z z^T`` (``float64 [D + 1, D + 1]``) and ``z onehot(label)^T`` (``float64 [D + 1, K + 1]``), with
            ``z = [classifier input, 1]`` (:meth:`icg.model.PixelPartClassifier.fit_least_squares`); ``None``
            without it or when no image was labelled.
    """

    labels: Tensor
    labeled: Tensor
    foreground_cells: int = 0
    total_cells: int = 0
    part_cells: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    clustered_identities: int = 0
    skipped_identities: int = 0
    seconds: float = 0.0
    gram: Tensor | None = None
    moments: Tensor | None = None

    @property
    def foreground_share(self) -> float:
        """Foreground cells / all cells."""
        return self.foreground_cells / max(self.total_cells, 1)

    @property
    def part_share(self) -> Tensor:
        """``float [K]``: each part's share of the clustered foreground cells (sums to 1 when any)."""
        return self.part_cells.double() / max(int(self.part_cells.sum()), 1)


@dataclass
class _Identity:
    """What the streaming pass keeps of the identity it is reading: its rows, and per image the unit features of
    its cells (under the activation rule only the foreground ones, with the foreground mask ``[h, w]``; under the
    identity rule all ``h * w`` until the identity is complete, when its foreground is decided and the cells are
    cut to it), and with ``classifier_inputs`` those inputs of all its cells (``[h * w, D]`` per image)."""

    ordinal: int
    pid: int
    rows: list[int] = field(default_factory=list)
    cells: list[Tensor] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)


def _with_bias(cells: Tensor) -> Tensor:
    """``[n, C] -> [n, C + 1]``: a constant 1 appended, so that a linear fit on it has a bias."""
    return torch.cat([cells, cells.new_ones(len(cells), 1)], dim=1)


def _unit_cells(feature_map: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B, h * w, C]``, every cell L2-normalised (float32)."""
    return F.normalize(feature_map.float().flatten(2).transpose(1, 2), dim=2)


def height_embedding(rows: Tensor, height: int, weight: float) -> Tensor:
    """``[n] -> [n, 2]``: the point ``weight * (cos a, sin a)`` with ``a = (pi / 2) * row / (height - 1)``.

    Appended to a unit cell feature and divided by ``sqrt(1 + weight^2)`` (every point then keeps one norm), it
    adds ``weight^2 * cos(a - a')`` to the inner product of two cells, which falls from ``weight^2`` at the same
    row to 0 from the top row to the bottom one: spherical K-means then weighs a cell's height against its
    appearance (:func:`cluster_part_labels`, ``height_weight``).
    """
    angle = rows.double() * (math.pi / 2 / max(height - 1, 1))
    return (weight * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


def _kmeans_points(identity: _Identity, height: int, height_weight: float) -> tuple[Tensor, Tensor]:
    """What K-means clusters of a complete identity: its foreground cells ``[n, C]``, with ``height_weight > 0``
    their rows appended (:func:`height_embedding`) and every point scaled back to norm 1 (``[n, C + 2]``); and the
    row of each cell, ``int64 [n]``."""
    rows = torch.cat([mask.nonzero()[:, 0] for mask in identity.masks])
    cells = torch.cat(identity.cells)
    if height_weight == 0:
        return cells, rows
    embedded = torch.cat([cells, height_embedding(rows, height, height_weight)], dim=1)
    return embedded / math.sqrt(1 + height_weight**2), rows


def _kmeans_backend(
    kmeans: SphericalKMeans | None, num_parts: int, niter: int, device: torch.device, caller: str
) -> SphericalKMeans:
    """``kmeans`` when it has ``num_parts`` clusters, a new :class:`SphericalKMeans` on ``device`` when ``None``."""
    if kmeans is None:
        return SphericalKMeans(num_parts, niter=niter, device=device)
    if kmeans.num_clusters != num_parts:
        raise ValueError(f"{caller}: kmeans has {kmeans.num_clusters} clusters, num_parts is {num_parts}")
    return kmeans


def _foreground_identities(
    feature_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    pids: Sequence[int],
    *,
    caller: str,
    label_size: tuple[int, int],
    fg_threshold: FgThreshold,
    fg_signal: FgSignal,
    reference_images: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    rank: int,
    world_size: int,
    classifier_inputs: Callable[[Tensor], Tensor] | None,
    progress: bool,
) -> Iterator[_Identity]:
    """This rank's identities (``ids[rank::world_size]`` of the sorted ids), one at a time and complete: each
    with its rows, per image the foreground mask ``bool [h, w]`` and the unit features of the foreground cells
    ``[n_i, C]`` (float32, CPU), and with ``classifier_inputs`` those inputs of all its cells. Arguments as in
    :func:`cluster_part_labels`; they are checked here, errors name ``caller``."""
    if len(pids) != len(dataset):
        raise ValueError(f"{caller}: got {len(pids)} pids for a dataset of {len(dataset)} items")
    check_fg_threshold(fg_threshold, caller)
    check_fg_signal(fg_signal, caller)
    if reference_images < 1:
        raise ValueError(f"{caller}: reference_images must be >= 1, got {reference_images}")
    if batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"{caller}: rank must be in [0, world_size={world_size}), got {rank}")
    height, width = label_size
    identities = sorted(set(int(pid) for pid in pids))
    ordinal = {pid: j for j, pid in enumerate(identities)}
    rows_of: dict[int, list[int]] = {pid: [] for pid in identities[rank::world_size]}
    for row, pid in enumerate(pids):
        if int(pid) in rows_of:
            rows_of[int(pid)].append(row)
    order = [row for rows in rows_of.values() for row in rows]

    def loader(rows: Sequence[int]) -> DataLoader:
        return DataLoader(
            Subset(dataset, rows),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=dtype)
    else:
        autocast = torch.autocast(device.type, enabled=False)

    def feature_maps(batch: Any) -> Tensor:
        if not isinstance(batch, dict) or "image" not in batch:
            raise TypeError(f"{caller}: dataset items must be dicts with an 'image' tensor")
        with torch.no_grad(), autocast:
            feature_map = feature_fn(batch["image"].to(device, non_blocking=True))
        if feature_map.dim() != 4 or tuple(feature_map.shape[-2:]) != (height, width):
            raise ValueError(
                f"{caller}: feature_fn gave shape {tuple(feature_map.shape)}, expected [B, C, {height}, {width}] "
                "(label_size)"
            )
        return feature_map.float()

    def complete(identity: _Identity) -> _Identity:
        if fg_signal == "identity":  # the foreground is decided now that all the identity's images are in
            masks = identity_masks(identity)
            identity.cells = [cells[mask.flatten()] for cells, mask in zip(identity.cells, masks)]
            identity.masks = masks
        return identity

    def stream() -> Iterator[_Identity]:
        current: _Identity | None = None
        position = 0
        with tqdm(total=len(order), desc="part clustering", unit="img", disable=not progress, leave=False) as bar:
            for batch in loader(order):
                feature_map = feature_maps(batch)
                cells = _unit_cells(feature_map).cpu()
                if classifier_inputs is not None:
                    inputs = classifier_inputs(feature_map).float().flatten(2).transpose(1, 2)
                if fg_signal == "activation":
                    masks = foreground_target(feature_map, fg_threshold).bool().cpu()
                for i, image_cells in enumerate(cells):
                    row = order[position]
                    position += 1
                    pid = int(pids[row])
                    if current is None or current.pid != pid:
                        if current is not None:
                            yield complete(current)
                        current = _Identity(ordinal[pid], pid)
                    current.rows.append(row)
                    if classifier_inputs is not None:
                        current.inputs.append(inputs[i])
                    if fg_signal == "activation":  # only the foreground is kept
                        current.masks.append(masks[i])
                        image_cells = image_cells[masks[i].flatten()]
                    current.cells.append(image_cells)
                bar.update(len(cells))
        if current is not None:
            yield complete(current)

    if fg_signal == "identity":
        # the same images for every rank and every identity: spread evenly over the training set
        reference_rows = np.unique(np.linspace(0, len(dataset) - 1, min(reference_images, len(dataset))).round())
        reference_rows = reference_rows.astype(np.int64).tolist()
        reference_cells = torch.cat([_unit_cells(feature_maps(batch)) for batch in loader(reference_rows)])
        reference_pids = torch.tensor([int(pids[row]) for row in reference_rows], device=device)

    def identity_masks(identity: _Identity) -> list[Tensor]:
        others = reference_pids != identity.pid
        if len(identity.cells) < 2 or not bool(others.any()):
            return [torch.zeros(height, width, dtype=torch.bool) for _ in identity.cells]
        score = identity_contrast(torch.stack(identity.cells).to(device), reference_cells[others])
        low, high = score.amin(dim=1, keepdim=True), score.amax(dim=1, keepdim=True)
        relative = (score - low) / (high - low).clamp_min(torch.finfo(torch.float32).eps)
        return list(split_foreground(relative.view(-1, height, width), fg_threshold).bool().cpu())

    return stream()


def shared_part_centroids(
    feature_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    pids: Sequence[int],
    num_parts: int,
    *,
    label_size: tuple[int, int],
    fg_threshold: FgThreshold = 0.5,
    fg_signal: FgSignal = "activation",
    reference_images: int = 64,
    height_weight: float = 0.0,
    max_points: int = 20_000,
    niter: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce: Callable[[Tensor], Tensor] | None = None,
    kmeans: SphericalKMeans | None = None,
    progress: bool = False,
) -> Tensor:
    """Part centroids shared by every identity: one spherical K-means over the foreground cells of all of them.

    The first of the two passes of :class:`PartClustering` with ``shared_parts=True``; the second labels each
    cell by its nearest centroid (:func:`cluster_part_labels` with ``centroids``), so label ``k`` is one cluster
    for every identity. K-means runs on a sample: up to ``ceil(max_points / identities)`` foreground cells of
    each identity, drawn from ``(seed, identity's position among the sorted ids)``, so the sample, and the
    centroids, do not depend on how the identities are spread over processes.

    Args:
        feature_fn, dataset, pids, num_parts, label_size, fg_threshold, fg_signal, reference_images,
            height_weight, niter, seed, batch_size, num_workers, device, rank, world_size, progress: as in
            :func:`cluster_part_labels`.
        max_points: the sample's size at most.
        reduce: sums a tensor over the processes (DDP; ``None`` in a single process, where ``world_size`` must
            be 1): every rank samples its own identities and all of them cluster the union.
        kmeans: the K-means back-end to reuse (default: a new :class:`SphericalKMeans` on ``device``).

    Returns:
        ``float32 [K', D]`` unit centroids (``D = C``, or ``C + 2`` with the height), numbered top to bottom by
        the mean row of their sample cells; ``K' < K`` only when a cluster came out empty, ``K' = 0`` when all
        identities together have fewer than ``K`` foreground cells (:class:`PartClustering` then clusters each
        identity on its own, which leaves them unlabeled).
    """
    caller = "shared_part_centroids"
    if num_parts < 1:
        raise ValueError(f"{caller}: num_parts must be >= 1, got {num_parts}")
    if not height_weight >= 0:
        raise ValueError(f"{caller}: height_weight must be >= 0, got {height_weight}")
    if max_points < 1:
        raise ValueError(f"{caller}: max_points must be >= 1, got {max_points}")
    if seed < 0:
        raise ValueError(f"{caller}: seed must be >= 0, got {seed}")
    if reduce is None and world_size != 1:
        raise ValueError(f"{caller}: world_size={world_size} needs reduce, to gather the ranks' samples")
    device = torch.device("cpu" if device is None else device)
    kmeans = _kmeans_backend(kmeans, num_parts, niter, device, caller)
    height = label_size[0]
    num_identities = len(set(int(pid) for pid in pids))
    per_identity = -(-max_points // max(num_identities, 1))
    local: list[tuple[int, Tensor]] = []  # (ordinal, [n, D + 1] points and their rows)
    for identity in _foreground_identities(
        feature_fn,
        dataset,
        pids,
        caller=caller,
        label_size=label_size,
        fg_threshold=fg_threshold,
        fg_signal=fg_signal,
        reference_images=reference_images,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        rank=rank,
        world_size=world_size,
        classifier_inputs=None,
        progress=progress,
    ):
        points, rows = _kmeans_points(identity, height, height_weight)
        if not len(rows):
            continue
        rng = np.random.default_rng((seed, identity.ordinal))
        keep = torch.from_numpy(np.sort(rng.permutation(len(points))[:per_identity]))
        local.append((identity.ordinal, torch.cat([points[keep], rows[keep, None].float()], dim=1)))
    dim = local[0][1].shape[1] if local else 0
    if reduce is not None:
        # a rank without identities learns the dimension from the others
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
    if len(points) < num_parts:  # nothing to share: the caller falls back to a K-means per identity
        return points.new_zeros(0, points.shape[1])
    assignment = kmeans.fit_predict(points.numpy(), rng=np.random.default_rng((seed, num_identities)))
    order = np.argsort(parts_top_to_bottom(assignment, rows.numpy(), num_parts))
    counts = np.bincount(assignment, minlength=num_parts)
    order = order[counts[order] > 0]
    sums = torch.zeros(num_parts, points.shape[1]).index_add_(0, torch.from_numpy(assignment), points)
    return F.normalize(sums[torch.from_numpy(order)], dim=1)


def cluster_part_labels(
    feature_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    pids: Sequence[int],
    num_parts: int,
    *,
    label_size: tuple[int, int],
    fg_threshold: FgThreshold = 0.5,
    fg_signal: FgSignal = "activation",
    reference_images: int = 64,
    niter: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
    kmeans: SphericalKMeans | None = None,
    classifier_inputs: Callable[[Tensor], Tensor] | None = None,
    height_weight: float = 0.0,
    centroids: Tensor | None = None,
    progress: bool = False,
) -> ClusteringResult:
    """Part pseudo-labels of one rank's identities, streaming one identity at a time.

    The caller sets the model's mode (eval) beforehand; this function runs ``feature_fn`` under ``no_grad`` (and
    bf16/fp16 autocast on CUDA).

    Args:
        feature_fn: images ``[B, 3, H, W]`` on ``device`` -> feature maps ``F_g`` ``[B, C, h, w]``.
        dataset: items are dicts with an ``"image"`` tensor; item ``i`` is row ``i`` of the labels.
        pids: identity of each item (``len(dataset)`` of them).
        num_parts: ``K``.
        label_size: ``(h, w)`` of the feature maps and labels.
        fg_threshold: how each image's foreground scores (in ``[0, 1]``, the largest 1) are split: a share, or
            ``"otsu"`` (:func:`icg.model.split_foreground`).
        fg_signal: the foreground score of a cell: ``"activation"``, its norm over the image's largest (eq. 3,
            :func:`icg.model.foreground_target`); ``"identity"``, :func:`icg.model.identity_contrast` against
            ``reference_images`` images spread over the training set, rescaled per image to ``[0, 1]``
            (identities with a single image are left unlabeled).
        reference_images: see ``fg_signal``.
        niter: K-means iterations (of the default back-end; a given ``kmeans`` has its own).
        seed: fixed seed (>= 0) of the K-means seeding; identity ``j`` of the sorted ids draws from ``(seed, j)``.
        batch_size, num_workers: of the DataLoader of the pass.
        device: where ``feature_fn`` runs (default CPU).
        rank, world_size: this process takes the sorted identities ``ids[rank::world_size]``.
        kmeans: the K-means back-end to reuse (default: a new :class:`SphericalKMeans` on ``device``).
        classifier_inputs: the part classifier's per-cell inputs, ``[B, C, h, w] -> [B, D, h, w]``
            (:meth:`icg.model.PixelPartClassifier.inputs`); when given, the pass also sums what a linear fit
            of the classifier to the labels needs (``gram`` and ``moments`` of the result; on ``device``).
        height_weight: ``w >= 0``; above 0 each cell's unit feature gets its row appended before K-means
            (:func:`height_embedding`), so that a cluster is a band of the person as well as one appearance and
            label ``k`` is more nearly the same body part for every identity (not in the paper, which clusters
            the features alone; 0).
        centroids: ``[K', D]`` part centroids shared by all identities (:func:`shared_part_centroids`, with the
            same ``height_weight``): each foreground cell gets the label of its nearest centroid (by inner
            product; ``1..K'`` in the centroids' order) instead of a K-means of its identity.
        progress: show a progress bar.

    Returns:
        The labels of this rank's rows (zeros elsewhere) and its counts.
    """
    started = time.perf_counter()
    caller = "cluster_part_labels"
    if num_parts < 1:
        raise ValueError(f"{caller}: num_parts must be >= 1, got {num_parts}")
    if seed < 0:
        raise ValueError(f"{caller}: seed must be >= 0, got {seed}")
    if not height_weight >= 0:
        raise ValueError(f"{caller}: height_weight must be >= 0, got {height_weight}")
    device = torch.device("cpu" if device is None else device)
    if centroids is None or kmeans is not None:
        kmeans = _kmeans_backend(kmeans, num_parts, niter, device, caller)
    if centroids is not None and (centroids.dim() != 2 or not 0 < len(centroids) <= num_parts):
        raise ValueError(
            f"{caller}: centroids must be [K', D] with 0 < K' <= num_parts={num_parts}, got {tuple(centroids.shape)}"
        )
    identities = _foreground_identities(
        feature_fn,
        dataset,
        pids,
        caller=caller,
        label_size=label_size,
        fg_threshold=fg_threshold,
        fg_signal=fg_signal,
        reference_images=reference_images,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        rank=rank,
        world_size=world_size,
        classifier_inputs=classifier_inputs,
        progress=progress,
    )
    height, width = label_size
    result = ClusteringResult(
        labels=torch.zeros(len(dataset), height, width, dtype=torch.uint8),
        labeled=torch.zeros(len(dataset), dtype=torch.bool),
        part_cells=torch.zeros(num_parts, dtype=torch.int64),
    )
    for identity in identities:
        masks = identity.masks
        counts = [int(mask.sum()) for mask in masks]
        result.total_cells += len(masks) * height * width
        result.foreground_cells += sum(counts)
        if sum(counts) < num_parts:
            result.skipped_identities += 1
            continue
        points, cell_rows = _kmeans_points(identity, height, height_weight)
        if centroids is not None:
            if points.shape[1] != centroids.shape[1]:
                raise ValueError(
                    f"{caller}: centroids have {centroids.shape[1]} dimensions, the cells {points.shape[1]}; "
                    "compute them with the same feature_fn and height_weight"
                )
            parts = (points @ centroids.float().T).argmax(dim=1) + 1
        else:
            rng = np.random.default_rng((seed, identity.ordinal))
            assignment = kmeans.fit_predict(points.numpy(), rng=rng)
            parts = torch.from_numpy(parts_top_to_bottom(assignment, cell_rows.numpy(), num_parts)[assignment])
        result.part_cells += torch.bincount(parts - 1, minlength=num_parts)
        for row, mask, cell_parts in zip(identity.rows, masks, parts.split(counts)):
            result.labels[row][mask] = cell_parts.to(torch.uint8)
            result.labeled[row] = True
        result.clustered_identities += 1
        if classifier_inputs is not None:
            inputs = _with_bias(torch.cat(identity.inputs)).double()
            foreground = inputs[torch.cat([mask.flatten() for mask in masks]).to(device)]
            gram = inputs.T @ inputs
            moments = foreground.T @ F.one_hot(parts.to(device), num_parts + 1).double()
            # the background's column: all the identity's cells less its foreground
            moments[:, 0] = inputs.sum(dim=0) - foreground.sum(dim=0)
            first = result.gram is None
            result.gram = gram if first else result.gram + gram
            result.moments = moments if first else result.moments + moments
    result.seconds = time.perf_counter() - started
    return result


class PartClustering(Callback):
    """Recomputes the part pseudo-labels of an :class:`icg.ICGModule` every ``every_n_epochs`` epochs.

    At the start of epochs ``0, n, 2n, ...`` the module is put in eval mode, the datamodule's
    ``cluster_dataset()`` (training images without augmentation) is streamed identity by identity, and the
    module's part labels are replaced on every rank (see the module docstring). Logs
    ``cluster/seconds``, ``cluster/foreground_share`` and ``cluster/part_share/k`` (share of the clustered
    foreground cells in part ``k``, ``k = 1..K``).

    Args:
        every_n_epochs: ``n``, epochs between clusterings (the paper: 1; its appendix also uses 2).
        niter: K-means iterations.
        seed: fixed seed of the K-means seeding.
        fg_threshold: foreground threshold (a share, or ``"otsu"``); default the module's ``fg_threshold``. The
            foreground signal is always the module's ``fg_signal``, which its training target follows.
        reference_images: other people's images that the ``"identity"`` signal compares each identity's cells with
            (:func:`cluster_part_labels`).
        batch_size: images per forward pass (larger is faster on a GPU; memory grows with it).
        num_workers: loader processes; default the datamodule's ``num_workers``.
        refit_classifier: after each clustering, set the module's part classifier to a linear fit of the new
            labels on the pass's features (``refit_method``), instead of leaving it to chase them by gradient
            steps. Measured on the 256x128 ablation (stand-in, 8 epochs,
            24 steps an epoch): the classifier trained along with the network predicted parts of 58% test
            purity, while a converged linear fit on the same final features reached 74%: with the learning rate
            decayed, the steps after the last clustering are too few for the classifier to catch up with the
            labels (``benchmarks/RESULTS-256x128.md``).
        refit_ridge: the fit's ridge, relative to the mean diagonal of the gram matrix of the classifier's inputs
            (``"least_squares"``) or of the within-class covariance (``"discriminant"``).
        refit_method: ``"least_squares"``, the ridge regression of the one-hot labels
            (:meth:`~icg.model.PixelPartClassifier.fit_least_squares`), or ``"discriminant"``, the linear
            discriminant (:meth:`~icg.model.PixelPartClassifier.fit_discriminant`); both from the same sums. With
            ``part_position`` the parts are stacked along the row input, and a least-squares fit on indicators masks
            the middle ones (a hand case: 50% of the cells right against 100%); the discriminant does not.
            Measured at 256x128 from the stand-in (identity contrast, ``part_position``, ``height_weight=2``,
            ``shared_parts``; 3 seeds): the predicted parts' purity rose from 79.6% to 81.9%, but mAP fell from
            76.6 to 73.8 (``benchmarks/RESULTS-256x128.md``).
        height_weight: weight of each cell's row against its appearance in K-means (:func:`cluster_part_labels`;
            0, the paper's clustering, by default). Each identity's clusters are numbered by mean row, but
            identities split the person differently (one splits the upper body in three, another the legs), so
            label ``k`` names different body parts for different identities and the shared part classifier
            learns a blend; the height term makes the clusters bands of the person, more alike across identities.
            Measured at 256x128 from the stand-in (identity contrast, refit, ``part_position``; 5 seeds), ``w = 2``
            raised the labels' purity from 74% to 77%, the predicted parts' from 74% to 76%, the share of test
            images with parts in order from 67% to 76% (``benchmarks/RESULTS-256x128-height.md``).
        shared_parts: one K-means over the foreground cells of all identities (:func:`shared_part_centroids`, on a
            sample), each cell then labelled by its nearest centroid, instead of a K-means per identity (the
            paper's): label ``k`` is then one cluster for every identity, where per-identity clusters numbered
            top to bottom name different body parts for identities that split the person differently. Costs a
            second pass over the training images. Measured at 256x128 from the stand-in (identity contrast,
            refit, ``part_position``, ``height_weight=2``; 5 seeds): the labels' purity rose from 77% to 80%, the
            predicted parts' from 75.6% to 77.6%, at the same mAP (``benchmarks/RESULTS-256x128-height.md``).

    Outside a Trainer, :meth:`cluster` labels a module directly (a notebook, a test).
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        niter: int = 20,
        seed: int = 0,
        fg_threshold: FgThreshold | None = None,
        reference_images: int = 64,
        batch_size: int = 128,
        num_workers: int | None = None,
        refit_classifier: bool = False,
        refit_ridge: float = 1e-2,
        refit_method: RefitMethod = "least_squares",
        height_weight: float = 0.0,
        shared_parts: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"PartClustering: every_n_epochs must be >= 1, got {every_n_epochs}")
        if niter < 1:
            raise ValueError(f"PartClustering: niter must be >= 1, got {niter}")
        if seed < 0:
            raise ValueError(f"PartClustering: seed must be >= 0, got {seed}")
        if fg_threshold is not None:
            check_fg_threshold(fg_threshold, "PartClustering")
        if reference_images < 1:
            raise ValueError(f"PartClustering: reference_images must be >= 1, got {reference_images}")
        if batch_size < 1:
            raise ValueError(f"PartClustering: batch_size must be >= 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"PartClustering: num_workers must be >= 0, got {num_workers}")
        if not refit_ridge > 0:
            raise ValueError(f"PartClustering: refit_ridge must be > 0, got {refit_ridge}")
        if refit_method not in ("least_squares", "discriminant"):
            raise ValueError(
                f"PartClustering: refit_method must be 'least_squares' or 'discriminant', got {refit_method!r}"
            )
        if not height_weight >= 0:
            raise ValueError(f"PartClustering: height_weight must be >= 0, got {height_weight}")
        self.every_n_epochs = every_n_epochs
        self.niter = niter
        self.seed = seed
        self.fg_threshold = fg_threshold
        self.reference_images = reference_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.refit_classifier = refit_classifier
        self.refit_ridge = refit_ridge
        self.refit_method = refit_method
        self.height_weight = height_weight
        self.shared_parts = shared_parts
        self.last_clustered_epoch: int | None = None
        self._kmeans: SphericalKMeans | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"last_clustered_epoch": self.last_clustered_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_clustered_epoch = state_dict["last_clustered_epoch"]

    def _kmeans_for(self, num_parts: int, device: torch.device) -> SphericalKMeans:
        # reused across passes so that the GPU resources are created once
        kmeans = self._kmeans
        if kmeans is None or kmeans.num_clusters != num_parts or kmeans.device != device:
            self._kmeans = SphericalKMeans(num_parts, niter=self.niter, device=device)
        return self._kmeans

    def cluster(
        self,
        module: LightningModule,
        dataset: Dataset,
        pids: Sequence[int],
        *,
        trainer: Trainer | None = None,
        num_workers: int | None = None,
        progress: bool = False,
    ) -> ClusteringResult:
        """Clusters ``dataset`` and writes the labels into ``module.part_labels``.

        Args:
            module: a :class:`~icg.contracts.LabeledModel`: ``part_labels`` (:class:`~icg.part_labels.PartLabels`),
                ``fg_threshold`` (unless the callback has its own) and ``feature_maps(images)`` giving ``F_g``
                ``[B, C, h, w]`` in the module's current mode; an :class:`icg.ICGModule` with ``use_ppc=True``.
            dataset: ``N`` items, dicts with an ``"image"``; item ``i`` is row ``i``.
            pids: identity of each item.
            trainer: under DDP, shards the identities over its ranks and sums the labels across them.
            num_workers: loader processes (default: the callback's, else 0).
            progress: show a progress bar.

        Returns:
            The labels and counts of all ranks (identical on every rank).
        """
        require(module, LabeledModel, "PartClustering")
        part_labels = module.part_labels
        if len(part_labels) == 0:
            raise ValueError(
                "PartClustering: the module has no part labels (no training images); build it with use_ppc=True"
            )
        if len(part_labels) != len(dataset):
            raise ValueError(
                f"PartClustering: the module has part labels for {len(part_labels)} images but the clustering dataset "
                f"holds {len(dataset)}; set num_train_samples to the datamodule's"
            )
        num_parts = part_labels.num_parts
        classifier = getattr(module, "part_classifier", None) if self.refit_classifier else None
        if self.refit_classifier and not isinstance(classifier, PixelPartClassifier):
            raise TypeError(
                "PartClustering: refit_classifier=True needs the module's part_classifier, a PixelPartClassifier "
                f"(an icg.ICGModule with use_ppc=True); got {type(classifier).__name__}"
            )
        fg_threshold = self.fg_threshold if self.fg_threshold is not None else module.fg_threshold
        if num_workers is None:
            num_workers = self.num_workers or 0
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        device = module.device
        started = time.perf_counter()

        # each rank holds zeros outside its identities, so the sum over the ranks is the union
        reduce = partial(trainer.strategy.reduce, reduce_op="sum") if world_size > 1 else None
        common = dict(
            label_size=part_labels.size,
            fg_threshold=fg_threshold,
            fg_signal=module.fg_signal,
            reference_images=self.reference_images,
            seed=self.seed,
            batch_size=self.batch_size,
            num_workers=num_workers,
            device=device,
            rank=rank,
            world_size=world_size,
            kmeans=self._kmeans_for(num_parts, device),
            height_weight=self.height_weight,
            progress=progress,
        )
        was_training = module.training
        module.eval()
        try:
            centroids = None
            if self.shared_parts:
                centroids = shared_part_centroids(
                    module.feature_maps, dataset, pids, num_parts, reduce=reduce, **common
                )
            local = cluster_part_labels(
                module.feature_maps,
                dataset,
                pids,
                num_parts,
                classifier_inputs=None if classifier is None else classifier.inputs,
                centroids=centroids if centroids is not None and len(centroids) else None,
                **common,
            )
        finally:
            module.train(was_training)

        labels = local.labels.to(device, torch.int32)
        labeled = local.labeled.to(device, torch.int32)
        counts = torch.tensor(
            [local.foreground_cells, local.total_cells, local.clustered_identities, local.skipped_identities],
            dtype=torch.int64,
        )
        counts = torch.cat([counts, local.part_cells]).to(device)
        if reduce is not None:
            labels, labeled, counts = reduce(labels), reduce(labeled), reduce(counts)
        part_labels.assign(labels, labeled.bool())
        if classifier is not None:
            self._refit(classifier, local, reduce)
        counts = counts.cpu()
        result = ClusteringResult(
            labels=part_labels.labels,
            labeled=part_labels.labeled,
            foreground_cells=int(counts[0]),
            total_cells=int(counts[1]),
            clustered_identities=int(counts[2]),
            skipped_identities=int(counts[3]),
            part_cells=counts[4:],
            seconds=time.perf_counter() - started,
        )
        if result.skipped_identities and rank == 0:
            log.warning(
                "PartClustering: %d of %d identities have fewer than num_parts=%d foreground cells (or, with "
                "fg_signal='identity', a single image); their images stay unlabeled (the horizontal-band fallback; "
                "with fg_signal='identity', not scored by the pixel losses)",
                result.skipped_identities,
                result.skipped_identities + result.clustered_identities,
                num_parts,
            )
        return result

    def _refit(
        self, classifier: PixelPartClassifier, local: ClusteringResult, reduce: Callable[..., Tensor] | None
    ) -> None:
        size = classifier.conv.in_channels + 1
        device = classifier.conv.weight.device
        # a rank that labelled nothing adds zeros, so that every rank takes part in the sums
        gram = local.gram if local.gram is not None else torch.zeros(size, size, dtype=torch.float64)
        moments = local.moments
        if moments is None:
            moments = torch.zeros(size, classifier.num_parts + 1, dtype=torch.float64)
        gram, moments = gram.to(device), moments.to(device)
        if reduce is not None:
            gram, moments = reduce(gram), reduce(moments)
        if bool(moments[-1, 1:].sum() > 0):  # any labelled part cell (the last row counts the cells)
            fit = classifier.fit_discriminant if self.refit_method == "discriminant" else classifier.fit_least_squares
            fit(gram, moments, ridge=self.refit_ridge)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs or self.last_clustered_epoch == epoch:
            return
        if not len(getattr(pl_module, "part_labels", ())):
            # a model without parts (BoT, or PPC switched off from a config that keeps this callback)
            if epoch == 0:
                rank_zero_info("PartClustering: the model has no part classifier (use_ppc=False); nothing to do")
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError(
                "PartClustering needs the Trainer's datamodule: pass it as trainer.fit(model, datamodule=...)"
            )
        require(datamodule, ClusteringData, "PartClustering")
        num_workers = self.num_workers if self.num_workers is not None else datamodule.num_workers
        result = self.cluster(
            pl_module,
            datamodule.cluster_dataset(),
            [record.pid for record in datamodule.train_records],
            trainer=trainer,
            num_workers=num_workers,
            progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
        )
        self.last_clustered_epoch = epoch
        metrics = {"cluster/seconds": result.seconds, "cluster/foreground_share": result.foreground_share}
        metrics.update({f"cluster/part_share/{k}": float(s) for k, s in enumerate(result.part_share, start=1)})
        # the shares are identical on every rank already; syncing averages the ranks' seconds (nearly equal, as the
        # label sum waits for the slowest) and is what Lightning expects of epoch-level values under DDP
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
