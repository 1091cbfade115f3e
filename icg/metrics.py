"""Re-ID evaluation: CMC, mAP and mINP with the standard protocol, and a torchmetrics ``Metric`` around it.

Protocol (Market-1501 / torchreid): for each query, gallery images of the same identity *and* the same camera
are dropped (junk); a query left without any true match is skipped; on the remaining ranked list

- ``CMC@k`` is the share of valid queries with a true match among the first ``k``,
- ``AP`` is the mean over the true matches of the precision at their rank, ``mAP`` its mean over queries,
- ``INP = (number of true matches) / (rank of the last true match)`` (Ye et al., TPAMI 2021), ``mINP`` its mean.

Ties: the ranked list is the stable order of the distances -- equal distances keep gallery order, as
``torch.sort(stable=True)`` and ``np.argsort(kind="stable")`` do. Distances are compared in float32 (float64
input is rounded; values closer than float32 resolution tie); NaN is an error.

How it is computed: sorting every query's distances is what the usual evaluation spends its time on, and it is
not needed. Only the ranks of the true matches matter, and the rank of a match is one plus the number of
gallery entries before it in the stable order, minus the junk among them. Each ``(distance, gallery index)``
is packed into one int64 key whose integer order is the stable order, so ties need no special case; a binary
search of every key among the query's sorted match keys, and a histogram of the results, give all those counts
at once. Entries after the last true match cannot change any statistic: a query whose last match comes early
only looks at the entries before it (packed together), which makes the evaluation of a trained model's
distances several times cheaper than that of random ones. Queries are processed in chunks, so memory stays
``O(chunk_size x Ng)`` beyond the distance source, which can itself be chunked (a callable giving rows of
distances, e.g. :func:`icg.retrieval.icg_distance_rows`); no ``Nq x Ng`` index or mask is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from icg.features import ReIDFeatures
from icg.retrieval import DistanceRows, icg_distance, icg_distance_rows, k_reciprocal_rerank
from icg.tensor_ops import INT64_MAX, expand_segments, key_columns, stable_sort_keys

__all__ = ["RankResult", "ReIDMetric", "evaluate_rank", "format_rank_table"]

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True)
class RankResult:
    """Result of :func:`evaluate_rank`; every figure is a fraction in ``[0, 1]`` (NaN without valid queries).

    Attributes:
        mAP: mean average precision over the valid queries.
        mINP: mean inverse negative penalty over the valid queries.
        cmc: ``[max_rank]`` float64, ``cmc[k - 1]`` = CMC@k.
        num_valid_queries: queries with at least one true match left after dropping junk.
    """

    mAP: float
    mINP: float
    cmc: Tensor
    num_valid_queries: int

    def to_dict(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """``{"mAP", "mINP", "rank1", "rank5", "rank10"}`` (or the ``ranks`` asked for)."""
        for k in ranks:
            if not 1 <= k <= self.cmc.shape[0]:
                raise ValueError(f"rank {k} is outside the computed CMC (max_rank={self.cmc.shape[0]})")
        return {"mAP": self.mAP, "mINP": self.mINP, **{f"rank{k}": float(self.cmc[k - 1]) for k in ranks}}


def _as_ids(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 1 or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be a 1-D integer array, got {t.dtype} with shape {tuple(t.shape)}")
    return t.long()


class _GalleryIndex:
    """Gallery entries grouped by identity: ``order`` lists gallery indices sorted by identity; identity
    ``pids[u]`` owns ``order[starts[u] : starts[u] + counts[u]]``."""

    def __init__(self, g_pids: Tensor, g_camids: Tensor) -> None:
        self.camids = g_camids
        self.order = torch.sort(g_pids, stable=True).indices
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def same_identity(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        """Padded ``[n, S]`` gallery indices of each query's identity and the ``[n, S]`` mask of real slots."""
        n = q_pids.shape[0]
        if self.pids.numel() == 0:
            return torch.zeros(n, 0, dtype=torch.long, device=q_pids.device), torch.zeros(
                n, 0, dtype=torch.bool, device=q_pids.device
            )
        slot = torch.searchsorted(self.pids, q_pids).clamp_(max=self.pids.shape[0] - 1)
        count = torch.where(self.pids[slot] == q_pids, self.counts[slot], 0)
        width = torch.arange(int(count.max()) if n else 0, device=q_pids.device)
        real = width < count[:, None]
        index = (self.starts[slot][:, None] + width).clamp_(max=self.order.shape[0] - 1)
        return self.order[index], real


