"""nnU-Net's 5-fold cross-validation of a planned bundle.

    python -m scripts.cross_validate --bundle_root W --dataset_dir D --folds 0,1,2,3,4 \
        [--train#trainer#max_epochs E --iterations_per_epoch I ...]

Every option other than the three above is passed to each fold's training as a config override.
Writes `W/models/fold_K/model.pt`, out-of-fold predictions and probabilities in `W/cv/`, and `W/cv/summary.json`.
A cascade bundle trains stage 1 on all 5 folds first (`W/models/stage1/`, `W/stage1/cv/`), then stage 2.
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.errors import DatasetError
from custom_components.inference.ensemble import parse_folds
from custom_components.training.cross_validation import cross_validate


def main(bundle_root: str, dataset_dir: str, folds="0,1,2,3,4", **overrides) -> None:
    """Train the folds (resuming interrupted ones), predict their held-out cases, summarise CV Dice."""
    try:
        summary = cross_validate(bundle_root, dataset_dir, parse_folds(folds) or [0, 1, 2, 3, 4], overrides)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for fold, s in summary["folds"].items():
        print(f"fold {fold}: mean Dice {s['mean_dice']}  {s['dice_per_class']}")
    o = summary["overall"]
    print(f"cross-validation ({o['num_cases']} cases): mean Dice {o['mean_dice']}  {o['dice_per_class']}")
    print(f"summary: {bundle_root}/cv/summary.json")


if __name__ == "__main__":
    fire.Fire(main)
