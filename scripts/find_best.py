"""Choose the best configuration or pair by cross-validation, decide post-processing, write the ensemble bundle.

    python -m scripts.find_best --bundles W2D,W3D,WCASCADE --dataset_dir D --output_dir E
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.errors import DatasetError
from custom_components.ensembling.best_configuration import find_best, write_ensemble_bundle


def main(bundles, dataset_dir: str, output_dir: str) -> None:
    """Read each bundle's `cv/`, pick the winner as nnU-Net does, and write the ensemble bundle to `output_dir`."""
    roots = [b for b in (bundles.split(",") if isinstance(bundles, str) else bundles) if b]
    try:
        result = find_best(roots, dataset_dir)
        out = write_ensemble_bundle(result, dataset_dir, output_dir)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for c in result["candidates"]:
        print(f"{' + '.join(c['members']):50s} CV mean Dice {c['cv_mean_dice']:.4f}")
    pp = result["postprocessing"]
    print(f"best: {' + '.join(result['best'])}; post-processing: largest foreground component {pp['largest_foreground']}, "
          f"largest per class {pp['largest_per_class']} (CV Dice {pp['dice_before']['mean']} -> {pp['dice_after']['mean']})")
    print(f"ensemble bundle: {out}  (python -m monai.bundle run inference --config_file {out}/configs/inference.yaml --output_dir O)")


if __name__ == "__main__":
    fire.Fire(main)
