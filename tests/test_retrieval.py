from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.retrieval import (
    NormalizedFeatures,
    ReIDFeatures,
    icg_distance,
    icg_distance_candidates,
    icg_distance_rows,
    k_reciprocal_rerank,
)


# ------------------------------------------------------------------------------------------- references
def reference_icg_distance(query: dict, gallery: dict) -> np.ndarray:
    """Eq. 13-15 pair by pair and part by part, in float64."""

    def cos_dist(a: np.ndarray, b: np.ndarray) -> float:
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return 1.0
        return 1.0 - float(a @ b) / (na * nb)

    fixed = [name for name in ("global_feat", "foreground", "graph") if query.get(name) is not None]
    nq, ng = len(query["global_feat"]), len(gallery["global_feat"])
    out = np.zeros((nq, ng))
    for i in range(nq):
        for j in range(ng):
            total = sum(cos_dist(query[n][i], gallery[n][j]) for n in fixed)
            terms = len(fixed)
            if query.get("parts") is not None:
                for k in range(query["parts"].shape[1]):
                    if query["visibility"][i, k] and gallery["visibility"][j, k]:
                        total += cos_dist(query["parts"][i, k], gallery["parts"][j, k])
                        terms += 1
            out[i, j] = total / terms
    return out


def reference_rerank(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al.'s k-reciprocal re-ranking written out directly, with loops and Python sets."""
    nq, ng = q_g.shape
    n = nq + ng
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    dist = (dist / dist.max(axis=0)).T  # each column over its maximum, then row i = image i
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> list[int]:
        return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        near = reciprocal(i, k1)
        expanded = set(near)
        for j in near:
            near_j = reciprocal(j, int(round(k1 / 2)))
            if len(set(near_j) & set(near)) > 2 / 3 * len(near_j):
                expanded |= set(near_j)
        members = sorted(expanded)
        weights = np.exp(-dist[i, members])
        v[i, members] = weights / weights.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    out = np.zeros((nq, ng))
    for i in range(nq):
        for j in range(ng):
            shared = np.minimum(v[i], v[nq + j]).sum()
            jaccard = 1.0 - shared / (2.0 - shared)
            out[i, j] = (1 - lam) * jaccard + lam * dist[i, nq + j]
    return out


# ------------------------------------------------------------------------------------------- fixtures
def random_features(n: int, k: int, generator: torch.Generator, dtype=torch.float32, **drop: bool) -> ReIDFeatures:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    parts = None if drop.get("parts") else rand(n, k, 5)
    visibility = None if parts is None else torch.rand(n, k, generator=generator) < 0.6
    return ReIDFeatures(
        global_feat=rand(n, 6),
        foreground=None if drop.get("foreground") else rand(n, 6),
        parts=parts,
        graph=None if drop.get("graph") else rand(n, 4),
        visibility=visibility,
    )


def as_numpy(features: ReIDFeatures) -> dict:
    return {
        name: value.double().numpy() if value.is_floating_point() else value.numpy() for name, value in features.items()
    }


# --------------------------------------------------------------------------------------------- ReIDFeatures
def test_features_validation_names_the_problem():
    g = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="foreground has 3 rows"):
        ReIDFeatures(global_feat=g, foreground=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="parts is given without visibility"):
        ReIDFeatures(global_feat=g, parts=torch.zeros(4, 2, 8))
    with pytest.raises(ValueError, match="visibility is given without parts"):
        ReIDFeatures(global_feat=g, visibility=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="visibility has 3 parts but parts has 2"):
        ReIDFeatures(global_feat=g, parts=torch.zeros(4, 2, 8), visibility=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="visibility must be bool"):
        ReIDFeatures(global_feat=g, parts=torch.zeros(4, 2, 8), visibility=torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"parts must be \[B, K, C\]"):
        ReIDFeatures(global_feat=g, parts=torch.zeros(4, 8), visibility=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"global_feat must be \[B, C\]"):
        ReIDFeatures(global_feat=torch.zeros(4))
    with pytest.raises(TypeError, match="graph must be floating point"):
        ReIDFeatures(global_feat=g, graph=torch.zeros(4, 8, dtype=torch.long))


def test_features_indexing_cat_and_to():
    gen = torch.Generator().manual_seed(0)
    a, b = random_features(5, 3, gen), random_features(2, 3, gen)
    both = ReIDFeatures.cat([a, b])
    assert len(both) == 7 and both.num_parts == 3
    torch.testing.assert_close(both[5:].parts, b.parts)
    torch.testing.assert_close(both[torch.tensor([6, 0])].visibility, torch.stack([b.visibility[1], a.visibility[0]]))
    one = both[-1]
    assert len(one) == 1 and torch.equal(one.global_feat[0], b.global_feat[1])
    mask = torch.tensor([True, False, True, False, False, True, False])
    assert len(both[mask]) == 3
    half = both.to(dtype=torch.bfloat16)
    assert half.graph.dtype == torch.bfloat16 and half.visibility.dtype == torch.bool
    with pytest.raises(ValueError, match="record 1 has components"):
        ReIDFeatures.cat([a, ReIDFeatures(global_feat=torch.zeros(2, 6))])


