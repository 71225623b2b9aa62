"""The Foundation command sequence, run for real through `python -m monai.bundle` on a small demo dataset:
plan, train (a few iterations), resume, infer, evaluate, verify_metadata, verify_net_in_out, ckpt_export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "bundles" / "nnunet_3d_fullres"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def bundle_run(workflow: str, bundle: Path, *overrides: str, config: str | None = None) -> subprocess.CompletedProcess:
    cfg = bundle / "configs" / f"{config or {'training': 'train'}.get(workflow, workflow)}.yaml"
    return run("-m", "monai.bundle", "run", workflow, "--config_file", str(cfg), "--bundle_root", str(bundle), *overrides)


def evaluate_one_test_case(bundle: Path, data: Path, out: Path) -> None:
    """Run the evaluate workflow (no mirroring) on a one-test-case demo set; check the scores and that the
    prediction has the input's shape and affine."""
    bundle_run("evaluate", bundle, "--dataset_dir", str(data), "--output_dir", str(out), "--use_mirroring", "False")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 1 and set(metrics["per_class"]) == {"organ", "lesion"}
    assert metrics["seconds_per_case"] > 0  # the median time from loading a case to its written prediction
    image = next((data / "imagesTs").glob("*.nii.gz"))
    pred = nib.load(out / image.name.replace("_0000.nii.gz", ".nii.gz"))
    assert pred.shape == nib.load(image).shape
    np.testing.assert_allclose(pred.affine, nib.load(image).affine, atol=1e-5)


TEMPLATES = ["nnunet_3d_fullres", "nnunet_2d"]
_prepared: dict = {}


def _prepare(tmp_path_factory, template: str, trained: bool):
    """Demo data (6 training, 2 test cases), a planned bundle of `template`, and optionally a short training;
    made once per module and template."""
    key = (template, trained)
    if key in _prepared:
        return _prepared[key]
    if "data" not in _prepared:
        data = tmp_path_factory.mktemp("data") / "demo"
        run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "6", "--n_test", "2")
        _prepared["data"] = data
    data = _prepared["data"]
    if (template, False) not in _prepared:
        bundle = tmp_path_factory.mktemp(template) / "bundle"
        proc = run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(ROOT / "bundles" / template),
                   "--output_dir", str(bundle))
        assert "target spacing" in proc.stdout and "patch" in proc.stdout
        _prepared[(template, False)] = (data, bundle)
    if trained:
        data, bundle = _prepared[(template, False)]
        proc = bundle_run("training", bundle, "--dataset_dir", str(data), "--train#trainer#max_epochs", "1",
                          "--iterations_per_epoch", "3", "--val_interval", "1")
        assert "epoch 1/1" in proc.stdout
        _prepared[key] = (data, bundle)
    return _prepared[key]


@pytest.fixture(scope="module", params=TEMPLATES)
def planned(request, tmp_path_factory):
    return _prepare(tmp_path_factory, request.param, trained=False)


@pytest.fixture(scope="module", params=TEMPLATES)
def trained(request, tmp_path_factory):
    return _prepare(tmp_path_factory, request.param, trained=True)


@pytest.fixture(scope="module")
def planned_3d(tmp_path_factory):
    return _prepare(tmp_path_factory, "nnunet_3d_fullres", trained=False)


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory):
    return _prepare(tmp_path_factory, "nnunet_3d_fullres", trained=True)


def test_plan_shows_nnunet_anisotropy_rules_on_demo_data(planned_3d):
    data, bundle = planned_3d
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    spacings = np.array(plans["fingerprint"]["spacings"])
    coarse = conf["coarse_axis"]
    assert coarse == 2 and conf["anisotropic"]
    # the coarse axis takes the 10th percentile of its spacings, the others the median
    median = np.median(spacings, axis=0)
    assert conf["spacing"][coarse] == pytest.approx(max(np.percentile(spacings[:, coarse], 10), median[:2].max()), rel=1e-6)
    assert conf["spacing"][coarse] < median[coarse]
    assert conf["spacing"][0] == pytest.approx(np.median(spacings[:, 0]), rel=1e-6)
    # in-plane-only pooling first, kernel 1 through-plane at the first stage
    assert conf["strides"][1][coarse] == 1 and conf["strides"][1][0] == 2
    assert conf["kernel_sizes"][0][coarse] == 1 and conf["kernel_sizes"][0][0] == 3
    assert plans["normalization"][0]["scheme"] == "CT"


