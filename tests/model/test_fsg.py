from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icg.model.fsg import FlexibleStructureGraph

VISIBILITY = torch.tensor(
    [
        [True, True, True, True],
        [True, False, True, False],
        [False, False, True, False],
        [False, False, False, False],
    ]
)


def _graph(num_layers: int = 2, channels: int = 6) -> FlexibleStructureGraph:
    torch.manual_seed(0)
    graph = FlexibleStructureGraph(4, channels, num_layers=num_layers).double()
    with torch.no_grad():
        graph.adjacency_logits.normal_(std=2.0)
    return graph


def test_adjacency_starts_at_one_half_and_is_detached() -> None:
    graph = FlexibleStructureGraph(3, 8)
    torch.testing.assert_close(graph.adjacency, torch.full((3, 3), 0.5))
    assert not graph.adjacency.requires_grad


def test_normalized_adjacency_elementwise() -> None:
    graph = _graph()
    m = 1.0 / (1.0 + np.exp(-graph.adjacency_logits.detach().numpy()))
    v = VISIBILITY.numpy()
    out = graph.normalized_adjacency(VISIBILITY).detach().numpy()
    for b in range(4):
        # M_b[i, j] = M[i, j] v_i v_j; D_ii = sum_j M_b[i, j]; M_hat = (I+D)^-1/2 (M_b + I) (I+D)^-1/2.
        restricted = [[m[i, j] * v[b, i] * v[b, j] for j in range(4)] for i in range(4)]
        degree = [sum(restricted[i]) for i in range(4)]
        for i in range(4):
            for j in range(4):
                expected = (restricted[i][j] + (1.0 if i == j else 0.0)) / math.sqrt((1 + degree[i]) * (1 + degree[j]))
                assert out[b, i, j] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_forward_matches_numpy_gcn() -> None:
    graph = _graph(num_layers=3)
    parts = torch.randn(4, 4, 6, dtype=torch.float64)
    m = 1.0 / (1.0 + np.exp(-graph.adjacency_logits.detach().numpy()))
    thetas = [layer.weight.detach().numpy().T for layer in graph.layers]
    out = graph(parts, VISIBILITY).detach().numpy()
    for b in range(4):
        v = VISIBILITY[b].numpy().astype(float)
        restricted = m * np.outer(v, v)
        scale = np.diag(1.0 / np.sqrt(1.0 + restricted.sum(axis=1)))
        m_hat = scale @ (restricted + np.eye(4)) @ scale
        h = parts[b].numpy()
        for theta in thetas:
            z = m_hat @ h @ theta
            h = np.where(z > 0, z, 0.2 * z)
        expected = h[v > 0].mean(axis=0) if v.any() else np.zeros(6)
        np.testing.assert_allclose(out[b], expected, rtol=1e-10, atol=1e-12)


def test_invisible_parts_do_not_change_the_output() -> None:
    graph = _graph()
    parts = torch.randn(4, 4, 6, dtype=torch.float64)
    changed = parts.clone()
    changed[~VISIBILITY] = torch.randn(int((~VISIBILITY).sum()), 6, dtype=torch.float64) * 100
    assert torch.equal(graph(parts, VISIBILITY), graph(changed, VISIBILITY))


def test_no_visible_part_gives_zero_and_finite_gradients() -> None:
    graph = FlexibleStructureGraph(3, 5)
    parts = torch.randn(2, 3, 5, requires_grad=True)
    out = graph(parts, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 5))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in [parts, graph.adjacency_logits])


def test_batch_equals_single_images() -> None:
    graph = _graph()
    parts = torch.randn(4, 4, 6, dtype=torch.float64)
    batched = graph(parts, VISIBILITY)
    for b in range(4):
        torch.testing.assert_close(batched[b], graph(parts[b : b + 1], VISIBILITY[b : b + 1])[0])


def test_adjacency_receives_gradient_between_visible_parts() -> None:
    graph = FlexibleStructureGraph(4, 6)
    # Parts 0 and 2 are visible together in the first image; parts 1 and 3 in neither.
    graph(torch.randn(2, 4, 6), VISIBILITY[1:3]).square().sum().backward()
    grad = graph.adjacency_logits.grad
    assert grad[0, 2] != 0 and grad[2, 0] != 0 and grad[2, 2] != 0
    assert grad[0, 1] == 0 and grad[1, 3] == 0 and grad[3, 1] == 0 and grad[1, 1] == 0


@pytest.mark.parametrize(
    ("parts_shape", "visibility", "match"),
    [
        ((2, 3, 6), torch.ones(2, 4, dtype=torch.bool), "parts"),
        ((2, 4, 6), torch.ones(2, 4), "visibility"),
        ((2, 4, 6), torch.ones(3, 4, dtype=torch.bool), "batch"),
    ],
)
def test_bad_inputs(parts_shape: tuple[int, ...], visibility: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FlexibleStructureGraph(4, 6)(torch.randn(parts_shape), visibility)
