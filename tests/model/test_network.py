from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from icg.losses import ICGLoss
from icg.model import FlexibleStructureGraph, PixelPartClassifier, SpatialAttention, build_backbone
from icg.model.network import ICGNet, ICGOutput
from icg.model.ppc import LOGIT_SCALE
from icg.parts import foreground_target
from icg.retrieval import ReIDFeatures

NUM_CLASSES = 5
C = 512  # resnet18
ABLATIONS = [  # (use_afm, use_ppc, use_fsg); FSG needs PPC
    (False, False, False),
    (True, False, False),
    (False, True, False),
    (True, True, False),
    (False, True, True),
    (True, True, True),
]


WEIGHTS = dict(feat_weight=0.2, sep_weight=0.1, par_weight=0.1, center_weight=5e-4)  # eq. 22 and BoT's


def _net(num_parts: int = 6, use_afm: bool = True, use_ppc: bool = True, use_fsg: bool = True) -> ICGNet:
    torch.manual_seed(0)
    return ICGNet(
        build_backbone("resnet18", weights=None),
        attention=SpatialAttention() if use_afm else None,
        part_classifier=PixelPartClassifier(C, num_parts) if use_ppc else None,
        graph=FlexibleStructureGraph(num_parts, C) if use_fsg else None,
    )


