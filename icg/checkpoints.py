"""Checkpoints: written atomically, loaded for evaluation on another dataset.

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
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from icg.files import atomic_write
from icg.model.heads import BNNeck

__all__ = ["AtomicCheckpointIO", "AtomicCheckpointing", "identity_tensor_names", "skip_identity_tensors"]


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


def identity_tensor_names(module: nn.Module) -> set[str]:
    """State-dict entries whose shape depends on the training identities or images and that retrieval never
    uses: the BNNeck identity classifiers, the losses' parameters (center-loss centres) and the part-label
    buffers (one row per training image)."""
    names = {f"{name}.classifier.weight" for name, child in module.named_modules() if isinstance(child, BNNeck)}
    names |= {f"criterion.{name}" for name in getattr(module, "criterion", nn.Module()).state_dict()}
    return names | {name for name in ("part_labels", "labelled") if name in module.state_dict()}


def skip_identity_tensors(module: nn.Module, checkpoint: dict[str, Any]) -> list[str]:
    """Prepares ``checkpoint`` for evaluating ``module`` on a dataset with other identities: each identity tensor
    (see :func:`identity_tensor_names`) whose shape differs from the module's is replaced by the module's own, so
    that loading keeps the module's; every other tensor must fit. Returns the skipped names (one info line)."""
    state = checkpoint["state_dict"]
    own = module.state_dict()
    skipped = []
    for name in sorted(identity_tensor_names(module)):
        if name in state and name in own and state[name].shape != own[name].shape:
            skipped.append(f"{name} {tuple(state[name].shape)} -> {tuple(own[name].shape)}")
            state[name] = own[name]
    if skipped:
        rank_zero_info(
            f"{type(module).__name__}: the checkpoint was trained on other identities; evaluation does not use "
            f"the {len(skipped)} tensor(s) tied to them, which are not loaded: {', '.join(skipped)}"
        )
    return skipped
