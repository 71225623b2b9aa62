"""nnU-Net's 2D and 3D low-res configurations and the plans.json sections, on hand-made fingerprints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from custom_components.data.errors import DatasetError
from custom_components.planning.dataset_plan import make_plans, plan_section
from custom_components.planning.planner import (
    KEEP_SPACING,
    LOWRES_SPACING_FACTOR,
    plan_2d,
    plan_3d_fullres,
    plan_3d_lowres,
    plan_configuration,
    resampled_shapes,
    slice_axis_2d,
)

from tests.test_planning import MR_Z_SPACINGS, mr_fingerprint  # the same anisotropic MR dataset


def iso_fingerprint(edge: int, n_cases: int = 10, spacing: float = 1.0) -> dict:
    return {"spacings": [[spacing] * 3] * n_cases, "shapes_after_crop": [[edge] * 3] * n_cases,
            "median_relative_size_after_crop": 0.9}


def large_ct_fingerprint(n_cases: int = 20) -> dict:
    """512 x 512 x 400 at 0.8 x 0.8 x 1 mm: one full-res patch sees under 2% of a case."""
    return {"spacings": [[0.8, 0.8, 1.0]] * n_cases, "shapes_after_crop": [[512, 512, 400]] * n_cases,
            "median_relative_size_after_crop": 0.9}


def aniso_ct_fingerprint(z_first: bool = False) -> dict:
    """800 x 800 x 150 at 0.5 x 0.5 x 3 mm: in-plane 6x finer than z."""
    spacing, shape = [0.5, 0.5, 3.0], [800, 800, 150]
    if z_first:
        spacing, shape = spacing[2:] + spacing[:2], shape[2:] + shape[:2]
    return {"spacings": [spacing] * 20, "shapes_after_crop": [shape] * 20, "median_relative_size_after_crop": 0.9}


def steps_of_growth(lowres_spacing, fullres_spacing) -> list[float]:
    """How many x1.03 steps separate each axis's low-res spacing from its full-res spacing."""
    return [math.log(lo / fu) / math.log(LOWRES_SPACING_FACTOR) for lo, fu in zip(lowres_spacing, fullres_spacing)]


def coverage(plan: dict) -> float:
    return float(np.prod(plan["patch_size"], dtype=np.float64) / np.prod(plan["median_shape"], dtype=np.float64))


# --- 2D -----------------------------------------------------------------------------------------------

def test_2d_plan_of_anisotropic_mr_slices_along_the_coarse_axis():
    plan = plan_2d(mr_fingerprint(), 1, 2, memory_gb=8)
    assert plan["slice_axis"] == 2 and plan["spatial_dims"] == 2
    assert plan["spacing"] == [0.7, 0.7, KEEP_SPACING] == [0.7, 0.7, -1.0]
    assert plan["spacing_2d"] == [0.7, 0.7]
    assert plan["median_shape"] == [288, 288]
    # 2048^2 clipped to 288^2; 288 -> 144 -> 72 -> 36 -> 18 -> 9 -> 5: six poolings, padded to 320
    assert plan["patch_size"] == [320, 320]
    assert plan["strides"] == [[1, 1]] + [[2, 2]] * 6
    assert plan["kernel_sizes"] == [[3, 3]] * 7
    assert plan["features_per_stage"] == [30, 60, 120, 240, 480, 512, 512]
    assert plan["do_dummy_2d_data_aug"] is False
    json.dumps(plan)


def test_2d_batch_cap_counts_each_case_with_its_own_slices():
    # 11 cases x 288^2 x 24 slices (not the 32 full-res slices): 5% / 320^2 = 10.7 -> 10.
    plan = plan_2d(mr_fingerprint(), 1, 2, memory_gb=8)
    assert plan["batch_size"] == 10
    assert plan["estimated_memory_gb"] <= 8.0


