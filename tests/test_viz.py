from __future__ import annotations

import torch

from icg.viz import PART_COLORS, part_maps


def _has_color(image: torch.Tensor, color: tuple[int, int, int]) -> bool:
    return bool((image == torch.tensor(color, dtype=torch.uint8)[:, None, None]).all(dim=0).any())


def test_part_maps_layout_titles_and_color_key() -> None:
    batch, height, width, num_parts = 2, 32, 16, 3
    images = torch.full((batch, 3, height, width), 128, dtype=torch.uint8)
    labels = torch.zeros(batch, 4, 2, dtype=torch.long)
    labels[:, 0, 0], labels[:, 3, 1] = 1, 3  # part 1 in the top-left cell, part 3 in the bottom-right one
    picture = part_maps(
        images,
        num_parts=num_parts,
        pseudo_labels=labels,
        predicted_parts=labels,
        foreground=torch.rand(batch, 4, 2),
        attention=torch.rand(batch, 4, 2),
        min_width=64,
    )
    tile_h, tile_w = height * 4, width * 4  # enlarged 4x to reach min_width
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3
    assert picture.shape[2] == 2 + 5 * (tile_w + 2)  # image, pseudo-labels, predicted, foreground, attention
    header, grid = picture[:, :22], picture[:, 22 : 22 + 2 + batch * (tile_h + 2)]
    key = picture[:, 22 + grid.shape[1] :]
    for column in range(5):  # a title over every column
        left = 2 + column * (tile_w + 2)
        assert (header[:, :, left : left + tile_w] < 100).any(), column
    for k in range(1, num_parts + 1):  # every part's colour in the key
        assert _has_color(key, PART_COLORS[k]), k
    # predicted parts (third column): part 1 tinted in the top-left cell, the background cell beside it untinted
    predicted = grid[:, 2 : 2 + tile_h, 2 + 2 * (tile_w + 2) : 2 + 2 * (tile_w + 2) + tile_w]
    top_left, top_right = predicted[:, 5, 5].int(), predicted[:, 5, tile_w - 5].int()
    assert top_right.tolist() == [128, 128, 128]
    assert (top_left - torch.tensor(PART_COLORS[1])).abs().sum() < (
        top_right - torch.tensor(PART_COLORS[1])
    ).abs().sum()


def test_part_maps_of_a_model_without_parts_has_no_key() -> None:
    images = torch.zeros(1, 3, 64, 32, dtype=torch.uint8)
    picture = part_maps(images, num_parts=6, foreground=torch.ones(1, 4, 2), min_width=32)
    assert picture.shape[1:] == (22 + 2 + 64 + 2, 2 + 2 * (32 + 2))
