"""Running a planned bundle's own inference workflow from Python (cross-validation, configuration ensembles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def run_bundle_inference(bundle_root: str | Path, cases: Sequence[dict], output_dir: str | Path,
                         ckpt_dir: str | Path | None = None, save_probabilities: bool = True,
                         overrides: Mapping | None = None, config: str = "inference.yaml") -> None:
    """Predict `cases` with the bundle's `configs/inference.yaml` (its preprocessing, inferer and inversion),
    writing `<case>.nii.gz` and, with `save_probabilities`, `<case>.npz` in each case's original geometry.
    `config` names another inference config of the bundle (the cascade's `inference_stage1.yaml`)."""
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_root)
    settings = {"bundle_root": str(root), "datalist": [dict(c) for c in cases], "output_dir": str(output_dir),
                "save_probabilities": save_probabilities}
    if ckpt_dir is not None:
        settings["ckpt_dir"] = str(ckpt_dir)
    settings.update(dict(overrides or {}))
    workflow = ConfigWorkflow(config_file=str(root / "configs" / config), workflow_type="infer",
                              logging_file=False, **settings)
    grad_enabled = torch.is_grad_enabled()  # the inference config turns autograd off for the whole process
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    finally:
        torch.set_grad_enabled(grad_enabled)