def test_planned_configs_are_flat_and_carry_the_plan(planned):
    import yaml

    _, bundle = planned
    for name in ("train", "inference", "evaluate"):
        cfg = yaml.safe_load((bundle / "configs" / f"{name}.yaml").read_text())
        assert "_include_" not in cfg
        for key in ("bundle_root", "dataset_dir", "output_dir", "device", "network_def", "inferer", "plan"):
            assert key in cfg, f"{name}.yaml lacks {key}"
    train = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())
    for key in ("train", "validate", "run", "training", "iterations_per_epoch", "val_interval"):
        assert key in train
    assert {"trainer", "dataset", "handlers"} <= set(train["train"]) and {"evaluator", "dataset"} <= set(train["validate"])
    infer = yaml.safe_load((bundle / "configs" / "inference.yaml").read_text())
    assert {"preprocessing", "postprocessing", "inference", "run"} <= set(infer)
    assert not (bundle / "configs" / "slicing.yaml").exists()  # bundle-local include fragments are folded in


@pytest.mark.parametrize("fold", [0, 3])
def test_a_fold_trains_only_on_its_training_cases_with_or_without_validation(planned, fold):
    from monai.bundle import ConfigParser

    from custom_components.data.splits import kfold_split

    data, bundle = planned
    ids = sorted(p.name.replace(".nii.gz", "") for p in (data / "labelsTr").iterdir())
    for val_interval in (1, 0):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.yaml"))
        parser.update({"dataset_dir": str(data), "fold": fold, "val_interval": val_interval})
        trained_on = sorted(item["id"] for item in parser.get_parsed_content("train#dataset#data"))
        assert trained_on == sorted(kfold_split(ids)[fold]["train"])