def test_2d_plan_slices_along_a_coarse_first_axis_without_transposing():
    z_last = plan_2d(mr_fingerprint(), 1, 2, memory_gb=8)
    z_first = plan_2d(mr_fingerprint(z_first=True), 1, 2, memory_gb=8)
    assert z_first["slice_axis"] == 0
    assert z_first["spacing"] == [-1.0, 0.7, 0.7]
    for key in ("patch_size", "strides", "kernel_sizes", "batch_size", "spacing_2d"):
        assert z_first[key] == z_last[key]


def test_2d_features_are_capped_at_512():
    # 512^2 in-plane: eight stages, the last three capped.
    plan = plan_2d(large_ct_fingerprint(), 1, 2, memory_gb=8)
    assert plan["patch_size"] == [512, 512]
    assert plan["features_per_stage"] == [30, 60, 120, 240, 480, 512, 512, 512]


def test_2d_plan_of_isotropic_dataset_slices_along_the_last_axis():
    plan = plan_2d(iso_fingerprint(200), 1, 3, memory_gb=8)
    assert plan["slice_axis"] == 2
    assert plan["spacing"] == [1.0, 1.0, -1.0] and plan["spacing_2d"] == [1.0, 1.0]
    assert plan["patch_size"] == [224, 224]  # 200 -> ... -> 7: five poolings, padded to 32


def test_slice_axis_is_the_largest_spacing_with_ties_to_the_last_axis():
    assert slice_axis_2d([1.0, 1.0, 1.0]) == 2
    assert slice_axis_2d([2.0, 1.0, 1.0]) == 0  # not anisotropic (2 < 3), but axis 0 is coarsest
    assert slice_axis_2d([1.5, 1.5, 1.0]) == 1
    assert slice_axis_2d([0.7, 3.0, 0.7]) == 1  # anisotropic: the coarse axis


def test_3d_plans_record_three_spatial_dims():
    assert plan_3d_fullres(mr_fingerprint(), 1, 2, memory_gb=8)["spatial_dims"] == 3
    assert plan_3d_lowres(large_ct_fingerprint(), 1, 2, memory_gb=8)["spatial_dims"] == 3


# --- 3D low resolution --------------------------------------------------------------------------------

def test_lowres_is_absent_when_fullres_patch_covers_a_quarter():
    # 128^3 of 200^3 = 26.2% >= 25%
    fullres = plan_3d_fullres(iso_fingerprint(200), 1, 3, memory_gb=8)
    assert coverage(fullres) == pytest.approx(0.262144)
    assert plan_3d_lowres(iso_fingerprint(200), 1, 3, memory_gb=8) is None
    assert plan_3d_lowres(mr_fingerprint(), 1, 2, memory_gb=8) is None  # 60% covered


def test_lowres_of_large_ct_grows_spacing_in_steps_of_1_03_until_a_quarter_is_covered():
    fp = large_ct_fingerprint()
    fullres = plan_3d_fullres(fp, 1, 2, memory_gb=8)
    assert coverage(fullres) < 0.25
    lowres = plan_3d_lowres(fp, 1, 2, memory_gb=8)
    assert lowres is not None and lowres["spatial_dims"] == 3
    steps = steps_of_growth(lowres["spacing"], fullres["spacing"])
    assert steps == pytest.approx([round(s) for s in steps], abs=1e-6)
    assert len(set(round(s) for s in steps)) == 1  # 1.0 mm is within 2x of 0.8 mm: all axes grow together
    assert coverage(lowres) >= 0.25
    assert lowres["estimated_memory_gb"] <= 8.0
    # it stops at the first step that covers a quarter
    previous = [s / LOWRES_SPACING_FACTOR for s in lowres["spacing"]]
    shapes = resampled_shapes(fp["spacings"], fp["shapes_after_crop"], previous)
    assert coverage(plan_configuration(previous, shapes, 1, 2, memory_gb=8)) < 0.25


