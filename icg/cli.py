"""The ``icg`` command (and ``python -m icg``): a LightningCLI for ``fit``, ``validate``, ``test``, ``predict``,
plus ``icg rank`` to rank a query folder against a gallery folder with a checkpoint.

Examples::

    icg fit --config market1501                      # a shipped recipe (icg/configs/market1501.yaml)
    icg fit --config market1501_bot                  # its BoT baseline
    icg fit --config synthetic --trainer.max_epochs 5
    icg test --config market1501 --ckpt_path runs/market1501/.../best.ckpt
    icg predict --config market1501 --ckpt_path best.ckpt --data.init_args.predict_dir my_images/
    icg rank --ckpt_path best.ckpt --query q/ --gallery g/ --output ranking.png

``--config NAME`` resolves to ``icg/configs/NAME.yaml`` when ``NAME`` is not a file. The datamodule's
``num_classes``, ``num_train_samples`` and ``image_size`` are linked to the model. ``validate``, ``test`` and
``predict`` with ``--ckpt_path`` build the model with ``pretrained=False``: the checkpoint holds all weights,
so ImageNet weights would only be loaded to be overwritten (and need a download offline machines cannot do).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from jsonargparse import CLI
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from icg.data.datamodule import ReIDDataModule
from icg.module import ICGModule
from icg.predict import FeatureWriter, rank_folders

CONFIG_DIR = Path(__file__).parent / "configs"


class ICGCLI(LightningCLI):
    """LightningCLI with the links between datamodule and model that every ICG run needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "data.num_train_samples", "model.init_args.num_train_samples", apply_on="instantiate"
        )
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path"):
            config.model.init_args.pretrained = False

    def before_predict(self) -> None:
        if not any(isinstance(callback, FeatureWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(FeatureWriter())


def resolve_config_names(argv: Sequence[str]) -> list[str]:
    """Replaces ``--config NAME`` (and ``--config=NAME``) by the shipped ``icg/configs/NAME.yaml`` when
    ``NAME`` is not an existing file."""

    def resolve(value: str) -> str:
        shipped = CONFIG_DIR / f"{value.removesuffix('.yaml')}.yaml"
        return str(shipped) if not Path(value).exists() and shipped.is_file() else value

    resolved, previous = [], ""
    for arg in argv:
        if previous == "--config":
            arg = resolve(arg)
        elif arg.startswith("--config="):
            arg = "--config=" + resolve(arg.split("=", 1)[1])
        resolved.append(arg)
        previous = arg
    return resolved


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``icg`` console script."""
    from_command_line = argv is None
    argv = resolve_config_names(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["rank"]:
        CLI(rank_folders, args=argv[1:])
        return
    if from_command_line:  # LightningCLI warns when given args while sys.argv has some too
        sys.argv[1:] = argv
    ICGCLI(
        ICGModule,
        ReIDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=None if from_command_line else argv,
    )
