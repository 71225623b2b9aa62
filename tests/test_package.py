"""`scripts.package`: a self-contained bundle folder and zip that runs with only MONAI installed (the copy of
`custom_components` inside it is what gets imported), with `large_files.yml`, and nothing overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import yaml

from tests.test_bundle_workflow import bundle_run, run


def _package(bundle, out):
    return run("-m", "scripts.package", "--bundle_root", str(bundle), "--output_dir", str(out), check=False)


def test_package_holds_configs_weights_code_and_hashes_but_no_training_state(trained_fullres, tmp_path):
    _, bundle = trained_fullres
    assert _package(bundle, tmp_path / "p").returncode == 0
    folder = tmp_path / "p" / bundle.name
    for part in ("configs/metadata.json", "configs/inference.yaml", "configs/train.yaml", "docs/README.md", "LICENSE",
                 "models/model.pt", "custom_components/__init__.py", "custom_components/networks/__init__.py"):
        assert (folder / part).is_file(), part
    assert not (folder / "models" / "checkpoint_latest.pt").exists() and not (folder / "logs").exists()
    assert not (folder / "custom_components" / "configs").exists()  # template fragments: already flattened
    files = yaml.safe_load((folder / "large_files.yml").read_text())["large_files"]
    assert [f["path"] for f in files] == ["models/model.pt"]
    assert files[0]["hash_val"] == hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    with zipfile.ZipFile(tmp_path / "p" / f"{bundle.name}.zip") as z:
        names = set(z.namelist())
    on_disk = {f"{bundle.name}/{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()}
    assert on_disk <= names
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # no staging left behind


def test_packaged_bundle_runs_with_only_its_own_folder_on_the_path(trained_fullres, tmp_path):
    data, bundle = trained_fullres
    _package(bundle, tmp_path / "p")
    folder = tmp_path / "p" / bundle.name
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    where = subprocess.run([sys.executable, "-c", "import custom_components; print(custom_components.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(folder / "custom_components" / "__init__.py")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           str(folder / "configs" / "inference.yaml"), "--bundle_root", str(folder), "--dataset_dir",
                           str(data), "--output_dir", str(tmp_path / "packaged"), "--use_mirroring", "False"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle_run("inference", bundle, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "original"),
               "--use_mirroring", "False")
    name = next((tmp_path / "original").glob("*.nii.gz")).name
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "packaged" / name).dataobj),
                                  np.asarray(nib.load(tmp_path / "original" / name).dataobj))


def test_package_refuses_to_overwrite_and_refuses_an_untrained_bundle(trained_fullres, tmp_path):
    _, bundle = trained_fullres
    assert _package(bundle, tmp_path / "p").returncode == 0
    marker = (tmp_path / "p" / bundle.name / "configs" / "metadata.json").read_text()
    again = _package(bundle, tmp_path / "p")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "p" / bundle.name / "configs" / "metadata.json").read_text() == marker
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "configs").mkdir()
    for name in ("metadata.json", "inference.yaml"):
        (untrained / "configs" / name).write_text((bundle / "configs" / name).read_text())
    proc = _package(untrained, tmp_path / "q")
    assert proc.returncode == 2 and "model.pt: missing" in proc.stderr
    assert json.loads(marker)  # the metadata copied intact


def test_verify_names_every_file_changed_missing_or_added_since_packaging(trained_fullres, tmp_path):
    _, bundle = trained_fullres
    assert _package(bundle, tmp_path / "p").returncode == 0
    folder = tmp_path / "p" / bundle.name
    listed = (folder / "checksums.sha256").read_text()
    assert "  models/model.pt\n" in listed and "  configs/inference.yaml\n" in listed
    assert "  custom_components/networks/__init__.py\n" in listed
    ok = run("-m", "scripts.package", "verify", "--package_dir", str(folder), check=False)
    assert ok.returncode == 0, ok.stderr
    # coreutils reads the same list
    assert subprocess.run(["sha256sum", "--quiet", "-c", "checksums.sha256"], cwd=folder).returncode == 0
    with open(folder / "configs" / "inference.yaml", "a") as f:
        f.write("\nevil: \"$__import__('os').system('true')\"\n")
    (folder / "models" / "model.pt").unlink()
    (folder / "custom_components" / "extra.py").write_text("print('surprise')\n")
    (folder / "custom_components" / "__pycache__").mkdir(exist_ok=True)  # Python's own bytecode is not a finding
    (folder / "custom_components" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    bad = run("-m", "scripts.package", "verify", "--package_dir", str(folder), check=False)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "Traceback" not in bad.stderr
    assert any("configs/inference.yaml: changed" in e for e in errors)
    assert any("models/model.pt: missing" in e for e in errors)
    assert any("custom_components/extra.py: not in checksums.sha256" in e for e in errors)
    (folder / "checksums.sha256").unlink()
    gone = run("-m", "scripts.package", "verify", "--package_dir", str(folder), check=False)
    assert gone.returncode == 2 and "checksums.sha256: missing" in gone.stderr
