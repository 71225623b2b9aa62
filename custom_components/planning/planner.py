"""nnU-Net's rule-based planning of the 3D full-res, 2D and 3D low-res configurations, JSON in and JSON out.

Follows nnU-Net's default experiment planner (`default_experiment_planner.py`, `network_topology.py`):
target spacing from the fingerprint, per-channel normalisation, initial patch from the spacing's aspect
ratio, pooling/kernel topology, patch shrinking until an activation-memory estimate fits the budget, batch
size from the remaining budget capped at 5% of the dataset. Every list is per array axis in file order
(x, y, z): nnU-Net transposes the coarsest axis to the front, we keep the order and track the axis instead
(the 2D plan records the axis it slices along; its in-plane lists keep the array order of the other two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ANISO_THRESHOLD = 3  # nnunetv2/configuration.py: spacing or patch ratio above which data count as anisotropic
TARGET_SPACING_PERCENTILE = 10  # percentile used for the coarse axis of anisotropic datasets
NONZERO_MASK_THRESHOLD = 0.75  # z-score inside the nonzero mask when cropping removed more than 25%
MIN_STD = 1e-8
MIN_FEATURE_MAP_SIZE = 4  # smallest bottleneck edge; an axis is pooled only if it is >= 2x this
BASE_FEATURES = 30  # nnU-Net v1's first stage (the brief's "30 kernels"); v2 uses 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
INITIAL_PATCH_EDGE_3D = 256  # initial patch volume 256^3, then clipped and shrunk
INITIAL_PATCH_EDGE_2D = 2048
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION = 0.05  # one batch may cover at most 5% of the dataset's voxels
BYTES_PER_GB = 2**30  # memory budgets are in GiB
KEEP_SPACING = -1.0  # a spacing entry that keeps each case's own spacing (MONAI's non-positive pixdim)
LOWRES_COVERAGE_THRESHOLD = 0.25  # nnU-Net v2: 3d_lowres when the full-res patch covers less of the median image
LOWRES_SPACING_FACTOR = 1.03  # low-res spacing grows by this factor per step
LOWRES_FINE_AXIS_RATIO = 2  # axes more than 2x finer than the coarsest grow alone first
LOWRES_MIN_VOXEL_RATIO = 2  # nnU-Net v2 drops 3d_lowres whose median image is not at least 2x smaller
FORCED_LOWRES_VOXEL_RATIO = 4  # a forced 3d_lowres on data that do not need one: at most 1/4 of the voxels

# Memory model of nnU-Net's plain conv U-Net (two conv-norm-LeakyReLU per stage, LeakyReLU in place):
# an encoder stage keeps conv and norm outputs of both convs (4 tensors of its width); a decoder stage
# also keeps the transposed-conv output (1) and the skip concatenation (2): 7. With 4-byte values and
# weights + grads + two Adam moments (4 copies), nnU-Net's 3D reference (128^3, batch 2, 32..320, 6 stages)
# comes out at 7.9 GiB, next to the 8 GB it was measured on.
ENCODER_TENSORS_PER_STAGE = 4
DECODER_TENSORS_PER_STAGE = 7
BYTES_PER_VALUE = 4
OPTIMIZER_COPIES = 4


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    aniso_threshold: float = ANISO_THRESHOLD,
    percentile: float = TARGET_SPACING_PERCENTILE,
) -> list[float]:
    """Per-axis median spacing, with nnU-Net's exception for a coarse axis that also has few voxels."""
    spacings_arr = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings_arr, axis=0)
    median_size = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(target.size) if a != coarse]
    if not others:
        return [float(t) for t in target]
    aniso_spacing = target[coarse] > aniso_threshold * max(target[a] for a in others)
    aniso_voxels = median_size[coarse] * aniso_threshold < min(median_size[a] for a in others)
    if aniso_spacing and aniso_voxels:
        # The median would resample thin-slice cases badly; never go finer than the other axes.
        low = float(np.percentile(spacings_arr[:, coarse], percentile))
        target[coarse] = max(low, max(target[a] for a in others))
    return [float(t) for t in target]


