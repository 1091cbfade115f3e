"""Retrieval with ICG features, one module per job: the distance of eq. 15 (:mod:`icg.retrieval.distance`) and
k-reciprocal re-ranking (:mod:`icg.retrieval.rerank`). The features record they read,
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
from icg.retrieval.rerank import k_reciprocal_rerank

__all__ = [
    "DistanceRows",
    "FeatureInput",
    "NormalizedFeatures",
    "ReIDFeatures",
    "icg_distance",
    "icg_distance_candidates",
    "icg_distance_rows",
    "k_reciprocal_rerank",
]
