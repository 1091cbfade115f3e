"""Pictures of what the model does: part maps, ranked retrievals, the FSG adjacency (paper Fig. 8, 10-14).

Every function returns a uint8 image tensor ``[3, H, W]`` (show it in a notebook with
``torchvision.transforms.v2.functional.to_pil_image``) and :func:`save_png` writes one atomically.
:class:`VisualizationCallback` draws all three at the end of each validation and logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_segmentation_masks, make_grid

from icg.contracts import PicturedModel, ReIDData, require
from icg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_images
from icg.features import ReIDFeatures
from icg.files import atomic_write
from icg.retrieval import icg_distance

# background (unused) then up to 12 parts: distinct, colour-blind-friendly-ish hues, top part first
PART_COLORS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]
MATCH, MISMATCH, QUERY = (40, 180, 40), (220, 30, 30), (60, 60, 60)


def to_uint8(images: Tensor) -> Tensor:
    """Undoes the ImageNet normalisation of a float batch ``[B, 3, H, W]`` (uint8 input passes through)."""
    if images.dtype == torch.uint8:
        return images
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def _overlay(image: Tensor, labels: Tensor, num_parts: int, alpha: float = 0.55) -> Tensor:
    """Colours each part 1..K of a label map (upsampled with nearest to the image) over ``image`` [3, H, W]."""
    labels = TF.resize(labels[None].float(), list(image.shape[-2:]), TF.InterpolationMode.NEAREST)[0].long()
    masks = torch.stack([labels == k for k in range(1, num_parts + 1)])
    return draw_segmentation_masks(image.cpu(), masks.cpu(), alpha=alpha, colors=PART_COLORS[1 : num_parts + 1])


def _heat(values: Tensor, size: Sequence[int]) -> Tensor:
    """A map of values in [0, 1] ``[B, h, w]`` as grey images ``[B, 3, H, W]`` (black 0, white 1)."""
    heat = TF.resize(values[:, None].float().cpu(), list(size), TF.InterpolationMode.NEAREST)
    return (heat.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)


def _strip(width: int, height: int, draw: Callable[[ImageDraw.ImageDraw], int | None]) -> Tensor:
    """A white ``[3, height, width]`` strip with something drawn on it, cut to the height ``draw`` returns."""
    image = Image.new("RGB", (width, height), "white")
    used = draw(ImageDraw.Draw(image))
    return TF.pil_to_tensor(image)[:, : used or height]


def part_maps(
    images: Tensor,
    *,
    num_parts: int,
    pseudo_labels: Tensor | None = None,
    predicted_parts: Tensor | None = None,
    foreground: Tensor | None = None,
    attention: Tensor | None = None,
    min_width: int = 128,
) -> Tensor:
    """One row per image, with column titles and a colour key: image | pseudo-labels | predicted parts
    | foreground probability | spatial attention. Columns whose input is ``None`` are left out.

    Args:
        images: ``[B, 3, H, W]``, normalised float or uint8.
        num_parts: K.
        pseudo_labels: ``[B, h, w]`` clustering labels (0 background, 1..K top to bottom).
        predicted_parts: ``[B, h, w]`` the part the model assigns to each cell (0 background; the network output's
            ``part_map``).
        foreground: ``[B, h, w]`` foreground probability ``P_f`` in [0, 1].
        attention: ``[B, h, w]`` the AFM's spatial attention ``S_A``, scaled to [0, 1].
        min_width: tiles narrower than this are enlarged by a whole factor (nearest), so that small inputs
            (128x64) stay readable and the titles fit.
    """
    images = to_uint8(images).cpu()
    factor = max(1, -(-min_width // images.shape[-1]))
    if factor > 1:
        images = TF.resize(images, [images.shape[-2] * factor, images.shape[-1] * factor], TF.InterpolationMode.NEAREST)
    size = images.shape[-2:]
    columns = [("image", images)]
    if pseudo_labels is not None:
        overlays = [_overlay(image, labels, num_parts) for image, labels in zip(images, pseudo_labels)]
        columns.append(("pseudo-labels", torch.stack(overlays)))
    if predicted_parts is not None:
        overlays = [_overlay(image, labels, num_parts) for image, labels in zip(images, predicted_parts)]
        columns.append(("predicted parts", torch.stack(overlays)))
    if foreground is not None:
        columns.append(("foreground P_f", _heat(foreground, size)))
    if attention is not None:
        columns.append(("attention S_A", _heat(attention, size)))
    padding = 2
    tiles = torch.stack([column for _, column in columns], dim=1).flatten(0, 1)
    grid = make_grid(tiles, nrow=len(columns), padding=padding, pad_value=255)
    font = ImageFont.load_default(size=13)
    pitch = size[-1] + padding

    def titles(draw: ImageDraw.ImageDraw) -> None:
        for c, (title, _) in enumerate(columns):
            left = padding + c * pitch + (size[-1] - draw.textlength(title, font=font)) / 2
            draw.text((left, 4), title, fill="black", font=font)

    def key(draw: ImageDraw.ImageDraw) -> int:
        x, y = padding + 2, 5
        for k in range(1, num_parts + 1):
            label = f"{k}" + (" top" if k == 1 else " bottom" if k == num_parts else "")
            width = 18 + draw.textlength(label, font=font) + 10
            if x + width > grid.shape[-1] and x > padding + 2:
                x, y = padding + 2, y + 20
            draw.rectangle((x, y, x + 14, y + 14), fill=PART_COLORS[k], outline="black")
            draw.text((x + 18, y), label, fill="black", font=font)
            x += width
        draw.text((padding + 2, y + 20), "part colours; none = background", fill="black", font=font)
        return y + 40

    strips = [_strip(grid.shape[-1], 22, titles), grid]
    if pseudo_labels is not None or predicted_parts is not None:
        strips.append(_strip(grid.shape[-1], 400, key))
    return torch.cat(strips, dim=1)


def _bordered(image: Tensor, color: tuple[int, int, int], width: int = 3) -> Tensor:
    framed = torch.tensor(color, dtype=torch.uint8)[:, None, None].expand(3, *image.shape[-2:]).clone()
    framed[:, width:-width, width:-width] = image[:, width:-width, width:-width]
    return framed


def ranked_lists(queries: Tensor, galleries: Tensor, correct: Tensor | None = None, *, gap: int = 8) -> Tensor:
    """One row per query: the query (grey frame) then its top-k gallery images, green when correct, red when not.

    Args:
        queries: ``[Q, 3, H, W]`` normalised float or uint8.
        galleries: ``[Q, k, 3, H, W]`` the ranked gallery images of each query, best first.
        correct: ``[Q, k]`` bool (or ``None``: no frames for unknown identities).
    """
    queries, galleries = to_uint8(queries).cpu(), to_uint8(galleries.flatten(0, 1)).cpu().view_as(galleries)
    rows = []
    for q, query in enumerate(queries):
        tiles = [_bordered(query, QUERY)]
        for rank, image in enumerate(galleries[q]):
            if correct is None:
                tiles.append(image)
            else:
                tiles.append(_bordered(image, MATCH if bool(correct[q, rank]) else MISMATCH))
        row = make_grid(torch.stack(tiles), nrow=len(tiles), padding=2, pad_value=255)
        # a white gap between the query and its ranked list
        width = query.shape[-1] + 4
        rows.append(
            torch.cat(
                [row[:, :, :width], torch.full((3, row.shape[1], gap), 255, dtype=torch.uint8), row[:, :, width:]],
                dim=2,
            )
        )
    return torch.cat(rows, dim=1)


def adjacency_heatmap(adjacency: Tensor, *, cell: int = 44) -> Tensor:
    """The learned FSG adjacency ``[K, K]`` (values in [0, 1]) as a heat map with the values written in."""
    values = adjacency.detach().float().cpu().clamp(0, 1)
    k = len(values)
    image = Image.new("RGB", (cell * (k + 1), cell * (k + 1)), "white")
    draw = ImageDraw.Draw(image)
    for i in range(k):
        draw.text((cell * (i + 1) + cell // 3, cell // 3), f"P{i + 1}", fill="black")
        draw.text((cell // 4, cell * (i + 1) + cell // 3), f"P{i + 1}", fill="black")
        for j in range(k):
            v = float(values[i, j])
            # white (0) to dark blue (1)
            color = (int(255 * (1 - v)), int(255 * (1 - 0.7 * v)), int(255 - 100 * v))
            box = (cell * (j + 1), cell * (i + 1), cell * (j + 2) - 1, cell * (i + 2) - 1)
            draw.rectangle(box, fill=color)
            draw.text((box[0] + 6, box[1] + cell // 3), f"{v:.2f}", fill="white" if v > 0.55 else "black")
    return TF.pil_to_tensor(image)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Writes a uint8 ``[3, H, W]`` image as PNG atomically (see :func:`icg.files.atomic_write`)."""
    return atomic_write(path, lambda stream: TF.to_pil_image(image).save(stream, format="PNG"))


