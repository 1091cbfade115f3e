from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml

from icg.cli import main
from icg.data import Market1501DataModule, PKSampler, SyntheticDataModule, UnreadableImagesError
from icg.data.cache import ImageCache
from icg.data.transforms import INVALID_SOURCE, read_image
from icg.module import ICGModule
from tests.conftest import write_images
from tests.data.helpers import denormalize

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


def _quiet_trainer(root: Path, **kwargs) -> pl.Trainer:
    """A CPU trainer that writes and prints nothing."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def test_lightning_reshuffles_pk_batches_every_epoch(bigger_market: Path, tmp_path: Path) -> None:
    datamodule = _datamodule(bigger_market, seed=3)
    model = _RecordBatches()
    _quiet_trainer(tmp_path, max_epochs=3).fit(model, datamodule=datamodule)
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


def test_synthetic_generator_settings_make_another_population(tmp_path: Path) -> None:
    settings = {"num_cameras": 8, "train_images_per_id": (6, 6), "few_images_fraction": 0.0}
    other = SyntheticDataModule(str(tmp_path / "other"), num_train_ids=5, num_test_ids=3, generator_settings=settings)
    # every training identity has exactly 6 images, where the default draws 4 to 16
    assert other.num_train_samples == 30 and other.spec.num_cameras == 8
    with pytest.raises(TypeError, match="no_such_field"):
        SyntheticDataModule(str(tmp_path / "x"), generator_settings={"no_such_field": 1})


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


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "synthetic"
    _synthetic(root).prepare_data()
    return root


def _synthetic(root: Path, **kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(
        str(root), num_train_ids=6, num_test_ids=3, image_size=SIZE, num_identities=2, num_instances=2, **kwargs
    )


def _epoch(datamodule: SyntheticDataModule, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)  # the CPU augmentation draws from the global generator (no workers)
    return list(datamodule.train_dataloader())


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_loader_gives_the_batches_of_the_decoding_loader(synthetic_root: Path, tmp_path: Path, cache) -> None:
    decoding = _epoch(_synthetic(synthetic_root, num_workers=0))
    cached = _synthetic(synthetic_root, num_workers=0, cache=cache, cache_dir=str(tmp_path), augment_on_device=False)
    assert len(decoding) > 1
    for expected, batch in zip(decoding, _epoch(cached), strict=True):
        assert torch.equal(batch["index"], expected["index"]) and torch.equal(batch["pid"], expected["pid"])
        assert torch.equal(batch["image"], expected["image"]) and torch.equal(batch["source"], expected["source"])


def test_cluster_dataset_reads_the_cache(synthetic_root: Path) -> None:
    decoding = _synthetic(synthetic_root, num_workers=0).cluster_dataset()
    cached = _synthetic(synthetic_root, num_workers=0, cache="memory").cluster_dataset()
    assert len(cached) == len(decoding)
    for index in (0, len(decoding) // 2, len(decoding) - 1):
        assert torch.equal(cached[index]["image"], decoding[index]["image"])


def test_with_device_augmentation_the_loader_yields_resized_uint8_images(synthetic_root: Path) -> None:
    datamodule = _synthetic(synthetic_root, num_workers=0, augment_on_device=True)  # no cache: workers decode
    assert datamodule.augment_on_device and _synthetic(synthetic_root, cache="memory").augment_on_device
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, *SIZE) and "source" not in batch
    augmented = datamodule.augment_batch(batch)
    assert augmented["image"].dtype == torch.float32 and augmented["source"].shape == (4, *SIZE)
    assert torch.equal(augmented["index"], batch["index"])


def test_device_augmentation_draws_depend_on_the_seed_the_rank_and_the_epoch(synthetic_root: Path) -> None:
    batch = next(iter(_synthetic(synthetic_root, num_workers=0, augment_on_device=True).train_dataloader()))

    def sources(seed: int, rank: int = 0, epoch: int = 0) -> torch.Tensor:
        datamodule = _synthetic(synthetic_root, num_workers=0, augment_on_device=True)
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=epoch)
        torch.manual_seed(seed)  # what seed_everything sets
        return torch.cat([datamodule.augment_batch(batch)["source"] for _ in range(3)])

    assert torch.equal(sources(1), sources(1))
    assert not torch.equal(sources(1), sources(2))
    assert not torch.equal(sources(1), sources(1, rank=1))
    assert not torch.equal(sources(1), sources(1, epoch=1))


class _RecordAugmented(_RecordBatches):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict] = []
        self.validation_images: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.batches.append(batch)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx) -> None:
        self.validation_images.append(batch["image"])


def test_training_batches_are_augmented_on_the_device_and_stay_aligned(synthetic_root: Path, tmp_path: Path) -> None:
    datamodule = _synthetic(synthetic_root, num_workers=0, cache="memory")
    model = _RecordAugmented()
    _quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0).fit(
        model, datamodule=datamodule
    )
    cache = datamodule.image_cache()
    assert len(model.batches) == 3
    for batch in model.batches:
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, *SIZE)
        assert batch["source"].dtype == torch.int64 and batch["source"].shape == (4, *SIZE)
        pixels = denormalize(batch["image"])
        for row, index in enumerate(batch["index"].tolist()):
            source = batch["source"][row]
            valid = source != INVALID_SOURCE
            assert 0 < int(valid.sum()) < SIZE[0] * SIZE[1]  # crop and erasing at these draws
            original = cache[index].reshape(3, -1).float()
            # every valid pixel shows the cached pixel its source names
            assert torch.equal(pixels[row][:, valid], original[:, source[valid]])
    # validation batches pass unchanged: the evaluation transform of the query images
    expected = torch.stack([datamodule.eval_transform(read_image(r.path)) for r in datamodule.eval_records[:3]])
    assert torch.equal(model.validation_images[0][:3], expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_batch_on_the_gpu_is_augmented_there_and_shows_the_cached_pixels(synthetic_root: Path) -> None:
    datamodule = _synthetic(synthetic_root, num_workers=0, cache="memory")
    batch = next(iter(datamodule.train_dataloader()))
    augmented = datamodule.augment_batch({key: value.cuda() for key, value in batch.items()})
    assert augmented["image"].is_cuda and augmented["source"].is_cuda
    pixels, cache = denormalize(augmented["image"].cpu()), datamodule.image_cache()
    for row, index in enumerate(batch["index"].tolist()):
        source = augmented["source"][row].cpu()
        valid = source != INVALID_SOURCE
        assert torch.equal(pixels[row][:, valid], cache[index].reshape(3, -1).float()[:, source[valid]])


def test_an_unknown_cache_is_refused(synthetic_root: Path) -> None:
    with pytest.raises(ValueError, match="cache must be None, 'memory' or 'disk', got 'ram'"):
        _synthetic(synthetic_root, cache="ram")


def test_the_cli_takes_the_cache_options(capsys) -> None:
    args = ["fit", "--config", "synthetic", "--data.init_args.cache", "disk", "--data.init_args.cache_dir", "/c"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert (data["cache"], data["cache_dir"], data["augment_on_device"]) == ("disk", "/c", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "synthetic", "--data.init_args.cache", "ram", "--print_config"])
    assert exit_info.value.code != 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_ranks_share_one_disk_cache_built_once(synthetic_root: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    command = [sys.executable, str(repo / "tests/scripts/ddp_cache.py"), str(synthetic_root), str(cache_dir), str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert len(ranks[0]["builds"]) == 1 and ranks[1]["builds"] == []  # rank 0 built, rank 1 waited
    assert ranks[0]["path"] == ranks[1]["path"] == ranks[0]["builds"][0]
    cache = ImageCache.on_disk(
        [r.path for r in _synthetic(synthetic_root).train_records], SIZE, folder=cache_dir, build=False
    )
    pids = [{int(p) for batch in rank["batches"] for p in batch["pid"]} for rank in ranks]
    assert pids[0] and pids[1] and not pids[0] & pids[1]  # the PK sampler's disjoint identities
    for rank in ranks:
        assert len(rank["batches"]) == 2
        for batch in rank["batches"]:
            for row, index in enumerate(batch["index"].tolist()):
                source = batch["source"][row]
                valid = source != INVALID_SOURCE
                pixels = denormalize(batch["image"][row])
                assert torch.equal(pixels[:, valid], cache[index].reshape(3, -1).float()[:, source[valid]])
