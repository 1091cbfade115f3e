"""Retrieval features and distances of ICG (appendix A.1.1, eq. 13-15) and k-reciprocal re-ranking.

At test time every image gives up to four after-BN features: global, foreground, graph (one vector each) and K
part vectors, with a flag per part saying whether the part is visible in the image. The distance of a query
``q`` and a gallery image ``g`` is

    ``d = (d_global + d_fore + d_graph + sum_k e_k d_part_k) / (3 + sum_k e_k)``,  ``e_k = l_k^q l_k^g``

with ``D(a, b) = 1 - cos(a, b)`` for every term and ``l_k`` the visibility of part ``k`` (eq. 13-15; the paper
writes the part sum up to ``K - 1``, we sum over all ``K`` parts, as the design notes say). Ablations drop the
terms of the branches that are off: the fixed terms are those of the features present, the denominator counts
them, and with the global feature alone (BoT) the distance is the plain cosine distance. A pair with no part
visible in both images is compared on the fixed terms alone. A zero feature vector has cosine similarity 0
with everything.

Computation: each feature is L2-normalised once in float32 (also when the features are bf16 or fp16); the
invisible parts are zeroed, so that ``sum_k e_k cos_k`` is a single matrix product over the flattened
``[K * C]`` part vectors and ``sum_k e_k`` one over the ``[K]`` visibility flags. The whole distance is a sum
of matrix products, with no loop over pairs or parts, and can be computed in chunks of query rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DistanceRows",
    "ReIDFeatures",
    "icg_distance",
    "icg_distance_rows",
    "k_reciprocal_rerank",
]

DistanceRows = Callable[[int, int], Tensor]
"""``rows(start, end)`` gives rows ``start:end`` of a query-gallery distance matrix, ``[end - start, Ng]``."""

_FIXED = ("global_feat", "foreground", "graph")
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass(eq=False)  # element-wise tensor equality has no single truth value
class ReIDFeatures:
    """The retrieval features of a batch of images (what ``ICGModule.extract`` returns).

    Attributes:
        global_feat: after-BN global feature, ``[B, C]`` (always present).
        foreground: after-BN foreground feature, ``[B, C]`` (AFM on).
        parts: after-BN part features, ``[B, K, C]`` (PPC on).
        graph: after-BN graph feature, ``[B, C]`` (FSG on).
        visibility: ``[B, K]`` bool, part ``k`` is visible in the image; present iff ``parts`` is.

    Components may differ in width ``C`` and dtype, but must agree in ``B`` and device. Indexing, slicing and
    :meth:`cat` work along the batch; an integer index gives a record of one image (``B = 1``).
    """

    global_feat: Tensor
    foreground: Tensor | None = None
    parts: Tensor | None = None
    graph: Tensor | None = None
    visibility: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.global_feat, Tensor):
            raise TypeError(f"ReIDFeatures.global_feat must be a tensor, got {type(self.global_feat).__name__}")
        batch, device = self.global_feat.shape[:1], self.global_feat.device
        expected_dims = {"global_feat": 2, "foreground": 2, "graph": 2, "parts": 3, "visibility": 2}
        for name, value in self.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"ReIDFeatures.{name} must be a tensor or None, got {type(value).__name__}")
            if value.dim() != expected_dims[name]:
                layout = {"parts": "[B, K, C]", "visibility": "[B, K]"}.get(name, "[B, C]")
                raise ValueError(f"ReIDFeatures.{name} must be {layout}, got shape {tuple(value.shape)}")
            if value.shape[:1] != batch:
                raise ValueError(
                    f"ReIDFeatures.{name} has {value.shape[0]} rows but global_feat has {self.global_feat.shape[0]}"
                )
            if value.device != device:
                raise ValueError(f"ReIDFeatures.{name} is on {value.device} but global_feat is on {device}")
            if name == "visibility":
                if value.dtype != torch.bool:
                    raise TypeError(f"ReIDFeatures.visibility must be bool, got {value.dtype}")
            elif not value.is_floating_point():
                raise TypeError(f"ReIDFeatures.{name} must be floating point, got {value.dtype}")
        if (self.parts is None) != (self.visibility is None):
            present, missing = ("parts", "visibility") if self.visibility is None else ("visibility", "parts")
            raise ValueError(f"ReIDFeatures.{present} is given without {missing}: give both or neither")
        if self.parts is not None and self.visibility.shape[1] != self.parts.shape[1]:
            raise ValueError(
                f"ReIDFeatures.visibility has {self.visibility.shape[1]} parts but parts has {self.parts.shape[1]}"
            )

    def items(self) -> list[tuple[str, Tensor]]:
        """``(name, tensor)`` of the components present, in field order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def num_parts(self) -> int:
        """``K``, or 0 without part features."""
        return 0 if self.parts is None else self.parts.shape[1]

    @property
    def device(self) -> torch.device:
        return self.global_feat.device

    def __len__(self) -> int:
        return self.global_feat.shape[0]

    def _map(self, fn: Callable[[str, Tensor], Tensor]) -> ReIDFeatures:
        return ReIDFeatures(**{name: fn(name, value) for name, value in self.items()})

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, non_blocking: bool = False
    ) -> ReIDFeatures:
        """Moves every component to ``device``; ``dtype`` converts the features (visibility stays bool)."""
        def move(name: str, t: Tensor) -> Tensor:
            return t.to(device=device, dtype=None if name == "visibility" else dtype, non_blocking=non_blocking)

        return self._map(move)

    def detach(self) -> ReIDFeatures:
        return self._map(lambda _, t: t.detach())

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> ReIDFeatures:
        if isinstance(index, int):
            index = [index]
        if isinstance(index, Tensor) and index.dim() == 0:
            index = index.reshape(1)
        return self._map(lambda _, t: t[index])

    @classmethod
    def cat(cls, items: Sequence[ReIDFeatures]) -> ReIDFeatures:
        """Concatenates records along the batch; all must have the same components."""
        if len(items) == 0:
            raise ValueError("ReIDFeatures.cat needs at least one record")
        names = [name for name, _ in items[0].items()]
        for i, item in enumerate(items):
            if [name for name, _ in item.items()] != names:
                raise ValueError(
                    f"ReIDFeatures.cat: record {i} has components {[n for n, _ in item.items()]}, record 0 has {names}"
                )
        return cls(**{name: torch.cat([getattr(item, name) for item in items]) for name in names})


