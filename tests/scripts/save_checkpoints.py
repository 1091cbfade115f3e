"""Trains nothing, but saves ``last.ckpt`` over and over the way an ``icg`` training does, until killed.

Usage: ``python tests/scripts/save_checkpoints.py DATA_ROOT CHECKPOINT_DIR``. It starts a real ``Trainer.fit`` of
a BoT :class:`icg.ICGModule` on tiny synthetic data (so every callback and checkpoint plugin the module brings
is in place) and, at the start of training, calls ``trainer.save_checkpoint(CHECKPOINT_DIR/last.ckpt)`` in a loop,
with 100 MB of padding so that a save takes a while. Before each save it prints ``saving``, after it
``saved <seconds>``; ``tests/test_checkpoints.py`` kills it with SIGKILL in the middle of a save.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from icg.data import SyntheticDataModule
from icg.module import ICGModule


class SaveForever(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["padding"] = torch.ones(25_000_000)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while True:
            print("saving", flush=True)
            started = time.perf_counter()
            trainer.save_checkpoint(self.path)
            print(f"saved {time.perf_counter() - started:.4f}", flush=True)


def main(data_root: str, checkpoint_dir: str) -> None:
    datamodule = SyntheticDataModule(
        data_root,
        num_train_ids=4,
        num_test_ids=3,
        image_size=(32, 16),
        num_identities=2,
        num_instances=2,
        num_workers=0,
    )
    model = ICGModule(
        num_classes=datamodule.num_classes,
        image_size=(32, 16),
        backbone="resnet18",
        weights=None,
        use_afm=False,
        use_ppc=False,
        use_fsg=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[SaveForever(Path(checkpoint_dir) / "last.ckpt")],
    )
    trainer.fit(model, datamodule=datamodule)


if __name__ == "__main__":
    main(*sys.argv[1:])
