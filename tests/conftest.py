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
