"""nnU-Net's 5-fold cross-validation of a planned bundle.

Each fold trains through the bundle's own training workflow (`python -m monai.bundle run training`, so an
interrupted fold resumes from its checkpoint), writing `models/fold_K/model.pt`. The fold's model then predicts
its held-out cases with the bundle's inference workflow: label maps and probabilities, in each case's original
geometry, go to `cv/`. `cv/summary.json` holds the Dice per class for every fold and over all cases.

A cascade bundle (one with `configs/train_stage1.yaml`) is cross-validated stage by stage: stage 1 on all five
folds first (`models/stage1/fold_K`, out-of-fold predictions in `stage1/cv/`), because stage 2 of every fold
trains on those predictions of its training cases; then stage 2 on the requested folds, whose `model.pt` holds
the whole cascade and whose out-of-fold predictions (both stages run) go to `cv/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


from custom_components.bundle_config import overrides_for
from custom_components.data.dataset import read_dataset, require_training_cases
from custom_components.data.errors import DatasetError
from custom_components.data.splits import N_FOLDS, kfold_split
from custom_components.evaluation.report import score_folder, summarise
from custom_components.inference.bundle_runner import run_bundle_inference
from custom_components.io_utils import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_FOLDS = tuple(range(N_FOLDS))
# overrides of stage 2's plan that mean something else for the cascade's stage 1 (whose `plan` is 3d_lowres)
STAGE2_ONLY_IDS = ("plan", "patch_size", "target_spacing")


@dataclass(frozen=True)
class Stage:
    """Where one trained network of a bundle reads its configs and writes its folds and out-of-fold results."""

    train_config: str = "train.yaml"
    inference_config: str = "inference.yaml"
    models: str = "models"
    logs: str = "logs"
    cv: str = "cv"


BUNDLE = Stage()
CASCADE_STAGE1 = Stage("train_stage1.yaml", "inference_stage1.yaml", "models/stage1", "logs/stage1", "stage1/cv")


def is_cascade(bundle_root: str | os.PathLike) -> bool:
    """A cascade bundle has a stage-1 training config beside its (stage-2) train.yaml."""
    return (Path(bundle_root) / "configs" / CASCADE_STAGE1.train_config).is_file()


def cli_overrides(overrides: Mapping) -> list[str]:
    """Config overrides as `monai.bundle run` arguments (`--key value`, non-strings as JSON)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def train_fold(bundle_root: Path, dataset_dir: str, fold: int, overrides: Mapping, stage: Stage = BUNDLE) -> None:
    """Run the bundle's training for one fold in a fresh process (resumes if the fold has a checkpoint)."""
    args = [sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", str(bundle_root / "configs" / stage.train_config), "--bundle_root", str(bundle_root),
            "--dataset_dir", str(dataset_dir), "--fold", str(fold),
            "--ckpt_dir", str(bundle_root / stage.models / f"fold_{fold}"), "--log_dir", str(bundle_root / stage.logs / f"fold_{fold}")]
    args += cli_overrides(overrides)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    print(f"== fold {fold}: training ({stage.train_config})", flush=True)
    proc = subprocess.run(args, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"training fold {fold} of {bundle_root} ({stage.train_config}) failed (exit {proc.returncode}); "
                           "re-run to resume it")


def cross_validate(bundle_root: str | os.PathLike, dataset_dir: str | os.PathLike, folds: Sequence[int] = ALL_FOLDS,
                   overrides: Mapping | None = None, inference_overrides: Mapping | None = None) -> dict:
    """Train and predict the given folds (a cascade: stage 1 on every fold first), then write and return
    `cv/summary.json`."""
    root = Path(bundle_root).resolve()
    if not (root / "configs" / "train.yaml").is_file():
        raise DatasetError(f"{root}: not a planned bundle (no configs/train.yaml); run scripts.plan first")
    bad = [f for f in folds if not 0 <= int(f) < N_FOLDS]
    if bad:
        raise DatasetError(f"folds {bad} do not exist: nnU-Net's split has folds 0-{N_FOLDS - 1}")
    if is_cascade(root):
        cross_validate_stage(root, dataset_dir, ALL_FOLDS, stage1_overrides(overrides), stage1_overrides(inference_overrides),
                             CASCADE_STAGE1)
    return cross_validate_stage(root, dataset_dir, folds, overrides, inference_overrides, BUNDLE)


def stage1_overrides(overrides: Mapping | None) -> dict:
    """The overrides that reach the cascade's stage 1: `plan_stage1#...` becomes its `plan#...`; stage 2's plan
    numbers (`plan#...`, `patch_size`, `target_spacing`) stay with stage 2; everything else applies to both."""
    out = {}
    for key, value in dict(overrides or {}).items():
        head, _, rest = key.partition("#")
        if head == "plan_stage1" and rest:
            out[f"plan#{rest}"] = value
        elif head not in STAGE2_ONLY_IDS:
            out[key] = value
    return out


def cross_validate_stage(root: Path, dataset_dir: str | os.PathLike, folds: Sequence[int], overrides: Mapping | None,
                         inference_overrides: Mapping | None, stage: Stage) -> dict:
    """One network's cross-validation: train each fold, predict its held-out cases, summarise in `<cv>/summary.json`."""
    info = read_dataset(dataset_dir)
    cases = {c["id"]: c for c in require_training_cases(info)}
    split = kfold_split(list(cases))
    cv_dir = root / stage.cv
    class_names = [n for n, v in sorted(info.labels.items(), key=lambda kv: kv[1]) if v != 0]
    # overrides of ids the inference config also has (mirroring, sliding-window batch, plan numbers) apply to
    # the out-of-fold predictions too; training-only ones (epochs, iterations) do not
    shared = overrides_for(root / "configs" / stage.inference_config, overrides or {})
    shared.pop("dataset_dir", None)
    inference_overrides = {**shared, **dict(inference_overrides or {})}
    for fold in folds:
        if not 0 <= int(fold) < len(split):
            raise DatasetError(f"fold {fold} does not exist: nnU-Net's split has folds 0-{len(split) - 1}")
        train_fold(root, str(dataset_dir), int(fold), dict(overrides or {}), stage)
        print(f"== fold {fold}: predicting its {len(split[fold]['val'])} held-out case(s) ({stage.inference_config})", flush=True)
        val_cases = [cases[i] for i in split[fold]["val"]]
        run_bundle_inference(root, val_cases, cv_dir, ckpt_dir=root / stage.models / f"fold_{fold}", config=stage.inference_config,
                             overrides={"dataset_dir": str(dataset_dir), "folds": "auto", **inference_overrides})
    summary: dict = {"bundle_root": str(root), "split_seed": 12345, "folds": {}}
    all_scores = []
    for fold in folds:
        val_cases = [cases[i] for i in split[fold]["val"]]
        fold_scores = score_folder(cv_dir, val_cases, info.num_classes)
        all_scores += fold_scores
        s = summarise(fold_scores, class_names)
        summary["folds"][str(fold)] = {"cases": [c["id"] for c in val_cases], "mean_dice": s["mean_dice"],
                                       "dice_per_class": {k: v["dice"] for k, v in s["per_class"].items()}}
    overall = summarise(all_scores, class_names)
    summary["overall"] = {"num_cases": overall["num_cases"], "mean_dice": overall["mean_dice"],
                          "dice_per_class": {k: v["dice"] for k, v in overall["per_class"].items()}}
    summary["cases"] = overall["cases"]
    atomic_write_json(cv_dir / "summary.json", summary)
    return summary
