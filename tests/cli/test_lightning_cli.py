"""The `icg` command: shipped configs, fit -> validate/test/predict from the checkpoint, rank, W&B, DDP; runs that
never lose work: the last state saved, resumed, explicit values kept, safe and cross-dataset loading."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from icg.cli import main
from icg.cli.lightning_cli import ICGCLI
from icg.cli.recipes import CONFIG_DIR, resolve_config_names, shipped_recipes
from icg.data import generate_synthetic, load_images
from icg.data.datamodule import ReIDDataModule
from icg.features import NonFiniteFeaturesError
from icg.module import ICGModule
from icg.predict import embed_folder
from icg.retrieval import icg_distance
from tests.cli.test_recipes import resolved_config
from tests.conftest import make_cuhk03np_tree, make_duke_tree, make_market_tree, make_msmt17_tree

REPO = Path(__file__).resolve().parents[2]
TREES = {
    "Market1501DataModule": make_market_tree,
    "DukeMTMCDataModule": make_duke_tree,
    "CUHK03NPDataModule": make_cuhk03np_tree,
    "MSMT17DataModule": lambda parent: make_msmt17_tree(parent / "MSMT17_V1"),
}
SHIPPED = shipped_recipes()
SIZE = (64, 32)
# a run small enough for CPU tests: 8 train ids, resnet18, 64x32
TINY = [
    "--config",
    "synthetic",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--data.init_args.num_train_ids",
    "8",
    "--data.init_args.num_test_ids",
    "6",
    "--data.init_args.image_size",
    "[64, 32]",
    "--data.init_args.num_identities",
    "4",
    "--data.init_args.num_instances",
    "2",
    "--data.init_args.num_workers",
    "0",
]


def test_shipped_names_resolve_to_files() -> None:
    assert resolve_config_names(["fit", "--config", "market1501"])[-1] == str(CONFIG_DIR / "market1501.yaml")
    assert {
        "market1501",
        "market1501_bot",
        "dukemtmc",
        "dukemtmc_bot",
        "cuhk03np_detected",
        "cuhk03np_labeled",
        "msmt17",
        "msmt17_bot",
        "synthetic",
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_parses_and_instantiates(name: str, tmp_path: Path) -> None:
    config = (CONFIG_DIR / f"{name}.yaml").read_text()
    data_class = next(cls for cls in TREES if cls in config) if "Synthetic" not in config else None
    args = [
        "--config",
        name,
        "--model.init_args.weights",
        "null",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    if data_class is not None:
        TREES[data_class](tmp_path)
        args += ["--data.init_args.root", str(tmp_path)]
    else:
        args += ["--data.init_args.root", str(tmp_path / "synthetic")]
    cli = ICGCLI(
        ICGModule,
        ReIDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        run=False,
        args=resolve_config_names(args),
    )
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


@pytest.mark.parametrize(("given", "parsed"), [("0.7", "0.7"), ("otsu", "otsu")])
def test_fg_threshold_takes_a_share_or_otsu(given: str, parsed: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "synthetic", f"--model.init_args.fg_threshold={given}", "--print_config"])
    assert exit_info.value.code == 0
    assert f"fg_threshold: {parsed}\n" in capsys.readouterr().out


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
    assert bool(checkpoint["state_dict"]["part_labels.labeled"].all())  # the clustering ran and its labels are saved
    parts = Image.open(run / "pictures" / "epoch000_parts.png")
    # 6 images x 5 columns (image, pseudo-labels, predicted parts, foreground, attention), enlarged 4x to be
    # 128 wide, 2 px padding; a title strip (22 px) above, a colour key below
    tile_h, tile_w = 4 * SIZE[0], 4 * SIZE[1]
    assert parts.size[0] == 5 * (tile_w + 2) + 2
    assert parts.size[1] > 22 + 6 * (tile_h + 2) + 2
    ranking = Image.open(run / "pictures" / "epoch000_ranking.png")
    assert ranking.size[1] == 4 * (SIZE[0] + 4)  # 4 queries, one row each
    assert Image.open(run / "pictures" / "epoch000_adjacency.png").size == (7 * 44, 7 * 44)


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_from_the_checkpoint(fitted: Path, subcommand: str, capsys) -> None:
    ckpt = next((fitted / "runs" / "lightning_logs").iterdir()) / "checkpoints" / "last.ckpt"
    main(
        [
            subcommand,
            *TINY,
            "--data.init_args.root",
            str(fitted / "data"),
            "--ckpt_path",
            str(ckpt),
            "--trainer.default_root_dir",
            str(fitted / subcommand),
            "--trainer.callbacks",
            "[]",
        ]
    )
    out = capsys.readouterr().out
    stage = "val" if subcommand == "validate" else "test"
    assert f"{stage}/mAP" in out and "rank1" in out.lower()


@pytest.mark.slow
def test_predict_writes_features_and_rank_writes_a_picture(fitted: Path, tmp_path: Path) -> None:
    ckpt = next((fitted / "runs" / "lightning_logs").iterdir()) / "checkpoints" / "last.ckpt"
    query = fitted / "data" / "query"
    output = tmp_path / "features.pt"
    main(
        [
            "predict",
            *TINY,
            "--data.init_args.root",
            str(fitted / "data"),
            "--ckpt_path",
            str(ckpt),
            "--data.init_args.predict_dir",
            str(query),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.callbacks",
            "[{class_path: icg.predict.FeatureWriter, init_args: {output: " + str(output) + "}}]",
        ]
    )
    features = torch.load(output, weights_only=True)
    files = sorted(query.glob("*.jpg"))
    assert features["paths"] == [str(p) for p in files]
    assert features["global_feat"].shape[0] == len(files) and features["parts"].shape[:2] == (len(files), 6)
    picture = tmp_path / "ranking.png"
    main(
        [
            "rank",
            "--ckpt_path",
            str(ckpt),
            "--query",
            str(query),
            "--gallery",
            str(fitted / "data" / "bounding_box_test"),
            "--output",
            str(picture),
            "--top_k",
            "5",
            "--max_queries",
            "3",
        ]
    )
    assert Image.open(picture).size[1] == 3 * (SIZE[0] + 4)


@pytest.mark.slow
def test_export_index_and_search_rank_as_the_checkpoint_does(fitted: Path, tmp_path: Path, capsys) -> None:
    ckpt = next((fitted / "runs" / "lightning_logs").iterdir()) / "checkpoints" / "last.ckpt"
    query, gallery = fitted / "data" / "query", fitted / "data" / "bounding_box_test"
    formats = ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnxruntime") else [])
    for fmt in formats:
        main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(tmp_path / f"model.{fmt}")])
        assert f"{fmt} model written to" in capsys.readouterr().out
    model = tmp_path / f"model.{formats[-1]}"
    main(["index", "--model", str(model), "--folder", str(gallery), "--output", str(tmp_path / "gallery.faiss")])
    assert "indexed" in capsys.readouterr().out
    rankings = tmp_path / "rankings.json"
    main(
        [
            "search",
            "--index",
            str(tmp_path / "gallery.faiss"),
            "--query",
            str(query),
            "--top_k",
            "5",
            "--output",
            str(rankings),
        ]
    )
    printed = capsys.readouterr().out
    found = json.loads(rankings.read_text())
    # the reference: the checkpoint's features of both folders and the dense ICG distance (every gallery image
    # is a candidate: the gallery is smaller than the default number of candidates)
    module = ICGModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, weights=None).eval()
    q_files, q_features = embed_folder(module, query)
    g_files, g_features = embed_folder(module, gallery)
    distances = icg_distance(q_features, g_features)
    order = distances.argsort(dim=1, stable=True)[:, :5]
    assert list(found) == [str(path) for path in q_files]
    for row, path in enumerate(q_files):
        assert [hit["path"] for hit in found[str(path)]] == [str(g_files[i]) for i in order[row]]
        expected = distances[row, order[row]].tolist()
        assert [hit["distance"] for hit in found[str(path)]] == pytest.approx(expected, abs=1e-4)
        assert printed.count(f"{path}: ") == 1


@pytest.mark.slow
def test_wandb_offline_run_logs_pictures(fitted: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    os.environ["WANDB_SILENT"] = "true"
    main(
        [
            "fit",
            *TINY,
            "--data.init_args.root",
            str(fitted / "data"),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "WandbLogger",
            "--trainer.logger.init_args.offline",
            "true",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.project",
            "icg-test",
        ]
    )
    images = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/pictures/*.png"))
    assert {path.name.split("_")[0] for path in images} >= {"parts", "ranking", "adjacency"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_fit_on_cpu(fitted: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "icg",
        "fit",
        *TINY,
        "--data.init_args.root",
        str(fitted / "data"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--data.init_args.num_identities",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
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
    main(
        [
            "fit",
            *TINY,
            "--data.init_args.root",
            str(fitted / "data"),
            "--trainer.default_root_dir",
            str(runs),
            "--trainer.max_epochs",
            "3",
            "--trainer.check_val_every_n_epoch",
            "2",
        ]
    )
    shutil.copy(_last(runs), runs / "after-3-epochs.ckpt")
    return runs


@pytest.mark.slow
def test_last_ckpt_holds_the_final_epoch(three_epochs: Path) -> None:
    last = _load(three_epochs / "after-3-epochs.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * 2)  # the end of the run, not of its last validation
    best = next(v for k, v in last["callbacks"].items() if "val/mAP" in k)
    assert Path(best["best_model_path"]).name == "best-epoch=001.ckpt"  # the validation of epoch 1


def test_every_recipe_keeps_the_last_state_like_the_tested_one(capsys) -> None:
    def checkpointing(name: str) -> list:
        callbacks = resolved_config(["--config", name], capsys)["trainer"]["callbacks"]
        return [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]

    reference = checkpointing("synthetic")  # what test_last_ckpt_holds_the_final_epoch runs
    last = {"filename": "last", "enable_version_counter": False, "save_on_train_epoch_end": True}
    assert any(c["init_args"].items() >= last.items() for c in reference)
    for name in SHIPPED:
        assert checkpointing(name) == reference, name


@pytest.mark.slow
def test_fit_ckpt_path_last_resumes_the_run_in_its_own_folder(three_epochs: Path, fitted: Path) -> None:
    before = next(v for k, v in _load(three_epochs / "after-3-epochs.ckpt")["callbacks"].items() if "val/mAP" in k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(
            [
                "fit",
                *TINY,
                "--data.init_args.root",
                str(fitted / "data"),
                "--trainer.default_root_dir",
                str(three_epochs),
                "--trainer.max_epochs",
                "4",
                "--trainer.check_val_every_n_epoch",
                "2",
                "--ckpt_path",
                "last",
                "--model.init_args.center_lr",
                "0.25",
            ]
        )
    assert [p.name for p in (three_epochs / "lightning_logs").iterdir()] == ["version_0"]  # no new version folder
    last = _load(_last(three_epochs))
    assert (last["epoch"], last["global_step"]) == (3, 4 * 2)  # continued from step 6, not from scratch
    assert last["hyper_parameters"]["center_lr"] == 0.25  # an explicit value wins over the checkpoint's
    # the best checkpoint so far is still what the new validation is compared with
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    after = next(v for k, v in last["callbacks"].items() if "val/mAP" in k)
    if after["current_score"] is None:  # Lightning records a score only when it enters the top k
        assert float(after["best_model_score"]) == float(before["best_model_score"])
        assert after["best_model_path"] == before["best_model_path"]
    else:
        assert float(after["best_model_score"]) == max(float(before["best_model_score"]), float(after["current_score"]))
    assert Path(after["best_model_path"]).parent == _last(three_epochs).parent


def test_fit_ckpt_path_last_without_a_run_says_what_to_pass(fitted: Path, tmp_path: Path, capsys) -> None:
    best = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "best-epoch=000.ckpt"
    best.parent.mkdir(parents=True)
    shutil.copy(_last(fitted / "runs"), best)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *TINY,
                "--data.init_args.root",
                str(fitted / "data"),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--ckpt_path",
                "last",
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--ckpt_path {best}" in error and "leave out --ckpt_path" in error


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_a_checkpoint_evaluates_another_dataset(fitted: Path, tmp_path_factory, subcommand: str, caplog) -> None:
    """Trained on 8 synthetic identities, evaluated on another population read as DukeMTMC-reID."""
    other = tmp_path_factory.getbasetemp() / "other_population"
    if not other.exists():
        generate_synthetic(other, num_train_ids=5, num_test_ids=4, seed=1, image_size=(64, 32))
    run = tmp_path_factory.mktemp(subcommand)
    ckpt = _last(fitted / "runs")
    caplog.set_level(logging.INFO)
    cli = ICGCLI(
        ICGModule,
        ReIDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={"use_distributed_sampler": False},
        args=resolve_config_names(
            [
                subcommand,
                *TINY,
                "--data",
                "icg.data.DukeMTMCDataModule",
                "--data.init_args.root",
                str(other),
                "--ckpt_path",
                str(ckpt),
                "--trainer.default_root_dir",
                str(run),
                "--trainer.callbacks",
                "[]",
            ]
        ),
    )
    assert cli.datamodule.num_classes == 5 and _load(ckpt)["hyper_parameters"]["num_classes"] == 8
    assert "trained on other identities" in caplog.text and "criterion.classifiers.global.weight (8, " in caplog.text
    # reference: the trained network, loaded as trained, gives the same features
    reference = ICGModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, weights=None).eval()
    images = load_images([r.path for r in cli.datamodule.eval_records[:4]], cli.datamodule.eval_transform)
    for (name, expected), (_, got) in zip(reference.extract(images).items(), cli.model.eval().extract(images).items()):
        assert torch.allclose(expected, got, atol=1e-5), name
    if subcommand == "predict":
        features = torch.load(run / "lightning_logs" / "version_0" / "features.pt", weights_only=True)
        assert len(features["paths"]) == len(cli.datamodule.eval_records)
    else:
        stage = "val" if subcommand == "validate" else "test"
        assert 0.0 <= float(cli.trainer.callback_metrics[f"{stage}/mAP"]) <= 1.0


@pytest.mark.parametrize(
    ("subcommand", "name", "value", "stored"),
    [("test", "num_parts", "4", "6"), ("validate", "use_fsg", "false", "True"), ("fit", "lr", "0.123", "0.001")],
)
def test_an_explicit_value_that_cannot_take_effect_is_an_error(
    fitted: Path, subcommand: str, name: str, value: str, stored: str, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                subcommand,
                *TINY,
                "--data.init_args.root",
                str(fitted / "data"),
                f"--model.init_args.{name}",
                value,
                "--ckpt_path",
                str(_last(fitted / "runs")),
                "--trainer.default_root_dir",
                str(fitted / "unused"),
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--model.init_args.{name} {value if value != 'false' else 'False'} cannot take effect" in error
    assert f"{name}={stored}" in error


@pytest.mark.slow
def test_explicit_values_win_over_the_checkpoint(fitted: Path, tmp_path: Path) -> None:
    ckpt = _last(fitted / "runs")
    assert _load(ckpt)["hyper_parameters"]["rerank"] is False
    cli = ICGCLI(
        ICGModule,
        ReIDDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={"use_distributed_sampler": False},
        args=resolve_config_names(
            [
                "validate",
                *TINY,
                "--data.init_args.root",
                str(fitted / "data"),
                "--model.rerank",
                "true",
                "--model.init_args.fg_threshold=0.7",
                "--ckpt_path",
                str(ckpt),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.callbacks",
                "[]",
            ]
        ),
    )
    assert cli.model.hparams.rerank is True and cli.model.val_metric.rerank is True
    assert cli.model.hparams.fg_threshold == 0.7


class _Payload:
    """Unpickling it runs code: it writes the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.slow
