"""Several evaluate runs side by side: is the chosen ensemble at least as good as the best single model?"""

from __future__ import annotations

import json
import os
from pathlib import Path

from custom_components.data.errors import DatasetError


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"  # metrics.json writes null where every case is NaN


def compare_runs(eval_dir: str | os.PathLike, reference: str = "ensemble") -> dict:
    """Read `eval_dir/<run>/metrics.json` of every run; return their mean Dice and the reference run's margin over
    the best other run (None where a mean is missing)."""
    paths = sorted(Path(eval_dir).glob("*/metrics.json"))
    if not paths:
        raise DatasetError(f"{eval_dir}: no */metrics.json found; run the evaluate workflow first")
    runs = {p.parent.name: json.loads(p.read_text()) for p in paths}
    if reference not in runs:
        raise DatasetError(f"{eval_dir}/{reference}/metrics.json: the reference run is missing (runs: {sorted(runs)})")
    others = {k: v["mean_dice"] for k, v in runs.items() if k != reference and v["mean_dice"] is not None}
    best = max(others, key=others.get) if others else None
    ref = runs[reference]["mean_dice"]
    return {"runs": runs, "reference": reference, "best_other": best,
            "margin": None if best is None or ref is None else ref - others[best]}


def comparison_lines(result: dict) -> list[str]:
    """One line per run (mean and per-class Dice), then the reference against the best other run."""
    lines = []
    for name, m in result["runs"].items():
        per_class = "  ".join(f"{k} {_fmt(v['dice'])}" for k, v in m["per_class"].items())
        lines.append(f"{name:32s} mean test Dice {_fmt(m['mean_dice'])}  ({per_class}; {m['num_cases']} cases)")
    ref, best = result["reference"], result["best_other"]
    if best is not None:
        lines.append(f"{ref}: {_fmt(result['runs'][ref]['mean_dice'])}; best other run: {best} "
                     f"{_fmt(result['runs'][best]['mean_dice'])}; difference "
                     + ("n/a" if result["margin"] is None else f"{result['margin']:+.4f}"))
    return lines
