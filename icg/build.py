"""Building a model that fits a datamodule, from Python, as the ``icg`` command does from a recipe.

The model's sizes depend on the data: the identity classifiers have one output per training identity, the part
labels one map per training image, and the part-label maps follow the input size. The command links them
(:meth:`icg.cli.lightning_cli.ICGCLI.add_arguments_to_parser`); :func:`build_module` reads them the same way, so that no
one has to copy them by hand.
"""

from __future__ import annotations

from typing import Any

from icg.data.datamodule import ReIDDataModule
from icg.module import ICGModule

__all__ = ["build_module"]

_SIZES = ("num_classes", "num_train_samples", "image_size")


def build_module(datamodule: ReIDDataModule, **kwargs: Any) -> ICGModule:
    """An :class:`~icg.module.ICGModule` sized for ``datamodule``: ``num_classes``, ``num_train_samples`` and
    ``image_size`` are the datamodule's; every other argument is passed on (``backbone="resnet18"``, ``lr=...``).

    Raises:
        TypeError: ``kwargs`` gives one of the sizes, which would disagree with the data or repeat it.
    """
    given = sorted(set(_SIZES) & kwargs.keys())
    if given:
        raise TypeError(
            f"build_module: {', '.join(given)} come(s) from the datamodule; leave them out, or build "
            "ICGModule(...) yourself to choose every size"
        )
    sizes = {name: getattr(datamodule, name) for name in _SIZES}
    return ICGModule(**sizes, **kwargs)