def _preceding_counts(dist: Tensor, thresholds: Tensor, num_match: Tensor) -> Tensor:
    """For each row of ``dist`` ``[n, Ng]`` and each sorted match key in ``thresholds`` ``[n, M]`` (int64
    max-padded beyond ``num_match``), the number of gallery entries before that match in the stable order."""
    n, num_gallery = dist.shape
    out = torch.zeros(thresholds.shape, dtype=torch.long, device=dist.device)
    if thresholds.shape[1] == 0:
        return out
    # Entries after the last match never count: the "active" entries, up to it, are all a row needs. A row
    # with few of them is packed to them; a row with many is read whole, as packing would cost more passes.
    # Which is which is estimated from 256 columns (a wrong guess costs time, never correctness).
    has_match = num_match[:, None] > 0
    last = torch.where(has_match, key_columns(thresholds.gather(1, (num_match - 1).clamp_(min=0)[:, None])), 0)
    last_value = torch.where(has_match, dist.gather(1, last), math.nan)  # nothing is <= NaN
    sample = torch.linspace(0, num_gallery - 1, min(256, num_gallery), device=dist.device).long()
    dense = (dist[:, sample] <= last_value).float().mean(1) > 0.5
    flat = _nonzero_flat(dist <= last_value.masked_fill_(dense[:, None], math.nan))  # packed rows' entries
    row = flat // num_gallery
    col = flat - row * num_gallery
    packed = stable_sort_keys(dist.view(-1).index_select(0, flat), col)
    num_active = torch.bincount(row, minlength=n)
    packed_start = torch.cumsum(num_active, 0) - num_active
    width = torch.where(dense, num_gallery, num_active)
    # Group rows of similar width, and within a width by match count: a group loops over its largest count.
    order = torch.argsort(num_match, stable=True)
    order = order[torch.argsort(width[order], stable=True)]
    widths, is_dense = width[order].tolist(), dense[order].tolist()
    budget = 1 << 20 if dist.device.type == "cpu" else 1 << 24
    columns = torch.arange(num_gallery, device=dist.device)
    start = 0
    while start < n:
        # A group's rows are padded to its widest: keep widths within a factor 2 and the group within budget.
        stop, limit = start + 1, max(2 * widths[start], 64)
        while stop < n and widths[stop] <= limit and (stop + 1 - start) * widths[stop] <= budget:
            stop += 1
        rows = order[start:stop]
        cols = int(num_match[rows].max())
        if cols > 0:
            if is_dense[stop - 1]:
                keys = stable_sort_keys(dist[rows], columns)
            else:
                # int64 max in the padding, which counts after every match.
                keys = torch.full((stop - start, widths[stop - 1]), INT64_MAX, dtype=torch.long, device=dist.device)
                starts = packed_start[rows]
                slot_row, position = expand_segments(starts, num_active[rows])
                keys[slot_row, position - starts[slot_row]] = packed[position]
            out[rows, :cols] = _count_below(keys, thresholds[rows, :cols])
        start = stop
    return out


def _nonzero_flat(mask: Tensor) -> Tensor:
    """Flat indices of the True entries of a contiguous bool tensor, ascending. ``nonzero`` reads one byte at a
    time; reading 8 at a time as int64 words and expanding only the nonzero words is ~2.5x faster on the sparse
    masks of the active entries."""
    flat = mask.view(-1)
    head = flat.numel() // 8 * 8
    words = flat[:head].view(torch.int64)
    word = words.nonzero().squeeze(1)
    byte = words[word].view(torch.uint8).view(-1, 8).nonzero()
    tail = flat[head:].nonzero().squeeze(1) + head
    return torch.cat([word[byte[:, 0]] * 8 + byte[:, 1], tail])


def _count_below(keys: Tensor, thresholds: Tensor) -> Tensor:
    """``[g, M]``: for each threshold (a key present in its row of ``keys``; thresholds sorted per row), the
    number of keys of the row below it."""
    g, m = thresholds.shape
    # below[j] = number of thresholds under key j; a threshold at sorted position p then has exactly the keys
    # with below <= p before or at it, itself included. One binary search per key: a loop of compare passes
    # is faster on an idle CPU but, as 2m small parallel ops, stalls badly when the cores are shared.
    below = torch.searchsorted(thresholds.contiguous(), keys)
    below += torch.arange(g, device=keys.device)[:, None] * (m + 1)
    histogram = torch.bincount(below.view(-1), minlength=g * (m + 1)).view(g, m + 1)
    return histogram.cumsum(1)[:, :m] - 1


