"""The ICG distance of query and gallery images (appendix A.1.1, eq. 13-15).

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

Computation: each feature is L2-normalised once in float32 (also when the features are bf16 or fp16) and the
features of an image are put side by side, the invisible parts zeroed (:class:`NormalizedFeatures`): the
numerator's sum of cosine similarities is then one inner product of two such vectors, and ``sum_k e_k`` one over
the ``[K]`` visibility flags. The whole distance is two matrix products, with no loop over pairs or parts, and
can be computed in chunks of query rows, or for each query's own candidates only
(:func:`icg_distance_candidates`, for re-ranking).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from icg.features import ReIDFeatures

__all__ = [
    "DistanceRows",
    "FeatureInput",
    "NormalizedFeatures",
    "icg_distance",
    "icg_distance_candidates",
    "icg_distance_rows",
]

DistanceRows = Callable[[int, int], Tensor]
"""``rows(start, end)`` gives rows ``start:end`` of a query-gallery distance matrix, ``[end - start, Ng]``."""

FeatureInput = ReIDFeatures | Tensor
"""What the distance compares: a :class:`ReIDFeatures` record, or a plain ``[N, C]`` feature tensor."""

_FIXED = ("global_feat", "foreground", "graph")
Layout = tuple[tuple[str, tuple[int, ...]], ...]
"""The components of features, in column order, each with the shape of one image's feature (``(C,)``,
parts ``(K, C)``)."""


@dataclass(frozen=True)
class NormalizedFeatures:
    """Features as eq. 15 reads them: every feature of an image L2-normalised in float32 and put side by side.

    ``a.vectors @ b.vectors.T`` is the numerator's sum of cosine similarities for every pair and
    ``a.visibility @ b.visibility.T`` the number of parts visible in both, from which :func:`icg_distance` computes
    eq. 15. Build one with :meth:`of`; every distance function takes one in place of a :class:`ReIDFeatures`, so
    that a gallery is normalised once (a gallery index stores it).

    Attributes:
        vectors: ``[N, D]`` float32: global, foreground, graph (those present), then the ``K`` parts with the
            invisible ones zeroed, each L2-normalised (a zero vector stays zero).
        visibility: ``[N, K]`` float32 (1: visible), ``None`` without parts.
        layout: the components and their shapes per image, in column order (``D`` is the sum of their sizes).
    """

    vectors: Tensor
    visibility: Tensor | None
    layout: Layout

    @classmethod
    def of(cls, features: FeatureInput | NormalizedFeatures, name: str = "features") -> NormalizedFeatures:
        """``features`` normalised (returned as they are when they already are); ``name`` is used in errors."""
        if isinstance(features, NormalizedFeatures):
            return features
        features = _as_features(features, name)
        layout = _layout(features)
        vectors = torch.empty(len(features), sum(math.prod(shape) for _, shape in layout), device=features.device)
        start = 0
        for component, shape in layout:  # each normalised straight into its columns
            end = start + math.prod(shape)
            columns = vectors[:, start:end].view(len(features), *shape)
            F.normalize(getattr(features, component).float(), dim=-1, out=columns)
            start = end
        visibility = None
        if features.parts is not None:
            visibility = features.visibility.float()
            columns.mul_(visibility.unsqueeze(2))  # the parts are last
        return cls(vectors, visibility, layout)

    @property
    def num_fixed(self) -> int:
        """The number of fixed terms of eq. 15 (global, foreground, graph: those present)."""
        return sum(component in _FIXED for component, _ in self.layout)

    @property
    def device(self) -> torch.device:
        return self.vectors.device

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def rows(self, start: int, end: int) -> NormalizedFeatures:
        """Rows ``start:end`` (views)."""
        visibility = None if self.visibility is None else self.visibility[start:end]
        return NormalizedFeatures(self.vectors[start:end], visibility, self.layout)

    def take(self, rows: Tensor) -> NormalizedFeatures:
        """The records of ``rows`` (1-d int64, non-negative), gathered with ``index_select``."""
        visibility = None if self.visibility is None else self.visibility.index_select(0, rows)
        return NormalizedFeatures(self.vectors.index_select(0, rows), visibility, self.layout)

    def to(self, device: torch.device | str) -> NormalizedFeatures:
        visibility = None if self.visibility is None else self.visibility.to(device)
        return NormalizedFeatures(self.vectors.to(device), visibility, self.layout)


def _as_features(x: FeatureInput, name: str) -> ReIDFeatures:
    if isinstance(x, ReIDFeatures):
        return x
    if isinstance(x, Tensor):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating [N, C] tensor or ReIDFeatures, got {x.dtype} {tuple(x.shape)}")
        return ReIDFeatures(global_feat=x)
    raise TypeError(f"{name} must be a Tensor, ReIDFeatures or NormalizedFeatures, got {type(x).__name__}")


def _layout(features: ReIDFeatures) -> Layout:
    names = [name for name in (*_FIXED, "parts") if getattr(features, name) is not None]
    return tuple((name, tuple(getattr(features, name).shape[1:])) for name in names)


def _check_compatible(query: NormalizedFeatures | ReIDFeatures, gallery: NormalizedFeatures | ReIDFeatures) -> None:
    def shapes(x: NormalizedFeatures | ReIDFeatures) -> dict[str, tuple[int, ...]]:
        return dict(x.layout if isinstance(x, NormalizedFeatures) else _layout(x))

    q, g = shapes(query), shapes(gallery)
    for name in (*_FIXED, "parts"):
        if (name in q) != (name in g):
            has, lacks = ("query", "gallery") if name in q else ("gallery", "query")
            raise ValueError(f"{has} has {name} features but {lacks} does not")
        if name in q and q[name] != g[name]:
            raise ValueError(
                f"{name} features differ in shape: query {q[name]}, gallery {g[name]} per image "
                "(all but the first dimension must agree)"
            )
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")


def _distance_into(query: NormalizedFeatures, gallery: NormalizedFeatures, out: Tensor) -> None:
    """Writes eq. 15 for all pairs into ``out`` ``[Nq, Ng]`` (contiguous), with one temporary of that size
    when there are parts."""
    torch.mm(query.vectors, gallery.vectors.T, out=out)
    shared_parts = None if query.visibility is None else torch.mm(query.visibility, gallery.visibility.T)
    _similarities_to_distances(out, shared_parts, query.num_fixed)


def _similarities_to_distances(out: Tensor, shared_parts: Tensor | None, num_fixed: int) -> None:
    """Turns the numerator's sum of similarities ``s`` held in ``out`` into eq. 15's ``d = (n - s) / n``, in place;
    ``n`` is ``num_fixed`` plus the parts visible in both images of the pair (``shared_parts``, same shape as
    ``out``, overwritten; ``None`` without parts)."""
    if shared_parts is None:
        out.mul_(-1.0 / num_fixed).add_(1.0)
        return
    terms = shared_parts.add_(num_fixed)
    out.neg_().add_(terms).div_(terms)


def _prepare(
    query: FeatureInput | NormalizedFeatures, gallery: FeatureInput | NormalizedFeatures
) -> tuple[NormalizedFeatures, NormalizedFeatures]:
    q, g = NormalizedFeatures.of(query, "query"), NormalizedFeatures.of(gallery, "gallery")
    _check_compatible(q, g)
    return q, g


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def icg_distance(
    query: FeatureInput | NormalizedFeatures,
    gallery: FeatureInput | NormalizedFeatures,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """ICG distance of every query-gallery pair (eq. 13-15), or the cosine distance for plain tensors.

    Args:
        query: ``ReIDFeatures`` of ``Nq`` images, a ``[Nq, C]`` tensor, or their :class:`NormalizedFeatures`.
        gallery: the same kind of features for ``Ng`` images (same components, widths and ``K``).
        chunk_size: compute this many query rows at a time (bounds the temporaries to ``chunk_size x Ng``;
            the result is still the full matrix). ``None``: all rows at once.

    Returns:
        ``[Nq, Ng]`` float32 distances in ``[0, 2]`` (up to rounding) on the features' device.

    Memory: a float32 copy of the normalised features of both sets (none for :class:`NormalizedFeatures`), the
    result, and (with parts) one ``[chunk, Ng]`` temporary.
    """
    _check_chunk_size(chunk_size)
    q, g = _prepare(query, gallery)
    out = torch.empty(len(q), len(g), dtype=torch.float32, device=q.device)
    step = chunk_size or max(len(q), 1)
    for start in range(0, len(q), step):
        end = min(start + step, len(q))
        _distance_into(q.rows(start, end), g, out[start:end])
    return out


def icg_distance_candidates(
    query: FeatureInput | NormalizedFeatures,
    gallery: FeatureInput | NormalizedFeatures,
    candidates: Tensor,
    *,
    chunk_size: int = 64,
) -> Tensor:
    """ICG distance of each query to its own candidate gallery rows (eq. 13-15): what a re-ranking of candidates
    needs, without the distances to the rest of the gallery.

    ``icg_distance_candidates(q, g, c)`` equals ``icg_distance(q, g).gather(1, c)`` (up to float rounding), at the
    cost of ``M`` rows per query instead of ``Ng``: only the candidates' features are read (and normalised, unless
    ``gallery`` is :class:`NormalizedFeatures`).

    Args:
        query: ``ReIDFeatures`` of ``Nq`` images, a ``[Nq, C]`` tensor, or their :class:`NormalizedFeatures`.
        gallery: the same kind of features for ``Ng`` images (e.g. memory-mapped from disk: only the candidate
            rows are read).
        candidates: ``[Nq, M]`` int64 gallery rows, on the CPU or the features' device.
        chunk_size: query rows at a time (bounds the gathered features to ``chunk_size x M`` rows).

    Returns:
        ``[Nq, M]`` float32 distances on the query's device.
    """
    _check_chunk_size(chunk_size)
    q = NormalizedFeatures.of(query, "query")
    if not isinstance(gallery, NormalizedFeatures):
        gallery = _as_features(gallery, "gallery")
    _check_compatible(q, gallery)
    if candidates.dim() != 2 or candidates.shape[0] != len(q) or candidates.dtype != torch.int64:
        raise ValueError(f"candidates must be int64 [Nq={len(q)}, M], got {candidates.dtype} {tuple(candidates.shape)}")
    if candidates.numel() and not (0 <= int(candidates.min()) and int(candidates.max()) < len(gallery)):
        raise IndexError(
            f"candidates must be gallery rows in [0, {len(gallery)}), got {candidates.min()}..{candidates.max()}"
        )
    width = candidates.shape[1]
    out = torch.empty(len(q), width, dtype=torch.float32, device=q.device)
    for start in range(0, len(q), chunk_size):
        end = min(start + chunk_size, len(q))
        rows, count = q.rows(start, end), end - start
        picked = NormalizedFeatures.of(gallery.take(candidates[start:end].flatten().to(gallery.device))).to(q.device)
        # [n, M, D] @ [n, D, 1]: the similarities of each query with its own candidates, [n, M]
        similarity = picked.vectors.view(count, width, -1).bmm(rows.vectors[:, :, None])[:, :, 0]
        shared_parts = None
        if rows.visibility is not None:
            shared_parts = picked.visibility.view(count, width, -1).bmm(rows.visibility[:, :, None])[:, :, 0]
        _similarities_to_distances(similarity, shared_parts, q.num_fixed)
        out[start:end] = similarity
    return out


def icg_distance_rows(
    query: FeatureInput | NormalizedFeatures, gallery: FeatureInput | NormalizedFeatures
) -> DistanceRows:
    """A chunked source of :func:`icg_distance`: normalises both sets once and returns ``rows(start, end)``,
    which computes only query rows ``start:end`` (``[end - start, Ng]``).

    Pass it to :func:`icg.metrics.evaluate_rank` to evaluate without ever holding the whole ``Nq x Ng`` matrix.
    """
    q, g = _prepare(query, gallery)

    def rows(start: int, end: int) -> Tensor:
        if not 0 <= start <= end <= len(q):
            raise IndexError(f"rows({start}, {end}) is outside the {len(q)} query rows")
        out = torch.empty(end - start, len(g), dtype=torch.float32, device=q.device)
        _distance_into(q.rows(start, end), g, out)
        return out

    return rows
