"""From a dataset folder to `plans.json`: read every training case once, fingerprint, plan.

The images are read with the same MONAI loader and checks as training, so a case that would fail in
training fails here first, with its file named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from custom_components.data.dataset import DatasetInfo, read_dataset, require_training_cases
from custom_components.data.errors import DatasetError
from custom_components.data.verify import spacing_problem
from custom_components.planning.fingerprint import (
    FINGERPRINT_SEED,
    aggregate_fingerprint,
    case_fingerprint,
    foreground_samples_per_case,
)
from custom_components.planning.planner import (
    LOWRES_COVERAGE_THRESHOLD,
    normalization_schemes,
    patch_coverage,
    plan_2d,
    plan_3d_fullres,
    plan_3d_lowres,
    target_spacing,
)
from custom_components.transforms.checks import CheckImaged
from custom_components.transforms.resampling import spacing_from_affine

PLANS_VERSION = 1
CPU_GB_PER_CORE = 0.125  # CPU budget: keeps one training iteration near a second on a 2-core machine


def default_memory_gb() -> tuple[float, str]:
    """The planning budget for this machine: the GPU's memory, or on CPU a budget sized for training speed."""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        return round(min(total, 80.0) * 0.9, 2), f"GPU {torch.cuda.get_device_name(0)}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return round(CPU_GB_PER_CORE * cores, 3), f"CPU, {cores} cores"


def fingerprint_dataset(info: DatasetInfo, seed: int = FINGERPRINT_SEED) -> dict:
    """nnU-Net's dataset fingerprint over every training case (spacings, cropped shapes, foreground intensities)."""
    cases = require_training_cases(info)
    load = {key: Compose([LoadImaged(key, image_only=True), EnsureChannelFirstd(key)]) for key in ("image", "label")}
    check = CheckImaged("image", spatial_dims=3, num_channels=info.num_channels, label_key="label",
                        label_values=list(info.labels.values()))
    rng = np.random.default_rng(seed)
    per_case = foreground_samples_per_case(len(cases))
    prints = []
    for case in cases:
        d = {}
        for key in ("image", "label"):
            try:
                d.update(load[key]({key: case[key]}))
            except RuntimeError as e:  # MONAI wraps loader errors: name the file that failed
                paths = case[key] if isinstance(case[key], list) else [case[key]]
                raise DatasetError(f"{', '.join(map(str, paths))}: cannot be read ({e.__cause__ or e})") from e
        d = check(d)
        img, lab = d["image"], d["label"]
        spacing = spacing_from_affine(img.affine.numpy())
        if problem := spacing_problem(spacing):
            raise DatasetError(f"{', '.join(map(str, case['image']))}: {problem}")
        prints.append(case_fingerprint(img.numpy().astype(np.float32), lab.numpy()[0].astype(np.int16), spacing, per_case, rng))
    fp = aggregate_fingerprint(prints)
    fp["case_ids"] = [c["id"] for c in cases]
    return fp


def make_plans(info: DatasetInfo, fingerprint: Mapping, memory_gb: float, device: str,
               base_features: int = 30, max_features: int = 320, force_lowres: bool = False) -> dict:
    """The plans.json content: fingerprint, normalisation and nnU-Net's configurations.

    Always "2d" and "3d_fullres"; "3d_lowres" when nnU-Net's cascade rule asks for it or `force_lowres`.
    `lowres_rule` records the full-res patch coverage that the decision was made on.
    """
    num_classes = info.num_classes
    fullres = plan_3d_fullres(fingerprint, info.num_channels, num_classes, memory_gb,
                              base_features=base_features, max_features=max_features)
    two_d = plan_2d(fingerprint, info.num_channels, num_classes, memory_gb, base_features=base_features)
    lowres = plan_3d_lowres(fingerprint, info.num_channels, num_classes, memory_gb, force=force_lowres,
                            base_features=base_features, max_features=max_features)
    configurations = {"2d": two_d, "3d_fullres": fullres}
    if lowres is not None:
        configurations["3d_lowres"] = lowres
    return {
        "plans_version": PLANS_VERSION,
        "dataset_name": info.name,
        "dataset_dir": os.path.abspath(info.root),
        "channel_names": info.channel_names,
        "num_channels": info.num_channels,
        "labels": info.labels,
        "num_classes": num_classes,
        "planned_for": device,
        "memory_budget_gb": memory_gb,
        "fingerprint": dict(fingerprint),
        "target_spacing_rule": {
            "median_spacing": [float(v) for v in np.median(np.asarray(fingerprint["spacings"]), axis=0)],
            "target_spacing": target_spacing(fingerprint["spacings"], fingerprint["shapes_after_crop"]),
        },
        "lowres_rule": {
            "fullres_patch_coverage": patch_coverage(fullres),
            "coverage_threshold": LOWRES_COVERAGE_THRESHOLD,
            "forced": bool(force_lowres),
            "planned": lowres is not None,
        },
        "normalization": normalization_schemes(info.channel_names, fingerprint),
        "configurations": configurations,
    }


PLAN_SECTION_KEYS = ("spacing", "patch_size", "batch_size", "features_per_stage", "kernel_sizes", "strides",
                     "deep_supervision_weights", "do_dummy_2d_data_aug", "coarse_axis")
PLAN_SECTION_KEYS_2D = ("slice_axis", "spacing_2d")


def plan_section(plans: Mapping, configuration: str) -> dict:
    """The flat `plan` section that the bundle configs read (`@plan#patch_size`, ...), for any configuration."""
    if configuration not in plans["configurations"]:
        hint = ("; nnU-Net's cascade rule did not plan it for this dataset (the full-res patch covers enough of the "
                "images): plan with --force_lowres to build the cascade anyway") if configuration == "3d_lowres" else ""
        raise DatasetError(f"plans.json has no '{configuration}' configuration (has {sorted(plans['configurations'])}){hint}")
    conf = plans["configurations"][configuration]
    section = {
        "configuration": configuration,
        "num_channels": plans["num_channels"],
        "num_classes": plans["num_classes"],
        "labels": plans["labels"],
        "normalization": plans["normalization"],
        # plans written before spatial_dims was recorded: one patch edge per spatial axis
        "spatial_dims": int(conf.get("spatial_dims", len(conf["patch_size"]))),
        **{k: conf[k] for k in PLAN_SECTION_KEYS},
    }
    section.update({k: conf[k] for k in PLAN_SECTION_KEYS_2D if k in conf})
    return section


def plan_dataset(dataset_dir: str | os.PathLike, memory_gb: float | None = None, base_features: int = 30,
                 max_features: int = 320, force_lowres: bool = False) -> dict:
    info = read_dataset(dataset_dir)
    if memory_gb is None:
        memory_gb, device = default_memory_gb()
    else:
        device = "given budget"
    if memory_gb <= 0:
        raise DatasetError(f"--memory_gb must be positive, got {memory_gb}")
    return make_plans(info, fingerprint_dataset(info), float(memory_gb), device, base_features, max_features,
                      force_lowres=force_lowres)
