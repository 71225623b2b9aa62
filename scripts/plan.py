"""Fingerprint a dataset, plan it as nnU-Net does, and write a planned bundle.

    python -m scripts.plan --dataset_dir D --template bundles/nnunet_3d_fullres --output_dir W [--memory_gb G]
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.errors import DatasetError
from custom_components.planning.bundle_writer import write_planned_bundle
from custom_components.planning.dataset_plan import plan_dataset, plan_section


def summary(plans: dict, configuration: str) -> str:
    """One screen: the fingerprint's medians, the normalisation, and the chosen configuration."""
    c = plans["configurations"][configuration]
    fp = plans["fingerprint"]
    rule = plans["target_spacing_rule"]
    lines = [
        f"dataset {plans['dataset_name']}: {len(fp['spacings'])} training cases, {plans['num_channels']} channel(s), "
        f"{plans['num_classes'] - 1} foreground class(es) {[k for k, v in plans['labels'].items() if v]}",
        f"median spacing {_fmt(rule['median_spacing'])} -> target spacing {_fmt(c['spacing'])}"
        + (f" (anisotropic: axis {c['coarse_axis']} uses the 10th-percentile rule)" if c["anisotropic"] else ""),
        "normalisation: " + "; ".join(
            f"ch{n['channel']} {n['scheme']}" + (f" clip [{n['clip'][0]:.1f}, {n['clip'][1]:.1f}] mean {n['mean']:.1f} std {n['std']:.1f}"
                                                 if n["scheme"] == "CT" else f" nonzero mask {n['use_nonzero_mask']}")
            for n in plans["normalization"]),
        f"configuration {configuration}: patch {c['patch_size']}, batch {c['batch_size']}, median shape {c['median_shape']}",
        f"  stages {c['n_stages']}, features {c['features_per_stage']}",
        f"  strides {c['strides']}",
        f"  kernels {c['kernel_sizes']}",
        f"  dummy-2D augmentation {c['do_dummy_2d_data_aug']}, deep supervision weights {_fmt(c['deep_supervision_weights'])}",
        f"  estimated training memory {c['estimated_memory_gb']:.2f} GiB of a {plans['memory_budget_gb']} GiB budget ({plans['planned_for']})",
    ]
    return "\n".join(lines)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def main(dataset_dir: str, template: str = "bundles/nnunet_3d_fullres", output_dir: str = "runs/nnunet_3d_fullres",
         memory_gb: float | None = None, base_features: int = 30, max_features: int = 320,
         configuration: str = "3d_fullres") -> None:
    """Plan `dataset_dir` and write the planned bundle to `output_dir` (configs/plans.json included)."""
    try:
        plans = plan_dataset(dataset_dir, memory_gb=memory_gb, base_features=base_features, max_features=max_features)
        out = write_planned_bundle(template, output_dir, plans, plan_section(plans, configuration), plans["dataset_dir"])
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(plans, configuration))
    print(f"planned bundle written to {out} (plans: {out / 'configs' / 'plans.json'})")


if __name__ == "__main__":
    fire.Fire(main)
