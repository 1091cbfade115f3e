from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, INVALID_SOURCE, TrainTransform, read_image
from tests.data.helpers import coordinate_image, denormalize

H, W = 32, 16


@pytest.mark.parametrize("seed", range(20))
def test_source_map_points_at_the_pixel_each_output_pixel_came_from(seed: int) -> None:
    torch.manual_seed(seed)
    transform = TrainTransform((H, W), flip_prob=0.5, padding=4, erasing_prob=0.7)
    image, source = transform(coordinate_image(H, W))
    assert image.shape == (3, H, W) and source.shape == (H, W) and source.dtype == torch.int64
    pixels = denormalize(image)
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
    image, source = TrainTransform((H, W), flip_prob=0.0, padding=0, erasing_prob=0.0)(coordinate_image(H, W))
    assert torch.equal(source, torch.arange(H * W).view(H, W))


def test_flip_reverses_columns() -> None:
    _, source = TrainTransform((H, W), flip_prob=1.0, padding=0, erasing_prob=0.0)(coordinate_image(H, W))
    assert torch.equal(source, torch.arange(H * W).view(H, W).flip(1))


def test_erasing_marks_a_box_invalid() -> None:
    torch.manual_seed(0)
    _, source = TrainTransform((H, W), flip_prob=0.0, padding=0, erasing_prob=1.0)(coordinate_image(H, W))
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


@pytest.mark.parametrize(
    "settings",
    [
        {"flip_prob": 0.5, "padding": 4, "erasing_prob": 0.5},
        {"flip_prob": 1.0, "padding": 0, "erasing_prob": 1.0},
        {"flip_prob": 0.0, "padding": 2, "erasing_prob": 0.0},
    ],
)
def test_draws_and_functional_ops_make_the_image_v2_compose_makes(settings: dict) -> None:
    # the reference: the pipeline as torchvision composes it, image only, drawing from the same global generator
    reference = [v2.Resize((H, W), antialias=True), v2.RandomHorizontalFlip(settings["flip_prob"])]
    if settings["padding"]:
        reference.append(v2.RandomCrop((H, W), padding=settings["padding"]))
    reference += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if settings["erasing_prob"]:
        reference.append(v2.RandomErasing(settings["erasing_prob"], value=0))
    reference = v2.Compose(reference)
    transform = TrainTransform((H, W), **settings)
    original = torch.randint(0, 256, (3, 20, 10), dtype=torch.uint8)  # resized up to H x W
    for seed in range(30):
        torch.manual_seed(seed)
        expected, after_reference = reference(tv_tensors.Image(original)), torch.rand(1)
        torch.manual_seed(seed)
        image, _ = transform(original)
        assert torch.equal(image, expected.as_subclass(torch.Tensor))
        assert torch.equal(torch.rand(1), after_reference)  # the same number of draws: later draws unchanged
