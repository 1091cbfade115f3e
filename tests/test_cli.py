"""The `icg` command: shipped configs, fit -> validate/test/predict from the checkpoint, rank, W&B, DDP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from icg.cli import CONFIG_DIR, ICGCLI, main, resolve_config_names
from icg.data.datamodule import ReIDDataModule
from icg.module import ICGModule
from tests.conftest import make_cuhk03np_tree, make_duke_tree, make_market_tree, make_msmt17_tree

REPO = Path(__file__).resolve().parents[1]
TREES = {
    "Market1501DataModule": make_market_tree,
    "DukeMTMCDataModule": make_duke_tree,
    "CUHK03NPDataModule": make_cuhk03np_tree,
    "MSMT17DataModule": lambda parent: make_msmt17_tree(parent / "MSMT17_V1"),
}
SHIPPED = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
SIZE = (64, 32)
# a run small enough for CPU tests: 8 train ids, resnet18, 64x32
TINY = ["--config", "synthetic", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
        "--data.init_args.num_train_ids", "8", "--data.init_args.num_test_ids", "6",
        "--data.init_args.image_size", "[64, 32]", "--data.init_args.num_identities", "4",
        "--data.init_args.num_instances", "2", "--data.init_args.num_workers", "0"]


def test_shipped_names_resolve_to_files() -> None:
    assert resolve_config_names(["fit", "--config", "market1501"])[-1] == str(CONFIG_DIR / "market1501.yaml")
    assert resolve_config_names(["fit", "--config=synthetic.yaml"]) == ["fit", f"--config={CONFIG_DIR}/synthetic.yaml"]
    assert resolve_config_names(["fit", "--config", "mine.yaml"]) == ["fit", "--config", "mine.yaml"]
    assert {"market1501", "market1501_bot", "dukemtmc", "dukemtmc_bot", "cuhk03np_detected", "cuhk03np_labeled",
            "msmt17", "msmt17_bot", "synthetic"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_parses_and_instantiates(name: str, tmp_path: Path) -> None:
    config = (CONFIG_DIR / f"{name}.yaml").read_text()
    data_class = next(cls for cls in TREES if cls in config) if "Synthetic" not in config else None
    args = ["--config", str(CONFIG_DIR / f"{name}.yaml"), "--model.init_args.pretrained", "false",
            "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--trainer.default_root_dir", str(tmp_path)]
    if data_class is not None:
        TREES[data_class](tmp_path)
        args += ["--data.init_args.root", str(tmp_path)]
    else:
        args += ["--data.init_args.root", str(tmp_path / "synthetic")]
    cli = ICGCLI(ICGModule, ReIDDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 auto_configure_optimizers=False, run=False, args=args)
    assert isinstance(cli.model, ICGModule) and isinstance(cli.datamodule, ReIDDataModule)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    bot = name.endswith("_bot")
    assert (cli.model.net.use_afm, cli.model.net.use_ppc, cli.model.net.use_fsg) == (not bot,) * 3
    assert cli.trainer.max_epochs == (120 if data_class else cli.trainer.max_epochs)
    if "cuhk03np" in name:
        assert cli.datamodule.variant == name.split("_")[1]


def test_print_config(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "synthetic", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: icg.data.SyntheticDataModule" in out and "use_distributed_sampler: false" in out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """Runs `icg fit` once on tiny synthetic data; returns the run folder."""
    root = tmp_path_factory.mktemp("cli")
    main(["fit", *TINY, "--data.init_args.root", str(root / "data"), "--trainer.default_root_dir", str(root / "runs")])
    return root


@pytest.mark.slow
def test_fit_writes_checkpoints_config_and_pictures(fitted: Path) -> None:
    run = next((fitted / "runs" / "lightning_logs").iterdir())
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert bool(checkpoint["state_dict"]["labelled"].all())  # the clustering ran and its labels are saved
    parts = Image.open(run / "pictures" / "epoch000_parts.png")
    # 6 images x 4 columns (image, pseudo-labels, predicted parts, foreground), 2 px padding
    assert parts.size == (4 * (SIZE[1] + 2) + 2, 6 * (SIZE[0] + 2) + 2)
    ranking = Image.open(run / "pictures" / "epoch000_ranking.png")
    assert ranking.size[1] == 4 * (SIZE[0] + 4)  # 4 queries, one row each
    assert Image.open(run / "pictures" / "epoch000_adjacency.png").size == (7 * 44, 7 * 44)


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_from_the_checkpoint(fitted: Path, subcommand: str, capsys) -> None:
    ckpt = next((fitted / "runs" / "lightning_logs").iterdir()) / "checkpoints" / "last.ckpt"
    main([subcommand, *TINY, "--data.init_args.root", str(fitted / "data"), "--ckpt_path", str(ckpt),
          "--trainer.default_root_dir", str(fitted / subcommand), "--trainer.callbacks", "[]"])
    out = capsys.readouterr().out
    stage = "val" if subcommand == "validate" else "test"
    assert f"{stage}/mAP" in out and "rank1" in out.lower()


@pytest.mark.slow
def test_predict_writes_features_and_rank_writes_a_picture(fitted: Path, tmp_path: Path) -> None:
    ckpt = next((fitted / "runs" / "lightning_logs").iterdir()) / "checkpoints" / "last.ckpt"
    query = fitted / "data" / "query"
    output = tmp_path / "features.pt"
    main(["predict", *TINY, "--data.init_args.root", str(fitted / "data"), "--ckpt_path", str(ckpt),
          "--data.init_args.predict_dir", str(query), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.callbacks", "[{class_path: icg.predict.FeatureWriter, init_args: {output: " + str(output) + "}}]"])
    features = torch.load(output, weights_only=False)
    files = sorted(query.glob("*.jpg"))
    assert features["paths"] == [str(p) for p in files]
    assert features["global_feat"].shape[0] == len(files) and features["parts"].shape[:2] == (len(files), 6)
    picture = tmp_path / "ranking.png"
    main(["rank", "--ckpt_path", str(ckpt), "--query", str(query), "--gallery", str(fitted / "data" / "bounding_box_test"),
          "--output", str(picture), "--top_k", "5", "--max_queries", "3"])
    assert Image.open(picture).size[1] == 3 * (SIZE[0] + 4)


@pytest.mark.slow
def test_wandb_offline_run_logs_pictures(fitted: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    os.environ["WANDB_SILENT"] = "true"
    main(["fit", *TINY, "--data.init_args.root", str(fitted / "data"), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger", "WandbLogger", "--trainer.logger.init_args.offline", "true",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.project", "icg-test"])
    images = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/pictures/*.png"))
    assert {path.name.split("_")[0] for path in images} >= {"parts", "ranking", "adjacency"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_fit_on_cpu(fitted: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "icg", "fit", *TINY, "--data.init_args.root", str(fitted / "data"),
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--data.init_args.num_identities", "2", "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt"))


# ------------------------------------------------------------------------------------------ runs that never lose work
def _last(folder: Path) -> Path:
    return folder / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def three_epochs(fitted: Path, tmp_path_factory) -> Path:
    """`icg fit` for 3 epochs validating every 2nd (as the recipes validate every 10th); returns the run folder,
    where ``after-3-epochs.ckpt`` keeps its last.ckpt (test_fit_ckpt_path_last_resumes... continues the run)."""
    runs = tmp_path_factory.mktemp("three_epochs")
    main(["fit", *TINY, "--data.init_args.root", str(fitted / "data"), "--trainer.default_root_dir", str(runs),
          "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"])
    shutil.copy(_last(runs), runs / "after-3-epochs.ckpt")
    return runs


@pytest.mark.slow
def test_last_ckpt_holds_the_final_epoch(three_epochs: Path) -> None:
    last = _load(three_epochs / "after-3-epochs.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * 2)  # the end of the run, not of its last validation
    best = next(v for k, v in last["callbacks"].items() if "val/mAP" in k)
    assert Path(best["best_model_path"]).name == "best-epoch=001.ckpt"  # the validation of epoch 1


def test_every_recipe_keeps_the_last_state_like_the_tested_one() -> None:
    def checkpointing(name: str) -> list:
        callbacks = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())["trainer"]["callbacks"]
        return [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]

    reference = checkpointing("synthetic")  # what test_last_ckpt_holds_the_final_epoch runs
    assert {"filename": "last", "enable_version_counter": False, "save_on_train_epoch_end": True} in [
        c["init_args"] for c in reference]
    for name in SHIPPED:
        assert checkpointing(name) == reference, name