def test_training_writes_model_checkpoint_progress_and_curve(trained):
    data, bundle = trained
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    net = parser.get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)  # the inference network's state_dict, no deep-supervision heads
    assert (bundle / "models" / "checkpoint_latest.pt").is_file()
    history = json.loads((bundle / "logs" / "progress.json").read_text())
    assert [h["epoch"] for h in history] == [1] and history[0]["val_dice"] is not None
    # 3 iterations: 2 start-to-start gaps, each inside the epoch's wall time
    assert 0 < 2 * history[0]["iteration_seconds"] <= history[0]["seconds"]
    assert (bundle / "logs" / "training_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_training_resumes_from_its_last_checkpoint(trained_3d, tmp_path):
    data, bundle = trained_3d
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    proc = bundle_run("training", copy, "--dataset_dir", str(data), "--train#trainer#max_epochs", "2",
                      "--iterations_per_epoch", "2", "--val_interval", "0")
    assert "resuming from" in proc.stdout and "epoch 2/2" in proc.stdout and "epoch 1/2" not in proc.stdout
    history = json.loads((copy / "logs" / "progress.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_fold_all_trains_on_every_case_without_validation(planned_3d, tmp_path):
    data, bundle = planned_3d
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "logs"))
    proc = bundle_run("training", copy, "--dataset_dir", str(data), "--train#trainer#max_epochs", "1",
                      "--iterations_per_epoch", "1", "--fold", "all")
    assert "val Dice" not in proc.stdout
    assert (copy / "models" / "model.pt").is_file()


def test_inference_predicts_every_test_image_in_its_own_geometry(trained, tmp_path):
    data, bundle = trained
    out = tmp_path / "pred"
    bundle_run("inference", bundle, "--dataset_dir", str(data), "--output_dir", str(out))
    images = sorted((data / "imagesTs").glob("*.nii.gz"))
    assert len(images) == 2
    for img_path in images:
        case = img_path.name.replace("_0000.nii.gz", "")
        pred, img = nib.load(out / f"{case}.nii.gz"), nib.load(img_path)
        assert pred.shape == img.shape
        np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_evaluate_writes_dice_and_hd95_per_case_and_class(trained, tmp_path):
    data, bundle = trained
    out = tmp_path / "eval"
    proc = bundle_run("evaluate", bundle, "--dataset_dir", str(data), "--output_dir", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    assert metrics["num_cases"] == 2 and set(metrics["per_class"]) == {"organ", "lesion"}
    assert {"dice", "hd95"} <= set(metrics["cases"][0])
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("case,dice_organ,dice_lesion,hd95_organ") and len(rows) == 4
    assert "test Dice" in proc.stdout


def test_metadata_validates_against_the_shipped_schema(planned):
    _, bundle = planned
    run("-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--filepath", str(ROOT / "schemas" / "meta_schema.json"))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "organ", "2": "lesion"}


def test_verify_net_in_out_passes(planned):
    _, bundle = planned
    run("-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(bundle / "configs" / "inference.yaml"), "--device", "cpu", "--n", "4")


def test_torchscript_export_matches_eager_network(trained, tmp_path):
    data, bundle = trained
    proc = run("-m", "scripts.export", "--bundle_root", str(bundle))
    assert "max |scripted - eager|" in proc.stdout
    ts = bundle / "models" / "model.ts"
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert parser["network_def"]["deep_supervision"] is False  # exported without the training-only heads
    x = torch.randn(1, 1, *parser.get_parsed_content("patch_size"))  # 2D or 3D, as the plan says
    with torch.no_grad():
        assert float((scripted(x) - net(x)).abs().max()) < 1e-4


def _msd_two_channel_dataset(root: Path, n_train: int = 5, n_test: int = 1) -> Path:
    """An MSD-layout dataset whose cases are 4D NIfTI files with a CT channel and an MR-like channel."""
    from custom_components.data.demo import synth_case

    rng = np.random.default_rng(3)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    training = []
    for i in range(n_train + n_test):
        ct, label, affine = synth_case(rng)
        mr = np.where(ct > -500, 600.0 - 2.0 * ct.astype(np.float32), 0.0)  # nonzero only inside the body
        image = np.stack([ct.astype(np.float32), mr.astype(np.float32)], axis=-1)
        split = "Tr" if i < n_train else "Ts"
        nib.save(nib.Nifti1Image(image, affine), root / f"images{split}" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"labels{split}" / f"case{i}.nii.gz")
        if split == "Tr":
            training.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "TwoChannel", "modality": {"0": "CT", "1": "T2"},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "training": training, "test": [f"./imagesTs/case{i}.nii.gz" for i in range(n_train, n_train + n_test)],
    }))
    return root


def test_multi_channel_msd_dataset_plans_trains_and_predicts(tmp_path):
    data = _msd_two_channel_dataset(tmp_path / "data")
    bundle = tmp_path / "bundle"
    run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(TEMPLATE), "--output_dir", str(bundle))
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    assert plans["num_channels"] == 2
    assert [n["scheme"] for n in plans["normalization"]] == ["CT", "zscore"]
    bundle_run("training", bundle, "--dataset_dir", str(data), "--train#trainer#max_epochs", "1",
               "--iterations_per_epoch", "1", "--val_interval", "0")
    out = tmp_path / "pred"
    bundle_run("inference", bundle, "--dataset_dir", str(data), "--output_dir", str(out), "--use_mirroring", "false")
    pred, img = nib.load(out / "case5.nii.gz"), nib.load(data / "imagesTs" / "case5.nii.gz")
    assert pred.shape == img.shape[:3]
    np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)


def test_2d_bundle_plans_slices_along_the_coarse_axis(planned_3d, tmp_path):
    import yaml

    data, _ = planned_3d
    bundle = tmp_path / "bundle2d"
    run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(ROOT / "bundles" / "nnunet_2d"), "--output_dir", str(bundle))
    plan = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())["plan"]
    assert plan["configuration"] == "2d" and plan["spatial_dims"] == 2 and plan["slice_axis"] == 2
    assert len(plan["patch_size"]) == 2 and plan["spacing"][2] == -1


