"""Using a trained model on folders of images: write their features (``icg predict``) or rank a query folder
against a gallery folder and save the picture (``icg rank``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from icg.contracts import PredictionData, require
from icg.data.transforms import eval_transform, image_files, load_images
from icg.features import NonFiniteFeaturesError, ReIDFeatures, check_finite_features
from icg.files import atomic_write
from icg.module import ICGModule
from icg.retrieval import icg_distance
from icg.viz import ranked_lists, save_png, top_k_matches


def save_atomically(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`icg.files.atomic_write` (a temporary file beside ``path``, renamed into place)."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def features_to_dict(features: ReIDFeatures) -> dict[str, torch.Tensor]:
    """The components of a :class:`ReIDFeatures` that are present, on the CPU."""
    return {name: value.cpu() for name, value in features.items()}


class FeatureWriter(BasePredictionWriter):
    """Writes the features of ``icg predict`` to ``output`` (default ``<log dir>/features.pt``).

    The file holds a dict: ``paths`` (list of image files), ``pids``/``camids`` (-1 when unknown) and one
    tensor per feature component (``global_feat``, ``foreground``, ``parts`` [N, K, C], ``graph``,
    ``visibility`` [N, K]), rows in the order of ``paths``. Under DDP each rank writes its own shard,
    ``features.rank<R>.pt``.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        index = torch.cat([batch["index"] for batch in batches]).cpu()
        features = ReIDFeatures.cat([batch["features"] for batch in batches])[index.argsort()]
        require(trainer.datamodule, PredictionData, "FeatureWriter")
        records = trainer.datamodule.predict_records
        positions = index.sort().values.tolist()
        check_finite_features(features, "icg predict", [records[i].path for i in positions])
        path = Path(self.output or Path(trainer.log_dir or trainer.default_root_dir) / "features.pt")
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}.pt")
        save_atomically(
            {
                "paths": [records[i].path for i in positions],
                "pids": torch.tensor([records[i].pid for i in positions]),
                "camids": torch.tensor([records[i].camid for i in positions]),
                **features_to_dict(features),
            },
            path,
        )
        shards = " (rank 0's shard; each rank writes its own)" if trainer.world_size > 1 else ""
        rank_zero_info(f"FeatureWriter: features of {len(positions)} images written to {path}{shards}")


_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _ids_from_names(paths: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Person and camera ids from Market-style names (``0002_c1...``), or ``None`` if any name differs."""
    matches = [_MARKET_NAME.match(path.name) for path in paths]
    if not all(matches):
        return None
    return torch.tensor([int(m.group(1)) for m in matches]), torch.tensor([int(m.group(2)) for m in matches])


def load_for_inference(ckpt_path: str | Path, *, device: str | torch.device = "cpu") -> ICGModule:
    """The module of a checkpoint written by ``icg fit``, in eval mode on ``device``, for inference.

    Read with ``weights_only=True`` (a checkpoint from elsewhere must not be able to run code when it is read) and
    ``weights=None`` (the checkpoint holds every weight: no ImageNet download). A checkpoint of other training
    identities is accepted (its classifiers are not needed).
    """
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    module = ICGModule.load_from_checkpoint(ckpt_path, map_location=device, weights_only=True, weights=None)
    return module.eval()


@torch.no_grad()
def embed_folder(module: ICGModule, folder: str | Path, *, batch_size: int = 64) -> tuple[list[Path], ReIDFeatures]:
    """The image files of ``folder`` (recursive, sorted) and their features under ``module``."""
    files = image_files(folder)
    transform = eval_transform(module.hparams.image_size)
    batches = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = load_images(chunk, transform)
        try:
            batches.append(module.extract(images.to(module.device)))
        except NonFiniteFeaturesError as error:  # name the files, not the rows of a batch
            raise error.naming(f"embedding {folder}", [str(path) for path in chunk]) from None
    return files, ReIDFeatures.cat(batches)


def rank_folders(
    *,
    ckpt_path: str,
    query: str,
    gallery: str,
    output: str = "ranking.png",
    top_k: int = 10,
    max_queries: int = 8,
    batch_size: int = 64,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
) -> Path:
    """Rank every image of ``gallery`` for each image of ``query`` with a checkpoint; save a picture of the top-k.

    When all file names follow Market-1501's ``<pid>_c<camera>...`` pattern, the standard protocol applies
    (same id and same camera not shown) and correct matches are framed green, wrong ones red; otherwise the
    list is shown unframed. The ranking of every query is also printed.

    Args:
        ckpt_path: a checkpoint written by ``icg fit``.
        query: folder of query images.
        gallery: folder of gallery images.
        output: PNG file to write.
        top_k: gallery images per query.
        max_queries: queries drawn in the picture (all are printed).
        batch_size: images per forward pass.
        device: ``cpu`` or ``cuda``.
    """
    module = load_for_inference(ckpt_path, device=device)
    q_files, q_features = embed_folder(module, query, batch_size=batch_size)
    g_files, g_features = embed_folder(module, gallery, batch_size=batch_size)
    distances = icg_distance(q_features, g_features).cpu()
    q_ids, g_ids = _ids_from_names(q_files), _ids_from_names(g_files)
    k = min(top_k, len(g_files))
    if q_ids is not None and g_ids is not None:
        order, correct = top_k_matches(distances, q_ids[0], g_ids[0], q_ids[1], g_ids[1], k=k)
    else:
        order, correct = distances.argsort(dim=1, stable=True)[:, :k], None
    for q, row in enumerate(order):
        print(f"{q_files[q].name}: " + " ".join(g_files[i].name for i in row))
    transform = eval_transform(module.hparams.image_size)
    shown = range(min(max_queries, len(q_files)))
    picture = ranked_lists(
        load_images([q_files[q] for q in shown], transform),
        torch.stack([load_images([g_files[i] for i in order[q]], transform) for q in shown]),
        None if correct is None else correct[: len(shown)],
    )
    path = save_png(picture, output)
    print(f"ranking picture written to {path}")
    return path
