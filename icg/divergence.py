"""Stopping a diverged run at once.

A learning rate far too high makes the loss NaN within a step; without a guard training goes on for the rest
of the epoch, the first error comes much later from the evaluation, and the NaN weights may be saved over the
last good checkpoint. :class:`DivergenceGuard` checks the loss of every step before its backward pass, so the
parameters are never updated by a diverged step, and stops with the step, the loss terms that went non-finite
and the learning rates. The forward pass of that step has already put non-finite batch-norm statistics in the
model, which is why nothing may be saved after it: the guard also refuses to write a checkpoint whose tensors
are not finite. The features of a diverged model are refused by :func:`icg.features.check_finite_features`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

__all__ = ["DivergenceError", "DivergenceGuard"]


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or weights."""


class DivergenceGuard(Callback):
    """Stops training at the first non-finite loss, before its backward pass and optimiser step.

    The message names the global step, the epoch, every logged ``train/...`` value that is not finite (the loss
    terms: ``train/global/ce``, ``train/par``, ...) and the learning rate of each parameter group. Nothing is
    saved after it: Lightning's ``ModelCheckpoint`` does not save on exceptions unless asked, and a checkpoint
    whose weights are not finite is refused here anyway. Under DDP the ranks agree before stopping, so no rank
    is left waiting in a collective. The check costs one host synchronisation per step.

    Added automatically by :meth:`icg.ICGModule.configure_callbacks`.
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True)
        if finite:
            return
        terms = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train/") and not math.isfinite(float(value))
        }
        rates = ", ".join(f"{group['lr']:.3g}" for optimizer in trainer.optimizers for group in optimizer.param_groups)
        local = "" if math.isfinite(float(loss.detach())) else f" (loss {float(loss.detach())})"
        raise DivergenceError(
            f"training diverged at global step {trainer.global_step} (epoch {trainer.current_epoch}): the loss is "
            f"not finite on at least one rank{local}; non-finite terms: "
            + (", ".join(f"{name}={value}" for name, value in terms.items()) or "none on this rank")
            + f"; learning rate(s) per parameter group: {rates}. Training stopped before this step changed the "
            "weights and nothing was saved after it: the last checkpoint holds the last finite state. Train again "
            "with a lower learning rate (--model.init_args.lr)."
        )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        broken = [
            name
            for name, value in checkpoint["state_dict"].items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]
        if broken:
            raise DivergenceError(
                f"refusing to save a checkpoint at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}): {len(broken)} tensor(s) of the model are not finite ("
                + ", ".join(broken[:5])
                + (", ..." if len(broken) > 5 else "")
                + "); the previous checkpoint is kept"
            )
