"""The benchmark's bridges to nnU-Net v2: our dataset in nnU-Net's raw layout (linked, never copied or changed),
and nnU-Net's plan as overrides of our bundle's plan, axis for axis."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from custom_components.benchmarking import plan_overrides, to_our_axes, write_nnunet_raw
from custom_components.data import DatasetError
from tests.test_dataset_layouts import make_msd_dataset, make_v2_dataset


def _tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_nnunet_raw_links_every_case_file_and_leaves_the_dataset_untouched(tmp_path):
    data = make_v2_dataset(tmp_path / "data", ["a", "b", "c"], test_ids=["t"], channels=("T1", "T2"))
    before = _tree_digest(data)
    folder = write_nnunet_raw(data, tmp_path / "raw", dataset_id=7)
    assert folder.name == "Dataset007_Tiny"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"{c}_{k:04d}.nii.gz" for c in "abc" for k in range(2)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["t_0000.nii.gz", "t_0001.nii.gz"]
    link = folder / "imagesTr" / "b_0001.nii.gz"
    assert link.is_symlink() and os.path.realpath(link) == str((data / "imagesTr" / "b_0001.nii.gz").resolve())
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta == {"name": "Tiny", "channel_names": {"0": "T1", "1": "T2"},
                    "labels": {"background": 0, "organ": 1, "lesion": 2}, "numTraining": 3, "file_ending": ".nii.gz"}
    assert write_nnunet_raw(data, tmp_path / "raw", dataset_id=7) == folder  # again: the same links, no error
    assert _tree_digest(data) == before


def test_nnunet_raw_refuses_a_4d_multichannel_case_and_a_foreign_file(tmp_path):
    msd = make_msd_dataset(tmp_path / "msd", ["x", "y"])
    with pytest.raises(DatasetError, match="one file per channel"):
        write_nnunet_raw(msd, tmp_path / "raw1")
    data = make_v2_dataset(tmp_path / "data", ["a", "b"])
    stray = tmp_path / "raw2" / "Dataset990_Tiny" / "imagesTr" / "a_0000.nii.gz"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"someone else's")
    with pytest.raises(DatasetError, match="exists and is not a link"):
        write_nnunet_raw(data, tmp_path / "raw2")
    assert stray.read_bytes() == b"someone else's"


def _plans(tmp_path, transpose):
    plans = {"transpose_forward": transpose, "configurations": {"3d_fullres": {
        "spacing": [3.0, 0.8, 0.7], "patch_size": [16, 80, 96], "batch_size": 2,
        "architecture": {"arch_kwargs": {"n_stages": 3, "features_per_stage": [32, 64, 128],
                                         "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                                         "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}}}}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    return path


def test_nnunet_plan_becomes_our_plan_in_our_axis_order(tmp_path):
    over = plan_overrides(_plans(tmp_path, [0, 1, 2]))
    # nnU-Net's (z, y, x) arrays are our (x, y, z) reversed
    assert over["plan#spacing"] == [0.7, 0.8, 3.0]
    assert over["plan#patch_size"] == [96, 80, 16]
    assert over["plan#kernel_sizes"] == [[3, 3, 1], [3, 3, 3], [3, 3, 3]]
    assert over["plan#strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert over["plan#batch_size"] == 2 and over["plan#features_per_stage"] == [32, 64, 128]
    assert over["plan#deep_supervision_weights"] == pytest.approx([1.0])  # 3 stages: 2 outputs, the lowest weighs 0


def test_nnunet_transpose_forward_is_undone_axis_by_axis(tmp_path):
    # nnU-Net moved its coarse axis (SimpleITK axis 2, our x) to the front: plan axis j is sitk axis t[j]
    assert to_our_axes(["a", "b", "c"], [2, 0, 1]) == ["a", "c", "b"]
    over = plan_overrides(_plans(tmp_path, [2, 0, 1]))
    assert over["plan#spacing"] == [3.0, 0.7, 0.8]


def test_a_file_that_is_not_an_nnunet_plan_is_named(tmp_path):
    bad = tmp_path / "plans.json"
    bad.write_text("{}")
    with pytest.raises(DatasetError, match="plans.json: not an nnU-Net v2 plans file"):
        plan_overrides(bad)


def test_benchmark_table_gives_each_ratio_its_target_and_the_miss():
    from scripts.benchmark import TARGETS, figure, markdown

    figures = {key: figure([2.0, 4.0], [4.0, 4.0]) for key in TARGETS}  # ours 3.0 vs 4.0: ratio 0.75
    report = {"date": "2026-11-26", "machine": {"cpu": "CPU", "cpu_count": 2}, "threads": 2,
              "versions": {"torch": "t", "monai": "m", "nnunetv2": "n"}, "dataset": "D", "training_cases": 4,
              "repeats": 2, "training_budget": "b", "command": "c", "figures": figures,
              "plan": {"plan#patch_size": [80, 80, 16], "plan#batch_size": 2, "plan#features_per_stage": [32, 64]}}
    assert figures["preprocessing_seconds"]["ratio"] == 0.75
    table = markdown(report)
    assert "| preprocessing, whole dataset (s) | 3.0 | 4.0 | 0.75 | <= 0.5 | no (by 0.25) |" in table
    assert "| peak resident memory of inference (MB) | 3.0 | 4.0 | 0.75 | <= 1.0 | yes |" in table


@pytest.mark.slow
def test_benchmark_runs_both_systems_on_the_same_plan_end_to_end(tmp_path):
    """Builds nnU-Net's environment (about 1 min with a warm pip cache) and runs every figure with a tiny budget."""
    from tests.test_bundle_workflow import run

    data = tmp_path / "data"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "4", "--n_test", "1")
    run("-m", "scripts.benchmark", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "b"), "--repeats", "1",
        "--epochs", "2", "--iterations", "3", "--budget_seconds", "4", "--budget_epoch", "2", "--scaling", "False")
    report = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    for system, trained in report["budget"]["runs"].items():  # each trained, then predicted and scored the test case
        assert trained["iterations"] >= 1 and 0.0 <= trained["test_dice"] <= 1.0, system
    assert report["dice"]["difference"] == pytest.approx(report["dice"]["ours"] - report["dice"]["nnunet"], abs=1e-4)
    for key, f in report["figures"].items():
        assert f["ours"] > 0 and f["nnunet"] > 0 and f["ratio"] == pytest.approx(f["ours"] / f["nnunet"], rel=0.01), key
    assert report["versions"]["nnunetv2"] == "2.8.1"
    plans = json.loads(next((tmp_path / "b" / "nnunet" / "preprocessed").rglob("nnUNetPlans.json")).read_text())
    ours = json.loads((tmp_path / "b" / "ours" / "nnunet_3d_fullres" / "configs" / "plans.json").read_text())
    assert report["plan"]["plan#patch_size"] == plans["configurations"]["3d_fullres"]["patch_size"][::-1]
    assert ours["configurations"]["3d_fullres"]["patch_size"]  # our own plan exists too; the runs override it
    assert (tmp_path / "b" / "benchmark.md").read_text().count("| ") > 10