@pytest.mark.parametrize("z_first", [False, True], ids=["z_last", "z_first"])
def test_lowres_grows_the_fine_axes_first_until_within_2x_of_the_coarse_axis(z_first):
    # 3.0 / (0.5 x 1.03^k) <= 2 first at k = 38; from there all three axes grow together.
    fp = aniso_ct_fingerprint(z_first)
    fullres = plan_3d_fullres(fp, 1, 2, memory_gb=8)
    lowres = plan_3d_lowres(fp, 1, 2, memory_gb=8)
    steps = [round(s) for s in steps_of_growth(lowres["spacing"], fullres["spacing"])]
    z = 0 if z_first else 2
    in_plane = [a for a in range(3) if a != z]
    assert steps[in_plane[0]] == steps[in_plane[1]]
    assert steps[in_plane[0]] - steps[z] == 38
    assert steps[z] >= 1
    assert coverage(lowres) >= 0.25


def test_forced_lowres_has_a_quarter_of_the_fullres_median_voxels():
    # 200 / 1.03^k rounds to <= 125 (125^3 <= 200^3 / 4) first at k = 16.
    fullres = plan_3d_fullres(iso_fingerprint(200), 1, 3, memory_gb=8)
    lowres = plan_3d_lowres(iso_fingerprint(200), 1, 3, memory_gb=8, force=True)
    assert lowres["spacing"] == pytest.approx([1.03**16] * 3)
    assert lowres["median_shape"] == [125, 125, 125]
    assert np.prod(lowres["median_shape"]) * 4 <= np.prod(fullres["median_shape"])
    assert coverage(lowres) >= 0.25


def test_forced_lowres_of_anisotropic_mr_coarsens_in_plane_only():
    fullres = plan_3d_fullres(mr_fingerprint(), 1, 2, memory_gb=8)
    lowres = plan_3d_lowres(mr_fingerprint(), 1, 2, memory_gb=8, force=True)
    assert lowres["spacing"][2] == fullres["spacing"][2] == 3.0
    assert lowres["spacing"][0] == lowres["spacing"][1] > fullres["spacing"][0]
    assert np.prod(lowres["median_shape"]) < np.prod(fullres["median_shape"])


def test_lowres_is_dropped_when_its_image_would_not_be_half_the_size():
    # 240^3: the full-res 128^3 patch covers 15%; a quarter is covered at ~201^3, only 1.7x fewer voxels.
    assert coverage(plan_3d_fullres(iso_fingerprint(240), 1, 3, memory_gb=8)) < 0.25
    assert plan_3d_lowres(iso_fingerprint(240), 1, 3, memory_gb=8) is None
    forced = plan_3d_lowres(iso_fingerprint(240), 1, 3, memory_gb=8, force=True)
    assert forced is not None and coverage(forced) >= 0.25


# --- plans.json ---------------------------------------------------------------------------------------

def ct_info() -> SimpleNamespace:
    return SimpleNamespace(name="Hand_CT", root="/tmp/hand_ct", channel_names={"0": "CT"}, num_channels=1,
                           labels={"background": 0, "organ": 1}, num_classes=2)


def with_ct_stats(fp: dict) -> dict:
    stats = {"mean": 40.0, "median": 38.0, "std": 120.0, "min": -1000.0, "max": 2000.0,
             "percentile_00_5": -950.0, "percentile_99_5": 1500.0}
    return {**fp, "foreground_intensity_properties_per_channel": {"0": stats}}


def test_plans_hold_2d_and_fullres_and_lowres_only_when_needed():
    small = make_plans(ct_info(), with_ct_stats(iso_fingerprint(200)), 8.0, "test")
    assert sorted(small["configurations"]) == ["2d", "3d_fullres"]
    assert small["lowres_rule"]["planned"] is False
    assert small["lowres_rule"]["fullres_patch_coverage"] == pytest.approx(0.262144)
    large = make_plans(ct_info(), with_ct_stats(large_ct_fingerprint()), 8.0, "test")
    assert sorted(large["configurations"]) == ["2d", "3d_fullres", "3d_lowres"]
    forced = make_plans(ct_info(), with_ct_stats(iso_fingerprint(200)), 8.0, "test", force_lowres=True)
    assert "3d_lowres" in forced["configurations"] and forced["lowres_rule"]["forced"] is True
    json.dumps(forced)


