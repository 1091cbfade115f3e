"""The function commands' parsers come from the function's signature and docstring."""

from __future__ import annotations

import importlib
from typing import Literal

import pytest

from icg.cli import main
from icg.cli.functions import FUNCTION_COMMANDS, function_parser, run_function


def command(*, path: str, mode: Literal["fast", "exact"] = "fast", count: int = 3, limit: float | None = None) -> dict:
    """Does a thing.

    Args:
        path: where the thing is,
            over two lines.
        mode: how.
        count, limit: how many, and up to what.
    """
    return {"path": path, "mode": mode, "count": count, "limit": limit}


def test_options_follow_the_signature_and_the_docstring(capsys) -> None:
    parser = function_parser("thing", command)
    assert vars(parser.parse_args(["--path", "a"])) == {"path": "a", "mode": "fast", "count": 3, "limit": None}
    parsed = parser.parse_args(["--path=b", "--mode", "exact", "--count", "5", "--limit", "0.5"])
    assert command(**vars(parsed)) == {"path": "b", "mode": "exact", "count": 5, "limit": 0.5}
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "Does a thing." in text and "where the thing is, over two lines." in text
    assert "how many, and up to what. (default: 3)" in text and "{fast,exact}" in text
    for wrong in ([], ["--path", "a", "--mode", "slow"], ["--path", "a", "--count", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)


@pytest.mark.parametrize("name", sorted(FUNCTION_COMMANDS))
def test_every_shipped_command_has_a_parser_with_help_for_each_option(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: icg {name}")
    module, function = FUNCTION_COMMANDS[name].split(":")
    parser = function_parser(name, getattr(importlib.import_module(module), function))
    assert all(action.help for action in parser._actions)


def test_a_missing_required_option_is_named(capsys) -> None:
    with pytest.raises(SystemExit):
        run_function("search", ["--query", "q/"])
    assert "the following arguments are required: --index" in capsys.readouterr().err
