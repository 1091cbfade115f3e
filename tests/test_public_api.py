"""The public API: what ``icg`` exports is documented, the README, the guide and the examples import only from it, and
:func:`icg.build_module` sizes a model for its datamodule."""

from __future__ import annotations

import ast
import inspect
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest

import icg
from icg import SyntheticDataModule, build_module

REPO = Path(__file__).resolve().parents[1]


def _python_sources() -> dict[str, str]:
    """The Python code of the README's and the guide's ``python`` blocks, the example scripts and the notebook's code
    cells."""
    sources = {str(path.relative_to(REPO)): path.read_text() for path in (REPO / "examples").glob("*.py")}
    for document in ("README.md", "docs/GUIDE.md"):
        text = (REPO / document).read_text()
        sources[document] = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
        assert sources[document], f"{document} has no python block"
    notebook = json.loads((REPO / "examples" / "quickstart.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    sources["examples/quickstart.ipynb"] = "\n".join(cells)
    return sources


def test_every_export_has_a_docstring_and_the_version_has_one_source() -> None:
    for name in icg.__all__:
        exported = getattr(icg, name)
        if inspect.isclass(exported) or inspect.isfunction(exported):
            assert inspect.getdoc(exported), name
    assert icg.__version__ == version("icg")


@pytest.mark.parametrize("name", sorted(_python_sources()))
def test_readme_and_examples_import_only_the_public_api(name: str) -> None:
    tree = ast.parse(_python_sources()[name])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "icg":
            assert node.module == "icg", f"{name}: from {node.module} import ..."
            assert all(alias.name in icg.__all__ for alias in node.names), name
        elif isinstance(node, ast.Import):
            assert not [alias.name for alias in node.names if alias.name.startswith("icg.")], name


def test_build_module_takes_the_sizes_from_the_datamodule(tmp_path: Path) -> None:
    data = SyntheticDataModule(str(tmp_path / "synthetic"), num_train_ids=4, num_test_ids=3, image_size=(64, 32))
    module = build_module(data, backbone="resnet18", weights=None, lr=1e-3)
    assert (module.hparams.num_classes, module.hparams.num_train_samples) == (data.num_classes, data.num_train_samples)
    assert tuple(module.hparams.image_size) == (64, 32) and module.hparams.lr == 1e-3
    with pytest.raises(TypeError, match="num_classes come"):
        build_module(data, num_classes=10)
