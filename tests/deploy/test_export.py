"""``icg export``'s files give what ``ICGModule.extract`` gives: the same features (ONNX through ONNX Runtime on the
CPU, TorchScript), visibility identical, at two batch sizes, for ICG and BoT, and so the same ranking."""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch
from torch import nn

from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.deploy import ExportedModel, export_onnx, export_torchscript
from icg.features import ReIDFeatures
from icg.module import ICGModule
from icg.retrieval import icg_distance

SIZE = (64, 32)
KINDS = {
    "icg": {},
    "bot": {"use_afm": False, "use_ppc": False, "use_fsg": False},
    "icg-mobilenet": {"backbone": "mobilenet_v2"},
}
OUTPUTS = {
    "icg": ("global", "foreground", "parts", "graph", "visibility"),
    "bot": ("global",),
    "icg-mobilenet": ("global", "foreground", "parts", "graph", "visibility"),
}
# float32 through another runtime: the same arithmetic in another order, so differences of a few ulps of O(1) values
TOLERANCE = 1e-4


def tiny_module(kind: str = "icg", *, seed: int = 0) -> ICGModule:
    """A ResNet-18 ICG (K = 4), BoT or MobileNetV2 ICG module for 64x32 images, in eval mode, with weights that
    exercise every layer of the inference path: random batch-norm statistics, attention and graph adjacency (all of
    which start at constants)."""
    torch.manual_seed(seed)
    module = ICGModule(
        **{
            "num_classes": 4,
            "num_train_samples": 8,
            "image_size": SIZE,
            "backbone": "resnet18",
            "weights": None,
            "num_parts": 4,
            **KINDS[kind],
        }
    )
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                layer.running_mean.normal_(0.0, 0.1)
                layer.running_var.uniform_(0.5, 2.0)
        if module.net.attention is not None:
            module.net.attention.conv.weight.normal_(0.0, 0.1)
        if module.net.graph is not None:
            module.net.graph.adjacency_logits.normal_()
    return module.eval()


def save_checkpoint(module: ICGModule, path: Path) -> Path:
    """A checkpoint that ``ICGModule.load_from_checkpoint`` reads, as ``icg fit`` would write it (without the
    trainer's state, which inference does not read)."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(checkpoint, path)
    return path


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def assert_same_features(actual: ReIDFeatures, expected: ReIDFeatures) -> None:
    """Same components, features within :data:`TOLERANCE`, visibility identical."""
    assert [name for name, _ in actual.items()] == [name for name, _ in expected.items()]
    for name, value in expected.items():
        if name == "visibility":
            assert actual.visibility.dtype == torch.bool and torch.equal(actual.visibility, value)
        else:
            torch.testing.assert_close(getattr(actual, name), value, rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def modules() -> dict[str, ICGModule]:
    return {kind: tiny_module(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def exported(modules: dict[str, ICGModule], tmp_path_factory) -> dict[tuple[str, str], Path]:
    """``(kind, format) -> file``; ONNX only where the exporter's packages are installed."""
    folder = tmp_path_factory.mktemp("export")
    files = {
        (kind, "torchscript"): export_torchscript(module, folder / f"{kind}.pt") for kind, module in modules.items()
    }
    if all(_installed(name) for name in ("onnx", "onnxscript", "onnxruntime")):
        files |= {(kind, "onnx"): export_onnx(module, folder / f"{kind}.onnx") for kind, module in modules.items()}
    return files


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _exported(exported: dict[tuple[str, str], Path], kind: str, fmt: str) -> ExportedModel:
    if fmt == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(name)
    return ExportedModel(exported[kind, fmt])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_exported_model_gives_the_features_of_extract(
    modules: dict[str, ICGModule], exported: dict[tuple[str, str], Path], kind: str, fmt: str
) -> None:
    model = _exported(exported, kind, fmt)
    for batch, seed in ((1, 1), (5, 2)):  # neither is the batch of the trace (2): the batch size is dynamic
        x = images(batch, seed)
        expected = modules[kind].extract(x)
        assert_same_features(model(x), expected)
    if kind.startswith("icg"):  # the comparison of visibility means something: parts visible in some images only
        visibility = modules[kind].extract(images(16, 3)).visibility
        assert visibility.any() and not visibility.all()
        assert torch.equal(model(images(16, 3)).visibility, visibility)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_model_ranks_a_gallery_like_extract(
    modules: dict[str, ICGModule], exported: dict[tuple[str, str], Path], fmt: str
) -> None:
    model = _exported(exported, "icg", fmt)
    query, gallery = images(4, 10), images(12, 11)
    module = modules["icg"]
    expected = icg_distance(module.extract(query), module.extract(gallery)).argsort(dim=1, stable=True)
    actual = icg_distance(model(query), model(gallery)).argsort(dim=1, stable=True)
    assert torch.equal(actual, expected)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_file_says_what_the_input_is_and_names_the_outputs(exported: dict[tuple[str, str], Path], fmt: str) -> None:
    for kind, outputs in OUTPUTS.items():
        metadata = _exported(exported, kind, fmt).metadata
        assert metadata.image_size == SIZE and metadata.mean == IMAGENET_MEAN and metadata.std == IMAGENET_STD
        assert metadata.outputs == outputs and metadata.num_parts == (0 if kind == "bot" else 4)
    if fmt == "onnx":  # what another runtime sees: named outputs, a symbolic batch, the metadata as properties
        onnx = pytest.importorskip("onnx")
        graph_model = onnx.load(str(exported["icg", "onnx"]))
        assert [output.name for output in graph_model.graph.output] == list(OUTPUTS["icg"])
        batch = graph_model.graph.input[0].type.tensor_type.shape.dim[0]
        assert graph_model.graph.input[0].name == "images" and batch.dim_param and not batch.dim_value
        properties = {prop.key: prop.value for prop in graph_model.metadata_props}
        assert properties["icg.image_size"] == "[64, 32]" and properties["icg.num_parts"] == "4"


def test_torchscript_export_leaves_the_module_as_it_was(tmp_path: Path) -> None:
    module = tiny_module("icg")
    module.train()
    state = {name: value.clone() for name, value in module.state_dict().items()}
    export_torchscript(module, tmp_path / "model.pt")
    assert module.training and module.net.heads["global"] is not None
    assert all(torch.equal(value, state[name]) for name, value in module.state_dict().items())


def test_exported_model_errors_name_the_file(modules: dict[str, ICGModule], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExportedModel(tmp_path / "missing.onnx")
    model = ExportedModel(export_torchscript(modules["bot"], tmp_path / "bot.pt"))
    with pytest.raises(ValueError, match=r"bot\.pt takes images \[B, 3, 64, 32\]"):
        model(torch.zeros(1, 3, 32, 32))
    pytest.importorskip("onnxruntime")
    checkpoint = save_checkpoint(modules["bot"], tmp_path / "bot.ckpt")
    with pytest.raises(ValueError, match="bot.ckpt is neither a TorchScript archive nor an ONNX model"):
        ExportedModel(checkpoint)


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
def test_a_file_without_the_metadata_is_refused(exported: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)), str(plain))
    with pytest.raises(ValueError, match=r"plain\.pt is a TorchScript archive without icg\.json"):
        ExportedModel(plain)
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    stripped = onnx.load(str(exported["bot", "onnx"]))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    with pytest.raises(ValueError, match=r"stripped\.onnx has no icg\.image_size in its metadata"):
        ExportedModel(tmp_path / "stripped.onnx")