# ---------------------------------------------------------------------------------------------- distance
@pytest.mark.parametrize(
    "drop",
    [{}, {"foreground": True, "graph": True}, {"parts": True}, {"foreground": True, "parts": True, "graph": True}],
    ids=["icg", "global+parts", "no-parts", "bot"],
)
def test_icg_distance_matches_pairwise_loop(drop):
    gen = torch.Generator().manual_seed(1)
    query, gallery = random_features(7, 4, gen, **drop), random_features(9, 4, gen, **drop)
    if query.parts is not None:
        # Parts invisible in one image, in both, and a pair with no common visible part.
        query.visibility[0] = torch.tensor([True, True, False, False])
        gallery.visibility[0] = torch.tensor([False, False, True, True])
        gallery.visibility[1] = torch.tensor([False, False, False, False])
        query.visibility[1] = torch.tensor([True, True, True, True])
    expected = reference_icg_distance(as_numpy(query), as_numpy(gallery))
    got = icg_distance(query, gallery)
    assert got.dtype == torch.float32 and got.shape == (7, 9)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    if query.parts is not None:  # pairs without a common visible part: the mean of the fixed terms alone
        q, g = as_numpy(query), as_numpy(gallery)
        fixed = [n for n in ("global_feat", "foreground", "graph") if n in q]
        for j in (0, 1):
            cos = [q[n][0] @ g[n][j] / np.linalg.norm(q[n][0]) / np.linalg.norm(g[n][j]) for n in fixed]
            np.testing.assert_allclose(got[0, j].item(), np.mean([1 - c for c in cos]), atol=1e-5)


def test_plain_tensor_is_cosine_distance_and_zero_vectors_are_orthogonal():
    q = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    g = torch.tensor([[4.0, -3.0], [6.0, 8.0], [-1.0, 0.0]])
    expected = [[1.0, 0.0, 1.6], [1.0, 1.0, 1.0]]  # by hand: 1 - cos
    np.testing.assert_allclose(icg_distance(q, g).numpy(), expected, atol=1e-6)


def test_bf16_features_give_float32_distances():
    gen = torch.Generator().manual_seed(2)
    query, gallery = random_features(6, 3, gen, dtype=torch.bfloat16), random_features(8, 3, gen, dtype=torch.bfloat16)
    got = icg_distance(query, gallery)
    assert got.dtype == torch.float32
    # The reference sees exactly the bf16 values, so only float32 rounding separates them.
    np.testing.assert_allclose(got.numpy(), reference_icg_distance(as_numpy(query), as_numpy(gallery)), atol=1e-5)


def test_chunked_and_row_source_equal_whole():
    gen = torch.Generator().manual_seed(3)
    query, gallery = random_features(11, 4, gen), random_features(13, 4, gen)
    whole = icg_distance(query, gallery)
    torch.testing.assert_close(icg_distance(query, gallery, chunk_size=4), whole)
    rows = icg_distance_rows(query, gallery)
    torch.testing.assert_close(torch.cat([rows(0, 5), rows(5, 11)]), whole)
    with pytest.raises(IndexError, match="outside the 11 query rows"):
        rows(5, 12)


