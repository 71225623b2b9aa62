"""Write the synthetic demo CT dataset: `python -m scripts.make_demo_data --output_dir D`."""

import sys

import fire

from custom_components.data.demo import make_demo_dataset
from custom_components.data.errors import DatasetError


def main(output_dir: str, n_train: int = 12, n_test: int = 4, seed: int = 0) -> None:
    """Write a deterministic synthetic dataset (nnU-Net v2 layout) to `output_dir`."""
    try:
        out = make_demo_dataset(output_dir, n_train=n_train, n_test=n_test, seed=seed)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"demo dataset: {n_train} training and {n_test} test cases in {out}")


if __name__ == "__main__":
    fire.Fire(main)