def normalization_schemes(
    channel_names: Mapping[str, str],
    fingerprint: Mapping,
    nonzero_mask_threshold: float = NONZERO_MASK_THRESHOLD,
    min_std: float = MIN_STD,
) -> list[dict]:
    """One entry per channel: CT with dataset foreground statistics, else per-image z-score."""
    use_mask = fingerprint["median_relative_size_after_crop"] < nonzero_mask_threshold
    stats = fingerprint.get("foreground_intensity_properties_per_channel", {})
    schemes = []
    for key in sorted(channel_names, key=int):
        channel = int(key)
        if str(channel_names[key]).casefold() == "ct":
            props = stats.get(str(channel)) or {}
            if props.get("mean") is None:
                raise ValueError(f"channel {channel} is CT but the fingerprint has no foreground statistics for it")
            schemes.append({
                "channel": channel, "scheme": "CT",
                "clip": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                "mean": float(props["mean"]), "std": max(float(props["std"]), min_std),
                "use_nonzero_mask": False,  # CT values outside the body are meaningful (air)
            })
        else:
            schemes.append({"channel": channel, "scheme": "zscore", "use_nonzero_mask": bool(use_mask)})
    return schemes


def pool_and_kernel_sizes(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_stages: int | None = None,
) -> tuple[list[int], list[list[int]], list[list[int]], list[int]]:
    """nnU-Net's topology: (pools per axis, strides per stage, kernels per stage, padded patch size)."""
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(p) for p in patch_size]
    n_pool = [0] * dim
    strides = [[1] * dim]
    kernels: list[list[int]] = []
    kernel = [1] * dim
    while max_stages is None or len(strides) < max_stages:
        big_enough = [a for a in range(dim) if cur_size[a] >= 2 * min_feature_map_size]
        if not big_enough:
            break
        finest = min(cur_spacing[a] for a in big_enough)
        axes = [a for a in big_enough if cur_spacing[a] / finest < 2]
        # A lone poolable axis must leave room for more than one further halving (nnU-Net's rule).
        if len(axes) == 1 and cur_size[axes[0]] < 3 * min_feature_map_size:
            break
        finest_all = min(cur_spacing)
        kernel = [3 if k == 3 or cur_spacing[a] / finest_all < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append(list(kernel))
        strides.append([2 if a in axes else 1 for a in range(dim)])
        for a in axes:
            n_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
    kernels.append([3] * dim)  # the bottleneck always sees a full 3x3(x3) kernel
    padded = [int(math.ceil(p / 2**n) * 2**n) for p, n in zip(patch_size, n_pool)]
    return n_pool, strides, kernels, padded


def features_per_stage(n_stages: int, base: int = BASE_FEATURES, max_features: int = MAX_FEATURES_3D) -> list[int]:
    """Width doubles per stage from `base`, capped (nnU-Net: 320 in 3D, 512 in 2D)."""
    return [min(base * 2**s, max_features) for s in range(n_stages)]


def deep_supervision_weights(n_stages: int) -> list[float]:
    """nnU-Net's weights for decoder outputs, highest resolution first: 1/2^i, lowest dropped, sum 1."""
    n_outputs = max(n_stages - 1, 1)
    weights = [1.0 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        weights = weights[:-1]  # the lowest-resolution output gets weight 0 in nnU-Net
    total = sum(weights)
    return [w / total for w in weights]


def _stage_voxels(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[float]:
    """Voxels of a feature map at each stage's resolution."""
    size = np.asarray(patch_size, dtype=np.float64)
    voxels = []
    for stride in strides:
        size = np.ceil(size / np.asarray(stride, dtype=np.float64))
        voxels.append(float(np.prod(size)))
    return voxels


def _memory_terms(
    patch_size: Sequence[int],
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    num_channels: int,
    num_classes: int,
    encoder_tensors: float,
    decoder_tensors: float,
    bytes_per_value: int,
    optimizer_copies: int,
) -> tuple[float, float]:
    """(bytes per sample, fixed bytes) of the memory model described at ENCODER_TENSORS_PER_STAGE."""
    voxels = _stage_voxels(patch_size, strides)
    n = len(features)
    activations = sum(v * f * encoder_tensors for v, f in zip(voxels, features))
    activations += sum(voxels[s] * features[s] * decoder_tensors for s in range(n - 1))
    # input, plus logits and softmax of every deep-supervision head
    activations += voxels[0] * num_channels + sum(2 * voxels[s] * num_classes for s in range(max(n - 1, 1)))
    k = 3 ** len(patch_size)
    params = 0.0
    for s in range(n):
        f_in = num_channels if s == 0 else features[s - 1]
        params += k * (f_in * features[s] + features[s] ** 2)
    for s in range(n - 1):
        up = float(np.prod(strides[s + 1]))
        params += up * features[s + 1] * features[s] + k * (3 * features[s] ** 2) + features[s] * num_classes
    return activations * bytes_per_value, params * bytes_per_value * optimizer_copies


def estimate_training_memory_bytes(
    patch_size: Sequence[int],
    batch_size: int,
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int]],
    num_channels: int,
    num_classes: int,
    encoder_tensors_per_stage: float = ENCODER_TENSORS_PER_STAGE,
    decoder_tensors_per_stage: float = DECODER_TENSORS_PER_STAGE,
    bytes_per_value: int = BYTES_PER_VALUE,
    optimizer_copies: int = OPTIMIZER_COPIES,
) -> float:
    """Training memory of a plain conv U-Net: stored activations x batch plus weights and Adam state."""
    per_sample, fixed = _memory_terms(
        patch_size, features_per_stage, strides, num_channels, num_classes,
        encoder_tensors_per_stage, decoder_tensors_per_stage, bytes_per_value, optimizer_copies,
    )
    return per_sample * batch_size + fixed


def resampled_shapes(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], spacing: Sequence[float]
) -> list[list[int]]:
    """Shape of each case after resampling to `spacing` (nnU-Net's `compute_new_shape`)."""
    return [[int(round(n * s / t)) for n, s, t in zip(shape, sp, spacing)] for sp, shape in zip(spacings, shapes)]


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[int], volume: float) -> list[int]:
    """Patch with aspect ratio 1/spacing (isotropic in mm) and `volume` voxels, clipped to the median shape."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (volume / float(np.prod(inv))) ** (1.0 / len(spacing))
    return [min(int(round(float(i * scale))), int(m)) for i, m in zip(inv, median_shape)]


def patch_coverage(plan: Mapping) -> float:
    """Fraction of the plan's median image that one patch covers (nnU-Net's 3d_lowres criterion)."""
    median_voxels = float(np.prod(plan["median_shape"], dtype=np.float64))
    return float(np.prod(plan["patch_size"], dtype=np.float64)) / median_voxels if median_voxels > 0 else math.inf


def plan_configuration(
    spacing: Sequence[float],
    shapes: Sequence[Sequence[int]],
    num_channels: int,
    num_classes: int,
    memory_gb: float,
    dataset_voxels: float | None = None,
    base_features: int = BASE_FEATURES,
    max_features: int = MAX_FEATURES_3D,
    min_batch_size: int = MIN_BATCH_SIZE,
    max_dataset_fraction: float = MAX_DATASET_FRACTION,
    initial_patch_volume: float | None = None,
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_stages: int | None = None,
    aniso_threshold: float = ANISO_THRESHOLD,
) -> dict:
    """nnU-Net's `get_plans_for_configuration`: topology, patch, batch and memory at a given spacing.

    `shapes` are the cases' shapes at `spacing`; `dataset_voxels` (default: their sum) sets the 5% batch cap.
    """
    spacing = [float(s) for s in spacing]
    dim = len(spacing)
    median_shape = [int(round(float(m))) for m in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]
    if initial_patch_volume is None:
        initial_patch_volume = float(INITIAL_PATCH_EDGE_3D**3 if dim == 3 else INITIAL_PATCH_EDGE_2D**2)
    if dataset_voxels is None:
        dataset_voxels = float(sum(np.prod(s, dtype=np.float64) for s in shapes))
    budget = memory_gb * BYTES_PER_GB

    def topology(patch: Sequence[int]):
        return pool_and_kernel_sizes(spacing, patch, min_feature_map_size, max_stages)

    def memory(patch: Sequence[int], strides: list[list[int]]) -> tuple[float, float]:
        feats = features_per_stage(len(strides), base_features, max_features)
        return _memory_terms(patch, feats, strides, num_channels, num_classes, ENCODER_TENSORS_PER_STAGE,
                             DECODER_TENSORS_PER_STAGE, BYTES_PER_VALUE, OPTIMIZER_COPIES)

    n_pool, strides, kernels, patch = topology(initial_patch_size(spacing, median_shape, initial_patch_volume))
    per_sample, fixed = memory(patch, strides)
    while per_sample * min_batch_size + fixed > budget:
        # Shrink the axis that is largest relative to the median image (ties: last axis, like nnU-Net's argsort).
        ratios = [p / m for p, m in zip(patch, median_shape)]
        axis = max(range(dim), key=lambda a: (ratios[a], a))
        # Step by the divisor of the smaller patch so that no valid size is skipped (e.g. 256 -> 224 -> 192).
        trial = list(patch)
        trial[axis] -= 2 ** n_pool[axis]
        step = 2 ** topology(trial)[0][axis]
        if patch[axis] - step < 1:
            break  # nothing left to shrink: the plan reports an estimate above the budget
        shrunk = list(patch)
        shrunk[axis] -= step
        n_pool, strides, kernels, new_patch = topology(shrunk)
        if new_patch == patch:
            break
        patch = new_patch
        per_sample, fixed = memory(patch, strides)

    # Largest batch whose estimate fits (nnU-Net scales its reference batch); the 5% cap rounds down so one
    # batch never covers more than that fraction of the resampled dataset; both yield to the minimum batch.
    batch_by_memory = int((budget - fixed) // per_sample)
    batch_by_dataset = int(math.floor(max_dataset_fraction * dataset_voxels / float(np.prod(patch, dtype=np.float64))))
    batch_size = max(min(batch_by_memory, batch_by_dataset), min_batch_size)

    n_stages = len(strides)
    coarse = int(np.argmax(spacing))
    anisotropic = max(spacing) / min(spacing) > aniso_threshold
    # nnU-Net v2: augment in-plane only when the patch along the coarsest-spacing axis (axis 0 after its
    # transpose) is more than ANISO_THRESHOLD times shorter than the longest patch axis; never for 2D.
    dummy_2d = dim == 3 and max(patch) / patch[coarse] > aniso_threshold
    return {
        "spatial_dims": dim,
        "spacing": spacing,
        "median_shape": median_shape,
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch_size),
        "n_stages": n_stages,
        "features_per_stage": features_per_stage(n_stages, base_features, max_features),
        "kernel_sizes": kernels,
        "strides": strides,
        "pool_op_kernel_sizes": strides[1:],
        "anisotropic": bool(anisotropic),
        "coarse_axis": coarse if anisotropic else None,
        "do_dummy_2d_data_aug": bool(dummy_2d),
        "estimated_memory_gb": float((per_sample * batch_size + fixed) / BYTES_PER_GB),
        "memory_budget_gb": float(memory_gb),
        "deep_supervision_weights": deep_supervision_weights(n_stages),
    }


def plan_3d_fullres(
    fingerprint: Mapping,
    num_channels: int,
    num_classes: int,
    memory_gb: float,
    base_features: int = BASE_FEATURES,
    max_features: int = MAX_FEATURES_3D,
    min_batch_size: int = MIN_BATCH_SIZE,
    max_dataset_fraction: float = MAX_DATASET_FRACTION,
    initial_patch_volume: float | None = None,
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_stages: int | None = None,
    aniso_threshold: float = ANISO_THRESHOLD,
) -> dict:
    """nnU-Net's full-resolution plan (works for 2D fingerprints too): topology, patch, batch, memory."""
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    spacing = target_spacing(spacings, shapes, aniso_threshold=aniso_threshold)
    return plan_configuration(
        spacing, resampled_shapes(spacings, shapes, spacing), num_channels, num_classes, memory_gb,
        base_features=base_features, max_features=max_features, min_batch_size=min_batch_size,
        max_dataset_fraction=max_dataset_fraction, initial_patch_volume=initial_patch_volume,
        min_feature_map_size=min_feature_map_size, max_stages=max_stages, aniso_threshold=aniso_threshold,
    )