FeatureInput = Union[ReIDFeatures, Tensor]


@dataclass
class _Normalised:
    """Features ready for matrix products: each block ``[N, D_b]`` float32 with unit rows (parts: ``[N, K * C]``,
    invisible parts zeroed), so that ``sum_b q_b @ g_b.T`` is the sum of the cosine similarities of eq. 15's
    numerator; ``visibility`` ``[N, K]`` float32 or None; ``num_fixed`` the number of fixed terms."""

    blocks: list[Tensor]
    visibility: Tensor | None
    num_fixed: int

    def rows(self, start: int, end: int) -> _Normalised:
        vis = None if self.visibility is None else self.visibility[start:end]
        return _Normalised([b[start:end] for b in self.blocks], vis, self.num_fixed)


def _as_features(x: FeatureInput, name: str) -> ReIDFeatures:
    if isinstance(x, ReIDFeatures):
        return x
    if isinstance(x, Tensor):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating [N, C] tensor or ReIDFeatures, got {x.dtype} {tuple(x.shape)}")
        return ReIDFeatures(global_feat=x)
    raise TypeError(f"{name} must be a Tensor or ReIDFeatures, got {type(x).__name__}")


def _check_compatible(query: ReIDFeatures, gallery: ReIDFeatures) -> None:
    for name in ("global_feat", "foreground", "graph", "parts"):
        q, g = getattr(query, name), getattr(gallery, name)
        if (q is None) != (g is None):
            has, lacks = ("query", "gallery") if g is None else ("gallery", "query")
            raise ValueError(f"{has} has {name} features but {lacks} does not")
        if q is not None and q.shape[1:] != g.shape[1:]:
            raise ValueError(
                f"{name} features differ in shape: query {tuple(q.shape)}, gallery {tuple(g.shape)} "
                "(all but the first dimension must agree)"
            )
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")


def _normalise(features: ReIDFeatures) -> _Normalised:
    blocks = [F.normalize(getattr(features, n).float(), dim=1) for n in _FIXED if getattr(features, n) is not None]
    visibility = None
    if features.parts is not None:
        visibility = features.visibility.float()
        parts = F.normalize(features.parts.float(), dim=2)
        parts.mul_(visibility.unsqueeze(2))
        blocks.append(parts.flatten(1))
    return _Normalised(blocks, visibility, num_fixed=len(blocks) - (visibility is not None))


def _distance_into(query: _Normalised, gallery: _Normalised, out: Tensor) -> None:
    """Writes eq. 15 for all pairs into ``out`` ``[Nq, Ng]`` (contiguous), with one temporary of that size
    when there are parts."""
    torch.mm(query.blocks[0], gallery.blocks[0].T, out=out)
    for q, g in zip(query.blocks[1:], gallery.blocks[1:]):
        out.addmm_(q, g.T)
    # ``out`` now holds the numerator's sum of similarities s; d = (n - s) / n with n the number of terms.
    if query.visibility is None:
        out.mul_(-1.0 / query.num_fixed).add_(1.0)
        return
    terms = torch.mm(query.visibility, gallery.visibility.T).add_(query.num_fixed)
    out.neg_().add_(terms).div_(terms)


