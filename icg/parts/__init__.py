"""Part pseudo-labelling (paper section 2.2), one job per module:

* :mod:`.foreground` -- the foreground rules: eq. 3's activation or the identity contrast, split by a share or Otsu;
* :mod:`.kmeans` -- spherical K-means with faiss, on the CPU or one GPU;
* :mod:`.labelling` -- the streaming pass: each identity's foreground cells clustered into ``K`` parts, top to bottom;
* :mod:`.shared` -- the option of part centroids shared by every identity (one K-means over all, with the height);
* :mod:`.labels` -- :class:`PartLabels`, where the labels live (module buffers) and how a training batch reads them;
* :mod:`.callback` -- :class:`PartClustering`, the Lightning callback that relabels at epoch start.
"""

from icg.parts.callback import PartClustering
from icg.parts.foreground import (
    REFERENCE_IMAGES,
    FgSignal,
    FgThreshold,
    check_fg_signal,
    check_fg_threshold,
    foreground_target,
    identity_contrast,
    identity_foreground,
    otsu_thresholds,
    relative_activation,
    split_foreground,
)
from icg.parts.kmeans import SphericalKMeans, kmeans_plusplus, parts_top_to_bottom
from icg.parts.labelling import ClusteringResult, IdentityCells, cluster_part_labels, stream_identities
from icg.parts.labels import IGNORE_INDEX, PartLabels, cell_centers, cell_sources
from icg.parts.shared import HEIGHT_WEIGHT, height_points, shared_part_centroids

__all__ = [
    "HEIGHT_WEIGHT",
    "IGNORE_INDEX",
    "REFERENCE_IMAGES",
    "ClusteringResult",
    "FgSignal",
    "FgThreshold",
    "IdentityCells",
    "PartClustering",
    "PartLabels",
    "SphericalKMeans",
    "cell_centers",
    "cell_sources",
    "check_fg_signal",
    "check_fg_threshold",
    "cluster_part_labels",
    "foreground_target",
    "height_points",
    "identity_contrast",
    "identity_foreground",
    "kmeans_plusplus",
    "otsu_thresholds",
    "parts_top_to_bottom",
    "relative_activation",
    "shared_part_centroids",
    "split_foreground",
    "stream_identities",
]
