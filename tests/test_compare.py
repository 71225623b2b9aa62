"""`scripts.compare`: every template planned, trained and evaluated with one budget on one dataset, then one
table, one JSON and one chart; bad requests refused before any training."""

from __future__ import annotations

import json

import pytest

from custom_components.evaluation.architecture_table import comparison_markdown, plot_comparison
from custom_components.networks import ResidualUNet
from tests.test_bundle_workflow import run

RECORDS = [
    {"template": "a", "network": "NetA", "parameters": 1234567, "mean_dice": 0.9, "dice_per_class": {"organ": 0.95, "lesion": 0.85},
     "training_seconds": 120.0, "inference_seconds_per_case": 1.5, "peak_rss_training_mb": 900.0,
     "peak_rss_inference_mb": 600.0, "peak_gpu_training_mb": None},
    {"template": "b", "network": "NetB", "parameters": 42, "mean_dice": None, "dice_per_class": {"organ": None, "lesion": 0.5},
     "training_seconds": 60.0, "inference_seconds_per_case": None, "peak_rss_training_mb": 800.0,
     "peak_rss_inference_mb": 500.0, "peak_gpu_training_mb": 2048.0},
]
SETTINGS = {"epochs": 2, "iterations_per_epoch": 3, "dataset_dir": "D", "num_training_cases": 4, "num_test_cases": 1,
            "machine": "test machine", "overrides": {"b": {"feature_scale": 0.5}}}


def test_comparison_table_has_a_row_per_template_and_says_how_it_was_measured():
    table = comparison_markdown(RECORDS, SETTINGS)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and "Dice organ" in rows[0] and "Dice lesion" in rows[0]
    assert "| a | NetA | 1,234,567 | 0.9000 | 0.9500 | 0.8500 | 120 | 1.50 | 900 | 600 | - |" in rows
    assert "| b | NetB | 42 | - | - | 0.5000 | 60 | - | 800 | 500 | 2048 |" in rows
    assert "2 epochs x 3 iterations" in table and "test machine" in table and "feature_scale" in table


def test_comparison_chart_is_a_png(tmp_path):
    plot_comparison(RECORDS, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp*"))  # written through a temporary file, none left behind


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("cmp") / "demo"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "4", "--n_test", "1")
    return data


@pytest.mark.parametrize("templates, overrides, message", [
    ("nnunet_3d_fullres,no_such_net", None, "no_such_net"),
    ("nnunet_3d_cascade", None, "cascade"),
    ("attention_unet", "{residual_unet: {feature_scale: 0.5}}", "residual_unet"),
])
def test_bad_requests_are_refused_before_any_training(small_data, tmp_path, templates, overrides, message):
    args = ["-m", "scripts.compare", "--dataset_dir", str(small_data), "--output_dir", str(tmp_path / "c"),
            "--templates", templates] + (["--overrides", overrides] if overrides else [])
    proc = run(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # trains and scores two templates: the tool's end-to-end run, as test_benchmark_peer's
def test_compare_trains_and_scores_each_template_then_reuses_its_records(small_data, tmp_path):
    out = tmp_path / "c"
    args = ["-m", "scripts.compare", "--dataset_dir", str(small_data), "--output_dir", str(out),
            "--templates", "nnunet_3d_fullres,residual_unet", "--epochs", "1", "--iterations_per_epoch", "2",
            "--num_workers", "0", "--overrides", "{all: {use_mirroring: False}, residual_unet: {feature_scale: 0.25}}"]
    run(*args)
    result = json.loads((out / "comparison.json").read_text())
    records = {r["template"]: r for r in result["templates"]}
    assert list(records) == ["nnunet_3d_fullres", "residual_unet"]
    assert records["nnunet_3d_fullres"]["network"] == "PlainConvUNet" and records["residual_unet"]["network"] == "ResidualUNet"
    paper_width = ResidualUNet(spatial_dims=3, in_channels=1, out_channels=3, features=[64, 128, 256, 512],
                               strides=[[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2]])
    # the feature_scale override reached the network (a quarter of the widths: about 1/16 of the parameters)
    assert records["residual_unet"]["parameters"] < sum(p.numel() for p in paper_width.parameters()) / 10
    for r in records.values():
        assert 0 <= r["mean_dice"] <= 1 and set(r["dice_per_class"]) == {"organ", "lesion"}
        assert r["training_seconds"] > 0 and r["inference_seconds_per_case"] > 0 and r["peak_rss_training_mb"] > 100
        assert (out / r["template"] / "models" / "model.pt").is_file()
    table = (out / "comparison.md").read_text()
    assert "| nnunet_3d_fullres | PlainConvUNet |" in table and "| residual_unet | ResidualUNet |" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    again = run(*args)
    assert again.stdout.count("reusing") == 2 and "train (" not in again.stdout
    assert json.loads((out / "comparison.json").read_text())["templates"] == result["templates"]


@pytest.mark.slow  # times training steps of a planned network: a benchmark tool, as test_benchmark_peer's
def test_network_benchmark_times_a_training_step_of_planned_bundles(small_data, tmp_path):
    bundle = tmp_path / "residual_unet"
    run("-m", "scripts.plan", "--dataset_dir", str(small_data), "--template", "bundles/residual_unet", "--output_dir", str(bundle))
    proc = run("-m", "scripts.benchmark_networks", "--bundles", str(bundle), "--steps", "1",
               "--overrides", "{feature_scale: 0.25}")
    assert "residual_unet: ResidualUNet" in proc.stdout and "s per training step" in proc.stdout
    missing = run("-m", "scripts.benchmark_networks", "--bundles", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 2 and "not a planned bundle" in missing.stderr
