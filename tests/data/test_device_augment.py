from __future__ import annotations

import math

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from icg.data.device_augment import BatchAugmentation
from icg.data.transforms import INVALID_SOURCE, AugmentParams, TrainTransform
from icg.parts import IGNORE_INDEX, PartLabels
from tests.data.helpers import coordinate_image, denormalize

H, W = 32, 16
SETTINGS = [
    {"flip_prob": 0.5, "padding": 4, "erasing_prob": 0.7},
    {"flip_prob": 1.0, "padding": 0, "erasing_prob": 1.0},
    {"flip_prob": 0.5, "padding": 3, "erasing_prob": 0.0},
]


def _batch(size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (size, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


METHODS = ["batched", "per_image"]  # the GPU's way and the CPU's, both checked here on the CPU


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", range(3))
def test_same_draws_give_the_cpu_paths_images_and_source_maps(method: str, settings: dict, seed: int) -> None:
    transform = TrainTransform((H, W), **settings)
    torch.manual_seed(seed)
    params = transform.draw(48)  # torchvision's draws, applied by both paths
    images = _batch(48, seed)
    expected = [transform.apply(images[row], params, row) for row in range(48)]
    image, source = getattr(BatchAugmentation(transform), method)(images, params)
    torch.testing.assert_close(image, torch.stack([e[0] for e in expected]), rtol=0, atol=1e-6)
    assert torch.equal(source, torch.stack([e[1] for e in expected]))


@pytest.mark.parametrize("settings", SETTINGS)
def test_device_draws_applied_on_the_cpu_path_give_the_same_images(settings: dict) -> None:
    transform = TrainTransform((H, W), **settings)
    augmentation = BatchAugmentation(transform)
    params = augmentation.draw(48, torch.Generator().manual_seed(5))
    images = _batch(48, 5)
    image, source = augmentation(images, params)
    for row in range(48):
        expected_image, expected_source = transform.apply(images[row], params, row)
        torch.testing.assert_close(image[row], expected_image, rtol=0, atol=1e-6)
        assert torch.equal(source[row], expected_source)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(5))
def test_batch_source_map_points_at_the_pixel_each_output_pixel_came_from(method: str, seed: int) -> None:
    augmentation = BatchAugmentation(TrainTransform((H, W), flip_prob=0.5, padding=4, erasing_prob=0.7))
    images = coordinate_image(H, W).expand(16, -1, -1, -1)
    params = augmentation.draw(16, torch.Generator().manual_seed(seed))
    image, source = getattr(augmentation, method)(images, params)
    assert image.shape == (16, 3, H, W) and image.dtype == torch.float32
    assert source.shape == (16, H, W) and source.dtype == torch.int64
    pixels = denormalize(image).permute(1, 0, 2, 3)  # [3, B, H, W]
    valid = source != INVALID_SOURCE
    assert torch.equal(pixels[0][valid] - 1, (source[valid] % W).float())
    assert torch.equal(pixels[1][valid] - 1, (source[valid] // W).float())
    padded = (pixels[:, ~valid] == 0).all(0)
    erased = (image.permute(1, 0, 2, 3)[:, ~valid] == 0).all(0)
    assert bool((padded | erased).all())
    assert bool(padded.any()) and bool(erased.any())  # both kinds occur at these seeds


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_part_labels_read_through_batch_source_maps_stay_aligned(method: str, seed: int) -> None:
    h, w, parts, batch = 8, 4, 6, 16
    labels = PartLabels(batch, parts, (h, w))
    grid = torch.arange(batch)[:, None, None] + torch.arange(h * w).view(1, h, w)
    labels.assign((1 + grid % parts).to(torch.uint8), torch.ones(batch, dtype=torch.bool))
    augmentation = BatchAugmentation(TrainTransform((H, W), flip_prob=0.5, padding=4, erasing_prob=0.9))
    params = augmentation.draw(batch, torch.Generator().manual_seed(seed))
    image, source = getattr(augmentation, method)(coordinate_image(H, W).expand(batch, -1, -1, -1), params)
    index = torch.arange(batch)
    targets = labels.targets(index, source, torch.ones(batch, h, w))
    # reference: the colour of the pixel at each cell's centre says which original pixel it shows
    pixels = denormalize(image)
    for b in range(batch):
        for i in range(h):
            for j in range(w):
                y, x = math.floor((i + 0.5) * H / h), math.floor((j + 0.5) * W / w)
                red, green, blue = pixels[b, :, y, x].tolist()
                if blue == 7:  # a person pixel: column red - 1, row green - 1
                    row, col = int(green) - 1, int(red) - 1
                    expected = int(labels.labels[b, row * h // H, col * w // W])
                else:  # padding or erased
                    expected = IGNORE_INDEX
                assert int(targets[b, i, j]) == expected, (b, i, j)


def test_draws_follow_torchvision_distributions() -> None:
    height, width, padding = 256, 128, 10
    transform = TrainTransform((height, width), flip_prob=0.5, padding=padding, erasing_prob=0.5)
    drawn = BatchAugmentation(transform).draw(20000, torch.Generator().manual_seed(0))
    # crop corners: uniform on 0..2 * padding (21 values, ~950 each)
    for corner in (drawn.top, drawn.left):
        counts = torch.bincount(corner, minlength=2 * padding + 1)
        assert len(counts) == 2 * padding + 1 and int(corner.min()) == 0
        assert bool((counts - 20000 / (2 * padding + 1)).abs().lt(0.2 * 20000 / (2 * padding + 1)).all())
    assert abs(drawn.flip.float().mean().item() - 0.5) < 0.02  # standard error 0.0035
    assert abs(drawn.erase.float().mean().item() - 0.5) < 0.02
    assert bool((drawn.erase_box[~drawn.erase] == 0).all())
    mine = drawn.erase_box[drawn.erase].double()
    # torchvision's own sampler of the erased box, as reference
    torch.manual_seed(0)
    erasing, shape = v2.RandomErasing(1.0, value=0), [tv_tensors.Image(torch.zeros(3, height, width))]
    boxes = [erasing.make_params(shape) for _ in range(4000)]
    reference = torch.tensor([[box["i"], box["j"], box["h"], box["w"]] for box in boxes if box["v"] is not None])
    assert len(reference) == 4000  # at this size a box always fits within 10 attempts; so it must on our side
    for box in (mine, reference.double()):
        top, left, box_height, box_width = box.unbind(1)
        assert bool(((box_height < height) & (box_width < width) & (box_height >= 1) & (box_width >= 1)).all())
        assert bool(((top + box_height <= height) & (left + box_width <= width) & (top >= 0) & (left >= 0)).all())
        # both ends of the position ranges occur (each about 1 in 100-200 boxes: never missed by chance here)
        assert bool((top == 0).any() and (top + box_height == height).any())
        assert bool((left == 0).any() and (left + box_width == width).any())

    def statistics(box: torch.Tensor) -> torch.Tensor:
        top, left, box_height, box_width = box.unbind(1)
        return torch.stack(
            [
                (box_height * box_width / (height * width)).mean(),  # erased share, std ~0.09
                (box_height / box_width).log().mean(),  # log aspect ratio, std ~0.7
                (top / (height - box_height)).mean(),  # position, uniform: std ~0.29
                (left / (width - box_width)).mean(),
            ]
        )

    # tolerances ~6 standard errors of the difference of means (4,000 vs ~10,000 boxes); a scale range of
    # (0.02, 0.4) or a ratio drawn uniformly instead of log-uniformly would fail
    difference = (statistics(mine) - statistics(reference.double())).abs()
    assert bool((difference < torch.tensor([0.01, 0.08, 0.035, 0.035], dtype=torch.float64)).all()), difference


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_of_another_size_is_refused(method: str) -> None:
    augmentation = BatchAugmentation(TrainTransform((H, W)))
    params = augmentation.draw(2, torch.Generator())
    with pytest.raises(ValueError, match="the batch is 16x8, the training size is 32x16"):
        getattr(augmentation, method)(torch.zeros(2, 3, 16, 8, dtype=torch.uint8), params)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("settings", SETTINGS)
def test_on_cuda_draws_and_images_match_the_cpu_path(settings: dict) -> None:
    transform = TrainTransform((H, W), **settings)
    augmentation = BatchAugmentation(transform)
    params = augmentation.draw(64, torch.Generator(device="cuda").manual_seed(0))
    assert params.flip.device.type == "cuda" and params.erase_box.device.type == "cuda"
    images = _batch(64, 0)
    image, source = augmentation(images.cuda(), params)
    on_cpu = AugmentParams(*(value.cpu() for value in vars(params).values()))
    for row in range(64):
        expected_image, expected_source = transform.apply(images[row], on_cpu, row)
        torch.testing.assert_close(image[row].cpu(), expected_image, rtol=0, atol=1e-6)
        assert torch.equal(source[row].cpu(), expected_source)
