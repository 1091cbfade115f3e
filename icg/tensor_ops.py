"""Vectorised tensor helpers shared by the rank metric (``icg.metrics``) and the re-ranking
(``icg.retrieval.rerank``): stable-order sort keys and the expansion of ragged segments.

Both sort distances many times per query; packing a ``(distance, column)`` pair into one int64 lets a plain
integer sort, ``topk`` or binary search follow the stable order without a tie-breaking pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["INT64_MAX", "expand_segments", "key_columns", "stable_sort_keys"]

INT64_MAX = torch.iinfo(torch.int64).max
"""Orders after every key of :func:`stable_sort_keys`: the padding of rows of keys."""


def stable_sort_keys(values: Tensor, columns: Tensor) -> Tensor:
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


def key_columns(keys: Tensor) -> Tensor:
    """The column indices packed into the low half of :func:`stable_sort_keys`' keys."""
    return keys & 0xFFFFFFFF


def expand_segments(offsets: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """For segments ``[offsets[s], offsets[s] + lengths[s])``: the segment of each element and the element's
    position in the flat source, concatenated in segment order."""
    segment = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(segment.shape[0], device=lengths.device) - starts[segment] + offsets[segment]
    return segment, position
