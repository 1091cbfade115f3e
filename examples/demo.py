"""`make demo`: train ICG on synthetic pedestrians on the CPU, evaluate it, and draw what it learned.

The same as ``icg fit --config synthetic`` followed by ``icg test`` on the best checkpoint, plus a summary:
mAP / Rank-1 next to what a random ranking scores on the same query and gallery, and the pictures' paths.
"""

from __future__ import annotations

import sys
import time

import torch

from icg import ReIDDataModule, VisualizationCallback, evaluate_rank, run_cli


def random_ranking_map(datamodule: ReIDDataModule, seed: int = 0) -> float:
    """mAP of random distances on the datamodule's query and gallery: the chance level."""
    query, gallery = datamodule.dataset.query, datamodule.dataset.gallery
    distances = torch.rand(len(query), len(gallery), generator=torch.Generator().manual_seed(seed))
    return evaluate_rank(
        distances,
        *(
            torch.tensor([getattr(r, field) for r in records])
            for field in ("pid", "camid")
            for records in (query, gallery)
        ),
    ).mAP


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", "synthetic", *argv])
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    pictures = next(c for c in cli.trainer.callbacks if isinstance(c, VisualizationCallback)).saved
    minutes = (time.perf_counter() - start) / 60
    print("\n" + "=" * 72)
    print(f"ICG on synthetic pedestrians ({cli.datamodule.dataset}), {minutes:.1f} min on this machine")
    print(
        f"  test mAP {results['test/mAP']:.1%}   Rank-1 {results['test/rank1']:.1%}   "
        f"Rank-5 {results['test/rank5']:.1%}   mINP {results['test/mINP']:.1%}"
    )
    print(f"  a random ranking scores mAP {random_ranking_map(cli.datamodule):.1%} on the same query/gallery")
    print(f"  best checkpoint: {cli.trainer.checkpoint_callback.best_model_path}")
    print("  pictures (last validation):")
    for path in pictures[-3:]:
        print(f"    {path}")
    print("=" * 72)


if __name__ == "__main__":
    main(sys.argv[1:])
