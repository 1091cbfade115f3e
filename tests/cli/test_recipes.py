"""The shipped recipes: each builds on ``base.yaml`` and resolves (``icg fit ... --print_config``, defaults included)
to the values written here: the paper's recipe per dataset, its BoT baseline, the project's identity variant, and
the CPU demo."""

from __future__ import annotations

import pytest
import yaml

from icg.cli import main
from icg.cli.recipes import BASE_RECIPE, CONFIG_DIR, resolve_config_names, shipped_recipes

DATASETS = {  # recipe stem -> (datamodule, root, CUHK03-NP variant)
    "market1501": ("Market1501DataModule", "data/Market-1501-v15.09.15", None),
    "dukemtmc": ("DukeMTMCDataModule", "data/DukeMTMC-reID", None),
    "cuhk03np_detected": ("CUHK03NPDataModule", "data/cuhk03-np", "detected"),
    "cuhk03np_labeled": ("CUHK03NPDataModule", "data/cuhk03-np", "labeled"),
    "msmt17": ("MSMT17DataModule", "data/MSMT17_V1", None),
}
PAPER = {  # base.yaml: the paper's recipe (section 3.1 and BoT)
    "seed_everything": 0,
    "trainer.max_epochs": 120,
    "trainer.precision": "bf16-mixed",
    "trainer.check_val_every_n_epoch": 10,
    "model.init_args.backbone": "resnet50",
    "model.init_args.weights": "IMAGENET1K_V1",
    "model.init_args.output_stride": 16,
    "model.init_args.num_parts": 6,
    "model.init_args.use_afm": True,
    "model.init_args.use_ppc": True,
    "model.init_args.use_fsg": True,
    "model.init_args.part_assignment": "argmax",
    "model.init_args.fg_signal": "activation",
    "model.init_args.fg_threshold": 0.5,
    "model.init_args.feat_weight": 0.2,
    "model.init_args.sep_weight": 0.1,
    "model.init_args.par_weight": 0.1,
    "model.init_args.lr": 3.5e-4,
    "model.init_args.weight_decay": 5e-4,
    "model.init_args.warmup_epochs": 10,
    "model.init_args.milestones": [40, 70],
    "data.init_args.image_size": [256, 128],
    "data.init_args.num_identities": 16,
    "data.init_args.num_instances": 4,
}
VARIANTS = {
    "": {},
    "_bot": {"model.init_args.use_afm": False, "model.init_args.use_ppc": False, "model.init_args.use_fsg": False},
    "_identity": {
        "model.init_args.fg_signal": "identity",
        "model.init_args.fg_threshold": "otsu",
        "model.init_args.part_assignment": "foreground",
    },
}
BASE_CALLBACKS = [
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "icg.viz.VisualizationCallback",
]
SYNTHETIC = {  # make demo: ResNet-18 from scratch at 128x64 on the CPU, the identity variant
    "trainer.max_epochs": 8,
    "trainer.precision": "32-true",
    "model.init_args.backbone": "resnet18",
    "model.init_args.weights": None,
    "model.init_args.fg_signal": "identity",
    "model.init_args.fg_threshold": "otsu",
    "model.init_args.part_assignment": "foreground",
    "model.init_args.lr": 1e-3,
    "model.init_args.milestones": [6],
    "model.init_args.channels_last": True,
    "data.class_path": "icg.data.SyntheticDataModule",
    "data.init_args.image_size": [128, 64],
    "data.init_args.num_train_ids": 80,
    "data.init_args.num_identities": 8,
}


def resolved_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """The whole configuration ``icg fit ARGS`` would run, as ``--print_config`` writes it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def value(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def expected_values(name: str) -> dict:
    if name == "synthetic":
        return SYNTHETIC
    stem, variant = next((s, v) for v in sorted(VARIANTS, key=len, reverse=True) for s in DATASETS if name == s + v)
    datamodule, root, cuhk_variant = DATASETS[stem]
    expected = {**PAPER, **VARIANTS[variant], "trainer.default_root_dir": f"runs/{name}"}
    expected |= {"data.class_path": f"icg.data.{datamodule}", "data.init_args.root": root}
    if cuhk_variant is not None:
        expected["data.init_args.variant"] = cuhk_variant
    return expected


def test_the_shipped_recipes_are_paper_bot_and_identity_per_dataset_and_the_demo() -> None:
    expected = sorted([stem + variant for stem in DATASETS for variant in VARIANTS] + ["synthetic"])
    assert shipped_recipes() == expected


@pytest.mark.parametrize("name", shipped_recipes())
def test_a_recipe_resolves_to_its_values(name: str, capsys) -> None:
    config = resolved_config(["--config", name], capsys)
    for dotted, wanted in expected_values(name).items():
        assert value(config, dotted) == wanted, dotted
    callbacks = [callback["class_path"] for callback in config["trainer"]["callbacks"]]
    if name == "synthetic":  # from scratch, where shared parts beat their absence; every 2 epochs
        assert callbacks == [*BASE_CALLBACKS, "icg.parts.PartClustering"]
        clustering = config["trainer"]["callbacks"][-1]["init_args"]
        assert clustering["shared_parts"] is True and clustering["every_n_epochs"] == 2
    else:  # from ImageNet shared parts did not beat their absence: the module's own clustering, every epoch
        assert callbacks == BASE_CALLBACKS


def test_a_recipe_is_read_after_the_base_by_name_or_by_path(tmp_path) -> None:
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
    mine = tmp_path / "mine.yaml"  # a file outside icg/configs is read as it is
    mine.write_text("trainer:\n  max_epochs: 3\n")
    assert resolve_config_names(["fit", "--config", str(mine)]) == ["fit", "--config", str(mine)]
    with pytest.raises(FileNotFoundError, match="did you mean market1501"):
        resolve_config_names(["fit", "--config", "market1051"])


def test_the_readme_names_every_shipped_recipe_and_no_other() -> None:
    """The README's which-recipe table and the shipped recipes agree: every row names recipes that exist, and every
    recipe is in a row (per dataset, written ``market1501`` ... and ``*_bot`` / ``*_identity``)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Which recipe", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = set()
    for row in rows:
        for name in re.findall(r"`([a-z0-9_*]+)`", row.split("|")[1]):
            if name.startswith("*"):
                named |= {stem + name[1:] for stem in DATASETS}
            else:
                named.add(name)
    assert named == set(shipped_recipes())
