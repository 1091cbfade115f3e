"""Tests of the synthetic pedestrian generator: plan, layout, masks, determinism, atomic and idempotent writes."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import icg.data.synthetic.write as synthetic_write
from icg.data.datasets import Market1501
from icg.data.synthetic import (
    SPLIT_FOLDERS,
    PartLabel,
    SyntheticSpec,
    generate_synthetic,
    plan_images,
    plan_synthetic,
    render_synthetic,
)

# Tiny generations: a few ids, 64x32 images (well under a second each).
TINY = dict(num_train_ids=4, num_test_ids=3, image_size=(64, 32), train_images_per_id=(3, 6))
TINY_PLAN = {k: v for k, v in TINY.items() if k != "image_size"}
MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d+)_(\d{6})_(\d{2})\.jpg$")


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "market", **TINY)


# ---------------------------------------------------------------------------------------------------------------
# Plan


def test_plan_follows_the_market_protocol() -> None:
    plan = plan_synthetic(100, 100, seed=0)
    assert {img.split for img in plan} == {"train", "query", "gallery"}
    names = [img.filename for img in plan]
    assert len(set(names)) == len(names)
    for img in plan:
        match = MARKET_NAME.match(img.filename)
        assert match is not None, img.filename
        assert int(match.group(1)) == img.pid and int(match.group(2)) == img.camera
        assert 1 <= img.camera <= 6

    train = [img for img in plan if img.split == "train"]
    query = [img for img in plan if img.split == "query"]
    gallery = [img for img in plan if img.split == "gallery"]
    train_pids = {img.pid for img in train}
    test_pids = {img.pid for img in query + gallery} - {0, -1}
    assert len(train_pids) == 100 and len(test_pids) == 100
    assert not train_pids & test_pids
    assert 0 not in train_pids | {img.pid for img in query} and -1 not in train_pids | {img.pid for img in query}

    per_id = Counter(img.pid for img in train)
    assert sum(count < 4 for count in per_id.values()) == 10  # few_images_fraction=0.1
    assert max(per_id.values()) <= 16 and len(set(per_id.values())) > 5

    cameras = defaultdict(set)
    for img in query + gallery:
        cameras[img.pid].add(img.camera)
    assert all(len(cameras[pid]) >= 2 for pid in test_pids)
    query_slots = Counter((img.pid, img.camera) for img in query)
    assert set(query_slots.values()) == {1}
    assert all(sum(pid == q_pid for q_pid, _ in query_slots) == 2 for pid in test_pids)
    for q in query:  # brute force: a match of the same id from another camera
        assert any(g.pid == q.pid and g.camera != q.camera for g in gallery), q.filename

    identity_gallery = sum(img.pid > 0 for img in gallery)
    assert sum(img.pid == 0 for img in gallery) == round(0.1 * identity_gallery)
    assert sum(img.pid == -1 for img in gallery) == round(0.05 * identity_gallery)
    # Distractors are different people: no two share an appearance.
    distractors = [img.appearance for img in gallery if img.pid == 0]
    assert len(set(distractors)) == len(distractors)


def test_plan_gives_each_identity_one_appearance_and_each_camera_one_scene() -> None:
    plan = plan_synthetic(20, 20, seed=1)
    by_pid = defaultdict(set)
    by_camera = defaultdict(set)
    for img in plan:
        if img.pid > 0:
            by_pid[img.pid].add(img.appearance)
        by_camera[img.camera].add(img.scene)
    assert all(len(appearances) == 1 for appearances in by_pid.values())
    assert all(len(scenes) == 1 for scenes in by_camera.values())
    assert len({next(iter(s)) for s in by_camera.values()}) == len(by_camera)


def test_color_swapped_pairs_differ_only_in_where_the_colors_are() -> None:
    plan = plan_synthetic(10, 1, seed=2, swapped_pair_fraction=1.0)
    appearances = list({img.pid: img.appearance for img in plan if img.split == "train"}.values())
    pairs = [
        (a, b)
        for i, a in enumerate(appearances)
        for b in appearances[i + 1 :]
        if a.shirt == b.trousers and a.trousers == b.shirt and replace(a, shirt=b.shirt, trousers=b.trousers) == b
    ]
    assert len(pairs) == 5


def test_the_spec_holds_every_argument_once() -> None:
    """The keyword functions are the spec's functions; pairs given as lists describe the same generation."""
    spec = SyntheticSpec(**TINY)
    assert plan_synthetic(**TINY) == plan_images(spec)
    assert SyntheticSpec(**{**TINY, "image_size": [64, 32], "train_images_per_id": [3, 6]}) == spec
    with pytest.raises(ValueError, match="jpeg_quality"):
        SyntheticSpec(jpeg_quality=0)


