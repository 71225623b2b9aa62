"""The four papers' bundles (Attention U-Net, MultiResUNet, Non-local U-Net, Residual U-Net) through the
Foundation command sequence on a small demo set: plan, train, evaluate, verify_metadata, verify_net_in_out and
a TorchScript export that matches eager."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.test_bundle_workflow import ROOT, bundle_run, evaluate_one_test_case, run

PAPER_BUNDLES = {"attention_unet": "AttentionUNet", "multires_unet": "MultiResUNet",
                 "nonlocal_unet": "NonLocalUNet", "residual_unet": "ResidualUNet"}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "demo"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "4", "--n_test", "1")
    return data


@pytest.fixture(scope="module", params=sorted(PAPER_BUNDLES))
def trained(request, demo_data, tmp_path_factory):
    """One planned bundle per paper, trained for one iteration (the sequence, not the accuracy, is under test)."""
    bundle = tmp_path_factory.mktemp(request.param) / "bundle"
    run("-m", "scripts.plan", "--dataset_dir", str(demo_data), "--template", str(ROOT / "bundles" / request.param),
        "--output_dir", str(bundle))
    proc = bundle_run("training", bundle, "--dataset_dir", str(demo_data), "--train#trainer#max_epochs", "1",
                      "--iterations_per_epoch", "1", "--fold", "all", "--num_workers", "0")
    assert "epoch 1/1" in proc.stdout
    return request.param, demo_data, bundle


def test_planned_network_is_the_paper_s_with_the_plan_s_levels(trained):
    name, _, bundle = trained
    cfg = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())
    assert cfg["network_def"]["_target_"] == f"custom_components.networks.{PAPER_BUNDLES[name]}"
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    assert len(parser.get_parsed_content("network_def").strides) == len(cfg["plan"]["strides"])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)


def test_evaluate_predicts_in_the_input_geometry_and_scores_every_class(trained, tmp_path):
    _, data, bundle = trained
    evaluate_one_test_case(bundle, data, tmp_path / "eval")


def test_bundle_checks_and_torchscript_export_pass(trained):
    _, _, bundle = trained
    run("-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--filepath", str(ROOT / "schemas" / "meta_schema.json"))
    run("-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(bundle / "configs" / "inference.yaml"), "--device", "cpu", "--n", "2")
    proc = run("-m", "scripts.export", "--bundle_root", str(bundle))  # exits 1 when scripted and eager differ by > 1e-4
    assert "max |scripted - eager|" in proc.stdout and (bundle / "models" / "model.ts").is_file()
