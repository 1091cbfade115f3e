"""Retrieval with ICG features, one module per job: the distance of eq. 15 (:mod:`icg.retrieval.distance`),
k-reciprocal re-ranking (:mod:`icg.retrieval.rerank`) and a FAISS gallery index re-ranked by eq. 15
(:mod:`icg.retrieval.index`). The features record they read,
:class:`~icg.features.ReIDFeatures`, lives in :mod:`icg.features`, so that the model that fills it does not
depend on retrieval; it is re-exported here for ``from icg.retrieval import ReIDFeatures``."""

from icg.features import ReIDFeatures
from icg.retrieval.distance import (
    DistanceRows,
    FeatureInput,
    NormalizedFeatures,
    icg_distance,
    icg_distance_candidates,
    icg_distance_rows,
)
from icg.retrieval.index import GalleryIndex, SearchResult
from icg.retrieval.rerank import k_reciprocal_rerank

__all__ = [
    "DistanceRows",
    "FeatureInput",
    "GalleryIndex",
    "NormalizedFeatures",
    "ReIDFeatures",
    "SearchResult",
    "icg_distance",
    "icg_distance_candidates",
    "icg_distance_rows",
    "k_reciprocal_rerank",
]
