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

Computation: each feature is L2-normalised once in float32 (also when the features are bf16 or fp16); the
invisible parts are zeroed, so that ``sum_k e_k cos_k`` is a single matrix product over the flattened
``[K * C]`` part vectors and ``sum_k e_k`` one over the ``[K]`` visibility flags. The whole distance is a sum
of matrix products, with no loop over pairs or parts, and can be computed in chunks of query rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from icg.features import ReIDFeatures

__all__ = ["DistanceRows", "FeatureInput", "icg_distance", "icg_distance_rows"]

DistanceRows = Callable[[int, int], Tensor]
"""``rows(start, end)`` gives rows ``start:end`` of a query-gallery distance matrix, ``[end - start, Ng]``."""

FeatureInput = ReIDFeatures | Tensor
"""What the distance compares: a :class:`ReIDFeatures` record, or a plain ``[N, C]`` feature tensor."""

_FIXED = ("global_feat", "foreground", "graph")


@dataclass
class _Normalized:
    """Features ready for matrix products: each block ``[N, D_b]`` float32 with unit rows (parts: ``[N, K * C]``,
    invisible parts zeroed), so that ``sum_b q_b @ g_b.T`` is the sum of the cosine similarities of eq. 15's
    numerator; ``visibility`` ``[N, K]`` float32 or None; ``num_fixed`` the number of fixed terms."""

    blocks: list[Tensor]
    visibility: Tensor | None
    num_fixed: int

    def rows(self, start: int, end: int) -> _Normalized:
        vis = None if self.visibility is None else self.visibility[start:end]
        return _Normalized([b[start:end] for b in self.blocks], vis, self.num_fixed)


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


def _normalize(features: ReIDFeatures) -> _Normalized:
    blocks = [F.normalize(getattr(features, n).float(), dim=1) for n in _FIXED if getattr(features, n) is not None]
    visibility = None
    if features.parts is not None:
        visibility = features.visibility.float()
        parts = F.normalize(features.parts.float(), dim=2)
        parts.mul_(visibility.unsqueeze(2))
        blocks.append(parts.flatten(1))
    return _Normalized(blocks, visibility, num_fixed=len(blocks) - (visibility is not None))


def _distance_into(query: _Normalized, gallery: _Normalized, out: Tensor) -> None:
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


def _prepare(query: FeatureInput, gallery: FeatureInput) -> tuple[_Normalized, _Normalized]:
    q, g = _as_features(query, "query"), _as_features(gallery, "gallery")
    _check_compatible(q, g)
    return _normalize(q), _normalize(g)


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
