"""Check a dataset folder before planning and list every problem at once, each naming its file.

    python -m scripts.verify_dataset --dataset_dir D

Errors and warnings go to stderr (`error: ...`, `warning: ...`), a one-line summary to stdout. The exit code is 1
where there is an error, 0 otherwise (warnings alone pass).
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.verify import verify_dataset


def main(dataset_dir: str) -> None:
    """Verify `dataset_dir` (MSD or nnU-Net v2 layout): files, grids, channels, labels, intensities, spacing, ids."""
    report = verify_dataset(dataset_dir)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(report.summary())
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    fire.Fire(main)
