from __future__ import annotations

import pytest
import torch

from icg.losses import pixel_cross_entropy
from icg.model import build_backbone
from icg.module import ICGModule, warmup_multistep_factor
from icg.parts import IGNORE_INDEX

H, W = 64, 32  # feature map 4 x 2 at output stride 16


def _identity_source() -> torch.Tensor:
    return torch.arange(H * W).view(1, H, W)


def test_foreground_target_ignores_padding_and_erased_cells() -> None:
    module = ICGModule(
        num_classes=4, image_size=(H, W), backbone="resnet18", weights=None, use_ppc=False, use_fsg=False
    )
    rows = torch.arange(H)[:, None] + 16  # shifted down by one cell: the last cell row shows padding
    source = torch.where(rows < H, rows * W + torch.arange(W)[None, :], -1)
    source[0:16, 0:16] = -1  # an erased box over cell (0, 0)
    batch = {"image": torch.randn(1, 3, H, W), "source": source[None], "index": torch.tensor([0])}
    with torch.no_grad():
        output = module.eval()(batch["image"])
    fg_target, part_target = module.pixel_targets(output, batch)
    assert part_target is None
    ignored = (fg_target[0] == IGNORE_INDEX).tolist()
    assert ignored == [[True, False], [False, False], [False, False], [True, True]]
    # the other cells follow eq. 3 on F_g
    norms = output.feature_map[0].norm(dim=0)
    expected = (norms / norms.max() >= module.hparams.fg_threshold).long()
    assert torch.equal(fg_target[0][~torch.tensor(ignored)], expected[~torch.tensor(ignored)])


def test_fg_threshold_is_a_share_or_otsu() -> None:
    tiny = dict(num_classes=4, image_size=(H, W), backbone="resnet18", weights=None, use_ppc=False, use_fsg=False)
    assert ICGModule(**tiny, fg_threshold="otsu").fg_threshold == "otsu"
    assert ICGModule(**tiny, fg_threshold=1).fg_threshold == 1.0
    for wrong in ("median", 1.5, -0.1, True):
        with pytest.raises(ValueError, match="ICGModule: fg_threshold"):
            ICGModule(**tiny, fg_threshold=wrong)


def test_identity_signal_takes_the_foreground_target_from_the_pseudo_labels() -> None:
    module = ICGModule(
        num_classes=4, num_train_samples=3, image_size=(H, W), backbone="resnet18", weights=None, fg_signal="identity"
    )
    labels = torch.zeros(3, 4, 2, dtype=torch.uint8)
    labels[0, 1:3, 1] = torch.tensor([1, 2])  # row 0: two part cells
    module.part_labels.assign(labels, torch.tensor([True, False, True]))  # row 1 not clustered
    source = _identity_source().expand(3, -1, -1).clone()
    source[2, 0:16, 0:16] = -1  # an erased box over cell (0, 0) of the third image
    batch = {"image": torch.randn(3, 3, H, W), "source": source, "index": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        output = module.eval()(batch["image"])
    fg_target, part_target = module.pixel_targets(output, batch)
    expected_parts = labels.long()
    expected_parts[1] = IGNORE_INDEX  # no labels: neither loss scores the image, whatever its norms say
    expected_parts[2, 0, 0] = IGNORE_INDEX
    assert torch.equal(part_target, expected_parts)
    expected_fg = torch.where(expected_parts == IGNORE_INDEX, IGNORE_INDEX, (expected_parts > 0).long())
    assert torch.equal(fg_target, expected_fg)


def test_fg_signal_and_part_assignment_are_checked() -> None:
    tiny = dict(num_classes=4, image_size=(H, W), backbone="resnet18", weights=None)
    with pytest.raises(ValueError, match="needs use_ppc=True"):
        ICGModule(**tiny, use_ppc=False, use_fsg=False, fg_signal="identity")
    with pytest.raises(ValueError, match="use_fsg=True needs use_ppc=True"):
        ICGModule(**tiny, use_ppc=False)
    with pytest.raises(ValueError, match="ICGModule: fg_signal"):
        ICGModule(**tiny, num_train_samples=2, fg_signal="norm")
    assert ICGModule(**tiny, num_train_samples=2).fg_signal == "activation"
    with pytest.raises(ValueError, match="part_assignment must be"):
        ICGModule(**tiny, num_train_samples=2, part_assignment="union")


@pytest.mark.parametrize("use_ppc", [True, False], ids=["union-of-parts", "foreground-head"])
def test_foreground_target_stays_on_a_bright_object(use_ppc: bool) -> None:
    # L_sep alone trains the attention and the foreground classifier over a frozen random trunk, on images with a
    # bright object in the centre columns. When L_sep could reach the attention (a head on the raw F_g), the
    # target collapsed onto positions: its on-object share fell from 0.78 to 0.00 within 50 steps. Now the
    # pixel classifiers read normalised cells, so L_sep cannot change the norms the target is read from.
    torch.manual_seed(0)
    height, width = 128, 64
    module = ICGModule(
        num_classes=2,
        num_train_samples=16,
        image_size=(height, width),
        backbone="resnet18",
        weights=None,
        use_ppc=use_ppc,
        use_fsg=False,
        fg_threshold=0.7,
    )
    module.net.backbone.requires_grad_(False)
    images = torch.randn(16, 3, height, width) * 0.5
    images[:, :, 16:120, 20:44] += torch.randn(16, 3, 1, 1) * 1.5
    on_object = torch.zeros(8, 4, dtype=torch.bool)
    on_object[1:8, 1:3] = True
    batch = {
        "image": images,
        "source": torch.arange(height * width).view(1, height, width).expand(16, -1, -1),
        "index": torch.arange(16),
    }
    # No weight decay: the test is about what L_sep does to the attention, not decay. Adam's default eps (1e-8)
    # would turn the attention's rounding-noise gradient (~1e-8) into full steps of size lr; 1e-6 does not.
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0, eps=1e-6
    )
    on_shares, off_shares, attention_gradients = [], [], []
    for _ in range(60):
        output = module(images)
        fg_target, _ = module.pixel_targets(output, batch)
        on_shares.append(fg_target[:, on_object].float().mean().item())
        off_shares.append(fg_target[:, ~on_object].float().mean().item())
        loss = pixel_cross_entropy(output.fg_logits, fg_target)
        optimizer.zero_grad()
        loss.backward()
        attention_gradients.append(module.net.attention.conv.weight.grad.abs().max().item())
        optimizer.step()
    assert on_shares[0] > off_shares[0] + 0.2  # the target starts on the object ...
    # ... and stays there, up to a few cells near the threshold that rounding-level changes flip (the thread count
    # decides which); the collapse this guards against took the on-object share from 0.78 to 0.00
    assert min(on_shares) > on_shares[0] - 0.05 and max(off_shares) < off_shares[0] + 0.05
    # the attention gets no gradient from L_sep (zero up to rounding): the pixel classifiers see directions only
    assert max(attention_gradients) < 1e-6


