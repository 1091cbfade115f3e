"""Ablation study on synthetic pedestrians: BoT, +AFM, +PPC, +PPC+FSG, full ICG (paper Table 2), full ICG for
K = 3..7 parts (Table 3), the foreground rules (eq. 3 at 0.5 or Otsu's threshold, the identity contrast), the
part assignment, the mechanisms the project adds (the pixel classifiers' logit scale, part centroids shared by all
identities) and ICG trained on the true part masks; the same data, budget and seeds for every row. Each finished run
is one JSON line in ``--log``; ``benchmarks/results.py`` turns the logs into ``docs/RESULTS.md``.

Every run uses the `make demo` recipe (ResNet-18, 128x64, PK 8 x 4, AdamW, 8 epochs, part clustering every
2 epochs; lr 1e-3 from scratch, the paper's 3.5e-4 from ``--init``) on one synthetic population: the default
settings (``--generator-seed``), or with ``--unseen`` the generator's other settings (:data:`UNSEEN`), the population
that no option was chosen on. Besides mAP and Rank-1 each run records what explains them, against the generator's
true part masks: the pseudo-labels of the last clustering (foreground precision / recall, part purity), the parts
predicted on the test images (visible parts per image, foreground precision, purity, top-to-bottom order), how far
the FSG adjacency moved from its initial 0.5, the mAP of the global and foreground features alone and of eq. 15
without the part terms, and the AUC of the cell norms as a person detector (what eq. 3 can find).

    python benchmarks/ablation.py --unseen --runs BoT ICG-K6 ICG-K6-identity --log benchmarks/ablation_runs_unseen.jsonl
    python benchmarks/ablation.py --init runs/pretrained/resnet18-synthetic.pt   # from a stand-in for ImageNet
    python benchmarks/ablation.py --seeds 0 --runs BoT ICG-K6 --epochs 2          # a quick look

Rows of options that the rule of ``docs/DECISIONS.md`` removed ran at commit ff32627, where they were arguments
(``ICG-K6-identity-refit`` is ``replace(IDENTITY, refit_classifier=True)`` in that commit's script, with the
population below).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from icg.model import SpatialAttention, ppc, to_reid_features
from icg.parts import relative_activation


@dataclass(frozen=True)
class Variant:
    use_afm: bool = True
    use_ppc: bool = True
    use_fsg: bool = True
    num_parts: int = 6
    true_parts: bool = False  # train on the generator's part masks instead of K-means labels
    fg_threshold: float | str = 0.5
    fg_signal: str = "activation"  # or "identity": what recurs in an identity's images
    part_assignment: str = "argmax"  # or "foreground": background against the union of the parts first (eq. 8)
    logit_scale: float = ppc.LOGIT_SCALE  # of the pixel classifiers; 1 is the plain normalised classifier
    attention_kernel: int | None = None  # None: the library's (CBAM's 7)
    shared_parts: bool = False  # one K-means over all identities, with the height (PartClustering(shared_parts=True))


IDENTITY = Variant(fg_threshold="otsu", fg_signal="identity", part_assignment="foreground")
RUNS = {
    "BoT": Variant(use_afm=False, use_ppc=False, use_fsg=False),
    "+AFM": Variant(use_ppc=False, use_fsg=False),
    "+PPC": Variant(use_afm=False, use_fsg=False),
    "+PPC+FSG": Variant(use_afm=False),  # FSG needs PPC's parts
    **{f"ICG-K{k}": Variant(num_parts=k) for k in range(3, 8)},
    "ICG-K6-otsu": Variant(fg_threshold="otsu"),  # eq. 3 with Otsu's per-image threshold instead of 0.5
    "ICG-K6-identity": IDENTITY,  # the project's variant: the foreground from the identity contrast
    "ICG-K6-identity-argmax": replace(IDENTITY, part_assignment="argmax"),
    "ICG-K6-identity-scale1": replace(IDENTITY, logit_scale=1.0),
    "ICG-K6-identity-kernel3": replace(IDENTITY, attention_kernel=3),  # the 128x64 kernel of commit ff32627
    "ICG-K6-identity-height-shared": replace(IDENTITY, shared_parts=True),
    "ICG-true-parts": Variant(num_parts=NUM_TRUE_LABELS - 1, true_parts=True),  # head .. bag: K = 5
}
UNSEEN = dict(  # the generator's other settings: a population no option was chosen on
    num_cameras=8,
    train_images_per_id=(6, 14),
    few_images_fraction=0.05,
    cameras_per_id=(2, 5),
    swapped_pair_fraction=0.5,
    bag_prob=0.6,
    occlusion_prob=0.35,
    jpeg_quality=80,
)
UNSEEN_SEED = 7000
UNSEEN_IDS = (100, 80)  # training and test identities of the unseen population


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


@contextmanager
def logit_scale(scale: float) -> Iterator[None]:
    """The pixel classifiers' logit scale, changed for a run (a constant of :mod:`icg.model.ppc`)."""
    default = ppc.LOGIT_SCALE
    ppc.LOGIT_SCALE = scale
    try:
        yield
    finally:
        ppc.LOGIT_SCALE = default


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
        generator_seed=UNSEEN_SEED if args.unseen else args.generator_seed,
        generated_size=tuple(args.image_size),
        generator_settings=UNSEEN if args.unseen else None,
        image_size=tuple(args.image_size),
        num_identities=8,
        num_instances=4,
        num_workers=args.workers,
        seed=seed,
    )
    module = ICGModule(
        num_classes=datamodule.num_classes,
        num_train_samples=datamodule.num_train_samples,
        image_size=tuple(args.image_size),
        backbone=args.backbone,
        weights=str(args.init) if args.init else None,
        num_parts=variant.num_parts,
        use_afm=variant.use_afm,
        use_ppc=variant.use_ppc,
        use_fsg=variant.use_fsg,
        part_assignment=variant.part_assignment,
        fg_signal=variant.fg_signal,
        fg_threshold=variant.fg_threshold,
        lr=3.5e-4 if args.init else 1e-3,
        warmup_epochs=1,
        milestones=(args.epochs - 2,),
        channels_last=True,
    )
    if variant.attention_kernel is not None and module.net.attention is not None:
        module.net.attention = SpatialAttention(kernel_size=variant.attention_kernel)
        module.net.to(memory_format=module.memory_format)
    labels = (
        TruePartLabels() if variant.true_parts else PartClustering(every_n_epochs=2, shared_parts=variant.shared_parts)
    )
    trainer = quiet_trainer(max_epochs=args.epochs, callbacks=[labels])
    start = time.perf_counter()
    with logit_scale(variant.logit_scale):
        trainer.fit(module, datamodule=datamodule)
        (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
        result = {"mAP": metrics["test/mAP"], "rank1": metrics["test/rank1"]}
        if variant.use_afm or variant.use_ppc:
            eval_paths = [record.path for record in datamodule.eval_records]
            truth = true_part_cells(eval_paths, module.part_labels.size)
            predicted, visible, breakdown = test_outputs(module, datamodule, truth)
            result.update(breakdown)
            quality = label_quality(predicted, truth)
            result.update(visible_parts=float(np.mean(visible)), test_fg_precision=quality["fg_precision"])
            result["test_fg_recall"] = quality["fg_recall"]
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
    if args.checkpoints is not None:  # the trained model, for benchmarks that read models (video_foreground.py)
        args.checkpoints.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(args.checkpoints / f"{name}-seed{seed}.ckpt")
    return result


def code_version() -> str:
    """The commit the runs use (``git describe --always --dirty``), so that a log says which code made it."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def read_log(path: Path) -> list[dict]:
    """Every finished run in the log, one JSON line each (none when there is no log yet)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--init", type=Path, default=None, help="backbone weights to start from (a stand-in); default: from scratch"
    )
    parser.add_argument("--backbone", default="resnet18", help="icg.model.BACKBONES")
    parser.add_argument("--checkpoints", type=Path, default=None, help="a folder to save each trained model in")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"), help="rendered and network size"
    )
    parser.add_argument(
        "--unseen", action="store_true", help=f"the population of UNSEEN (generator seed {UNSEEN_SEED})"
    )
    parser.add_argument("--generator-seed", type=int, default=0, help="the population, without --unseen")
    parser.add_argument("--train-ids", type=int, default=None, help="default: 80, or 100 with --unseen")
    parser.add_argument("--test-ids", type=int, default=None, help="default: 60, or 80 with --unseen")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-ablation"))
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(__file__).parent / "ablation_runs.jsonl",
        help="one JSON line per finished run; finished runs are not repeated",
    )
    args = parser.parse_args()
    default_ids = UNSEEN_IDS if args.unseen else (80, 60)  # the sizes of docs/RESULTS.md's tables
    args.train_ids = default_ids[0] if args.train_ids is None else args.train_ids
    args.test_ids = default_ids[1] if args.test_ids is None else args.test_ids
    print(f"Machine: {describe()}", flush=True)
    init = f"{args.backbone} from {args.init.name}" if args.init else "scratch"
    population = (
        f"{'unseen' if args.unseen else f'generator seed {args.generator_seed}'}, {args.train_ids} / {args.test_ids} "
        f"ids, {args.image_size[0]}x{args.image_size[1]}, {args.epochs} epochs"
    )
    # the rows of one log are compared with each other: refuse to add runs of another population or budget
    others = {e["population"] for e in read_log(args.log) if "population" in e} - {population}
    if others:
        parser.error(f"{args.log} holds runs of {sorted(others)}, not {population!r}: give another --log")
    for seed in args.seeds:
        for name in args.runs:
            # re-read each time: another process (other runs or seeds in parallel) may have added entries
            if any(e["run"] == name and e["seed"] == seed and e["init"] == init for e in read_log(args.log)):
                continue
            entry = {"run": name, "seed": seed, "init": init, "population": population, "code": code_version()}
            entry |= run(name, seed, args)
            print(json.dumps(entry), flush=True)
            with args.log.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