class _RankAccumulator:
    """Sums of AP and INP, and the histogram of first-match ranks, over chunks of queries."""

    def __init__(self, g_pids: Tensor, g_camids: Tensor, max_rank: int) -> None:
        self.g_pids, self.g_camids, self.max_rank = g_pids, g_camids, max_rank
        self.index: _GalleryIndex | None = None
        self.ap = self.inp = 0.0
        self.valid = 0
        self.first = torch.zeros(max_rank + 2, dtype=torch.long)

    def add(self, dist: Tensor, q_pids: Tensor, q_camids: Tensor) -> None:
        device = dist.device
        if self.index is None or self.index.order.device != device:
            self.index = _GalleryIndex(self.g_pids.to(device), self.g_camids.to(device))
        q_pids, q_camids = q_pids.to(device), q_camids.to(device)
        index, real = self.index.same_identity(q_pids)
        junk = real & (self.index.camids[index] == q_camids[:, None])
        match = real & ~junk
        num_match = match.sum(1)
        if num_match.numel() == 0 or int(num_match.max()) == 0:
            return
        keys = stable_sort_keys(dist.gather(1, index), index)
        width = int(num_match.max())
        thresholds = torch.where(match, keys, INT64_MAX).sort(dim=1).values[:, :width]
        junk_keys = torch.where(junk, keys, INT64_MAX)
        junk_before = (junk_keys[:, None, :] < thresholds[:, :, None]).sum(2)
        # Rank among the kept entries, 1-based: everything before the match but the junk, plus one.
        rank = _preceding_counts(dist, thresholds, num_match) - junk_before + 1
        position = torch.arange(width, device=device)
        is_match = position < num_match[:, None]
        precision = (position + 1).double() / rank.double()
        valid = num_match > 0
        ap = torch.where(is_match, precision, 0.0).sum(1) / num_match.clamp(min=1)
        last_rank = rank.gather(1, (num_match - 1).clamp(min=0)[:, None]).squeeze(1)
        inp = num_match.double() / last_rank.double()
        self.ap += float(ap[valid].sum())
        self.inp += float(inp[valid].sum())
        self.valid += int(valid.sum())
        first = rank[:, 0][valid].clamp(max=self.max_rank + 1)
        self.first += torch.bincount(first, minlength=self.max_rank + 2).cpu()

    def result(self) -> RankResult:
        if self.valid == 0:
            return RankResult(math.nan, math.nan, torch.full((self.max_rank,), math.nan, dtype=torch.float64), 0)
        cmc = self.first.cumsum(0)[1 : self.max_rank + 1].double() / self.valid
        return RankResult(self.ap / self.valid, self.inp / self.valid, cmc, self.valid)


