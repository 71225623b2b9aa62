"""Per-case and mean Dice and HD95 per class, scored in the input's own geometry; JSON and CSV outputs."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from custom_components.io_utils import atomic_write_json, atomic_write_text
from custom_components.inference.writer import case_id_from_path, source_path
from custom_components.transforms.resampling import spacing_from_affine


def score_case(pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing=None,
               with_hd95: bool = True) -> dict[str, list[float]]:
    """Dice and HD95 (mm when `spacing` is given) for classes 1..num_classes-1 of one case.

    Dice is NaN when a class is absent from both prediction and label, 0 when only the label lacks it (nnU-Net's
    convention); HD95 is NaN when either is empty, and everywhere when `with_hd95` is False (Dice-only callers
    skip its cost)."""
    p = one_hot(pred.reshape(1, 1, *pred.shape[-3:]).long(), num_classes)
    t = one_hot(label.reshape(1, 1, *label.shape[-3:]).long(), num_classes)
    pred_empty = p[0, 1:].flatten(1).sum(1) == 0
    label_empty = t[0, 1:].flatten(1).sum(1) == 0
    # a class predicted where the label has none scores 0 (a false positive), not NaN
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0]
    dice[pred_empty & label_empty] = float("nan")
    hd = torch.full_like(dice, float("nan"))
    both = ~(pred_empty | label_empty)
    if with_hd95 and both.any():  # HD95 only where both masks exist (it is undefined otherwise)
        idx = [0] + [int(i) + 1 for i in torch.nonzero(both).flatten()]
        hd_both = compute_hausdorff_distance(p[:, idx], t[:, idx], include_background=False, percentile=95,
                                             spacing=None if spacing is None else [float(s) for s in spacing])[0]
        hd[both] = hd_both.to(hd.dtype)
    return {"dice": [float(v) for v in dice], "hd95": [float(v) for v in hd]}


def _clean(v: float):
    return None if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) else round(v, 6)


def per_class_mean_dice(table) -> np.ndarray:
    """Per foreground class, the mean over cases of a (cases, classes) Dice table, NaNs skipped (NaN if all are)."""
    table = np.asarray(table, dtype=float)
    finite = np.isfinite(table)
    counts = finite.sum(0)
    return np.where(counts > 0, np.where(finite, table, 0.0).sum(0) / np.maximum(counts, 1), np.nan)


def mean_foreground_dice(per_class) -> float:
    """The mean over foreground classes of per-class means (classes without any Dice skipped)."""
    per_class = np.asarray(per_class, dtype=float)
    finite = per_class[np.isfinite(per_class)]
    return float(finite.mean()) if finite.size else float("nan")


def summarise(cases: list[dict], class_names: list[str]) -> dict:
    """`mean_dice` is the mean over foreground classes of the per-class means over cases (NaNs skipped)."""
    per_class = {}
    for i, name in enumerate(class_names):
        d = np.array([c["dice"][i] for c in cases], dtype=float)
        h = np.array([c["hd95"][i] for c in cases], dtype=float)
        per_class[name] = {
            "dice": _clean(float(np.nanmean(d))) if np.isfinite(d).any() else None,
            "hd95": _clean(float(np.nanmean(h))) if np.isfinite(h).any() else None,
        }
    dices = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    hds = [v["hd95"] for v in per_class.values() if v["hd95"] is not None]
    return {
        "mean_dice": _clean(float(np.mean(dices))) if dices else None,
        "mean_hd95": _clean(float(np.mean(hds))) if hds else None,
        "num_cases": len(cases),
        "per_class": per_class,
        "cases": [{"case": c["case"], "dice": dict(zip(class_names, map(_clean, c["dice"]))),
                   "hd95": dict(zip(class_names, map(_clean, c["hd95"])))} for c in cases],
    }


def write_report(summary: dict, output_dir: str | os.PathLike, class_names: list[str]) -> None:
    out = Path(output_dir)
    atomic_write_json(out / "metrics.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case"] + [f"dice_{n}" for n in class_names] + [f"hd95_{n}" for n in class_names])
    for c in summary["cases"]:
        w.writerow([c["case"]] + [c["dice"][n] for n in class_names] + [c["hd95"][n] for n in class_names])
    w.writerow(["mean"] + [summary["per_class"][n]["dice"] for n in class_names] + [summary["per_class"][n]["hd95"] for n in class_names])
    atomic_write_text(out / "metrics.csv", buf.getvalue())


class SegmentationReport:
    """Ignite handler for the evaluate workflow: scores every `pred` against its `label`, then writes
    `metrics.json` (with `mean_dice` at the top level) and `metrics.csv` to `output_dir` and prints the means.

    It also times each case from loading to the written prediction (preprocessing, sliding window, mirroring,
    inversion, writing; not the scoring), and reports the median as `seconds_per_case`: the first case carries
    the warm-up, so the median is the steady rate."""

    def __init__(self, output_dir: str, labels: Mapping[str, int], pred_key: str = "pred", label_key: str = "label") -> None:
        self.output_dir = output_dir
        self.class_names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        self.num_classes = max(labels.values()) + 1
        self.pred_key, self.label_key = pred_key, label_key
        self.cases: list[dict] = []
        self.seconds: list[float] = []
        self._t0 = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start_case)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.score)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine) -> None:
        self.cases.clear()
        self.seconds.clear()

    def _start_case(self, engine) -> None:
        self._t0 = time.perf_counter()

    def score(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        self.seconds.append((time.perf_counter() - self._t0) / max(len(items), 1))
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            if tuple(pred.shape[-3:]) != tuple(label.shape[-3:]):
                raise ValueError(f"{source_path(item, self.label_key)}: prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
            spacing = spacing_from_affine(label.affine.cpu().numpy()) if isinstance(label, MetaTensor) else None
            scores = score_case(pred, label, self.num_classes, spacing)
            scores["case"] = case_id_from_path(source_path(item, self.label_key))
            self.cases.append(scores)

    def write(self, engine) -> None:
        summary = summarise(self.cases, self.class_names)
        summary["seconds_per_case"] = round(float(np.median(self.seconds)), 3) if self.seconds else None
        write_report(summary, self.output_dir, self.class_names)
        engine.state.metrics["mean_dice"] = summary["mean_dice"]
        per = ", ".join(f"{n} {v['dice']}" for n, v in summary["per_class"].items())
        print(f"test Dice: mean {summary['mean_dice']} ({per}) over {summary['num_cases']} cases -> {self.output_dir}/metrics.json", flush=True)


def score_folder(pred_dir: str | os.PathLike, cases, num_classes: int) -> list[dict]:
    """Dice/HD95 per class of each case's `<id>.nii.gz` in `pred_dir` against its label, in the label's geometry."""
    import nibabel as nib

    from custom_components.data.errors import DatasetError

    scores = []
    for case in cases:
        path = Path(pred_dir) / f"{case['id']}.nii.gz"
        if not path.is_file():
            raise DatasetError(f"{path}: prediction is missing for case '{case['id']}'")
        label_img = nib.load(case["label"])
        pred, label = np.asarray(nib.load(path).dataobj), np.asarray(label_img.dataobj)
        if pred.shape != label.shape:
            raise DatasetError(f"{path}: prediction shape {pred.shape} differs from label {case['label']} shape {label.shape}")
        s = score_case(torch.as_tensor(pred.astype(np.int64)), torch.as_tensor(label.astype(np.int64)), num_classes,
                       spacing_from_affine(label_img.affine))
        s["case"] = case["id"]
        scores.append(s)
    return scores


def evaluate_folder(pred_dir: str | os.PathLike, dataset_dir: str | os.PathLike) -> dict:
    """Score every `imagesTs` case's prediction in `pred_dir` against `labelsTs`; write metrics.json and .csv there."""
    from custom_components.data.dataset import read_dataset
    from custom_components.data.splits import inference_datalist

    info = read_dataset(dataset_dir)
    names = [n for n, v in sorted(info.labels.items(), key=lambda kv: kv[1]) if v != 0]
    summary = summarise(score_folder(pred_dir, inference_datalist(dataset_dir, require_labels=True), info.num_classes), names)
    write_report(summary, pred_dir, names)
    per = ", ".join(f"{n} {v['dice']}" for n, v in summary["per_class"].items())
    print(f"test Dice: mean {summary['mean_dice']} ({per}) over {summary['num_cases']} cases -> {pred_dir}/metrics.json", flush=True)
    return summary
