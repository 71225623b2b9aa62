"""The 3D cascade bundle end to end on a tiny demo set: plan with both stages, stage-1 cross-validation on every
fold, stage 2 trained on stage 1's out-of-fold predictions, inference and evaluate running both stages, the
bundle checks, and one TorchScript file that runs the whole cascade."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from custom_components.data.splits import kfold_split
from tests.test_bundle_workflow import ROOT, bundle_run, evaluate_one_test_case, run

TEMPLATE = ROOT / "bundles" / "nnunet_3d_cascade"
TINY = ("--train#trainer#max_epochs", "1", "--iterations_per_epoch", "1", "--use_mirroring", "False")


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """5 training cases (one held out per fold) and 1 test case; stage 1 on all folds, stage 2 on fold 0."""
    base = tmp_path_factory.mktemp("cascade")
    data = base / "data"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "5", "--n_test", "1")
    bundle = base / "cascade"
    proc = run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(TEMPLATE), "--output_dir", str(bundle),
               "--force_lowres")
    assert "configuration 3d_lowres (written to the bundle)" in proc.stdout
    run("-m", "scripts.cross_validate", "--bundle_root", str(bundle), "--dataset_dir", str(data), "--folds", "0",
        "--val_interval", "0", *TINY)
    return data, bundle


def _parser(bundle: Path, config: str = "inference.yaml", **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_cascade_plan_gives_stage_1_the_lowres_plan_and_stage_2_the_fullres_plan(cascade):
    _, bundle = cascade
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    for name in ("train", "inference", "evaluate"):
        cfg = yaml.safe_load((bundle / "configs" / f"{name}.yaml").read_text())
        assert "_include_" not in cfg
        assert cfg["plan"]["configuration"] == "3d_fullres" and cfg["plan_stage1"]["configuration"] == "3d_lowres"
        assert cfg["plan_stage1"]["spacing"] == plans["configurations"]["3d_lowres"]["spacing"]
        for key in ("network_def", "inferer", "preprocessing" if name != "train" else "train"):
            assert key in cfg
    for name in ("train_stage1", "inference_stage1"):
        cfg = yaml.safe_load((bundle / "configs" / f"{name}.yaml").read_text())
        assert cfg["plan"]["configuration"] == "3d_lowres" and "plan_stage1" not in cfg
    assert not (bundle / "configs" / "cascade.yaml").exists()  # template fragments are folded in


def test_planning_a_cascade_where_nnunet_plans_no_lowres_stage_names_the_option(cascade, tmp_path):
    data, _ = cascade
    proc = run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(TEMPLATE), "--output_dir",
               str(tmp_path / "b"), check=False)
    assert proc.returncode == 2 and "3d_lowres" in proc.stderr and "--force_lowres" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_2_trains_on_its_fold_with_each_case_s_stage_1_out_of_fold_prediction(cascade):
    data, bundle = cascade
    ids = sorted(p.name.replace(".nii.gz", "") for p in (data / "labelsTr").iterdir())
    items = _parser(bundle, "train.yaml", dataset_dir=str(data), fold=0, val_interval=0).get_parsed_content("train#dataset#data")
    assert sorted(i["id"] for i in items) == sorted(kfold_split(ids)[0]["train"])
    for item in items:
        assert Path(item["prev_seg"]) == bundle / "stage1" / "cv" / f"{item['id']}.nii.gz"


def test_each_stage_1_prediction_comes_from_the_fold_that_held_the_case_out(cascade, tmp_path):
    data, bundle = cascade
    from custom_components.inference.bundle_runner import run_bundle_inference

    ids = sorted(p.name.replace(".nii.gz", "") for p in (data / "labelsTr").iterdir())
    split = kfold_split(ids)
    # fold 3's model with its weights nudged: equality below must be able to fail
    (tmp_path / "nudged").mkdir()
    state = torch.load(bundle / "models" / "stage1" / "fold_3" / "model.pt", weights_only=True)
    torch.save({k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "nudged" / "model.pt")
    runs = [(f"fold_{k}", bundle / "models" / "stage1" / f"fold_{k}", split[k]["val"][0]) for k in range(5)]
    for name, ckpt_dir, case in runs + [("nudged", tmp_path / "nudged", split[3]["val"][0])]:
        item = {"image": [str(data / "imagesTr" / f"{case}_0000.nii.gz")], "label": str(data / "labelsTr" / f"{case}.nii.gz"), "id": case}
        run_bundle_inference(bundle, [item], tmp_path / "pred" / name, ckpt_dir=ckpt_dir, config="inference_stage1.yaml",
                             overrides={"dataset_dir": str(data), "use_mirroring": False})
        again = np.load(tmp_path / "pred" / name / f"{case}.npz")["probabilities"]
        saved = np.load(bundle / "stage1" / "cv" / f"{case}.npz")["probabilities"]
        assert np.array_equal(again, saved) == (name != "nudged")


def test_stage_2_model_holds_both_stages_with_stage_1_unchanged(cascade):
    _, bundle = cascade
    net = _parser(bundle).get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "fold_0" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)  # the inference cascade's state_dict: both stages, no training heads
    stage1 = torch.load(bundle / "models" / "stage1" / "fold_0" / "model.pt", map_location="cpu", weights_only=True)
    for key, value in stage1.items():
        assert torch.equal(state[f"stage1.{key}"], value)
    assert net.stage2.input_block.conv1.conv.in_channels == 1 + 2  # image + one channel per foreground class


def test_stage_2_training_without_stage_1_results_names_the_missing_file(cascade, tmp_path):
    data, bundle = cascade
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("logs"))
    shutil.rmtree(copy / "models" / "fold_0")
    train = ("-m", "monai.bundle", "run", "training", "--config_file", str(copy / "configs" / "train.yaml"),
             "--bundle_root", str(copy), "--dataset_dir", str(data), "--val_interval", "0", *TINY[:4])
    ids = sorted(p.name.replace(".nii.gz", "") for p in (data / "labelsTr").iterdir())
    missing = copy / "stage1" / "cv" / f"{kfold_split(ids)[0]['train'][0]}.nii.gz"  # a case fold 0 trains on
    missing.unlink()
    proc = run(*train, check=False)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "stage-1 out-of-fold prediction" in proc.stderr
    shutil.copy(bundle / "stage1" / "cv" / missing.name, missing)
    (copy / "models" / "stage1" / "fold_0" / "model.pt").unlink()
    proc = run(*train, check=False)
    assert proc.returncode != 0
    assert str(copy / "models" / "stage1" / "fold_0" / "model.pt") in proc.stderr and "stage-1 model not found" in proc.stderr


def test_a_case_without_its_stage_1_prediction_gets_stage_1_s_prediction_once(cascade, tmp_path):
    """MONAI Label's training data list has images and labels only: stage 1 predicts those cases itself."""
    import nibabel as nib

    from custom_components.inference import PredictPreviousStaged

    data, bundle = cascade
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    predict = PredictPreviousStaged(bundle_root=bundle, cache_dir=tmp_path / "cache", overrides={"use_mirroring": False})
    item = predict({"image": str(image), "label": "unused"})
    made = Path(item["prev_seg"])
    assert made.parent.parent == tmp_path / "cache" and made.name == image.name.replace("_0000.nii.gz", ".nii.gz")
    assert item["label"] == "unused"
    bundle_run("inference", bundle, "--datalist", json.dumps([{"image": str(image)}]), "--output_dir",
               str(tmp_path / "stage1"), "--use_mirroring", "False", config="inference_stage1")
    expected = nib.load(tmp_path / "stage1" / made.name)
    np.testing.assert_array_equal(np.asarray(nib.load(made).dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(nib.load(made).affine, nib.load(image).affine, atol=1e-5)
    stamp = made.stat().st_mtime_ns
    assert predict({"image": str(image)})["prev_seg"] == str(made) and made.stat().st_mtime_ns == stamp  # made once
    cv = str(bundle / "stage1" / "cv" / made.name)
    assert predict({"image": str(image), "prev_seg": cv})["prev_seg"] == cv  # cross-validation's stays


def test_cascade_evaluate_runs_both_stages_and_predicts_in_the_input_geometry(cascade, tmp_path):
    data, bundle = cascade
    evaluate_one_test_case(bundle, data, tmp_path / "eval")


def test_cascade_metadata_and_network_pass_the_bundle_checks(cascade):
    _, bundle = cascade
    run("-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--filepath", str(ROOT / "schemas" / "meta_schema.json"))
    run("-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(bundle / "configs" / "inference.yaml"), "--device", "cpu", "--n", "4")


def test_exported_cascade_runs_both_stages_and_matches_eager_inference(cascade, tmp_path):
    data, bundle = cascade
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("cv", "stage1", "logs"))
    shutil.copy(copy / "models" / "fold_0" / "model.pt", copy / "models" / "model.pt")
    shutil.rmtree(copy / "models" / "fold_0")
    proc = run("-m", "scripts.export", "--bundle_root", str(copy))
    assert "max |scripted - eager|" in proc.stdout
    scripted = torch.jit.load(str(copy / "models" / "model.ts"), map_location="cpu").eval()
    parser = _parser(copy, dataset_dir=str(data), use_mirroring=False)
    eager = parser.get_parsed_content("inference_network")
    inferer = parser.get_parsed_content("inferer")
    image = parser.get_parsed_content("preprocessing")(parser.get_parsed_content("datalist")[0])["image"][None]
    with torch.no_grad():
        p_scripted = torch.softmax(inferer(image, scripted), dim=1)
        p_eager = torch.softmax(inferer(image, eager), dim=1)
        # the scripted module carries stage 1 as well: its low-res probabilities come from the same weights
        s1_scripted = scripted.stage1_probabilities(image.as_tensor())
        s1_eager = eager.stage1_probabilities(image.as_tensor())
    assert p_scripted.shape[1] == 3 and p_scripted.shape[2:] == image.shape[2:]
    assert float((p_scripted - p_eager).abs().max()) < 1e-4
    assert float((s1_scripted - s1_eager).abs().max()) < 1e-4


def test_two_process_gloo_training_of_stage_2_writes_one_whole_cascade(cascade, tmp_path):
    data, bundle = cascade
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("logs", "cv"))
    shutil.copytree(bundle / "stage1" / "cv", copy / "stage1" / "cv")
    shutil.rmtree(copy / "models" / "fold_0")
    configs = f"['{copy / 'configs' / 'train.yaml'}','{copy / 'configs' / 'multi_gpu_train.yaml'}']"
    proc = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "training",
               "--config_file", configs, "--bundle_root", str(copy), "--dataset_dir", str(data), "--val_interval", "0",
               "--num_workers", "0", "--ckpt_dir", str(copy / "models" / "fold_0"), *TINY[:4])
    assert proc.stdout.count("epoch 1/1") == 1  # only rank 0 reports and writes
    state = torch.load(copy / "models" / "fold_0" / "model.pt", weights_only=True)
    assert not any(".module." in k or k.startswith("module.") for k in state)
    _parser(copy).get_parsed_content("network_def").load_state_dict(state, strict=True)
