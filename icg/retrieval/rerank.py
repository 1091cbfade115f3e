"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of query-gallery distances, vectorised in torch.

It takes any three distance blocks (query-gallery, query-query, gallery-gallery), e.g. those of
:func:`icg.retrieval.icg_distance`; see :func:`k_reciprocal_rerank` for the algorithm and its memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from icg.tensor_ops import expand_segments, key_columns, stable_sort_keys

__all__ = ["k_reciprocal_rerank"]


def _check_matrix(x: Tensor, name: str, shape: tuple[int, int]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")


def k_reciprocal_rerank(
    q_g: Tensor,
    q_q: Tensor,
    g_g: Tensor,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
    pair_budget: int = 1 << 22,
) -> Tensor:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), the published algorithm vectorised in torch.

    With ``N = Nq + Ng`` images and ``D`` the ``N x N`` matrix of the three blocks, as in the authors' code:
    ``D`` is squared and each column divided by its maximum (then transposed: row ``i`` is image ``i``'s
    distances); ``R(i, k)`` is the set of ``i``'s k-reciprocal neighbours (``j`` among ``i``'s ``k + 1``
    nearest and ``i`` among ``j``'s); ``R(i, k1)`` is expanded by ``R(j, round(k1 / 2))`` for every
    ``j`` in it that shares more than 2/3 of its members with ``R(i, k1)``; ``V[i, j] = exp(-D[i, j])``
    normalised over that set; local query expansion averages ``V`` over the ``k2`` nearest neighbours; the
    Jaccard distance is ``1 - sum min(V_i, V_j) / sum max(V_i, V_j)`` and the result
    ``(1 - lambda) * jaccard + lambda * D`` on the query-gallery block. Neighbour lists come from a stable
    order (ties broken by index: query images first, then gallery, each in input order), where the authors'
    ``np.argsort`` breaks ties arbitrarily.

    Use with ICG features: ``k_reciprocal_rerank(icg_distance(q, g), icg_distance(q, q), icg_distance(g, g))``.

    Args:
        q_g: ``[Nq, Ng]`` query-gallery distances.
        q_q: ``[Nq, Nq]`` query-query distances.
        g_g: ``[Ng, Ng]`` gallery-gallery distances.
        k1, k2, lambda_value: the method's parameters (paper: 20, 6, 0.3).
        chunk_size: rows of ``D`` handled at a time.
        pair_budget: (query entry, gallery entry) pairs joined at once in the Jaccard step; a step holds at
            most about twice as many (more only when a single entry has more partners).

    Returns:
        ``[Nq, Ng]`` float32 re-ranked distances on the inputs' device.

    Memory: the inputs are ``N^2`` distances (``Nq^2 + Nq Ng + Ng^2``) -- inherent to the method, which ranks
    every image against every other; for MSMT17 (N = 93,820) they alone take 35 GB in float32. On top of them
    this function holds ``O(chunk_size x N)`` per step, the neighbour lists (``N x (k1 + 1)``), the sparse
    ``V`` (at most ``N x k2 x (k1 + 1)(round(k1 / 2) + 2)`` entries, typically a few hundred per row), the
    Jaccard pairs (``pair_budget``) and the result; it never builds a second dense ``N x N`` matrix.
    """
    if q_q.dim() != 2 or g_g.dim() != 2:
        raise ValueError(f"q_q and g_g must be square matrices, got {tuple(q_q.shape)} and {tuple(g_g.shape)}")
    num_query, num_gallery = q_q.shape[0], g_g.shape[0]
    _check_matrix(q_q, "q_q", (num_query, num_query))
    _check_matrix(g_g, "g_g", (num_gallery, num_gallery))
    _check_matrix(q_g, "q_g", (num_query, num_gallery))
    if not (isinstance(k1, int) and k1 >= 1 and isinstance(k2, int) and k2 >= 1):
        raise ValueError(f"k1 and k2 must be positive ints, got k1={k1!r}, k2={k2!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    for name, value in (("chunk_size", chunk_size), ("pair_budget", pair_budget)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (q_q.device == q_g.device == g_g.device):
        raise ValueError(f"q_g, q_q and g_g must be on one device, got {q_g.device}, {q_q.device}, {g_g.device}")

    total = num_query + num_gallery
    device = q_g.device
    if num_query == 0 or num_gallery == 0:
        return torch.empty(num_query, num_gallery, device=device)
    original = _OriginalDistance(q_g, q_q, g_g)
    k_half = int(round(k1 / 2))  # Python's round, like np.around: half to even
    width = min(max(k1 + 1, k2), total)
    ranks = torch.cat([original.nearest(s, e, width) for s, e in original.chunks(chunk_size)])
    forward = ranks[:, : k1 + 1]
    forward_half = ranks[:, : k_half + 1]
    reciprocal = _reciprocal(forward, chunk_size)
    reciprocal_half = _reciprocal(forward_half, chunk_size)

    parts = [
        _expansion_weights(s, e, original, forward, reciprocal, forward_half, reciprocal_half)
        for s, e in original.chunks(chunk_size)
    ]
    v = _Sparse.from_rows(parts, total)
    if k2 != 1:
        v = _Sparse.from_rows([_query_expansion(s, e, v, ranks[:, :k2]) for s, e in original.chunks(chunk_size)], total)

    gallery_v = v.column_index(first_row=num_query)
    out = torch.empty(num_query, num_gallery, dtype=torch.float32, device=device)
    for start, end in original.chunks(chunk_size):
        if start >= num_query:
            break
        shared = _shared_minimum(start, end, v, gallery_v, num_query, num_gallery, pair_budget)
        jaccard = 1.0 - shared / (2.0 - shared)
        jaccard.mul_(1.0 - lambda_value).add_(original.rows(start, end)[:, num_query:], alpha=lambda_value)
        out[start:end] = jaccard
    return out


class _OriginalDistance:
    """Rows of the authors' ``original_dist``: ``D`` squared, columns divided by their maxima, transposed.

    Row ``i`` of ``D.T`` is column ``i`` of ``D``, read from the three input blocks (``D`` is never built)."""

    def __init__(self, q_g: Tensor, q_q: Tensor, g_g: Tensor) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_query = q_q.shape[0]
        self.total = self.num_query + g_g.shape[0]

    def chunks(self, size: int) -> list[tuple[int, int]]:
        """Row ranges of at most ``size`` rows that never straddle the query/gallery boundary."""
        bounds = [(0, self.num_query), (self.num_query, self.total)]
        return [(s, min(s + size, hi)) for lo, hi in bounds for s in range(lo, hi, size)]

    def rows(self, start: int, end: int) -> Tensor:
        nq = self.num_query
        if end <= nq:
            left, right = self.q_q[:, start:end].T, self.q_g[start:end]
        else:
            left, right = self.q_g[:, start - nq : end - nq].T, self.g_g[:, start - nq : end - nq].T
        rows = torch.cat([left, right], dim=1).float().square_()
        peak = rows.amax(dim=1, keepdim=True)
        return rows.div_(torch.where(peak > 0, peak, torch.ones_like(peak)))

    def nearest(self, start: int, end: int, width: int) -> Tensor:
        """Indices of the ``width`` nearest images of rows ``start:end``, in stable order."""
        columns = torch.arange(self.total, device=self.q_g.device)
        keys = stable_sort_keys(self.rows(start, end), columns)
        return key_columns(keys.topk(width, dim=1, largest=False, sorted=True).values)


def _reciprocal(forward: Tensor, chunk_size: int) -> Tensor:
    """``[N, k + 1]`` bool: ``forward[i, a]`` has ``i`` among its own ``k + 1`` nearest."""
    out = []
    for start in range(0, forward.shape[0], chunk_size):
        rows = forward[start : start + chunk_size]
        me = torch.arange(start, start + rows.shape[0], device=forward.device)
        out.append((forward[rows] == me[:, None, None]).any(dim=2))
    return torch.cat(out)


@dataclass
class _Sparse:
    """A sparse ``[N, N]`` matrix in CSR order: entries sorted by (row, column), ``offsets`` ``[N + 1]``."""

    rows: Tensor
    cols: Tensor
    vals: Tensor
    offsets: Tensor

    @classmethod
    def from_rows(cls, parts: list[tuple[Tensor, Tensor, Tensor]], size: int) -> _Sparse:
        rows, cols, vals = (torch.cat(x) for x in zip(*parts))
        counts = torch.bincount(rows, minlength=size)
        offsets = torch.zeros(size + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls(rows, cols, vals, offsets)

    def column_index(self, first_row: int) -> _Sparse:
        """The entries of rows ``first_row:`` sorted by column (CSC), ``offsets`` over the columns."""
        start = int(self.offsets[first_row])
        cols, order = torch.sort(self.cols[start:], stable=True)
        counts = torch.bincount(cols, minlength=self.offsets.shape[0] - 1)
        offsets = torch.zeros_like(self.offsets)
        torch.cumsum(counts, 0, out=offsets[1:])
        return _Sparse(self.rows[start:][order], cols, self.vals[start:][order], offsets)


def _expansion_weights(
    start: int,
    end: int,
    original: _OriginalDistance,
    forward: Tensor,
    reciprocal: Tensor,
    forward_half: Tensor,
    reciprocal_half: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``start:end`` of ``V`` as (row, column, value) entries, sorted by row then column."""
    total = original.total
    near, near_ok = forward[start:end], reciprocal[start:end]  # R(i, k1): [n, k1 + 1]
    candidate_sets = forward_half[near]  # R(j, k1 / 2) for each j: [n, k1 + 1, k_half + 1]
    candidate_ok = reciprocal_half[near] & near_ok.unsqueeze(2)
    shared = ((candidate_sets.unsqueeze(3) == near[:, None, None, :]) & near_ok[:, None, None, :]).any(dim=3)
    overlap = (shared & candidate_ok).sum(dim=2).double()
    # The authors' test, in the same float64 arithmetic: |R(j, k1/2) & R(i, k1)| > 2/3 |R(j, k1/2)|.
    accepted = near_ok & (overlap > (2.0 / 3.0) * candidate_ok.sum(dim=2).double())
    members = torch.cat(
        [
            torch.where(near_ok, near, total),
            torch.where(candidate_ok & accepted.unsqueeze(2), candidate_sets, total).flatten(1),
        ],
        dim=1,
    )
    members = members.sort(dim=1).values
    first = torch.ones_like(members, dtype=torch.bool)
    first[:, 1:] = members[:, 1:] != members[:, :-1]
    keep = first & (members < total)
    row, slot = keep.nonzero(as_tuple=True)
    col = members[row, slot]
    weight = torch.exp(-original.rows(start, end)[row, col])
    norm = torch.zeros(end - start, dtype=weight.dtype, device=weight.device).index_add_(0, row, weight)
    return row + start, col, weight / norm[row]