def slice_axis_2d(spacing: Sequence[float], aniso_threshold: float = ANISO_THRESHOLD) -> int:
    """The axis nnU-Net's 2D configuration slices along: the coarse axis (its transpose puts it first).

    Anisotropic data: the full-res plan's coarse axis. Otherwise the largest target spacing, ties to the last
    axis (isotropic data are sliced along the last file axis, usually z).
    """
    if max(spacing) / min(spacing) > aniso_threshold:
        return int(np.argmax(spacing))
    return max(range(len(spacing)), key=lambda a: (spacing[a], a))


def plan_2d(
    fingerprint: Mapping,
    num_channels: int,
    num_classes: int,
    memory_gb: float,
    base_features: int = BASE_FEATURES,
    max_features: int = MAX_FEATURES_2D,
    min_batch_size: int = MIN_BATCH_SIZE,
    max_dataset_fraction: float = MAX_DATASET_FRACTION,
    initial_patch_volume: float = float(INITIAL_PATCH_EDGE_2D**2),
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_stages: int | None = None,
    aniso_threshold: float = ANISO_THRESHOLD,
) -> dict:
    """nnU-Net's 2D configuration of a 3D dataset: the full-res plan's rules on the two in-plane axes.

    In-plane target spacing is the full-res target spacing without the slice axis; each case keeps its own
    spacing along the slice axis (`spacing` has KEEP_SPACING there, MONAI's "keep this axis"). Patch, kernels
    and strides are per in-plane axis in array order, and so are `anisotropic`/`coarse_axis` (indices into
    `patch_size`). The 5% batch cap counts the slices the 2D configuration trains on: each case's in-plane
    voxels times its own slice count (nnU-Net approximates this with the full-res dataset size).
    """
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    fullres_spacing = target_spacing(spacings, shapes, aniso_threshold=aniso_threshold)
    if len(fullres_spacing) != 3:
        raise ValueError(f"the 2D configuration slices 3D images; this fingerprint has {len(fullres_spacing)}D spacings")
    axis = slice_axis_2d(fullres_spacing, aniso_threshold)
    in_plane = [a for a in range(3) if a != axis]
    spacing_2d = [fullres_spacing[a] for a in in_plane]
    shapes_2d = resampled_shapes([[sp[a] for a in in_plane] for sp in spacings],
                                 [[sh[a] for a in in_plane] for sh in shapes], spacing_2d)
    dataset_voxels = float(sum(np.prod(s2, dtype=np.float64) * sh[axis] for s2, sh in zip(shapes_2d, shapes)))
    plan = plan_configuration(
        spacing_2d, shapes_2d, num_channels, num_classes, memory_gb, dataset_voxels=dataset_voxels,
        base_features=base_features, max_features=max_features, min_batch_size=min_batch_size,
        max_dataset_fraction=max_dataset_fraction, initial_patch_volume=initial_patch_volume,
        min_feature_map_size=min_feature_map_size, max_stages=max_stages, aniso_threshold=aniso_threshold,
    )
    spacing = list(fullres_spacing)
    spacing[axis] = KEEP_SPACING
    plan["spacing"] = spacing
    plan["spacing_2d"] = spacing_2d
    plan["slice_axis"] = axis
    return plan


