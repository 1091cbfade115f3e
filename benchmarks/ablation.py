"""Ablation study on synthetic pedestrians: BoT, +AFM, +PPC, +PPC+FSG, full ICG (paper Table 2), full ICG for
K = 3..7 parts (Table 3), the foreground of eq. 16 instead of eq. 8, the foreground rules (eq. 3 at 0.5 or Otsu's
threshold, the identity contrast for training from scratch), the part classifier's options (refit, height
input), K-means on the features and the cell's height, and ICG trained on the true part masks; the same data,
budget and seeds for every row; writes benchmarks/RESULTS.md.

Every run uses the `make demo` recipe (ResNet-18, 128x64, PK 8 x 4, AdamW, 8 epochs, part clustering every
2 epochs; the learning rates of ``recipe_for``) on one synthetic dataset (occlusion and misalignment on), then
evaluates on its query/gallery. The backbone starts from scratch or, with ``--init FILE``, from a stand-in for
ImageNet weights (``benchmarks/pretrain_synthetic.py``: BoT trained on a disjoint synthetic population), as the
paper starts every model from ImageNet. Besides mAP and Rank-1 each run records what explains them, against the
generator's true part masks: the pseudo-labels of the last clustering (foreground precision / recall, part purity), the
parts predicted on the test images (visible parts per image, foreground precision, purity, top-to-bottom
order), how far the FSG adjacency moved from its initial 0.5, the mAP of the global and foreground features
alone and of eq. 15 without the part terms (what each branch contributes to retrieval), and the AUC of the cell
norms as a person detector (what the foreground rule of eq. 3 can find).

    python benchmarks/pretrain_synthetic.py                                   # the stand-in, once
    python benchmarks/ablation.py --init runs/pretrained/resnet18-synthetic.pt
    python benchmarks/ablation.py --runs BoT ICG-K6                           # from scratch
    python benchmarks/ablation.py --seeds 0 --runs BoT ICG-K6 --epochs 2      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from foreground_rule import roc_auc
from machine import describe  # benchmarks/machine.py; scripts run with benchmarks/ on sys.path
from quiet_trainer import quiet_trainer
from truth import NUM_TRUE_LABELS, label_quality, purity_within_identities, true_part_cells

from icg import ICGModule, PartClustering, ReIDFeatures, SyntheticDataModule, evaluate_rank, icg_distance
from icg.model import relative_activation, to_reid_features


@dataclass(frozen=True)
class Variant:
    use_afm: bool = True
    use_ppc: bool = True
    use_fsg: bool = True
    num_parts: int = 6
    foreground_from_parts: bool = True
    true_parts: bool = False  # train on the generator's part masks instead of K-means labels
    fg_threshold: float | str | None = None  # the foreground rule; None: --fg-threshold
    fg_signal: str = "activation"  # or "identity": what recurs in an identity's images (icg.model.identity_contrast)
    part_assignment: str = "argmax"  # or "foreground": background against the union of the parts first (eq. 8)
    refit_classifier: bool = False  # the part classifier set to the least-squares fit of each clustering's labels
    part_position: bool = False  # the part classifier also reads the cell's row
    height_weight: float = 0.0  # the cell's row joins its feature in K-means (PartClustering(height_weight=...))
    shared_parts: bool = False  # one K-means over all identities (PartClustering(shared_parts=True))
    refit_method: str = "least_squares"  # or "discriminant": the refit by LDA (PartClustering(refit_method=...))


HEIGHT_WEIGHT = 2.0  # chosen on the development population (seed 2000): 1, 2, 4 gave test purity 73, 76, 74%
IDENTITY = Variant(fg_threshold="otsu", fg_signal="identity", part_assignment="foreground")
RUNS = {
    "BoT": Variant(use_afm=False, use_ppc=False, use_fsg=False),
    "+AFM": Variant(use_ppc=False, use_fsg=False),
    "+PPC": Variant(use_afm=False, use_fsg=False),
    "+PPC+FSG": Variant(use_afm=False),  # FSG needs PPC's parts
    **{f"ICG-K{k}": Variant(num_parts=k) for k in range(3, 8)},
    "ICG-K6-eq16": Variant(foreground_from_parts=False),  # P_f from the AFM's own head instead of 1 - P_0
    "ICG-K6-otsu": Variant(fg_threshold="otsu"),  # eq. 3 with Otsu's per-image threshold instead of 0.5
    # from scratch, where the norms mark the background: the foreground from the identity contrast
    "ICG-K6-identity": IDENTITY,
    # the part classifier refitted to every clustering's labels (PartClustering(refit_classifier=True))
    "ICG-K6-otsu-refit": Variant(fg_threshold="otsu", refit_classifier=True),
    "ICG-K6-identity-refit": replace(IDENTITY, refit_classifier=True),
    # the part classifier also reads the cell's height (ICGModule(part_position=True))
    "ICG-K6-identity-position": replace(IDENTITY, part_position=True),
    "ICG-K6-identity-refit-position": replace(IDENTITY, refit_classifier=True, part_position=True),
    # K-means also weighs the cell's row, so that label k is alike across identities
    "ICG-K6-identity-refit-position-height": replace(
        IDENTITY, refit_classifier=True, part_position=True, height_weight=HEIGHT_WEIGHT
    ),
    # one K-means over all identities (with the height), so that label k is one cluster for every identity
    "ICG-K6-identity-refit-position-shared": replace(
        IDENTITY, refit_classifier=True, part_position=True, height_weight=HEIGHT_WEIGHT, shared_parts=True
    ),
    # the refit by the linear discriminant instead of least squares
    "ICG-K6-identity-lda-position-shared": replace(
        IDENTITY,
        refit_classifier=True,
        refit_method="discriminant",
        part_position=True,
        height_weight=HEIGHT_WEIGHT,
        shared_parts=True,
    ),
    "ICG-true-parts": Variant(num_parts=NUM_TRUE_LABELS - 1, true_parts=True),  # head .. bag: K = 5
}
TABLES = {
    "Modules (paper Table 2; K = 6)": ["BoT", "+AFM", "+PPC", "+PPC+FSG", "ICG-K6"],
    "Number of parts (paper Table 3; full ICG)": [f"ICG-K{k}" for k in range(3, 8)],
    "Foreground of eq. 8 (union of the parts, default) against eq. 16 (the AFM's own head)": ["ICG-K6", "ICG-K6-eq16"],
    "Foreground rule: eq. 3 at the paper's fixed threshold against Otsu's per-image threshold": [
        "ICG-K6",
        "ICG-K6-otsu",
    ],
    "Foreground signal: the norms of eq. 3 against the identity contrast (with the foreground-first assignment)": [
        "BoT",
        "ICG-K6",
        "ICG-K6-otsu",
        "ICG-K6-identity",
    ],
    "Part classifier: trained by its losses only, or refitted to each clustering's labels (least squares), "
    "and reading the cell's height": [
        "BoT",
        "ICG-K6-otsu",
        "ICG-K6-otsu-refit",
        "ICG-K6-identity",
        "ICG-K6-identity-refit",
        "ICG-K6-identity-position",
        "ICG-K6-identity-refit-position",
    ],
    "Pseudo-labels: K-means per identity on the features (the paper's) or on the features and the cell's height, "
    "or one K-means over all identities": [
        "BoT",
        "ICG-K6-identity-refit-position",
        "ICG-K6-identity-refit-position-height",
        "ICG-K6-identity-refit-position-shared",
    ],
    "Refit of the part classifier to the shared labels: least squares or the linear discriminant": [
        "BoT",
        "ICG-K6-identity-refit-position-shared",
        "ICG-K6-identity-lda-position-shared",
    ],
    "Diagnosis: ICG trained on the true part masks (K = 5) instead of its pseudo-labels": ["ICG-K6", "ICG-true-parts"],
}
COLUMNS = [  # key, header, format
    ("mAP", "mAP", "pm"),
    ("rank1", "Rank-1", "pm"),
    ("mAP_global", "mAP: global", "pm"),
    ("mAP_foreground", "mAP: foreground", "pm"),
    ("mAP_fixed_terms", "mAP: eq. 15 without parts", "pm"),
    ("visible_parts", "visible parts / test image", "{:.2f}"),
    ("norm_auc_attended", "test AUC of ‖F_g‖", "{:.2f}"),
    ("norm_auc_backbone", "test AUC of ‖F_θ‖", "{:.2f}"),
    ("test_fg_precision", "test fg precision", "{:.0%}"),
    ("test_purity", "test part purity", "{:.0%}"),
    ("test_order", "test top-to-bottom", "{:.0%}"),
    ("fg_share", "pseudo-fg share", "{:.0%}"),
    ("fg_precision", "pseudo-fg precision", "{:.0%}"),
    ("fg_recall", "pseudo-fg recall", "{:.0%}"),
    ("purity", "pseudo-part purity", "{:.0%}"),
    ("purity_within_identity", "pseudo-part purity within identity", "{:.0%}"),
    ("adjacency_deviation", "adjacency |M - 0.5|", "{:.3f}"),
    ("minutes", "min / run", "{:.1f}"),
]
ANALYSIS_MARKER = "<!-- analysis: kept when the tables are rewritten -->"


class TruePartLabels(PartClustering):
    """Fills the module's part labels with the true part masks once, before training, and never clusters.

    A ``PartClustering`` subclass so that ``ICGModule.configure_callbacks`` sees the labels provided and does
    not add the real clustering, which would overwrite them.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: ICGModule) -> None:
        paths = [record.path for record in trainer.datamodule.train_records]
        labels = pl_module.part_labels
        labels.assign(torch.from_numpy(true_part_cells(paths, labels.size)), torch.ones_like(labels.labeled))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: ICGModule) -> None:
        pass


