from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.model.afm import ForegroundHead, SpatialAttention
from icg.model.ppc import LOGIT_SCALE


def _numpy_spatial_attention(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Channel mean and max, zero-padded 2 -> 1 cross-correlation, sigmoid, divided by the image's mean; written
    with explicit loops."""
    batch, _, height, width = x.shape
    pooled = np.stack([x.mean(axis=1), x.max(axis=1)], axis=1)
    size = kernel.shape[-1]
    pad = size // 2
    padded = np.pad(pooled, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((batch, 1, height, width))
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                out[b, 0, i, j] = np.sum(padded[b, :, i : i + size, j : j + size] * kernel[0])
    weights = 1.0 / (1.0 + np.exp(-out))
    return weights / weights.mean(axis=(2, 3), keepdims=True)


def test_spatial_attention_matches_reference() -> None:
    torch.manual_seed(0)
    attention = SpatialAttention()
    torch.nn.init.normal_(attention.conv.weight, std=0.2)
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    attention.double()
    expected = _numpy_spatial_attention(x.numpy(), attention.conv.weight.detach().numpy())
    out = attention(x)
    assert out.shape == (2, 1, 6, 4)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_spatial_attention_starts_neutral() -> None:
    weights = SpatialAttention()(torch.rand(2, 8, 6, 4) * 10)
    torch.testing.assert_close(weights, torch.ones(2, 1, 6, 4))


def test_spatial_attention_cannot_shrink_the_map() -> None:
    # Whatever the weights, the attention's mean over each image is 1: it can only move weight between cells.
    attention = SpatialAttention()
    with torch.no_grad():
        attention.conv.weight.fill_(-5.0)  # a sigmoid alone would give ~0 everywhere
    weights = attention(torch.rand(3, 8, 8, 4) + 1.0)
    torch.testing.assert_close(weights.mean(dim=(2, 3)), torch.ones(3, 1))


def test_spatial_attention_rejects_even_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        SpatialAttention(kernel_size=6)


def test_foreground_head_is_a_scaled_linear_map_of_normalized_cells() -> None:
    torch.manual_seed(0)
    head = ForegroundHead(7).double()
    x = torch.randn(2, 7, 3, 2, dtype=torch.float64)
    weight = head.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = head.conv.bias.detach().numpy()
    unit = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    expected = LOGIT_SCALE * (np.einsum("oc,bchw->bohw", weight, unit) + bias[None, :, None, None])
    assert head(x).shape == (2, 2, 3, 2)
    np.testing.assert_allclose(head(x).detach().numpy(), expected, rtol=1e-10)