def evaluate_rank(
    distmat: ArrayLike | DistanceRows,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a query-gallery distance matrix under the standard re-ID protocol (module doc).

    Args:
        distmat: ``[Nq, Ng]`` distances (tensor on any device, or numpy array), or a callable
            ``rows(start, end) -> [end - start, Ng]`` tensor that computes them chunk by chunk (see
            :func:`icg.retrieval.icg_distance_rows`).
        q_pids, g_pids: ``[Nq]`` / ``[Ng]`` integer identities.
        q_camids, g_camids: ``[Nq]`` / ``[Ng]`` integer cameras.
        max_rank: length of the CMC curve (not cut at ``Ng``: past the gallery size the curve is 1.0).
        chunk_size: queries handled at a time; memory is ``O(chunk_size x Ng)`` on top of ``distmat``.
            ``None``: as many as make ``2**24`` distances (64 MB of float32), at least one.

    Returns:
        A :class:`RankResult`; without any valid query, NaN figures and ``num_valid_queries == 0``.
    """
    q_pids, g_pids = _as_ids(q_pids, "q_pids"), _as_ids(g_pids, "g_pids")
    q_camids, g_camids = _as_ids(q_camids, "q_camids"), _as_ids(g_camids, "g_camids")
    num_query, num_gallery = q_pids.shape[0], g_pids.shape[0]
    if q_camids.shape[0] != num_query:
        raise ValueError(f"q_camids has {q_camids.shape[0]} entries but q_pids has {num_query}")
    if g_camids.shape[0] != num_gallery:
        raise ValueError(f"g_camids has {g_camids.shape[0]} entries but g_pids has {num_gallery}")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}")
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(num_gallery, 1))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    if isinstance(distmat, (Tensor, np.ndarray)):
        matrix = torch.as_tensor(distmat)
        if tuple(matrix.shape) != (num_query, num_gallery):
            raise ValueError(
                f"distmat must be [Nq, Ng] = [{num_query}, {num_gallery}] (from q_pids and g_pids), "
                f"got shape {tuple(matrix.shape)}"
            )
        if not matrix.is_floating_point():
            raise TypeError(f"distmat must be floating point, got {matrix.dtype}")
        rows: DistanceRows = lambda start, end: matrix[start:end]  # noqa: E731
    elif callable(distmat):
        rows = distmat
    else:
        raise TypeError(f"distmat must be a tensor, a numpy array or a callable, got {type(distmat).__name__}")

    accumulator = _RankAccumulator(g_pids, g_camids, max_rank)
    for start in range(0, num_query, chunk_size):
        end = min(start + chunk_size, num_query)
        dist = rows(start, end)
        if not isinstance(dist, Tensor) or tuple(dist.shape) != (end - start, num_gallery):
            got = tuple(dist.shape) if isinstance(dist, Tensor) else type(dist).__name__
            raise ValueError(f"distmat({start}, {end}) must give a [{end - start}, {num_gallery}] tensor, got {got}")
        dist = dist.float().contiguous()
        if torch.isnan(dist.sum()) and torch.isnan(dist).any():  # the sum is one cheap pass
            raise ValueError(f"distmat has NaN in query rows {start}:{end}")
        accumulator.add(dist, q_pids[start:end], q_camids[start:end])
    return accumulator.result()


# -------------------------------------------------------------------------------------------------- metric
_FEATURE_STATES = ("global_feat", "foreground", "parts", "graph", "visibility")


class ReIDMetric(Metric):
    """mAP, mINP and CMC rank-1/5/10 of a query/gallery evaluation, gathered across processes by torchmetrics.

    Each ``update`` appends a batch of features, identities, cameras and query flags (query and gallery images
    may come in any order and mix within a batch); ``compute`` splits query from gallery, compares them with
    :func:`icg.retrieval.icg_distance` (eq. 15 with part visibility for ``ReIDFeatures``, cosine distance for
    plain ``[B, C]`` tensors), optionally re-ranks, and runs :func:`evaluate_rank`.

    Under DDP, Lightning's ``DistributedSampler`` pads the evaluation set by repeating images, which biases the
    figures slightly; pass each image's dataset index as ``sample_index`` and repeats are dropped (first
    occurrence kept). Every process must have called ``update`` at least once before ``compute``.

    Args:
        rerank: apply k-reciprocal re-ranking (memory ``(Nq + Ng)^2``, see
            :func:`icg.retrieval.k_reciprocal_rerank`).
        k1, k2, lambda_value: re-ranking parameters.
        chunk_size: queries evaluated at a time, as in :func:`evaluate_rank` (``None``: automatic); without
            re-ranking the distances are computed chunk by chunk too, so the ``Nq x Ng`` matrix never exists.
        **kwargs: torchmetrics ``Metric`` options (e.g. ``compute_on_cpu=True`` to keep the features in CPU
            memory).

    ``compute`` returns 0-dim float32 tensors ``{"mAP", "mINP", "rank1", "rank5", "rank10"}``, fractions in
    ``[0, 1]`` (NaN, with a warning, when no query has a match in the gallery).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rerank = rerank
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.chunk_size = chunk_size
        for name in (*_FEATURE_STATES, "pids", "camids", "is_query", "sample_index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        features: ReIDFeatures | Tensor,
        pids: Tensor,
        camids: Tensor,
        is_query: Tensor,
        sample_index: Tensor | None = None,
    ) -> None:
        """Appends a batch.

        Args:
            features: ``ReIDFeatures`` of ``B`` images or a ``[B, C]`` tensor.
            pids, camids: ``[B]`` integer identities and cameras.
            is_query: ``[B]`` bool (or 0/1), True for query images, False for gallery images.
            sample_index: ``[B]`` dataset indices, to drop repeated images in ``compute``; give it in every
                update or in none.
        """
        if isinstance(features, Tensor):
            if features.dim() != 2 or not features.is_floating_point():
                raise ValueError(
                    f"features must be ReIDFeatures or a floating [B, C] tensor, got {features.dtype} "
                    f"{tuple(features.shape)}"
                )
            features = ReIDFeatures(global_feat=features)
        elif not isinstance(features, ReIDFeatures):
            raise TypeError(f"features must be ReIDFeatures or a tensor, got {type(features).__name__}")
        batch = len(features)
        labels = {"pids": pids, "camids": camids, "is_query": is_query}
        if sample_index is not None:
            labels["sample_index"] = sample_index
        for name, value in labels.items():
            if not isinstance(value, Tensor) or value.shape != (batch,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a [{batch}] tensor (one per image), got {got}")
            if value.is_floating_point():
                raise TypeError(f"{name} must be integer or bool, got {value.dtype}")
        if len(self.pids) > 0:
            for name in _FEATURE_STATES:
                if (len(getattr(self, name)) > 0) != (getattr(features, name) is not None):
                    raise ValueError(f"features.{name} is present in some updates and missing in others")
            if (len(self.sample_index) > 0) != (sample_index is not None):
                raise ValueError("sample_index must be given in every update or in none")
        for name, value in features.items():
            getattr(self, name).append(value.detach())
        self.pids.append(pids.detach().long())
        self.camids.append(camids.detach().long())
        self.is_query.append(is_query.detach().bool())
        if sample_index is not None:
            self.sample_index.append(sample_index.detach().long())

    def compute(self) -> dict[str, Tensor]:
        pids = _gathered(self.pids)
        if pids is None:
            return self._as_output(RankResult(math.nan, math.nan, torch.full((10,), math.nan, dtype=torch.float64), 0))
        states = {name: _gathered(getattr(self, name)) for name in (*_FEATURE_STATES, "camids", "is_query")}
        for name, value in states.items():
            if value is not None and value.shape[0] != pids.shape[0]:
                raise ValueError(f"{name} has {value.shape[0]} rows but there are {pids.shape[0]} images")
        keep = _first_occurrences(_gathered(self.sample_index), pids.shape[0])
        if keep is not None:
            pids = pids[keep]
            states = {name: None if value is None else value[keep] for name, value in states.items()}
        camids, is_query = states.pop("camids"), states.pop("is_query").bool()
        features = ReIDFeatures(**states)
        query, gallery = features[is_query], features[~is_query]
        q_pids, g_pids, q_camids, g_camids = pids[is_query], pids[~is_query], camids[is_query], camids[~is_query]
        if self.rerank:
            distances: ArrayLike | DistanceRows = k_reciprocal_rerank(
                icg_distance(query, gallery),
                icg_distance(query, query),
                icg_distance(gallery, gallery),
                k1=self.k1,
                k2=self.k2,
                lambda_value=self.lambda_value,
            )
        else:
            distances = icg_distance_rows(query, gallery)
        result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids, max_rank=10, chunk_size=self.chunk_size)
        if result.num_valid_queries == 0:
            rank_zero_warn(
                f"ReIDMetric: none of the {len(query)} queries has a true match among the {len(gallery)} gallery "
                "images (same identity, other camera); the figures are NaN."
            )
        return self._as_output(result)

    def _as_output(self, result: RankResult) -> dict[str, Tensor]:
        return {
            name: torch.tensor(value, dtype=torch.float32, device=self.device)
            for name, value in result.to_dict().items()
        }


