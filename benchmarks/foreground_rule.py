"""How well the foreground rule of eq. 3 finds the person: precision and recall of ``||F(x, y)|| >= t * max``
against the synthetic generator's true masks, for several thresholds ``t``, and the AUC of the relative norm as
a person detector (threshold-free).

This is what the part clustering starts from (and the AFM's target): the rule can only be as good as the
network's response to the person. ``F`` is the backbone's map ``F_theta`` of a weights file (``--init``; random
weights without it) or the map ``F_g`` after the attention of an icg checkpoint (``--checkpoint``), which is
what ICG thresholds. Measured on test images, in eval mode and without augmentation, as the clustering sees
them.

    python benchmarks/foreground_rule.py --init runs/pretrained/resnet18-synthetic.pt
    python benchmarks/foreground_rule.py --checkpoint runs/synthetic/.../last.ckpt --data data/synthetic \\
        --train-ids 80 --generator-seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from truth import true_part_cells

from icg import ICGModule
from icg.data import SyntheticDataModule
from icg.model import build_backbone
from icg.parts import relative_activation


@torch.no_grad()
def relative_norms(feature_fn: Callable[[torch.Tensor], torch.Tensor], datamodule: SyntheticDataModule) -> np.ndarray:
    """``||F|| / max`` of every cell of the query and gallery images: ``[N, h, w]``."""
    norms = []
    for batch in datamodule.test_dataloader():
        norms.append(relative_activation(feature_fn(batch["image"])))
    return torch.cat(norms).numpy()


def pretrain_data(generator_seed: int, train_ids: int, image_size: tuple[int, int]) -> Path:
    """Default folder of a pretraining population (the size is named when it is not 128x64)."""
    suffix = "" if image_size == (128, 64) else f"-{image_size[0]}x{image_size[1]}"
    return Path(f"data/synthetic-pretrain-s{generator_seed}-{train_ids}{suffix}")


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random person cell scores higher than a random background cell (ties count half)."""
    negatives = np.sort(scores[~positive])
    below = np.searchsorted(negatives, scores[positive], side="left")
    up_to = np.searchsorted(negatives, scores[positive], side="right")
    return float((below + 0.5 * (up_to - below)).sum() / (positive.sum() * len(negatives)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default=None, help="backbone weights file (default: random, from scratch)")
    parser.add_argument("--checkpoint", default=None, help="an icg checkpoint: measure its F_g instead")
    parser.add_argument(
        "--data", type=Path, default=None, help="default: data/synthetic-pretrain-s<seed>-<train ids>[-<H>x<W>]"
    )
    parser.add_argument("--generator-seed", type=int, default=1000)
    parser.add_argument("--train-ids", type=int, default=300)
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"), help="rendered and network size"
    )
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    args = parser.parse_args()
    args.data = args.data or pretrain_data(args.generator_seed, args.train_ids, tuple(args.image_size))
    print(f"Machine: {describe()}")
    datamodule = SyntheticDataModule(
        str(args.data),
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        generator_seed=args.generator_seed,
        generated_size=tuple(args.image_size),
        image_size=tuple(args.image_size),
        num_workers=0,
    )
    torch.manual_seed(0)
    if args.checkpoint:
        feature_fn, source = (
            ICGModule.load_from_checkpoint(args.checkpoint, weights=None).eval().feature_maps,
            f"F_g of {args.checkpoint}",
        )
    else:
        feature_fn, source = (
            build_backbone("resnet18", weights=args.init).eval(),
            f"F_theta of {args.init or 'a random ResNet-18'}",
        )
    norms = relative_norms(feature_fn, datamodule)
    paths = [record.path for record in datamodule.eval_records]
    person = true_part_cells(paths, norms.shape[1:]) > 0
    print(
        f"{source}; {len(paths)} test images of {args.data}; person cells "
        f"{person.mean():.0%}; AUC of the relative norm as a person detector "
        f"{roc_auc(norms.ravel(), person.ravel()):.3f}"
    )
    low = norms.reshape(len(norms), -1).min(axis=1)[:, None, None]
    stretched = (norms - low) / np.maximum(1 - low, 1e-12)
    print("| threshold | rule | foreground share | precision | recall |\n|---|---|---|---|---|")
    for threshold in args.thresholds:
        for rule, values in (("norm / max (eq. 3)", norms), ("(norm - min) / (max - min)", stretched)):
            foreground = values >= threshold
            precision = (foreground & person).sum() / max(foreground.sum(), 1)
            recall = (foreground & person).sum() / max(person.sum(), 1)
            print(f"| {threshold:.2f} | {rule} | {foreground.mean():.0%} | {precision:.0%} | {recall:.0%} |")


if __name__ == "__main__":
    main()
