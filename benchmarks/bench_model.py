"""Cost of ICG over its BoT baseline: train-step time, parameters and FLOPs.

Usage: ``python benchmarks/bench_model.py [--backbone resnet50 --batch-size 16 --steps 5 --warmup 2 --amp]``

Both networks are built from the same seed and stepped on the same synthetic batch (P identities x 4 images,
band part labels, foreground target from the feature map), alternating ICG and BoT steps so that a change in
machine load hits both alike. A train step is forward + loss + backward + Adam step (+ the centres' SGD step).
Prints the machine, the medians of ``--steps`` steps after ``--warmup`` steps and their ratio (target: ICG at
most 1.3x BoT; also the median ratio of back-to-back pairs, steadier on a shared machine), then parameters and
inference FLOPs for one image, next to the paper's Table 4 (ICG: 18.9M parameters, 7.3 GFLOPs at 256x128).
Runs on the GPU when there is one (``--device cpu`` to force the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from torch.utils.flop_counter import FlopCounterMode

from icg import ICGModule
from icg.losses import ICGLoss
from icg.model import ICGNet
from icg.parts import foreground_target


def build(args: argparse.Namespace, device: torch.device, full: bool) -> tuple[ICGNet, ICGLoss]:
    """The network and loss of an ICG (or BoT) module, as the recipe builds them."""
    torch.manual_seed(0)
    module = ICGModule(
        args.num_classes,
        num_train_samples=1,
        image_size=(args.height, args.width),
        backbone=args.backbone,
        weights=None,
        num_parts=args.num_parts,
        use_afm=full,
        use_ppc=full,
        use_fsg=full,
    )
    net = module.net.to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, module.criterion.to(device)


def make_train_step(
    net: ICGNet, criterion: ICGLoss, images: torch.Tensor, pids: torch.Tensor, amp: bool
) -> Callable[[], float]:
    classifiers = list(criterion.classifiers.parameters())
    trained = [p for p in net.parameters() if p.requires_grad] + classifiers
    optimizer = torch.optim.Adam(trained, lr=3.5e-4, weight_decay=5e-4)
    center_optimizer = torch.optim.SGD(criterion.centers, lr=0.5)
    device = images.device

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        center_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(images)
            fg_target = foreground_target(out.feature_map) if net.use_afm else None
            part_target = None
            if net.use_ppc:
                # Horizontal bands 1..K on the foreground, background elsewhere: what the labels look like.
                _, _, h, w = out.feature_map.shape
                bands = 1 + torch.arange(h, device=device) * net.num_parts // h
                part_target = torch.where(fg_target.bool(), bands[None, :, None].expand(len(images), h, w), 0)
            loss, _ = criterion(out, pids, fg_target, part_target)
        loss.backward()
        for centers in criterion.centers:
            centers.grad.div_(criterion.center_loss_scale)
        optimizer.step()
        center_optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def count(net: ICGNet, criterion: ICGLoss) -> tuple[int, int]:
    """Parameters with the identity classifiers (the loss's), and those used at inference (the network's)."""
    inference = sum(p.numel() for p in net.parameters())
    return inference + sum(p.numel() for p in criterion.classifiers.parameters()), inference


def inference_flops(net: ICGNet, device: torch.device, height: int, width: int) -> int:
    net.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.randn(1, 3, height, width, device=device))
    net.train()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=16, help="P x 4; the paper trains with 64")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=751, help="Market-1501 has 751 training ids")
    parser.add_argument("--num-parts", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    if args.batch_size % 4:
        parser.error(f"--batch-size must be a multiple of 4 (P identities x 4 images), got {args.batch_size}")
    device = torch.device(args.device)

    print(f"machine: {describe()}")
    print(
        f"setup: {args.backbone}, batch {args.batch_size}, {args.height}x{args.width}, {args.num_classes} classes, "
        f"K={args.num_parts}, device {device.type}, {'bf16 autocast' if args.amp else 'fp32'}"
        f"{', channels-last' if args.channels_last else ''}"
    )

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.height, args.width, generator=generator).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    pids = torch.arange(args.batch_size // 4).repeat_interleave(4).to(device)
    models = {name: build(args, device, full=name == "ICG") for name in ("ICG", "BoT")}
    steps = {name: make_train_step(net, criterion, images, pids, args.amp) for name, (net, criterion) in models.items()}

    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            elapsed = step()
            if i >= args.warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in models:
        spread = ", ".join(f"{t * 1e3:.0f}" for t in times[name])
        print(f"train step {name}: median {median[name] * 1e3:.1f} ms over {args.steps} steps ({spread} ms)")
    paired = statistics.median(icg / bot for icg, bot in zip(times["ICG"], times["BoT"]))
    print(
        f"train step ratio ICG / BoT: {median['ICG'] / median['BoT']:.3f} of the medians, {paired:.3f} median of "
        f"the {args.steps} back-to-back pairs (target <= 1.3)"
    )

    print(
        "FLOPs: torch.utils.flop_counter counts 2 per multiply-add (GMACs = GFLOPs / 2); eval-mode forward of one "
        f"{args.height}x{args.width} image"
    )
    for name, (net, criterion) in models.items():
        total, inference = count(net, criterion)
        flops = inference_flops(net, device, args.height, args.width)
        print(
            f"{name}: parameters {total / 1e6:.2f}M ({inference / 1e6:.2f}M without classifiers), "
            f"{flops / 1e9:.2f} GFLOPs = {flops / 2e9:.2f} GMACs"
        )
    print("paper Table 4, ICG: 18.9M parameters, 7.3 GFLOPs")


if __name__ == "__main__":
    main()