def _gathered(state: list[Tensor] | Tensor) -> Tensor | None:
    """A list state (one process) or its gathered concatenation (after a sync) as one tensor; None when empty
    (torchmetrics syncs an empty list as a 1-D empty tensor)."""
    if isinstance(state, Tensor):
        return state if state.numel() > 0 else None
    parts = [t for t in state if t.numel() > 0]
    return torch.cat(parts) if parts else None


def _first_occurrences(index: Tensor | None, size: int) -> Tensor | None:
    """Positions of the first occurrence of each sample index, in order; None when there is nothing to drop."""
    if index is None:
        return None
    if index.shape[0] != size:
        raise ValueError(f"sample_index has {index.shape[0]} entries but there are {size} images")
    unique, inverse = torch.unique(index, return_inverse=True)
    if unique.shape[0] == size:
        return None
    position = torch.arange(size, device=index.device)
    first = torch.full_like(unique, size).scatter_reduce_(0, inverse, position, reduce="amin")
    return first.sort().values


# ---------------------------------------------------------------------------------------------------- table
_DISPLAY_NAMES = {"mAP": "mAP", "mINP": "mINP", "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10"}


def format_rank_table(results: Mapping[str, float | Tensor], title: str = "Re-ID evaluation") -> str:
    """A plain-text table of fractions as percentages with one decimal (``n/a`` for NaN), e.g.::

    Re-ID evaluation
    ----------------
    mAP       88.9%
    Rank-1    95.4%
    """
    rows = []
    for name, value in results.items():
        number = float(value)
        rows.append((_DISPLAY_NAMES.get(name, name), "n/a" if math.isnan(number) else f"{100 * number:.1f}%"))
    name_width = max((len(name) for name, _ in rows), default=0)
    value_width = max((len(text) for _, text in rows), default=0)
    width = max(len(title), name_width + 2 + value_width)
    lines = [title, "-" * width]
    lines += [f"{name:<{name_width}}  {text:>{value_width}}" for name, text in rows]
    return "\n".join(lines)
