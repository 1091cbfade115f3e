from __future__ import annotations

import pytest
import torch

from icg.parts import IGNORE_INDEX, PartLabels, cell_centers

H, W = 64, 32  # feature map 4 x 2 at output stride 16


@pytest.fixture(scope="module")
def labels() -> PartLabels:
    labels = PartLabels(2, num_parts=8, size=(4, 2))
    first = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=torch.uint8)
    labels.assign(torch.stack([first, torch.zeros_like(first)]), torch.tensor([True, False]))
    return labels


def _identity_source() -> torch.Tensor:
    return torch.arange(H * W).view(1, H, W)


def _targets(labels: PartLabels, source: torch.Tensor, index: int = 0, foreground=None) -> list[list[int]]:
    foreground = torch.ones(1, 4, 2, dtype=torch.long) if foreground is None else foreground
    return labels.targets(torch.tensor([index]), source, foreground)[0].tolist()


def test_labels_read_through_an_identity_source_map(labels: PartLabels) -> None:
    assert _targets(labels, _identity_source()) == [[1, 2], [3, 4], [5, 6], [7, 8]]


def test_labels_follow_a_flip(labels: PartLabels) -> None:
    assert _targets(labels, _identity_source().flip(2)) == [[2, 1], [4, 3], [6, 5], [8, 7]]


def test_labels_follow_a_crop_and_ignore_padding(labels: PartLabels) -> None:
    # the crop window starts 16 rows lower: output row y shows input row y + 16, the last 16 rows are padding
    rows = torch.arange(H)[:, None] + 16
    source = torch.where(rows < H, rows * W + torch.arange(W)[None, :], -1)[None]
    assert _targets(labels, source) == [[3, 4], [5, 6], [7, 8], [IGNORE_INDEX, IGNORE_INDEX]]


def test_erased_cells_are_ignored(labels: PartLabels) -> None:
    source = _identity_source().clone()
    source[0, 0:16, 16:32] = -1  # covers the center (8, 24) of cell (0, 1)
    assert _targets(labels, source) == [[1, IGNORE_INDEX], [3, 4], [5, 6], [7, 8]]


def test_unclustered_rows_fall_back_to_bands_of_the_foreground() -> None:
    labels = PartLabels(1, num_parts=3, size=(4, 2))
    foreground = torch.tensor([[[1, 0], [1, 1], [0, 1], [1, 1]]])
    # cell centers at rows 8, 24, 40, 56 of 64 -> bands 1 + row * 3 // 64 = 1, 2, 2, 3
    assert _targets(labels, _identity_source(), foreground=foreground) == [[1, 0], [2, 2], [0, 2], [3, 3]]


def test_cell_centers_hand_case() -> None:
    rows, cols = cell_centers((4, 2), (64, 32))
    assert rows.tolist() == [8, 24, 40, 56] and cols.tolist() == [8, 24]


def test_assign_checks_shapes_and_values() -> None:
    labels = PartLabels(2, num_parts=3, size=(4, 2))
    with pytest.raises(ValueError, match="expected labels"):
        labels.assign(torch.zeros(3, 4, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="go up to 4, num_parts is 3"):
        labels.assign(torch.full((2, 4, 2), 4, dtype=torch.uint8), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="feature map is 8x4 but the part labels are 4x2"):
        labels.targets(torch.tensor([0]), _identity_source(), torch.ones(1, 8, 4))


def test_checkpoints_carry_the_labels() -> None:
    labels = PartLabels(2, num_parts=3, size=(4, 2))
    labels.assign(torch.randint(0, 4, (2, 4, 2), dtype=torch.uint8), torch.tensor([True, False]))
    restored = PartLabels(2, num_parts=3, size=(4, 2))
    restored.load_state_dict(labels.state_dict())
    assert torch.equal(restored.labels, labels.labels) and torch.equal(restored.labeled, labels.labeled)
