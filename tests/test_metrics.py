from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.metrics import ReIDMetric, evaluate_rank, format_rank_table
from icg.retrieval import ReIDFeatures
from tests.test_retrieval import as_numpy, random_features, reference_icg_distance, reference_rerank

REPO = Path(__file__).resolve().parents[1]


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The textbook per-query loop: stable argsort, drop same id & camera, CMC / AP / INP."""
    cmc, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        matches = (g_pids[order] == q_pids[i])[~junk]
        if not matches.any():
            continue
        hits = np.flatnonzero(matches)  # 0-based ranks of the true matches
        curve = np.zeros(max_rank)
        curve[hits[0] :] = 1.0
        cmc.append(curve)
        aps.append(np.mean([(n + 1) / (r + 1) for n, r in enumerate(hits)]))
        inps.append(len(hits) / (hits[-1] + 1))
    if not aps:
        return math.nan, math.nan, np.full(max_rank, math.nan), 0
    return float(np.mean(aps)), float(np.mean(inps)), np.mean(cmc, axis=0), len(aps)


def random_problem(seed: int, num_query: int, num_gallery: int, num_ids: int, kind: str):
    """Ids repeat across query and gallery, cameras collide (junk), some query ids are absent from the gallery
    or only present in the query's camera. ``kind``: ``random`` floats, ``ties`` (small integers), ``easy``
    (true matches mostly near the top)."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, num_ids + 3, num_query)  # ids >= num_ids never appear in the gallery
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_cams, g_cams = rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    g_cams[g_pids == 0] = 1  # id 0 lives in camera 1 only: a query of id 0 in camera 1 has no valid match
    q_cams[q_pids == 0] = 1
    if kind == "ties":
        dist = rng.integers(0, 4, (num_query, num_gallery)).astype(np.float32)
    else:
        dist = rng.random((num_query, num_gallery)).astype(np.float32)
        if kind == "easy":
            dist -= 0.9 * (q_pids[:, None] == g_pids[None, :])
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_result(result, expected, atol=1e-9):
    m_ap, m_inp, cmc, valid = expected
    assert result.num_valid_queries == valid
    assert result.mAP == pytest.approx(m_ap, abs=atol)
    assert result.mINP == pytest.approx(m_inp, abs=atol)
    np.testing.assert_allclose(result.cmc.numpy(), cmc, atol=atol)


# ---------------------------------------------------------------------------------------------- evaluate_rank
def test_hand_computed_case():
    # Query 0 (id 1, cam 0): sorted g2 g0 g1 g3 g4 g5; g0 is junk -> kept g2* g1 g3 g4* g5:
    #   matches at ranks 1 and 4: AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4.
    # Query 1 (id 2, cam 1): all ties at 0.3 keep gallery order: g1 g0 g2 g3 g5 g4; g1 is junk ->
    #   kept g0 g2 g3 g5* g4: match at rank 4: AP = 1/4, INP = 1/4.
    # Query 2 (id 3, cam 2): its only gallery image is in its camera -> skipped. Query 3 (id 9): absent.
    distmat = np.array(
        [
            [0.10, 0.25, 0.05, 0.40, 0.50, 0.60],
            [0.30, 0.00, 0.30, 0.30, 0.90, 0.30],
            [0.10, 0.20, 0.30, 0.40, 0.50, 0.60],
            [0.10, 0.20, 0.30, 0.40, 0.50, 0.60],
        ],
        dtype=np.float32,
    )
    q_pids, q_cams = np.array([1, 2, 3, 9]), np.array([0, 1, 2, 0])
    g_pids, g_cams = np.array([1, 2, 1, 3, 1, 2]), np.array([0, 1, 1, 2, 2, 0])
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    assert result.num_valid_queries == 2
    assert result.mAP == pytest.approx((0.75 + 0.25) / 2)
    assert result.mINP == pytest.approx((0.5 + 0.25) / 2)
    np.testing.assert_allclose(result.cmc.numpy(), [0.5, 0.5, 0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="rank 10 is outside the computed CMC"):
        result.to_dict()
    assert result.to_dict((1, 4)) == pytest.approx({"mAP": 0.5, "mINP": 0.375, "rank1": 0.5, "rank4": 1.0})


@pytest.mark.parametrize("kind", ["random", "ties", "easy"])
@pytest.mark.parametrize(
    ("num_query", "num_gallery", "num_ids"), [(40, 150, 12), (25, 400, 4), (3, 9, 2), (150, 2000, 100)]
)
def test_matches_reference_loop(kind, num_query, num_gallery, num_ids):
    # Few ids per image give many matches per query (binary-search counting), the large case gives big row
    # groups (compare-pass counting); "easy" puts the last match early (rows packed to their first entries).
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(
        num_query + num_gallery, num_query, num_gallery, num_ids, kind
    )
    expected = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert 0 < expected[3] < num_query  # some queries are valid, some are skipped
    for chunk_size in (1, 7, None) if num_query < 100 else (16, None):
        result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk_size=chunk_size)
        assert_result(result, expected)


