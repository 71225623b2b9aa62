"""nnU-Net v2's plan for a configuration, as overrides of our bundle's `plan` section, so that both systems
train and infer the same network on the same patches (the benchmark compares speed, not planners).

nnU-Net's plan lists axes in its array order: SimpleITK's (z, y, x), then `transpose_forward`. Ours are the
file's (x, y, z), as nibabel and MONAI read them: nnU-Net's axis j is our axis 2 - transpose_forward[j].
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from custom_components.data import DatasetError
from custom_components.planning.planner import deep_supervision_weights


def to_our_axes(values: Sequence, transpose_forward: Sequence[int]) -> list:
    """A per-axis list in nnU-Net's plan order, reordered to our (x, y, z)."""
    out = [None] * len(values)
    for j, value in enumerate(values):
        out[len(values) - 1 - int(transpose_forward[j])] = value
    return out


def plan_overrides(plans_file: str | os.PathLike, configuration: str = "3d_fullres") -> dict:
    """`plan#...` overrides (spacing, patch, batch, per-stage widths, kernels and strides, deep-supervision
    weights) that give our 3D bundle the network and patches of nnU-Net's `configuration`."""
    try:
        plans = json.loads(open(plans_file).read())
        config = plans["configurations"][configuration]
        arch = config["architecture"]["arch_kwargs"]
        transpose = plans["transpose_forward"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise DatasetError(f"{plans_file}: not an nnU-Net v2 plans file with configuration '{configuration}' ({e})") from e
    if len(config["patch_size"]) != 3:
        raise DatasetError(f"{plans_file}: configuration '{configuration}' is not 3D")
    n_stages = int(arch["n_stages"])
    return {
        "plan#spacing": [float(s) for s in to_our_axes(config["spacing"], transpose)],
        "plan#patch_size": [int(p) for p in to_our_axes(config["patch_size"], transpose)],
        "plan#batch_size": int(config["batch_size"]),
        "plan#features_per_stage": [int(f) for f in arch["features_per_stage"]],
        "plan#kernel_sizes": [[int(k) for k in to_our_axes(ks, transpose)] for ks in arch["kernel_sizes"]],
        "plan#strides": [[int(s) for s in to_our_axes(st, transpose)] for st in arch["strides"]],
        "plan#deep_supervision_weights": deep_supervision_weights(n_stages),
    }
