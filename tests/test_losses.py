from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icg.losses import CenterLoss, ICGLoss, TripletLoss, pixel_cross_entropy
from icg.model.network import BranchOutput, ICGOutput


def _brute_force_triplet(x: np.ndarray, labels: list[int], margin: float) -> float:
    """Batch-hard as a max over every (positive, negative) pair of each anchor; anchors without either skipped."""
    losses = []
    for a in range(len(labels)):
        worst = None
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(labels)):
                if labels[n] == labels[a]:
                    continue
                value = max(0.0, np.linalg.norm(x[a] - x[p]) - np.linalg.norm(x[a] - x[n]) + margin)
                worst = value if worst is None else max(worst, value)
        if worst is not None:
            losses.append(worst)
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 2, 2, 2, 3, 3],
        [5, 1, 5, 1, 7],  # identity 7 has no positive: its anchor is skipped
        [4, 4, 4],  # no negatives anywhere
    ],
)
def test_triplet_matches_brute_force(labels: list[int]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(labels), 5)) * 0.3
    loss = TripletLoss(margin=0.3)(torch.tensor(x), torch.tensor(labels))
    assert loss.item() == pytest.approx(_brute_force_triplet(x, labels, 0.3), rel=1e-5, abs=1e-6)


def test_triplet_is_float32_under_autocast() -> None:
    # Away from the origin, squared norms in bf16 (8 mantissa bits) would swamp the distances between samples.
    rng = np.random.default_rng(0)
    x = 3.0 + rng.normal(size=(6, 16)) * 0.3
    labels = [0, 0, 1, 1, 2, 2]
    features = torch.tensor(x, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TripletLoss(margin=0.3)(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(_brute_force_triplet(x, labels, 0.3), rel=1e-3)


def test_triplet_gradient_is_finite_for_duplicate_features() -> None:
    features = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    TripletLoss(margin=0.3)(features, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(features.grad).all()


def test_center_loss_matches_loop() -> None:
    torch.manual_seed(0)
    criterion = CenterLoss(num_classes=4, feat_dim=3)
    features = torch.randn(5, 3)
    labels = [3, 0, 0, 2, 3]
    centers = criterion.centers.detach()
    expected = sum(float(((features[i] - centers[y]) ** 2).sum()) for i, y in enumerate(labels)) / 5
    assert criterion(features, torch.tensor(labels)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("targets", "match"), [(torch.tensor([0, 4]), r"\[0, 4\)"), (torch.tensor([0]), "targets")])
def test_center_loss_rejects_bad_targets(targets: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CenterLoss(num_classes=4, feat_dim=3)(torch.randn(2, 3), targets)


def test_pixel_cross_entropy_ignores_marked_cells() -> None:
    # Cell (0, 0): logits (0, 0), label 1 -> log 2. Cell (0, 1): confidently wrong but ignored.
    logits = torch.tensor([[[[0.0, 9.0]], [[0.0, -9.0]]]])
    assert pixel_cross_entropy(logits, torch.tensor([[[1, -100]]])).item() == pytest.approx(math.log(2.0))
    assert pixel_cross_entropy(logits, torch.tensor([[[-100, -100]]])).item() == 0.0
    with pytest.raises(ValueError, match="target"):
        pixel_cross_entropy(logits, torch.tensor([[1, 0]]))


def _smoothed_ce(logits: np.ndarray, labels: np.ndarray, epsilon: float) -> float:
    # BoT's label-smoothed cross-entropy: target (1 - eps) one-hot + eps / N uniform.
    log_prob = logits - logits.max(axis=1, keepdims=True)
    log_prob = log_prob - np.log(np.exp(log_prob).sum(axis=1, keepdims=True))
    num_classes = logits.shape[1]
    target = np.full_like(log_prob, epsilon / num_classes)
    target[np.arange(len(labels)), labels] += 1.0 - epsilon
    return float(-(target * log_prob).sum(axis=1).mean())


WEIGHTS = dict(feat_weight=0.2, sep_weight=0.1, par_weight=0.1, center_weight=5e-4)  # eq. 22 and BoT's


def _fake_output(dims: dict[str, int], with_pixels: bool) -> ICGOutput:
    torch.manual_seed(1)
    branches = {name: BranchOutput(torch.randn(8, dim), torch.randn(8, dim)) for name, dim in dims.items()}
    return ICGOutput(
        feature_map=torch.randn(8, 4, 4, 2),
        backbone_map=torch.randn(8, 4, 4, 2),
        branches=branches,
        fg_logits=torch.randn(8, 2, 4, 2) if with_pixels else None,
        part_logits=torch.randn(8, 4, 4, 2) if with_pixels else None,
    )


def test_composed_loss_is_the_weighted_sum() -> None:
    dims = {"global": 4, "foreground": 4, "parts": 12, "graph": 4}
    output = _fake_output(dims, with_pixels=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    fg_target = torch.randint(0, 2, (8, 4, 2))
    part_target = torch.randint(0, 4, (8, 4, 2))
    part_target[:, 0] = -100
    criterion = ICGLoss(5, dims, feat_weight=0.3, sep_weight=0.7, par_weight=0.05, center_weight=0.01)
    total, logs = criterion(output, pids, fg_target, part_target)

    triplet = TripletLoss(margin=0.3)
    expected_feat = 0.0
    for name, branch in output.branches.items():
        centers = criterion.center[name].centers.detach()
        center = ((branch.features - centers[pids]) ** 2).sum(dim=1).mean().item()
        logits = branch.bn_features.numpy() @ criterion.classifiers[name].weight.detach().numpy().T
        ce = _smoothed_ce(logits, pids.numpy(), 0.1)
        expected_feat += ce + triplet(branch.features, pids).item() + 0.01 * center
        assert logs[f"{name}/ce"].item() == pytest.approx(ce, rel=1e-5)
    sep = torch.nn.functional.cross_entropy(output.fg_logits, fg_target).item()
    valid = part_target != -100
    par = torch.nn.functional.cross_entropy(output.part_logits.permute(0, 2, 3, 1)[valid], part_target[valid]).item()
    expected = 0.3 * expected_feat + 0.7 * sep + 0.05 * par
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["total"].item() == pytest.approx(expected, rel=1e-5)
    assert logs["par"].item() == pytest.approx(par, rel=1e-5)
    assert not any(value.requires_grad for value in logs.values())


def test_bot_mode_has_weight_one() -> None:
    output = _fake_output({"global": 6}, with_pixels=False)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    criterion = ICGLoss(3, {"global": 6}, **WEIGHTS)  # feat_weight is ICG's 0.2
    total, _ = criterion(output, pids)
    branch = output.branches["global"]
    centers = criterion.center["global"].centers.detach()
    center = ((branch.features - centers[pids]) ** 2).sum(dim=1).mean().item()
    logits = branch.bn_features.numpy() @ criterion.classifiers["global"].weight.detach().numpy().T
    expected = (
        _smoothed_ce(logits, pids.numpy(), 0.1)
        + _brute_force_triplet(branch.features.numpy(), pids.tolist(), 0.3)
        + 5e-4 * center
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert criterion.center_loss_scale == pytest.approx(5e-4)
    assert ICGLoss(3, {"global": 6, "parts": 6}, **WEIGHTS).center_loss_scale == pytest.approx(0.2 * 5e-4)
    # BoT's classifier initialisation: N(0, 0.001^2), no bias
    weight = ICGLoss(500, {"global": 64}, **WEIGHTS).classifiers["global"].weight
    assert criterion.classifiers["global"].bias is None and weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_missing_part_target_skips_the_part_loss() -> None:
    dims = {"global": 4, "parts": 12}
    output = _fake_output(dims, with_pixels=True)
    output.fg_logits = None
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    criterion = ICGLoss(5, dims, **WEIGHTS)
    total, logs = criterion(output, pids)
    assert logs["par"].item() == 0.0
    assert total.item() == pytest.approx(0.2 * (logs["global/total"] + logs["parts/total"]).item(), rel=1e-6)


def test_mismatched_inputs_are_named() -> None:
    output = _fake_output({"global": 4}, with_pixels=False)
    pids = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="branches"):
        ICGLoss(5, {"global": 4, "graph": 4}, **WEIGHTS)(output, pids)
    with pytest.raises(ValueError, match="fg_target"):
        ICGLoss(5, {"global": 4}, **WEIGHTS)(output, pids, fg_target=torch.zeros(8, 4, 2, dtype=torch.long))