def test_v1_plateau_rule_fires_and_stops_training_with_a_shortened_patience(planned_3d, tmp_path):
    data, bundle = planned_3d
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "logs"))
    # patience 0 and an unreachable improvement threshold: epoch 2 cuts lr 3e-4 -> 6e-5, below min_lr 1e-4
    proc = bundle_run("training", copy, "--dataset_dir", str(data), "--train#trainer#max_epochs", "5",
                      "--iterations_per_epoch", "1", "--val_interval", "0", "--schedules#nnunet_v1#plateau_patience", "0",
                      "--schedules#nnunet_v1#plateau_threshold", "10", "--schedules#nnunet_v1#min_lr", "1e-4")
    history = json.loads((copy / "logs" / "progress.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and "stopping" in proc.stdout
    assert history[0]["lr"] == pytest.approx(3e-4) and history[1]["lr"] == pytest.approx(6e-5)
    assert (copy / "models" / "model.pt").is_file()


def test_v2_schedule_switch_trains_with_sgd_and_poly_lr(planned_3d, tmp_path):
    data, bundle = planned_3d
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "logs"))
    bundle_run("training", copy, "--dataset_dir", str(data), "--train#trainer#max_epochs", "2",
               "--iterations_per_epoch", "1", "--val_interval", "0", "--schedule", "nnunet_v2")
    history = json.loads((copy / "logs" / "progress.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([1e-2, 1e-2 * 0.5 ** 0.9])
    ckpt = torch.load(copy / "models" / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["nesterov"] is True


def test_two_process_gloo_training_shares_the_work_and_rank_zero_writes_the_common_model(planned_3d, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train on their own share of the fold's training cases
    and validate their own share of its held-out cases; the validation Dice and the epoch loss are reduced
    over both; both end with the same weights, which rank 0 alone writes; and the loss goes down."""
    from custom_components.data import training_datalist, validation_datalist
    from custom_components.training.distributed import weights_digest

    data, bundle = planned_3d
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "logs"))
    configs = f"['{copy / 'configs' / 'train.yaml'}','{copy / 'configs' / 'multi_gpu_train.yaml'}']"
    proc = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "training",
               "--config_file", configs, "--bundle_root", str(copy), "--dataset_dir", str(data),
               "--train#trainer#max_epochs", "3", "--iterations_per_epoch", "4", "--val_interval", "3", "--num_workers", "0")
    assert proc.stdout.count("epoch 3/3") == 1  # only rank 0 reports
    report = json.loads((copy / "logs" / "distributed.json").read_text())
    ranks = report["ranks"]
    assert report["world_size"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert all(r["iterations"] == 12 for r in ranks)

    train = {c["id"] for c in training_datalist(str(data), 0, 1)}
    val = {c["id"] for c in validation_datalist(str(data), 0, 1)}
    for epoch in range(3):  # every epoch, each rank draws from its own share of the training cases
        shares = [set(r["train_cases"][epoch]) for r in ranks]
        assert shares[0] | shares[1] == train and all(s and s != train for s in shares), shares
    shares = [set(r["val_cases"]) for r in ranks]
    assert shares[0] | shares[1] == val and not shares[0] & shares[1]  # each held-out case scored once
    assert ranks[0]["val_mean_dice"] == ranks[1]["val_mean_dice"]  # gathered over both ranks' cases
    # DDP keeps the replicas equal; rank 0's copy is the one saved
    last = torch.load(copy / "models" / "checkpoint_latest.pt", weights_only=True)["model"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == weights_digest(last)
    state = torch.load(copy / "models" / "model.pt", weights_only=True)  # the same, less training-only heads
    assert all(torch.equal(v, last[k]) for k, v in state.items())
    assert not any(k.startswith("module.") for k in state)
    history = json.loads((copy / "logs" / "progress.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_dice"] == ranks[0]["val_mean_dice"]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.yaml"))
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)