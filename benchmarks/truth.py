"""Measuring part maps against the synthetic generator's true part masks (shared by the benchmark scripts).

Masks are sampled at the pixel that stands for each feature cell (:func:`icg.parts.cell_centers`, the same
pixel the training step reads labels at), so a pseudo-label or a predicted part is compared with the body part
drawn at the cell's centre: 0 background, 1 head, 2 upper body, 3 legs, 4 shoes, 5 bag.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from icg.data.synthetic import MASK_FOLDER, PART_LABELS
from icg.parts import cell_centers

NUM_TRUE_LABELS = len(PART_LABELS)


def true_part_cells(paths: Sequence[str], label_size: tuple[int, int]) -> np.ndarray:
    """The true part label at each feature cell of each image: ``uint8 [N, h, w]``."""
    cells = []
    for path in map(Path, paths):
        mask = np.asarray(Image.open(path.parent.parent / MASK_FOLDER / path.parent.name / f"{path.stem}.png"))
        rows, cols = cell_centers(label_size, mask.shape)
        cells.append(mask[rows.numpy()][:, cols.numpy()])
    return np.stack(cells)


def label_counts(labels: np.ndarray, truth: np.ndarray, largest_label: int) -> np.ndarray:
    """``int64 [max(largest_label, 1) + 1, NUM_TRUE_LABELS]``: cells of each label (row) on each true part."""
    counts = np.zeros((max(largest_label, 1) + 1, NUM_TRUE_LABELS), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64).ravel(), truth.ravel().astype(np.int64)), 1)
    return counts


def label_quality(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How well a part map (0 background, 1..K parts) matches the true masks, over all cells.

    ``fg_share``: cells labelled foreground; ``fg_precision``: share of those on a person; ``fg_recall``: share
    of person cells labelled foreground; ``purity``: share of the part cells on a person whose true part is the
    majority true part of their label (1 = every label is one body part); ``order``: share of the images with at
    least two parts whose parts' mean rows increase with the part number (parts numbered top to bottom).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = label_counts(labels, truth, int(labels.max()))
    on_person = counts[1:, 1:]
    return {
        "fg_share": counts[1:].sum() / counts.sum(),
        "fg_precision": on_person.sum() / max(counts[1:].sum(), 1),
        "fg_recall": on_person.sum() / max(counts[:, 1:].sum(), 1),
        "purity": on_person.max(axis=1).sum() / max(on_person.sum(), 1),
        "order": top_to_bottom_share(labels),
    }


def purity_within_identities(labels: np.ndarray, truth: np.ndarray, pids: Sequence[int]) -> float:
    """Part purity with each identity's labels scored on their own: label ``k`` may be a different body part
    for each identity. Against ``purity`` of :func:`label_quality` (one majority part per label over all images),
    it tells parts that are pure but numbered differently per identity from parts that mix body parts."""
    labels, pids = np.asarray(labels, dtype=np.int64), np.asarray(pids)
    largest = int(labels.max())
    pure = on_person = 0
    for pid in np.unique(pids):
        counts = label_counts(labels[pids == pid], truth[pids == pid], largest)
        pure += counts[1:, 1:].max(axis=1).sum()
        on_person += counts[1:, 1:].sum()
    return pure / max(on_person, 1)


def top_to_bottom_share(labels: np.ndarray) -> float:
    """Share of the images with two or more parts in which the parts' mean rows increase with the part number."""
    rows = np.arange(labels.shape[1])[:, None].repeat(labels.shape[2], axis=1)
    ordered = considered = 0
    for image in labels:
        means = [rows[image == k].mean() for k in range(1, int(image.max()) + 1) if (image == k).any()]
        if len(means) >= 2:
            considered += 1
            ordered += bool(np.all(np.diff(means) > 0))
    return ordered / max(considered, 1)
