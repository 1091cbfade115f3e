"""The subcommands that run one function: ``icg rank``, ``icg export``, ``icg index`` and ``icg search``.

Their options are the function's keyword arguments, turned into an ``argparse`` parser from its signature and the
``Args:`` section of its docstring, so that each option is written once, in the function. ``argparse`` rather than
jsonargparse: ``icg index`` and ``icg search`` on an exported file start without Lightning and jsonargparse, whose
imports take seconds on a small machine. A function is imported only when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FUNCTION_COMMANDS", "function_parser", "run_function"]

FUNCTION_COMMANDS = {
    "rank": "icg.predict:rank_folders",
    "export": "icg.deploy.export:export_checkpoint",
    "index": "icg.deploy.gallery:index_folder",
    "search": "icg.deploy.gallery:search_index",
}
"""The subcommands that run one function, beside LightningCLI's: command -> ``module:function``."""

_ARGUMENT = re.compile(r"^(\w+(?:, \w+)*): (.*)$")


def _argument_help(docstring: str) -> dict[str, str]:
    """``name -> text`` of the docstring's ``Args:`` section (Google style; continuation lines joined)."""
    helps: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in docstring.splitlines():
        if line.strip() == "Args:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section
            break
        match = _ARGUMENT.match(line.strip()) if line.startswith("    ") and not line.startswith("     ") else None
        if match:
            names = match.group(1).split(", ")
            for name in names:
                helps[name] = match.group(2)
        elif line.strip() and names:
            for name in names:
                helps[name] += " " + line.strip()
    return helps


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered == "true"


def _option_type(annotation: Any, name: str) -> tuple[Callable[[str], Any], list[Any] | None]:
    """The converter of an option's string and its choices (for a ``Literal``); ``X | None`` is ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(others) == 1:
            return _option_type(others[0], name)
    if typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if annotation is bool:
        return _boolean, None
    if annotation in (int, float, str):
        return annotation, None
    raise TypeError(f"option --{name}: no command-line form for {annotation!r}")


def function_parser(command: str, function: Callable[..., Any]) -> argparse.ArgumentParser:
    """An ``argparse`` parser of ``icg COMMAND``: one ``--name`` option per keyword argument of ``function``, required
    when it has no default, with the help text of its docstring."""
    docstring = inspect.getdoc(function) or ""
    parser = argparse.ArgumentParser(prog=f"icg {command}", description=docstring.split("\n\n")[0])
    helps = _argument_help(docstring)
    hints = typing.get_type_hints(function)
    for parameter in inspect.signature(function).parameters.values():
        convert, choices = _option_type(hints[parameter.name], parameter.name)
        required = parameter.default is inspect.Parameter.empty
        text = helps.get(parameter.name, "") + ("" if required else f" (default: {parameter.default})")
        parser.add_argument(
            f"--{parameter.name}",
            type=convert,
            choices=choices,
            required=required,
            default=None if required else parameter.default,
            help=text.strip(),
        )
    return parser


def run_function(command: str, argv: Sequence[str]) -> Any:
    """Runs ``icg COMMAND ARGV`` (a key of :data:`FUNCTION_COMMANDS`) and returns what its function returns."""
    module, name = FUNCTION_COMMANDS[command].split(":")
    function = getattr(importlib.import_module(module), name)
    return function(**vars(function_parser(command, function).parse_args(list(argv))))
