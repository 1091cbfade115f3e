"""Checkpoints written atomically.

* :class:`AtomicCheckpointIO` is Lightning's ``TorchCheckpointIO`` writing through :func:`icg.files.atomic_write`
  (Lightning's own save goes through ``$TMPDIR`` and, across filesystems, copies over the previous checkpoint);
  :class:`AtomicCheckpointing` installs it in any Trainer that trains an :class:`~icg.ICGModule`.
"""

from __future__ import annotations

from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from icg.files import atomic_write

__all__ = ["AtomicCheckpointIO", "AtomicCheckpointing"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically in their own folder (temporary file beside
    the destination, fsync, ``os.replace``), so that a kill during a save keeps the previous checkpoint intact
    and orphans nothing; remote paths (``s3://`` ...) keep Lightning's writer. Loads default to
    ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(path, lambda stream: torch.save(checkpoint, stream))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)


class AtomicCheckpointing(Callback):
    """Makes the Trainer write checkpoints with :class:`AtomicCheckpointIO`.

    It replaces only Lightning's default ``TorchCheckpointIO``: a checkpoint IO the user configured (async,
    cloud) is left alone. Added automatically by :meth:`icg.ICGModule.configure_callbacks`.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
