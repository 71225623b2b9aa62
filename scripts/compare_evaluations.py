"""Test Dice of several evaluate runs side by side, and how one of them compares with the best of the others.

    python -m scripts.compare_evaluations --eval_dir O [--reference ensemble]

Reads `O/<run>/metrics.json` (written by the evaluate workflow) for every run folder in `O`.
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.errors import DatasetError
from custom_components.evaluation.comparison import compare_runs, comparison_lines


def main(eval_dir: str, reference: str = "ensemble") -> None:
    """Print each run's mean and per-class test Dice; then the reference run against the best other run."""
    try:
        result = compare_runs(eval_dir, reference)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(comparison_lines(result)))


if __name__ == "__main__":
    fire.Fire(main)
