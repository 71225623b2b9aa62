"""Connected-component post-processing chosen on cross-validation predictions, as nnU-Net does it
(`nnunetv2/postprocessing/remove_connected_components.py`; unet-family.md section 1).

Two rules, each kept only when it helps the out-of-fold predictions:
1. keep the largest connected component of all foreground together (every class at once);
2. then, class by class, keep the largest component of that class.

Components use full connectivity (26 neighbours in 3D, 8 in 2D: voxels touching at a face, an edge or
a corner are connected), like nnU-Net. Removed voxels become background (0). Ties between components of
equal size keep the one that comes first in C (raster) order, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from custom_components.evaluation.report import mean_foreground_dice, per_class_mean_dice, score_case


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected component of a boolean mask (all False when the mask is empty)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # label 0 is the background of the mask, never a component
    return components == int(np.argmax(sizes))  # argmax takes the first of equal sizes: raster order


def _remove_all_but_largest(label_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.array(label_map, copy=True)
    out[mask & ~_largest_component(mask)] = 0
    return out


def keep_largest_foreground(label_map: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component of the union of all foreground classes (label > 0).

    Voxels of every other component become 0; class values inside the kept component are unchanged. Works on
    label maps of any dimension (a leading channel axis of size 1 changes nothing). Returns a new array."""
    label_map = np.asarray(label_map)
    return _remove_all_but_largest(label_map, label_map > 0)


def keep_largest_per_class(label_map: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """For each listed class, keep only its own largest connected component; its other voxels become 0.

    Classes not listed are untouched. Each class's mask is computed from the input map; since removed voxels
    become background, the order of `classes` does not matter. Returns a new array."""
    out = np.array(label_map, copy=True)
    for c in classes:
        mask = out == int(c)
        out[mask & ~_largest_component(mask)] = 0
    return out


def apply_postprocessing(label_map: np.ndarray, decision: dict) -> np.ndarray:
    """Apply a decision from `choose_postprocessing` (or a hand-written one) in the order it was chosen:
    `largest_foreground` first, then `largest_per_class`. Both keys are required; other keys are ignored."""
    out = keep_largest_foreground(label_map) if decision["largest_foreground"] else np.array(label_map, copy=True)
    return keep_largest_per_class(out, decision["largest_per_class"])


def _case_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    return np.asarray(score_case(torch.as_tensor(pred), torch.as_tensor(label), num_classes, with_hd95=False)["dice"], dtype=float)


def _no_class_worse(before: np.ndarray, after: np.ndarray) -> bool:
    # a class with no Dice (NaN) before or after has nothing to compare: it cannot block the rule
    both = np.isfinite(before) & np.isfinite(after)
    return bool(np.all(after[both] >= before[both]))


def _json_float(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _report(per_class: np.ndarray) -> dict:
    """JSON form: plain floats, None for a class that has no Dice in any case (NaN everywhere)."""
    return {
        "mean": _json_float(mean_foreground_dice(per_class)),
        "per_class": {str(c + 1): _json_float(v) for c, v in enumerate(per_class)},
    }


def _score(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int,
           previous: tuple[list[np.ndarray], list[np.ndarray]] | None = None) -> list[np.ndarray]:
    """Per-case Dice; with `previous` = (predictions, their Dice), a case the rule left unchanged keeps its score."""
    return [
        previous[1][i] if previous is not None and np.array_equal(p, previous[0][i])
        else _case_dice(p, labels[i], num_classes)
        for i, p in enumerate(preds)
    ]


def choose_postprocessing(cases: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    """nnU-Net's post-processing decision on out-of-fold predictions.

    `cases` holds `(prediction, label)` label maps of the same shape; `num_classes` counts the background.
    Dice follows `score_case`; "mean Dice" of a class is its mean over cases (NaNs skipped), and the foreground
    mean is the mean of those over classes.

    1. Keep the largest foreground component in every case; accept it only if the foreground mean rises
       strictly AND no class's mean gets worse.
    2. Starting from the result of step 1 (applied or not), for each foreground class in turn keep only its
       largest component; accept the class only if its own mean rises strictly and no other class gets worse
       (for label maps the others cannot change: removed voxels go to background). Accepted classes
       accumulate. Skipped with a single foreground class, where it is the same rule as step 1.

    Returns `{"largest_foreground": bool, "largest_per_class": [class ids], "dice_before": {...},
    "dice_after": {...}}`; `dice_before`/`dice_after` are `{"mean": float, "per_class": {"1": float, ...}}` for
    the raw predictions and after the chosen post-processing (None where a class is NaN), JSON-serialisable.
    """
    if not cases:
        raise ValueError("choose_postprocessing needs at least one (prediction, label) case")
    preds, labels = [], []
    for i, (pred, label) in enumerate(cases):
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"case {i}: prediction shape {pred.shape} != label shape {label.shape}")
        preds.append(pred)
        labels.append(label)
    current = preds
    current_dice = _score(preds, labels, num_classes)
    before = per_class_mean_dice(current_dice)
    current_means = before

    candidate = [keep_largest_foreground(p) for p in current]
    candidate_dice = _score(candidate, labels, num_classes, (current, current_dice))
    candidate_means = per_class_mean_dice(candidate_dice)
    largest_foreground = (mean_foreground_dice(candidate_means) > mean_foreground_dice(current_means)
                          and _no_class_worse(current_means, candidate_means))
    if largest_foreground:
        current, current_dice, current_means = candidate, candidate_dice, candidate_means

    largest_per_class: list[int] = []
    if num_classes > 2:
        for c in range(1, num_classes):
            candidate = [keep_largest_per_class(p, [c]) for p in current]
            candidate_dice = _score(candidate, labels, num_classes, (current, current_dice))
            candidate_means = per_class_mean_dice(candidate_dice)
            others = np.arange(num_classes - 1) != c - 1
            if (candidate_means[c - 1] > current_means[c - 1]
                    and _no_class_worse(current_means[others], candidate_means[others])):
                largest_per_class.append(c)
                current, current_dice, current_means = candidate, candidate_dice, candidate_means

    return {
        "largest_foreground": bool(largest_foreground),
        "largest_per_class": largest_per_class,
        "dice_before": _report(before),
        "dice_after": _report(current_means),
    }
