from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18

from icg.model.backbone import MobileNetV2Backbone, PretrainedWeightsUnavailableError, ResNetBackbone, build_backbone

RESNET18_FILE = "resnet18-f37072fd.pth"  # basename of torchvision's ResNet18_Weights.IMAGENET1K_V1 URL


@pytest.mark.parametrize(("output_stride", "expected_hw"), [(16, (4, 2)), (32, (2, 1))])
def test_resnet18_output_shape(output_stride: int, expected_hw: tuple[int, int]) -> None:
    backbone = build_backbone("resnet18", weights=None, output_stride=output_stride)
    out = backbone(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, 512, *expected_hw)
    assert backbone.out_channels == 512


def test_resnet50_stride8_is_dilated() -> None:
    backbone = ResNetBackbone("resnet50", weights=None, output_stride=8)
    out = backbone(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 2048, 8, 4)
    assert backbone.out_channels == 2048
    # layer3 and layer4 run at stride 1; the lost resolution is made up by dilation 2 in their 3x3 convs.
    assert backbone.layer3[0].conv2.stride == (1, 1) and backbone.layer3[1].conv2.dilation == (2, 2)
    assert all(block.conv2.dilation == (2, 2) and block.conv2.stride == (1, 1) for block in backbone.layer4)


def test_no_pooling_or_classifier() -> None:
    names = {name for name, _ in build_backbone("resnet18", weights=None).named_children()}
    assert names == {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"}


def test_basic_block_stride8_is_rejected() -> None:
    with pytest.raises(ValueError, match="resnet34.*output_stride=16"):
        build_backbone("resnet34", weights=None, output_stride=8)


@pytest.mark.parametrize("kwargs", [{"name": "resnet51"}, {"output_stride": 4}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="name|output_stride"):
        build_backbone(**{"weights": None, **kwargs})


@pytest.mark.parametrize("error", [URLError("no network"), OSError("Network is unreachable")])
def test_offline_without_cache_names_file_and_dir(tmp_path, monkeypatch, error: Exception) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        build_backbone("resnet18")
    message = str(info.value)
    assert RESNET18_FILE in message
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in message
    assert "weights=None" in message


def test_cached_weights_are_loaded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    torch.manual_seed(0)
    reference = resnet18(weights=None)
    with torch.no_grad():
        for buffer in reference.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    state = reference.state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / RESNET18_FILE)

    backbone = build_backbone("resnet18")
    loaded = backbone.state_dict()
    assert set(loaded) == {key for key in state if not key.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def _random_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return reference.state_dict()


@pytest.mark.parametrize("layout", ["torchvision", "icg_checkpoint", "icgnet_state"])
def test_weights_from_a_file(tmp_path, layout: str) -> None:
    state = _random_resnet18_state()  # with fc.*, as torchvision's files
    if layout == "torchvision":
        stored, prefix = state, ""
    elif layout == "icg_checkpoint":  # a Lightning checkpoint of an ICGModule: heads and part labels besides
        prefix = "net.backbone."
        stored = {
            "epoch": 3,
            "state_dict": {
                **{prefix + k: v for k, v in state.items() if not k.startswith("fc.")},
                "net.heads.global.bn.weight": torch.ones(512),
                "part_labels": torch.zeros(4, 8, 4, dtype=torch.uint8),
            },
        }
    else:
        prefix = "backbone."
        stored = {
            **{prefix + k: v for k, v in state.items() if not k.startswith("fc.")},
            "heads.global.classifier.weight": torch.zeros(5, 512),
        }
    path = tmp_path / "weights.pt"
    torch.save(stored, path)
    backbone = build_backbone("resnet18", weights=str(path))
    flat = stored["state_dict"] if layout == "icg_checkpoint" else stored
    loaded = backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, flat[prefix + key], rtol=0, atol=0, msg=key)


def test_weights_file_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt.*does not exist.*IMAGENET1K_V1"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pt"))
    wrong_architecture = tmp_path / "resnet34.pt"
    torch.save(build_backbone("resnet34", weights=None).state_dict(), wrong_architecture)
    with pytest.raises(ValueError, match="resnet34.pt does not hold resnet18 backbone weights.*unexpected: layer1.2"):
        build_backbone("resnet18", weights=str(wrong_architecture))
    no_backbone = tmp_path / "heads.pt"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, no_backbone)
    with pytest.raises(ValueError, match="heads.pt holds no resnet18 backbone weights"):
        build_backbone("resnet18", weights=str(no_backbone))
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("hello")
    with pytest.raises(ValueError, match="cannot read backbone weights from .*notes.pt"):
        build_backbone("resnet18", weights=str(not_weights))


