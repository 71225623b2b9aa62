"""Cross-validation, find_best and the ensemble bundle, end to end on a tiny demo set (one iteration per fold)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from sklearn.model_selection import KFold

from tests.test_bundle_workflow import ROOT, bundle_run, run


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    """5 training cases (one held out per fold), 2D and 3D bundles, folds 0 and 1 each."""
    base = tmp_path_factory.mktemp("cv")
    data = base / "data"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "5", "--n_test", "1")
    bundles = {}
    for template in ("nnunet_2d", "nnunet_3d_fullres"):
        bundle = base / template
        run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(ROOT / "bundles" / template), "--output_dir", str(bundle))
        run("-m", "scripts.cross_validate", "--bundle_root", str(bundle), "--dataset_dir", str(data), "--folds", "0,1",
            "--train#trainer#max_epochs", "1", "--iterations_per_epoch", "1", "--val_interval", "0", "--use_mirroring", "False")
        bundles[template] = bundle
    return data, bundles


def test_cross_validation_writes_fold_models_out_of_fold_predictions_and_summary(cross_validated):
    data, bundles = cross_validated
    ids = sorted(p.name.replace(".nii.gz", "") for p in (data / "labelsTr").iterdir())
    held_out = [[ids[i] for i in val] for _, val in KFold(5, shuffle=True, random_state=12345).split(ids)]
    for bundle in bundles.values():
        assert (bundle / "models" / "fold_0" / "model.pt").is_file() and (bundle / "models" / "fold_1" / "model.pt").is_file()
        summary = json.loads((bundle / "cv" / "summary.json").read_text())
        assert summary["folds"]["0"]["cases"] == held_out[0] and summary["folds"]["1"]["cases"] == held_out[1]
        assert set(summary["overall"]["dice_per_class"]) == {"organ", "lesion"}
        for case in held_out[0] + held_out[1]:
            probs = np.load(bundle / "cv" / f"{case}.npz")["probabilities"].astype(np.float32)
            label = nib.load(data / "labelsTr" / f"{case}.nii.gz")
            assert probs.shape == (3, *label.shape)
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=5e-3)
            pred = nib.load(bundle / "cv" / f"{case}.nii.gz")
            np.testing.assert_allclose(pred.affine, label.affine, atol=1e-5)


def test_cross_validation_resumes_a_finished_fold_without_retraining(cross_validated):
    data, bundles = cross_validated
    bundle = bundles["nnunet_3d_fullres"]
    before = (bundle / "models" / "fold_0" / "checkpoint_latest.pt").stat().st_mtime_ns
    proc = run("-m", "scripts.cross_validate", "--bundle_root", str(bundle), "--dataset_dir", str(data), "--folds", "0",
               "--train#trainer#max_epochs", "1", "--iterations_per_epoch", "1", "--val_interval", "0", "--use_mirroring", "False")
    assert "resuming from" in proc.stdout
    assert (bundle / "models" / "fold_0" / "checkpoint_latest.pt").stat().st_mtime_ns == before


def test_find_best_writes_an_ensemble_bundle_that_predicts_in_input_geometry(cross_validated, tmp_path):
    data, bundles = cross_validated
    out = tmp_path / "ensemble"
    proc = run("-m", "scripts.find_best", "--bundles", ",".join(str(b) for b in bundles.values()),
               "--dataset_dir", str(data), "--output_dir", str(out))
    result = json.loads((out / "configs" / "find_best.json").read_text())
    assert len(result["candidates"]) == 3  # two singles and the pair
    best = max(result["candidates"], key=lambda c: c["cv_mean_dice"])
    assert best["cv_mean_dice"] == pytest.approx(result["best_cv_mean_dice"])
    assert set(result["postprocessing"]) >= {"largest_foreground", "largest_per_class"}
    assert "best:" in proc.stdout and (out / "docs" / "README.md").is_file()
    cfg = yaml.safe_load((out / "configs" / "inference.yaml").read_text())
    assert list(cfg["members"]) == result["best"]
    pred_dir = tmp_path / "pred"
    run("-m", "monai.bundle", "run", "evaluate", "--config_file", str(out / "configs" / "evaluate.yaml"),
        "--dataset_dir", str(data), "--output_dir", str(pred_dir), "--member_overrides", "{'use_mirroring': False}")
    img = nib.load(next((data / "imagesTs").iterdir()))
    pred = nib.load(next(pred_dir.glob("*.nii.gz")))
    assert pred.shape == img.shape
    np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
    assert "mean_dice" in json.loads((pred_dir / "metrics.json").read_text())


def test_fold_models_are_ensembled_by_default_as_the_mean_of_their_probabilities(cross_validated, tmp_path):
    import shutil

    import torch

    data, bundles = cross_validated
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["nnunet_3d_fullres"], bundle)
    # one training iteration barely moves the weights: perturb fold 1 so that the two members clearly differ
    path = bundle / "models" / "fold_1" / "model.pt"
    state = torch.load(path, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    torch.save({k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}, path)
    probs = {}
    for name, extra in (("both", []), ("fold0", ["--folds", "0"]), ("fold1", ["--folds", "1"])):
        out = tmp_path / name
        bundle_run("inference", bundle, "--dataset_dir", str(data), "--output_dir", str(out), "--use_mirroring", "False",
                   "--save_probabilities", "True", *extra)
        probs[name] = np.load(next(out.glob("*.npz")))["probabilities"].astype(np.float32)
    np.testing.assert_allclose(probs["both"], (probs["fold0"] + probs["fold1"]) / 2, atol=2e-3)
    assert not np.allclose(probs["fold0"], probs["fold1"], atol=1e-3)  # the members really differ


def test_cascade_stage_1_gets_its_own_plan_overrides_and_not_stage_2s():
    from custom_components.training.cross_validation import stage1_overrides

    overrides = {"plan#batch_size": 4, "patch_size": [8, 8, 8], "plan_stage1#batch_size": 3,
                 "train#trainer#max_epochs": 2, "use_mirroring": False}
    assert stage1_overrides(overrides) == {"plan#batch_size": 3, "train#trainer#max_epochs": 2, "use_mirroring": False}


def test_cross_validation_refuses_a_fold_outside_the_split_before_training(cross_validated):
    data, bundles = cross_validated
    proc = run("-m", "scripts.cross_validate", "--bundle_root", str(bundles["nnunet_3d_fullres"]), "--dataset_dir", str(data),
               "--folds", "5", check=False)
    assert proc.returncode == 2 and "folds [5] do not exist" in proc.stderr and "== fold" not in proc.stdout


def test_running_a_bundle_s_inference_in_process_leaves_autograd_as_it_was(cross_validated, tmp_path):
    import torch

    from custom_components.inference.bundle_runner import run_bundle_inference

    data, bundles = cross_validated
    bundle = bundles["nnunet_3d_fullres"]
    ids = json.loads((bundle / "cv" / "summary.json").read_text())["folds"]["0"]["cases"]
    case = {"image": [str(data / "imagesTr" / f"{ids[0]}_0000.nii.gz")], "id": ids[0]}
    assert torch.is_grad_enabled()
    run_bundle_inference(bundle, [case], tmp_path, ckpt_dir=bundle / "models" / "fold_0",
                         overrides={"dataset_dir": str(data), "use_mirroring": False})
    assert torch.is_grad_enabled() and (tmp_path / f"{ids[0]}.nii.gz").is_file()