def test_weight_decay_is_decoupled_and_the_centres_are_left_to_their_own_step() -> None:
    # AdamW shrinks a parameter without gradient by exactly lr * weight_decay per step, whatever the loss weights;
    # Adam's L2 penalty would move it by ~lr (its gradient is the penalty alone, which Adam normalises to 1).
    module = ICGModule(
        num_classes=3,
        num_train_samples=2,
        image_size=(H, W),
        backbone="resnet18",
        weights=None,
        num_parts=3,
        lr=1e-3,
        weight_decay=0.05,
        warmup_epochs=0,
    )
    optimizer = module.configure_optimizers()["optimizer"]
    trained, centers = optimizer.param_groups
    assert {id(p) for p in centers["params"]} == {id(p) for p in module.criterion.centers}
    # every trained weight but the centres, the identity classifiers of the loss included
    assert {id(p) for p in trained["params"]} >= {id(p) for p in module.criterion.classifiers.parameters()}
    assert len(trained["params"]) + len(centers["params"]) == len([p for p in module.parameters() if p.requires_grad])
    before = {id(p): p.detach().clone() for p in trained["params"]}
    for parameter in trained["params"]:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for parameter in trained["params"]:
        torch.testing.assert_close(parameter.detach(), before[id(parameter)] * (1 - 1e-3 * 0.05), rtol=1e-6, atol=1e-9)
    assert centers["lr"] == 0.0 and centers["weight_decay"] == 0.0  # BoT's own SGD step moves them


@pytest.mark.parametrize(("image_size", "stride"), [((256, 128), 16), ((250, 100), 16), ((64, 32), 8), ((97, 45), 8)])
def test_the_part_labels_have_the_size_of_the_backbone_map(image_size, stride) -> None:
    backbone = build_backbone("resnet50" if stride == 8 else "resnet18", weights=None, output_stride=stride)
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, *image_size))
    assert backbone.output_size(image_size) == tuple(out.shape[-2:])
    # the module sizes its labels from its own backbone: the map a forward pass really gives
    module = ICGModule(
        num_classes=2,
        num_train_samples=3,
        image_size=image_size,
        backbone=backbone.name,
        weights=None,
        num_parts=4,
        output_stride=stride,
    )
    assert module.part_labels.size == tuple(out.shape[-2:])


def test_the_module_wires_its_settings_into_the_network() -> None:
    def build(image_size: tuple[int, int], **settings) -> ICGModule:
        tiny = dict(num_classes=3, num_train_samples=2, backbone="resnet18", weights=None, num_parts=4)
        return ICGModule(**tiny, image_size=image_size, **settings)

    assert build((128, 64)).net.attention.conv.kernel_size == (7, 7)  # CBAM's, whatever the map
    module = build((H, W), part_assignment="foreground")
    assert module.net.part_classifier.assignment == "foreground" and module.net.num_parts == 4
    assert module.net.graph.num_parts == 4 and len(module.net.graph.layers) == 2  # the paper's two GCN layers