def test_weights_by_torchvision_name(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    state = _random_resnet18_state()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / RESNET18_FILE)
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        loaded = build_backbone("resnet18", weights=name).state_dict()
        torch.testing.assert_close(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    with pytest.raises(ValueError, match="IMAGENET9K.*not a torchvision weight of resnet18.*IMAGENET1K_V1"):
        build_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="ResNet50_Weights.IMAGENET1K_V2.*not a torchvision weight of resnet18"):
        build_backbone("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2")


def test_weights_as_member_or_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    state = _random_resnet18_state()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / RESNET18_FILE)
    file = tmp_path / "weights.pt"
    torch.save(state, file)
    key = "layer4.1.bn2.running_var"
    for weights in (ResNet18_Weights.IMAGENET1K_V1, file):  # a WeightsEnum member, an os.PathLike
        torch.testing.assert_close(build_backbone("resnet18", weights=weights).state_dict()[key], state[key])
    with pytest.raises(ValueError, match="not weights of resnet18"):
        build_backbone("resnet18", weights=ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(TypeError, match="weights must be a torchvision weight name or member, a file or None"):
        build_backbone("resnet18", weights=True)


def test_mobilenet_v2_is_torchvisions_features_with_the_last_downsampling_at_stride_1() -> None:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    reference = mobilenet_v2(weights=None).eval()
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    images = torch.randn(2, 3, 64, 32)
    plain = MobileNetV2Backbone(weights=None, output_stride=32)
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), reference.features(images))
    backbone = build_backbone("mobilenet_v2", weights=None)  # output stride 16: a 64x32 image gives a 4x2 map
    backbone.load_state_dict(state)
    with torch.no_grad():
        out = backbone.eval()(images)
        # the blocks before the changed one are torchvision's; from there on only the stride of one depthwise
        # convolution differs, so at stride 32 the torchvision output is every other cell of ours at that block
        before = reference.features[:14](images)
        torch.testing.assert_close(backbone.features[:14](images), before)
    assert out.shape == (2, 1280, 4, 2) and backbone.out_channels == 1280
    assert backbone.output_size((256, 128)) == (16, 8) and backbone.output_size((250, 100)) == (16, 7)
    strides = [m.stride for m in backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    assert len(strides) == 4  # five downsamplings in torchvision's MobileNetV2, the last one removed
    with pytest.raises(ValueError, match="output_stride of mobilenet_v2 must be 16 or 32"):
        build_backbone("mobilenet_v2", weights=None, output_stride=8)


def test_mobilenet_v2_weights_from_a_file_of_features(tmp_path) -> None:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    state = mobilenet_v2(weights=None).state_dict()  # with the classifier, which a backbone leaves out
    torch.save(state, tmp_path / "mobilenet.pt")
    backbone = build_backbone("mobilenet_v2", weights=str(tmp_path / "mobilenet.pt"))
    torch.testing.assert_close(backbone.state_dict()["features.18.1.running_var"], state["features.18.1.running_var"])
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="broken.pt does not hold mobilenet_v2 backbone weights.*missing"):
        build_backbone("mobilenet_v2", weights=str(tmp_path / "broken.pt"))
    torch.save(build_backbone("resnet18", weights=None).state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(ValueError, match="resnet18.pt holds no mobilenet_v2 backbone weights.*'features.0.0.weight'"):
        build_backbone("mobilenet_v2", weights=str(tmp_path / "resnet18.pt"))
