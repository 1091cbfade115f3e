"""``icg index`` and ``icg search``: a folder of images made into a searchable gallery, and queries against it.

``icg index`` embeds every image below a folder with :class:`~icg.deploy.embedder.Embedder` (a checkpoint or an exported
file), in batches with a progress bar, and writes a :class:`~icg.retrieval.GalleryIndex`: ``NAME.faiss`` and
``NAME.meta.pt`` (paths, the features eq. 15 re-ranks with, the model's path). ``icg search`` embeds query images
with the same model (the recorded one unless ``--model`` is given; an exported file of the same checkpoint gives
the same features) and prints, for each, the gallery's top ``k`` by the ICG distance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from icg.data.transforms import image_files
from icg.deploy.embedder import Embedder
from icg.files import atomic_write
from icg.retrieval.index import DEFAULT_CANDIDATES, GalleryIndex, SearchKey, metadata_path

__all__ = ["index_folder", "search_index"]

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def index_folder(
    *,
    model: str,
    folder: str,
    output: str = "gallery.faiss",
    key: SearchKey = "global",
    nlist: int = 0,
    nprobe: int = 8,
    batch_size: int = 64,
    device: str = _DEVICE,
) -> Path:
    """Embeds every image below ``folder`` and writes a gallery index (``output`` and its ``.meta.pt``).

    Args:
        model: a checkpoint of ``icg fit`` or a file of ``icg export``.
        folder: the gallery's images (jpg, jpeg, png; searched recursively).
        output: the index file to write, ``NAME.faiss`` (``NAME.meta.pt`` is written beside it).
        key: the vector FAISS searches, ``global`` or ``concat`` (see :mod:`icg.retrieval.index`).
        nlist: IVF cells (0: an exact flat index, the default).
        nprobe: IVF cells searched per query.
        batch_size: images per forward pass.
        device: ``cpu`` or ``cuda``.
    """
    files = image_files(folder)
    features = Embedder(model, batch_size=batch_size, device=device).embed_files(files, progress=True)
    index = GalleryIndex.build(
        features,
        [str(path) for path in files],
        key=key,
        nlist=nlist,
        nprobe=nprobe,
        extra={"model": str(Path(model).resolve())},
    )
    path = index.save(output)
    print(f"indexed {len(files)} images of {folder}: {path} and {metadata_path(path)}")
    return path


def search_index(
    *,
    index: str,
    query: str,
    model: str | None = None,
    top_k: int = 10,
    candidates: int = DEFAULT_CANDIDATES,
    output: str | None = None,
    batch_size: int = 64,
    device: str = _DEVICE,
) -> dict[str, list[dict[str, float | str]]]:
    """Ranks the gallery of ``index`` for each query image; prints each ranking and returns them all.

    Args:
        index: an index file written by ``icg index`` (``NAME.faiss``, with its ``NAME.meta.pt``).
        query: a query image, or a folder of them (searched recursively).
        model: the model that embeds the queries; default: the one that embedded the gallery (recorded in the
            index). It must give the gallery's features: the same checkpoint, or a file exported from it.
        top_k: gallery images per query.
        candidates: gallery images that FAISS proposes and the ICG distance re-ranks per query.
        output: a JSON file to write the rankings to (``{query: [{"path", "distance"}, ...]}``), or none.
        batch_size: images per forward pass.
        device: ``cpu`` or ``cuda``.
    """
    gallery = GalleryIndex.load(index)
    model = model or gallery.extra.get("model")
    if model is None:
        raise ValueError(f"{index} does not record the model that embedded it: pass --model")
    files = [Path(query)] if Path(query).is_file() else image_files(query)
    features = Embedder(model, batch_size=batch_size, device=device).embed_files(files, progress=len(files) > 1)
    result = gallery.search(features, top_k=top_k, candidates=candidates)
    names = gallery.paths or [str(row) for row in range(len(gallery))]
    rankings = {}
    for file, rows, distances in zip(files, result.indices.tolist(), result.distances.tolist()):
        found = [(row, distance) for row, distance in zip(rows, distances) if row >= 0]
        rankings[str(file)] = [{"path": names[row], "distance": distance} for row, distance in found]
        print(f"{file}: " + " ".join(f"{names[row]} ({distance:.4f})" for row, distance in found))
    if output is not None:
        text = json.dumps(rankings, indent=1)
        atomic_write(output, lambda stream: stream.write(text.encode()))
        print(f"rankings written to {output}")
    return rankings
