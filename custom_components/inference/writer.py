"""Writes each prediction as `<case id>.nii.gz` in the input's geometry, atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from custom_components.io_utils import atomic_save_nifti


def case_id_from_path(path: str) -> str:
    """nnU-Net's naming: `case_0000.nii.gz` (channel suffix) and `case.nii.gz` both give `case`."""
    name = os.path.basename(str(path))
    name = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.dcm)$", "", name)
    return re.sub(r"_\d{4}$", "", name)


def _source(item: dict, key: str) -> str:
    for k in (key, "image"):
        img = item.get(k)
        if isinstance(img, MetaTensor) and "filename_or_obj" in img.meta:
            name = img.meta["filename_or_obj"]
            return name[0] if isinstance(name, (list, tuple)) else name
    return "case"


def save_label_map(pred: torch.Tensor, affine, path: str | os.PathLike) -> None:
    arr = pred.detach().cpu().numpy()
    arr = arr[0] if arr.ndim == 4 else arr
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
    atomic_save_nifti(nib.Nifti1Image(arr.astype(dtype), np.asarray(affine, dtype=np.float64)), path)


class PredictionWriter:
    """Ignite handler: after each iteration, save `pred` of every item as a NIfTI label map in `output_dir`."""

    def __init__(self, output_dir: str, key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.key = key
        self.written: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            pred = item[self.key]
            path = self.output_dir / f"{case_id_from_path(_source(item, self.key))}.nii.gz"
            save_label_map(pred, pred.affine if isinstance(pred, MetaTensor) else np.eye(4), path)
            self.written.append(str(path))
