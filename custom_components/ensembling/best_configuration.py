"""nnU-Net's choice of the final model, from cross-validation, and the ensemble bundle that runs it.

From the out-of-fold probabilities that `scripts.cross_validate` leaves in each bundle's `cv/`, every single
configuration and every pair is scored (mean foreground Dice of the averaged probabilities); the best wins.
Post-processing (largest connected components) is then decided on the winner's out-of-fold predictions. The
result is written as a bundle whose inference runs each member's own inference workflow (their own
preprocessing, fold ensemble and inversion to the input's geometry), averages the probabilities, takes the
argmax and applies the chosen post-processing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from custom_components.data.dataset import read_dataset, require_training_cases
from custom_components.data.errors import DatasetError
from custom_components.data.splits import inference_datalist
from custom_components.ensembling.selection import average_probabilities, candidate_ensembles, score_candidates, select_best
from custom_components.inference.bundle_runner import run_bundle_inference
from custom_components.inference.writer import save_label_map
from custom_components.io_utils import atomic_write_json, atomic_write_text
from custom_components.postprocessing.connected_components import apply_postprocessing, choose_postprocessing


def _load_probabilities(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: probabilities are missing; run scripts.cross_validate on this bundle first")
    with np.load(path) as f:
        return f["probabilities"].astype(np.float32)


def member_name(bundle_root: str | os.PathLike) -> str:
    return Path(bundle_root).resolve().name


def find_best(bundles: Sequence[str], dataset_dir: str | os.PathLike) -> dict:
    """Score singles and pairs on the out-of-fold predictions and decide the post-processing of the winner."""
    roots = [Path(b).resolve() for b in bundles]
    names = [member_name(r) for r in roots]
    if len(set(names)) != len(names):
        raise DatasetError(f"bundle folder names must differ to name the ensemble members: {names}")
    info = read_dataset(dataset_dir)
    cases = {c["id"]: c for c in require_training_cases(info)}
    cv = {}
    for root, name in zip(roots, names):
        summary = root / "cv" / "summary.json"
        if not summary.is_file():
            raise DatasetError(f"{summary}: missing; run scripts.cross_validate --bundle_root {root} first")
        cv[name] = json.loads(summary.read_text())
    # the cases every member predicted out of fold (all of them after a full 5-fold run)
    common = set.intersection(*({c["case"] for c in cv[n]["cases"]} for n in names)) & set(cases)
    if not common:
        raise DatasetError(f"the bundles {names} share no out-of-fold case; cross-validate the same folds on the same dataset")
    labels = {cid: np.asarray(nib.load(cases[cid]["label"]).dataobj).astype(np.int64) for cid in sorted(common)}
    oof = {name: {cid: _load_probabilities(root / "cv" / f"{cid}.npz") for cid in labels} for root, name in zip(roots, names)}
    scores = score_candidates(oof, labels, info.num_classes)
    best = select_best(scores)
    preds = {cid: np.argmax(average_probabilities([oof[m][cid] for m in best]), axis=0) for cid in labels}
    decision = choose_postprocessing([(preds[cid], labels[cid]) for cid in labels], info.num_classes)
    return {
        "members": {name: str(root) for root, name in zip(roots, names)},
        "candidates": [{"members": list(c), "cv_mean_dice": float(scores[c])} for c in candidate_ensembles(names)],
        "best": list(best),
        "best_cv_mean_dice": float(scores[best]),
        "cv_cases": sorted(labels),
        "cv_summaries": {name: cv[name]["overall"] for name in names},
        "postprocessing": decision,
    }


def run_ensemble_inference(members: Mapping[str, str], dataset_dir: str, output_dir: str,
                           postprocessing: Mapping | None = None, overrides: Mapping | None = None) -> list[str]:
    """Predict every `imagesTs` image with each member bundle, average the probabilities, argmax, post-process."""
    cases = inference_datalist(dataset_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".members-") as tmp:
        for name, root in members.items():
            run_bundle_inference(root, cases, Path(tmp) / name, overrides={"dataset_dir": str(dataset_dir), **dict(overrides or {})})
        for case in cases:
            probs = [_load_probabilities(Path(tmp) / name / f"{case['id']}.npz") for name in members]
            label_map = np.argmax(average_probabilities(probs), axis=0)
            if postprocessing:
                label_map = apply_postprocessing(label_map, postprocessing)
            affine = nib.load(Path(tmp) / next(iter(members)) / f"{case['id']}.nii.gz").affine
            path = out / f"{case['id']}.nii.gz"
            save_label_map(np.asarray(label_map)[None], affine, path)
            written.append(str(path))
    print(f"ensemble of {list(members)} wrote {len(written)} prediction(s) to {out}", flush=True)
    return written


ENSEMBLE_CONFIG = """\
# The ensemble chosen by scripts.find_best: each member bundle runs its own inference workflow on every image
# of dataset_dir/imagesTs; their probabilities are averaged, then the chosen post-processing is applied.
imports: ["$import os", "$import custom_components", "$import custom_components.ensembling.best_configuration", "$import custom_components.evaluation.report"]
dataset_dir: "{dataset_dir}"
output_dir: "$os.path.join('.', 'ensemble_predictions')"
members: {members}
postprocessing_rules: {postprocessing}
# member inference overrides, e.g. --member_overrides "{{'use_mirroring': False}}"
member_overrides: {{}}
run: ["$custom_components.ensembling.best_configuration.run_ensemble_inference(@members, @dataset_dir, @output_dir, @postprocessing_rules, @member_overrides)"]
inference: "$@run"
"""

ENSEMBLE_EVALUATE = """\
# Ensemble inference on imagesTs, then Dice and HD95 against labelsTs (metrics.json, metrics.csv in output_dir).
evaluate: ["$@run", "$custom_components.evaluation.report.evaluate_folder(@output_dir, @dataset_dir)"]
"""


def write_ensemble_bundle(result: Mapping, dataset_dir: str, output_dir: str | os.PathLike) -> Path:
    """Write the chosen ensemble as a bundle folder: configs (metadata, inference, evaluate), model card, licence."""
    out = Path(output_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    members = {name: result["members"][name] for name in result["best"]}
    first = Path(next(iter(members.values())))
    meta = json.loads((first / "configs" / "metadata.json").read_text())
    meta["name"] = "nnU-Net ensemble (" + " + ".join(members) + ")"
    meta["description"] = ("Ensemble chosen by cross-validation (scripts.find_best): " + ", ".join(members)
                           + f"; post-processing {json.dumps({k: result['postprocessing'][k] for k in ('largest_foreground', 'largest_per_class')})}")
    meta["changelog"] = {meta["version"]: "ensemble chosen by scripts.find_best"}
    atomic_write_json(out / "configs" / "metadata.json", meta)
    rules = {k: result["postprocessing"][k] for k in ("largest_foreground", "largest_per_class")}
    config = ENSEMBLE_CONFIG.format(dataset_dir=os.path.abspath(dataset_dir), members=json.dumps(members), postprocessing=json.dumps(rules))
    yaml.safe_load(config)  # the config must parse
    atomic_write_text(out / "configs" / "inference.yaml", config)
    atomic_write_text(out / "configs" / "evaluate.yaml", config + ENSEMBLE_EVALUATE)
    shutil.copy2(first / "configs" / "logging.conf", out / "configs" / "logging.conf")
    if (first / "LICENSE").is_file():
        shutil.copy2(first / "LICENSE", out / "LICENSE")
    atomic_write_json(out / "configs" / "find_best.json", result)
    atomic_write_text(out / "docs" / "README.md", model_card(result))
    return out


def model_card(result: Mapping) -> str:
    rows = "\n".join(f"| {' + '.join(c['members'])} | {c['cv_mean_dice']:.4f} |" for c in result["candidates"])
    pp = result["postprocessing"]
    return f"""# nnU-Net ensemble chosen by cross-validation (model card)