def test_numpy_torch_float64_and_callable_sources_agree():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(3, 30, 90, 8, "ties")
    expected = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    as_torch = [torch.from_numpy(x) for x in (q_pids, g_pids, q_cams, g_cams)]
    assert_result(evaluate_rank(torch.from_numpy(dist), *as_torch), expected)
    assert_result(evaluate_rank(dist.astype(np.float64), q_pids, g_pids, q_cams, g_cams), expected)
    calls = []

    def rows(start: int, end: int) -> torch.Tensor:
        calls.append((start, end))
        return torch.from_numpy(dist[start:end])

    assert_result(evaluate_rank(rows, q_pids, g_pids, q_cams, g_cams, chunk_size=8), expected)
    assert calls == [(0, 8), (8, 16), (16, 24), (24, 30)]


def test_negative_distances_and_signed_zero_follow_float_order():
    # -0.0 and 0.0 tie (gallery order decides); negative values come first, in numeric order.
    dist = np.array([[0.0, -0.0, -2.0, -1.0, 1.0, -0.5]], dtype=np.float32)
    q_pids, q_cams = np.array([5]), np.array([0])
    g_pids, g_cams = np.array([5, 1, 5, 2, 5, 3]), np.array([1, 1, 1, 1, 1, 1])
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    assert_result(result, reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=6))
    # order g2 g3 g5 g0 g1 g4 -> matches at ranks 1, 4, 6
    assert result.mAP == pytest.approx((1 + 2 / 4 + 3 / 6) / 3)


def test_no_valid_query_gives_nan():
    result = evaluate_rank(np.zeros((2, 3), np.float32), [1, 2], [1, 1, 3], [0, 0], [0, 0, 0], max_rank=3)
    assert result.num_valid_queries == 0 and math.isnan(result.mAP) and torch.isnan(result.cmc).all()


def test_bad_inputs_are_named():
    dist = np.zeros((2, 3), np.float32)
    ids = dict(q_pids=[1, 2], g_pids=[1, 2, 3], q_camids=[0, 0], g_camids=[1, 1, 1])
    with pytest.raises(ValueError, match=r"distmat must be \[Nq, Ng\] = \[2, 3\]"):
        evaluate_rank(dist.T, **ids)
    with pytest.raises(ValueError, match="g_camids has 2 entries but g_pids has 3"):
        evaluate_rank(dist, **{**ids, "g_camids": [1, 1]})
    with pytest.raises(ValueError, match="q_pids must be a 1-D integer array"):
        evaluate_rank(dist, **{**ids, "q_pids": [1.0, 2.0]})
    with pytest.raises(ValueError, match="NaN in query rows 0:2"):
        evaluate_rank(np.full((2, 3), np.nan, np.float32), **ids)
    with pytest.raises(ValueError, match=r"must give a \[2, 3\] tensor"):
        evaluate_rank(lambda s, e: torch.zeros(e - s, 4), **ids)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(9, 60, 500, 10, "ties")
    expected = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    assert_result(evaluate_rank(torch.from_numpy(dist).cuda(), q_pids, g_pids, q_cams, g_cams, chunk_size=16), expected)


# ------------------------------------------------------------------------------------------------- ReIDMetric
def labeled_set(seed: int, n: int = 60, **drop: bool):
    gen = torch.Generator().manual_seed(seed)
    features = random_features(n, 4, gen, **drop)
    pids = torch.randint(0, 8, (n,), generator=gen)
    camids = torch.randint(0, 3, (n,), generator=gen)
    is_query = torch.rand(n, generator=gen) < 0.3
    return features, pids, camids, is_query


