from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icg.model import ppc
from icg.model.ppc import (
    LOGIT_SCALE,
    PixelPartClassifier,
    assign_parts,
    part_visibility,
    parts_foreground_logits,
    weighted_mean_pool,
)


def test_classifier_reference_and_shape() -> None:
    torch.manual_seed(0)
    classifier = PixelPartClassifier(5, num_parts=3).double()
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    logits = classifier(x)
    assert logits.shape == (2, 4, 4, 3)
    weight = classifier.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = classifier.conv.bias.detach().numpy()
    xs = x.numpy()
    for b in range(2):
        for i in range(4):
            for j in range(3):
                cell = xs[b, :, i, j]
                expected = LOGIT_SCALE * (weight @ (cell / np.linalg.norm(cell)) + bias)
                np.testing.assert_allclose(logits[b, :, i, j].detach().numpy(), expected, rtol=1e-10)


def test_classifier_ignores_the_scale_of_each_cell() -> None:
    torch.manual_seed(0)
    classifier = PixelPartClassifier(8, num_parts=6)
    x = torch.randn(2, 8, 4, 2)
    scale = torch.rand(2, 1, 4, 2) * 10 + 0.1
    torch.testing.assert_close(classifier(x * scale), classifier(x), rtol=1e-5, atol=1e-5)


def test_classifier_rejects_zero_parts_and_an_unknown_assignment() -> None:
    with pytest.raises(ValueError, match="num_parts"):
        PixelPartClassifier(8, num_parts=0)
    with pytest.raises(ValueError, match="part_assignment"):
        PixelPartClassifier(8, num_parts=3, assignment="union")


def _train_on_positional_parts(steps: int = 200) -> tuple[float, float]:
    """Visible parts per image and cell accuracy of a classifier trained on fixed labels: an 8x4 map with 4 parts
    in the two centre columns and 70% background, features like a CNN's (non-negative, so the classes' mean
    directions are close: cosine ~0.75)."""
    generator = torch.Generator().manual_seed(0)
    channels, num_parts = 256, 4
    labels = torch.zeros(8, 4, dtype=torch.long)
    labels[1:3, 1:3], labels[3:5, 1:3], labels[5:7, 1:3], labels[7, 1:3] = 1, 2, 3, 4
    labels[::2, 2] = 0
    target = labels.expand(32, 8, 4)
    class_means = torch.rand(num_parts + 1, channels, generator=generator)
    features = class_means[target].permute(0, 3, 1, 2) + 0.5 * torch.rand(32, channels, 8, 4, generator=generator)
    torch.manual_seed(0)
    classifier = PixelPartClassifier(channels, num_parts)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(classifier(features), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = classifier(features)
    accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return part_visibility(logits).float().sum(dim=1).mean().item(), accuracy


def test_classifier_becomes_confident_enough_for_parts_to_win_cells(monkeypatch) -> None:
    # Without a scale, logits stay within ~0.6 of the bias and the background prior wins every cell: no visible
    # part (the failure of the code before the scale). With the scale every part wins its cells.
    visible, accuracy = _train_on_positional_parts()
    assert visible == 4.0 and accuracy == 1.0
    monkeypatch.setattr(ppc, "LOGIT_SCALE", 1.0)
    visible_unscaled, _ = _train_on_positional_parts()
    assert visible_unscaled < 1.0


def test_parts_foreground_logits_give_one_minus_background() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 2, dtype=torch.float64)
    probabilities = logits.softmax(dim=1)
    two_way = parts_foreground_logits(logits).softmax(dim=1)
    torch.testing.assert_close(two_way[:, 0], probabilities[:, 0])
    torch.testing.assert_close(two_way[:, 1], probabilities[:, 1:].sum(dim=1))
    with pytest.raises(ValueError, match="part_logits"):
        parts_foreground_logits(torch.randn(2, 1, 3, 2))


