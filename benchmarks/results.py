"""Writes ``docs/RESULTS.md``, the project's one results document, from the run logs (``benchmarks/*.jsonl``).

Every ablation run appends one JSON line to its log (``benchmarks/ablation.py``); this script turns the logs into
tables (mean ± half-range over seeds) and applies the rule of ``docs/DECISIONS.md`` to each option on the population
it was not chosen on. Nothing in the document is edited by hand: change a log or the tables below, and run

    python benchmarks/results.py           # rewrites docs/RESULTS.md
    python benchmarks/results.py --check   # exits 1 when docs/RESULTS.md is not what the logs give (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
DOCUMENT = BENCHMARKS.parent / "docs" / "RESULTS.md"

COLUMNS = [  # key, header, format ("pm": mean ± half-range, in %)
    ("mAP", "mAP", "pm"),
    ("rank1", "Rank-1", "pm"),
    ("mAP_global", "mAP global", "pm"),
    ("visible_parts", "visible parts / image", "{:.2f}"),
    ("test_fg_precision", "fg precision", "{:.0%}"),
    ("test_fg_recall", "fg recall", "{:.0%}"),
    ("test_purity", "part purity", "{:.0%}"),
    ("test_order", "parts in order", "{:.0%}"),
    ("fg_precision", "pseudo-fg precision", "{:.0%}"),
    ("fg_recall", "pseudo-fg recall", "{:.0%}"),
    ("purity", "pseudo-part purity", "{:.0%}"),
    ("minutes", "min / run", "{:.1f}"),
]
ROWS = {  # run name -> what it is
    "BoT": "AFM, PPC and FSG off",
    "+AFM": "BoT + AFM",
    "+PPC": "BoT + PPC",
    "+PPC+FSG": "BoT + PPC + FSG",
    **{f"ICG-K{k}": f"ICG, the paper's settings (eq. 3 at 0.5, arg-max parts), K = {k}" for k in range(3, 8)},
    "ICG-K6-eq16": "ICG with the AFM's own head for P_f (eq. 16) instead of the union of the parts",
    "ICG-K6-otsu": "ICG, eq. 3 with Otsu's threshold",
    "ICG-K6-otsu-refit": "ICG, eq. 3 with Otsu, classifier refitted (removed)",
    "ICG-K6-identity": "ICG, the project's core: identity contrast, Otsu, foreground-first parts",
    "ICG-K6-identity-argmax": "the variant with arg-max parts",
    "ICG-K6-identity-position": "the variant + the cell's height as a classifier input (removed)",
    "ICG-K6-identity-refit": "the variant + the classifier refitted to each clustering (removed)",
    "ICG-K6-identity-refit-position": "the variant + refit + height input (removed)",
    "ICG-K6-identity-height": "the variant + the cell's height in K-means, w = 2 (removed)",
    "ICG-K6-identity-shared": "the variant + one K-means over all identities (removed)",
    "ICG-K6-identity-height-shared": "the variant + one K-means over all identities with the cell's height "
    "(PartClustering(shared_parts=True))",
    "ICG-K6-identity-refit-position-height": "the variant + refit + height input + height in K-means (removed)",
    "ICG-K6-identity-refit-position-shared": "the ablations' best stack: variant + refit + height input + height in "
    "K-means + one K-means over all identities (removed)",
    "ICG-K6-identity-lda-position-shared": "that stack with the refit by the linear discriminant (removed)",
    "ICG-K6-identity-refit-rows-shared": "that stack with a one-hot of the row as input (removed)",
    "ICG-K6-identity-eq16": "the variant with the AFM's own head for P_f (eq. 16; removed)",
    "ICG-K6-identity-scale1": "the variant without the pixel classifiers' logit scale (s = 1)",
    "ICG-K6-identity-kernel7": "the variant with CBAM's 7x7 attention kernel on the 8x4 map (now the only one)",
    "ICG-true-parts": "ICG trained on the generator's true part masks (K = 5)",
}


@dataclass(frozen=True)
class Log:
    file: str
    title: str
    setting: str
    rows: tuple[str, ...]


UNSEEN = Log(
    "ablation_runs_unseen.jsonl",
    "The unseen population (the rule's evidence)",
    "`ablation.py --unseen`: the generator's other settings (seed 7000, 8 cameras, 6-14 training images per "
    "identity, half the identities in colour-swapped pairs, bags 60%, occluders 35%, JPEG 80), never used to choose "
    "anything; 100 training / 80 test identities, 128x64, ResNet-18 from scratch, 8 epochs, clustering every 2 "
    "epochs. Code: commit ff32627 with the rows of one option each (its attention kernel at 128x64: 3x3).",
    (
        "BoT",
        "ICG-K6",
        "ICG-K6-identity",
        "ICG-K6-identity-argmax",
        "ICG-K6-identity-scale1",
        "ICG-K6-identity-kernel7",
        "ICG-K6-identity-eq16",
        "ICG-K6-identity-position",
        "ICG-K6-identity-refit",
        "ICG-K6-identity-height",
        "ICG-K6-identity-shared",
        "ICG-K6-identity-height-shared",
        "ICG-K6-identity-refit-position-shared",
    ),
)
DEVELOPMENT = (
    "generator seed 0 with the default settings, 80 training / 60 test identities, the population the options "
)
IMAGENET = Log(
    "ablation_runs_imagenet.jsonl",
    "From real ImageNet weights: MobileNetV2, the unseen population, 256x128",
    "`ablation.py --unseen --backbone mobilenet_v2 --init mobilenet_v2-imagenet.pt --image-size 256 128`: the "
    "ImageNet MobileNetV2 of `benchmarks/imagenet_weights.py` (output stride 16, a 16x8 map), the paper's learning "
    "rate 3.5e-4 for every layer, 8 epochs, clustering every 2 epochs, the population of the first table.",
    ("BoT", "ICG-K6", "ICG-K6-identity", "ICG-K6-identity-height-shared"),
)
LOGS = (
    UNSEEN,
    IMAGENET,
    Log(
        "ablation_runs.jsonl",
        "128x64, the chosen-on population",
        DEVELOPMENT + "were ranked on; ResNet-18 from scratch (lr 1e-3) or from the stand-in for ImageNet "
        "(`pretrain_synthetic.py`, lr 3.5e-4, heads 10x), 8 epochs. Code: the commits before ff32627.",
        tuple(ROWS),
    ),
    Log(
        "ablation_runs_256.jsonl",
        "256x128 from the stand-in, the chosen-on population",
        DEVELOPMENT + "were ranked on; ResNet-18 from the 256x128 stand-in, 7x7 attention, 8 epochs. Code: the "
        "commits before ff32627.",
        tuple(ROWS),
    ),
    Log(
        "ablation_runs_256_height.jsonl",
        "256x128 from a stand-in pretrained again, the chosen-on population",
        DEVELOPMENT + "were ranked on; 5 seeds. Code: the commits before ff32627.",
        tuple(ROWS),
    ),
    Log(
        "ablation_runs_256_16epochs.jsonl",
        "256x128 from the stand-in, 16 epochs",
        DEVELOPMENT + "were ranked on. Code: the commits before ff32627.",
        tuple(ROWS),
    ),
    Log(
        "ablation_runs_256_scratch.jsonl",
        "256x128 from scratch",
        DEVELOPMENT + "were ranked on; lr 1e-3, 3x3 attention. Code: the commits before ff32627.",
        tuple(ROWS),
    ),
)


@dataclass(frozen=True)
class Decision:
    option: str
    row: str
    absence: str


SHARED_PARTS = Decision(
    "shared_parts: one K-means over all identities, with the height", "ICG-K6-identity-height-shared", "ICG-K6-identity"
)
DECISIONS = (  # on the unseen population: an option stays when its row beats its absence by more than the spread
    Decision(
        'part_assignment="foreground" (against the paper\'s arg-max)', "ICG-K6-identity", "ICG-K6-identity-argmax"
    ),
    Decision("the logit scale s = 16 of the pixel classifiers", "ICG-K6-identity", "ICG-K6-identity-scale1"),
    Decision("the attention kernel fitted to the map (3 on 8x4)", "ICG-K6-identity", "ICG-K6-identity-kernel7"),
    Decision("P_f from the AFM's own head with the PPC on (eq. 16)", "ICG-K6-identity-eq16", "ICG-K6-identity"),
    Decision("part_position: the cell's height as a classifier input", "ICG-K6-identity-position", "ICG-K6-identity"),
    Decision(
        "refit_classifier: the classifier refitted to each clustering", "ICG-K6-identity-refit", "ICG-K6-identity"
    ),
    Decision("the cell's height in each identity's K-means (w = 2)", "ICG-K6-identity-height", "ICG-K6-identity"),
    Decision("one K-means over all identities, features alone", "ICG-K6-identity-shared", "ICG-K6-identity"),
    SHARED_PARTS,
    Decision("the ablations' best stack", "ICG-K6-identity-refit-position-shared", "ICG-K6-identity"),
)
FROM_IMAGENET = (  # the options in the *_identity recipes, from the real ImageNet start (the recipes' start)
    Decision("the project's variant (identity contrast, Otsu, foreground first)", "ICG-K6-identity", "ICG-K6"),
    SHARED_PARTS,
)
VERDICT_HEADER = ("| option | row | absence | mAP | gain | spread | verdict |", "|---|---|---|---|---|---|---|")
IMAGENET_INIT = "mobilenet_v2 from mobilenet_v2-imagenet.pt"
MIN_SEEDS = 3


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def values(entries: list[dict], run: str, key: str, init: str) -> list[float]:
    found = [e[key] for e in entries if e["run"] == run and e["init"] == init and key in e]
    return [v for v in found if v == v]  # NaN (a metric the row has not) left out


def mean_spread(found: list[float]) -> tuple[float, float]:
    return statistics.fmean(found), (max(found) - min(found)) / 2


def table(entries: list[dict], rows: tuple[str, ...], init: str) -> list[str]:
    present = [row for row in rows if values(entries, row, "mAP", init)]
    lines = [
        "| run | seeds | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for row in present:
        cells = []
        for key, _, fmt in COLUMNS:
            found = values(entries, row, key, init)
            if not found:
                cells.append("–")
            elif fmt == "pm":
                mean, spread = mean_spread(found)
                cells.append(f"{100 * mean:.1f} ± {100 * spread:.1f}")
            else:
                cells.append(fmt.format(statistics.fmean(found)))
        seeds = len(values(entries, row, "mAP", init))
        lines.append(f"| {row}: {ROWS.get(row, row)} | {seeds} | " + " | ".join(cells) + " |")
    return lines if present else []


def verdict(entries: list[dict], decision: Decision, init: str = "scratch") -> str:
    """One table row: the option's mAP, its absence's, the gain, the larger half-range, and the verdict."""
    option, absence = (values(entries, run, "mAP", init) for run in (decision.row, decision.absence))
    if len(option) < MIN_SEEDS or len(absence) < MIN_SEEDS:
        return f"| {decision.option} | {decision.row} | {decision.absence} | – | – | – | fewer than {MIN_SEEDS} seeds |"
    (mean, spread), (base, base_spread) = mean_spread(option), mean_spread(absence)
    gain, noise = mean - base, max(spread, base_spread)
    kept = "**beats its absence**" if gain > noise else "does not beat its absence"
    return (
        f"| {decision.option} | {decision.row} | {decision.absence} | {100 * mean:.1f} against {100 * base:.1f} | "
        f"{100 * gain:+.1f} | {100 * noise:.1f} | {kept} |"
    )


VIDEO_LOG = "video_foreground.jsonl"
VIDEO_PICTURE = "video_foreground.png"  # beside docs/RESULTS.md
VIDEO_MODELS = "video_models.jsonl"  # the ablation entries of the checkpoints the video benchmark reads


def trained_models() -> str:
    return ", ".join(f"{e['run']} {100 * e['mAP']:.1f}" for e in read_log(BENCHMARKS / VIDEO_MODELS))


def video_section() -> list[str]:
    """The foreground rules on the real video (``benchmarks/video_foreground.py``), when it ran."""
    rows = read_log(BENCHMARKS / VIDEO_LOG)
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        f"## The foreground rules on real pedestrians (`benchmarks/{VIDEO_LOG}`)",
        "",
        f"`benchmarks/video_foreground.py`: {first['crops']} person crops of OpenCV's `{first['video']}` (a static "
        "camera; boxes from the median-background mask, padded by 10%, at 256x128), the mask as the truth on the "
        f"16x8 feature grid ({first['truth_share']:.0%} of the cells are foreground). Pooled over all cells; AUC of "
        "the rule's scores where it has them. The identity contrast takes tracklets (boxes linked across frames) as "
        "identities. The trained models have the settings of the table above, seed 0, trained again to keep their "
        f"checkpoints (`ablation.py --checkpoints`, logged in `benchmarks/{VIDEO_MODELS}`); their mAP on the "
        f"synthetic test identities: {trained_models()}.",
        "",
        "| rule | precision | recall | IoU | AUC |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        auc = f"{row['auc']:.2f}" if "auc" in row else "–"
        lines.append(f"| {row['rule']} | {row['precision']:.2f} | {row['recall']:.2f} | {row['iou']:.2f} | {auc} |")
    if (DOCUMENT.parent / VIDEO_PICTURE).exists():
        lines += ["", f"![crops, true masks and the rules' foreground]({VIDEO_PICTURE})"]
    return lines


def document() -> str:
    text = [
        "# Results",
        "",
        "Generated by `python benchmarks/results.py` from the run logs `benchmarks/*.jsonl`; not edited by hand. All "
        "numbers are on synthetic pedestrians (`icg.generate_synthetic`), measured against the generator's true part "
        "masks, on 2-core CPUs: they say whether a mechanism does its job, not what the method scores on Market-1501. "
        "Values: mean ± half-range over seeds, in %.",
        "",
        "Columns after Rank-1: the mAP of the global feature alone; on the test images, the visible parts per image, "
        "the share of predicted part cells on the person (fg precision) and of person cells in a part (fg recall), "
        "the share of part cells whose true body part is their part's majority one (part purity) and the share of "
        "images whose parts run top to bottom; on the training images, the last clustering's pseudo-labels (their "
        "foreground precision and recall, and part purity).",
        "",
        "## The rule applied (`docs/DECISIONS.md`)",
        "",
        f"An option that is not the paper's stays only if its mAP beats its absence's by more than the larger "
        f"half-range of the two, over at least {MIN_SEEDS} seeds, on the unseen population below.",
        "",
        *VERDICT_HEADER,
    ]
    unseen = read_log(BENCHMARKS / UNSEEN.file)
    text += [verdict(unseen, decision) for decision in DECISIONS]
    imagenet = read_log(BENCHMARKS / IMAGENET.file)
    text += [
        "",
        "The same test from the real ImageNet start (the table of that name below), for what the `*_identity` recipes "
        "would ship:",
        "",
        *VERDICT_HEADER,
        *(verdict(imagenet, decision, IMAGENET_INIT) for decision in FROM_IMAGENET),
    ]
    for log in LOGS:
        entries = read_log(BENCHMARKS / log.file)
        for init in sorted({e["init"] for e in entries}, key=lambda init: init != "scratch"):
            lines = table(entries, log.rows, init)
            if lines:
                text += ["", f"## {log.title}, {init} (`benchmarks/{log.file}`)", "", log.setting, "", *lines]
        if log is IMAGENET:
            text += video_section()
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the document is out of date")
    args = parser.parse_args()
    text = document()
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            sys.exit(f"{DOCUMENT} is not what the logs give: run python benchmarks/results.py")
        return
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT}")


if __name__ == "__main__":
    main()
