"""Ensembles of configurations and the choice among them, as nnU-Net does it (unet-family.md section 1;
`nnunetv2/ensembling/ensemble.py`, `nnunetv2/evaluation/find_best_configuration.py`).

An ensemble's prediction is the mean of its members' softmax probabilities. The candidates are every single
configuration and every pair; the one with the highest mean foreground Dice on the out-of-fold (cross-validation)
predictions is chosen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from custom_components.evaluation.report import mean_foreground_dice, per_class_mean_dice, score_case


def average_probabilities(probs: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
    """The ensemble of members' softmax probabilities: their arithmetic mean, of the members' type and shape.

    Accumulates in place (one extra array, not a stack of all members), in at least float32."""
    if len(probs) == 0:
        raise ValueError("average_probabilities needs at least one member")
    first = probs[0]
    for i, p in enumerate(probs):
        if isinstance(p, torch.Tensor) != isinstance(first, torch.Tensor):
            raise TypeError(f"member {i} is {type(p).__name__}, member 0 is {type(first).__name__}: "
                            "members must be all numpy arrays or all tensors")
        if tuple(p.shape) != tuple(first.shape):
            raise ValueError(f"member {i} has shape {tuple(p.shape)}, member 0 has {tuple(first.shape)}")
    if isinstance(first, torch.Tensor):
        total = first.clone() if first.is_floating_point() else first.float()
    else:
        total = np.array(first, dtype=np.result_type(first.dtype, np.float32), copy=True)
    for p in probs[1:]:
        total += p
    total /= len(probs)
    return total


def candidate_ensembles(configs: Sequence[str]) -> list[tuple[str, ...]]:
    """Every single configuration, then every pair, in the order the configurations are given
    (3 configurations give 3 singles and 3 pairs)."""
    configs = list(configs)
    if len(set(configs)) != len(configs):
        raise ValueError(f"configurations are listed more than once: {configs}")
    return [(c,) for c in configs] + list(itertools.combinations(configs, 2))


def select_best(scores: Mapping[tuple[str, ...], float]) -> tuple[str, ...]:
    """The candidate with the highest mean foreground CV Dice.

    Exact ties go to the smaller ensemble (a single configuration is cheaper to run than a pair), then to the
    first in name order (lexicographic on the tuple of names). NaN scores are never chosen."""
    valid = {tuple(k): float(v) for k, v in scores.items() if not math.isnan(float(v))}
    if not valid:
        raise ValueError(f"no candidate has a finite score: {dict(scores)}")
    return min(valid, key=lambda k: (-valid[k], len(k), k))


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def score_candidates(
    oof: Mapping[str, Mapping[str, np.ndarray]], labels: Mapping[str, np.ndarray], num_classes: int
) -> dict[tuple[str, ...], float]:
    """Mean foreground CV Dice of every candidate from `candidate_ensembles(oof)`.

    `oof[config][case_id]` is a (C, X, Y, Z) out-of-fold probability map in the case's original geometry and
    `labels[case_id]` its (X, Y, Z) label map; `num_classes` = C counts the background. Every case in `labels`
    is scored (extra cases in `oof` are ignored): the members' probabilities are averaged, argmaxed and scored
    with `score_case`. The score is the mean over foreground classes of the per-class means over cases, NaNs
    (class absent) skipped. Raises ValueError naming the configuration and case when a case is missing or its
    shape differs from (num_classes, *label shape).
    """
    configs = list(oof)
    candidates = candidate_ensembles(configs)
    if not labels:
        raise ValueError("score_candidates needs at least one labelled case")
    for config in configs:
        for case_id, label in labels.items():
            if case_id not in oof[config]:
                raise ValueError(f"configuration {config!r} has no out-of-fold prediction for case {case_id!r}")
            expected = (num_classes, *np.shape(label))
            if tuple(oof[config][case_id].shape) != expected:
                raise ValueError(f"configuration {config!r}, case {case_id!r}: probabilities have shape "
                                 f"{tuple(oof[config][case_id].shape)}, expected {expected}")

    dice: dict[tuple[str, ...], list[list[float]]] = {c: [] for c in candidates}
    for case_id, label in labels.items():
        label_t = torch.as_tensor(_as_numpy(label))
        for candidate in candidates:
            probs = average_probabilities([_as_numpy(oof[config][case_id]) for config in candidate])
            pred = torch.as_tensor(np.argmax(probs, axis=0))
            dice[candidate].append(score_case(pred, label_t, num_classes, with_hd95=False)["dice"])
    return {c: mean_foreground_dice(per_class_mean_dice(d)) for c, d in dice.items()}
