"""``icg fit``, ``validate``, ``test`` and ``predict``: a LightningCLI over :class:`~icg.module.ICGModule` and the
datamodules. The datamodule's ``num_classes``, ``num_train_samples`` and ``image_size`` are linked to the model.

With ``--ckpt_path``:

* ``--ckpt_path last`` is the newest ``last.ckpt`` below ``--trainer.default_root_dir``; ``fit`` then continues
  that run in its own version folder (logs, ``best-*.ckpt`` tracking), see :func:`icg.checkpoints.find_last_checkpoint`.
* The model's hyperparameters come from the checkpoint (Lightning's rule), except values given explicitly on the
  command line (``--model.init_args.X``), which win; where one cannot take effect (a setting that changes the shape
  of a weight, found by building the model on the meta device with each value, :func:`icg.checkpoints.weight_shapes`;
  ``lr`` and ``weight_decay`` when ``fit`` restores the optimiser's state) the command stops with an error naming it.
* ``validate``, ``test`` and ``predict`` build the model with ``weights=None`` (unless given): the checkpoint
  holds all weights, so ImageNet weights would only be loaded to be overwritten (and need a download offline
  machines cannot do). They accept a checkpoint trained on other identities (another dataset).
* Checkpoints are read with ``weights_only=True`` (``--weights_only false`` for a trusted old file).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import import_object
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from icg.checkpoints import find_last_checkpoint, run_version, weight_shapes
from icg.cli.recipes import resolve_config_names
from icg.data.datamodule import ReIDDataModule
from icg.files import atomic_write
from icg.module import ICGModule
from icg.predict import FeatureWriter

# Arguments held by the optimiser's state, which resuming (`fit --ckpt_path`) restores from the checkpoint.
OPTIMIZER_STATE = ("lr", "weight_decay")


class AtomicSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` writing ``config.yaml`` through :func:`icg.files.atomic_write`."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})
        self.log_dir: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved:  # collectives under DDP: every rank asks, rank 0 writes in save_config
            self.log_dir = trainer.log_dir or trainer.default_root_dir
            path = Path(self.log_dir) / self.config_filename
            if trainer.strategy.broadcast(path.exists() if trainer.is_global_zero else False) and not self.overwrite:
                raise RuntimeError(f"{path} exists; pass save_config_kwargs={{'overwrite': True}} to replace it")
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write(Path(self.log_dir) / self.config_filename, lambda stream: stream.write(text.encode()))


def explicit_model_arguments(argv: Sequence[str]) -> set[str]:
    """Names of the model arguments given on the command line (``--model.init_args.NAME`` or ``--model.NAME``,
    with the value after ``=`` or as the next word), as opposed to a config file or a default."""
    names = set()
    for arg in argv:
        key = arg.split("=", 1)[0]
        for prefix in ("--model.init_args.", "--model."):
            if key.startswith(prefix):
                name = key[len(prefix) :].split(".", 1)[0]
                if name not in ("class_path", "init_args", "dict_kwargs"):
                    names.add(name)
                break
    return names


class ICGCLI(LightningCLI):
    """LightningCLI with the links between datamodule and model that every ICG run needs, and the handling of
    ``--ckpt_path`` described in the module docstring."""

    def __init__(
        self,
        *args: Any,
        save_config_callback: type[SaveConfigCallback] | None = AtomicSaveConfigCallback,
        **kwargs: Any,
    ) -> None:
        self.explicit: set[str] = set()
        self.before_checkpoint: dict[str, Any] = {}
        self.resumed: Path | None = None  # the last.ckpt that `fit --ckpt_path last` continues
        super().__init__(*args, save_config_callback=save_config_callback, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_train_samples", "model.init_args.num_train_samples", apply_on="instantiate")
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        if config.get("ckpt_path") == "last":
            try:
                config.ckpt_path = str(find_last_checkpoint(config.trainer.default_root_dir or "."))
            except FileNotFoundError as error:
                parser.error(str(error))
            if subcommand == "fit" and config.trainer.logger in (None, True):
                self.resumed = Path(config.ckpt_path)
        argv = sys.argv[1:] if args is None else args
        if config.get("ckpt_path") and isinstance(argv, (list, tuple)):
            self.explicit = explicit_model_arguments(argv)
            self.before_checkpoint = config.model.init_args.as_dict()

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand or self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if not subcommand or not config.get("ckpt_path"):
            return
        if config.get("weights_only") is None:
            config.weights_only = True
        model = config.model.init_args
        module_class = import_object(config.model.class_path)
        stored_settings = model.as_dict()
        for name in sorted(self.explicit):
            given, stored = self.before_checkpoint.get(name), model.get(name)
            if given == stored:
                continue
            reason = None
            if subcommand == "fit" and name in OPTIMIZER_STATE:
                reason = "resuming restores the optimiser's state, which holds the checkpoint's value"
            elif weight_shapes(module_class, {**stored_settings, name: given}) != weight_shapes(
                module_class, stored_settings
            ):
                reason = "the checkpoint's weights only fit a model built with its value"
            if reason is not None:
                self.parser.error(
                    f"--model.init_args.{name} {given} cannot take effect with --ckpt_path {config.ckpt_path}, "
                    f"trained with {name}={stored}: {reason}. Leave out --model.init_args.{name}, or start a new "
                    f"run (without --ckpt_path) to use {given}."
                )
            model[name] = given  # an explicit value wins over the checkpoint's
        if subcommand in ("validate", "test", "predict") and "weights" not in self.explicit:
            model.weights = None

    def before_fit(self) -> None:
        # `--ckpt_path last` continues the run in its own version folder, so that its logs go on and its best
        # checkpoint is still compared against (Lightning would start a new version folder)
        logger, version = self.trainer.logger, run_version(self.resumed) if self.resumed else None
        if (
            version is not None
            and isinstance(logger, (TensorBoardLogger, CSVLogger))
            and self.resumed.parents[2].resolve() == (Path(logger.save_dir) / logger.name).resolve()
        ):
            self.trainer.logger = type(logger)(save_dir=logger.save_dir, name=logger.name, version=version)

    def before_predict(self) -> None:
        if not any(isinstance(callback, FeatureWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(FeatureWriter())


def run_cli(args: Sequence[str]) -> ICGCLI:
    """``icg fit|validate|test|predict ARGS`` from Python, with recipe names resolved as on the command line.

    Returns the CLI once its subcommand has run, so that its ``trainer``, ``model`` and ``datamodule`` can go on
    (``examples/demo.py`` tests the best checkpoint of a ``fit`` with them).

    Raises:
        FileNotFoundError: a ``--config`` is neither a file nor a shipped recipe.
    """
    return lightning_cli(resolve_config_names(args))


def lightning_cli(args: Sequence[str] | None) -> ICGCLI:
    """The ``icg`` LightningCLI, run on ``args`` (``None``: ``sys.argv``)."""
    return ICGCLI(
        ICGModule,
        ReIDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