def test_distance_rejects_mismatched_inputs():
    gen = torch.Generator().manual_seed(4)
    query = random_features(3, 4, gen)
    with pytest.raises(ValueError, match="query has parts features but gallery does not"):
        icg_distance(query, random_features(3, 4, gen, parts=True))
    with pytest.raises(ValueError, match="parts features differ in shape"):
        icg_distance(query, random_features(3, 5, gen))
    with pytest.raises(ValueError, match="query must be a floating"):
        icg_distance(torch.zeros(3, 2, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        icg_distance(query, query, chunk_size=0)


@pytest.mark.parametrize(
    "drop", [{}, {"parts": True}, {"foreground": True, "parts": True, "graph": True}], ids=["icg", "no-parts", "bot"]
)
def test_distance_to_candidates_is_the_matching_entries_of_the_matrix(drop):
    gen = torch.Generator().manual_seed(6)
    query, gallery = random_features(9, 4, gen, **drop), random_features(20, 4, gen, **drop)
    candidates = torch.randint(0, 20, (9, 6), generator=gen)
    expected = reference_icg_distance(as_numpy(query), as_numpy(gallery))
    expected = np.take_along_axis(expected, candidates.numpy(), axis=1)
    for chunk_size in (1, 4, 64):
        got = icg_distance_candidates(query, gallery, candidates, chunk_size=chunk_size)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # a gallery normalised once (as an index stores it) gives the same distances, and so does the dense matrix
    prepared = NormalizedFeatures.of(gallery)
    np.testing.assert_allclose(icg_distance_candidates(query, prepared, candidates).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        icg_distance(NormalizedFeatures.of(query), prepared).numpy(),
        reference_icg_distance(as_numpy(query), as_numpy(gallery)),
        atol=1e-5,
    )


def test_normalized_features_lay_the_terms_of_eq15_side_by_side():
    gen = torch.Generator().manual_seed(7)
    features = random_features(5, 3, gen)
    normalized = NormalizedFeatures.of(features)
    assert normalized.layout == (("global_feat", (6,)), ("foreground", (6,)), ("graph", (4,)), ("parts", (3, 5)))
    assert normalized.vectors.shape == (5, 6 + 6 + 4 + 15) and normalized.num_fixed == 3
    visible = features.visibility.float()
    parts = torch.nn.functional.normalize(features.parts, dim=2) * visible[:, :, None]
    torch.testing.assert_close(normalized.vectors[:, 16:].view(5, 3, 5), parts)
    torch.testing.assert_close(normalized.vectors[:, :6], torch.nn.functional.normalize(features.global_feat, dim=1))
    torch.testing.assert_close(normalized.visibility, visible)
    rows = torch.tensor([4, 0])
    torch.testing.assert_close(normalized.take(rows).vectors, normalized.vectors[rows])


def test_distance_to_candidates_checks_its_inputs():
    gen = torch.Generator().manual_seed(8)
    query, gallery = random_features(3, 4, gen), random_features(5, 4, gen)
    with pytest.raises(IndexError, match=r"gallery rows in \[0, 5\)"):
        icg_distance_candidates(query, gallery, torch.tensor([[0], [5], [1]]))
    with pytest.raises(ValueError, match=r"candidates must be int64 \[Nq=3, M\]"):
        icg_distance_candidates(query, gallery, torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="query has parts features but gallery does not"):
        icg_distance_candidates(query, random_features(5, 4, gen, parts=True), torch.zeros(3, 1, dtype=torch.int64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_icg_distance_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    query = random_features(20, 6, gen, dtype=torch.bfloat16)
    gallery = random_features(30, 6, gen, dtype=torch.bfloat16)
    got = icg_distance(query.to("cuda"), gallery.to("cuda"), chunk_size=7)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), reference_icg_distance(as_numpy(query), as_numpy(gallery)), atol=1e-4)


# -------------------------------------------------------------------------------------------- re-ranking
def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize(
    ("k1", "k2", "chunk_size", "pair_budget"), [(20, 6, 256, 1 << 22), (7, 1, 6, 50), (5, 3, 4, 1)]
)
def test_rerank_matches_published_algorithm(k1, k2, chunk_size, pair_budget):
    rng = np.random.default_rng(k1)
    centers = rng.normal(size=(6, 8))
    points = centers[rng.integers(0, 6, size=55)] + 0.7 * rng.normal(size=(55, 8))
    q, g = points[:15], points[15:]
    q_g, q_q, g_g = euclidean(q, g), euclidean(q, q), euclidean(g, g)
    expected = reference_rerank(q_g, q_q, g_g, k1, k2, 0.3)
    got = k_reciprocal_rerank(
        torch.from_numpy(q_g).float(),
        torch.from_numpy(q_q).float(),
        torch.from_numpy(g_g).float(),
        k1=k1,
        k2=k2,
        lambda_value=0.3,
        chunk_size=chunk_size,
        pair_budget=pair_budget,
    )
    assert got.shape == (15, 40) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)


def test_rerank_works_with_icg_distance_and_checks_inputs():
    gen = torch.Generator().manual_seed(6)
    query, gallery = random_features(5, 3, gen), random_features(12, 3, gen)
    q_g, q_q, g_g = icg_distance(query, gallery), icg_distance(query, query), icg_distance(gallery, gallery)
    expected = reference_rerank(q_g.double().numpy(), q_q.double().numpy(), g_g.double().numpy(), 20, 6, 0.3)
    np.testing.assert_allclose(k_reciprocal_rerank(q_g, q_q, g_g).numpy(), expected, atol=2e-5)
    with pytest.raises(ValueError, match=r"q_g must have shape \(5, 12\)"):
        k_reciprocal_rerank(q_g.T, q_q, g_g)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="q_q contains NaN"):
        k_reciprocal_rerank(q_g, torch.full_like(q_q, float("nan")), g_g)
