"""How well the foreground rules find real pedestrians: OpenCV's sample video ``vtest.avi``, whose static camera gives
a true foreground.

The video (Debian's ``opencv-doc``: ``apt-get download opencv-doc``, then ``dpkg-deb -x``; 795 frames of 768x576, a
static camera over a walkway) is read with OpenCV (the ``video`` extra). The per-pixel temporal median of every
third frame is the background; a pixel whose colour differs from it by more than ``--difference`` (sum over the
three channels) is foreground, cleaned by a 3x3 opening and a 7x7 closing. Connected components of person size are
the boxes (padded by 10% as a detector's crop would be), cut out at 256x128 with their masks. A feature cell is
foreground when at least half of its pixels are, on the grid of the models' maps (16x8, output stride 16).

Boxes are linked across frames into tracklets (intersection over union >= 0.3 with a box of the previous frame,
greedily); a tracklet of ``--min-track`` crops or more is an identity, so the identity contrast can be measured
with tracklets as identities, against reference crops of the other tracklets.

Rows, each with precision, recall and IoU of its foreground cells against the true ones, pooled over all cells, and
the AUC of its scores (threshold-free):

* eq. 3 (the relative norm of ``F_g``; of the backbone at initialisation) at 0.5 and with Otsu's threshold, for
  the backbone of ``--init`` (the ImageNet MobileNetV2 of ``benchmarks/imagenet_weights.py``) and for each
  ``--checkpoint`` (models trained on synthetic pedestrians from that start: BoT, ICG);
* the identity contrast of the same maps (tracklets as identities), split by Otsu's threshold;
* ICG's own foreground ``P_f >= 0.5`` (the AFM's output), for checkpoints that have one;
* a centred Gaussian prior (sigma = a quarter of the width, a third of the height) at 0.5 and Otsu, and chance
  (cells marked at random, as many as the true foreground: precision = recall = the foreground share).

Each row is one JSON line of ``--log`` (``docs/RESULTS.md`` shows them, ``benchmarks/results.py``); ``--picture``
draws crops, true masks and the rules' maps.

    python benchmarks/video_foreground.py --video vtest.avi --init runs/pretrained/mobilenet_v2-imagenet.pt \\
        --checkpoint BoT=runs/video/bot.ckpt --checkpoint ICG=runs/video/icg.ckpt
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from foreground_rule import roc_auc
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_segmentation_masks, make_grid

from icg import ICGModule
from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from icg.model import build_backbone
from icg.parts import identity_foreground, relative_activation, split_foreground
from icg.viz import save_png

SIZE = (256, 128)
GRID = (16, 8)


def read_frames(path: Path) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])  # BGR -> RGB
    if not frames:
        raise SystemExit(f"cannot read {path}: no frame decoded (is it the video of opencv-doc?)")
    return np.stack(frames)


def foreground_masks(frames: np.ndarray, difference: int) -> np.ndarray:
    """``bool [T, H, W]``: pixels that differ from the temporal median background, opened and closed."""
    import cv2

    background = np.median(frames[::3], axis=0).astype(np.int16)
    opening, closing = np.ones((3, 3), np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    masks = []
    for frame in frames:
        mask = (np.abs(frame.astype(np.int16) - background).sum(axis=2) > difference).astype(np.uint8)
        mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, opening), cv2.MORPH_CLOSE, closing)
        masks.append(mask.astype(bool))
    return np.stack(masks)


def person_boxes(mask: np.ndarray, min_height: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the connected components of person shape (taller than wide, at least
    ``min_height`` pixels), padded by 10% and clipped to the frame."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    boxes = []
    for x, y, w, h, area in stats[1:count]:
        if h < min_height or not 1.3 <= h / max(w, 1) <= 5.0 or area < 0.25 * w * h:
            continue
        pad_x, pad_y = int(0.1 * w), int(0.1 * h)
        boxes.append((max(0, x - pad_x), max(0, y - pad_y), min(width, x + w + pad_x), min(height, y + h + pad_y)))
    return boxes


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    inner = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner
    return inner / max(union, 1)


def tracklets(boxes: list[list[tuple[int, ...]]]) -> list[list[int]]:
    """Per frame, the tracklet of each box: greedy linking to the previous frame's box of largest IoU >= 0.3."""
    ids: list[list[int]] = []
    next_id = 0
    for t, frame_boxes in enumerate(boxes):
        taken: set[int] = set()
        frame_ids = []
        for box in frame_boxes:
            best, best_iou = None, 0.3
            if t > 0:
                for previous, track in zip(boxes[t - 1], ids[t - 1]):
                    overlap = iou(box, previous)
                    if overlap >= best_iou and track not in taken:
                        best, best_iou = track, overlap
            if best is None:
                best, next_id = next_id, next_id + 1
            taken.add(best)
            frame_ids.append(best)
        ids.append(frame_ids)
    return ids