@pytest.mark.parametrize("configuration, dims", [("2d", 2), ("3d_fullres", 3), ("3d_lowres", 3)])
def test_plan_section_of_every_configuration(configuration, dims):
    plans = make_plans(ct_info(), with_ct_stats(large_ct_fingerprint()), 8.0, "test")
    section = plan_section(plans, configuration)
    conf = plans["configurations"][configuration]
    assert section["configuration"] == configuration and section["spatial_dims"] == dims
    assert section["num_classes"] == 2 and section["normalization"][0]["scheme"] == "CT"
    for key in ("spacing", "patch_size", "batch_size", "features_per_stage", "kernel_sizes", "strides",
                "deep_supervision_weights", "do_dummy_2d_data_aug", "coarse_axis"):
        assert section[key] == conf[key]
    assert len(section["patch_size"]) == len(section["strides"][0]) == dims
    if configuration == "2d":
        assert section["slice_axis"] == 2 and section["spacing_2d"] == [0.8, 0.8]
        assert section["spacing"] == [0.8, 0.8, -1.0]
    else:
        assert "slice_axis" not in section and "spacing_2d" not in section
    json.dumps(section)


def test_plan_section_of_a_configuration_not_planned_names_it():
    plans = make_plans(ct_info(), with_ct_stats(iso_fingerprint(200)), 8.0, "test")
    with pytest.raises(DatasetError, match="no '3d_lowres' configuration.*--force_lowres"):
        plan_section(plans, "3d_lowres")


def test_summary_lists_every_configuration_and_why_lowres_is_missing():
    from scripts.plan import summary

    plans = make_plans(ct_info(), with_ct_stats(iso_fingerprint(200)), 8.0, "test")
    text = summary(plans, ["3d_fullres"])
    assert "configuration 2d:" in text and "configuration 3d_fullres (written to the bundle)" in text
    assert "3d_lowres not needed: the full-res patch covers 26.2% of the median image" in text
    forced = summary(make_plans(ct_info(), with_ct_stats(iso_fingerprint(200)), 8.0, "test", force_lowres=True), ["2d"])
    assert "configuration 3d_lowres:" in forced and "configuration 2d (written to the bundle)" in forced


def test_merging_a_mapping_that_builds_another_target_replaces_it_instead_of_mixing_arguments():
    from custom_components.planning.bundle_writer import merge_configs

    base = {"inferer": {"_target_": "A", "roi_size": 1, "slice_axis": None}, "net": {"_target_": "N", "x": 1}}
    merged = merge_configs(base, {"inferer": {"_target_": "B", "roi_size": 2}, "net": {"x": 2}, "net#y": 3})
    assert merged["inferer"] == {"_target_": "B", "roi_size": 2}  # another class: its own arguments only
    assert merged["net"] == {"_target_": "N", "x": 2, "y": 3}  # the same class: arguments merge


def test_cascade_template_plans_the_lowres_stage_next_to_fullres():
    from custom_components.planning.bundle_writer import planned_configurations

    root = Path(__file__).resolve().parents[1] / "bundles"
    assert planned_configurations(root / "nnunet_3d_cascade") == ["3d_fullres", "3d_lowres"]
    assert planned_configurations(root / "nnunet_2d") == ["2d"]
    assert planned_configurations(root / "nnunet_3d_fullres", "2d") == ["2d"]


@pytest.mark.parametrize("levels, expected", [(3, [16, 32, 64]), (5, [16, 32, 64, 128, 256]), (7, [16, 32, 64, 128, 256, 512, 512])])
def test_paper_features_follow_the_plan_s_number_of_levels(levels, expected):
    from custom_components.networks.topology import level_features

    assert level_features([16, 32, 64, 128, 256], levels) == expected


def test_feature_scale_multiplies_every_level_s_width_and_refuses_zero():
    from custom_components.networks.topology import level_features

    assert level_features([32, 64, 128, 256, 512], 4, scale=0.25) == [8, 16, 32, 64]
    assert level_features([16, 32], 3, scale=1.5) == [24, 48, 96]
    with pytest.raises(ValueError, match="feature scale"):
        level_features([16, 32], 2, scale=0)
