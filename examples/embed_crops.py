"""Person crops in, features out: :class:`icg.Embedder` as a tracker or a search service uses it.

A multi-object tracker crops every detected person out of a frame (numpy ``H x W x 3`` uint8 arrays) and asks a
re-ID model for one feature per crop, to match the detections of this frame with the tracks of earlier ones.
The embedder takes those crops as they are (any size; ``channels="bgr"`` for OpenCV frames), resizes and
normalises them as evaluation does, runs them in batches and returns L2-normalised features: the global feature,
which a tracker's cosine matching reads, and for ICG the parts and their visibility, which the ICG distance
(eq. 15) compares. Here the crops are the synthetic pedestrians' test images, and the example ranks gallery
crops for query crops both ways.

Run it with a checkpoint or a file of ``icg export``::

    python examples/embed_crops.py --model runs/synthetic/.../best.ckpt     # or model.onnx, model.pt

Without ``--model`` it first trains a tiny ICG on synthetic pedestrians (a minute on a CPU) and exports it to
ONNX (TorchScript when onnxruntime is not installed), so that the crops go through a deployable file.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image

from icg import Embedder, SyntheticDataModule, build_module, export_onnx, export_torchscript, icg_distance


def train_and_export(data: SyntheticDataModule, folder: Path, epochs: int) -> Path:
    """A tiny ICG trained on ``data``, written as a deployable file in ``folder``."""
    module = build_module(data, backbone="resnet18", weights=None, lr=1e-3, warmup_epochs=1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        return export_onnx(module, folder / "model.onnx")
    return export_torchscript(module, folder / "model.pt")


def read_crops(folder: Path) -> tuple[list[np.ndarray], torch.Tensor]:
    """The images of a Market-style folder as numpy crops, and their person ids (``<pid>_c<camera>...``)."""
    files = sorted(folder.glob("*.jpg"))
    crops = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    return crops, torch.tensor([int(path.name.split("_")[0]) for path in files])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a checkpoint or an exported file (default: train a tiny one)")
    parser.add_argument("--root", default="data/synthetic-crops", help="synthetic pedestrians (made if absent)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the tiny model")
    parser.add_argument("--shown", type=int, default=4, help="queries whose ranking is printed")
    args = parser.parse_args()

    data = SyntheticDataModule(
        args.root,
        num_train_ids=16,
        num_test_ids=10,
        image_size=(64, 32),
        num_identities=4,
        num_instances=4,
        num_workers=0,
    )
    data.prepare_data()
    model = args.model or train_and_export(data, Path(args.root), args.epochs)
    embedder = Embedder(model, batch_size=32)
    print(f"model {model}: images resized to {embedder.image_size}")

    query_crops, query_ids = read_crops(Path(args.root) / "query")
    gallery_crops, gallery_ids = read_crops(Path(args.root) / "bounding_box_test")
    query, gallery = embedder(query_crops), embedder(gallery_crops)  # batched inside; rows in crop order
    print(
        f"{len(query_crops)} query crops, {len(gallery_crops)} gallery crops: features {query.global_feat.shape[1]}-d"
    )

    # a tracker's matching: cosine similarity of the global features (unit vectors, so a matrix product)
    cosine_best = (query.global_feat @ gallery.global_feat.T).argmax(dim=1)
    # the ICG distance of eq. 15: global, foreground, graph and the parts visible in both crops
    distances = icg_distance(query, gallery)
    ranking = distances.argsort(dim=1, stable=True)
    for row in range(min(args.shown, len(query_crops))):
        top = ranking[row, :5]
        marks = " ".join(f"{gallery_ids[i].item()}{'+' if gallery_ids[i] == query_ids[row] else '-'}" for i in top)
        print(f"query {row} (person {query_ids[row].item()}): top 5 {marks}")
    for name, best in (("global cosine", cosine_best), ("ICG distance", ranking[:, 0])):
        print(f"rank-1 by {name}: {(gallery_ids[best] == query_ids).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
