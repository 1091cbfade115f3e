"""The shipped recipes (``icg/configs/*.yaml``) and how ``--config NAME`` finds them.

A shipped recipe builds on ``base.yaml``, the paper's recipe without a dataset: jsonargparse has no include
directive, so ``--config NAME`` is expanded into ``--config base.yaml --config NAME.yaml``; a file outside
``icg/configs`` is read as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BASE_RECIPE", "CONFIG_DIR", "recipe_files", "resolve_config_names", "shipped_recipes"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BASE_RECIPE = CONFIG_DIR / "base.yaml"
"""The paper's recipe without a dataset, which every other shipped recipe builds on."""


def shipped_recipes() -> list[str]:
    """The recipes ``--config`` accepts by name: ``icg/configs/*.yaml`` without the suffix, but the base."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path != BASE_RECIPE)


def recipe_files(value: str) -> list[str]:
    """The config files that ``--config value`` stands for: ``value`` itself when it is a file, else the shipped
    ``icg/configs/<value>.yaml``; a shipped recipe (by name or path) other than the base comes after
    :data:`BASE_RECIPE`, which it builds on.

    Raises:
        FileNotFoundError: ``value`` is neither a file nor a shipped recipe; the message lists the recipes.
    """
    if Path(value).exists():
        file = value
    else:
        shipped = CONFIG_DIR / f"{value.removesuffix('.yaml')}.yaml"
        if not shipped.is_file():
            close = difflib.get_close_matches(value.removesuffix(".yaml"), shipped_recipes(), n=1)
            raise FileNotFoundError(
                f"--config {value}: no such file and no shipped recipe of that name"
                + (f" (did you mean {close[0]}?)" if close else "")
                + ". Shipped recipes: "
                + ", ".join(shipped_recipes())
            )
        file = str(shipped)
    location = Path(file).resolve()
    if location.parent == CONFIG_DIR and location != BASE_RECIPE:
        return [str(BASE_RECIPE), file]
    return [file]


def resolve_config_names(argv: Sequence[str]) -> list[str]:
    """Replaces each ``--config VALUE`` (and ``--config=VALUE``) by the files of :func:`recipe_files`, one
    ``--config`` each: ``--config market1501`` becomes ``--config .../base.yaml --config .../market1501.yaml``.

    Raises:
        FileNotFoundError: a ``VALUE`` is neither a file nor a shipped recipe; the message lists the recipes.
    """
    resolved: list[str] = []
    for index, arg in enumerate(argv):
        if index > 0 and argv[index - 1] == "--config":
            first, *others = recipe_files(arg)
            resolved += [first, *(word for file in others for word in ("--config", file))]
        elif arg.startswith("--config="):
            resolved += ["--config=" + file for file in recipe_files(arg.split("=", 1)[1])]
        else:
            resolved.append(arg)
    return resolved
