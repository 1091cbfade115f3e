"""A stand-in for ImageNet initialisation: a ResNet-18 trained on a disjoint synthetic population.

The paper starts BoT and ICG alike from ImageNet weights, whose cell activations are larger on objects than on
the background: the premise of the foreground rule (eq. 3: ``||F(x, y)|| >= 0.5 * max``) and so of the part
clustering. ImageNet weights cannot be downloaded here. This script trains BoT (ResNet-18, 128x64 or
``--image-size``, no AFM/PPC/FSG) on synthetic pedestrians of their own generator seed, whose identities are drawn
independently of the ablation's (seed 0), and saves the backbone's state dict.

BoT alone does not give that premise here: the cell norms of a BoT ResNet-18 trained on synthetic pedestrians
follow the image position, not the person (AUC 0.45 as a person detector after 14 epochs on 300 identities;
``benchmarks/foreground_rule.py``). ``--saliency-weight`` (default 1) therefore adds what ImageNet brings, made
explicit: a loss that makes the relative cell norm ``r = ||F|| / max`` high on the person and low elsewhere
(binary cross-entropy of ``r`` against the person masks of *this* population, read through the augmentation's
source maps). It teaches person versus background, not parts: the ablation's data and its part masks are never
seen, and every part is still found by ICG's clustering. ``--saliency-weight 0`` gives plain BoT.

    python benchmarks/pretrain_synthetic.py                       # ~40-60 minutes on 2 cores
    python benchmarks/ablation.py --init runs/pretrained/resnet18-synthetic.pt
    python benchmarks/pretrain_synthetic.py --image-size 256 128 \
        --output runs/pretrained/resnet18-synthetic-256x128.pt   # 13 minutes on 2 cores (rendered at 256x128)

At 256x128 the stand-in reached test mAP 79.0 on its own population and AUC 0.94 as a person detector; a stand-in
pretrained at 128x64 does not carry its foreground to 256x128 inputs (the ablation's pseudo-foreground was at
chance there), so each input size gets its own.

``ICGModule(weights="runs/pretrained/resnet18-synthetic.pt")`` (or ``--model.init_args.weights PATH``)
loads it into any run. Besides the file, the script prints the stand-in's own test mAP and foreground AUC (on
its population's query/gallery) and writes a JSON summary next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from foreground_rule import pretrain_data, relative_norms, roc_auc
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from quiet_trainer import quiet_trainer
from torch import Tensor
from truth import true_part_cells

from icg import ICGModule, SyntheticDataModule
from icg.files import atomic_write
from icg.parts import cell_sources, relative_activation


class SalientBoT(ICGModule):
    """BoT plus a loss on the relative cell norms of the backbone map (see the module docstring).

    Args:
        person: ``bool [N, h, w]``: the cells of each training image (un-augmented) that show a person.
        saliency_weight: weight of the added loss.
        **kwargs: of :class:`~icg.ICGModule`, in BoT mode.
    """

    def __init__(self, person: Tensor, saliency_weight: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.person, self.saliency_weight = person, saliency_weight

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch["image"])
        loss, logs = self.criterion(output, batch["pid"])
        relative = relative_activation(output.feature_map).clamp(1e-4, 1 - 1e-4)
        h, w = relative.shape[-2:]
        height, width = batch["source"].shape[-2:]
        valid, row, col = cell_sources(batch["source"], (h, w))
        person = self.person.to(relative.device)[batch["index"][:, None, None], row * h // height, col * w // width]
        saliency = F.binary_cross_entropy(relative[valid], person[valid].float())
        self.log_dict(
            {"train/loss": loss.detach(), "train/saliency": saliency.detach()},
            prog_bar=True,
            batch_size=len(batch["pid"]),
        )
        return loss + self.saliency_weight * saliency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/pretrained/resnet18-synthetic.pt"))
    parser.add_argument(
        "--data", type=Path, default=None, help="default: data/synthetic-pretrain-s<seed>-<train ids>[-<H>x<W>]"
    )
    parser.add_argument(
        "--generator-seed",
        type=int,
        default=1000,
        help="the population's seed; the ablation's data is generator seed 0",
    )
    parser.add_argument("--train-ids", type=int, default=300)
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW's; default: ICGModule's")
    parser.add_argument("--saliency-weight", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"), help="rendered and network size"
    )
    args = parser.parse_args()
    image_size = tuple(args.image_size)
    args.data = args.data or pretrain_data(args.generator_seed, args.train_ids, image_size)
    print(f"Machine: {describe()}", flush=True)

    pl.seed_everything(0, workers=True, verbose=False)
    datamodule = SyntheticDataModule(
        str(args.data),
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        generator_seed=args.generator_seed,
        generated_size=image_size,
        image_size=image_size,
        num_identities=16,
        num_instances=4,
        num_workers=args.workers,
    )
    datamodule.setup("fit")
    cells = (image_size[0] // 16, image_size[1] // 16)  # ResNet with last stride 1
    person = true_part_cells([r.path for r in datamodule.train_records], cells) > 0
    module = SalientBoT(
        torch.from_numpy(person),
        args.saliency_weight,
        num_classes=datamodule.num_classes,
        image_size=image_size,
        backbone="resnet18",
        weights=None,
        use_afm=False,
        use_ppc=False,
        use_fsg=False,
        lr=args.lr,
        warmup_epochs=2,
        milestones=(args.epochs - 4,),
        channels_last=True,
        **({} if args.weight_decay is None else {"weight_decay": args.weight_decay}),
    )
    trainer = quiet_trainer(
        enable_progress_bar=True,
        max_epochs=args.epochs,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)

    atomic_write(args.output, lambda stream: torch.save(module.net.backbone.state_dict(), stream))
    module.eval()
    test_person = true_part_cells([r.path for r in datamodule.eval_records], cells) > 0
    auc = roc_auc(relative_norms(module.net.backbone, datamodule).ravel(), test_person.ravel())
    summary = {
        "file": str(args.output),
        "population": {
            "generator_seed": args.generator_seed,
            "train_ids": args.train_ids,
            "train_images": datamodule.num_train_samples,
            "test_ids": args.test_ids,
        },
        "recipe": {
            "model": "BoT ResNet-18",
            "saliency_weight": args.saliency_weight,
            "image_size": list(image_size),
            "batch": "16 x 4",
            "epochs": args.epochs,
            "lr": args.lr,
            "optimizer": "AdamW",
            "weight_decay": module.hparams.weight_decay,
        },
        "test_mAP": metrics["test/mAP"],
        "test_rank1": metrics["test/rank1"],
        "test_foreground_auc": auc,
        "train_minutes": round(minutes, 1),
        "machine": describe(),
    }
    args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
