"""Writing a synthetic dataset to disk: deterministic, atomic (drawn in a staging folder that is renamed into
place) and idempotent (a complete generation with the same arguments is reused; anything else is an error).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

from icg.data.synthetic.draw import render_synthetic
from icg.data.synthetic.plan import MASK_FOLDER, SPLIT_FOLDERS, SyntheticImage, plan_images
from icg.data.synthetic.spec import SyntheticSpec
from icg.files import remove_orphans, staging_folder

__all__ = ["METADATA_FILE", "generate_synthetic", "write_synthetic"]

METADATA_FILE: Final[str] = "synthetic.json"
"""Written last into a generation, with its arguments: its presence marks a complete folder."""
# Bumped whenever the drawing or the plan changes, so that an old folder is not mistaken for a new generation.
_FORMAT_VERSION: Final[int] = 1


def _metadata(spec: SyntheticSpec, plan: list[SyntheticImage]) -> dict[str, Any]:
    counts = {folder: sum(img.folder == folder for img in plan) for folder in SPLIT_FOLDERS.values()}
    metadata = {
        "generator": "icg.data.synthetic",
        "format_version": _FORMAT_VERSION,
        "arguments": dataclasses.asdict(spec),
        "counts": counts,
    }
    # A JSON round trip turns tuples into lists (and numpy scalars into numbers), so stored and fresh metadata
    # compare equal.
    return json.loads(json.dumps(metadata, default=_json_number))


def _json_number(value: object) -> int | float:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"generate_synthetic: argument value {value!r} of type {type(value).__name__} is not a number")


def _is_complete(root: Path, expected: dict[str, Any]) -> bool:
    """True if ``root`` holds this very generation; False if ``root`` is absent or an empty folder; raises if it
    holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise FileExistsError(f"generate_synthetic: root {root} exists and is not a folder")
    metadata_file = root / METADATA_FILE
    if not metadata_file.is_file():
        if not any(root.iterdir()):
            return False
        raise FileExistsError(
            f"generate_synthetic: root {root} is not empty and holds no {METADATA_FILE}, so it is not a complete "
            "synthetic generation (a foreign folder, or one written by something else); it is left untouched. "
            "Pass another root, or delete this folder yourself if it is disposable."
        )
    try:
        stored = json.loads(metadata_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FileExistsError(f"generate_synthetic: {metadata_file} cannot be read ({error})") from None
    if stored.get("generator") != expected["generator"] or stored.get("format_version") != expected["format_version"]:
        raise FileExistsError(
            f"generate_synthetic: {root} holds a generation of another generator or format version "
            f"({stored.get('generator')!r}, version {stored.get('format_version')!r}; this is version "
            f"{_FORMAT_VERSION}); pass another root or delete the folder yourself"
        )
    old, new = stored.get("arguments", {}), expected["arguments"]
    differences = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in new if old.get(k) != new[k]]
    if differences:
        raise FileExistsError(
            f"generate_synthetic: {root} holds a synthetic generation with other arguments ("
            + "; ".join(differences)
            + "); pass another root or delete the folder yourself"
        )
    for folder, count in expected["counts"].items():
        # Globbing a missing folder finds nothing, which counts as a mismatch.
        found = len(list((root / folder).glob("*.jpg")))
        masks = len(list((root / MASK_FOLDER / folder).glob("*.png")))
        if found != count or masks != count:
            raise FileExistsError(
                f"generate_synthetic: {root / folder} holds {found} images and {masks} part masks where the "
                f"generation wrote {count}; the folder was modified after generation. Delete it yourself to "
                "generate it again"
            )
    return True


def write_synthetic(root: str | Path, spec: SyntheticSpec) -> Path:
    """Draws the synthetic dataset ``spec`` describes in the Market-1501 layout under ``root``, or reuses the one
    already there.

    Args:
        root: the dataset folder to create (``root/bounding_box_train`` etc.); its parent is created if needed.
            If it exists it must be empty or hold a complete generation of the same spec.
        spec: what to generate.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` holds something other than this generation (other arguments, a foreign or
            modified folder). Nothing is deleted.
    """
    root = Path(root).expanduser()
    plan = plan_images(spec)
    metadata = _metadata(spec, plan)
    if root.parent.is_dir():  # staging folders of killed generations
        remove_orphans(root.parent, root.name)
    if _is_complete(root, metadata):
        return root

    staging = staging_folder(root)
    try:
        for folder in SPLIT_FOLDERS.values():
            (staging / folder).mkdir()
            (staging / MASK_FOLDER / folder).mkdir(parents=True)
        for image in plan:
            pixels, labels = render_synthetic(image, spec.image_size)
            Image.fromarray(pixels).save(staging / image.relpath, format="JPEG", quality=spec.jpeg_quality)
            Image.fromarray(labels).save(staging / image.mask_relpath, format="PNG")
        # Written last: its presence marks a complete generation.
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _publish(staging, root, metadata)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def generate_synthetic(
    root: str | Path, num_train_ids: int = 100, num_test_ids: int = 100, seed: int = 0, **options: Any
) -> Path:
    """:func:`write_synthetic` of ``SyntheticSpec(num_train_ids=..., num_test_ids=..., seed=..., **options)``:
    ``options`` are the other fields of :class:`~icg.data.synthetic.spec.SyntheticSpec` (``image_size``,
    ``jpeg_quality``, the population and the nuisances)."""
    spec = SyntheticSpec(num_train_ids=num_train_ids, num_test_ids=num_test_ids, seed=seed, **options)
    return write_synthetic(root, spec)


def _publish(staging: Path, root: Path, metadata: dict[str, Any]) -> None:
    """Renames the finished staging folder to ``root`` in one step, tolerating a concurrent identical run."""
    try:
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        os.rename(staging, root)
    except OSError as error:
        # Another process (e.g. another DDP rank) may have published the same generation first.
        if _is_complete(root, metadata):
            return
        raise FileExistsError(f"generate_synthetic: cannot move the generated folder to {root} ({error})") from error