def _query_expansion(start: int, end: int, v: _Sparse, neighbors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``start:end`` of the mean of ``V`` over each row's ``k2`` nearest neighbours."""
    k2, total = neighbors.shape[1], v.offsets.shape[0] - 1
    near = neighbors[start:end].reshape(-1)
    segment, position = expand_segments(v.offsets[near], v.offsets[near + 1] - v.offsets[near])
    row = segment // k2
    keys, inverse = torch.unique(row * total + v.cols[position], return_inverse=True)
    vals = torch.zeros(keys.shape[0], dtype=v.vals.dtype, device=v.vals.device)
    vals.index_add_(0, inverse, v.vals[position]).div_(k2)
    return keys // total + start, keys % total, vals


def _shared_minimum(
    start: int, end: int, v: _Sparse, gallery: _Sparse, num_query: int, num_gallery: int, pair_budget: int
) -> Tensor:
    """``sum_k min(V[i, k], V[j, k])`` for query rows ``start:end`` and all gallery rows: ``[n, Ng]``, by
    joining each query entry ``(i, k)`` with the gallery entries of column ``k`` (the authors' inverted index)."""
    out = torch.zeros(end - start, num_gallery, dtype=torch.float32, device=v.vals.device)
    flat = out.view(-1)
    lo, hi = int(v.offsets[start]), int(v.offsets[end])
    cols = v.cols[lo:hi]
    lengths = gallery.offsets[cols + 1] - gallery.offsets[cols]
    # Runs of query entries cut at every multiple of pair_budget pairs (a run can hold up to twice as many).
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    marks = torch.tensor(list(range(pair_budget, total, pair_budget)), dtype=ends.dtype, device=ends.device)
    bounds = sorted({0, hi - lo, *torch.searchsorted(ends, marks, right=True).tolist()})
    for a, b in zip(bounds[:-1], bounds[1:]):
        entry, position = expand_segments(gallery.offsets[cols[a:b]], lengths[a:b])
        entry += lo + a
        value = torch.minimum(v.vals[entry], gallery.vals[position])
        index = (v.rows[entry] - start) * num_gallery + (gallery.rows[position] - num_query)
        flat.index_add_(0, index, value)
    return out