def test_flop_count_of_a_convolution_is_two_per_multiply_add():
    import torch

    from custom_components.benchmarking.throughput import counted_flops

    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 8, 8, 8)
    assert counted_flops(lambda: conv(x)) == 2 * 4 * 27 * 8 * 8 * 8  # out channels x kernel x output voxels


def test_scaling_inference_writes_the_prediction_in_the_input_geometry_and_plots(trained_fullres, tmp_path):
    import nibabel as nib
    import numpy as np

    from custom_components.benchmarking.scaling import plot_scaling, synth_ct, time_case_inference

    _, bundle = trained_fullres
    image = synth_ct((40, 36, 30), (0.8, 0.8, 1.0), tmp_path / "ct.nii.gz")
    volume = nib.load(image)
    assert volume.get_data_dtype() == np.int16 and np.asarray(volume.dataobj).min() < -900  # air around a body
    result = time_case_inference(bundle, str(image), {"use_mirroring": False}, str(tmp_path / "out"), 1)
    pred = nib.load(tmp_path / "out" / "ct.nii.gz")
    assert pred.shape == (40, 36, 30) and np.allclose(pred.affine, volume.affine)
    # resampled to the plan's coarser through-plane spacing for the network, back to 30 slices for the output
    assert result["network_grid"][2] < 30 and result["output_shape"] == [40, 36, 30]
    assert sum(result["steps"].values()) <= result["seconds"]
    rows = [{"shape": [40, 36, 30], "voxels": 43200, "seconds": result["seconds"], "peak_rss_mb": 500.0},
            {"shape": [80, 72, 60], "voxels": 345600, "seconds": 2 * result["seconds"], "peak_rss_mb": 900.0}]
    plot_scaling(rows, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
