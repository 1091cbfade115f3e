"""The shipped recipes build on ``base.yaml`` and resolve to exactly the values of the self-contained recipes they
replaced.

``fixtures/recipes_before_inheritance/`` holds those self-contained recipes, frozen as they were shipped. Both
are resolved by the same parser (``icg fit ... --print_config``), so the comparison covers every setting,
defaults included, and stays valid when an argument is added to a class.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icg.cli import main
from icg.cli.recipes import BASE_RECIPE, CONFIG_DIR, resolve_config_names, shipped_recipes

FROZEN = Path(__file__).resolve().parents[1] / "fixtures" / "recipes_before_inheritance"


def resolved_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """The whole configuration ``icg fit ARGS`` would run, as ``--print_config`` writes it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_frozen_recipe_is_still_shipped() -> None:
    assert sorted(path.stem for path in FROZEN.glob("*.yaml")) == shipped_recipes()


@pytest.mark.parametrize("name", shipped_recipes())
def test_a_recipe_resolves_to_the_values_it_had_before_inheritance(name: str, capsys) -> None:
    shipped = resolved_config(["--config", name], capsys)
    assert shipped == resolved_config(["--config", str(FROZEN / f"{name}.yaml")], capsys)


def test_a_recipe_is_read_after_the_base_by_name_or_by_path() -> None:
    market = str(CONFIG_DIR / "market1501.yaml")
    expected = ["fit", "--config", str(BASE_RECIPE), "--config", market, "--trainer.max_epochs", "2"]
    assert resolve_config_names(["fit", "--config", "market1501", "--trainer.max_epochs", "2"]) == expected
    assert resolve_config_names(["fit", "--config", market, "--trainer.max_epochs", "2"]) == expected
    assert resolve_config_names(["fit", "--config=market1501.yaml"]) == [
        "fit",
        f"--config={BASE_RECIPE}",
        f"--config={market}",
    ]
    assert resolve_config_names(["fit", "--config", "base"]) == ["fit", "--config", str(BASE_RECIPE)]
    mine = str(FROZEN / "synthetic.yaml")  # a file outside icg/configs is read as it is
    assert resolve_config_names(["fit", "--config", mine]) == ["fit", "--config", mine]