def test_plan_is_deterministic_and_depends_on_the_seed() -> None:
    assert plan_synthetic(5, 5, seed=3) == plan_synthetic(5, 5, seed=3)
    names = [[img.filename for img in plan_synthetic(5, 5, seed=seed)] for seed in (3, 4)]
    assert names[0] != names[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_train_ids=0), "num_train_ids"),
        (dict(num_train_ids=9000, num_test_ids=1000), "9999"),
        (dict(num_cameras=1), "num_cameras"),
        (dict(train_images_per_id=(5, 2)), "train_images_per_id"),
        (dict(cameras_per_id=(1, 3)), "cameras_per_id"),
        (dict(num_cameras=3, cameras_per_id=(4, 5)), "cameras_per_id"),
        (dict(gallery_images_per_camera=(0, 2)), "gallery_images_per_camera"),
        (dict(query_cameras=0), "query_cameras"),
        (dict(occlusion_prob=1.5), "occlusion_prob"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_synthetic(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def test_render_returns_image_and_mask_of_the_requested_size() -> None:
    img = plan_synthetic(2, 2, seed=0)[0]
    rgb, mask = render_synthetic(img, (96, 40))
    assert rgb.shape == (96, 40, 3) and rgb.dtype == np.uint8
    assert mask.shape == (96, 40) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {int(label) for label in PartLabel}
    with pytest.raises(ValueError, match="image_size"):
        render_synthetic(img, (16, 8))


def test_masks_align_with_the_planned_geometry() -> None:
    height, width = 128, 64
    plan = [
        img
        for img in plan_synthetic(30, 5, seed=5)
        if img.split == "train" and img.occluder == "none" and img.top >= 0 and img.top + img.height <= 1
    ]
    assert len(plan) > 50
    for img in plan[:60]:
        _, mask = render_synthetic(img, (height, width))
        rows = np.nonzero(mask > 0)[0]
        # The person spans the planned rows: head at the top, shoes at the bottom (rounding and line caps: 2 px).
        assert abs(rows.min() - img.top * height) <= 2
        assert abs(rows.max() - (img.top + 0.99 * img.height) * height) <= 2
        order = (PartLabel.HEAD, PartLabel.UPPER_BODY, PartLabel.LEGS, PartLabel.SHOES)
        mean_rows = [np.nonzero(mask == label)[0].mean() for label in order]
        assert mean_rows == sorted(mean_rows), img.filename
        shoe_rows = np.nonzero(mask == PartLabel.SHOES)[0]
        assert shoe_rows.min() >= img.top * height + 0.9 * img.height * height - 1
        columns = np.nonzero(mask > 0)[1]
        assert abs(np.median(columns) - img.center_x * width) <= 0.06 * img.height * height


def test_mask_labels_cover_the_pixels_of_that_color() -> None:
    """Median colour under each label is the planned garment colour after the camera's cast."""
    plan = [
        img
        for img in plan_synthetic(60, 5, seed=6)
        if img.split == "train"
        and img.occluder == "none"
        and img.view in ("front", "back")
        and img.appearance.shirt_pattern == "plain"
        and img.appearance.bag == "none"
        and img.appearance.long_sleeves
        and img.appearance.lower == "trousers"
    ]
    assert len(plan) >= 10
    for img in plan[:20]:
        rgb, mask = render_synthetic(img, (128, 64))
        cast = np.asarray(img.scene.gain) * img.brightness
        # Side shading darkens garments by up to 15% where most of their pixels are.
        garments = ((PartLabel.UPPER_BODY, img.appearance.shirt), (PartLabel.LEGS, img.appearance.trousers))
        for label, color in garments:
            measured = np.median(rgb[mask == label].astype(np.float64), axis=0)
            expected = np.clip(np.asarray(color) * cast * 0.95, 0, 255)
            assert np.abs(measured - expected).max() <= 25, (img.filename, label, measured, expected)


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("shirt", PartLabel.UPPER_BODY),
        ("trousers", PartLabel.LEGS),
        ("shoes", PartLabel.SHOES),
        ("bag_color", PartLabel.BAG),
    ],
)
def test_mask_marks_exactly_the_pixels_a_garment_colors(field: str, label: PartLabel) -> None:
    """Re-colouring one garment changes exactly the pixels its label covers (same seed, so same backdrop and
    noise; no blur). A mask misaligned by a single pixel fails this."""
    plan = [
        img
        for img in plan_synthetic(40, 5, seed=8, bag_prob=0.8)
        if img.split == "train"
        and img.occluder == "none"
        and img.appearance.bag != "none"
        and img.appearance.lower == "trousers"
        and img.appearance.shirt_pattern == "plain"
        and img.appearance.long_sleeves
    ]
    assert len(plan) >= 8
    for img in plan[:8]:
        img = replace(img, blur=0.0)
        red = replace(img, appearance=replace(img.appearance, **{field: (220, 20, 20)}))
        blue = replace(img, appearance=replace(img.appearance, **{field: (20, 20, 220)}))
        rgb_red, mask = render_synthetic(red, (128, 64))
        rgb_blue, mask_blue = render_synthetic(blue, (128, 64))
        assert np.array_equal(mask, mask_blue)
        changed = np.any(rgb_red != rgb_blue, axis=-1)
        if label == PartLabel.UPPER_BODY:
            # Hands are skin-coloured but belong to the upper body: find them by re-colouring the skin.
            pale_skin = replace(red, appearance=replace(red.appearance, skin=(250, 250, 250)))
            pale = render_synthetic(pale_skin, (128, 64))[0]
            changed |= np.any(rgb_red != pale, axis=-1) & (mask == label)
        labeled = mask == label
        assert labeled.any(), img.filename
        assert np.array_equal(changed, labeled), img.filename


