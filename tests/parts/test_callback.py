"""The PartClustering callback: eval mode and the warning, the schedule and resume, DDP ranks that agree with one
process, and the contracts it asks of the module and the datamodule."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from icg.data import SyntheticDataModule
from icg.module import ICGModule
from icg.parts import ClusteringResult, PartClustering
from tests.parts.helpers import FakeModule, MapDataset, band_maps

REPO = Path(__file__).resolve().parents[2]


def test_too_few_foreground_cells_leaves_rows_unlabeled_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    maps, pids = band_maps(2, seed=30)[0], [0, 0]
    for pid in (1, 2):
        # one image with only two foreground cells: fewer than K = 3
        sparse = torch.full((8, 12, 4), 0.01)
        sparse[0, 3, 1] = sparse[0, 9, 2] = 1.0
        maps.append(sparse)
        pids.append(pid)
    module = FakeModule(len(maps), (12, 4))
    module.train()
    with caplog.at_level(logging.WARNING, logger="icg.parts.callback"):
        result = PartClustering().cluster(module, MapDataset(maps), pids)
    assert module.part_labels.labeled.tolist() == [True, True, False, False]
    assert not module.part_labels.labels[2:].any()
    assert result.skipped_identities == 2 and result.clustered_identities == 1
    records = [r for r in caplog.records if r.name == "icg.parts.callback"]
    assert len(records) == 1 and "2 of 3 identities" in records[0].getMessage()
    # the pass ran in eval mode and gave the module its mode back
    assert module.modes and not any(module.modes) and module.training


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the Trainer runs: their tensors are tiny, and on a small shared machine a second
    thread mostly waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clustering") / "synthetic"
    make_datamodule(root).prepare_data()
    return root


def make_datamodule(root: Path) -> SyntheticDataModule:
    return SyntheticDataModule(
        root=str(root),
        num_train_ids=4,
        num_test_ids=2,
        image_size=(64, 32),
        num_identities=2,
        num_instances=2,
        num_workers=0,
    )


def make_module(datamodule: SyntheticDataModule) -> ICGModule:
    torch.manual_seed(0)
    return ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=(64, 32),
        backbone="resnet18",
        weights=None,
        num_parts=3,
        warmup_epochs=1,
    )


class RecordingClustering(PartClustering):
    """Remembers at which epochs it clustered."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clustered_at: list[int] = []

    def cluster(self, module: LightningModule, *args: Any, **kwargs: Any) -> ClusteringResult:
        self.clustered_at.append(module.trainer.current_epoch)
        return super().cluster(module, *args, **kwargs)


class SaveAtEpochStart(Callback):
    """Saves a checkpoint in ``on_train_epoch_start`` of epoch 0, after the clustering callback: resuming from it,
    Lightning runs the epoch-start hooks of epoch 0 again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


class LabelSnapshots(Callback):
    """The module's labels as training sees them at each epoch start (after the clustering callback)."""

    def __init__(self) -> None:
        self.labels: dict[int, Tensor] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.labels[trainer.current_epoch] = pl_module.part_labels.labels.clone()


def fit(
    module: ICGModule,
    root: Path,
    workdir: Path,
    callbacks: list[Callback],
    max_epochs: int,
    ckpt_path: Path | None = None,
) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=make_datamodule(root), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_resume_keeps_labels_and_the_schedule(synthetic_root: Path, tmp_path: Path) -> None:
    datamodule = make_datamodule(synthetic_root)
    checkpoint = tmp_path / "epoch-start.ckpt"
    clustering = RecordingClustering(every_n_epochs=2)
    module = make_module(datamodule)
    trainer = fit(module, synthetic_root, tmp_path, [clustering, SaveAtEpochStart(checkpoint)], max_epochs=1)
    assert clustering.clustered_at == [0]
    assert module.part_labels.labeled.all() and module.part_labels.labels.any()
    for k in range(1, 4):
        assert f"cluster/part_share/{k}" in trainer.callback_metrics
    assert 0.0 < float(trainer.callback_metrics["cluster/foreground_share"]) <= 1.0
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["state_dict"]["part_labels.labeled"].all()

    resumed = RecordingClustering(every_n_epochs=2)
    snapshots = LabelSnapshots()
    fresh = make_module(datamodule)
    fit(fresh, synthetic_root, tmp_path, [resumed, snapshots], max_epochs=3, ckpt_path=checkpoint)
    # Lightning restarts epoch 0 with its start hooks: the labels come from the checkpoint, and epoch 0 is not
    # clustered again; epoch 2 is
    assert 0 in snapshots.labels
    assert resumed.clustered_at == [2]
    assert torch.equal(snapshots.labels[0], saved["state_dict"]["part_labels.labels"])
    assert torch.equal(snapshots.labels[1], saved["state_dict"]["part_labels.labels"])


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("shared", [False, True], ids=["per-identity", "shared-parts"])
def test_ddp_ranks_agree_with_a_single_process_run(synthetic_root: Path, tmp_path: Path, shared: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tests/scripts/ddp_clustering.py"), str(synthetic_root), str(tmp_path)]
    command += ["shared"] * shared
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = torch.load(tmp_path / "single.pt")
    assert reference["labeled"].all() and reference["labels"].any()
    for rank in ranks:
        assert torch.equal(rank["labels"], reference["labels"])
        assert torch.equal(rank["labeled"], reference["labeled"])
    # both ranks took part: each clustered a disjoint, non-empty share of the identities
    assert all(rank["local_identities"] > 0 for rank in ranks)
    assert sum(rank["local_identities"] for rank in ranks) == reference["identities"] == 4


def test_bad_settings_and_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="part labels for 5 images"):
        PartClustering().cluster(FakeModule(5, (12, 4)), MapDataset(band_maps(2)[0]), [0, 0])
    with pytest.raises(ValueError, match="every_n_epochs"):
        PartClustering(every_n_epochs=0)
    with pytest.raises(ValueError, match="niter"):
        PartClustering(niter=0)


def test_callback_does_nothing_for_a_model_without_parts() -> None:
    bot = ICGModule(num_classes=3, backbone="resnet18", weights=None, use_afm=False, use_ppc=False, use_fsg=False)
    trainer = SimpleNamespace(current_epoch=0, datamodule=None)
    PartClustering().on_train_epoch_start(trainer, bot)  # no datamodule needed, no error


def test_a_module_without_part_labels_is_named() -> None:
    class Plain(LightningModule):
        fg_threshold = 0.5
        fg_signal = "activation"

        def feature_maps(self, images: Tensor) -> Tensor:
            return images

    with pytest.raises(TypeError, match="PartClustering needs a LabeledModel.*Plain has no part_labels"):
        PartClustering().cluster(Plain(), MapDataset([torch.ones(2, 4, 2)]), [0])
    trainer = SimpleNamespace(current_epoch=0, datamodule=SimpleNamespace(num_workers=0))
    with pytest.raises(
        TypeError, match="ClusteringData.*SimpleNamespace has no cluster_dataset, eval_batch_size, train_records"
    ):
        PartClustering().on_train_epoch_start(trainer, FakeModule(2, (4, 2)))