def test_a_checkpoint_carrying_a_pickle_payload_is_refused_by_every_entry_point(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload-ran"
    evil = _load(_last(fitted / "runs"))
    evil["payload"] = _Payload(marker)
    run = tmp_path / "runs"
    _last(run).parent.mkdir(parents=True)
    torch.save(evil, _last(run))
    # torch < 2.6 (which pyproject.toml used to allow) loads with weights_only=False unless told otherwise
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    common = [*TINY, "--data.init_args.root", str(fitted / "data"), "--trainer.default_root_dir", str(run)]
    commands = {
        "fit": ["fit", *common, "--ckpt_path", str(_last(run))],
        "fit last": ["fit", *common, "--ckpt_path", "last"],
        **{name: [name, *common, "--ckpt_path", str(_last(run))] for name in ("validate", "test", "predict")},
        "rank": [
            "rank",
            "--ckpt_path",
            str(_last(run)),
            "--query",
            str(fitted / "data" / "query"),
            "--gallery",
            str(fitted / "data" / "query"),
            "--output",
            str(tmp_path / "ranking.png"),
        ],
    }
    for name, command in commands.items():
        with pytest.raises(pickle.UnpicklingError, match="weights_only"):
            main(command)
        assert not marker.exists(), f"icg {name} ran the checkpoint's code"
    # without that variable, torch's own default refuses it: pyproject.toml requires such a torch
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    with pytest.raises(pickle.UnpicklingError):
        ICGModule.load_from_checkpoint(_last(run))
    assert not marker.exists()
    floor = next(r for r in importlib.metadata.requires("icg") if r.startswith("torch>="))
    assert tuple(int(x) for x in floor.removeprefix("torch>=").split(".")[:2]) >= (2, 6)


def test_a_wrong_config_name_lists_the_shipped_recipes() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "market1502"])
    message = str(exit_info.value.code)
    assert "--config market1502" in message and "did you mean market1501?" in message
    assert all(name in message for name in SHIPPED)


@pytest.mark.slow
def test_rank_and_predict_refuse_a_diverged_checkpoint(fitted: Path, tmp_path: Path) -> None:
    diverged = _load(_last(fitted / "runs"))
    diverged["state_dict"]["net.backbone.conv1.weight"].fill_(float("nan"))
    ckpt = tmp_path / "diverged.ckpt"
    torch.save(diverged, ckpt)
    query = fitted / "data" / "query"
    first = str(sorted(query.glob("*.jpg"))[0])
    with pytest.raises(NonFiniteFeaturesError, match=re.escape(first)):
        main(
            [
                "rank",
                "--ckpt_path",
                str(ckpt),
                "--query",
                str(query),
                "--gallery",
                str(query),
                "--output",
                str(tmp_path / "ranking.png"),
            ]
        )
    with pytest.raises(NonFiniteFeaturesError, match=r"icg predict: .*" + re.escape(first)):
        main(
            [
                "predict",
                *TINY,
                "--data.init_args.root",
                str(fitted / "data"),
                "--ckpt_path",
                str(ckpt),
                "--data.init_args.predict_dir",
                str(query),
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    assert sorted(p.name for p in tmp_path.rglob("*.p*")) == []  # neither ranking.png nor features.pt