def test_bot_schedule() -> None:
    factor = lambda epoch: warmup_multistep_factor(  # noqa: E731
        epoch, warmup_epochs=10, warmup_start=0.1, milestones=(40, 70), gamma=0.1
    )
    # 3.5e-5 -> 3.5e-4 linearly over 10 epochs, x0.1 at 40 and 70
    assert [round(factor(e), 6) for e in (0, 5, 9, 10, 39, 40, 69, 70, 119)] == [
        0.1,
        0.55,
        0.91,
        1.0,
        1.0,
        0.1,
        0.1,
        0.01,
        0.01,
    ]


def test_bot_mode_has_no_part_buffers_and_one_branch() -> None:
    bot = ICGModule(num_classes=5, backbone="resnet18", weights=None, use_afm=False, use_ppc=False, use_fsg=False)
    assert len(bot.part_labels) == 0 and list(bot.net.branch_dims) == ["global"]


def test_a_weights_file_is_kept_as_a_plain_string(tmp_path) -> None:
    torch.save(build_backbone("resnet18", weights=None).state_dict(), tmp_path / "w.pt")
    file = ICGModule(num_classes=5, backbone="resnet18", weights=tmp_path / "w.pt", use_ppc=False, use_fsg=False)
    assert file.hparams["weights"] == str(tmp_path / "w.pt")  # a plain string, which weights_only loads read


def test_ppc_without_sample_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="num_train_samples"):
        ICGModule(num_classes=5, backbone="resnet18", weights=None)


def test_centers_take_bots_sgd_step_on_the_unweighted_gradient(monkeypatch) -> None:
    torch.manual_seed(0)
    model = ICGModule(
        num_classes=3,
        num_train_samples=6,
        image_size=(H, W),
        backbone="resnet18",
        weights=None,
        num_parts=3,
        center_lr=0.5,
    )
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    monkeypatch.setattr(model, "log_dict", lambda *args, **kwargs: None)
    batch = {
        "image": torch.randn(6, 3, H, W),
        "pid": torch.tensor([0, 0, 1, 1, 2, 2]),
        "index": torch.arange(6),
        "source": _identity_source().expand(6, H, W),
    }
    before = {name: loss.centers.detach().clone() for name, loss in model.criterion.center.items()}
    with torch.no_grad():
        features = {name: branch.features for name, branch in model.net(batch["image"]).branches.items()}
    optimizer = model.configure_optimizers()["optimizer"]
    model.training_step(batch, 0).backward()
    model.on_before_optimizer_step(optimizer)
    for name, centers in before.items():
        # d/dc_j of mean_i ||x_i - c_{y_i}||^2 = (2 / B) sum_{i: y_i = j} (c_j - x_i)
        expected = centers.clone()
        for j in range(3):
            members = features[name][batch["pid"] == j]
            expected[j] -= 0.5 * 2 / 6 * (centers[j] - members).sum(0)
        torch.testing.assert_close(model.criterion.center[name].centers.detach(), expected, rtol=1e-4, atol=1e-5)
        assert model.criterion.center[name].centers.grad is None  # Adam must not move them again


def _twin(**flags) -> tuple[ICGModule, ICGModule]:
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, num_train_samples=6, image_size=(H, W), backbone="resnet18", weights=None, num_parts=3)
    plain, variant = ICGModule(**kwargs), ICGModule(**kwargs, **flags)
    variant.load_state_dict(plain.state_dict())
    return plain.eval(), variant.eval()


def _assert_same_outputs(plain: ICGModule, variant: ICGModule, atol: float) -> None:
    images = torch.randn(4, 3, H, W)
    with torch.no_grad():
        a, b = plain(images), variant(images)
    for name in a.branches:
        torch.testing.assert_close(b.branches[name].bn_features, a.branches[name].bn_features, atol=atol, rtol=1e-3)
    torch.testing.assert_close(b.part_logits, a.part_logits, atol=atol, rtol=1e-3)
    assert torch.equal(plain.extract(images).visibility, variant.extract(images).visibility)


def test_channels_last_gives_the_same_results() -> None:
    plain, channels_last = _twin(channels_last=True)
    assert channels_last.net.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_outputs(plain, channels_last, atol=1e-4)
    # checkpoints load across the flag
    ICGModule(
        num_classes=3, num_train_samples=6, image_size=(H, W), backbone="resnet18", weights=None, num_parts=3
    ).load_state_dict(channels_last.state_dict())


@pytest.mark.slow
def test_compiled_network_gives_the_same_results() -> None:
    plain, compiled = _twin(compile=True)
    assert set(compiled.state_dict()) == set(plain.state_dict())  # no "_orig_mod." prefixes
    _assert_same_outputs(plain, compiled, atol=1e-4)


def test_bf16_autocast_training_step_runs(monkeypatch) -> None:
    model = ICGModule(
        num_classes=3, num_train_samples=6, image_size=(H, W), backbone="resnet18", weights=None, num_parts=3
    )
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    monkeypatch.setattr(model, "log_dict", lambda *args, **kwargs: None)
    batch = {
        "image": torch.randn(6, 3, H, W),
        "pid": torch.tensor([0, 0, 1, 1, 2, 2]),
        "index": torch.arange(6),
        "source": _identity_source().expand(6, H, W),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(batch, 0)
        features = model.extract(batch["image"])
    loss.backward()
    assert torch.isfinite(loss) and features.global_feat.shape == (6, 512)
