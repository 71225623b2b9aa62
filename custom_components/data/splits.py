"""nnU-Net's cross-validation split and the data lists that the bundle configs read."""

from __future__ import annotations

import os

from sklearn.model_selection import KFold

from custom_components.data.dataset import read_dataset, require_training_cases
from custom_components.data.errors import DatasetError

N_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's seed for KFold(5, shuffle=True)


def kfold_split(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net's split: KFold over the sorted case ids, shuffled with a fixed seed."""
    ids = sorted(case_ids)
    if len(ids) < n_folds:
        raise DatasetError(f"{len(ids)} training cases cannot be split into {n_folds} folds; use fold 'all'")
    folds = []
    for train_idx, val_idx in KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids):
        folds.append({"train": [ids[i] for i in train_idx], "val": [ids[i] for i in val_idx]})
    return folds


def _is_all(fold) -> bool:
    return str(fold).lower() == "all"


def _fold_part(cases: list[dict], fold, part: str) -> set[str]:
    """The ids of one part ('train' or 'val') of a fold of nnU-Net's split; a fold outside 0..4 is refused."""
    try:
        index = int(fold)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < N_FOLDS or str(fold).strip() != str(index):
        raise DatasetError(f"--fold {fold!r}: expected a fold 0 to {N_FOLDS - 1}, or 'all'")
    return set(kfold_split([c["id"] for c in cases])[index][part])


def _as_item(case: dict) -> dict:
    return {"image": case["image"], "label": case["label"], "id": case["id"]}


def training_datalist(dataset_dir: str | os.PathLike, fold: int | str = 0, num_channels: int | None = None) -> list[dict]:
    """The cases a fold trains on: its part of nnU-Net's split, whether or not validation runs during training
    (a fold never trains on the cases it holds out). Fold 'all', or a single case, means every case.

    `num_channels` is the plan's: a dataset with another channel count was planned for another dataset."""
    info = read_dataset(dataset_dir)
    if num_channels is not None and info.num_channels != int(num_channels):
        raise DatasetError(
            f"{info.root}/dataset.json names {info.num_channels} channel(s) but the bundle's plan (configs/plans.json) "
            f"was made for {num_channels}: re-run scripts.plan on this dataset"
        )
    cases = require_training_cases(info)
    if _is_all(fold) or len(cases) < 2:
        return [_as_item(c) for c in cases]
    keep = _fold_part(cases, fold, "train")
    return [_as_item(c) for c in cases if c["id"] in keep]


def validation_datalist(dataset_dir: str | os.PathLike, fold: int | str = 0, val_interval: int = 1) -> list[dict]:
    """The held-out cases of a fold that validation scores; empty for fold 'all' or when validation is off
    (`val_interval` <= 0)."""
    cases = require_training_cases(read_dataset(dataset_dir))
    if _is_all(fold) or val_interval <= 0 or len(cases) < 2:
        return []
    keep = _fold_part(cases, fold, "val")
    return [_as_item(c) for c in cases if c["id"] in keep]


def with_previous_stage(datalist: list[dict], predictions_dir: str | os.PathLike, key: str = "prev_seg") -> list[dict]:
    """The cascade's stage-2 data: each case with its stage-1 out-of-fold label map (`<id>.nii.gz` in
    `predictions_dir`, written by the stage-1 cross-validation) under `key`."""
    out = []
    for item in datalist:
        path = os.path.join(predictions_dir, f"{item['id']}.nii.gz")
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: stage-1 out-of-fold prediction of case '{item['id']}' is missing; stage 2 trains "
                               "on stage 1's cross-validation predictions (scripts.cross_validate runs stage 1 first)")
        out.append({**item, key: path})
    return out


def inference_datalist(dataset_dir: str | os.PathLike, require_labels: bool = False) -> list[dict]:
    """Every image of `imagesTs/` (with its `labelsTs/` label when there is one)."""
    info = read_dataset(dataset_dir)
    if not info.test:
        raise DatasetError(f"{info.root}/imagesTs: no test images found")
    items = []
    for case in info.test:
        if require_labels and "label" not in case:
            raise DatasetError(f"{info.root}/labelsTs: no label for test case '{case['id']}'")
        items.append(dict(case))
    return items
