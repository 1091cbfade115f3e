"""The Trainer the benchmark scripts share: one device, no logger, checkpoints, summary, progress bar or
validation, so that only the work being measured runs. Scripts run with benchmarks/ on sys.path."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def quiet_trainer(**settings: Any) -> pl.Trainer:
    """A ``pl.Trainer`` on one device (``accelerator="auto"``) without logging, checkpointing, model summary,
    progress bar, validation or sanity check; ``settings`` add to or override these."""
    defaults = dict(
        accelerator="auto",
        devices=1,
        use_distributed_sampler=False,  # the PK sampler already knows the ranks
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **settings})