def plan_3d_lowres(
    fingerprint: Mapping,
    num_channels: int,
    num_classes: int,
    memory_gb: float,
    force: bool = False,
    base_features: int = BASE_FEATURES,
    max_features: int = MAX_FEATURES_3D,
    min_batch_size: int = MIN_BATCH_SIZE,
    max_dataset_fraction: float = MAX_DATASET_FRACTION,
    initial_patch_volume: float | None = None,
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_stages: int | None = None,
    aniso_threshold: float = ANISO_THRESHOLD,
    coverage_threshold: float = LOWRES_COVERAGE_THRESHOLD,
    spacing_factor: float = LOWRES_SPACING_FACTOR,
) -> dict | None:
    """nnU-Net v2's 3D low-resolution configuration (first stage of the cascade), or None when not needed.

    Planned when the full-res patch covers less than `coverage_threshold` of the median image. Starting from
    the full-res target spacing, the spacing grows by `spacing_factor` per step, the axes more than
    LOWRES_FINE_AXIS_RATIO finer than the coarsest first (only they, while any is), otherwise all axes; each
    step resamples the cases, re-plans topology, patch and batch with the same budget, and stops once the
    patch covers the threshold. As in nnU-Net v2 the result is dropped when its median image is less than
    LOWRES_MIN_VOXEL_RATIO times smaller than full-res (a cascade would gain nothing).
    `force=True` always returns a plan; on data that do not need one (the full-res patch already covers the
    threshold) growth also continues until the median image has at most 1/FORCED_LOWRES_VOXEL_RATIO of the
    full-res median voxels, so that the forced stage is a real low-resolution view and not a copy of full-res.
    """
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]

    def plan_at(spacing: Sequence[float]) -> dict:
        return plan_configuration(
            spacing, resampled_shapes(spacings, shapes, spacing), num_channels, num_classes, memory_gb,
            base_features=base_features, max_features=max_features, min_batch_size=min_batch_size,
            max_dataset_fraction=max_dataset_fraction, initial_patch_volume=initial_patch_volume,
            min_feature_map_size=min_feature_map_size, max_stages=max_stages, aniso_threshold=aniso_threshold,
        )

    fullres = plan_at(target_spacing(spacings, shapes, aniso_threshold=aniso_threshold))
    needed = patch_coverage(fullres) < coverage_threshold
    if not needed and not force:
        return None
    fullres_voxels = float(np.prod(fullres["median_shape"], dtype=np.float64))
    spacing = np.asarray(fullres["spacing"], dtype=np.float64)
    # Terminates: the median image shrinks every step, and the patch is clipped to it, so coverage reaches 1.
    while True:
        fine = spacing.max() / spacing > LOWRES_FINE_AXIS_RATIO
        grow = fine if fine.any() else np.ones_like(fine)
        spacing = np.where(grow, spacing * spacing_factor, spacing)
        plan = plan_at(spacing.tolist())
        shrink = fullres_voxels / max(float(np.prod(plan["median_shape"], dtype=np.float64)), 1.0)
        if patch_coverage(plan) >= coverage_threshold and (needed or shrink >= FORCED_LOWRES_VOXEL_RATIO):
            break
    if not force and shrink < LOWRES_MIN_VOXEL_RATIO:
        return None
    return plan
