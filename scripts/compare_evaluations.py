"""Test Dice of several evaluate runs side by side, and how one of them compares with the best of the others.

    python -m scripts.compare_evaluations --eval_dir O [--reference ensemble]

Reads `O/<run>/metrics.json` (written by the evaluate workflow) for every run folder in `O`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire


def main(eval_dir: str, reference: str = "ensemble") -> None:
    """Print each run's mean and per-class test Dice; then the reference run against the best other run."""
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(eval_dir).glob("*/metrics.json"))}
    if not runs:
        print(f"error: {eval_dir}: no */metrics.json found; run the evaluate workflow first", file=sys.stderr)
        sys.exit(2)
    for name, m in runs.items():
        per_class = "  ".join(f"{k} {v['dice']:.4f}" for k, v in m["per_class"].items())
        print(f"{name:32s} mean test Dice {m['mean_dice']:.4f}  ({per_class}; {m['num_cases']} cases)")
    others = {k: v["mean_dice"] for k, v in runs.items() if k != reference}
    if reference in runs and others:
        best = max(others, key=others.get)
        diff = runs[reference]["mean_dice"] - others[best]
        print(f"{reference}: {runs[reference]['mean_dice']:.4f}; best other run: {best} {others[best]:.4f}; "
              f"difference {diff:+.4f}")


if __name__ == "__main__":
    fire.Fire(main)