def crops(frames: np.ndarray, masks: np.ndarray, args: argparse.Namespace) -> dict[str, Tensor]:
    """The person crops at 256x128 (uint8 ``[N, 3, H, W]``), their true cells (``bool [N, 16, 8]``), their tracklet
    and frame; every ``--frame-step``-th frame, at most ``--max-crops``."""
    boxes = [person_boxes(mask, args.min_height) for mask in masks]
    track_ids = tracklets(boxes)
    images, cells, tracks, frame_index = [], [], [], []
    for t in range(0, len(frames), args.frame_step):
        for (x0, y0, x1, y1), track in zip(boxes[t], track_ids[t]):
            image = torch.from_numpy(np.ascontiguousarray(frames[t, y0:y1, x0:x1])).permute(2, 0, 1)
            mask = torch.from_numpy(masks[t, y0:y1, x0:x1]).float()[None, None]
            images.append(F.interpolate(image[None].float(), SIZE, mode="bilinear", antialias=True)[0])
            cells.append(F.adaptive_avg_pool2d(F.interpolate(mask, SIZE, mode="nearest"), GRID)[0, 0] >= 0.5)
            tracks.append(track)
            frame_index.append(t)
    keep = np.linspace(0, len(images) - 1, min(args.max_crops, len(images))).round().astype(int)
    return {
        "images": torch.stack(images)[keep].round().clamp(0, 255).to(torch.uint8),
        "truth": torch.stack(cells)[keep],
        "tracks": torch.tensor(tracks)[keep],
        "frames": torch.tensor(frame_index)[keep],
    }


