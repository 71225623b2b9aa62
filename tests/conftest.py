"""Fixtures shared by several test modules; each module opts in with `pytestmark = pytest.mark.usefixtures(...)`."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run much faster on one thread than on two contended ones; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_seed():
    """The same random weights and inputs in every test, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_fullres(tmp_path_factory):
    """A small demo set (4 training cases, 1 test case) and a 3D full-res bundle planned on it and trained for two
    iterations: for the tests of what happens around a trained bundle (DICOM, packaging)."""
    from tests.test_bundle_workflow import ROOT, bundle_run, run

    data = tmp_path_factory.mktemp("fullres_data") / "demo"
    run("-m", "scripts.make_demo_data", "--output_dir", str(data), "--n_train", "4", "--n_test", "1")
    bundle = tmp_path_factory.mktemp("fullres_bundle") / "nnunet_3d_fullres"
    run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(ROOT / "bundles" / "nnunet_3d_fullres"),
        "--output_dir", str(bundle))
    bundle_run("training", bundle, "--dataset_dir", str(data), "--train#trainer#max_epochs", "1",
               "--iterations_per_epoch", "2", "--fold", "all", "--num_workers", "0")
    return data, bundle


def environment_python(script: str, variable: str) -> str:
    """Build (or reuse) one of the extra environments with its setup script; the path of its python."""
    import subprocess

    from tests.test_bundle_workflow import ROOT

    proc = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/{script} && echo ${variable}"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


# every bundle template; the integration tests (MONAI Label, MONAI Deploy) run each one
ALL_BUNDLES = ["nnunet_3d_fullres", "nnunet_2d", "nnunet_3d_cascade", "attention_unet", "multires_unet",
               "nonlocal_unet", "residual_unet"]


@pytest.fixture(scope="session")
def packaged_bundles(trained_fullres, tmp_path_factory):
    """Every bundle planned on the demo set, trained for one iteration, exported to TorchScript and packaged by
    `scripts.package`: {name: (its demo set, its package folder)}. The cascade gets its own 5-case set: its
    stage-2 training needs stage 1's out-of-fold predictions (scripts.cross_validate, stage 2 on fold 0 only,
    whose model then stands in for the final `models/model.pt`)."""
    import shutil

    from tests.test_bundle_workflow import ROOT, bundle_run, run

    data, fullres = trained_fullres
    work = tmp_path_factory.mktemp("packaged")
    packages = {}
    for name in ALL_BUNDLES:
        dataset = data
        bundle = work / "trained" / name
        if name == "nnunet_3d_fullres":
            shutil.copytree(fullres, bundle, ignore=shutil.ignore_patterns("logs", "eval"))
        elif name == "nnunet_3d_cascade":
            dataset = work / "cascade_data"
            run("-m", "scripts.make_demo_data", "--output_dir", str(dataset), "--n_train", "5", "--n_test", "1")
            run("-m", "scripts.plan", "--dataset_dir", str(dataset), "--template", str(ROOT / "bundles" / name),
                "--output_dir", str(bundle), "--force_lowres")
            run("-m", "scripts.cross_validate", "--bundle_root", str(bundle), "--dataset_dir", str(dataset),
                "--folds", "0", "--val_interval", "0", "--train#trainer#max_epochs", "1", "--iterations_per_epoch", "1")
            shutil.copy(bundle / "models" / "fold_0" / "model.pt", bundle / "models" / "model.pt")
        else:
            run("-m", "scripts.plan", "--dataset_dir", str(data), "--template", str(ROOT / "bundles" / name),
                "--output_dir", str(bundle))
            bundle_run("training", bundle, "--dataset_dir", str(data), "--train#trainer#max_epochs", "1",
                       "--iterations_per_epoch", "1", "--fold", "all", "--num_workers", "0")
        run("-m", "scripts.export", "--bundle_root", str(bundle))
        run("-m", "scripts.package", "--bundle_root", str(bundle), "--output_dir", str(work / "pkg"), "--name", name)
        packages[name] = dataset, work / "pkg" / name
    return packages
