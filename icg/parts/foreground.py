"""The foreground rules: which cells of ``F_g`` are the person (paper section 2.1, eq. 3), for the training target of
``L_sep`` and for the part clustering alike.

Two signals, one threshold (:data:`FgSignal`, :data:`FgThreshold`):

* ``"activation"`` (the paper, eq. 3): a cell's norm ``||F_g(x, y)||_2`` over the image's largest
  (:func:`relative_activation`). Computed online for every training batch (:func:`foreground_target`) and in the
  clustering pass.
* ``"identity"``: what recurs in an identity's other images and not in other people's (:func:`identity_contrast`),
  rescaled per image to ``[0, 1]`` (:func:`identity_foreground`). It needs all of an identity's images, so only
  the clustering pass computes it, and the training step reads ``L_sep``'s target from the pseudo-labels.

The threshold splits each image's scores: a fixed share (the paper: 0.5) or ``"otsu"``, chosen per image where the
between-group variance is largest (:func:`otsu_thresholds`), which follows the contrast between person and
background whatever the scores' level. ``docs/DECISIONS.md`` says when each rule is the right one.

Why ``F_g`` and why its norms cannot be moved by the pixel losses: see :mod:`icg.model.afm` (the pixel
classifiers read L2-normalised cells, so ``L_sep`` and ``L_par`` give the attention no gradient).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "REFERENCE_IMAGES",
    "FgSignal",
    "FgThreshold",
    "check_fg_signal",
    "check_fg_threshold",
    "foreground_target",
    "identity_contrast",
    "identity_foreground",
    "otsu_thresholds",
    "relative_activation",
    "split_foreground",
]

FgThreshold = float | str
"""How each image's foreground scores (in ``[0, 1]``, the largest 1) are split: a share in ``[0, 1]``, or
``"otsu"``."""

FgSignal = Literal["activation", "identity"]
"""What a cell's foreground score is: its activation (eq. 3) or its identity contrast (:func:`identity_contrast`)."""

REFERENCE_IMAGES = 64
"""Images of other identities, spread evenly over the training set, that the identity contrast compares an identity's
cells with (the same images for every identity and every process)."""


