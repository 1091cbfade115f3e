"""End-to-end: ICGModule and its BoT mode train and evaluate on tiny synthetic pedestrians."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from icg.data import SyntheticDataModule
from icg.module import ICGModule

SIZE = (64, 32)


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> SyntheticDataModule:
    root = tmp_path_factory.mktemp("synthetic") / "market"
    return SyntheticDataModule(
        str(root),
        num_train_ids=8,
        num_test_ids=6,
        image_size=SIZE,
        num_identities=4,
        num_instances=2,
        eval_batch_size=32,
        num_workers=0,
    )


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    kwargs = {
        "max_epochs": 2,
        "limit_train_batches": 3,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return pl.Trainer(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "modules"),
    [("resnet18", (True, True, True)), ("resnet18", (False, False, False)), ("mobilenet_v2", (True, True, True))],
    ids=["icg", "bot", "icg-mobilenet"],
)
def test_fit_then_validate(datamodule: SyntheticDataModule, tmp_path: Path, backbone: str, modules) -> None:
    use_afm, use_ppc, use_fsg = modules
    model = ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=SIZE,
        backbone=backbone,
        weights=None,
        num_parts=3,
        use_afm=use_afm,
        use_ppc=use_ppc,
        use_fsg=use_fsg,
        warmup_epochs=1,
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2 * 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    (results,) = trainer.validate(model, datamodule=datamodule)
    for name in ("val/mAP", "val/rank1", "val/rank5", "val/rank10", "val/mINP"):
        assert 0.0 <= results[name] <= 1.0
    # the warm-up moved the learning rate from 0.1 x lr to lr after one epoch
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(model.hparams.lr)


def _icg(datamodule: SyntheticDataModule) -> ICGModule:
    return ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=SIZE,
        backbone="resnet18",
        weights=None,
        num_parts=3,
        warmup_epochs=1,
    )


@pytest.mark.slow
def test_part_signals_are_logged(datamodule: SyntheticDataModule, tmp_path: Path) -> None:
    model = _icg(datamodule)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=datamodule)
    metrics = trainer.callback_metrics
    num_parts = model.hparams.num_parts
    assert 0.0 <= float(metrics["train/visible_parts"]) <= num_parts
    assert 0.0 <= float(metrics["train/part_entropy"]) <= torch.log(torch.tensor(num_parts + 1.0)) + 1e-6
    assert 0.0 <= float(metrics["train/part_accuracy"]) <= 1.0
    assert 0.0 <= float(metrics["train/foreground_share"]) <= 1.0
    # the adjacency moved from its initial 0.5 by AdamW's steps
    assert 0.0 < float(metrics["train/adjacency_deviation"]) < 0.5


@pytest.mark.slow
def test_an_epoch_without_visible_parts_warns_once(datamodule: SyntheticDataModule, tmp_path: Path) -> None:
    model = _icg(datamodule)
    classifier = model.net.part_classifier
    with torch.no_grad():  # background wins every cell, whatever the features
        classifier.conv.bias[0] = 100.0
    classifier.requires_grad_(False)
    trainer = _trainer(tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match="no part was visible in any training image of epoch 0") as record:
        trainer.fit(model, datamodule=datamodule)
    assert sum("no part was visible" in str(w.message) for w in record) == 1
    assert float(trainer.callback_metrics["train/visible_parts"]) == 0.0
