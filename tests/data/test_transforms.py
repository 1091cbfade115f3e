from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, INVALID_SOURCE, TrainTransform, read_image

H, W = 32, 16


def _coordinate_image() -> torch.Tensor:
    """Red = column + 1, green = row + 1, blue = 7: every pixel says where it is (0 never occurs)."""
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return torch.stack([cols + 1, rows + 1, torch.full_like(rows, 7)]).to(torch.uint8)


def _denormalize(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).round()


@pytest.mark.parametrize("seed", range(20))
def test_source_map_points_at_the_pixel_each_output_pixel_came_from(seed: int) -> None:
    torch.manual_seed(seed)
    transform = TrainTransform((H, W), flip_prob=0.5, padding=4, erasing_prob=0.7)
    image, source = transform(_coordinate_image())
    assert image.shape == (3, H, W) and source.shape == (H, W) and source.dtype == torch.int64
    pixels = _denormalize(image)
    valid = source != INVALID_SOURCE
    # every valid output pixel shows the (row, column) its source index encodes
    assert torch.equal(pixels[0][valid] - 1, (source[valid] % W).float())
    assert torch.equal(pixels[1][valid] - 1, (source[valid] // W).float())
    # every invalid one is padding (black) or erased (normalised 0, i.e. the mean): never a person pixel
    invalid_pixels = pixels[:, ~valid]
    padded = (invalid_pixels == 0).all(0)
    erased = (image[:, ~valid] == 0).all(0)
    assert bool((padded | erased).all())


def test_without_augmentation_the_source_map_is_the_identity() -> None:
    image, source = TrainTransform((H, W), flip_prob=0.0, padding=0, erasing_prob=0.0)(_coordinate_image())
    assert torch.equal(source, torch.arange(H * W).view(H, W))


def test_flip_reverses_columns() -> None:
    _, source = TrainTransform((H, W), flip_prob=1.0, padding=0, erasing_prob=0.0)(_coordinate_image())
    assert torch.equal(source, torch.arange(H * W).view(H, W).flip(1))


def test_erasing_marks_a_box_invalid() -> None:
    torch.manual_seed(0)
    _, source = TrainTransform((H, W), flip_prob=0.0, padding=0, erasing_prob=1.0)(_coordinate_image())
    rows, cols = torch.nonzero(source == INVALID_SOURCE, as_tuple=True)
    assert len(rows) > 0
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box == len(rows)  # one filled rectangle


def test_unreadable_image_names_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "0001_c1s1_000001_01.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(OSError, match="0001_c1s1_000001_01.jpg"):
        read_image(str(broken))
    with pytest.raises(OSError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))