def normalized(images: Tensor) -> Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def maps(feature_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """``F`` ``[N, C, 16, 8]`` of the crops, in batches."""
    return torch.cat([feature_fn(normalized(chunk)).float() for chunk in images.split(32)])


def identity_scores(feature_maps: Tensor, tracks: Tensor, min_track: int) -> tuple[Tensor, Tensor]:
    """The identity contrast's foreground (Otsu) and its per-image rescaled scores, tracklets as identities; crops of
    tracklets shorter than ``min_track`` are left out (``valid``)."""
    cells = F.normalize(feature_maps.flatten(2).transpose(1, 2), dim=2)
    counts = torch.bincount(tracks)
    valid = counts[tracks] >= min_track
    foreground = torch.zeros(len(tracks), *GRID, dtype=torch.bool)
    reference_rows = torch.nonzero(valid).flatten()
    reference_rows = reference_rows[torch.linspace(0, len(reference_rows) - 1, 64).round().long().unique()]
    for track in torch.unique(tracks[valid]).tolist():
        rows = torch.nonzero(tracks == track).flatten()
        others = reference_rows[tracks[reference_rows] != track]
        foreground[rows] = identity_foreground(cells[rows], cells[others], GRID, "otsu")
    return foreground, valid


def centre_prior() -> Tensor:
    rows = (torch.arange(GRID[0]) + 0.5) / GRID[0] - 0.5
    cols = (torch.arange(GRID[1]) + 0.5) / GRID[1] - 0.5
    return torch.exp(-(rows[:, None] ** 2) / (2 * (1 / 3) ** 2) - cols[None, :] ** 2 / (2 * (1 / 4) ** 2))


def quality(name: str, predicted: Tensor, truth: Tensor, scores: Tensor | None = None) -> dict:
    predicted, truth = predicted.bool(), truth.bool()
    hits = int((predicted & truth).sum())
    row = {
        "rule": name,
        "cells": int(truth.numel()),
        "share": float(predicted.float().mean()),
        "precision": hits / max(int(predicted.sum()), 1),
        "recall": hits / max(int(truth.sum()), 1),
        "iou": hits / max(int((predicted | truth).sum()), 1),
    }
    if scores is not None:
        row["auc"] = roc_auc(scores.flatten().numpy(), truth.flatten().numpy())
    return row


def rules_of_maps(source: str, feature_maps: Tensor, data: dict[str, Tensor], args: argparse.Namespace) -> list[dict]:
    relative = relative_activation(feature_maps)
    truth = data["truth"]
    rows = [
        quality(f"{source}: eq. 3 at 0.5", split_foreground(relative, 0.5), truth, relative),
        quality(f"{source}: eq. 3, Otsu", split_foreground(relative, "otsu"), truth, relative),
    ]
    contrast, valid = identity_scores(feature_maps, data["tracks"], args.min_track)
    rows.append(quality(f"{source}: identity contrast, Otsu (tracklets)", contrast[valid], truth[valid]))
    return rows


def picture(data: dict[str, Tensor], shown: dict[str, Tensor], path: Path) -> None:
    """One row per crop: the crop, then each map (cells upsampled) tinted over it."""
    count = min(8, len(data["images"]))
    order = torch.linspace(0, len(data["images"]) - 1, count).round().long()
    tiles = []
    for i in order.tolist():
        image = data["images"][i]
        tiles.append(image)
        for cells in shown.values():
            mask = F.interpolate(cells[i][None, None].float(), SIZE, mode="nearest")[0, 0].bool()
            tiles.append(draw_segmentation_masks(image, mask[None], alpha=0.55, colors=[(230, 25, 75)]))
    grid = make_grid(torch.stack(tiles), nrow=1 + len(shown), padding=2, pad_value=255)
    header = Image.new("RGB", (grid.shape[-1], 34), "white")
    draw, font = ImageDraw.Draw(header), ImageFont.load_default(size=11)
    for column, title in enumerate(["crop", *shown]):
        for line, words in enumerate(textwrap.wrap(title, 22)[:2]):
            draw.text((4 + column * (SIZE[1] + 2), 3 + 14 * line), words, fill="black", font=font)
    save_png(torch.cat([TF.pil_to_tensor(header), grid], dim=1), path)
    print(f"picture: {path} (columns: crop, {', '.join(shown)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True, help="vtest.avi of opencv-doc")
    parser.add_argument("--init", type=Path, required=True, help="the ImageNet backbone (imagenet_weights.py)")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=FILE", help="trained models")
    parser.add_argument("--difference", type=int, default=60, help="colour difference to the background (0..765)")
    parser.add_argument("--min-height", type=int, default=60, help="pixels; smaller components are not people")
    parser.add_argument("--frame-step", type=int, default=4)
    parser.add_argument("--max-crops", type=int, default=900)
    parser.add_argument("--min-track", type=int, default=4, help="crops a tracklet needs to be an identity")
    parser.add_argument("--log", type=Path, default=Path(__file__).parent / "video_foreground.jsonl")
    parser.add_argument("--picture", type=Path, default=Path(__file__).parents[1] / "docs" / "video_foreground.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {describe()}")
    frames = read_frames(args.video)
    data = crops(frames, foreground_masks(frames, args.difference), args)
    truth = data["truth"]
    counts = torch.bincount(data["tracks"])
    print(
        f"{len(frames)} frames, {len(truth)} crops of {len(torch.unique(data['tracks']))} tracklets "
        f"({int((counts >= args.min_track).sum())} with {args.min_track}+ crops), true foreground "
        f"{float(truth.float().mean()):.0%} of the cells"
    )
    rows = [
        {
            "rule": "chance (as many cells as the truth)",
            **{k: float(truth.float().mean()) for k in ("precision", "recall")},
        },
    ]
    rows[0]["iou"] = rows[0]["precision"] / (2 - rows[0]["precision"])
    prior = centre_prior().expand_as(truth.float())
    rows += [
        quality("centre prior at 0.5", split_foreground(prior, 0.5), truth, prior),
        quality("centre prior, Otsu", split_foreground(prior, "otsu"), truth, prior),
    ]
    shown = {"truth": truth}
    init = build_backbone(args.backbone, weights=str(args.init)).eval()
    initial = maps(init, data["images"])
    rows += rules_of_maps("ImageNet init", initial, data, args)
    shown["eq. 3 Otsu, ImageNet init"] = split_foreground(relative_activation(initial), "otsu").bool()
    shown["identity contrast, ImageNet init"] = identity_scores(initial, data["tracks"], args.min_track)[0]
    for entry in args.checkpoint:
        name, _, file = entry.partition("=")
        module = ICGModule.load_from_checkpoint(file, map_location="cpu", weights_only=True, weights=None).eval()
        trained = maps(module.feature_maps, data["images"])
        rows += rules_of_maps(name, trained, data, args)
        with torch.no_grad():
            output = (
                torch.cat([module(normalized(chunk)).fg_logits for chunk in data["images"].split(32)])
                if (module.net.use_afm)
                else None
            )
        if output is not None:
            probability = output.softmax(dim=1)[:, 1]
            rows.append(quality(f"{name}: the AFM's P_f >= 0.5", probability >= 0.5, truth, probability))
            shown[f"{name}: P_f"] = probability >= 0.5
    for row in rows:
        row.update(video=args.video.name, crops=len(truth), truth_share=float(truth.float().mean()))
        print(
            f"{row['rule']:55s} precision {row['precision']:.2f} recall {row['recall']:.2f} IoU {row['iou']:.2f}"
            + (f" AUC {row['auc']:.2f}" if "auc" in row else "")
        )
    args.log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    picture(data, shown, args.picture)


if __name__ == "__main__":
    main()