def check_fg_threshold(threshold: FgThreshold, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``threshold`` is a share in ``[0, 1]`` or ``"otsu"``."""
    if threshold == "otsu" or (
        isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0.0 <= threshold <= 1.0
    ):
        return
    raise ValueError(f"{owner}: fg_threshold must be in [0, 1] or 'otsu', got {threshold!r}")


def check_fg_signal(signal: FgSignal, owner: str) -> None:
    """A ``ValueError`` that names ``owner`` unless ``signal`` is ``"activation"`` or ``"identity"``."""
    if signal not in ("activation", "identity"):
        raise ValueError(f"{owner}: fg_signal must be 'activation' or 'identity', got {signal!r}")


def relative_activation(feature_map: Tensor) -> Tensor:
    """The activation of eq. 3: per image, ``||F(x, y)||_2`` divided by its maximum over the image.

    Args:
        feature_map: ``[B, C, h, w]`` (not detached here: detach it for a target).

    Returns:
        float32 ``[B, h, w]`` in ``[0, 1]``; an all-zero image gives zeros.
    """
    activation = torch.linalg.vector_norm(feature_map.float(), dim=1)
    peak = activation.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return activation / peak[:, None, None]


def otsu_thresholds(values: Tensor) -> Tensor:
    """Per row, the value that splits the row into two groups of largest between-group variance (Otsu 1979).

    Args:
        values: ``[B, n]``, ``n >= 2``.

    Returns:
        ``[B]``: the smallest value of the upper group (``values >= threshold`` is that group).
    """
    ordered = values.sort(dim=1).values
    n = ordered.shape[1]
    below = torch.arange(1, n, device=values.device, dtype=ordered.dtype)  # size of the lower group
    cumulative = ordered.cumsum(dim=1)
    lower_mean = cumulative[:, :-1] / below
    upper_mean = (cumulative[:, -1:] - cumulative[:, :-1]) / (n - below)
    between = below * (n - below) * (upper_mean - lower_mean) ** 2
    return ordered.gather(1, between.argmax(dim=1, keepdim=True) + 1)[:, 0]


def split_foreground(relative: Tensor, threshold: FgThreshold = 0.5) -> Tensor:
    """Foreground (1) and background (0) of every cell from a per-image score in ``[0, 1]``: the cells at or above
    ``threshold``, or with ``threshold="otsu"`` the upper group of Otsu's split of the image's scores.

    Args:
        relative: ``[B, h, w]`` scores, each image's largest 1 (:func:`relative_activation`,
            :func:`identity_foreground`).
        threshold: in ``[0, 1]``, or ``"otsu"``.

    Returns:
        ``LongTensor [B, h, w]`` of 0 / 1. An image of equal scores is all foreground (all background for a fixed
        threshold above its scores).
    """
    check_fg_threshold(threshold, "split_foreground")
    if threshold == "otsu":
        if relative[0].numel() < 2:
            return torch.ones_like(relative, dtype=torch.long)
        return (relative >= otsu_thresholds(relative.flatten(1))[:, None, None]).long()
    return (relative >= threshold).long()


def foreground_target(feature_map: Tensor, threshold: FgThreshold = 0.5) -> Tensor:
    """Foreground pseudo-label of every cell from its activation (eq. 3): :func:`relative_activation` of the
    detached map (the target must not pull the features towards itself), split by :func:`split_foreground`.

    Args:
        feature_map: ``F_g``, ``[B, C, h, w]``.
        threshold: in ``[0, 1]``, or ``"otsu"``.

    Returns:
        ``LongTensor [B, h, w]`` of 0 / 1. An all-zero image is all background (for ``threshold > 0``; Otsu: all
        foreground).
    """
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must be [B, C, h, w], got shape {tuple(feature_map.shape)}")
    check_fg_threshold(threshold, "foreground_target")
    return split_foreground(relative_activation(feature_map.detach()), threshold)


def identity_contrast(cells: Tensor, references: Tensor, *, chunk: int = 4096) -> Tensor:
    """How much more each cell recurs in its identity's other images than in other people's images.

    For a cell of image ``i``: the mean, over the identity's other images, of its best cosine similarity to a
    cell of that image, minus the same mean over the reference images (other identities). The person is what
    the images of one identity share and other identities do not; a backdrop, seen by one camera, recurs in
    other people's images too, and cells at the image border look alike everywhere. It asks nothing of the
    features' norms, which a network trained from scratch makes larger on the background.

    Args:
        cells: ``[n, m, C]`` unit cell features of the ``n >= 2`` images of one identity, ``m = h * w`` cells each.
        references: ``[r, m, C]`` unit cell features of ``r >= 1`` images of other identities.
        chunk: rows of the similarity matrices computed at once (bounds memory).

    Returns:
        ``[n, m]`` float32 scores in ``[-2, 2]``.
    """
    n, m, dim = cells.shape
    if n < 2 or len(references) < 1 or references.shape[1:] != (m, dim):
        raise ValueError(
            f"identity_contrast: needs [n >= 2, m, C] cells and [r >= 1, m, C] references, got "
            f"{tuple(cells.shape)} and {tuple(references.shape)}"
        )
    flat, reference_flat = cells.reshape(n * m, dim).float(), references.reshape(-1, dim).float()
    image = torch.arange(n, device=cells.device).repeat_interleave(m)
    scores = []
    for start in range(0, n * m, chunk):
        rows = flat[start : start + chunk]
        best_own = (rows @ flat.T).view(len(rows), n, m).amax(dim=2)  # [rows, n]: best match in each image
        own_image = image[start : start + chunk, None]
        best_own = best_own.masked_fill(own_image == torch.arange(n, device=cells.device), 0.0)
        best_other = (rows @ reference_flat.T).view(len(rows), -1, m).amax(dim=2)
        scores.append(best_own.sum(dim=1) / (n - 1) - best_other.mean(dim=1))
    return torch.cat(scores).view(n, m)


def identity_foreground(cells: Tensor, references: Tensor, size: tuple[int, int], threshold: FgThreshold) -> Tensor:
    """The foreground of an identity's images by the identity contrast: :func:`identity_contrast` rescaled per image
    to ``[0, 1]`` and split by :func:`split_foreground`.

    Args:
        cells: ``[n, h * w, C]`` unit cell features of the identity's ``n >= 2`` images.
        references: ``[r, h * w, C]`` unit cell features of other identities' images.
        size: ``(h, w)``.
        threshold: in ``[0, 1]``, or ``"otsu"``.

    Returns:
        ``bool [n, h, w]``.
    """
    score = identity_contrast(cells, references)
    low, high = score.amin(dim=1, keepdim=True), score.amax(dim=1, keepdim=True)
    relative = (score - low) / (high - low).clamp_min(torch.finfo(torch.float32).eps)
    return split_foreground(relative.view(-1, *size), threshold).bool()