def _prepare(query: FeatureInput, gallery: FeatureInput) -> tuple[_Normalised, _Normalised]:
    q, g = _as_features(query, "query"), _as_features(gallery, "gallery")
    _check_compatible(q, g)
    return _normalise(q), _normalise(g)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def icg_distance(query: FeatureInput, gallery: FeatureInput, *, chunk_size: int | None = None) -> Tensor:
    """ICG distance of every query-gallery pair (eq. 13-15), or the cosine distance for plain tensors.

    Args:
        query: ``ReIDFeatures`` of ``Nq`` images or a ``[Nq, C]`` tensor.
        gallery: the same kind of features for ``Ng`` images (same components, widths and ``K``).
        chunk_size: compute this many query rows at a time (bounds the temporaries to ``chunk_size x Ng``;
            the result is still the full matrix). ``None``: all rows at once.

    Returns:
        ``[Nq, Ng]`` float32 distances in ``[0, 2]`` (up to rounding) on the features' device.

    Memory: a float32 copy of the normalised features of both sets, the result, and (with parts) one
    ``[chunk, Ng]`` temporary.
    """
    _check_chunk_size(chunk_size)
    q, g = _prepare(query, gallery)
    num_query, num_gallery = q.blocks[0].shape[0], g.blocks[0].shape[0]
    out = torch.empty(num_query, num_gallery, dtype=torch.float32, device=q.blocks[0].device)
    step = chunk_size or max(num_query, 1)
    for start in range(0, num_query, step):
        end = min(start + step, num_query)
        _distance_into(q.rows(start, end), g, out[start:end])
    return out


def icg_distance_rows(query: FeatureInput, gallery: FeatureInput) -> DistanceRows:
    """A chunked source of :func:`icg_distance`: normalises both sets once and returns ``rows(start, end)``,
    which computes only query rows ``start:end`` (``[end - start, Ng]``).

    Pass it to :func:`icg.metrics.evaluate_rank` to evaluate without ever holding the whole ``Nq x Ng`` matrix.
    """
    q, g = _prepare(query, gallery)
    num_query, num_gallery = q.blocks[0].shape[0], g.blocks[0].shape[0]

    def rows(start: int, end: int) -> Tensor:
        if not 0 <= start <= end <= num_query:
            raise IndexError(f"rows({start}, {end}) is outside the {num_query} query rows")
        out = torch.empty(end - start, num_gallery, dtype=torch.float32, device=q.blocks[0].device)
        _distance_into(q.rows(start, end), g, out)
        return out

    return rows


def _stable_keys(values: Tensor, columns: Tensor) -> Tensor:
    """int64 keys that order like ``(values, columns)`` lexicographically, i.e. like a stable sort of ``values``
    along the columns: the float32 bits, remapped so that integer order is float order, in the high half and
    the column index (``0 <= column < 2**32``) in the low half. Ties are broken by the column, exactly as
    ``torch.sort(stable=True)`` does; ``-0.0`` and ``0.0`` tie. ``values`` must be float32 without NaN."""
    keys = values.contiguous().view(torch.int32).to(torch.int64)
    if bool((keys < 0).any()):  # negative floats or -0.0; distances rarely have them, so test before paying
        keys.masked_fill_(values.reshape(keys.shape) == 0, 0)  # -0.0 ties with 0.0
        keys ^= (keys >> 31) & 0x7FFFFFFF  # negative floats order backwards as integers: flip their magnitude
    keys <<= 32
    keys |= columns
    return keys


# ------------------------------------------------------------------------------------------------ re-ranking
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
        v = _Sparse.from_rows(
            [_query_expansion(s, e, v, ranks[:, :k2]) for s, e in original.chunks(chunk_size)], total
        )

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
        keys = _stable_keys(self.rows(start, end), columns)
        return keys.topk(width, dim=1, largest=False, sorted=True).values & 0xFFFFFFFF


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


def _segments(offsets: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """For segments ``[offsets[s], offsets[s] + lengths[s])``: the segment of each element and the element's
    position in the flat source, concatenated in segment order."""
    segment = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(segment.shape[0], device=lengths.device) - starts[segment] + offsets[segment]
    return segment, position


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


def _query_expansion(start: int, end: int, v: _Sparse, neighbours: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``start:end`` of the mean of ``V`` over each row's ``k2`` nearest neighbours."""
    k2, total = neighbours.shape[1], v.offsets.shape[0] - 1
    near = neighbours[start:end].reshape(-1)
    segment, position = _segments(v.offsets[near], v.offsets[near + 1] - v.offsets[near])
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
        entry, position = _segments(gallery.offsets[cols[a:b]], lengths[a:b])
        entry += lo + a
        value = torch.minimum(v.vals[entry], gallery.vals[position])
        index = (v.rows[entry] - start) * num_gallery + (gallery.rows[position] - num_query)
        flat.index_add_(0, index, value)
    return out