def test_weighted_mean_pool_matches_loop() -> None:
    torch.manual_seed(0)
    feature_map = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    weights = torch.rand(2, 5, 4, 2, dtype=torch.float64)
    pooled = weighted_mean_pool(feature_map, weights, eps=1e-6)
    assert pooled.shape == (2, 5, 3)
    f, w = feature_map.numpy(), weights.numpy()
    for b in range(2):
        for k in range(5):
            numerator = np.zeros(3)
            mass = 0.0
            for i in range(4):
                for j in range(2):
                    numerator += w[b, k, i, j] * f[b, :, i, j]
                    mass += w[b, k, i, j]
            np.testing.assert_allclose(pooled[b, k].numpy(), numerator / (mass + 1e-6), rtol=1e-10)


def test_weighted_mean_pool_does_not_scale_with_area() -> None:
    # A constant feature under a 1-cell and a 6-cell mask pools to (almost exactly) that feature both times.
    feature_map = torch.tensor([1.0, -2.0, 3.0])[None, :, None, None].expand(1, 3, 3, 2)
    weights = torch.zeros(1, 2, 3, 2)
    weights[0, 0, 1, 1] = 1.0
    weights[0, 1] = 1.0
    pooled = weighted_mean_pool(feature_map, weights)
    torch.testing.assert_close(pooled[0, 0], torch.tensor([1.0, -2.0, 3.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(pooled[0, 1], torch.tensor([1.0, -2.0, 3.0]), rtol=1e-5, atol=0)


def test_weighted_mean_pool_of_empty_mask_is_zero() -> None:
    feature_map = torch.randn(1, 4, 2, 2, requires_grad=True)
    pooled = weighted_mean_pool(feature_map, torch.zeros(1, 1, 2, 2))
    assert torch.equal(pooled, torch.zeros(1, 1, 4))
    pooled.sum().backward()
    assert torch.isfinite(feature_map.grad).all()


def test_weighted_mean_pool_checks_shapes() -> None:
    with pytest.raises(ValueError, match="weights"):
        weighted_mean_pool(torch.randn(2, 4, 3, 2), torch.rand(2, 5, 2, 2))


def test_visibility_is_the_argmax_rule() -> None:
    # K = 3, 2x2 maps. Image 0: winning classes [[0, 1], [1, 3]] -> parts 1 and 3 visible, part 2 not even
    # though it is a close second everywhere. Image 1: background wins everywhere -> nothing visible.
    winners = torch.tensor([[[0, 1], [1, 3]], [[0, 0], [0, 0]]])
    logits = torch.nn.functional.one_hot(winners, 4).permute(0, 3, 1, 2).float() * 2.0
    logits[:, 2] = 1.9
    visibility = part_visibility(logits)
    assert visibility.dtype == torch.bool
    torch.testing.assert_close(visibility, torch.tensor([[True, False, True], [False, False, False]]))


def test_visibility_checks_shape() -> None:
    with pytest.raises(ValueError, match="part_logits"):
        part_visibility(torch.randn(2, 1, 3, 3))


def test_foreground_assignment_weighs_background_against_the_union_of_the_parts() -> None:
    # Three cells, probabilities [P_0, P_1, P_2, P_3]: the first is a person cell whose parts share 0.6; the
    # arg-max gives it to the background (0.4 beats each part), the union of the parts (0.6) beats it.
    probabilities = torch.tensor([[0.4, 0.35, 0.2, 0.05], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])  # [cells, K + 1]
    logits = probabilities.log().T.reshape(1, 4, 1, 3)
    assert assign_parts(logits).tolist() == [[[0, 0, 3]]]
    assert assign_parts(logits, "foreground").tolist() == [[[1, 0, 3]]]
    assert part_visibility(logits, "foreground").tolist() == [[True, False, True]]
    assert part_visibility(logits).tolist() == [[False, False, True]]
    classifier = PixelPartClassifier(4, num_parts=3, assignment="foreground")
    assert classifier.assign(logits).tolist() == [[[1, 0, 3]]]
    # random logits: foreground exactly where 1 - P_0 > P_0, and there the part of largest probability
    logits = torch.randn(2, 5, 6, 3, generator=torch.Generator().manual_seed(0))
    prob = logits.softmax(dim=1)
    expected = torch.where(prob[:, 0] < 0.5, prob[:, 1:].argmax(dim=1) + 1, 0)
    assert torch.equal(assign_parts(logits, "foreground"), expected)
    with pytest.raises(ValueError, match="assignment"):
        assign_parts(logits, "union")
