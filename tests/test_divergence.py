"""A diverging run stops at its first non-finite loss and saves nothing after it; NaN features are refused."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from icg.data import SyntheticDataModule
from icg.divergence import DivergenceError
from icg.features import NonFiniteFeaturesError
from icg.module import ICGModule

SIZE = (64, 32)


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> SyntheticDataModule:
    root = tmp_path_factory.mktemp("synthetic") / "market"
    return SyntheticDataModule(
        str(root), num_train_ids=6, num_test_ids=4, image_size=SIZE, num_identities=3, num_instances=2, num_workers=0
    )


@pytest.mark.slow
def test_a_diverging_run_stops_at_once_and_keeps_the_last_good_checkpoint(
    datamodule: SyntheticDataModule, tmp_path: Path
) -> None:
    # epoch 0 trains at lr 1e-3; from epoch 1 the schedule multiplies it by 1e30, and the loss explodes
    model = ICGModule(
        num_classes=datamodule.num_classes,
        image_size=SIZE,
        backbone="resnet18",
        weights=None,
        use_afm=False,
        use_ppc=False,
        use_fsg=False,
        lr=1e-3,
        warmup_epochs=0,
        milestones=(1,),
        gamma=1e30,
    )
    last = ModelCheckpoint(
        dirpath=tmp_path, filename="last", enable_version_counter=False, save_on_train_epoch_end=True
    )  # the recipes' last.ckpt
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[last],
    )
    with pytest.raises(DivergenceError) as error:
        trainer.fit(model, datamodule=datamodule)
    message = str(error.value)
    assert f"global step {trainer.global_step} (epoch 1)" in message and trainer.global_step > 3
    assert "train/loss=nan" in message and "train/global/ce=nan" in message
    assert "1e+27" in message  # the learning rate of the diverged step
    assert trainer.current_epoch == 1  # stopped within the epoch, not at its end
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 3
    assert all(bool(torch.isfinite(value).all()) for value in checkpoint["state_dict"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    # the parameters were not updated by the diverged step; its forward pass broke the batch-norm statistics,
    # and a checkpoint of them is refused
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(DivergenceError, match=r"tensor\(s\) of the model are not finite \(.*running_"):
        trainer.save_checkpoint(tmp_path / "broken.ckpt")
    assert not (tmp_path / "broken.ckpt").exists()


def test_extract_refuses_non_finite_features() -> None:
    module = ICGModule(
        num_classes=4, num_train_samples=8, image_size=SIZE, backbone="resnet18", weights=None, num_parts=3
    ).eval()
    images = torch.randn(3, 3, *SIZE)
    assert all(bool(torch.isfinite(value).all()) for _, value in module.extract(images).items())
    with torch.no_grad():
        module.net.backbone.conv1.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteFeaturesError, match=r"ICGModule.extract: the features of 3 of 3 images .*row 0"):
        module.extract(images)
