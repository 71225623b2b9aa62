"""Fingerprint a dataset, plan it as nnU-Net does, and write a planned bundle.

    python -m scripts.plan --dataset_dir D --template bundles/nnunet_3d_fullres --output_dir W [--memory_gb G]
        [--force_lowres]  (plan 3d_lowres even where nnU-Net's cascade rule does not ask for it)
"""

from __future__ import annotations

import sys

import fire

from custom_components.data.errors import DatasetError
from custom_components.data.verify import verify_dataset
from custom_components.planning.bundle_writer import planned_configurations, template_configuration, write_planned_bundle
from custom_components.planning.dataset_plan import plan_dataset
from custom_components.planning.planner import LOWRES_MIN_VOXEL_RATIO


def summary(plans: dict, written: list[str]) -> str:
    """One screen: the fingerprint's medians, the normalisation, every planned configuration, the cascade rule."""
    fp = plans["fingerprint"]
    rule = plans["target_spacing_rule"]
    fullres = plans["configurations"]["3d_fullres"]
    lines = [
        f"dataset {plans['dataset_name']}: {len(fp['spacings'])} training cases, {plans['num_channels']} channel(s), "
        f"{plans['num_classes'] - 1} foreground class(es) {[k for k, v in plans['labels'].items() if v]}",
        f"median spacing {_fmt(rule['median_spacing'])} -> target spacing {_fmt(rule['target_spacing'])}"
        + (f" (anisotropic: axis {fullres['coarse_axis']} uses the 10th-percentile rule)" if fullres["anisotropic"] else ""),
        "normalisation: " + "; ".join(
            f"ch{n['channel']} {n['scheme']}" + (f" clip [{n['clip'][0]:.1f}, {n['clip'][1]:.1f}] mean {n['mean']:.1f} std {n['std']:.1f}"
                                                 if n["scheme"] == "CT" else f" nonzero mask {n['use_nonzero_mask']}")
            for n in plans["normalization"]),
    ]
    for name, c in plans["configurations"].items():
        lines += _configuration_block(name, c, plans, written=name in written)
    lines.append(_lowres_note(plans))
    return "\n".join(lines)


def _configuration_block(name: str, c: dict, plans: dict, written: bool) -> list[str]:
    slices = f", slices along axis {c['slice_axis']}" if "slice_axis" in c else ""
    return [
        f"configuration {name}{' (written to the bundle)' if written else ''}: patch {c['patch_size']}, "
        f"batch {c['batch_size']}, spacing {_fmt_spacing(c['spacing'])}{slices}, median shape {c['median_shape']}",
        f"  stages {c['n_stages']}, features {c['features_per_stage']}",
        f"  strides {c['strides']}",
        f"  kernels {c['kernel_sizes']}",
        f"  dummy-2D augmentation {c['do_dummy_2d_data_aug']}, deep supervision weights {_fmt(c['deep_supervision_weights'])}",
        f"  estimated training memory {c['estimated_memory_gb']:.2f} GiB of a {plans['memory_budget_gb']} GiB budget ({plans['planned_for']})",
    ]


def _lowres_note(plans: dict) -> str:
    """Why 3d_lowres is (not) there: nnU-Net plans it when the full-res patch covers under 25% of the median image."""
    rule = plans["lowres_rule"]
    coverage, threshold = 100 * rule["fullres_patch_coverage"], 100 * rule["coverage_threshold"]
    if rule["fullres_patch_coverage"] >= rule["coverage_threshold"]:
        if rule["planned"]:
            return (f"3d_lowres forced (--force_lowres): the full-res patch already covers {coverage:.1f}% of the median "
                    f"image (nnU-Net plans it below {threshold:.0f}%)")
        return (f"3d_lowres not needed: the full-res patch covers {coverage:.1f}% of the median image "
                f"(nnU-Net plans it below {threshold:.0f}%)")
    if rule["planned"]:
        return f"3d_lowres planned: the full-res patch covers only {coverage:.1f}% of the median image (< {threshold:.0f}%)"
    return (f"3d_lowres dropped: the full-res patch covers {coverage:.1f}% of the median image (< {threshold:.0f}%), but "
            f"a low-res image covered by its patch would be less than {LOWRES_MIN_VOXEL_RATIO}x smaller than full-res (nnU-Net v2)")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _fmt_spacing(values) -> str:
    """Spacing with the 2D plan's non-positive entry shown as what it means."""
    return "[" + ", ".join(f"{v:.3g}" if v > 0 else "each case's own" for v in values) + "]"


def main(dataset_dir: str, template: str = "bundles/nnunet_3d_fullres", output_dir: str = "runs/nnunet_3d_fullres",
         memory_gb: float | None = None, base_features: int = 30, max_features: int = 320,
         configuration: str | None = None, force_lowres: bool = False) -> None:
    """Verify `dataset_dir` (`scripts.verify_dataset`), plan it and write the planned bundle to `output_dir`
    (configs/plans.json included). The template names the configuration it is built for; `--configuration`
    overrides it."""
    try:
        configuration = configuration or template_configuration(template)
        verification = verify_dataset(dataset_dir)  # every problem at once, before a plan that stops at the first
        for line in verification.lines():
            print(line, file=sys.stderr)
        if verification.errors:
            sys.exit(2)
        plans = plan_dataset(dataset_dir, memory_gb=memory_gb, base_features=base_features, max_features=max_features,
                             force_lowres=force_lowres)
        out = write_planned_bundle(template, output_dir, plans, configuration, plans["dataset_dir"])
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(plans, planned_configurations(template, configuration)))
    print(f"planned bundle written to {out} (plans: {out / 'configs' / 'plans.json'})")


if __name__ == "__main__":
    fire.Fire(main)
