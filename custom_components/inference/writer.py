"""Writes each prediction as `<case id>.nii.gz` in the input's geometry, atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from monai.config import KeysCollection
from monai.transforms import MapTransform

from custom_components.io_utils import atomic_path, atomic_save_nifti


def case_id_from_path(path: str) -> str:
    """nnU-Net's naming: `case_0000.nii.gz` (channel suffix) and `case.nii.gz` both give `case`."""
    name = os.path.basename(os.path.normpath(str(path)))  # a DICOM series folder is named by its folder
    name = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.dcm)$", "", name)
    return re.sub(r"_\d{4}$", "", name)


def source_path(item: dict, key: str) -> str:
    """The file an item's `key` (or else its image) was loaded from."""
    for k in (key, "image"):
        img = item.get(k)
        if isinstance(img, MetaTensor) and "filename_or_obj" in img.meta:
            name = img.meta["filename_or_obj"]
            return name[0] if isinstance(name, (list, tuple)) else name
    return "case"


def save_label_map(pred: torch.Tensor | np.ndarray, affine, path: str | os.PathLike) -> None:
    """A (1, X, Y, Z) or (X, Y, Z) label map as uint8 (uint16 past 255 classes) NIfTI, atomically."""
    arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    arr = arr[0] if arr.ndim == 4 else arr
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
    atomic_save_nifti(nib.Nifti1Image(arr.astype(dtype), np.asarray(affine, dtype=np.float64)), path)


PROBABILITIES_KEY = "pred_probabilities"


class KeepProbabilitiesd(MapTransform):
    """When `enabled`, keep a copy of the soft prediction (after inversion, before argmax) under
    `pred_probabilities`, for cross-validation and ensembling; otherwise do nothing."""

    def __init__(self, keys: KeysCollection = "pred", enabled: bool = False, name: str = PROBABILITIES_KEY) -> None:
        super().__init__(keys)
        self.enabled = bool(enabled)
        self.name = name

    def __call__(self, data):
        d = dict(data)
        if self.enabled:
            for key in self.key_iterator(d):
                d[self.name] = torch.as_tensor(d[key]).detach().clone()
        return d


def save_probabilities(probs: torch.Tensor, path: str | os.PathLike) -> None:
    """Soft predictions as float16 `probabilities` (C, X, Y, Z) in a compressed .npz, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probs.detach().cpu().numpy().astype(np.float16))


class PredictionWriter:
    """Ignite handler: after each iteration, save `pred` of every item as a NIfTI label map in `output_dir`
    (and its probabilities as `<case>.npz` when the post-processing kept them). With `dicom_seg`, a case read
    from a DICOM series folder also gets `<case>.seg.dcm`, a DICOM SEG referencing that series, one segment per
    class of `segments` ({label value: name})."""

    def __init__(self, output_dir: str, key: str = "pred", dicom_seg: bool = False, segments: Mapping | None = None,
                 series_uid: str | None = None, algorithm: str = "monai-unet-family") -> None:
        self.output_dir = Path(output_dir)
        self.key = key
        self.dicom_seg = bool(dicom_seg)
        self.segments = {int(k): str(v) for k, v in (segments or {}).items()}
        self.series_uid = series_uid
        self.algorithm = algorithm
        self.written: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            pred = item[self.key]
            path = self.output_dir / f"{case_id_from_path(source_path(item, self.key))}.nii.gz"
            save_label_map(pred, pred.affine if isinstance(pred, MetaTensor) else np.eye(4), path)
            self.written.append(str(path))
            if PROBABILITIES_KEY in item:
                save_probabilities(item[PROBABILITIES_KEY], self.output_dir / f"{case_id_from_path(source_path(item, self.key))}.npz")
            if self.dicom_seg:
                self._write_seg(pred, source_path(item, "image"), path.with_name(path.name.replace(".nii.gz", ".seg.dcm")))

    def _write_seg(self, pred, source: str, path: Path) -> None:
        from custom_components.data.dicom import select_series
        from custom_components.inference.dicom_seg import write_dicom_seg

        if not os.path.isdir(source):
            print(f"{source}: not a DICOM series folder, so no DICOM SEG is written for it (NIfTI only)", flush=True)
            return
        arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        write_dicom_seg(arr, select_series(source, self.series_uid), self.segments, path, algorithm=self.algorithm)
        self.written.append(str(path))
