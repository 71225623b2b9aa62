"""`monai.bundle run` overrides that would change nothing are refused before training or inference starts."""

from __future__ import annotations

import pytest
import yaml

from custom_components import bundle_config
from custom_components.data import DatasetError

MAIN = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_config, "_checked", False)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"bundle_root": str(tmp_path), "iterations_per_epoch": 250,
                                    "network_def": {"_target_": "BasicUNet", "spatial_dims": 3},
                                    "schedules": {"v1": {"lr": 0.01}}}))
    return path


def check(config, *overrides: str, bundle_root=None, main: str = MAIN) -> None:
    argv = [main, "run", "training", "--config_file", str(config), *overrides]
    bundle_config.check_command_line_ids(bundle_root, argv=argv)


def test_known_ids_new_component_arguments_new_table_entries_and_run_arguments_pass(config):
    check(config, "--iterations_per_epoch", "5", "--network_def#dropout", "0.1", "--schedules#v3", "{'lr': 1}",
          "--tracking", "mlflow", "--tracking_uri", "file:/tmp/ml", "--bundle_root", str(config.parent))


def test_a_misspelt_top_level_id_is_refused_with_the_nearest_id(config):
    with pytest.raises(DatasetError, match=r"--iteration_per_epoch \(did you mean --iterations_per_epoch\?\)"):
        check(config, "--iteration_per_epoch", "5")


def test_an_argument_that_the_component_does_not_take_is_refused_with_the_nearest_argument(config):
    with pytest.raises(DatasetError, match=r"--network_def#dropuot \(did you mean --network_def#dropout\?\)"):
        check(config, "--network_def#dropuot", "0.1")
    check(config, "--network_def#_disabled_", "true")  # MONAI's own keys of a component pass


def test_a_key_below_a_missing_parent_is_refused(config):
    with pytest.raises(DatasetError, match="--augmentation#rotation"):
        check(config, "--augmentation#rotation", "30")


def test_another_bundles_workflow_run_inside_the_command_is_not_checked_against_it(config, tmp_path):
    check(config, "--bundle_root", str(config.parent), "--unknown_here", "1", bundle_root=tmp_path / "member")


def test_programs_other_than_monai_bundles_command_line_are_left_alone(config):
    check(config, "--iteration_per_epoch", "5", main="/srv/monailabel/main.py")
