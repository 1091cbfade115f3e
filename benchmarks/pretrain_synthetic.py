"""A stand-in for ImageNet initialisation: a BoT ResNet-18 trained on a disjoint synthetic population.

The paper starts BoT and ICG alike from ImageNet weights, whose cell features already respond more to a person
than to the background: that is what the foreground rule (eq. 3) and the part clustering build on. ImageNet
weights cannot be downloaded here, so this script trains BoT (ResNet-18, 128x64, no AFM/PPC/FSG) on synthetic
pedestrians of their own generator seed, whose identities are drawn independently of the ablation's (seed 0),
and saves the backbone's state dict. Every ablation run can then start from it:

    python benchmarks/pretrain_synthetic.py                       # ~20-30 minutes on 2 cores
    python benchmarks/ablation.py --init runs/pretrained/resnet18-synthetic.pt

``ICGModule(pretrained="runs/pretrained/resnet18-synthetic.pt")`` (or ``--model.init_args.pretrained PATH``)
loads it into any run. Besides the file, the script prints the stand-in's own test mAP (on its population's
query/gallery) and writes a JSON summary next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl

from icg import ICGModule, SyntheticDataModule
from icg.predict import save_atomically
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/pretrained/resnet18-synthetic.pt"))
    parser.add_argument("--data", type=Path, default=None,
                        help="default: data/synthetic-pretrain-s<generator seed>-<train ids>")
    parser.add_argument("--generator-seed", type=int, default=1000,
                        help="the population's seed; the ablation's data is generator seed 0")
    parser.add_argument("--train-ids", type=int, default=300)
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW's; default: ICGModule's")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.data = args.data or Path(f"data/synthetic-pretrain-s{args.generator_seed}-{args.train_ids}")
    print(f"Machine: {describe()}", flush=True)

    pl.seed_everything(0, workers=True, verbose=False)
    datamodule = SyntheticDataModule(str(args.data), num_train_ids=args.train_ids, num_test_ids=args.test_ids,
                                     generator_seed=args.generator_seed, image_size=(128, 64),
                                     num_identities=16, num_instances=4, num_workers=args.workers)
    module = ICGModule(num_classes=datamodule.num_classes, image_size=(128, 64), backbone="resnet18",
                       pretrained=False, use_afm=False, use_ppc=False, use_fsg=False, lr=args.lr,
                       warmup_epochs=2, milestones=(args.epochs - 4,), channels_last=True,
                       **({} if args.weight_decay is None else {"weight_decay": args.weight_decay}))
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, use_distributed_sampler=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)

    save_atomically(module.net.backbone.state_dict(), args.output)
    summary = {
        "file": str(args.output),
        "population": {"generator_seed": args.generator_seed, "train_ids": args.train_ids,
                       "train_images": datamodule.num_train_samples, "test_ids": args.test_ids},
        "recipe": {"model": "BoT ResNet-18", "image_size": [128, 64], "batch": "16 x 4", "epochs": args.epochs,
                   "lr": args.lr, "optimizer": "AdamW", "weight_decay": module.hparams.weight_decay},
        "test_mAP": metrics["test/mAP"],
        "test_rank1": metrics["test/rank1"],
        "train_minutes": round(minutes, 1),
        "machine": describe(),
    }
    args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
