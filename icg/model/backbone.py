"""Backbones for re-ID: torchvision's ResNets (BoT, Luo et al. 2019) and MobileNetV2, as trunks.

A backbone maps images ``[B, 3, H, W]`` to the last feature map ``[B, C, H/s, W/s]`` where ``s`` is the
output stride; it says its ``out_channels`` and the ``output_size`` of the map for an input size. Pooling and the
classifier are not part of it: the ICG network pools the map several ways.

Output stride of a ResNet
    * 32: torchvision's ResNet unchanged.
    * 16 (default, BoT's "last stride 1"): the first block of ``layer4`` has stride 1 instead of 2 and no
      dilation, exactly as BoT does; a 256x128 image gives a 16x8 map.
    * 8: additionally ``layer3`` runs at stride 1, dilated by 2 through torchvision's
      ``replace_stride_with_dilation``; ``layer4`` then keeps dilation 2 and stride 1 (the same "no stride, no
      extra dilation" treatment BoT gives it at stride 16). A 256x128 image gives a 32x16 map, finer part maps
      for the PPC module. Only Bottleneck ResNets (50/101) support dilation.

Output stride of MobileNetV2 (``mobilenet_v2``, 1280 channels): 16 by default, BoT's treatment of its last
downsampling (the depthwise convolution of the first 160-channel block at stride 1, no dilation), or 32 (unchanged).

Weights (``weights``, torchvision's convention)
    * ``"IMAGENET1K_V1"`` (the default) or ``"DEFAULT"``, ``"IMAGENET1K_V2"``, ``"ResNet50_Weights.IMAGENET1K_V2"``
      or the ``WeightsEnum`` member itself: torchvision's weights of the same architecture, through its weights
      API, which looks in
      ``<torch.hub.get_dir()>/checkpoints`` first (``$TORCH_HOME/hub/checkpoints``, by default
      ``~/.cache/torch/hub/checkpoints``) and downloads otherwise. Offline and without the file,
      :class:`PretrainedWeightsUnavailableError` says which file to place where.
    * a file: a state dict (torchvision's own ``resnet*.pth`` / ``mobilenet_v2-*.pth`` files, or one saved from a
      backbone) or an ``icg`` checkpoint, of which only the backbone keys are taken, checked key by key. This is how
      a backbone pretrained elsewhere (``benchmarks/imagenet_weights.py``, ``benchmarks/pretrain_synthetic.py``, a
      re-ID checkpoint) starts a run.
    * ``None``: random initialization.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import (
    MobileNet_V2_Weights,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
    mobilenet_v2,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "BACKBONES",
    "IMAGENET_WEIGHTS",
    "MobileNetV2Backbone",
    "PretrainedWeightsUnavailableError",
    "ResNetBackbone",
    "build_backbone",
    "load_backbone_state",
    "weights_cache_path",
]

IMAGENET_WEIGHTS = "IMAGENET1K_V1"
"""The default ``weights``: the ImageNet weights BoT and the paper start from."""

_RESNETS: dict[str, tuple[Callable[..., nn.Module], WeightsEnum, int]] = {
    "resnet18": (resnet18, ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (resnet34, ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1, 2048),
    "resnet101": (resnet101, ResNet101_Weights.IMAGENET1K_V1, 2048),
}
_BOTTLENECK_RESNETS = ("resnet50", "resnet101")
BACKBONES = (*_RESNETS, "mobilenet_v2")
"""The names :func:`build_backbone` takes."""


class PretrainedWeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in the torch hub cache nor downloadable."""


def weights_cache_path(weights: WeightsEnum) -> str:
    """Where torch hub looks for (and would download) ``weights``: ``<hub dir>/checkpoints/<file name>``."""
    file_name = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _load_state_dict(name: str, weights: WeightsEnum) -> dict[str, Tensor]:
    try:
        return weights.get_state_dict(progress=True)
    except (URLError, OSError) as error:
        # URLError is an OSError; both catch "no network", and OSError also a cache dir that is not writable.
        path = weights_cache_path(weights)
        raise PretrainedWeightsUnavailableError(
            f"cannot load ImageNet weights for backbone {name!r}: {path} does not exist and downloading "
            f"{weights.url} failed ({error}). Place the file {os.path.basename(path)} in "
            f"{os.path.dirname(path)} (set TORCH_HOME to use another cache dir), or pass weights=None."
        ) from error


