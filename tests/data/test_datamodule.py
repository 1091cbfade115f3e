from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from icg.data import Market1501DataModule, PKSampler, SyntheticDataModule, UnreadableImagesError
from icg.data.transforms import INVALID_SOURCE
from icg.module import ICGModule
from tests.conftest import write_images

SIZE = (32, 16)


@pytest.fixture
def bigger_market(market_tree: Path) -> Path:
    # 6 train identities with 1..6 images, so P=2 x K=2 batches exist
    write_images(
        market_tree / "bounding_box_train",
        [f"{pid:04d}_c{1 + n % 6}s1_{n:06d}_01.jpg" for pid in range(20, 26) for n in range(pid - 19)],
    )
    return market_tree


def _datamodule(root: Path, **kwargs) -> Market1501DataModule:
    kwargs = {
        "image_size": SIZE,
        "num_identities": 2,
        "num_instances": 2,
        "eval_batch_size": 3,
        "num_workers": 0,
        **kwargs,
    }
    return Market1501DataModule(str(root), **kwargs)


def test_sizes_are_known_right_after_construction(bigger_market: Path) -> None:
    datamodule = _datamodule(bigger_market)
    assert datamodule.num_classes == 9  # ids 2, 7, 11 and 20..25
    assert datamodule.num_train_samples == 6 + 21


def test_train_batches(bigger_market: Path) -> None:
    datamodule = _datamodule(bigger_market)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (4, 3, *SIZE) and batch["image"].dtype == torch.float32
    assert batch["source"].shape == (4, *SIZE) and batch["source"].dtype == torch.int64
    assert int(batch["source"].min()) >= INVALID_SOURCE and int(batch["source"].max()) < SIZE[0] * SIZE[1]
    records = datamodule.train_records
    for pid, camid, index in zip(batch["pid"], batch["camid"], batch["index"]):
        assert (records[index].pid, records[index].camid) == (int(pid), int(camid))
    assert len(set(batch["pid"].tolist())) == 2


def test_eval_batches_are_query_then_gallery_and_shards_are_disjoint(bigger_market: Path, monkeypatch) -> None:
    datamodule = _datamodule(bigger_market)
    num_query = len(datamodule.dataset.query)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(datamodule, "_rank_and_world", lambda rank=rank: (rank, 2))
        for batch in datamodule.val_dataloader():
            assert torch.equal(batch["is_query"], batch["index"] < num_query)
            seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(datamodule.eval_records)))


def test_ddp_needs_lightnings_distributed_sampler_off(bigger_market: Path) -> None:
    datamodule = _datamodule(bigger_market)
    datamodule.trainer = SimpleNamespace(
        global_rank=0, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        datamodule.train_dataloader()


class _RecordBatches(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.indices: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.indices.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        return self.layer(batch["image"].mean((1, 2, 3))[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_reshuffles_pk_batches_every_epoch(bigger_market: Path, tmp_path: Path) -> None:
    datamodule = _datamodule(bigger_market, seed=3)
    model = _RecordBatches()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    expected = {}
    for epoch in range(3):
        sampler = PKSampler([r.pid for r in datamodule.train_records], 2, 2, seed=3)
        sampler.set_epoch(epoch)
        expected[epoch] = list(sampler)
    assert model.indices == expected
    assert expected[0] != expected[1] != expected[2]


def test_synthetic_datamodule_knows_sizes_before_generating(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    datamodule = SyntheticDataModule(
        str(root), num_train_ids=6, num_test_ids=4, image_size=SIZE, num_identities=2, num_instances=2, num_workers=0
    )
    assert datamodule.num_classes == 6 and not root.exists()
    num_train = datamodule.num_train_samples
    datamodule.prepare_data()
    assert len(datamodule.train_records) == num_train
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (4, 3, *SIZE)


@pytest.mark.slow
def test_every_unreadable_evaluation_image_is_listed_before_the_first_step(tmp_path: Path) -> None:
    datamodule = SyntheticDataModule(
        str(tmp_path / "synthetic"),
        num_train_ids=6,
        num_test_ids=4,
        image_size=SIZE,
        num_identities=2,
        num_instances=2,
        eval_batch_size=4,
        num_workers=2,
    )
    datamodule.prepare_data()
    query, gallery = datamodule.dataset.query, datamodule.dataset.gallery
    good = Path(gallery[0].path).read_bytes()
    # beyond the 2 x 4 images of Lightning's sanity check: otherwise found at the first validation only
    broken = {query[-1].path: b"not an image at all", gallery[-1].path: good[: len(good) // 2], gallery[-2].path: b""}
    for path, content in broken.items():
        Path(path).write_bytes(content)
    model = ICGModule(
        num_classes=datamodule.num_classes,
        image_size=SIZE,
        backbone="resnet18",
        weights=None,
        use_afm=False,
        use_ppc=False,
        use_fsg=False,
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(UnreadableImagesError) as error:
        trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 0
    listed = [line.split(": ")[0].strip() for line in str(error.value).splitlines()[1:]]
    assert sorted(listed) == sorted(broken)  # every bad file, nothing else
    assert "3 of the" in str(error.value) and "truncated" in str(error.value)
