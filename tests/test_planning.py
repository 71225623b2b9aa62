"""nnU-Net fingerprint and planning rules, checked on hand-made fingerprints with hand-computed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom_components.planning.fingerprint import aggregate_fingerprint, case_fingerprint, foreground_samples_per_case
from custom_components.planning.planner import (
    BYTES_PER_GB,
    deep_supervision_weights,
    estimate_training_memory_bytes,
    features_per_stage,
    normalization_schemes,
    plan_3d_fullres,
    pool_and_kernel_sizes,
    target_spacing,
)

# Anisotropic MR: 0.7 mm in-plane, z spacing from 2.5 to 5 mm (median 4, 10th percentile 3.0), 24 slices.
MR_Z_SPACINGS = [2.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.5, 5.0]


def ct_fingerprint(n_cases: int = 10) -> dict:
    """Isotropic CT: 1 mm, 200^3 after crop."""
    return {"spacings": [[1.0, 1.0, 1.0]] * n_cases, "shapes_after_crop": [[200, 200, 200]] * n_cases,
            "median_relative_size_after_crop": 0.9}


def mr_fingerprint(z_first: bool = False) -> dict:
    """Anisotropic MR, z last (file order) or z first."""
    spacings = [[0.7, 0.7, z] for z in MR_Z_SPACINGS]
    shapes = [[288, 288, 24]] * len(MR_Z_SPACINGS)
    if z_first:
        spacings = [[s[2], s[0], s[1]] for s in spacings]
        shapes = [[s[2], s[0], s[1]] for s in shapes]
    return {"spacings": spacings, "shapes_after_crop": shapes, "median_relative_size_after_crop": 0.6}


def thin_fingerprint(n_cases: int) -> dict:
    """2D-like: 320x320 slices, 3 of them, 5 mm apart."""
    return {"spacings": [[1.0, 1.0, 5.0]] * n_cases, "shapes_after_crop": [[320, 320, 3]] * n_cases,
            "median_relative_size_after_crop": 1.0}


# --- target spacing -----------------------------------------------------------------------------------

def test_isotropic_target_spacing_is_per_axis_median():
    spacings = [[0.8, 0.9, 1.0], [1.0, 1.0, 1.0], [1.2, 1.5, 1.5]]
    assert target_spacing(spacings, [[200, 200, 200]] * 3) == [1.0, 1.0, 1.0]


def test_anisotropic_axis_uses_tenth_percentile_spacing():
    # median z 4.0 > 3 x 0.7 and median z size 24 x 3 = 72 < 288: the 10th percentile of 11 values is the 2nd.
    fp = mr_fingerprint()
    assert target_spacing(fp["spacings"], fp["shapes_after_crop"]) == [0.7, 0.7, 3.0]


def test_many_slices_block_the_tenth_percentile_exception():
    # Same spacings, but 100 slices: 100 x 3 = 300 >= 288, so the median stays.
    fp = mr_fingerprint()
    assert target_spacing(fp["spacings"], [[288, 288, 100]] * 11) == [0.7, 0.7, 4.0]


def test_tenth_percentile_never_finer_than_the_other_axes():
    # 10th percentile of [0.5, 0.8, 4 x 9] is 0.8, finer than in-plane 1.0: clamp to 1.0.
    spacings = [[1.0, 1.0, z] for z in [0.5, 0.8] + [4.0] * 9]
    assert target_spacing(spacings, [[256, 256, 20]] * 11) == [1.0, 1.0, 1.0]


def test_coarse_axis_may_be_the_first_array_axis():
    fp = mr_fingerprint(z_first=True)
    assert target_spacing(fp["spacings"], fp["shapes_after_crop"]) == [3.0, 0.7, 0.7]


# --- topology -----------------------------------------------------------------------------------------

def test_isotropic_topology_pools_all_axes_until_bottleneck_is_below_eight():
    # 200 -> 100 -> 50 -> 25 -> 13 -> 7: five poolings, patch padded to a multiple of 32.
    n_pool, strides, kernels, patch = pool_and_kernel_sizes([1.0, 1.0, 1.0], [200, 200, 200])
    assert n_pool == [5, 5, 5]
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kernels == [[3, 3, 3]] * 6
    assert patch == [224, 224, 224]


def test_anisotropic_topology_pools_in_plane_first_with_kernel_one_along_z():
    # z (3.0) joins once in-plane spacing reaches 2.8 (within 2x); z stops at 4 voxels, x/y go on to 5.
    n_pool, strides, kernels, patch = pool_and_kernel_sizes([0.7, 0.7, 3.0], [288, 288, 32])
    assert n_pool == [6, 6, 3]
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 1]] + [[3, 3, 3]] * 5
    assert patch == [320, 320, 32]


def test_thin_dataset_never_pools_the_few_slices():
    n_pool, strides, kernels, patch = pool_and_kernel_sizes([1.0, 1.0, 5.0], [320, 320, 3])
    assert n_pool == [6, 6, 0]
    assert all(s[2] == 1 for s in strides)
    # kernel turns 3 along z once in-plane spacing is 4 mm (5 / 4 < 2), and stays 3
    assert kernels == [[3, 3, 1], [3, 3, 1]] + [[3, 3, 3]] * 5
    assert patch == [320, 320, 3]


def test_two_dimensional_topology():
    # axis 1 (2.5) waits one stage; 100 -> 50 -> 25 -> 13 -> 7, 40 -> 20 -> 10 -> 5.
    n_pool, strides, kernels, patch = pool_and_kernel_sizes([1.0, 2.5], [100, 40])
    assert n_pool == [4, 3]
    assert strides == [[1, 1], [2, 1], [2, 2], [2, 2], [2, 2]]
    assert kernels == [[3, 1], [3, 3], [3, 3], [3, 3], [3, 3]]
    assert patch == [112, 40]


def test_single_poolable_axis_needs_three_times_min_feature_map():
    # after the first in-plane pooling only z (10 voxels < 12) could pool alone: stop.
    n_pool, strides, _, _ = pool_and_kernel_sizes([1.0, 1.0, 4.0], [10, 10, 10])
    assert n_pool == [1, 1, 0]
    assert strides == [[1, 1, 1], [2, 2, 1]]


def test_max_stages_caps_the_number_of_stages():
    n_pool, strides, kernels, patch = pool_and_kernel_sizes([1.0, 1.0, 1.0], [200, 200, 200], max_stages=4)
    assert n_pool == [3, 3, 3] and len(strides) == 4 and len(kernels) == 4
    assert patch == [200, 200, 200]


def test_features_double_per_stage_and_are_capped():
    assert features_per_stage(6) == [30, 60, 120, 240, 320, 320]
    assert features_per_stage(8, base=32, max_features=512) == [32, 64, 128, 256, 512, 512, 512, 512]


# --- memory model -------------------------------------------------------------------------------------

def test_memory_model_matches_nnunet_reference_of_8_gb():
    # nnU-Net's 3D reference: 128^3, batch 2, 32..320 features, 6 stages, measured on an 8 GB GPU.
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 5
    gb = estimate_training_memory_bytes([128] * 3, 2, [32, 64, 128, 256, 320, 320], strides, 1, 2) / BYTES_PER_GB
    assert 7.5 < gb < 8.5


def test_memory_grows_linearly_with_batch_size():
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 3
    args = ([64] * 3, [30, 60, 120, 240], strides, 1, 2)
    m1, m2, m4 = (estimate_training_memory_bytes(a[0], b, *a[1:]) for a, b in ((args, 1), (args, 2), (args, 4)))
    assert m4 - m2 == pytest.approx(2 * (m2 - m1))
    assert m1 > m2 - m1  # the fixed parameter/optimiser term is included


# --- full plans ---------------------------------------------------------------------------------------

def test_isotropic_ct_plan_reaches_nnunet_patch_128():
    plan = plan_3d_fullres(ct_fingerprint(), num_channels=1, num_classes=3, memory_gb=8)
    assert plan["spacing"] == [1.0, 1.0, 1.0] and plan["median_shape"] == [200, 200, 200]
    assert plan["patch_size"] == [128, 128, 128]
    assert plan["n_stages"] == 6 and plan["batch_size"] == 2
    assert plan["features_per_stage"] == [30, 60, 120, 240, 320, 320]
    assert plan["pool_op_kernel_sizes"] == plan["strides"][1:] == [[2, 2, 2]] * 5
    assert plan["anisotropic"] is False and plan["coarse_axis"] is None and plan["do_dummy_2d_data_aug"] is False
    assert plan["estimated_memory_gb"] <= plan["memory_budget_gb"] == 8.0


def test_small_memory_budget_shrinks_patch_until_estimate_fits():
    large = plan_3d_fullres(ct_fingerprint(), 1, 3, memory_gb=8)
    small = plan_3d_fullres(ct_fingerprint(), 1, 3, memory_gb=2)
    assert np.prod(small["patch_size"]) < np.prod(large["patch_size"])
    assert small["estimated_memory_gb"] <= 2.0
    assert small["batch_size"] >= 2


@pytest.mark.parametrize("fp", [ct_fingerprint(), mr_fingerprint(), thin_fingerprint(20)], ids=["ct", "mr", "thin"])
@pytest.mark.parametrize("memory_gb", [1.5, 8, 40])
def test_patch_is_divisible_by_two_to_the_number_of_poolings(fp, memory_gb):
    plan = plan_3d_fullres(fp, 1, 2, memory_gb=memory_gb)
    n_pool = np.sum(np.asarray(plan["strides"]) == 2, axis=0)
    assert all(p % 2**int(n) == 0 for p, n in zip(plan["patch_size"], n_pool))
    assert len(plan["kernel_sizes"]) == len(plan["strides"]) == plan["n_stages"]
    assert max(plan["features_per_stage"]) <= 320
    assert plan["batch_size"] >= 2
    assert plan["estimated_memory_gb"] <= memory_gb
    json.dumps(plan)


def test_anisotropic_mr_plan_pools_in_plane_first_and_augments_in_plane():
    plan = plan_3d_fullres(mr_fingerprint(), 1, 2, memory_gb=8)
    assert plan["spacing"] == [0.7, 0.7, 3.0]
    assert plan["median_shape"] == [288, 288, 32]  # z: 24 slices x spacing / 3.0, median of 11 cases
    assert plan["strides"][1] == [2, 2, 1] and plan["strides"][2] == [2, 2, 1]
    assert plan["kernel_sizes"][0] == [3, 3, 1]
    assert plan["anisotropic"] is True and plan["coarse_axis"] == 2
    assert plan["do_dummy_2d_data_aug"] is True  # patch z is more than 3x shorter than in-plane
    assert plan["estimated_memory_gb"] <= 8.0


def test_axis_order_is_kept_not_transposed():
    z_last = plan_3d_fullres(mr_fingerprint(), 1, 2, memory_gb=8)
    z_first = plan_3d_fullres(mr_fingerprint(z_first=True), 1, 2, memory_gb=8)
    order = [2, 0, 1]
    assert z_first["coarse_axis"] == 0
    assert z_first["patch_size"] == [z_last["patch_size"][a] for a in order]
    assert z_first["strides"] == [[s[a] for a in order] for s in z_last["strides"]]
    assert z_first["kernel_sizes"][0] == [1, 3, 3]


def test_batch_size_capped_at_five_percent_of_dataset():
    # 100 cases of 320x320x3 = patch: 5% of the dataset is 5 patches, memory would allow more.
    plan = plan_3d_fullres(thin_fingerprint(100), 1, 2, memory_gb=8)
    assert plan["patch_size"] == [320, 320, 3]
    assert plan["batch_size"] == 5


def test_batch_size_never_below_two_even_when_dataset_cap_is_smaller():
    # 20 cases: 5% is a single patch, but nnU-Net keeps the minimum batch of 2.
    plan = plan_3d_fullres(thin_fingerprint(20), 1, 2, memory_gb=8)
    assert plan["batch_size"] == 2
    assert plan["strides"][1] == [2, 2, 1] and plan["do_dummy_2d_data_aug"] is True


def test_batch_size_fills_the_remaining_memory_budget():
    # 1000 cases: the 5% cap (50) does not bind; batch = floor((budget - fixed) / per-sample memory).
    plan = plan_3d_fullres(thin_fingerprint(1000), 1, 2, memory_gb=8)
    args = (plan["patch_size"], plan["features_per_stage"], plan["strides"], 1, 2)
    fixed = estimate_training_memory_bytes(args[0], 0, *args[1:])
    per_sample = estimate_training_memory_bytes(args[0], 1, *args[1:]) - fixed
    assert plan["batch_size"] == int((8 * BYTES_PER_GB - fixed) // per_sample) > 5
    assert plan["estimated_memory_gb"] <= 8.0


def test_two_dimensional_fingerprint_is_planned_with_2d_defaults():
    fp = {"spacings": [[0.5, 0.5]] * 50, "shapes_after_crop": [[512, 512]] * 50, "median_relative_size_after_crop": 1.0}
    plan = plan_3d_fullres(fp, 3, 2, memory_gb=8, max_features=512)
    assert plan["patch_size"] == [512, 512]  # 2048^2 initial patch clipped to the median
    assert plan["n_stages"] == 8 and plan["features_per_stage"][-1] == 512
    assert plan["do_dummy_2d_data_aug"] is False


def test_deep_supervision_weights_halve_drop_lowest_and_sum_to_one():
    assert deep_supervision_weights(6) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert deep_supervision_weights(4) == pytest.approx([2 / 3, 1 / 3])
    assert deep_supervision_weights(2) == [1.0]
    plan = plan_3d_fullres(ct_fingerprint(), 1, 2, memory_gb=8)
    assert len(plan["deep_supervision_weights"]) == plan["n_stages"] - 2
    assert sum(plan["deep_supervision_weights"]) == pytest.approx(1.0)


# --- normalisation ------------------------------------------------------------------------------------

def ct_stats() -> dict:
    return {"mean": 40.0, "median": 38.0, "std": 120.0, "min": -1000.0, "max": 2000.0,
            "percentile_00_5": -950.0, "percentile_99_5": 1500.0}


def test_ct_clipping_uses_dataset_foreground_percentiles():
    fp = {"median_relative_size_after_crop": 0.5, "foreground_intensity_properties_per_channel": {"0": ct_stats()}}
    assert normalization_schemes({"0": "CT"}, fp) == [
        {"channel": 0, "scheme": "CT", "clip": [-950.0, 1500.0], "mean": 40.0, "std": 120.0, "use_nonzero_mask": False}
    ]


def test_ct_std_is_floored():
    fp = {"median_relative_size_after_crop": 1.0,
          "foreground_intensity_properties_per_channel": {"0": {**ct_stats(), "std": 0.0}}}
    assert normalization_schemes({"0": "ct"}, fp)[0]["std"] == 1e-8


def test_mr_uses_zscore_with_nonzero_mask_only_when_crop_removed_over_25_percent():
    def schemes(rel: float) -> list[dict]:
        return normalization_schemes({"0": "T2", "1": "ADC"}, {"median_relative_size_after_crop": rel})
    assert schemes(0.6) == [{"channel": 0, "scheme": "zscore", "use_nonzero_mask": True},
                            {"channel": 1, "scheme": "zscore", "use_nonzero_mask": True}]
    assert all(not s["use_nonzero_mask"] for s in schemes(0.75))
    assert all(not s["use_nonzero_mask"] for s in schemes(0.9))


def test_ct_without_foreground_statistics_is_an_error():
    fp = {"median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {}}
    with pytest.raises(ValueError, match="CT"):
        normalization_schemes({"0": "CT"}, fp)


# --- fingerprint --------------------------------------------------------------------------------------

def tiny_case() -> tuple[np.ndarray, np.ndarray]:
    """Two channels, 5x6x4; nonzero box spans x 1..2 (ch 0) and x 3 (ch 1), y 2..4, z 1."""
    image = np.zeros((2, 5, 6, 4), dtype=np.float32)
    image[0, 1:3, 2:5, 1] = 1.0
    image[1, 3, 3, 1] = 5.0
    image[0, 2, 3, 1] = 7.0
    image[0, 1, 4, 1] = 9.0
    label = np.zeros((5, 6, 4), dtype=np.int64)
    label[2, 3, 1] = 1
    label[1, 4, 1] = 2
    label[4, 0, 3] = 1  # outside the nonzero box: cropped away, never sampled
    return image, label


def test_case_is_cropped_to_nonzero_bounding_box_of_any_channel():
    image, label = tiny_case()
    fp = case_fingerprint(image, label, [1.0, 1.0, 2.5], 10, np.random.default_rng(0))
    assert fp["spacing"] == [1.0, 1.0, 2.5]
    assert fp["shape_before_crop"] == [5, 6, 4]
    assert fp["shape_after_crop"] == [3, 3, 1]
    assert fp["relative_size_after_crop"] == pytest.approx(9 / 120)


def test_foreground_samples_only_come_from_label_voxels():
    image, label = tiny_case()
    fp = case_fingerprint(image, label, [1.0, 1.0, 1.0], 200, np.random.default_rng(0))
    ch0, ch1 = fp["foreground_samples"]
    assert ch0.shape == ch1.shape == (200,)
    assert set(ch0.tolist()) == {7.0, 9.0}  # both foreground voxels drawn, with replacement
    assert set(ch1.tolist()) == {0.0}


def test_no_label_or_no_foreground_gives_empty_samples():
    image, label = tiny_case()
    for lab in (None, np.zeros_like(label)):
        fp = case_fingerprint(image, lab, [1.0, 1.0, 1.0], 50, np.random.default_rng(0))
        assert [s.size for s in fp["foreground_samples"]] == [0, 0]


def test_aggregate_statistics_of_pooled_known_samples():
    def case(samples: np.ndarray, rel: float) -> dict:
        return {"spacing": [1.0, 1.0, 3.0], "shape_after_crop": [10, 10, 5], "relative_size_after_crop": rel,
                "foreground_samples": [samples]}
    agg = aggregate_fingerprint([case(np.arange(0.0, 100.0), 0.5), case(np.arange(100.0, 201.0), 0.7),
                                 case(np.empty(0), 0.9)])
    stats = agg["foreground_intensity_properties_per_channel"]["0"]
    # pooled 0..200: np.percentile interpolates linearly, 0.5% of 200 steps = 1.0
    assert stats["percentile_00_5"] == pytest.approx(1.0)
    assert stats["percentile_99_5"] == pytest.approx(199.0)
    assert stats["mean"] == pytest.approx(100.0) and stats["median"] == pytest.approx(100.0)
    assert stats["std"] == pytest.approx(np.sqrt((201**2 - 1) / 12))
    assert (stats["min"], stats["max"]) == (0.0, 200.0)
    assert agg["median_relative_size_after_crop"] == pytest.approx(0.7)
    assert agg["spacings"] == [[1.0, 1.0, 3.0]] * 3 and agg["shapes_after_crop"] == [[10, 10, 5]] * 3
    json.dumps(agg)


def test_fingerprint_feeds_ct_normalisation_end_to_end():
    rng = np.random.default_rng(1234)
    cases = []
    for _ in range(3):
        image = np.zeros((1, 8, 8, 8), dtype=np.float32)
        image[0, 2:6, 2:6, 2:6] = rng.normal(50.0, 10.0, (4, 4, 4))
        label = np.zeros((8, 8, 8), dtype=np.int64)
        label[3:5, 3:5, 3:5] = 1
        cases.append(case_fingerprint(image, label, [1.0, 1.0, 1.0], foreground_samples_per_case(3, 3000), rng))
    agg = aggregate_fingerprint(cases)
    scheme = normalization_schemes({"0": "CT"}, agg)[0]
    pooled = np.concatenate([c["foreground_samples"][0] for c in cases])
    assert pooled.size == 3000
    assert scheme["clip"] == pytest.approx([np.percentile(pooled, 0.5), np.percentile(pooled, 99.5)])
    assert scheme["mean"] == pytest.approx(pooled.mean()) and scheme["std"] == pytest.approx(pooled.std())
    assert agg["median_relative_size_after_crop"] == pytest.approx(64 / 512)
