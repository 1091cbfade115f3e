"""The embedder gives, for numpy person crops, the normalised features that evaluation computes for the same
pixels, whatever the model's form (module, checkpoint, ONNX, TorchScript) and the batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.data.transforms import eval_transform
from icg.deploy import Embedder, export_onnx, export_torchscript
from icg.features import NonFiniteFeaturesError, ReIDFeatures
from icg.module import ICGModule
from tests.deploy.test_export import SIZE, TOLERANCE, save_checkpoint, tiny_module


def crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Person crops as a detector gives them: uint8 H x W x 3, of different sizes."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(40, 200)), int(rng.integers(20, 90)), 3), np.uint8) for _ in range(count)
    ]


def reference(module: ICGModule, images: list[np.ndarray]) -> ReIDFeatures:
    """Evaluation's path, written out: eval_transform on each [3, H, W] image, extract, L2-normalise each feature."""
    transform = eval_transform(SIZE)
    batch = torch.stack([transform(torch.from_numpy(image).permute(2, 0, 1)) for image in images])
    features = module.extract(batch)
    normalize = torch.nn.functional.normalize
    return ReIDFeatures(**{n: v if n == "visibility" else normalize(v, dim=-1) for n, v in features.items()})


def assert_close(actual: ReIDFeatures, expected: ReIDFeatures, atol: float = 1e-6) -> None:
    assert [n for n, _ in actual.items()] == [n for n, _ in expected.items()]
    for name, value in expected.items():
        if name == "visibility":
            assert torch.equal(actual.visibility, value)
        else:
            torch.testing.assert_close(getattr(actual, name), value, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def module() -> ICGModule:
    return tiny_module("icg")


def test_crops_are_embedded_as_evaluation_embeds_them(module: ICGModule) -> None:
    images = crops(7)
    expected = reference(module, images)
    features = Embedder(module, batch_size=3)(images)  # three batches, the last one short
    assert_close(features, expected)
    norms = torch.linalg.vector_norm(features.parts, dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # one crop at a time gives the same (batch-norm in eval mode: no crop influences another)
    assert_close(ReIDFeatures.cat([Embedder(module, batch_size=1)([image]) for image in images]), expected)


def test_bgr_crops_and_empty_frames(module: ICGModule) -> None:
    images = crops(3, seed=1)
    rgb = Embedder(module)(images)
    assert_close(Embedder(module, channels="bgr")([image[:, :, ::-1] for image in images]), rgb)
    empty = Embedder(module)([])
    assert len(empty) == 0 and [n for n, _ in empty.items()] == [n for n, _ in rgb.items()]
    assert empty.parts.shape[1:] == rgb.parts.shape[1:]


def test_files_are_embedded_with_the_pixels_they_decode_to(module: ICGModule, tmp_path: Path) -> None:
    images = crops(3, seed=2)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")  # PNG: lossless, the decoded pixels are the crop's
        Image.fromarray(image).save(paths[-1])
    assert_close(Embedder(module, batch_size=2).embed_files(paths), reference(module, images))


def test_bad_crops_are_named(module: ICGModule) -> None:
    embedder = Embedder(module)
    good = crops(2)
    with pytest.raises(ValueError, match="crop 1 must be a numpy H x W x 3 uint8 array, got ndarray float32"):
        embedder([good[0], good[1].astype(np.float32)])
    with pytest.raises(ValueError, match="crop 0 must be a numpy H x W x 3 uint8 array, got Tensor"):
        embedder([torch.zeros(10, 10, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"crop 1 is empty \(0 x 5\)"):
        embedder([good[0], np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="channels must be 'rgb' or 'bgr'"):
        Embedder(module, channels="RGB")


def test_a_diverged_model_is_refused_naming_the_crops(module: ICGModule) -> None:
    broken = tiny_module("bot")
    with torch.no_grad():
        broken.net.backbone.conv1.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteFeaturesError, match=r"Embedder: the features of 2 of 2 images .*crop 0, crop 1\)"):
        Embedder(broken, batch_size=2)(crops(3))
    # a bad row in a later batch is named by its position among all crops
    embedder = Embedder(module, batch_size=2)
    model, calls = embedder._model, []

    def second_batch_breaks(images: torch.Tensor) -> ReIDFeatures:
        features = model(images)
        calls.append(len(images))
        if len(calls) == 2:
            features.graph[1] = float("inf")
        return features

    embedder._model = second_batch_breaks
    with pytest.raises(NonFiniteFeaturesError, match=r"1 of 2 images .*\(in graph; crop 3\)"):
        embedder(crops(5))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["checkpoint", "onnx", "torchscript"])
def test_every_form_of_the_model_embeds_alike(module: ICGModule, tmp_path: Path, form: str) -> None:
    if form == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(name)
    write = {
        "checkpoint": lambda: save_checkpoint(module, tmp_path / "model.ckpt"),
        "onnx": lambda: export_onnx(module, tmp_path / "model.onnx"),
        "torchscript": lambda: export_torchscript(module, tmp_path / "model.pt"),
    }
    images = crops(5, seed=3)
    assert_close(Embedder(write[form](), batch_size=2)(images), reference(module, images), atol=TOLERANCE)