def _images(batch: int = 4, height: int = 64, width: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def _row_part_target(batch: int, height: int, width: int, num_parts: int) -> torch.Tensor:
    # Horizontal bands numbered 1..K from top to bottom, like the clustering's ordering.
    rows = 1 + torch.arange(height) * num_parts // height
    return rows[None, :, None].expand(batch, height, width).clone()


@pytest.mark.parametrize("num_parts", [3, 6])
@pytest.mark.parametrize(("use_afm", "use_ppc", "use_fsg"), ABLATIONS)
def test_shapes_for_every_ablation(use_afm: bool, use_ppc: bool, use_fsg: bool, num_parts: int) -> None:
    net = _net(num_parts=num_parts, use_afm=use_afm, use_ppc=use_ppc, use_fsg=use_fsg)
    out = net(_images(batch=2))
    h, w = 4, 2
    assert out.feature_map.shape == (2, C, h, w)
    expected = {"global": C}
    if use_afm:
        expected["foreground"] = C
    if use_ppc:
        expected["parts"] = num_parts * C
    if use_fsg:
        expected["graph"] = C
    assert list(out.branches) == list(expected) == list(net.branch_dims)
    for name, dim in expected.items():
        branch = out.branches[name]
        assert branch.features.shape == branch.bn_features.shape == (2, dim), name
    assert (out.fg_logits is not None) == use_afm
    if use_afm:
        assert out.fg_logits.shape == (2, 2, h, w)
    if use_ppc:
        assert out.part_logits.shape == (2, num_parts + 1, h, w)
        assert out.visibility.shape == (2, num_parts) and out.visibility.dtype == torch.bool
        assert out.part_bn_features.shape == (2, num_parts, C)
    else:
        assert out.part_logits is None and out.visibility is None and out.part_bn_features is None


def test_fsg_without_ppc_or_with_other_parts_is_rejected() -> None:
    with pytest.raises(ValueError, match="use_fsg.*use_ppc"):
        _net(use_ppc=False, use_fsg=True)
    with pytest.raises(ValueError, match="graph has 4 nodes but the part classifier 3 parts"):
        ICGNet(
            build_backbone("resnet18", weights=None),
            part_classifier=PixelPartClassifier(C, 3),
            graph=FlexibleStructureGraph(4, C),
        )


def test_bad_images_are_named() -> None:
    with pytest.raises(ValueError, match="images"):
        _net(use_afm=False, use_ppc=False, use_fsg=False)(torch.randn(2, 1, 64, 32))


def test_all_off_is_exactly_bot() -> None:
    net = _net(use_afm=False, use_ppc=False, use_fsg=False)
    reference = resnet18(weights=None)
    backbone_names = {f"backbone.{n}" for n, _ in reference.named_parameters() if not n.startswith("fc.")}
    head_names = {"heads.global.bn.weight", "heads.global.bn.bias"}
    assert {n for n, _ in net.named_parameters()} == backbone_names | head_names
    backbone_count = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == backbone_count + C  # the identity classifier is the loss's
    assert not net.heads["global"].bn.bias.requires_grad
    criterion = ICGLoss(NUM_CLASSES, net.branch_dims, **WEIGHTS)
    assert list(criterion.classifiers) == ["global"] and criterion.classifiers["global"].weight.shape == (5, C)


@pytest.mark.parametrize("use_ppc", [True, False])
def test_branch_wiring_against_numpy(use_ppc: bool) -> None:
    net = _net(num_parts=3, use_ppc=use_ppc, use_fsg=use_ppc).eval()
    with torch.no_grad():
        images = _images(batch=2)
        out = net(images)
        raw = net.backbone(images)
        torch.testing.assert_close(out.feature_map, raw * net.attention(raw))
        torch.testing.assert_close(out.backbone_map, raw)
    f = out.feature_map.double().numpy()

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def weighted_mean(weight: np.ndarray) -> np.ndarray:  # [B, h, w] -> [B, C]
        return (f * weight[:, None]).sum(axis=(2, 3)) / (weight.sum(axis=(1, 2))[:, None] + 1e-6)

    unit = f / np.linalg.norm(f, axis=1, keepdims=True)

    def classify(classifier: PixelPartClassifier) -> np.ndarray:  # a 1x1 convolution of unit cells, times the scale
        weight = classifier.conv.weight.detach().double().numpy()[:, :, 0, 0]
        bias = classifier.conv.bias.detach().double().numpy()
        return LOGIT_SCALE * (np.einsum("kc,bchw->bkhw", weight, unit) + bias[None, :, None, None])

    expected = {"global": f.mean(axis=(2, 3))}
    if use_ppc:
        assert net.foreground_head is None
        part_logits = classify(net.part_classifier)
        np.testing.assert_allclose(out.part_logits.numpy(), part_logits, rtol=1e-4, atol=1e-4)
        parts = softmax(part_logits)[:, 1:]
        fg = parts.sum(axis=1)  # eq. 8: the foreground is the union of the parts
        expected["parts"] = np.concatenate([weighted_mean(parts[:, k]) for k in range(3)], axis=1)
    else:  # the AFM's own head
        fg = softmax(classify(net.foreground_head))[:, 1]
    expected["foreground"] = weighted_mean(fg)
    np.testing.assert_allclose(out.fg_logits.softmax(dim=1)[:, 1].numpy(), fg, rtol=1e-4, atol=1e-5)
    for name, value in expected.items():
        np.testing.assert_allclose(out.branches[name].features.numpy(), value, rtol=1e-4, atol=1e-5, err_msg=name)
    # A fresh BN in eval mode divides by sqrt(1 + eps); the frozen bias adds nothing.
    for branch in out.branches.values():
        torch.testing.assert_close(branch.bn_features, branch.features / (1 + 1e-5) ** 0.5)
    if not use_ppc:
        return
    winners = out.part_logits.numpy().argmax(axis=1)
    visible = np.array([[np.any(winners[b] == k) for k in range(1, 4)] for b in range(2)])
    np.testing.assert_array_equal(out.visibility.numpy(), visible)
    graph = net.graph(torch.from_numpy(expected["parts"]).float().view(2, 3, C), out.visibility)
    torch.testing.assert_close(out.branches["graph"].features, graph, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.part_bn_features.flatten(1), out.branches["parts"].bn_features)


def test_extract_runs_in_eval_mode_and_restores_training() -> None:
    net = _net(num_parts=3)
    running_mean = net.heads["global"].bn.running_mean.clone()
    features = net.extract(_images(batch=2))
    assert isinstance(features, ReIDFeatures)
    assert net.training
    assert torch.equal(net.heads["global"].bn.running_mean, running_mean)  # eval-mode BN, stats untouched
    assert not features.global_feat.requires_grad
    assert features.global_feat.shape == features.foreground.shape == features.graph.shape == (2, C)
    assert features.parts.shape == (2, 3, C) and features.visibility.shape == (2, 3)
    bot = _net(use_afm=False, use_ppc=False, use_fsg=False).extract(_images(batch=2))
    assert bot.foreground is None and bot.parts is None and bot.graph is None and bot.visibility is None


def _full_loss(net: ICGNet, criterion: ICGLoss, images: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    out: ICGOutput = net(images)
    _, _, h, w = out.feature_map.shape
    part_target = _row_part_target(len(images), h, w, net.num_parts)
    total, _ = criterion(out, pids, foreground_target(out.feature_map), part_target)
    return total


def test_every_trainable_parameter_gets_a_gradient() -> None:
    net = _net(num_parts=3)
    criterion = ICGLoss(NUM_CLASSES, net.branch_dims, **WEIGHTS)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    _full_loss(net, criterion, _images(batch=6, height=128, width=64), pids).backward()
    missing = [
        name
        for name, p in [*net.named_parameters(), *criterion.named_parameters()]
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []


def test_loss_falls_on_a_tiny_batch() -> None:
    net = _net(num_parts=3)
    criterion = ICGLoss(NUM_CLASSES, net.branch_dims, **WEIGHTS)
    optimizer = torch.optim.Adam([*net.parameters(), *criterion.parameters()], lr=1e-3)
    images = _images(batch=8)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = _full_loss(net, criterion, images, pids)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_channels_last_matches_contiguous() -> None:
    net = _net(num_parts=3).eval()
    images = _images(batch=2)
    with torch.no_grad():
        expected = net(images)
        net.to(memory_format=torch.channels_last)
        out = net(images.contiguous(memory_format=torch.channels_last))
    for name in expected.branches:
        torch.testing.assert_close(
            out.branches[name].bn_features, expected.branches[name].bn_features, rtol=1e-4, atol=1e-4
        )


def test_bf16_autocast_forward_and_backward() -> None:
    net = _net(num_parts=3)
    criterion = ICGLoss(NUM_CLASSES, net.branch_dims, **WEIGHTS)
    pids = torch.tensor([0, 0, 1, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_images(batch=4))
        total, _ = criterion(out, pids, foreground_target(out.feature_map), _row_part_target(4, 4, 2, 3))
    assert out.feature_map.dtype == torch.bfloat16
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
