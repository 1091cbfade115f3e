"""A gallery index that scales: FAISS finds candidates, the ICG distance (eq. 15) ranks them.

Ranking a query against a gallery with :func:`~icg.retrieval.icg_distance` costs a row of the dense distance
matrix: every gallery image's every feature (global, foreground, graph, K parts). :class:`GalleryIndex` searches
one vector per image instead, in a FAISS inner-product index, keeps the ``candidates`` best, and re-ranks only
those with the ICG distance (:func:`~icg.retrieval.icg_distance_candidates`) on the stored features, so the
``top_k`` it returns are ordered by the exact ICG distance. What it can miss is a gallery image that eq. 15 puts
in the top ``k`` but the vector search leaves out of its ``candidates``; ``benchmarks/bench_index.py`` measures
how often.

The searched vector (``key``):

* ``global`` (default): the L2-normalised global feature, ``K + 3`` times shorter than all the features;
* ``concat``: all of them, :attr:`NormalizedFeatures.vectors <icg.retrieval.NormalizedFeatures.vectors>`
  normalised once more: its inner products are the numerator of eq. 15 divided by ``sqrt(n_q n_g)`` (``n`` the
  terms an image has) instead of eq. 15's ``n_qg``, so it ranks nearly as eq. 15 does and needs few candidates,
  but it is as long as the features and so costs as much to search as the dense ranking.

The index is exact (``IndexFlatIP``) or, with ``nlist > 0``, an inverted file (``IVF<nlist>,Flat``, trained on the
gallery) that searches ``nprobe`` of its ``nlist`` cells.

Files: :meth:`GalleryIndex.save` writes ``NAME.faiss`` (the FAISS index) and ``NAME.meta.pt`` (the paths, the
features eq. 15 needs as :class:`~icg.retrieval.NormalizedFeatures`, the settings and the SHA-256 of the
``.faiss`` file), each atomically; :meth:`GalleryIndex.load` refuses a pair that was not written together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from icg.features import ReIDFeatures
from icg.files import atomic_write
from icg.retrieval.distance import NormalizedFeatures, icg_distance_candidates

__all__ = ["GalleryIndex", "SearchResult", "metadata_path", "search_vectors"]

SearchKey = Literal["global", "concat"]
DEFAULT_CANDIDATES = 1000
"""Candidates re-ranked per query by default: recall@10 of the exact ranking >= 0.99 with the global key on the
100,000-image synthetic gallery of ``benchmarks/bench_index.py`` (docs/DECISIONS.md)."""
_FORMAT = "icg-gallery-index"
_VERSION = 1
_RERANK_ROWS = 512  # candidate rows gathered at a time: few enough to stay in the CPU's caches while re-ranked


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("a gallery index needs faiss: `pip install icg[cpu]` (or icg[gpu])") from error
    return faiss


def metadata_path(path: str | Path) -> Path:
    """The metadata file of the index file ``path``: ``gallery.faiss`` -> ``gallery.meta.pt``."""
    return Path(path).with_suffix(".meta.pt")


def search_vectors(features: NormalizedFeatures, key: SearchKey) -> np.ndarray:
    """The vectors the FAISS index holds for ``features``: ``[N, D]`` float32 with unit rows (module docstring)."""
    if key == "global":
        width = features.layout[0][1][0]  # the global feature comes first, already normalised
        return np.ascontiguousarray(features.vectors[:, :width].cpu().numpy())
    if key == "concat":
        return np.ascontiguousarray(F.normalize(features.vectors, dim=1).cpu().numpy())
    raise ValueError(f"key must be 'global' or 'concat', got {key!r}")


@dataclass
class SearchResult:
    """The ranked gallery of each query.

    Attributes:
        distances: ``[Nq, k]`` float32 ICG distances (eq. 15), ascending; ``inf`` where fewer than ``k`` candidates
            were found (an IVF index with a small ``nprobe``).
        indices: ``[Nq, k]`` int64 gallery rows; ``-1`` where ``distances`` is ``inf``.
    """

    distances: Tensor
    indices: Tensor


class GalleryIndex:
    """Gallery features with a FAISS index over them; make one with :meth:`build`, read one with :meth:`load`.

    Args:
        index: the FAISS index, one vector (:func:`search_vectors` of ``key``) per gallery row.
        features: the gallery's normalised features, on the CPU (what eq. 15 re-ranks with).
        paths: a name per row (image files), or ``None``.
        key: the searched vector, ``global`` or ``concat`` (module docstring).
        nprobe: IVF cells searched per query (unused by a flat index).
        extra: strings kept with the index (``icg index`` records the model that embedded the gallery).
    """

    def __init__(
        self,
        index: Any,
        features: NormalizedFeatures,
        paths: list[str] | None = None,
        *,
        key: SearchKey = "global",
        nprobe: int = 1,
        extra: dict[str, str] | None = None,
    ) -> None:
        if index.ntotal != len(features):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but there are {len(features)} features")
        if paths is not None and len(paths) != len(features):
            raise ValueError(f"{len(paths)} paths for {len(features)} features")
        self.index, self.features, self.paths, self.key = index, features, paths, key
        self.nprobe = nprobe
        self.extra = dict(extra or {})

    @classmethod
    def build(
        cls,
        features: ReIDFeatures | NormalizedFeatures,
        paths: list[str] | None = None,
        *,
        key: SearchKey = "global",
        nlist: int = 0,
        nprobe: int = 8,
        extra: dict[str, str] | None = None,
    ) -> GalleryIndex:
        """Indexes ``features`` (e.g. of :class:`icg.Embedder`): a flat inner-product index, or with ``nlist > 0``
        an IVF index of ``nlist`` cells trained on them (searching ``nprobe`` cells per query)."""
        if len(features) == 0:
            raise ValueError("cannot index an empty gallery")
        if nlist < 0 or nprobe < 1:
            raise ValueError(f"nlist must be >= 0 and nprobe >= 1, got nlist={nlist}, nprobe={nprobe}")
        if nlist > len(features):
            raise ValueError(f"nlist={nlist} IVF cells need at least as many gallery images, got {len(features)}")
        faiss = _faiss()
        features = NormalizedFeatures.of(features, "gallery").to("cpu")
        vectors = search_vectors(features, key)
        index = faiss.index_factory(
            vectors.shape[1], f"IVF{nlist},Flat" if nlist else "Flat", faiss.METRIC_INNER_PRODUCT
        )
        if nlist:
            index.train(vectors)
        index.add(vectors)
        return cls(index, features, paths, key=key, nprobe=nprobe, extra=extra)

    def __len__(self) -> int:
        return len(self.features)

    def search(
        self, query: ReIDFeatures | NormalizedFeatures, *, top_k: int = 10, candidates: int = DEFAULT_CANDIDATES
    ) -> SearchResult:
        """The ``top_k`` gallery rows of each query by the ICG distance, among the ``candidates`` that the FAISS
        index finds (at least ``top_k``). Ties in distance are broken by gallery row, as in the exact ranking.

        Search many queries in one call: FAISS computes their inner products as one matrix product."""
        if top_k < 1 or candidates < 1:
            raise ValueError(f"top_k and candidates must be >= 1, got {top_k} and {candidates}")
        query = NormalizedFeatures.of(query, "query").to("cpu")
        top_k = min(top_k, len(self))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = self.nprobe
        _, found = self.index.search(search_vectors(query, self.key), min(max(candidates, top_k), len(self)))
        # in gallery order, so that a stable sort of the distances breaks ties by row as the exact ranking does;
        # the -1 of an IVF search that found fewer candidates go last (as row len(self)) and count as infinitely far
        found = torch.from_numpy(found)
        rows = torch.where(found >= 0, found, len(self)).sort(dim=1).values
        missing = rows == len(self)
        chunk = max(1, _RERANK_ROWS // rows.shape[1])
        exact = icg_distance_candidates(query, self.features, rows.masked_fill(missing, 0), chunk_size=chunk)
        distances, order = exact.masked_fill_(missing, torch.inf).sort(dim=1, stable=True)
        distances, order = distances[:, :top_k], order[:, :top_k]
        return SearchResult(distances, rows.gather(1, order).masked_fill_(distances.isinf(), -1))

    def save(self, path: str | Path) -> Path:
        """Writes ``path`` (``.faiss``) and :func:`metadata_path` of it, each atomically; returns ``path``."""
        path = Path(path)
        if path.suffix != ".faiss":
            raise ValueError(f"a gallery index file ends in .faiss, got {path}")
        data = _faiss().serialize_index(self.index)
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "key": self.key,
            "nprobe": self.nprobe,
            "count": len(self),
            "faiss_sha256": hashlib.sha256(data).hexdigest(),
            "paths": self.paths,
            "vectors": self.features.vectors,
            "visibility": self.features.visibility,
            "layout": [[name, list(shape)] for name, shape in self.features.layout],
            "extra": self.extra,
        }
        atomic_write(metadata_path(path), lambda stream: torch.save(metadata, stream))
        return atomic_write(path, lambda stream: stream.write(data.tobytes()))

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> GalleryIndex:
        """Reads an index written by :meth:`save` (or ``icg index``). ``mmap``: the features stay on disk and only
        the candidates' rows are read, so a gallery larger than memory can be searched.

        Raises:
            FileNotFoundError: the ``.faiss`` file or its ``.meta.pt`` does not exist.
            ValueError: the two files were not written together, or the metadata is not an index's.
        """
        path = Path(path)
        meta = metadata_path(path)
        for file, what in ((path, "gallery index"), (meta, f"metadata of {path.name}")):
            if not file.is_file():
                raise FileNotFoundError(
                    f"{what} {file} does not exist (`icg index` writes NAME.faiss and NAME.meta.pt together)"
                )
        metadata = torch.load(meta, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT:
            raise ValueError(f"{meta} is not the metadata of a gallery index")
        if metadata["version"] != _VERSION:
            raise ValueError(f"{meta} has version {metadata['version']}; this icg reads version {_VERSION}")
        data = np.fromfile(path, dtype=np.uint8)
        if hashlib.sha256(data).hexdigest() != metadata["faiss_sha256"]:
            raise ValueError(
                f"{path} and {meta} were not written together (the index file's SHA-256 is not the one its "
                "metadata records): rebuild the index with `icg index`"
            )
        index = _faiss().deserialize_index(data)
        if index.ntotal != metadata["count"]:
            raise ValueError(f"{path} holds {index.ntotal} vectors but {meta} describes {metadata['count']} images")
        layout = tuple((name, tuple(shape)) for name, shape in metadata["layout"])
        features = NormalizedFeatures(metadata["vectors"], metadata["visibility"], layout)
        return cls(
            index, features, metadata["paths"], key=metadata["key"], nprobe=metadata["nprobe"], extra=metadata["extra"]
        )
