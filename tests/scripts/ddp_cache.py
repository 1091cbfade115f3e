"""Two-process DDP run (CPU, gloo) with the disk cache and device augmentation, for ``tests/data/test_datamodule.py``.

Usage: ``python tests/scripts/ddp_cache.py DATA_ROOT CACHE_DIR OUT_DIR``. One training epoch of two steps; each rank
saves to ``OUT_DIR/rank<r>.pt`` how many cache builds it ran, the file it mapped, and its training batches as the
training step saw them (index, pid, image, source).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from lightning.pytorch import LightningModule, Trainer, seed_everything  # noqa: E402

import icg.data.cache  # noqa: E402
from icg.data import SyntheticDataModule  # noqa: E402

torch.set_num_threads(1)
builds: list[str] = []
_build = icg.data.cache._build


def _recording(data: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
    builds.append(str(data))
    return _build(data, *args, **kwargs)


icg.data.cache._build = _recording


class RecordBatches(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.batches: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.batches.append({key: batch[key].cpu() for key in ("index", "pid", "image", "source")})
        return self.layer(batch["image"].mean((1, 2, 3))[:, None]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(root: str, cache_dir: str, out: Path) -> None:
    datamodule = SyntheticDataModule(
        root=root,
        num_train_ids=6,
        num_test_ids=3,
        image_size=(32, 16),
        num_identities=2,
        num_instances=2,
        num_workers=0,
        cache="disk",
        cache_dir=cache_dir,
    )
    seed_everything(0)
    module = RecordBatches()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    cache = datamodule.image_cache()
    torch.save(
        {"builds": builds, "path": str(cache.path), "batches": module.batches},
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