@pytest.mark.parametrize("occluder", ["car", "pole", "passerby"])
def test_occluded_pixels_are_background(occluder: str) -> None:
    img = next(img for img in plan_synthetic(20, 20, seed=7) if img.occluder == occluder and img.pid > 0)
    _, occluded = render_synthetic(img, (128, 64))
    _, clear = render_synthetic(replace(img, occluder="none"), (128, 64))
    visible = occluded > 0
    assert np.array_equal(occluded[visible], clear[visible])
    assert np.count_nonzero(visible) < np.count_nonzero(clear > 0)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def test_layout_is_read_by_market1501(tiny_root: Path) -> None:
    plan = plan_synthetic(**TINY_PLAN)
    on_disk = {
        str(path.relative_to(tiny_root)) for folder in SPLIT_FOLDERS.values() for path in (tiny_root / folder).iterdir()
    }
    assert on_disk == {img.relpath for img in plan}

    dataset = Market1501(tiny_root)
    train = [img for img in plan if img.split == "train"]
    assert len(dataset.train) == len(train)
    assert {r.pid for r in dataset.train} == set(range(4))  # relabelled
    assert dataset.num_train_pids == len({img.pid for img in train})
    planned = {img.filename: img for img in plan}
    for record in dataset.query + dataset.gallery:
        img = planned[Path(record.path).name]
        assert (record.pid, record.camid) == (img.pid, img.camera - 1)
    assert len(dataset.query) == sum(img.split == "query" for img in plan)
    assert len(dataset.gallery) == sum(img.split == "gallery" and img.pid != -1 for img in plan)
    assert any(r.pid == 0 for r in dataset.gallery)  # distractors kept
    assert any(Path(name).name.startswith("-1_c") for name in on_disk)  # junk written, dropped by the reader

    for img in plan:
        mask = Image.open(tiny_root / img.mask_relpath)
        assert mask.mode == "L" and mask.size == (32, 64)
        assert Image.open(tiny_root / img.relpath).size == (32, 64)
    metadata = json.loads((tiny_root / "synthetic.json").read_text())
    assert metadata["arguments"]["seed"] == 0 and metadata["arguments"]["image_size"] == [64, 32]