# Prefixes under which a backbone's keys sit in the files we accept: an icg checkpoint (``state_dict`` of the
# LightningModule), an ``ICGNet`` state dict, or a backbone / torchvision ResNet state dict (no prefix).
_BACKBONE_PREFIXES = ("net.backbone.", "backbone.", "")
# What a torchvision weight name looks like ("DEFAULT", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"); any
# other string is taken as a file path.
_WEIGHT_NAME = re.compile(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*")


def load_backbone_state(
    path: str | os.PathLike[str], expected: Mapping[str, Tensor], name: str = "the"
) -> dict[str, Tensor]:
    """The backbone weights stored in ``path``, with the key names of ``expected`` (the state dict of the backbone
    ``name``, which the errors name).

    Accepts a plain state dict (torchvision's files, whose classifier is dropped, or one saved from a backbone) and
    an ``icg`` checkpoint or ``ICGNet`` state dict (only the ``net.backbone.*`` / ``backbone.*`` keys are taken).
    The file is read with ``weights_only=True``: a checkpoint cannot run code while it loads.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no weights of the backbone.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights file {path} does not exist; weights takes a torchvision weight name "
            f"('IMAGENET1K_V1', 'DEFAULT'), the path of a state dict or icg checkpoint, or None (random)"
        )
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a foreign or damaged file
        raise ValueError(f"cannot read backbone weights from {path}: {error}") from error
    if isinstance(stored, dict) and isinstance(stored.get("state_dict"), dict):
        stored = stored["state_dict"]
    if not isinstance(stored, dict) or not all(isinstance(v, Tensor) for v in stored.values()):
        raise ValueError(f"{path} is not a state dict or an icg checkpoint (a dict of tensors)")
    roots = {key.split(".")[0] for key in expected}  # the backbone's modules: ``layer1``, ``features``, ...
    for prefix in _BACKBONE_PREFIXES:
        found = {key[len(prefix) :]: value for key, value in stored.items() if key.startswith(prefix)}
        found = {key: value for key, value in found.items() if key.split(".")[0] in roots}
        if found:
            return found
    example = next(iter(expected))
    raise ValueError(
        f"{path} holds no {name} backbone weights: expected keys like {example!r}, {'backbone.' + example!r} or "
        f"{'net.backbone.' + example!r}, found e.g. {sorted(stored)[:3]}"
    )


def _named_weights(weights_enum: type[WeightsEnum], value: str) -> WeightsEnum | None:
    """The torchvision weight of ``weights_enum`` that ``value`` names (``"IMAGENET1K_V2"``, ``"DEFAULT"``,
    ``"ResNet50_Weights.IMAGENET1K_V2"``), or ``None``."""
    enum_name, _, member = value.rpartition(".")
    if enum_name and enum_name != weights_enum.__name__:
        return None
    if member == "DEFAULT":
        return weights_enum.DEFAULT
    return weights_enum.__members__.get(member)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``, returning the last feature map.

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``.
        weights: a torchvision weight name or member (default ``IMAGENET1K_V1``), a weights file, or ``None``
            (random); see the module docstring.
        output_stride: 32, 16 (BoT's last stride 1) or 8 (``layer3`` dilated too; resnet50/101 only).

    Shapes:
        ``forward``: ``[B, 3, H, W] -> [B, out_channels, ceil(H / output_stride), ceil(W / output_stride)]``
        (exact division for inputs that are multiples of 32).
    """

    def __init__(
        self,
        name: str = "resnet50",
        *,
        weights: str | os.PathLike[str] | WeightsEnum | None = IMAGENET_WEIGHTS,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if name not in _RESNETS:
            raise ValueError(f"backbone name must be one of {sorted(_RESNETS)}, got {name!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if output_stride == 8 and name not in _BOTTLENECK_RESNETS:
            raise ValueError(
                f"output_stride=8 needs dilated convolutions, which torchvision's BasicBlock ({name}) does not "
                f"support; use output_stride=16 or one of {list(_BOTTLENECK_RESNETS)}"
            )
        factory, imagenet, channels = _RESNETS[name]
        resnet = factory(weights=None, replace_stride_with_dilation=[False, output_stride == 8, False])
        _load_weights(name, resnet, weights, type(imagenet), head="fc.")
        if output_stride <= 16:
            _remove_layer4_stride(resnet.layer4)

        self.name = name
        self.output_stride = output_stride
        self.out_channels = channels
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def output_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        """``(h, w)`` of the map for an input of ``image_size`` (:func:`halved`)."""
        return halved(image_size, self.output_stride)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def halved(image_size: Sequence[int], output_stride: int) -> tuple[int, int]:
    """``(h, w)`` of a backbone's map: every stride-2 stage of torchvision's ResNets and MobileNetV2 (3x3 windows
    padded by 1, or a 3x3 max-pool padded by 1) rounds its input size up, ``log2(output_stride)`` times."""
    height, width = image_size
    for _ in range(int(math.log2(output_stride))):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def _load_weights(
    name: str, model: nn.Module, weights: str | os.PathLike[str] | WeightsEnum | None, weights_enum: type, *, head: str
) -> None:
    """Loads ``weights`` (module docstring) into the torchvision ``model``, whose keys under ``head`` are the
    classifier a file of backbone weights need not hold."""
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    state = None
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, weights_enum):
            raise ValueError(f"weights={weights} are not weights of {name} (a member of {weights_enum.__name__})")
        state = _load_state_dict(name, weights)
    elif isinstance(weights, str):
        named = _named_weights(weights_enum, weights)
        if named is not None:
            state = _load_state_dict(name, named)
        elif os.path.isfile(weights) or not _WEIGHT_NAME.fullmatch(weights):
            expected = {key: value for key, value in model.state_dict().items() if not key.startswith(head)}
            state = _checked_file_state(name, expected, weights)
        else:
            raise ValueError(
                f"weights={weights!r} is not a torchvision weight of {name} (one of "
                f"{['DEFAULT', *weights_enum.__members__]}) nor an existing file"
            )
    elif weights is not None:
        raise TypeError(f"weights must be a torchvision weight name or member, a file or None, got {weights!r}")
    if state is not None:
        model.load_state_dict(state, strict=False)


def _checked_file_state(name: str, expected: Mapping[str, Tensor], path: str) -> dict[str, Tensor]:
    """The backbone weights of ``path``, checked key by key against ``expected``."""
    state = load_backbone_state(path, expected, name)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", wrong))
            if items
        )
        raise ValueError(f"{path} does not hold {name} backbone weights ({details})")
    return state


def _remove_layer4_stride(layer4: nn.Sequential) -> None:
    # The stride lives in conv2 of a Bottleneck and conv1 of a BasicBlock, and always in the shortcut.
    block = layer4[0]
    if isinstance(block, Bottleneck):
        block.conv2.stride = (1, 1)
    elif isinstance(block, BasicBlock):
        block.conv1.stride = (1, 1)
    else:
        raise TypeError(f"unexpected ResNet block type {type(block).__name__}")
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 without its classifier, returning the last feature map (1280 channels).

    Args:
        weights: a torchvision weight name or member of ``MobileNet_V2_Weights`` (default ``IMAGENET1K_V1``), a
            weights file with its ``features.*`` keys, or ``None`` (random); see the module docstring.
        output_stride: 16 (BoT's treatment of the last downsampling) or 32.

    Shapes:
        ``forward``: ``[B, 3, H, W] -> [B, 1280, ceil(H / output_stride), ceil(W / output_stride)]``.
    """

    def __init__(
        self,
        *,
        weights: str | os.PathLike[str] | WeightsEnum | None = IMAGENET_WEIGHTS,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride of mobilenet_v2 must be 16 or 32, got {output_stride}")
        model = mobilenet_v2(weights=None)
        _load_weights("mobilenet_v2", model, weights, MobileNet_V2_Weights, head="classifier.")
        if output_stride == 16:
            last = [m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)][-1]
            last.stride = (1, 1)
        self.name = "mobilenet_v2"
        self.output_stride = output_stride
        self.out_channels = model.last_channel
        self.features = model.features

    def output_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        """``(h, w)`` of the map for an input of ``image_size`` (:func:`halved`)."""
        return halved(image_size, self.output_stride)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


def build_backbone(
    name: str = "resnet50",
    *,
    weights: str | os.PathLike[str] | WeightsEnum | None = IMAGENET_WEIGHTS,
    output_stride: int = 16,
) -> ResNetBackbone | MobileNetV2Backbone:
    """The backbone ``name`` (one of :data:`BACKBONES`): a :class:`ResNetBackbone` or :class:`MobileNetV2Backbone`;
    see there for the arguments."""
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(weights=weights, output_stride=output_stride)
    if name not in _RESNETS:
        raise ValueError(f"backbone name must be one of {list(BACKBONES)}, got {name!r}")
    return ResNetBackbone(name, weights=weights, output_stride=output_stride)