def top_k_matches(
    distances: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    q_camids: Tensor,
    g_camids: Tensor,
    k: int = 10,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` gallery positions per query under the standard protocol (the same id seen by the same camera
    is not shown), and whether each is the query's identity. Returns ``([Q, k] long, [Q, k] bool)``."""
    excluded = (q_pids[:, None] == g_pids[None]) & (q_camids[:, None] == g_camids[None])
    order = distances.masked_fill(excluded, float("inf")).argsort(dim=1, stable=True)[:, :k]
    return order, g_pids[order] == q_pids[:, None]


def _ids(records: Sequence, field: str) -> Tensor:
    return torch.tensor([getattr(record, field) for record in records])


class VisualizationCallback(Callback):
    """Draws part maps, ranked retrievals and the FSG adjacency after each validation (global rank 0).

    Pictures go to ``<log dir>/pictures/epoch<E>_{parts,ranking,adjacency}.png`` and to every logger that takes
    images (TensorBoard, Weights & Biases).

    Args:
        num_images: training images in the part-map picture.
        num_queries: queries in the ranking picture.
        top_k: gallery images shown per query.
        gallery_size: gallery images ranked for the picture (all of the shown queries' identities, then others).
    """

    def __init__(self, num_images: int = 6, num_queries: int = 4, top_k: int = 10, gallery_size: int = 300) -> None:
        self.num_images, self.num_queries, self.top_k, self.gallery_size = num_images, num_queries, top_k, gallery_size
        self.saved: list[Path] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.datamodule is None:
            return
        require(pl_module, PicturedModel, "VisualizationCallback")
        require(trainer.datamodule, ReIDData, "VisualizationCallback")
        # trainer.log_dir broadcasts under DDP: every rank must ask for it
        self._draw(trainer, pl_module, Path(trainer.log_dir or trainer.default_root_dir) / "pictures")

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> None:
        pictures = {"parts": self._part_maps(trainer, pl_module), "ranking": self._ranking(trainer, pl_module)}
        graph = getattr(pl_module.net, "graph", None)
        if graph is not None:
            pictures["adjacency"] = adjacency_heatmap(graph.adjacency)
        for name, image in pictures.items():
            self.saved.append(save_png(image, folder / f"epoch{trainer.current_epoch:03d}_{name}.png"))
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"pictures/{name}", image, trainer.global_step)
                elif isinstance(logger, WandbLogger):
                    logger.log_image(f"pictures/{name}", [TF.to_pil_image(image)], step=trainer.global_step)

    def _load(self, datamodule, records: Sequence, device: torch.device) -> Tensor:
        return load_images([record.path for record in records], datamodule.eval_transform).to(device)

    @torch.no_grad()
    def _part_maps(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        records = trainer.datamodule.train_records
        first_of_identity = list({r.pid: i for i, r in reversed(list(enumerate(records)))}.values())
        indices = sorted(first_of_identity)[: self.num_images]
        images = self._load(trainer.datamodule, [records[i] for i in indices], pl_module.device)
        output = pl_module(images)
        fg = output.fg_logits.softmax(1)[:, 1] if output.fg_logits is not None else None
        attention = pl_module.net.attention
        if attention is not None:  # mean 1 per image: shown relative to the image's largest weight
            attention = attention(output.backbone_map)[:, 0]
            attention = attention / attention.flatten(1).amax(dim=1)[:, None, None]
        labels = None
        if output.part_logits is not None and len(pl_module.part_labels):
            labels = pl_module.part_labels.labels[torch.tensor(indices, device=pl_module.device)]
        num_parts = pl_module.part_labels.num_parts
        return part_maps(
            images,
            num_parts=num_parts,
            pseudo_labels=labels,
            predicted_parts=output.part_map,
            foreground=fg,
            attention=attention,
        )

    @torch.no_grad()
    def _ranking(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        datamodule = trainer.datamodule
        query, gallery = datamodule.dataset.query, datamodule.dataset.gallery
        chosen = list({r.pid: r for r in query}.values())[: self.num_queries]
        pids = {r.pid for r in chosen}
        ordered = [r for r in gallery if r.pid in pids] + [r for r in gallery if r.pid not in pids]
        shown = ordered[: max(self.gallery_size, self.top_k)]
        q_features = pl_module.extract(self._load(datamodule, chosen, pl_module.device))
        g_features = [
            pl_module.extract(self._load(datamodule, shown[i : i + 64], pl_module.device))
            for i in range(0, len(shown), 64)
        ]
        distances = icg_distance(q_features, ReIDFeatures.cat(g_features)).cpu()
        order, correct = top_k_matches(
            distances,
            _ids(chosen, "pid"),
            _ids(shown, "pid"),
            _ids(chosen, "camid"),
            _ids(shown, "camid"),
            k=min(self.top_k, len(shown)),
        )
        images = self._load(datamodule, chosen, torch.device("cpu"))
        ranked = torch.stack([self._load(datamodule, [shown[i] for i in row], torch.device("cpu")) for row in order])
        return ranked_lists(images, ranked, correct)
