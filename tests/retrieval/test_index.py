"""The gallery index returns the exact ICG ranking of the candidates FAISS finds, and its files fit together."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.retrieval import GalleryIndex, NormalizedFeatures, icg_distance
from icg.retrieval.index import metadata_path
from tests.test_retrieval import random_features

pytest.importorskip("faiss")


def exact_ranking(query, gallery, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the dense ICG distance, sorted stably (ties by gallery row)."""
    distances = icg_distance(query, gallery)
    order = distances.argsort(dim=1, stable=True)[:, :k]
    return distances.gather(1, order), order


@pytest.mark.parametrize("key", ["global", "concat"])
@pytest.mark.parametrize("drop", [{}, {"foreground": True, "parts": True, "graph": True}], ids=["icg", "bot"])
def test_with_every_gallery_image_a_candidate_the_search_is_exact(key: str, drop: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    query, gallery = random_features(7, 4, gen, **drop), random_features(60, 4, gen, **drop)
    result = GalleryIndex.build(gallery, key=key).search(query, top_k=10, candidates=60)
    distances, order = exact_ranking(query, gallery, 10)
    assert torch.equal(result.indices, order)
    torch.testing.assert_close(result.distances, distances)


@pytest.mark.parametrize("key", ["global", "concat"])
def test_few_candidates_are_those_of_the_searched_vector_ranked_by_eq15(key: str) -> None:
    gen = torch.Generator().manual_seed(1)
    query, gallery = random_features(5, 4, gen), random_features(80, 4, gen)
    result = GalleryIndex.build(gallery, key=key).search(query, top_k=4, candidates=12)
    # the reference, written out: the 12 best inner products of the searched vectors, then eq. 15 among them
    normalized_query, normalized_gallery = NormalizedFeatures.of(query), NormalizedFeatures.of(gallery)
    if key == "global":
        q, g = normalized_query.vectors[:, :6], normalized_gallery.vectors[:, :6]
    else:
        q = torch.nn.functional.normalize(normalized_query.vectors, dim=1)
        g = torch.nn.functional.normalize(normalized_gallery.vectors, dim=1)
    proposed = (q @ g.T).argsort(dim=1, descending=True)[:, :12]
    distances = icg_distance(query, gallery)
    for row in range(5):
        rows = proposed[row].sort().values
        order = distances[row, rows].argsort(stable=True)[:4]
        assert result.indices[row].tolist() == rows[order].tolist()


def test_an_ivf_index_that_finds_fewer_candidates_pads_the_ranking() -> None:
    gen = torch.Generator().manual_seed(2)
    gallery = random_features(64, 4, gen)
    index = GalleryIndex.build(gallery, nlist=8, nprobe=1)
    result = index.search(gallery[:6], top_k=40, candidates=40)
    assert (result.indices == -1).any()  # one of 8 cells holds fewer than 40 images
    found = result.indices >= 0
    assert torch.equal(result.distances.isinf(), ~found)
    assert bool((found[:, :-1] >= found[:, 1:]).all())  # the padding comes last
    assert torch.equal(result.indices[:, 0], torch.arange(6))  # each image finds itself first
    exact = icg_distance(gallery[:6], gallery)
    torch.testing.assert_close(result.distances[found], exact.gather(1, result.indices.clamp_min(0))[found])


def test_saved_and_loaded_it_gives_the_same_results(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    query, gallery = random_features(4, 4, gen), random_features(30, 4, gen)
    paths = [f"g/{i:03d}.jpg" for i in range(30)]
    index = GalleryIndex.build(gallery, paths, key="concat", extra={"model": "best.ckpt"})
    path = index.save(tmp_path / "gallery.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.faiss", "gallery.meta.pt"]
    loaded = GalleryIndex.load(path)
    assert loaded.paths == paths and loaded.key == "concat" and loaded.extra == {"model": "best.ckpt"}
    assert loaded.features.layout == index.features.layout
    before, after = index.search(query, top_k=5), loaded.search(query, top_k=5)
    assert torch.equal(before.indices, after.indices) and torch.equal(before.distances, after.distances)


def test_files_that_do_not_belong_together_are_refused(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    first = GalleryIndex.build(random_features(20, 4, gen)).save(tmp_path / "a" / "gallery.faiss")
    second = GalleryIndex.build(random_features(20, 4, gen)).save(tmp_path / "b" / "gallery.faiss")
    shutil.copy(second, first)  # the index of another gallery beside the first gallery's metadata
    with pytest.raises(ValueError, match=r"gallery\.faiss and .*gallery\.meta\.pt were not written together"):
        GalleryIndex.load(first)
    metadata_path(second).unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata of gallery\.faiss .*gallery\.meta\.pt does not exist"):
        GalleryIndex.load(second)
    with pytest.raises(FileNotFoundError, match=r"gallery index .*missing\.faiss does not exist"):
        GalleryIndex.load(tmp_path / "missing.faiss")
    with pytest.raises(ValueError, match="ends in .faiss"):
        GalleryIndex.build(random_features(5, 4, gen)).save(tmp_path / "gallery.index")
    torch.save({"format": "something else"}, tmp_path / "other.meta.pt")
    np.zeros(4, dtype=np.uint8).tofile(tmp_path / "other.faiss")
    with pytest.raises(ValueError, match="is not the metadata of a gallery index"):
        GalleryIndex.load(tmp_path / "other.faiss")
