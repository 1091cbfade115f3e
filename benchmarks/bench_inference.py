"""Inference speed of a model in each form it can be deployed in: images/s of ``ICGModule.extract`` in PyTorch
(fp32, channels-last, bf16 autocast), of the exported ONNX file in ONNX Runtime and of the TorchScript archive,
on the CPU and, when there is one, on the GPU.

Usage: ``python benchmarks/bench_inference.py [--backbone resnet50 --batch-size 16 --repeats 5 --bot]``

The model has random weights (speed does not depend on them) and the paper's input, 256x128. Each form runs one
warm-up batch, then ``--repeats`` batches; images/s is the batch size over the median batch time. Every form
runs with the same number of CPU threads (torch's, which ONNX Runtime is given too). The largest difference of
each form's features from fp32 ``extract`` is printed with it (visibility: the share of flags that differ).
bf16 on a CPU without native bf16 instructions (``avx512_bf16`` or AMX) is emulated and slow, and measured only with
``--bf16``; the machine line says which the CPU has.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path

from icg.deploy import ExportedModel, export_onnx, export_torchscript
from icg.features import ReIDFeatures
from icg.module import ICGModule


def cpu_bf16() -> str:
    """Whether the CPU has native bf16 arithmetic, from its flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags.split()]
    return ", ".join(native) if native else "none (emulated)"


def images_per_second(run: Callable[[], object], batch: int, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()  # warm-up: first-call allocations, ONNX Runtime's and TorchScript's optimisation passes
    return batch / statistics.median(timed() for _ in range(repeats))


def difference(features: ReIDFeatures, reference: ReIDFeatures) -> str:
    """Largest absolute difference of the float features and the share of visibility flags that differ."""
    features = features.to(reference.device)
    largest = max(
        (getattr(features, name).float() - value).abs().max().item()
        for name, value in reference.items()
        if name != "visibility"
    )
    text = f"{largest:.1e}"
    if reference.visibility is not None:
        text += f", visibility {(features.visibility != reference.visibility).float().mean().item():.1%} differ"
    return text


def forms(
    module: ICGModule, channels_last: ICGModule, files: dict[str, Path], images: torch.Tensor, bf16_too: bool
) -> dict[str, Callable[[], ReIDFeatures]]:
    """Each form of the model, as a call on ``images`` (on the device of the modules); bf16 if ``bf16_too``."""

    def bf16() -> ReIDFeatures:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return module.extract(images)

    calls = {
        "PyTorch fp32": lambda: module.extract(images),
        "PyTorch fp32 channels-last": lambda: channels_last.extract(images),
    }
    if bf16_too:
        calls["PyTorch bf16 autocast"] = bf16
    for name, path in files.items():
        exported = ExportedModel(path, device=images.device.type, threads=torch.get_num_threads())
        calls[name] = lambda exported=exported: exported(images)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bot", action="store_true", help="the BoT baseline instead of ICG (K = 6)")
    parser.add_argument("--bf16", action="store_true", help="measure bf16 on a CPU without native bf16 too (slow)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 is steadiest on a shared CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    print(f"CPU bf16 instructions: {cpu_bf16()}")

    torch.manual_seed(0)
    flags = {"use_afm": False, "use_ppc": False, "use_fsg": False} if args.bot else {}
    settings = dict(num_classes=751, num_train_samples=1, backbone=args.backbone, weights=None, **flags)
    module = ICGModule(image_size=(args.height, args.width), **settings).eval()
    channels_last = ICGModule(image_size=(args.height, args.width), channels_last=True, **settings).eval()
    channels_last.load_state_dict(module.state_dict())
    images = torch.randn(args.batch_size, 3, args.height, args.width)
    print(
        f"{'BoT' if args.bot else 'ICG (K = 6)'} {args.backbone}, {args.height}x{args.width}, batch {args.batch_size}, "
        f"median of {args.repeats} batches\n"
    )

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    # the rows in this order, bf16's also when it is not measured
    results: dict[str, dict[str, str]] = {name: {} for name in ("PyTorch fp32", "PyTorch fp32 channels-last")}
    results["PyTorch bf16 autocast"] = {}
    with tempfile.TemporaryDirectory() as folder:
        files = {"TorchScript": export_torchscript(module, Path(folder) / "model.pt")}
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
            files["ONNX Runtime"] = export_onnx(module, Path(folder) / "model.onnx")
        for device in devices:
            x = images.to(device)
            reference = module.to(device).extract(x)
            bf16_too = device.type == "cuda" or args.bf16 or cpu_bf16() not in ("none (emulated)", "unknown")
            for name, run in forms(module, channels_last.to(device), files, x, bf16_too).items():
                speed = images_per_second(run, args.batch_size, args.repeats, device)
                results.setdefault(name, {})[device.type] = f"{speed:.1f} ({difference(run(), reference)})"
                print(f"{device.type} {name}: {results[name][device.type]}", flush=True)

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU on this machine"
    print(f"\n| form | CPU images/s (max abs difference from fp32 extract) | GPU images/s ({gpu}) |")
    print("|---|---|---|")
    for name, by_device in results.items():
        cpu = by_device.get("cpu", "not measured: no native bf16 on this CPU (--bf16 to measure the emulation)")
        print(f"| {name} | {cpu} | {by_device.get('cuda', 'not measured')} |")


if __name__ == "__main__":
    main()