def test_written_masks_order_parts_top_to_bottom(tiny_root: Path) -> None:
    checked = 0
    for img in plan_synthetic(**TINY_PLAN):
        mask = np.asarray(Image.open(tiny_root / img.mask_relpath))
        rows = {label: np.nonzero(mask == label)[0] for label in (1, 2, 3, 4)}
        if img.pid <= 0 or any(r.size == 0 for r in rows.values()):
            continue
        means = [rows[label].mean() for label in (1, 2, 3, 4)]
        assert means == sorted(means), img.filename
        person_rows = np.nonzero(mask > 0)[0]
        assert rows[4].min() >= np.percentile(person_rows, 75)
        checked += 1
    assert checked > 20


def test_generation_is_byte_identical_for_a_seed(tmp_path: Path, tiny_root: Path) -> None:
    again = generate_synthetic(tmp_path / "again", **TINY)
    assert _files(again) == _files(tiny_root)
    other = _files(generate_synthetic(tmp_path / "other", **{**TINY, "seed": 1}))
    assert other != _files(tiny_root)
    assert not set(other) & {name for name in _files(tiny_root) if name.endswith(".jpg")}


def test_complete_generation_is_reused_without_drawing(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {path: path.stat().st_mtime_ns for path in tiny_root.rglob("*")}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("drew an image although the generation exists")

    monkeypatch.setattr(synthetic_write, "render_synthetic", fail)
    assert generate_synthetic(str(tiny_root), **TINY) == tiny_root
    assert {path: path.stat().st_mtime_ns for path in tiny_root.rglob("*")} == before


def test_refuses_a_generation_with_other_arguments(tiny_root: Path) -> None:
    with pytest.raises(FileExistsError, match=r"seed: 0 there, 5 here"):
        generate_synthetic(tiny_root, **{**TINY, "seed": 5})
    with pytest.raises(FileExistsError, match="image_size"):
        generate_synthetic(tiny_root, **{**TINY, "image_size": (128, 64)})


def test_numpy_arguments_are_stored_as_numbers(tmp_path: Path) -> None:
    root = generate_synthetic(
        tmp_path / "market",
        np.int64(4),
        num_test_ids=3,
        seed=np.int64(0),
        image_size=(64, 32),
        train_images_per_id=(3, 6),
    )
    arguments = json.loads((root / "synthetic.json").read_text())["arguments"]
    assert arguments["num_train_ids"] == 4 and arguments["seed"] == 0
    assert generate_synthetic(root, **TINY) == root  # the same generation as plain ints


def test_refuses_a_foreign_or_modified_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic(foreign, **TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"

    modified = generate_synthetic(tmp_path / "modified", **TINY)
    next((modified / "query").iterdir()).unlink()
    with pytest.raises(FileExistsError, match="modified"):
        generate_synthetic(modified, **TINY)


def test_an_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    root = generate_synthetic(tmp_path / "empty", **TINY)
    assert (root / "synthetic.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_an_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = synthetic_write.render_synthetic
    calls = []

    def interrupted(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic_write, "render_synthetic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "market", **TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("other_seed", "succeeds"), [(0, True), (1, False)])
def test_a_concurrent_run_that_finishes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_seed: int, succeeds: bool
) -> None:
    """Two processes (e.g. DDP ranks) generating the same root: the later one reuses the earlier one's folder,
    or refuses it when its arguments differ; either way no staging folder is left behind."""
    root = tmp_path / "market"
    publish = synthetic_write._publish

    def other_process_first(staging: Path, target: Path, metadata: dict) -> None:
        monkeypatch.setattr(synthetic_write, "_publish", publish)
        generate_synthetic(root, **{**TINY, "seed": other_seed})
        publish(staging, target, metadata)

    monkeypatch.setattr(synthetic_write, "_publish", other_process_first)
    if succeeds:
        assert generate_synthetic(root, **TINY) == root
    else:
        with pytest.raises(FileExistsError, match="seed"):
            generate_synthetic(root, **TINY)
    assert json.loads((root / "synthetic.json").read_text())["arguments"]["seed"] == other_seed
    assert list(tmp_path.iterdir()) == [root]
