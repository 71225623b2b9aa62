"""Every packaged bundle in a real MONAI Label 0.8.5 server (its own environment, scripts/setup_monailabel_env.sh),
started on 127.0.0.1: inference returns a label in the input's geometry, and training through the server
rewrites models/model.pt. Marked `monailabel`: building the environment takes about a minute with a warm pip
cache, and each server start about 20 s."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import ALL_BUNDLES, environment_python
from tests.test_bundle_workflow import ROOT

pytestmark = pytest.mark.monailabel
EPISTEMIC = "attention_unet"  # the bundle scored for epistemic active learning (dropout switched on by MONAI Label)
BUNDLES = ALL_BUNDLES


@pytest.fixture(scope="module")
def monailabel_python():
    return environment_python("setup_monailabel_env.sh", "MLPY")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def _multipart(path) -> tuple[bytes, str]:
    boundary = "----unetfamilytest"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _wait_until_done(status_url: str, seconds: int = 600) -> None:
    """Poll a MONAI Label task's status until it has finished; it must have finished well."""
    for _ in range(seconds):
        task = json.loads(_http(status_url)[1])
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(1)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])[-200:])


@pytest.fixture(scope="module")
def server(monailabel_python, packaged_bundles, tmp_path_factory):
    """Every packaged bundle inside MONAI Label's monaibundle sample app, two labelled studies, a running server."""
    data, _ = packaged_bundles["nnunet_3d_fullres"]
    work = tmp_path_factory.mktemp("monailabel")
    prefix = subprocess.run([monailabel_python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    apps = os.path.join(prefix.stdout.strip(), "monailabel", "sample-apps", "monaibundle")  # shipped in the wheel
    shutil.copytree(apps, work / "app")
    for name in BUNDLES:
        shutil.copytree(packaged_bundles[name][1], work / "app" / "model" / name)  # a copy: training rewrites it
        train = work / "app" / "model" / name / "configs" / "train.yaml"
        config = yaml.safe_load(train.read_text())
        config["iterations_per_epoch"] = 2  # the test's short training: MONAI Label sets epochs, not iterations
        config["num_workers"] = 0
        train.write_text(yaml.safe_dump(config, sort_keys=False))
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((data / "imagesTr").glob("*.nii.gz"))[:2]:
        case = image.name.replace("_0000.nii.gz", "")
        shutil.copy(image, studies / f"{case}.nii.gz")
        shutil.copy(data / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final" / f"{case}.nii.gz")
    shutil.copy(next((data / "imagesTs").glob("*.nii.gz")), studies / "unlabelled.nii.gz")  # for active learning
    port = _free_port()
    log = open(work / "server.log", "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts" / "monailabel")}  # the repository is not on the path
    proc = subprocess.Popen([monailabel_python, "-m", "monailabel.main", "start_server", "--app", str(work / "app"),
                             "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "models", ",".join(BUNDLES),
                             "--conf", "zoo_source", "local", "--conf", "sam2", "false",
                             "--conf", "epistemic_model", EPISTEMIC, "--conf", "epistemic_simulation_size", "3"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if _http(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"MONAI Label did not start; log:\n{(work / 'server.log').read_text()[-3000:]}")
        yield url, work, data
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.mark.parametrize("name", BUNDLES)
def test_monailabel_lists_the_bundle_s_labels_from_channel_def(server, name):
    url, _, _ = server
    info = json.loads(_http(f"{url}/info/")[1])
    assert info["models"][name]["labels"] == {"organ": 1, "lesion": 2}


@pytest.mark.parametrize("name", BUNDLES)
def test_monailabel_inference_returns_a_label_in_the_input_geometry(server, name, tmp_path):
    url, _, data = server
    image = next((data / "imagesTs").glob("*.nii.gz"))
    body, content_type = _multipart(image)
    status, payload = _http(f"{url}/infer/{name}?output=image", body, {"Content-Type": content_type})
    assert status == 200
    (tmp_path / "label.nii.gz").write_bytes(payload)
    label, source = nib.load(tmp_path / "label.nii.gz"), nib.load(image)
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).astype(int).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("name", BUNDLES)
def test_monailabel_training_rewrites_the_bundle_s_model(server, name):
    url, work, _ = server
    model = work / "app" / "model" / name / "models" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    status, _ = _http(f"{url}/train/{name}", json.dumps({"max_epochs": 1}).encode(), {"Content-Type": "application/json"})
    assert status == 200
    _wait_until_done(f"{url}/train/")
    assert hashlib.sha256(model.read_bytes()).hexdigest() != before


def test_epistemic_scoring_sets_dropout_and_scores_the_unlabelled_image(server):
    """MONAI Label sets `network_def#dropout` and runs several dropout passes per unlabelled image; their
    disagreement (entropy) is > 0 only if the dropout really acts."""
    url, _, _ = server
    try:
        _http(f"{url}/scoring/{EPISTEMIC}", b"{}", {"Content-Type": "application/json"})
    except urllib.error.HTTPError as e:  # 429: the server started a scoring run itself, at start-up; wait for it
        assert e.code == 429, e
    _wait_until_done(f"{url}/scoring/")
    store = json.loads(_http(f"{url}/datastore/?output=all")[1])
    info = store["objects"]["unlabelled"]["image"]["info"]
    assert np.isfinite(info["epistemic_entropy"]) and info["epistemic_entropy"] > 0