def expected_metric(features, pids, camids, is_query, rerank=False):
    q, g = features[is_query], features[~is_query]
    distmat = reference_icg_distance(as_numpy(q), as_numpy(g))
    if rerank:
        distmat = reference_rerank(
            distmat,
            reference_icg_distance(as_numpy(q), as_numpy(q)),
            reference_icg_distance(as_numpy(g), as_numpy(g)),
            20,
            6,
            0.3,
        )
    m_ap, m_inp, cmc, _ = reference_evaluate(
        distmat,
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
        max_rank=10,
    )
    return {"mAP": m_ap, "mINP": m_inp, "rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9]}


def assert_metric(got: dict, expected: dict, atol=1e-6):
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == torch.float32 and got[name].dim() == 0
        assert got[name].item() == pytest.approx(value, abs=atol), name


@pytest.mark.parametrize("rerank", [False, True])
def test_metric_over_several_updates_matches_reference(rerank):
    features, pids, camids, is_query = labeled_set(0)
    metric = ReIDMetric(rerank=rerank)
    for lo, hi in [(0, 7), (7, 30), (30, 31), (31, 60)]:
        metric.update(features[lo:hi], pids[lo:hi], camids[lo:hi], is_query[lo:hi])
    got = metric.compute()
    assert_metric(got, expected_metric(features, pids, camids, is_query, rerank), atol=2e-5 if rerank else 1e-6)
    single = ReIDMetric(rerank=rerank)
    single.update(features, pids, camids, is_query)
    for name, value in single.compute().items():
        assert value.item() == pytest.approx(got[name].item(), abs=1e-7)


def test_plain_tensor_mode_is_cosine_evaluate_rank():
    features, pids, camids, is_query = labeled_set(1, foreground=True, parts=True, graph=True)
    metric = ReIDMetric(chunk_size=5)
    metric.update(features.global_feat[:20], pids[:20], camids[:20], is_query[:20].int())
    metric.update(features.global_feat[20:], pids[20:], camids[20:], is_query[20:])
    q, g = features.global_feat[is_query].double().numpy(), features.global_feat[~is_query].double().numpy()
    cosine = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    m_ap, m_inp, cmc, _ = reference_evaluate(
        cosine,
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
        max_rank=10,
    )
    assert_metric(metric.compute(), {"mAP": m_ap, "mINP": m_inp, "rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9]})


def test_metric_drops_repeated_samples_and_checks_updates():
    features, pids, camids, is_query = labeled_set(2)
    index = torch.arange(60)
    metric = ReIDMetric()
    metric.update(features[:40], pids[:40], camids[:40], is_query[:40], sample_index=index[:40])
    # A padded last batch repeats images 0..9 (what DistributedSampler does).
    repeat = torch.cat([torch.arange(40, 60), torch.arange(10)])
    metric.update(features[repeat], pids[repeat], camids[repeat], is_query[repeat], sample_index=index[repeat])
    assert_metric(metric.compute(), expected_metric(features, pids, camids, is_query))
    with pytest.raises(ValueError, match="sample_index must be given in every update"):
        metric.update(features[:2], pids[:2], camids[:2], is_query[:2])
    with pytest.raises(ValueError, match="features.foreground is present in some updates"):
        metric.update(features[:2].global_feat, pids[:2], camids[:2], is_query[:2], sample_index=index[:2])
    with pytest.raises(ValueError, match=r"camids must be a \[2\] tensor"):
        metric.update(features[:2], pids[:2], camids[:3], is_query[:2], sample_index=index[:2])


def test_metric_without_valid_query_warns_and_gives_nan():
    features, pids, camids, _ = labeled_set(3)
    metric = ReIDMetric()
    metric.update(features, pids, camids, torch.zeros(60, dtype=torch.bool))
    with pytest.warns(UserWarning, match="none of the 0 queries"):
        got = metric.compute()
    assert all(torch.isnan(value) for value in got.values())


def test_format_rank_table():
    table = format_rank_table({"mAP": torch.tensor(0.8893), "rank1": 0.954, "mINP": float("nan")}, title="test")
    assert table.splitlines() == ["test", "-" * 13, "mAP     88.9%", "Rank-1  95.4%", "mINP      n/a"]


# -------------------------------------------------------------------------------------------------- DDP
@pytest.mark.multiprocess
@pytest.mark.slow
def test_ddp_gather_equals_single_process(tmp_path):
    out = tmp_path / "ddp.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "ddp_metric.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    features = ReIDFeatures(
        **{name: torch.from_numpy(data[name]) for name in ("global_feat", "foreground", "parts", "graph", "visibility")}
    )
    pids, camids, is_query = (torch.from_numpy(data[name]) for name in ("pids", "camids", "is_query"))
    expected = expected_metric(features, pids, camids, is_query)
    results = json.loads(str(data["results"]))
    for run in ("features", "deduplicated"):
        for name, value in expected.items():
            assert results[run][name] == pytest.approx(value, abs=1e-6), (run, name)
