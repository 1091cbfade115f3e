"""Checkpoints: written atomically, found again to resume a run, loaded for evaluation on another dataset.

* :class:`AtomicCheckpointIO` is Lightning's ``TorchCheckpointIO`` writing through :func:`icg.files.atomic_write`
  (Lightning's own save goes through ``$TMPDIR`` and, across filesystems, copies over the previous checkpoint);
  :class:`AtomicCheckpointing` installs it in any Trainer that trains an :class:`~icg.ICGModule`.
* :func:`find_last_checkpoint` finds the ``last.ckpt`` that ``icg fit --ckpt_path last`` resumes.
* :func:`skip_identity_tensors` lets validation, test and prediction load a checkpoint trained on other identities.
* :func:`weight_shapes` says which weights a module's settings make, so that a setting that changes them is known
  by what it does, not from a list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from icg.files import atomic_write

__all__ = [
    "AtomicCheckpointIO",
    "AtomicCheckpointing",
    "find_last_checkpoint",
    "identity_tensor_names",
    "run_version",
    "skip_identity_tensors",
    "weight_shapes",
]

LAST = "last.ckpt"
_VERSION = re.compile(r"^version_(\d+)$")


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

    def load_checkpoint(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        return super().load_checkpoint(*args, weights_only=True if weights_only is None else weights_only, **kwargs)


class AtomicCheckpointing(Callback):
    """Makes the Trainer write checkpoints with :class:`AtomicCheckpointIO`.

    It replaces only Lightning's default ``TorchCheckpointIO``: a checkpoint IO the user configured (async,
    cloud) is left alone. Added automatically by :meth:`icg.ICGModule.configure_callbacks`.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def find_last_checkpoint(run_folder: str | Path) -> Path:
    """The most recently written ``last.ckpt`` below ``run_folder`` (``<run folder>/lightning_logs/version_N/
    checkpoints/last.ckpt`` for the default logger): the state of the latest run there.

    Raises:
        FileNotFoundError: there is none; the message lists the checkpoints that exist, to pass one instead.
    """
    run_folder = Path(run_folder)
    candidates = [path for path in run_folder.glob(f"**/checkpoints/{LAST}") if path.is_file()]
    if candidates:
        return max(candidates, key=lambda path: path.stat().st_mtime_ns)
    others = sorted(str(path) for path in run_folder.glob("**/*.ckpt"))
    hint = (
        "pass one of its checkpoints instead (--ckpt_path "
        + others[-1]
        + "; found: "
        + ", ".join(others[:5])
        + (", ..." if len(others) > 5 else "")
        + ")"
        if others
        else "it holds no checkpoint at all"
    )
    raise FileNotFoundError(
        f"--ckpt_path last: there is no checkpoints/{LAST} below the run folder {run_folder} "
        f"(--trainer.default_root_dir); {hint}. Set --trainer.default_root_dir to the folder of the run to "
        "resume, or leave out --ckpt_path to start a new run."
    )


def run_version(checkpoint: str | Path) -> int | None:
    """``N`` when ``checkpoint`` lies in ``.../version_N/checkpoints/`` (the default loggers' layout), else None."""
    parent = Path(checkpoint).parent
    match = _VERSION.match(parent.parent.name) if parent.name == "checkpoints" else None
    return int(match.group(1)) if match else None


def identity_tensor_names(module: nn.Module) -> set[str]:
    """State-dict entries whose shape depends on the training identities or images and that retrieval never
    uses: the loss's (identity classifiers and center-loss centres) and the part-label buffers (one row per
    training image)."""
    names = {f"criterion.{name}" for name in getattr(module, "criterion", nn.Module()).state_dict()}
    return names | {name for name in ("part_labels.labels", "part_labels.labeled") if name in module.state_dict()}


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


def weight_shapes(module_class: type[nn.Module], settings: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight of ``module_class(**settings)`` but those tied to the training identities
    (:func:`identity_tensor_names`): what a checkpoint must match to load. Built on the meta device, with random
    initial weights and no compilation, so it costs no memory and reads no file.

    Two settings give the same shapes exactly when a checkpoint of one loads into a module of the other: the
    command line uses it to tell a value that cannot take effect with a checkpoint (``icg.cli.lightning_cli``).
    """
    with torch.device("meta"):
        module = module_class(**{**settings, "weights": None, "compile": False})
    skipped = identity_tensor_names(module)
    return {name: tuple(value.shape) for name, value in module.state_dict().items() if name not in skipped}
