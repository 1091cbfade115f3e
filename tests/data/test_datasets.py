from __future__ import annotations

from pathlib import Path

import pytest

from icg.data.datasets import CUHK03NP, MSMT17, DatasetLayoutError, DukeMTMCreID, Market1501
from tests.conftest import make_cuhk03np_tree, make_duke_tree, make_msmt17_tree, write_images


def _ids(records):
    return [(Path(r.path).name, r.pid, r.camid) for r in records]


def test_market_counts_relabeling_junk_and_distractors(market_tree: Path) -> None:
    dataset = Market1501(market_tree)
    # train ids 2, 7, 11 become 0, 1, 2 in sorted order; cameras are 0-based
    assert sorted((pid, cam) for _, pid, cam in _ids(dataset.train)) == [(0, 0), (0, 1), (1, 2), (2, 0), (2, 1), (2, 5)]
    assert dataset.num_train_pids == 3
    assert sorted(pid for _, pid, _ in _ids(dataset.query)) == [1, 3]  # original ids kept
    gallery_pids = sorted(pid for _, pid, _ in _ids(dataset.gallery))
    assert gallery_pids == [0, 0, 1, 3]  # distractors stay, junk (-1) and non-images are dropped


def test_market_root_may_be_the_parent_folder(market_tree: Path) -> None:
    assert Market1501(market_tree.parent).root == market_tree


def test_missing_root_shows_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="bounding_box_train") as error:
        Market1501(tmp_path / "nowhere")
    assert "does not exist" in str(error.value)
    with pytest.raises(DatasetLayoutError, match="expected layout"):
        Market1501(tmp_path)


def test_missing_split_folder_is_named(market_tree: Path) -> None:
    (market_tree / "query").rename(market_tree / "queries")
    with pytest.raises(DatasetLayoutError, match="lacks the folder\\(s\\) query"):
        Market1501(market_tree)


def test_badly_named_file_is_named(market_tree: Path) -> None:
    write_images(market_tree / "query", ["person_12.jpg"])
    with pytest.raises(DatasetLayoutError, match="person_12.jpg"):
        Market1501(market_tree)


def test_empty_split_says_so(market_tree: Path) -> None:
    for path in (market_tree / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetLayoutError, match="query split .* is empty"):
        Market1501(market_tree)


def test_duke_eight_cameras(tmp_path: Path) -> None:
    make_duke_tree(tmp_path)
    dataset = DukeMTMCreID(tmp_path)
    assert sorted((pid, cam) for _, pid, cam in _ids(dataset.train)) == [(0, 1), (0, 7), (1, 0)]
    assert _ids(dataset.query) == [("0002_c7_f0046985.jpg", 2, 6)]


@pytest.mark.parametrize("variant", ["detected", "labeled"])
def test_cuhk03np_variants(tmp_path: Path, variant: str) -> None:
    make_cuhk03np_tree(tmp_path)
    dataset = CUHK03NP(tmp_path, variant=variant)
    assert dataset.num_train_pids == (2 if variant == "detected" else 3)
    assert all(f"/{variant}/" in r.path for r in dataset.train + dataset.query + dataset.gallery)
    with pytest.raises(ValueError, match="variant"):
        CUHK03NP(tmp_path, variant="both")


@pytest.mark.parametrize(
    ("folder", "train_dir", "test_dir"),
    [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")],
)
def test_msmt17_v1_and_v2(tmp_path: Path, folder: str, train_dir: str, test_dir: str) -> None:
    make_msmt17_tree(tmp_path / folder, train_dir, test_dir)
    dataset = MSMT17(tmp_path)
    # train + val, ids 0, 2, 4 relabelled to 0, 1, 2; camera = third field - 1
    assert sorted((pid, cam) for _, pid, cam in _ids(dataset.train)) == [(0, 0), (0, 4), (1, 2), (2, 14)]
    assert all(f"/{train_dir}/" in r.path for r in dataset.train)
    assert [(pid, cam) for _, pid, cam in _ids(dataset.query)] == [(0, 1)]
    assert sorted((pid, cam) for _, pid, cam in _ids(dataset.gallery)) == [(0, 6), (1, 11)]


def test_msmt17_bad_line_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    make_msmt17_tree(root)
    with (root / "list_gallery.txt").open("a") as handle:
        handle.write("0001/broken.jpg\n")
    with pytest.raises(DatasetLayoutError, match="list_gallery.txt, line 3"):
        MSMT17(root)


def test_msmt17_missing_list_is_named(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    make_msmt17_tree(root)
    (root / "list_val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="list_val.txt"):
        MSMT17(root)