## Task
The segmentation task of its members: {', '.join(result['members'])}.

## How it was chosen
`python -m scripts.find_best` scored every configuration and every pair by the mean foreground Dice of their
out-of-fold (5-fold cross-validation) probabilities, averaged for pairs:

| candidate | CV mean Dice |
| --- | --- |
{rows}

Chosen: **{' + '.join(result['best'])}** (CV mean Dice {result['best_cv_mean_dice']:.4f}).

Post-processing, decided on the chosen candidate's out-of-fold predictions (applied only if it raises CV Dice
and makes no class worse): keep the largest foreground component: {pp['largest_foreground']}; keep the largest
component of classes: {pp['largest_per_class'] or 'none'}. CV Dice before {pp['dice_before']['mean']}, after
{pp['dice_after']['mean']}.

## Workflows
```bash
python -m monai.bundle run inference --config_file E/configs/inference.yaml --dataset_dir D --output_dir O
python -m monai.bundle run evaluate --config_file E/configs/evaluate.yaml --dataset_dir D --output_dir O
```
Each member runs its own inference (its fold ensemble when fold models exist); the probabilities are averaged in
each input's own geometry.

## Limitations
The member bundles are referenced by path: move them together with this folder. There is no single TorchScript
file for a configuration ensemble; each member exports its own.
"""