@torch.no_grad()
def test_outputs(
    module: ICGModule, datamodule: SyntheticDataModule, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """On the query and gallery images, whose true part cells are ``truth`` ``[N, h, w]``: the predicted part map
    of every image (0 background, 1..K the assigned parts; without the PPC, 1 where ``P_f >= 0.5``), the visible parts
    of each image (NaN without the PPC), the mAP of single retrieval features and of eq. 15 without the part terms,
    which say what each branch contributes, and the AUC of the relative cell norms of ``F_g`` and ``F_theta`` as
    person detectors (what eq. 3 reads)."""
    maps, visible, features, pids, camids, is_query = [], [], [], [], [], []
    norms: dict[str, list[torch.Tensor]] = {"norm_auc_attended": [], "norm_auc_backbone": []}
    module.eval()
    for batch in datamodule.test_dataloader():
        output = module(batch["image"].to(module.device))
        for key, feature_map in zip(norms, (output.feature_map, output.backbone_map), strict=True):
            norms[key].append(relative_activation(feature_map).cpu())
        features.append(to_reid_features(output))
        pids.append(batch["pid"])
        camids.append(batch["camid"])
        is_query.append(batch["is_query"])
        if output.part_logits is not None:
            maps.append(output.part_map)
            visible.append(output.visibility.float().sum(dim=1))
        else:
            maps.append((output.fg_logits.softmax(dim=1)[:, 1] >= 0.5).long())
            visible.append(torch.full((len(batch["image"]),), float("nan")))
    features = ReIDFeatures.cat(features).to("cpu")
    pids, camids, is_query = torch.cat(pids), torch.cat(camids), torch.cat(is_query)
    query, gallery = features[is_query], features[~is_query]

    def mean_ap(query: ReIDFeatures, gallery: ReIDFeatures) -> float:
        distances = icg_distance(query, gallery)
        return evaluate_rank(distances, pids[is_query], pids[~is_query], camids[is_query], camids[~is_query]).mAP

    def without_parts(features: ReIDFeatures) -> ReIDFeatures:
        return ReIDFeatures(global_feat=features.global_feat, foreground=features.foreground, graph=features.graph)

    breakdown = {"mAP_global": mean_ap(query.global_feat, gallery.global_feat)}
    for key, values in norms.items():
        breakdown[key] = roc_auc(torch.cat(values).numpy().ravel(), truth.ravel() > 0)
    if features.foreground is not None:
        breakdown["mAP_foreground"] = mean_ap(query.foreground, gallery.foreground)
    if features.parts is not None:
        breakdown["mAP_fixed_terms"] = mean_ap(without_parts(query), without_parts(gallery))
    return torch.cat(maps).cpu().numpy(), torch.cat(visible).numpy(), breakdown


def run(name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    variant = RUNS[name]
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = SyntheticDataModule(
        str(args.data),
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        generator_seed=args.generator_seed,
        generated_size=tuple(args.image_size),
        image_size=tuple(args.image_size),
        num_identities=8,
        num_instances=4,
        num_workers=args.workers,
        seed=seed,
    )
    recipe = dict(
        fg_threshold=args.fg_threshold if variant.fg_threshold is None else variant.fg_threshold,
        warmup_epochs=1,
        milestones=(args.epochs - 2,),
        channels_last=True,
        **recipe_for(args.init),
    )
    module = ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=tuple(args.image_size),
        backbone="resnet18",
        weights=str(args.init) if args.init else None,
        num_parts=variant.num_parts,
        use_afm=variant.use_afm,
        use_ppc=variant.use_ppc,
        use_fsg=variant.use_fsg,
        foreground_from_parts=variant.foreground_from_parts,
        fg_signal=variant.fg_signal,
        part_assignment=variant.part_assignment,
        part_position=variant.part_position,
        **{**recipe, **args.model_args},
    )
    labels = (
        TruePartLabels()
        if variant.true_parts
        else PartClustering(
            every_n_epochs=2,
            refit_classifier=variant.refit_classifier,
            height_weight=variant.height_weight,
            shared_parts=variant.shared_parts,
            refit_method=variant.refit_method,
        )
    )
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        callbacks=[labels],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    result = {"mAP": metrics["test/mAP"], "rank1": metrics["test/rank1"]}
    if variant.use_afm or variant.use_ppc:
        eval_paths = [record.path for record in datamodule.eval_records]
        truth = true_part_cells(eval_paths, module.net.backbone.output_size(args.image_size))
        predicted, visible, breakdown = test_outputs(module, datamodule, truth)
        result.update(breakdown)
        quality = label_quality(predicted, truth)
        result.update(visible_parts=float(np.mean(visible)), test_fg_precision=quality["fg_precision"])
        if variant.use_ppc:
            result.update(test_purity=quality["purity"], test_order=quality["order"])
    labels = module.part_labels
    if variant.use_ppc and labels.labeled.any():
        train_paths = [record.path for record in datamodule.train_records]
        train_labels, train_truth = labels.labels.cpu().numpy(), true_part_cells(train_paths, labels.size)
        quality = label_quality(train_labels, train_truth)
        result.update({key: quality[key] for key in ("fg_share", "fg_precision", "fg_recall", "purity")})
        train_pids = [record.pid for record in datamodule.train_records]
        result["purity_within_identity"] = purity_within_identities(train_labels, train_truth, train_pids)
    if module.net.graph is not None:
        result["adjacency_deviation"] = float((module.net.graph.adjacency - 0.5).abs().mean())
    result["minutes"] = (time.perf_counter() - start) / 60
    return result


def recipe_for(init: Path | None) -> dict:
    """What differs between the two starts: fine-tuning a pretrained backbone takes the paper's learning rate and
    lets the randomly initialized layers learn 10 x faster; from scratch everything is random, so one higher rate.
    At 128x64 the feature map is 8x4, so the attention's kernel is 3 (the paper's 7 on a 16x8 map)."""
    if init:
        return dict(lr=3.5e-4, head_lr_factor=10.0, attention_kernel=3)
    return dict(lr=1e-3, head_lr_factor=1.0, attention_kernel=3)


def mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def table(rows: dict[str, list[dict]], names: list[str]) -> list[str]:
    lines = ["| run | " + " | ".join(header for _, header, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in names:
        entries = rows.get(name, [])
        if not entries:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            values = [e[key] for e in entries if key in e and e[key] == e[key]]
            if not values:
                cells.append("–")
            elif fmt == "pm":
                cells.append(mean_spread(values))
            else:
                cells.append(fmt.format(statistics.fmean(values)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(entries: list[dict], args: argparse.Namespace) -> None:
    inits = sorted({e["init"] for e in entries}, key=lambda init: init != "stand-in")
    text = [
        "# Ablation on synthetic pedestrians",
        "",
        f"Machine: {describe()}.  ",
        "Command: `python benchmarks/ablation.py [--init FILE]` (each finished run is appended to "
        f"`{os.path.relpath(args.log)}` and not repeated).  ",
        f"Data: `SyntheticDataModule`, {args.train_ids} train / {args.test_ids} test identities, "
        f"{args.image_size[0]}x{args.image_size[1]}, "
        f"occlusion and misalignment on (generator seed {args.generator_seed}).  ",
        f"Recipe: ResNet-18, PK 8 x 4, AdamW, {args.epochs} epochs, foreground threshold "
        f"{args.fg_threshold}, attention kernel {args.model_args.get('attention_kernel', 3)}, clustering every 2 "
        f"epochs; other model arguments {json.dumps(args.model_args)}; mean ± half-range over seeds, in %. "
        "*stand-in*: the backbone starts from `benchmarks/pretrain_synthetic.py` (BoT on a disjoint synthetic "
        "population), lr 3.5e-4 (the paper's) and 10 x that for the layers outside the backbone "
        "(`head_lr_factor`); *scratch*: from random weights, lr 1e-3 for every layer.",
        "",
        "Columns after Rank-1, against the generator's true part masks at the feature cells: on the test images, "
        "the parts the model predicts (a part is visible when some cell is assigned to it: the arg-max, or for "
        '`part_assignment="foreground"` the best part where the union of the parts beats the background; '
        "foreground = not background), their precision on the person, their purity (share of part cells whose "
        "true body part is the majority one of their part) and the share of images whose parts are ordered top "
        "to bottom; on the "
        "training images, the pseudo-labels of the last clustering (their purity also per identity, where a label "
        "may name a different body part for each identity); the mean distance of the learned FSG adjacency from "
        "its initial 0.5. The AUCs: how well the relative cell norm ``||F|| / max``, what eq. 3 thresholds, ranks "
        "person cells above background cells on the test images, after (`F_g`) and before (`F_θ`) the attention.",
    ]
    for init in inits:
        rows: dict[str, list[dict]] = {}
        for entry in entries:
            if entry["init"] == init:
                rows.setdefault(entry["run"], []).append(entry)
        seeds = sorted({e["seed"] for e in entries if e["init"] == init})
        for title, names in TABLES.items():
            if any(name in rows for name in names if name != "BoT"):  # BoT alone compares nothing
                text += ["", f"## {title}, {init} (seeds {', '.join(map(str, seeds))})", "", *table(rows, names)]
    previous = args.output.read_text() if args.output.exists() else ""
    analysis = previous[previous.index(ANALYSIS_MARKER) :] if ANALYSIS_MARKER in previous else ANALYSIS_MARKER + "\n"
    args.output.write_text("\n".join(text) + "\n\n" + analysis)


def read_log(path: Path) -> list[dict]:
    """Every finished run in the log, one JSON line each (none when there is no log yet)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--init", type=Path, default=None, help="backbone weights to start from (the stand-in); default: from scratch"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"), help="rendered and network size"
    )
    parser.add_argument(
        "--fg-threshold", type=lambda v: v if v == "otsu" else float(v), default=0.5, help="in [0, 1], or otsu"
    )
    parser.add_argument(
        "--generator-seed", type=int, default=0, help="the population (the stand-in is pretrained on seed 1000)"
    )
    parser.add_argument("--train-ids", type=int, default=80)
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--model-args",
        type=json.loads,
        default={},
        help="other ICGModule arguments for every run, as JSON: '{\"attention_kernel\": 3}'",
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-ablation"))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "RESULTS.md")
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(__file__).parent / "ablation_runs.jsonl",
        help="one JSON line per finished run; finished runs are not repeated",
    )
    args = parser.parse_args()
    print(f"Machine: {describe()}", flush=True)
    init = "stand-in" if args.init else "scratch"
    entries = read_log(args.log)
    for seed in args.seeds:
        for name in args.runs:
            if any(e["run"] == name and e["seed"] == seed and e["init"] == init for e in entries):
                continue
            entry = {"run": name, "seed": seed, "init": init, **run(name, seed, args)}
            print(json.dumps(entry), flush=True)
            with args.log.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            # re-read: another process (other runs or seeds in parallel) may have added entries to the log
            entries = read_log(args.log)
            write_report(entries, args)
    if entries:  # also when every run was already done: the report follows this script's current layout
        write_report(entries, args)


if __name__ == "__main__":
    main()
