from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icg.model.ppc import (
    PixelPartClassifier,
    assign_parts,
    part_visibility,
    parts_foreground_logits,
    weighted_mean_pool,
)


@pytest.mark.parametrize("scale", [1.0, 16.0])
def test_classifier_reference_and_shape(scale: float) -> None:
    torch.manual_seed(0)
    classifier = PixelPartClassifier(5, num_parts=3, logit_scale=scale).double()
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
                expected = scale * (weight @ (cell / np.linalg.norm(cell)) + bias)
                np.testing.assert_allclose(logits[b, :, i, j].detach().numpy(), expected, rtol=1e-10)


def test_classifier_ignores_the_scale_of_each_cell() -> None:
    torch.manual_seed(0)
    classifier = PixelPartClassifier(8, num_parts=6)
    x = torch.randn(2, 8, 4, 2)
    scale = torch.rand(2, 1, 4, 2) * 10 + 0.1
    torch.testing.assert_close(classifier(x * scale), classifier(x), rtol=1e-5, atol=1e-5)


def test_classifier_rejects_zero_parts_and_a_bad_scale() -> None:
    with pytest.raises(ValueError, match="num_parts"):
        PixelPartClassifier(8, num_parts=0)
    with pytest.raises(ValueError, match="logit_scale"):
        PixelPartClassifier(8, num_parts=3, logit_scale=0.0)


def _train_on_positional_parts(logit_scale: float, steps: int = 200) -> tuple[float, float]:
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
    classifier = PixelPartClassifier(channels, num_parts, logit_scale=logit_scale)
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


def test_classifier_becomes_confident_enough_for_parts_to_win_cells() -> None:
    # Without a scale, logits stay within ~0.6 of the bias and the background prior wins every cell: no visible
    # part (the failure of the code before the scale). With the default scale every part wins its cells.
    visible, accuracy = _train_on_positional_parts(logit_scale=16.0)
    assert visible == 4.0 and accuracy == 1.0
    visible_unscaled, _ = _train_on_positional_parts(logit_scale=1.0)
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
    # random logits: foreground exactly where 1 - P_0 > P_0, and there the part of largest probability
    logits = torch.randn(2, 5, 6, 3, generator=torch.Generator().manual_seed(0))
    prob = logits.softmax(dim=1)
    expected = torch.where(prob[:, 0] < 0.5, prob[:, 1:].argmax(dim=1) + 1, 0)
    assert torch.equal(assign_parts(logits, "foreground"), expected)
    with pytest.raises(ValueError, match="assignment"):
        assign_parts(logits, "union")


def test_least_squares_fit_is_the_ridge_solution_of_the_stacked_system() -> None:
    # reference: ridge regression as ordinary least squares on the design stacked over sqrt(penalty) * I
    rng = np.random.default_rng(0)
    cells = rng.standard_normal((40, 5))
    unit = cells / np.linalg.norm(cells, axis=1, keepdims=True)
    z = np.hstack([unit, np.ones((40, 1))])
    labels = rng.integers(0, 4, 40)
    onehot = np.eye(4)[labels]
    gram, moments = z.T @ z, z.T @ onehot
    ridge = 0.05
    penalty = ridge * np.trace(gram) / len(gram)
    design = np.vstack([z, np.sqrt(penalty) * np.eye(6)])
    targets = np.vstack([onehot, np.zeros((6, 4))])
    expected = np.linalg.lstsq(design, targets, rcond=None)[0]  # [6, 4]: weights then bias

    classifier = PixelPartClassifier(5, num_parts=3).double()
    classifier.fit_least_squares(torch.from_numpy(gram), torch.from_numpy(moments), ridge=ridge)
    np.testing.assert_allclose(classifier.conv.weight.detach().numpy()[:, :, 0, 0], expected[:5].T, atol=1e-10)
    np.testing.assert_allclose(classifier.conv.bias.detach().numpy(), expected[5], atol=1e-10)


def test_least_squares_fit_reproduces_separable_labels_confidently() -> None:
    # cells near one of four directions, the label their direction: after the fit every cell is classified right
    torch.manual_seed(0)
    directions = torch.eye(6)[:4]
    labels = torch.randint(0, 4, (2, 5, 3))
    x = 3 * directions[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 6, 5, 3)
    z = torch.cat([F.normalize(x, dim=1).permute(0, 2, 3, 1).reshape(-1, 6), torch.ones(30, 1)], dim=1).double()
    moments = z.T @ F.one_hot(labels.reshape(-1), 4).double()
    classifier = PixelPartClassifier(6, num_parts=3)
    classifier.fit_least_squares(z.T @ z, moments, ridge=1e-3)
    probabilities = classifier(x).softmax(dim=1)
    assert torch.equal(probabilities.argmax(dim=1), labels)
    assert probabilities.max(dim=1).values.min() > 0.99  # the logit scale makes the fit's scores confident


@pytest.mark.parametrize("fit", ["fit_least_squares", "fit_discriminant"])
def test_fits_check_their_inputs(fit: str) -> None:
    classifier = PixelPartClassifier(5, num_parts=3)
    with pytest.raises(ValueError, match=rf"{fit}: expected gram \[6, 6\]"):
        getattr(classifier, fit)(torch.eye(5), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="ridge"):
        getattr(classifier, fit)(torch.eye(6), torch.zeros(6, 4), ridge=0.0)


