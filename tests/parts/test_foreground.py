"""The foreground rules: eq. 3 by a share or Otsu's threshold (against brute force), the identity contrast (against
loops), and the person found where the norms find the backdrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.parts import foreground_target, identity_contrast, otsu_thresholds, relative_activation, split_foreground


def test_foreground_target_hand_case() -> None:
    # Cell norms 5, 1, 2.5, 10 -> relative 0.5, 0.1, 0.25, 1.0; 0.5 counts as foreground (>=).
    cells = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.5], [6.0, 8.0]])
    image = cells.T.reshape(2, 2, 2)
    # The second image is the first scaled by 100 and the third is all zero: the max is per image.
    feature_map = torch.stack([image, 100 * image, torch.zeros_like(image)])
    relative = torch.tensor([[0.5, 0.1], [0.25, 1.0]])
    torch.testing.assert_close(relative_activation(feature_map), torch.stack([relative, relative, 0 * relative]))
    target = foreground_target(feature_map)
    assert target.dtype == torch.long
    expected = torch.tensor([[[1, 0], [0, 1]], [[1, 0], [0, 1]], [[0, 0], [0, 0]]])
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(foreground_target(feature_map, threshold=0.2)[0], torch.tensor([[1, 0], [1, 1]]))


def test_foreground_target_is_detached_and_checks_input() -> None:
    feature_map = torch.rand(1, 3, 2, 2, requires_grad=True)
    assert not foreground_target(feature_map).requires_grad
    with pytest.raises(ValueError, match="threshold"):
        foreground_target(feature_map, threshold=1.5)
    with pytest.raises(ValueError, match="feature_map"):
        foreground_target(torch.rand(3, 2, 2))


def _otsu_brute_force(values: np.ndarray) -> float:
    """Every split of the sorted values into a lower and an upper group; the upper group's smallest value of the
    split with the largest between-group variance (first one on ties)."""
    ordered = np.sort(values)
    best, threshold = -1.0, ordered[0]
    for split in range(1, len(ordered)):
        lower, upper = ordered[:split], ordered[split:]
        between = len(lower) / len(ordered) * len(upper) / len(ordered) * (upper.mean() - lower.mean()) ** 2
        if between > best + 1e-12:
            best, threshold = between, ordered[split]
    return float(threshold)


def test_otsu_thresholds_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.random(12), np.r_[rng.normal(0.2, 0.05, 20), rng.normal(0.8, 0.05, 7)], rng.random(2)]
    for row in rows:
        got = otsu_thresholds(torch.from_numpy(row)[None])
        assert got.item() == pytest.approx(_otsu_brute_force(row))


def test_otsu_foreground_splits_two_levels_whatever_their_scale() -> None:
    # A bright 2x1 object on a dim background: eq. 3 at 0.5 calls everything foreground when the background is
    # at 0.6 of the object, Otsu's split still finds the object.
    image = torch.full((1, 4, 3, 2), 0.6)
    image[:, :, 1, :] = 1.0
    expected = torch.tensor([[[0, 0], [1, 1], [0, 0]]])
    torch.testing.assert_close(foreground_target(image, threshold="otsu"), expected)
    torch.testing.assert_close(foreground_target(7 * image, threshold="otsu"), expected)
    assert foreground_target(image).all()
    with pytest.raises(ValueError, match="otsu"):
        foreground_target(image, threshold="median")


def _identity_contrast_loops(cells: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each cell: mean over the other images of the identity of the best cosine in that image, minus the mean
    over the reference images of the same; every similarity computed on its own."""
    n, m, _ = cells.shape
    scores = np.zeros((n, m))
    for i in range(n):
        for a in range(m):
            own = [max(cells[i, a] @ cells[j, b] for b in range(m)) for j in range(n) if j != i]
            other = [max(cells[i, a] @ ref[b] for b in range(m)) for ref in references]
            scores[i, a] = np.mean(own) - np.mean(other)
    return scores


def test_identity_contrast_matches_loops() -> None:
    generator = torch.Generator().manual_seed(0)
    cells = torch.nn.functional.normalize(torch.randn(3, 5, 4, generator=generator), dim=2)
    references = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=generator), dim=2)
    expected = _identity_contrast_loops(cells.double().numpy(), references.double().numpy())
    for chunk in (4096, 4):  # in one block, and in blocks that split images
        got = identity_contrast(cells, references, chunk=chunk)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="n >= 2"):
        identity_contrast(cells[:1], references)


def test_identity_contrast_finds_the_person_where_the_norms_find_the_backdrop() -> None:
    # Cell 0 shows the person (their own direction, in every image of theirs), cells 1-3 a backdrop that other
    # people's images show too, with larger norms: eq. 3 picks the backdrop, the contrast picks the person.
    person, backdrop = torch.eye(4)[0], torch.eye(4)[1]
    images = torch.stack([person, 3 * backdrop, 3 * backdrop, 3 * backdrop])[None].repeat(3, 1, 1)
    others = torch.stack([torch.eye(4)[2], backdrop, backdrop, backdrop])[None].repeat(2, 1, 1)
    unit = torch.nn.functional.normalize(images, dim=2)
    score = identity_contrast(unit, torch.nn.functional.normalize(others, dim=2))
    assert (score[:, 0] > score[:, 1:].amax(dim=1)).all()
    maps = images.transpose(1, 2).reshape(3, 4, 2, 2)  # the same cells as [B, C, h, w]
    assert foreground_target(maps).flatten(1)[:, 0].eq(0).all()


def test_split_foreground_by_share_or_otsu() -> None:
    relative = torch.tensor([[[0.1, 0.2], [0.9, 1.0]], [[1.0, 0.45], [0.5, 0.55]]])
    torch.testing.assert_close(split_foreground(relative, 0.5), torch.tensor([[[0, 0], [1, 1]], [[1, 0], [1, 1]]]))
    torch.testing.assert_close(split_foreground(relative, "otsu")[0], torch.tensor([[0, 0], [1, 1]]))
    torch.testing.assert_close(split_foreground(relative, "otsu")[1], torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="split_foreground"):
        split_foreground(relative, 2.0)