def test_discriminant_fit_is_the_lda_of_the_cells() -> None:
    # reference: class means, pooled within-class covariance and priors computed from the cells themselves
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 60)
    cells = rng.standard_normal((60, 5)) + 2 * np.eye(5)[labels]
    unit = cells / np.linalg.norm(cells, axis=1, keepdims=True)
    means = np.stack([unit[labels == k].mean(axis=0) for k in range(4)])
    centred = unit - means[labels]
    covariance = centred.T @ centred / (60 - 4)
    ridge = 0.05
    covariance += ridge * np.trace(covariance) / 5 * np.eye(5)
    weights = np.linalg.solve(covariance, means.T).T  # [4, 5]
    priors = np.bincount(labels, minlength=4) / 60
    bias = -0.5 * (weights * means).sum(axis=1) + np.log(priors)

    z = np.hstack([unit, np.ones((60, 1))])
    gram, moments = z.T @ z, z.T @ np.eye(4)[labels]
    classifier = PixelPartClassifier(5, num_parts=3, logit_scale=4.0).double()
    classifier.fit_discriminant(torch.from_numpy(gram), torch.from_numpy(moments), ridge=ridge)
    # the forward pass multiplies by the scale: the logits themselves are the discriminants
    logits = classifier(torch.from_numpy(cells.T.copy())[None, :, :, None])[0, :, :, 0].T.detach().numpy()
    np.testing.assert_allclose(logits, unit @ weights.T + bias, atol=1e-9)


def test_discriminant_fit_separates_classes_stacked_along_one_input() -> None:
    # every cell looks alike; background and three parts are stacked by row, three rows each. The one-hot
    # regression on the row is a line per class, and the lines of the middle classes never rise above both ends
    # (the masking of linear regression on indicators); the discriminant gives every class its band.
    feature_map = torch.ones(1, 4, 12, 1)
    labels = torch.arange(12) // 3
    classifier = PixelPartClassifier(4, num_parts=3, position=True)
    z = torch.cat([classifier.inputs(feature_map)[0, :, :, 0].T, torch.ones(12, 1)], dim=1).double()
    gram, moments = z.T @ z, z.T @ F.one_hot(labels, 4).double()
    accuracy = {}
    for fit in ("fit_least_squares", "fit_discriminant"):
        getattr(classifier, fit)(gram, moments, ridge=1e-3)
        accuracy[fit] = (classifier(feature_map).argmax(dim=1).flatten() == labels).float().mean().item()
    assert accuracy == {"fit_least_squares": 0.5, "fit_discriminant": 1.0}


def test_discriminant_fit_of_a_class_without_cells_never_wins() -> None:
    torch.manual_seed(2)
    labels = torch.randint(0, 3, (50,))  # part 3 has no cell
    cells = torch.randn(50, 6) + 3 * torch.eye(6)[labels]
    z = torch.cat([F.normalize(cells, dim=1), torch.ones(50, 1)], dim=1).double()
    classifier = PixelPartClassifier(6, num_parts=3)
    classifier.fit_discriminant(z.T @ z, z.T @ F.one_hot(labels, 4).double())
    predicted = classifier(cells.T[None, :, :, None]).argmax(dim=1).flatten()
    assert (predicted != 3).all() and (predicted == labels).float().mean() > 0.9


def test_position_inputs_are_the_cell_centres() -> None:
    feature_map = torch.randn(2, 5, 4, 2)
    inputs = PixelPartClassifier(5, num_parts=3, position=True).inputs(feature_map)
    assert inputs.shape == (2, 6, 4, 2)
    torch.testing.assert_close(inputs[:, :5], F.normalize(feature_map, dim=1))
    # hand-computed: 4 rows split (-1, 1) into equal cells, the same in every column
    for image, column in [(0, 0), (1, 1)]:
        torch.testing.assert_close(inputs[image, 5, :, column], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.equal(PixelPartClassifier(5, num_parts=3).inputs(feature_map), F.normalize(feature_map, dim=1))


@pytest.mark.parametrize("position", [False, True])
def test_position_separates_cells_that_look_alike(position: bool) -> None:
    # every cell has the same feature; the top half is part 1, the bottom half part 2
    feature_map = torch.ones(1, 4, 6, 2)
    labels = torch.tensor([1] * 3 + [2] * 3)[:, None].expand(6, 2)
    classifier = PixelPartClassifier(4, num_parts=2, position=position)
    height = [[(2 * y + 1) / 6 - 1] if position else [] for y in range(6) for _ in range(2)]  # row-major cells
    z = torch.tensor([[0.5] * 4 + row + [1.0] for row in height], dtype=torch.float64)
    classifier.fit_least_squares(z.T @ z, z.T @ F.one_hot(labels.reshape(-1), 3).double(), ridge=1e-3)
    accuracy = (classifier(feature_map).argmax(dim=1)[0] == labels).float().mean()
    assert accuracy == (1.0 if position else 0.5)
